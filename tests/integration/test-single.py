#!/usr/bin/python3
"""--single: one client already connected on stdin/stdout, as nbdkit -s.

1. libnbd's nbd_connect_command runs nbdstack --single on a socketpair:
   data written reads back and is in the image; once the client closes,
   the server process is gone (exit 0), and it never listened (no socket
   file, stdout untouched: anything printed there would break the NBD
   stream).
2. A client that gives up during the handshake (NBD_OPT_ABORT) also ends
   the server.
3. Two pipes instead of one socket, and --single with -k: refused with one
   clear line and exit 1, nothing on stdout.
"""

import os
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
    skip("tests nbdstack's --single")

t = Test()
SIZE = 2 << 20
PATTERN = os.urandom(65536)


def gone(pid, timeout=60):
    """True once pid has exited (a zombie counts: libnbd reaps it at close)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def read_pid(path):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                s = f.read()
            if s.endswith("\n"):
                return int(s)
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    t.fatal("no pid file %s" % path)


# --- 1. nbd_connect_command -----------------------------------------------
img = t.image("single.img", SIZE, [(4096, b"before")])
pidfile = os.path.join(t.scratch, "single.pid")
h = nbd.NBD()
h.set_export_name("one")
h.connect_command([NBDSTACK, "--single", "-f", "raw", "-x", "one",
                   "--pid-file=" + pidfile, img])
pid = read_pid(pidfile)
t.eq(h.get_size(), SIZE, "single: size")
t.same(bytes(h.pread(6, 4096)), b"before", "single: read what the image holds")
h.pwrite(PATTERN, 131072)
h.flush()
t.same(bytes(h.pread(len(PATTERN), 131072)), PATTERN, "single: read back the write")
t.check(os.path.exists("/proc/%d" % pid), "single: server running while the client is connected")
h.shutdown()
t.check(gone(pid), "single: server process gone after the client disconnected")
del h   # libnbd reaps the child
t.check(not os.path.exists("/proc/%d" % pid), "single: server reaped")
with open(img, "rb") as f:
    f.seek(131072)
    t.same(f.read(len(PATTERN)), PATTERN, "single: the write is in the image file")

# --- 2. a client that aborts during the handshake ------------------------
pidfile2 = os.path.join(t.scratch, "abort.pid")
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_command([NBDSTACK, "--single", "-f", "raw", "--pid-file=" + pidfile2, img])
pid = read_pid(pidfile2)
h.opt_abort()
t.check(gone(pid), "single: server gone after NBD_OPT_ABORT")
del h


# --- 3. refused set-ups -------------------------------------------------
def refused(label, argv, want, **kw):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, **kw)
    err = p.stderr.decode("utf-8", "replace").strip().splitlines()
    t.eq(p.returncode, 1, "%s: exit status" % label)
    t.eq(p.stdout, b"", "%s: nothing on stdout" % label)
    t.check(len(err) == 1 and want in err[0], "%s: one clear line (%r)" % (label, err))


refused("single with two pipes", [NBDSTACK, "--single", "-f", "raw", img],
        "must be one connected socket", stdin=subprocess.PIPE)
refused("single with -k", [NBDSTACK, "--single", "-k", os.path.join(t.scratch, "x.sock"), img],
        "cannot be combined", stdin=subprocess.DEVNULL)
t.check(not os.path.exists(os.path.join(t.scratch, "x.sock")), "single with -k: no socket made")

# --- 4. --help names the new options ------------------------------------
p = subprocess.run([NBDSTACK, "--help"], stdout=subprocess.PIPE, timeout=60)
out = p.stdout.decode()
for opt in ("--single", "--log=DEST", "syslog", "LISTEN_FDS", "NOTIFY_SOCKET", "-s is qemu-nbd's"):
    t.check(opt in out, "--help mentions %s" % opt)

t.finish()
