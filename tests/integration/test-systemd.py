#!/usr/bin/python3
"""systemd integration, with real clients and real tools:

1. libnbd's nbd_connect_systemd_socket_activation starts nbdstack with a
   listening socket on fd 3 (LISTEN_PID/LISTEN_FDS): data written through
   it is in the image, and data in the image reads back through it.
2. Several inherited listeners at once, a Unix and a TCP one, as a
   .socket unit with two ListenStream= lines passes them: both serve.
3. systemd-socket-activate (the systemd package's tool) with a Unix and a
   TCP address, when installed.
4. Type=notify: with NOTIFY_SOCKET naming a Unix datagram socket (a path,
   then an abstract @name), READY=1 arrives, a connection made right after
   it succeeds (so READY=1 came after listen()), and SIGTERM brings
   STOPPING=1 and a clean exit.  A server that cannot open its image never
   says READY=1.
5. systemd-analyze verify accepts examples/systemd/*.
"""

import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import NBDSTACK, SERVER_KIND, Test, skip  # noqa: E402

try:
    import nbd
except ImportError:
    skip("python3-libnbd is not installed")
if SERVER_KIND != "nbdstack":
    skip("tests nbdstack's systemd integration")

t = Test()
SIZE = 4 << 20
PATTERN = bytes(range(256)) * 16        # 4 KiB


