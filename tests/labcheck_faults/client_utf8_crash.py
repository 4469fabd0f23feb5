# Fault: decodes each recv() chunk on its own with strict UTF-8, so a character
# split across two segments raises UnicodeDecodeError and kills the receive
# thread (traceback on stderr); the process lives on, printing nothing more.
import os, socket, sys, threading


def out(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def receive(sock):
    buf = ""
    try:
        while data := sock.recv(4096):
            buf += data.decode()  # the fault: a chunk may end mid-character
            while "\n" in buf:
                line, buf = buf.split("\n", 1)
                out(line.removesuffix("\r"))
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
    pass
threading.Event().wait()  # stdin ended: run until the server closes
