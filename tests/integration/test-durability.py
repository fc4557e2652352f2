#!/usr/bin/python3
"""What a client was told is durable survives kill -9 of the server.

For every cache mode, with and without the block cache: write, FLUSH,
write more, then SIGKILL the server.  Everything before the FLUSH must be
in the image file.  Where the write cache is off (writethrough,
directsync) or the block cache writes through, every acknowledged write
must be there too, FLUSH or not.

kill -9 takes the server's memory but not the kernel's page cache, so this
shows that nothing acknowledged is held only in the server (the block
cache is where that could go wrong); test-cache-modes.py shows, from the
syscalls, that durable means fdatasync or RWF_DSYNC.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test  # noqa: E402

sys.path.insert(0, "/usr/lib/python3/dist-packages")
import nbd  # noqa: E402

M = 1 << 20

# name: (server arguments, acknowledged writes durable without FLUSH?)
CASES = {
    "writeback": (["--cache=writeback"], False),
    "writethrough": (["--cache=writethrough"], True),
    "none": (["--cache=none"], False),
    "directsync": (["--cache=directsync"], True),
    "unsafe": (["--cache=unsafe"], False),
    "block-cache write-back": (["--block-cache=2M", "--block-cache-block=64K"], False),
    "block-cache write-through": (["--block-cache=2M", "--block-cache-write-hit=write-through"],
                                  True),
    "block-cache + writethrough": (["--block-cache=2M", "--cache=writethrough"], True),
}

t = Test()


def pattern(byte, n):
    return bytes([byte]) * n


for name, (args, write_durable) in CASES.items():
    img = t.image("disk.img", 32 * M)
    srv = t.start_server("d", ["-t"] + args, img)
    h = nbd.NBD()
    h.connect_uri(srv.uri())
    # 8 MiB before the FLUSH: four times the block cache, so it must have
    # written back and evicted dirty blocks on the way.
    for i in range(8):
        h.pwrite(pattern(0xA0 + i, M), i * M)
    h.flush()
    for i in range(4):
        h.pwrite(pattern(0xB0 + i, M), (16 + i) * M)
    rc = srv.stop(sig=signal.SIGKILL)
    t.eq(rc, -signal.SIGKILL, "%s: server killed" % name)
    del h

    with open(img, "rb") as f:
        flushed_ok = all(f.read(M) == pattern(0xA0 + i, M) for i in range(8))
        f.seek(16 * M)
        acked_ok = all(f.read(M) == pattern(0xB0 + i, M) for i in range(4))
    t.check(flushed_ok, "%s: every write before FLUSH is in the image after kill -9" % name)
    if write_durable:
        t.check(acked_ok, "%s: every acknowledged write is in the image after kill -9" % name)
    os.unlink(img)

t.finish()
