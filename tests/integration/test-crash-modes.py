#!/usr/bin/python3
"""kill -9 in the middle of a write workload, in every cache mode but
unsafe, raw and qcow2 (and raw through the block cache).

The workload of crashload.py (random writes, some FUA, a FLUSH every few,
up to 8 in flight) runs for a random time, then the server gets SIGKILL.
Every write a completed FLUSH or FUA made durable must read back; where
the write cache is off (writethrough, directsync) every acknowledged
write must.  Bytes no write touched stay zero, and qcow2 images pass
`qemu-img check` (leaks allowed).

SIGKILL takes the server's memory, not the kernel's page cache, so this
shows nothing acknowledged as durable was held only in the server;
test-cache-modes.py shows that durable means fdatasync or RWF_DSYNC.
test-durability.py does the same with no request in flight at the kill,
test-qcow2-crash.py with qcow2 geometries and backing files.

Environment: CRASH_MODES_ITERS, iterations per case (default 2).
"""
import os
import random
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, libnbd  # noqa: E402
from crashload import Workload, check_survivors  # noqa: E402

libnbd()  # Server.client needs it

M = 1 << 20
SIZE = 32 * M
ITERS = int(os.environ.get("CRASH_MODES_ITERS", "2"))

# (format, server arguments, acknowledged writes durable without FLUSH?)
CASES = [(fmt, ["--cache=" + mode], mode in ("writethrough", "directsync"))
         for fmt in ("raw", "qcow2")
         for mode in ("writeback", "writethrough", "none", "directsync")]
CASES.append(("raw", ["--block-cache=2M", "--block-cache-block=64K"], False))

t = Test()

for n, (fmt, args, acked_durable) in enumerate(CASES):
    for it in range(ITERS):
        rng = random.Random(2000 + 10 * n + it)
        what = "%s %s, iter %d" % (fmt, " ".join(args), it)
        img = os.path.join(t.scratch, "disk." + fmt)
        if fmt == "raw":
            t.image("disk.raw", SIZE)
        else:
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, str(SIZE)], check=True)
        srv = t.start_server("c", ["-f", fmt, "-t"] + args, img)
        h = srv.client()
        w = Workload(h, rng, SIZE)
        kill_after = rng.uniform(0.15, 1.5)
        w.run(kill_after)
        rc = srv.stop(sig=signal.SIGKILL)
        t.eq(rc, -signal.SIGKILL, "%s: server killed" % what)
        t.check(not w.errors, "%s: no request failed before the kill %s" % (what, w.errors[:1]))
        del h
        print("# %s: %s, killed after %.2fs" % (what, w.summary(), kill_after))

        if fmt == "qcow2":
            t.qemu_img_check(img, what)
        data = t.disk_bytes(img, fmt)
        t.eq(len(data), SIZE, "%s: size" % what)
        check_survivors(t, what, data, w, 0, acked_durable)
        os.unlink(img)

t.finish()
