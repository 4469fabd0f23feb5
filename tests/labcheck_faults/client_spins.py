# Fault: does not notice that the server closed: recv() returning b"" is taken
# as an empty message, so it prints an empty line, again and again, forever.
import socket, sys, threading


def out(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def receive(sock):
    buf = b""
    while True:
        try:
            data = sock.recv(4096)
        except OSError:
            data = b""
        if not data:
            out("")  # the fault: b"" means "closed", not "an empty line"
            continue
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            out(line.rstrip(b"\r").decode("utf-8", "replace"))


sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
threading.Thread(target=receive, args=(sock,), daemon=True).start()
try:
    for line in sys.stdin.buffer:
        sock.sendall(line.rstrip(b"\r\n") + b"\n")
except OSError:
    pass
threading.Event().wait()  # stdin ended: keeps running (and spinning)
