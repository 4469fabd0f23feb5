# Fault: prints each recv() chunk as one line: no framing on b"\n", so a line in
# two pieces prints as two lines and two lines in one chunk print together.
import os, socket, sys, threading


def out(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def receive(sock):
    try:
        while data := sock.recv(4096):
            out(data.decode("utf-8", "replace").removesuffix("\n"))
    except OSError:
        pass
    out("connection closed by server")
    os._exit(0)


sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
threading.Thread(target=receive, args=(sock,), daemon=True).start()
try:
    for line in sys.stdin.buffer:
        sock.sendall(line.rstrip(b"\r\n") + b"\n")
except OSError:
    pass  # the server is gone: the receiver will say so
threading.Event().wait()  # stdin ended: run until the server closes
