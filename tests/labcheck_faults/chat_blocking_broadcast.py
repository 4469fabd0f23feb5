# Fault: broadcast is a plain blocking sendall() to each other client, in the
# sender's thread, while holding the global clients lock: one client that stops
# reading fills its socket buffers, and then every sender (and every join and
# leave) waits on it forever.
import socket, sys, threading

lock = threading.Lock()
clients = []  # sockets


def broadcast(sender, data):
    with lock:  # the fault: held across blocking sends
        for c in list(clients):
            if c is not sender:
                try:
                    c.sendall(data)
                except OSError:  # a dead client: dropped quietly
                    clients.remove(c)
                    try:
                        c.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass


def handle(c, name):
    buf = b""
    try:
        while data := c.recv(4096):
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.rstrip(b"\r").decode("utf-8", "replace")
                broadcast(c, f"<{name}> {text}\n".encode())
    except OSError:
        pass
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
