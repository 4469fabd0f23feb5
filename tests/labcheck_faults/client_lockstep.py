# Fault: turn-taking. Waits for a line of input, sends it, then waits for one
# chunk from the server: whatever arrives while it waits for input is not
# printed until after the next line is typed. Exits 0 at the end of stdin.
import socket, sys


def out(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
buf = b""
while True:
    line = sys.stdin.buffer.readline()
    if not line:
        sys.exit(0)
    sock.sendall(line.rstrip(b"\r\n") + b"\n")
    try:
        data = sock.recv(4096)  # the fault: blocks here until the server speaks
    except OSError:
        data = b""
    if not data:
        out("connection closed by server")
        sys.exit(0)
    buf += data
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        out(line.rstrip(b"\r").decode("utf-8", "replace"))
