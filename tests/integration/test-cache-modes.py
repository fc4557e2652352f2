#!/usr/bin/python3
"""Each cache mode, observed from the system calls the server makes.

The server runs under strace with --aio=threads (through io_uring the
syscalls would be hidden in io_uring_enter).  A client does, with a marker
read at a known offset between steps so the trace can be cut into steps:

  1 plain write   2 FLUSH   3 FUA write   4 FLUSH   5 plain write, then
  the client leaves and the server gets SIGTERM (a clean exit).

and each step's syscalls are compared with QEMU's table:

  mode          O_DIRECT  write cache  flush ignored
  writeback     no        on           no
  writethrough  no        off          no
  none          yes       on           no
  directsync    yes       off          no
  unsafe        no        on           yes

Write cache off: every write is durable (RWF_DSYNC) before its reply, and
a FLUSH after it has nothing left to do.  Flush ignored: no fdatasync ever,
not even at exit.  Every mode advertises FLUSH and FUA, as qemu-nbd does.
"""
import os
import re
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, skip  # noqa: E402

sys.path.insert(0, "/usr/lib/python3/dist-packages")
import nbd  # noqa: E402

if not shutil.which("strace"):
    skip("strace is missing")

MODES = {
    #               direct  wce    no_flush
    "writeback":    (False, True,  False),
    "writethrough": (False, False, False),
    "none":         (True,  True,  False),
    "directsync":   (True,  False, False),
    "unsafe":       (False, True,  True),
}
M = 1 << 20  # markers are reads at k MiB
K4 = 4096

# LeakSanitizer cannot run under ptrace; the other tests check for leaks.
os.environ["ASAN_OPTIONS"] = ":".join(
    filter(None, [os.environ.get("ASAN_OPTIONS"), "detect_leaks=0"]))

t = Test()


def run_mode(mode):
    direct, wce, no_flush = MODES[mode]
    img = t.image("disk-%s.img" % mode, 8 * M)
    log = os.path.join(t.scratch, "strace-%s.log" % mode)
    srv = t.start_server(mode, ["-t", "--aio=threads", "--cache=" + mode], img,
                         wrapper=["strace", "-f", "-qq", "-o", log, "-e",
                                  "trace=openat,preadv,pwritev,pwritev2,"
                                  "fdatasync,fsync,writev,sendmsg"])
    h = nbd.NBD()
    h.connect_uri(srv.uri())
    t.check(h.can_flush(), "%s: FLUSH advertised" % mode)
    t.check(h.can_fua(), "%s: FUA advertised" % mode)
    t.check(not h.can_multi_conn(), "%s: no multi-conn with -e 1" % mode)
    h.pread(512, 1 * M)
    h.pwrite(b"a" * K4, 0)
    h.pread(512, 2 * M)
    h.flush()
    h.pread(512, 3 * M)
    h.pwrite(b"b" * K4, 2 * K4, nbd.CMD_FLAG_FUA)
    h.pread(512, 4 * M)
    h.flush()
    h.pread(512, 5 * M)
    h.pwrite(b"c" * K4, 4 * K4)
    h.pread(512, 6 * M)
    h.shutdown()
    del h
    t.stop_server_ok(srv)

    with open(log) as f:
        lines = f.read().splitlines()
    with open(img, "rb") as f:
        data = f.read(5 * K4)
    t.check(data[:K4] == b"a" * K4 and data[2 * K4:3 * K4] == b"b" * K4
            and data[4 * K4:] == b"c" * K4, "%s: all three writes are in the image" % mode)

    # The image's open flags.
    opens = [l for l in lines if "openat(" in l and os.path.basename(img) in l
             and "ENOENT" not in l]
    t.check(opens, "%s: the image was opened" % mode)
    t.eq(any("O_DIRECT" in l for l in opens), direct, "%s: O_DIRECT" % mode)

    # Cut the trace at the marker reads (preadv ... , OFFSET) = N).
    steps = [[] for _ in range(7)]
    step = 0
    for l in lines:
        m = re.search(r"preadv\(\d+, .*, (\d+)\) = \d+$", l)
        if m and int(m.group(1)) % M == 0 and int(m.group(1)) // M in range(1, 7):
            step = int(m.group(1)) // M
            continue
        steps[step].append(l)

    def count(step, pattern):
        return sum(1 for l in steps[step] if re.search(pattern, l))

    dsync = r"pwritev2\(.*RWF_DSYNC"
    fsync = r"\b(fdatasync|fsync)\("
    # 1: plain write
    t.eq(count(1, dsync) > 0, not wce, "%s: plain write made durable (RWF_DSYNC)" % mode)
    t.eq(count(1, fsync), 0, "%s: plain write: no fdatasync (FUA is native)" % mode)
    # 2: FLUSH after it
    t.eq(count(2, fsync), 1 if (wce and not no_flush) else 0,
         "%s: FLUSH after a plain write: fdatasync count" % mode)
    # 3: FUA write
    t.eq(count(3, dsync) > 0, not no_flush, "%s: FUA write durable (RWF_DSYNC)" % mode)
    # 4: FLUSH with nothing written since the last durable point costs nothing
    t.eq(count(4, fsync), 0, "%s: FLUSH with nothing dirty: no fdatasync" % mode)
    # 5/6: a plain write, then the clean exit flushes it unless flushes are off
    t.eq(count(6, fsync), 1 if (wce and not no_flush) else 0,
         "%s: clean exit flushes dirty data: fdatasync count" % mode)
    t.eq(count(6, dsync) + count(5, dsync) > 0, not wce,
         "%s: last plain write durable when acknowledged" % mode)

    # Durable before acknowledged: with the write cache off, the write's
    # pwritev2 returns before the reply is written to the socket.
    if not wce:
        seq = steps[1]
        w = next((i for i, l in enumerate(seq)
                  if re.search(dsync, l) and re.search(r"= 4096$", l)), None)
        if w is None:  # the call was split by another thread's line
            w = next((i for i, l in enumerate(seq)
                      if "pwritev2 resumed" in l and l.endswith("= 4096")), None)
        r = next((i for i, l in enumerate(seq)
                  if re.search(r"(writev|sendmsg)\(\d+, .*gD", l)), None)
        t.check(w is not None and r is not None and w < r,
                "%s: the write returned before its reply was sent" % mode)


for mode in MODES:
    run_mode(mode)
t.finish()
