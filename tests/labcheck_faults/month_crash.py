# Fault: no checks on the request: "13" raises IndexError and "abc" ValueError,
# uncaught, so the server dies. ("0" answers December: MONTHS[-1].)
import socket, sys

MONTHS = ["January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December"]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sys.stdout.write(f"listening on 127.0.0.1:{sock.getsockname()[1]}\n")
sys.stdout.flush()
while True:
    data, addr = sock.recvfrom(65535)
    number = int(data.decode())  # the fault: trusts the request
    sock.sendto(f"{number}: {MONTHS[number - 1]}\n".encode(), addr)
