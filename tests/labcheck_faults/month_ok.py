# Control: a correct UDP month service: "1".."12" (a trailing newline allowed)
# gets "N: Name"; anything else gets "! send a whole number from 1 to 12".
import re, socket, sys

MONTHS = ["January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December"]
ERROR = "! send a whole number from 1 to 12"
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sys.stdout.write(f"listening on 127.0.0.1:{sock.getsockname()[1]}\n")
sys.stdout.flush()
while True:
    try:
        data, addr = sock.recvfrom(65535)
    except OSError:  # e.g. ICMP "port unreachable" from an earlier reply
        continue
    request = data.removesuffix(b"\n").removesuffix(b"\r")
    match = re.fullmatch(rb"0*([1-9][0-9]?)", request)
    number = int(match[1]) if match else 0
    answer = f"{number}: {MONTHS[number - 1]}" if 1 <= number <= 12 else ERROR
    try:
        sock.sendto((answer + "\n").encode(), addr)
    except OSError:
        pass
