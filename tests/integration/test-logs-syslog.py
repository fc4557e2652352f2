#!/usr/bin/python3
"""--log=syslog: the log lines go to syslog (/dev/log), with the daemon
facility and the right priorities, and not to stderr.

The test needs its own /dev/log without touching the host's: it re-runs
itself in a private mount namespace (unshare -m, root only), mounts a
tmpfs over /dev there (with its own null, zero, urandom ... nodes),
and binds a Unix datagram socket at /dev/log that it reads.
"""

import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SERVER_KIND, skip  # noqa: E402

if SERVER_KIND != "nbdstack":
    skip("tests nbdstack's --log=syslog")
try:
    import nbd
except ImportError:
    skip("python3-libnbd is not installed")

if os.environ.get("NBDS_SYSLOG_NS") != "1":
    if os.geteuid() != 0:
        skip("needs root for a private mount namespace with its own /dev/log")
    unshare = "/usr/bin/unshare"
    if not os.access(unshare, os.X_OK):
        skip("no unshare (util-linux)")
    r = subprocess.run([unshare, "-m", "--propagation", "private", "true"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if r.returncode != 0:
        skip("unshare -m is not permitted here (no CAP_SYS_ADMIN)")
    os.environ["NBDS_SYSLOG_NS"] = "1"
    os.execv(unshare, [unshare, "-m", "--propagation", "private",
                       sys.executable, os.path.abspath(__file__)])

import socket  # noqa: E402
import stat  # noqa: E402

from harness import Test  # noqa: E402

t = Test()
# A private tmpfs over /dev with fresh device nodes.  Never bind the real
# /dev anywhere: a bind of it in the scratch directory would let the
# scratch clean-up delete the host's device nodes.
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/dev"], check=True)
for name, minor in (("null", 3), ("zero", 5), ("full", 7), ("random", 8), ("urandom", 9)):
    os.mknod("/dev/" + name, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    os.chmod("/dev/" + name, 0o666)
os.symlink("/proc/self/fd", "/dev/fd")

logsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
logsock.bind("/dev/log")
logsock.settimeout(60)

img = t.image("sys.img", 1 << 20)
srv = t.start_server("syslog", ["-t", "-v", "--log=syslog", "-x", "sysexp"], img)
with open(srv.pidfile) as f:
    pid = int(f.read())
h = nbd.NBD()
h.connect_uri(srv.uri("sysexp"))
h.pread(4096, 8192)
h.shutdown()
del h
t.eq(srv.stop(), 0, "server exit status")

msgs = []
logsock.settimeout(2)
while True:
    try:
        msgs.append(logsock.recv(65536).decode("utf-8", "replace"))
    except socket.timeout:
        break
tag = r"^<%d>.*nbdstack\[%d\]: "


def got(prio, text):
    return any(re.search(tag % (prio, pid) + text, m) for m in msgs)


# daemon facility (3 << 3) | info (6) = 30, | debug (7) = 31
t.check(got(30, r"unix: connection opened: export 'sysexp'"), "syslog: open line at daemon.info")
t.check(got(30, r"unix: connection closed \(export 'sysexp'\): the client sent NBD_CMD_DISC"),
        "syslog: close line at daemon.info")
t.check(got(31, r"unix: READ offset=8192 count=4096"), "syslog: -v request line at daemon.debug")
with open(srv.logpath, "rb") as f:
    err = f.read().decode("utf-8", "replace")
t.check("connection opened" not in err, "syslog: nothing on stderr")
if t.failures:
    sys.stderr.write("received:\n" + "".join("  " + m + "\n" for m in msgs))
t.finish()
