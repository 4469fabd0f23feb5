# Fault: a client that leaves is never removed (its thread just ends), and the
# broadcast `for c in clients: c.sendall(data)` runs inside the SENDER's
# try/except OSError, whose handler closes the SENDER. So once a client has
# gone, the next send to it fails and disconnects whoever spoke.
import socket, sys, threading

lock = threading.Lock()
clients = []  # sockets


def handle(c, name):
    buf = b""
    try:
        while True:
            data = c.recv(4096)
            if not data:
                return  # left: but it stays in clients (nobody removes it)
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.rstrip(b"\r").decode("utf-8", "replace")
                data = f"<{name}> {text}\n".encode()
                with lock:
                    others = [o for o in clients if o is not c]
                for o in others:
                    o.sendall(data)  # raises on a dead client's socket ...
    except OSError:  # ... and lands here, in the sender's handler
        with lock:
            if c in clients:
                clients.remove(c)
        c.close()


srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(128)
sys.stdout.write(f"listening on 127.0.0.1:{srv.getsockname()[1]}\n")
sys.stdout.flush()
n = 0
while True:
    sock, _ = srv.accept()
    n += 1
    with lock:
        clients.append(sock)
    threading.Thread(target=handle, args=(sock, f"user{n}"), daemon=True).start()
