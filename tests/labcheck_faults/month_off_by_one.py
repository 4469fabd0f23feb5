# Fault: checks that the request is a number and catches the IndexError, but
# not the range: "0" gets December and "-1" November (MONTHS[-1], MONTHS[-2]),
# as Python's negative indexes count from the end. It never stops.
import socket, sys

MONTHS = ["January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December"]
ERROR = "! send a whole number from 1 to 12"
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sys.stdout.write(f"listening on 127.0.0.1:{sock.getsockname()[1]}\n")
sys.stdout.flush()
while True:
    data, addr = sock.recvfrom(65535)
    try:
        number = int(data.decode().strip())
        answer = f"{number}: {MONTHS[number - 1]}"
    except (ValueError, IndexError, UnicodeDecodeError):
        answer = ERROR
    sock.sendto((answer + "\n").encode(), addr)
