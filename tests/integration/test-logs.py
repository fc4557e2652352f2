#!/usr/bin/python3
"""Log lines on stderr.

1. Without -v: one line when a client opens an export (peer, export name)
   and one when its connection closes (peer, export, reason), for a Unix
   and a TCP client; no per-request lines.
2. An I/O error on a request (an nbdkit eval plugin whose pread fails with
   EIO) gives one error line naming the export, the command, offset and
   length and the error; the client gets EIO and the connection lives on.
3. With -v: one debug line per request (command, offset, count).
"""

import os
import re
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
    skip("tests nbdstack's log lines")
EVAL = "/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-eval-plugin.so"

t = Test()
img = t.image("log.img", 1 << 20)


def log_lines(srv):
    with open(srv.logpath, "rb") as f:
        return f.read().decode("utf-8", "replace").splitlines()


def has(lines, pattern):
    return any(re.search(pattern, l) for l in lines)


# --- 1. open and close lines, Unix and TCP --------------------------------
srv = t.start_server("quiet", ["-t", "-e", "0", "-x", "logexp"], img)
h = nbd.NBD()
h.connect_uri(srv.uri("logexp"))
h.pread(4096, 0)
h.shutdown()
del h
s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
log = open(os.path.join(t.scratch, "tcp.log"), "wb")
tcp = subprocess.Popen([NBDSTACK, "-f", "raw", "-t", "-b", "127.0.0.1", "-p", str(port),
                        "-x", "tcpexp", img], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
h = nbd.NBD()
for _ in range(600):
    try:
        h.connect_uri("nbd://127.0.0.1:%d/tcpexp" % port)
        break
    except nbd.Error:
        h = nbd.NBD()
        time.sleep(0.1)
h.pread(512, 0)
h.shutdown()
del h
tcp.send_signal(signal.SIGTERM)
tcp.wait(60)
srv.stop()
lines = log_lines(srv)
t.check(has(lines, r"^nbdstack: unix: connection opened: export 'logexp'"),
        "open line with peer and export (Unix)")
t.check(has(lines, r"^nbdstack: unix: connection closed \(export 'logexp'\): the client sent NBD_CMD_DISC$"),
        "close line with peer, export and reason (Unix)")
t.check(not has(lines, r"READ offset="), "no per-request lines without -v")
with open(os.path.join(t.scratch, "tcp.log"), "rb") as f:
    tlines = f.read().decode("utf-8", "replace").splitlines()
t.check(has(tlines, r"^nbdstack: 127\.0\.0\.1:\d+: connection opened: export 'tcpexp'"),
        "open line with peer address and export (TCP)")
t.check(has(tlines, r"^nbdstack: 127\.0\.0\.1:\d+: connection closed \(export 'tcpexp'\): "),
        "close line with peer address and export (TCP)")
# (The harness's readiness probe makes one more connection, with no export.)
if not t.check(len([l for l in lines if "logexp" in l]) == 2,
               "exactly two lines for one connection without -v"):
    sys.stderr.write(srv.logtext())

# --- 2. an I/O error ----------------------------------------------------
if not os.path.exists(EVAL):
    print("ok - # SKIP nbdkit's eval plugin is not installed (%s)" % EVAL)
else:
    srv = t.start_server("eio", ["-t", "-x", "bad", "--plugin", "eval", "get_size=echo 1M",
                                 "pread=echo EIO injected >&2; exit 1"], None)
    h = nbd.NBD()
    h.connect_uri(srv.uri("bad"))
    try:
        h.pread(512, 4096)
        t.fail("read from the failing plugin succeeded")
    except nbd.Error as e:
        t.eq(e.errnum, 5, "failing read: the client gets EIO")
    try:
        h.pread(512, 8192)
    except nbd.Error:
        pass
    t.check(h.aio_is_ready(), "failing read: the connection lives on")
    h.shutdown()
    del h
    srv.stop()
    lines = log_lines(srv)
    t.check(has(lines, r"^nbdstack: unix: export 'bad': READ at 4096\+512 failed: Input/output error$"),
            "error line: export, command, offset+length, error")
    t.check(has(lines, r"^nbdstack: unix: export 'bad': READ at 8192\+512 failed: "),
            "error line: one per failed request")

# --- 3. -v -------------------------------------------------------------------
srv = t.start_server("verbose", ["-t", "-v"], img)
h = nbd.NBD()
h.connect_uri(srv.uri())
h.pwrite(b"v" * 1024, 65536)
h.pread(2048, 131072)
h.flush()
h.shutdown()
del h
srv.stop()
lines = log_lines(srv)
t.check(has(lines, r": WRITE offset=65536 count=1024 flags=0x0$"), "-v: a line for the WRITE")
t.check(has(lines, r": READ offset=131072 count=2048 flags=0x0$"), "-v: a line for the READ")
t.check(has(lines, r": FLUSH offset=0 count=0 flags=0x0$"), "-v: a line for the FLUSH")
t.check(has(lines, r"connection opened: export ''"), "-v: the open line too")

t.finish()
