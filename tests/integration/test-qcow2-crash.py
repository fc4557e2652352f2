#!/usr/bin/python3
"""qcow2 crash test: kill -9 the server at random points of a write workload.

Each iteration starts the server (-f qcow2) on a fresh image or on an
overlay with a raw backing file (cluster sizes 64k, 4k, and extended L2
with 128k clusters, in turn), runs a libnbd client that issues random
writes of random sizes (up to 8 in flight, never two overlapping), each
filled with a pattern derived from (generation, offset), with a FLUSH every
few writes and some FUA writes (crashload.py), and SIGKILLs the server at
a random moment.
Afterwards:
  * `qemu-img check` must not report corruption: exit 0 or 3 (leaked
    clusters are allowed; its output is printed otherwise);
  * every write acknowledged before a FLUSH that completed, and every FUA
    write that completed, reads back (qemu-img convert to raw), except
    where a later write (acknowledged or still in flight) overlaps it;
  * bytes no write ever touched still read their original contents (zero,
    or the backing file's).

Note: SIGKILL takes the server's memory but not the kernel's page cache, so
this tests what the server keeps in its own memory (cached L2 tables,
refcount blocks, a deferred L1/L2 update, a write queued but not yet
issued); it does not simulate a power cut (that would need a
write-discarding interposer; see the reference, section 2 item 14).

Environment: QCOW2_CRASH_ITERS (default 20), QCOW2_CRASH_BUDGET seconds
(default 120; iterations stop early once it is spent, after at least 4).
"""
import os
import random
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, libnbd  # noqa: E402
from crashload import Workload, check_survivors  # noqa: E402

nbd = libnbd()

M = 1 << 20
SIZE = 64 * M
BACKING_BYTE = 0xBB
ITERS = int(os.environ.get("QCOW2_CRASH_ITERS", "20"))
BUDGET = float(os.environ.get("QCOW2_CRASH_BUDGET", "120"))

t = Test()
S = t.scratch


def run(argv, check=True):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if check and p.returncode != 0:
        t.fatal("%s failed (%d):\n%s" % (" ".join(argv), p.returncode, p.stdout.decode(errors="replace")))
    return p


base = os.path.join(S, "base.raw")
with open(base, "wb") as f:
    f.write(bytes([BACKING_BYTE]) * SIZE)

GEOMETRIES = ["cluster_size=64k", "cluster_size=4k", "extended_l2=on,cluster_size=128k"]

start_all = time.monotonic()
done_iters = 0
for it in range(ITERS):
    if it >= 4 and time.monotonic() - start_all > BUDGET:
        print("# time budget of %.0fs spent after %d iterations" % (BUDGET, it))
        break
    rng = random.Random(1000 + it)
    overlay = it % 2 == 1
    geom = GEOMETRIES[(it // 2) % len(GEOMETRIES)]
    what = "iter %d (%s, %s)" % (it, "overlay" if overlay else "fresh", geom)
    img = os.path.join(S, "c.qcow2")
    if os.path.exists(img):
        os.unlink(img)
    opts = ["-o", geom]
    if overlay:
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw"] + opts + [img, str(SIZE)])
    else:
        run(["qemu-img", "create", "-q", "-f", "qcow2"] + opts + [img, str(SIZE)])

    srv = t.start_server("c", ["-f", "qcow2", "-t"], img)
    h = nbd.NBD()
    h.connect_uri(srv.uri())

    w = Workload(h, rng, SIZE)
    kill_after = rng.uniform(0.15, 1.5)
    w.run(kill_after)
    # The kill: everything recorded above was acknowledged before it.
    rc = srv.stop(sig=signal.SIGKILL)
    t.check(rc == -signal.SIGKILL, "%s: server killed by SIGKILL (status %r)" % (what, rc))
    t.check(not w.errors, "%s: no request failed before the kill %s" % (what, w.errors[:1]))
    try:
        h.shutdown()
    except Exception:
        pass
    del h

    print("# %s: %s, killed after %.2fs" % (what, w.summary(), kill_after))

    t.qemu_img_check(img, what)

    out = os.path.join(S, "c.raw")
    p = run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", img, out], check=False)
    if not t.check(p.returncode == 0, "%s: qemu-img convert of the crashed image" % what):
        sys.stderr.write(p.stdout.decode(errors="replace"))
        continue
    with open(out, "rb") as f:
        data = f.read()
    t.eq(len(data), SIZE, "%s: virtual size" % what)

    check_survivors(t, what, data, w, BACKING_BYTE if overlay else 0)
    os.unlink(out)
    done_iters += 1

t.check(done_iters >= 4, "ran %d crash iterations" % done_iters)
t.finish()