def read_file(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


def wait_gone(proc, what, timeout=30):
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = None
    t.eq(rc, 0, what)


# --- 1. libnbd's socket activation ---------------------------------------
img = t.image("act.img", SIZE, [(8192, b"on-disk before")])
h = nbd.NBD()
h.set_export_name("act")
h.connect_systemd_socket_activation([NBDSTACK, "-f", "raw", "-x", "act", img])
t.eq(h.get_export_name(), "act", "activated: export name")
t.eq(h.get_size(), SIZE, "activated: size")
t.same(bytes(h.pread(14, 8192)), b"on-disk before", "activated: read what the image holds")
h.pwrite(PATTERN, 65536)
h.flush()
t.same(bytes(h.pread(len(PATTERN), 65536)), PATTERN, "activated: read back the write")
h.shutdown()
del h
t.same(read_file(img, 65536, len(PATTERN)), PATTERN, "activated: the write is in the image file")


# --- 2. two inherited listeners, Unix and TCP ----------------------------
def activate(argv, socks, env_extra=None):
    """Start argv the way systemd does: socks on fds 3.., LISTEN_FDS, and
    LISTEN_PID set to the server's own pid (by a shell that execs it)."""
    fds = [s.fileno() for s in socks]

    def child():
        # Move the sockets to 3, 4, ... (first out of the way of each other).
        tmp = [os.dup(fd) for fd in fds]
        for i, fd in enumerate(tmp):
            os.dup2(fd, 3 + i)
            os.set_inheritable(3 + i, True)
    env = dict(os.environ, LISTEN_FDS=str(len(socks)))
    env.update(env_extra or {})
    log = open(os.path.join(t.scratch, "activate.log"), "ab")
    return subprocess.Popen(["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh"] + argv,
                            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            preexec_fn=child, close_fds=False)


def log_text():
    with open(os.path.join(t.scratch, "activate.log"), "rb") as f:
        return f.read().decode("utf-8", "replace")


img2 = t.image("multi.img", SIZE)
upath = os.path.join(t.scratch, "multi.sock")
us = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
us.bind(upath)
us.listen(8)
ts = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ts.bind(("127.0.0.1", 0))
ts.listen(8)
port = ts.getsockname()[1]
p = activate([NBDSTACK, "-f", "raw", "-t", "-e", "0", img2], [us, ts])
us.close()
ts.close()
hu = nbd.NBD()
hu.connect_uri("nbd+unix:///?socket=" + upath)
ht = nbd.NBD()
ht.connect_uri("nbd://127.0.0.1:%d/" % port)
hu.pwrite(b"U" * 4096, 0)
ht.pwrite(b"T" * 4096, 4096)
hu.flush()
ht.flush()
t.same(bytes(ht.pread(4096, 0)), b"U" * 4096, "two listeners: TCP client reads the Unix client's write")
t.same(bytes(hu.pread(4096, 4096)), b"T" * 4096, "two listeners: Unix client reads the TCP client's write")
hu.shutdown()
ht.shutdown()
p.send_signal(signal.SIGTERM)
wait_gone(p, "two listeners: exit status after SIGTERM")
t.check(os.path.exists(upath), "two listeners: the inherited Unix socket is not unlinked (its owner made it)")
t.same(read_file(img2, 0, 8192), b"U" * 4096 + b"T" * 4096, "two listeners: both writes in the image")

# A passed fd that is not a listening socket: one clear line, exit 1.
r, w = os.pipe()
rf = os.fdopen(r, "rb")
p = activate([NBDSTACK, "-f", "raw", img2], [rf])
rc = p.wait(30)
os.close(w)
rf.close()
t.eq(rc, 1, "activation with a pipe on fd 3: exit status")
t.check("not a listening stream socket" in log_text(), "activation with a pipe on fd 3: clear message")

# --- 3. systemd-socket-activate ------------------------------------------
ssa = None
for d in os.environ.get("PATH", "").split(":") + ["/usr/bin", "/bin"]:
    if d and os.access(os.path.join(d, "systemd-socket-activate"), os.X_OK):
        ssa = os.path.join(d, "systemd-socket-activate")
        break
if ssa is None:
    print("ok - # SKIP systemd-socket-activate not installed (the systemd package)")
else:
    upath3 = os.path.join(t.scratch, "ssa.sock")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port3 = probe.getsockname()[1]
    probe.close()   # a short window in which another process could take it
    img3 = t.image("ssa.img", SIZE)
    log = open(os.path.join(t.scratch, "ssa.log"), "wb")
    p = subprocess.Popen([ssa, "-l", upath3, "-l", "127.0.0.1:%d" % port3,
                          NBDSTACK, "-f", "raw", "-t", "-e", "0", img3],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while not os.path.exists(upath3) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    # The path appears at bind(), just before listen(): retry a refusal.
    while True:
        hu = nbd.NBD()
        try:
            hu.connect_uri("nbd+unix:///?socket=" + upath3)
            break
        except nbd.Error:
            if p.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    hu.pwrite(PATTERN, 0)
    hu.flush()
    ht = nbd.NBD()
    ht.connect_uri("nbd://127.0.0.1:%d/" % port3)
    t.same(bytes(ht.pread(len(PATTERN), 0)), PATTERN,
           "systemd-socket-activate: TCP reads what Unix wrote")
    hu.shutdown()
    ht.shutdown()
    p.send_signal(signal.SIGTERM)
    wait_gone(p, "systemd-socket-activate: exit status after SIGTERM")


# --- 4. Type=notify --------------------------------------------------------
def notify_case(label, address, bind_to):
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(bind_to)
    ns.settimeout(120)
    img4 = t.image("notify.img", SIZE, [(0, b"ready data")])
    sock = os.path.join(t.scratch, "notify.sock")
    log = open(os.path.join(t.scratch, "notify.log"), "wb")
    p = subprocess.Popen([NBDSTACK, "-f", "raw", "-t", "-k", sock, img4],
                         env=dict(os.environ, NOTIFY_SOCKET=address),
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        msg = ns.recv(4096).decode()
    except socket.timeout:
        msg = "(nothing)"
    t.check("READY=1" in msg.split("\n"), "%s: READY=1 received (%r)" % (label, msg))
    # No waiting, no retry: READY=1 must mean the socket already listens.
    h = nbd.NBD()
    try:
        h.connect_uri("nbd+unix:///?socket=" + sock)
        t.same(bytes(h.pread(10, 0)), b"ready data", "%s: connect right after READY=1 and read" % label)
        h.shutdown()
    except nbd.Error as e:
        t.fail("%s: connect right after READY=1: %s" % (label, e))
    p.send_signal(signal.SIGTERM)
    try:
        msg = ns.recv(4096).decode()
    except socket.timeout:
        msg = "(nothing)"
    t.check("STOPPING=1" in msg.split("\n"), "%s: STOPPING=1 after SIGTERM (%r)" % (label, msg))
    wait_gone(p, "%s: exit status after SIGTERM" % label)
    ns.close()


npath = os.path.join(t.scratch, "notify")
notify_case("notify (path)", npath, npath)
abstract = "nbdstack-test-%d" % os.getpid()
notify_case("notify (abstract @name)", "@" + abstract, "\0" + abstract)

# A server that fails to open its export never says READY=1.
ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
bad = os.path.join(t.scratch, "notify-bad")
ns.bind(bad)
p = subprocess.run([NBDSTACK, "-f", "raw", "-k", os.path.join(t.scratch, "bad.sock"),
                    os.path.join(t.scratch, "no-such-image")],
                   env=dict(os.environ, NOTIFY_SOCKET=bad),
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
t.eq(p.returncode, 1, "notify: missing image: exit status")
ns.setblocking(False)
try:
    msg = ns.recv(4096).decode()
except BlockingIOError:
    msg = ""
t.check("READY=1" not in msg, "notify: missing image: no READY=1 (%r)" % msg)

# --- 5. the example units are valid --------------------------------------
sa = "/usr/bin/systemd-analyze"
units = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "systemd")
if not os.access(sa, os.X_OK):
    print("ok - # SKIP systemd-analyze not installed (the systemd package)")
else:
    p = subprocess.run([sa, "verify", "--man=no", os.path.join(units, "nbdstack.service"),
                        os.path.join(units, "nbdstack.socket")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    # The one complaint allowed: nbdstack is not installed in /usr/sbin here.
    out = [l for l in p.stdout.decode("utf-8", "replace").splitlines()
           if l.strip() and "/usr/sbin/nbdstack" not in l]
    t.eq(out, [], "systemd-analyze verify of examples/systemd")

t.finish()
