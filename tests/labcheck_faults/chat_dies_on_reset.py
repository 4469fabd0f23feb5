# Fault: a client that resets its connection ends the server. Its recv() raises
# ConnectionResetError, which nothing catches (a client that closes normally,
# recv() giving b"", is handled). Otherwise chat_ok.py.
import selectors, socket, sys

LIMIT = 1 << 20
sel = selectors.DefaultSelector()
clients = {}  # socket -> [name, input bytes, output bytearray]

def drop(s):
    if clients.pop(s, None) is not None:
        sel.unregister(s)
        s.close()

def flush(s):  # send what the kernel takes now; watch for more room if needed
    out = clients[s][2]
    try:
        del out[:s.send(out)]
    except BlockingIOError:
        pass
    except OSError:
        return drop(s)
    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0)
    if sel.get_key(s).events != events:
        sel.modify(s, events)

def broadcast(sender, data):
    for s, c in list(clients.items()):
        if s is not sender and s in clients:
            c[2] += data
            if len(c[2]) > LIMIT:
                drop(s)  # not reading: dropped, nobody waits for it
            else:
                flush(s)

def read(s):
    try:
        data = s.recv(4096)
    except BlockingIOError:
        return  # (the fault: no "except OSError" here)
    if not data:
        return drop(s)
    c = clients[s]
    c[1] += data
    while b"\n" in c[1]:
        line, c[1] = c[1].split(b"\n", 1)
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        broadcast(s, f"<{c[0]}> {text}\n".encode())

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(128)
srv.setblocking(False)
sys.stdout.write(f"listening on 127.0.0.1:{srv.getsockname()[1]}\n")
sys.stdout.flush()
sel.register(srv, selectors.EVENT_READ)
n = 0
while True:
    for key, events in sel.select():
        s = key.fileobj
        if s is srv:
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.setblocking(False)
            n += 1
            clients[conn] = [f"user{n}", b"", bytearray()]
            sel.register(conn, selectors.EVENT_READ)
        elif s in clients:  # it may have been dropped earlier in this round
            if events & selectors.EVENT_WRITE:
                flush(s)
            if events & selectors.EVENT_READ and s in clients:
                read(s)
