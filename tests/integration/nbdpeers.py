"""nbdpeers: real upstream NBD servers (nbdkit, qemu-nbd) for the tests of
the nbd layer (test-nbd-upstream*.py).

    from nbdpeers import Peers, nbd_errno
    peers = Peers(t)                       # t: harness.Test; all killed at exit
    kit = peers.start("nbdkit", ["nbdkit", "-f", "-U", sock, "memory", "64M"], sock)
    peers.start("tcp", [...], ("127.0.0.1", port))
    nbd_errno(h.pread, 4096, 0)            # 0, or the libnbd errno name

A peer's stderr goes to SCRATCH/NAME.log.  start() returns the Popen once
the address accepts connections (a stopped peer is continued before it is
killed at exit).
"""

import atexit
import os
import signal
import socket
import subprocess
import time


def connectable(addr):
    """addr: a unix socket path, or (host, port)."""
    s = socket.socket(socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET)
    s.settimeout(2)
    try:
        s.connect(addr)
        return True
    except OSError:
        return False
    finally:
        s.close()


class Peers:
    def __init__(self, test):
        self.test = test
        self.procs = []
        atexit.register(self.kill_all)

    def start(self, name, argv, addr, timeout=15.0):
        if isinstance(addr, str) and os.path.exists(addr):
            os.unlink(addr)
        log = open(os.path.join(self.test.scratch, name + ".log"), "ab")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.procs.append(p)
        deadline = time.monotonic() + timeout
        while not connectable(addr):
            if p.poll() is not None or time.monotonic() > deadline:
                self.test.fatal("%s did not start: %s" % (name, " ".join(argv)))
            time.sleep(0.05)
        return p

    def kill_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()


def nbd_errno(fn, *args):
    """Call fn(*args): 0 if it succeeds, else the libnbd error's errno."""
    import nbd
    try:
        fn(*args)
        return 0
    except nbd.Error as e:
        return e.errno or -1
