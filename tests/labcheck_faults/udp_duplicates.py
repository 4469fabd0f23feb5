# Fault: adds the sender to the peer list on EVERY datagram, with no membership
# check, so a peer that has sent two datagrams gets each later message twice.
import socket, sys

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sys.stdout.write(f"listening on 127.0.0.1:{sock.getsockname()[1]}\n")
sys.stdout.flush()
peers = []
while True:
    data, addr = sock.recvfrom(65535)
    peers.append(addr)  # the fault: should be "if addr not in peers"
    text = data.decode("utf-8", "replace").rstrip("\r\n")
    message = f"<{addr[0]}:{addr[1]}> {text}\n".encode()
    for peer in peers:
        if peer != addr:
            sock.sendto(message, peer)
