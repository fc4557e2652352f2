#!/usr/bin/python3
"""The in-server block cache, through the real server, for each of its 8
policy combinations:

- write twice the cache's size without any FLUSH; after kill -9 every
  block that had to leave the cache is in the image (a dirty block is
  written back before it is evicted);
- the same again, then a clean exit: a fresh server on the same file
  (no block cache) reads every byte back;
- reads through the cache return the newest data (overwrites, zeroes and
  trims mixed in), and the counters SIGUSR1 prints move as they should.
"""
import os
import random
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test  # noqa: E402

sys.path.insert(0, "/usr/lib/python3/dist-packages")
import nbd  # noqa: E402

K = 1024
M = 1 << 20
CACHE = 1 * M
BLOCK = 64 * K

t = Test()
rng = random.Random(42)


def connect(srv):
    h = nbd.NBD()
    h.connect_uri(srv.uri())
    return h


def policies():
    for rm in ("allocate", "bypass"):
        for wh in ("write-back", "write-through"):
            for wm in ("allocate", "no-allocate"):
                yield rm, wh, wm


for rm, wh, wm in policies():
    name = "read-miss=%s write-hit=%s write-miss=%s" % (rm, wh, wm)
    args = ["--block-cache=%d" % CACHE, "--block-cache-block=%d" % BLOCK,
            "--block-cache-read-miss=" + rm, "--block-cache-write-hit=" + wh,
            "--block-cache-write-miss=" + wm]

    # 1: twice the cache size, no FLUSH, then kill -9.
    img = t.image("disk.img", 4 * M)
    srv = t.start_server("a", ["-t"] + args, img)
    h = connect(srv)
    data = [rng.randbytes(BLOCK) for _ in range(2 * CACHE // BLOCK)]
    for i, d in enumerate(data):
        h.pwrite(d, i * BLOCK)
    srv.stop(sig=signal.SIGKILL)
    del h
    with open(img, "rb") as f:
        on_disk = [f.read(BLOCK) for _ in data]
    # Whatever the eviction order, at most CACHE bytes can still be only
    # in the cache: the rest must be in the image.
    present = sum(1 for a, b in zip(on_disk, data) if a == b)
    t.check(present >= len(data) - CACHE // BLOCK,
            "%s: after kill -9, %d of %d blocks are in the image (at least %d must be)"
            % (name, present, len(data), len(data) - CACHE // BLOCK))

    # 2: twice the cache size again, mixed with overwrites, zeroes and
    # trims, checked against a model; then a clean exit.
    model = bytearray(4 * M)
    with open(img, "rb") as f:
        model[:] = f.read()
    srv = t.start_server("b", ["-t", "--discard=unmap"] + args, img)
    h = connect(srv)
    for _ in range(200):
        op = rng.random()
        off = rng.randrange(0, 4 * M - 200 * K)
        n = rng.choice([1, 512, 4 * K, BLOCK, 3 * BLOCK + 123])
        if op < 0.5:
            d = rng.randbytes(n)
            h.pwrite(d, off, nbd.CMD_FLAG_FUA if rng.random() < 0.1 else 0)
            model[off:off + n] = d
        elif op < 0.6:
            h.zero(n, off)
            model[off:off + n] = bytes(n)
        elif op < 0.65:
            h.trim(n, off)          # contents undefined: read them back
            model[off:off + n] = h.pread(n, off)
        elif op < 0.7:
            h.flush()
        else:
            got = h.pread(n, off)
            if got != model[off:off + n]:
                t.fail("%s: read at %d+%d differs from the model" % (name, off, n))
                break
    else:
        t.ok("%s: 200 mixed requests read back as the model says" % name)
    h.shutdown()
    del h
    t.stop_server_ok(srv)

    srv = t.start_server("c", ["-t"], img)
    h = connect(srv)
    t.check(h.pread(4 * M, 0) == model,
            "%s: a fresh server reads back every byte after a clean exit" % name)
    h.shutdown()
    del h
    t.stop_server_ok(srv)
    os.unlink(img)

# The counters, read with SIGUSR1 while the server runs.
img = t.image("disk.img", 4 * M)
srv = t.start_server("s", ["-t", "--block-cache=1M"], img)
h = connect(srv)
h.pread(4 * K, 0)            # miss (allocate)
h.pread(4 * K, 0)            # hit
h.pread(4 * K, 8 * K)        # hit: same 64K block
os.kill(srv.proc.pid, signal.SIGUSR1)
for _ in range(50):
    m = re.search(r"hits=(\d+) misses=(\d+)", srv.logtext())
    if m:
        break
    time.sleep(0.1)
t.check(m and int(m.group(1)) >= 2 and int(m.group(2)) >= 1,
        "SIGUSR1 prints the counters (hits >= 2, misses >= 1): %s"
        % (m.group(0) if m else "nothing printed"))
h.shutdown()
del h
t.stop_server_ok(srv)
t.finish()
