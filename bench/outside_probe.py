#!/usr/bin/env python3
"""An outside check of bench.ts's memory figure: a process that is not
socklab's holds N connections to server.ts and reads the server's RSS from
/proc (Linux), as bench.ts does, at the same moments: connected, 2 s quiet,
and after 5 messages have reached everyone.

    python3 bench/outside_probe.py [CLIENTS]        # default 5000

server.ts runs with its defaults but the limits this load is above (the
flood limit, the client caps), as in bench.ts. Every wait has a time limit.
"""

import re
import selectors
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

CLIENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
WAIT_S = 60
ROOT = Path(__file__).resolve().parent.parent


def start_server():
    cap = str(CLIENTS + 10)
    server = subprocess.Popen(
        ["deno", "run", "-A", "server.ts", "--host", "127.0.0.1",
         "--port", "0", "--rate-limit", "0", "--max-clients", cap,
         "--max-per-address", cap],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        found = re.search(r"listening on [\d.]+:(\d+)", server.stdout.readline())
        if found:
            # Keep reading its console, so a full pipe never blocks it.
            threading.Thread(target=server.stdout.read, daemon=True).start()
            return server, int(found.group(1))
    sys.exit("server.ts did not print its port")


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    sys.exit("no VmRSS in /proc")


def wait_until_all_have(sockets, text, received):
    """Reads every socket until each has received `text`."""
    selector = selectors.DefaultSelector()
    waiting = set(sockets)
    for sock in waiting:
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.time() + WAIT_S
    while waiting and time.time() < deadline:
        for key, _ in selector.select(1):
            sock = key.fileobj
            received[sock] += sock.recv(65536)
            if text in received[sock]:
                waiting.discard(sock)
                selector.unregister(sock)
    selector.close()
    if waiting:
        sys.exit(f"{len(waiting)} clients never received {text!r}")


def main():
    server, port = start_server()
    try:
        time.sleep(2)  # the baseline, as bench.ts's "idle"
        idle = rss_kib(server.pid)
        sockets = [socket.create_connection(("127.0.0.1", port), WAIT_S)
                   for _ in range(CLIENTS)]
        received = {sock: b"" for sock in sockets}
        wait_until_all_have(sockets, b"online", received)
        connected = rss_kib(server.pid)
        time.sleep(2)
        quiet = rss_kib(server.pid)
        for number in range(5):
            sockets[0].sendall(f"probe message {number}\n".encode())
        wait_until_all_have(sockets[1:], b"probe message 4", received)
        after = rss_kib(server.pid)
        per_client = [round((kib - idle) / CLIENTS, 1)
                      for kib in (connected, quiet, after)]
        print(f"server.ts RSS idle {idle} KiB; KiB a client: connected "
              f"{per_client[0]}, 2 s quiet {per_client[1]}, after 5 messages "
              f"{per_client[2]}")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
