"""What an idle connection costs a server: open N connections that finish
the handshake (libnbd) and then sit idle, and print the growth of the
server's resident memory divided by N, in KiB.  One connection is open
before the first measure, so that what any first client sets up is not
counted.

usage: idle-conns.py SOCKET SERVER_PID [N]    (N defaults to 1000)
"""
import resource
import sys
import time

import nbd

sock, pid = sys.argv[1], int(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
uri = f"nbd+unix:///?socket={sock}"
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 64)), hard))


def rss_kib():
    # Settle first: servers may finish a connection's setup after the
    # client's handshake returns.
    time.sleep(1)
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def connect():
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


handles = [connect()]
before = rss_kib()
handles += [connect() for _ in range(n)]
after = rss_kib()
print(f"{(after - before) / n:.1f}")
for h in handles:
    h.shutdown()
