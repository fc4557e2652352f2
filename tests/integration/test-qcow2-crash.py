#!/usr/bin/python3
"""qcow2 crash test: kill -9 the server at random points of a write workload.

Each iteration starts the server (-f qcow2) on a fresh image or on an
overlay with a raw backing file (cluster sizes 64k, 4k, and extended L2
with 128k clusters, in turn), runs a libnbd client that issues random
writes of random sizes (up to 8 in flight, never two overlapping), each
filled with a pattern derived from (generation, offset), with a FLUSH every
few writes and some FUA writes, and SIGKILLs the server at a random moment.
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
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, SERVER_KIND  # noqa: E402

sys.path.insert(0, "/usr/lib/python3/dist-packages")
try:
    import nbd  # noqa: E402
except ImportError:
    from harness import skip
    skip("python3-libnbd missing")

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


def pattern(gen, off, n):
    """The bytes of write generation gen at [off, off+n): every 16-byte unit
    at absolute (16-aligned) offset q holds (gen, q), so any stale or
    misplaced data is recognisable."""
    q0 = off & ~15
    end = off + n
    buf = b"".join(struct.pack(">QQ", gen, q) for q in range(q0, end, 16))
    return buf[off - q0: off - q0 + n]


def subtract(ranges, a, b):
    """Remove [a, b) from a list of disjoint [s, e) ranges."""
    out = []
    for s, e in ranges:
        if e <= a or b <= s:
            out.append((s, e))
        else:
            if s < a:
                out.append((s, a))
            if b < e:
                out.append((b, e))
    return out


base = os.path.join(S, "base.raw")
with open(base, "wb") as f:
    f.write(bytes([BACKING_BYTE]) * SIZE)

GEOMETRIES = ["cluster_size=64k", "cluster_size=4k", "extended_l2=on,cluster_size=128k"]
SIZES = [1, 100, 512, 4096, 4096 + 512, 65536, 65536 + 4096, 200000, 1 << 20]

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

    writes = []         # [gen, off, n, fua, state] state: 0 in flight, 1 acked, 2 failed
    inflight = {}       # cookie -> ("w", index) | ("f", [indexes acked when sent])
    durable = set()     # indexes of writes a completed FLUSH / FUA made durable
    errors = []
    kill_after = rng.uniform(0.15, 1.5)
    t0 = time.monotonic()

    def reap():
        for c in list(inflight):
            if h.aio_command_completed(c):
                kind, x = inflight.pop(c)
                if kind == "w":
                    writes[x][4] = 1
                    if writes[x][3]:
                        durable.add(x)
                else:
                    durable.update(x)

    def overlaps_inflight(a, b):
        for kind, x in inflight.values():
            if kind == "w":
                _, o, n, _, _ = writes[x]
                if o < b and a < o + n:
                    return True
        return False

    gen = 0
    nflush = 0
    try:
        while time.monotonic() - t0 < kill_after:
            reap()
            if rng.random() < 0.12:
                acked = [i for i, w in enumerate(writes) if w[4] == 1 and i not in durable]
                c = h.aio_flush()
                inflight[c] = ("f", acked)
                nflush += 1
                continue
            n = rng.choice(SIZES)
            span = 8 * M if rng.random() < 0.7 else SIZE
            off = rng.randrange(0, span - n)
            if rng.random() < 0.4:
                off -= off % 512
            while overlaps_inflight(off, off + n) or len(inflight) >= 8:
                h.poll(100)
                reap()
                if time.monotonic() - t0 >= kill_after:
                    break
            else:
                gen += 1
                fua = rng.random() < 0.05
                writes.append([gen, off, n, fua, 0])
                c = h.aio_pwrite(pattern(gen, off, n), off,
                                 flags=nbd.CMD_FLAG_FUA if fua else 0)
                inflight[c] = ("w", len(writes) - 1)
        h.poll(0)
        reap()
    except nbd.Error as e:
        errors.append(str(e))
    # The kill: everything recorded above was acknowledged before it.
    rc = srv.stop(sig=signal.SIGKILL)
    t.check(rc == -signal.SIGKILL, "%s: server killed by SIGKILL (status %r)" % (what, rc))
    t.check(not errors, "%s: no request failed before the kill %s" % (what, errors[:1]))
    try:
        h.shutdown()
    except Exception:
        pass
    del h

    n_acked = sum(1 for w in writes if w[4] == 1)
    print("# %s: %d writes (%d acked, %d durable), %d flushes, killed after %.2fs"
          % (what, len(writes), n_acked, len(durable), nflush, kill_after))

    p = run(["qemu-img", "check", img], check=False)
    if not t.check(p.returncode in (0, 3), "%s: qemu-img check exit %d (0 or 3 allowed)" % (what, p.returncode)):
        sys.stderr.write("".join("  check: " + l + "\n" for l in p.stdout.decode(errors="replace").splitlines()))

    out = os.path.join(S, "c.raw")
    p = run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", img, out], check=False)
    if not t.check(p.returncode == 0, "%s: qemu-img convert of the crashed image" % what):
        sys.stderr.write(p.stdout.decode(errors="replace"))
        continue
    with open(out, "rb") as f:
        data = f.read()
    t.eq(len(data), SIZE, "%s: virtual size" % what)

    # Durable writes: what no later write (acked or in flight) overlaps.
    bad = []
    for i in sorted(durable):
        g, o, n, _, _ = writes[i]
        rest = [(o, o + n)]
        for later in writes[i + 1:]:
            rest = subtract(rest, later[1], later[1] + later[2])
            if not rest:
                break
        for a, b in rest:
            if data[a:b] != pattern(g, a, b - a):
                bad.append("gen %d [%d,+%d): [%d,%d) differs" % (g, o, n, a, b))
                break
    t.check(not bad, "%s: all %d durable writes read back%s"
            % (what, len(durable), (": " + "; ".join(bad[:3])) if bad else ""))

    # Bytes no write ever touched keep their original contents.
    untouched = [(0, SIZE)]
    for w in writes:
        untouched = subtract(untouched, w[1], w[1] + w[2])
    orig = BACKING_BYTE if overlay else 0
    bad = []
    for a, b in untouched:
        if data[a:b].count(orig) != b - a:
            j = next(k for k in range(a, b) if data[k] != orig)
            bad.append("offset %d: 0x%02x" % (j, data[j]))
            if len(bad) >= 3:
                break
    t.check(not bad, "%s: untouched ranges read 0x%02x%s"
            % (what, orig, (": " + "; ".join(bad)) if bad else ""))
    os.unlink(out)
    done_iters += 1

t.check(done_iters >= 4, "ran %d crash iterations" % done_iters)
t.finish()
