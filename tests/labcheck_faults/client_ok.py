# Control: a correct chat client. Reads the socket in its own thread, frames on
# b"\n", decodes whole lines only, and exits 0 when the server closes.
import os, socket, sys, threading


def out(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def receive(sock):
    buf = b""
    try:
        while data := sock.recv(4096):
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                out(line.rstrip(b"\r").decode("utf-8", "replace"))
    except OSError:
        pass
    if buf:  # a last line without its "\n"
        out(buf.decode("utf-8", "replace"))
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
