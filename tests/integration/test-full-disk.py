#!/usr/bin/python3
"""A really full filesystem: an 8 MiB tmpfs under a raw sparse image of
32 MiB, and under a growing qcow2 image.

The client writes 256 KiB pieces (FLUSH after each) until one fails: it
must fail with NBD_ENOSPC (not EIO: tmpfs, pwrite and io_uring say
ENOSPC, and the server maps it), with everything written before still
there and the server still serving.  Then a filler file is deleted, the
same write succeeds, a FLUSH succeeds (ENOSPC is not a lost write-back,
so it is not sticky, even under writethrough where the write was
RWF_DSYNC), and every byte reads back, from the server and from the image.

Needs root (mount -t tmpfs); skips otherwise.  --cache=none needs O_DIRECT
on tmpfs (Linux 6.6 and later); where it is missing those cases are
skipped with a message.
"""
import atexit
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, skip, libnbd  # noqa: E402
from nbdpeers import nbd_errno  # noqa: E402

libnbd()  # Server.client needs it

K = 1024
M = K * K
PIECE = 256 * K
IMAGE_SIZE = 32 * M

t = Test()
mnt = os.path.join(t.scratch, "mnt")
os.mkdir(mnt)
p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", mnt],
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
if p.returncode != 0:
    skip("cannot mount a tmpfs (needs root): %s" % p.stdout.decode(errors="replace").strip())


def unmount():
    for s in t.servers:
        s.stop(timeout=5)
    subprocess.run(["umount", "-l", mnt])


atexit.register(unmount)


def o_direct_works():
    path = os.path.join(mnt, "probe")
    try:
        os.close(os.open(path, os.O_CREAT | os.O_RDWR | os.O_DIRECT))
        return True
    except OSError:
        return False
    finally:
        if os.path.exists(path):
            os.unlink(path)


def piece(i):
    return bytes([0x40 + i % 64]) * PIECE


CASES = [("raw", "writeback"), ("raw", "writethrough"), ("raw", "none"),
         ("qcow2", "writeback"), ("qcow2", "none")]
direct_ok = o_direct_works()

for fmt, cache in CASES:
    what = "%s, cache=%s" % (fmt, cache)
    if cache == "none" and not direct_ok:
        print("# SKIP %s: this kernel's tmpfs has no O_DIRECT" % what)
        continue
    for name in os.listdir(mnt):
        os.unlink(os.path.join(mnt, name))
    filler = os.path.join(mnt, "filler")
    with open(filler, "wb") as f:
        f.write(b"\xff" * M)
    img = os.path.join(mnt, "disk." + fmt)
    if fmt == "raw":
        with open(img, "wb") as f:
            f.truncate(IMAGE_SIZE)
    else:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, str(IMAGE_SIZE)], check=True)

    srv = t.start_server("full", ["-f", fmt, "-t", "-e", "0", "--cache=" + cache], img)
    h = srv.client()
    err = 0
    for i in range(IMAGE_SIZE // PIECE):
        err = nbd_errno(h.pwrite, piece(i), i * PIECE) or nbd_errno(h.flush)
        if err:
            break
    full_at = i
    print("# %s: full after %d pieces (%d KiB)" % (what, full_at, full_at * PIECE // K))
    t.eq(err, "ENOSPC", "%s: the write that does not fit gets NBD_ENOSPC" % what)
    t.check(full_at >= 8, "%s: the disk filled up only after %d pieces" % (what, full_at))
    t.check(srv.alive(), "%s: the server is still running" % what)

    h2 = srv.client()
    bad = [j for j in range(full_at) if h2.pread(PIECE, j * PIECE) != piece(j)]
    t.check(not bad, "%s: a second connection reads all %d pieces written before%s"
            % (what, full_at, " (bad: %s)" % bad[:5] if bad else ""))
    h2.shutdown()

    os.unlink(filler)
    t.eq(nbd_errno(h.pwrite, piece(full_at), full_at * PIECE), 0,
         "%s: with space freed the same write succeeds" % what)
    t.eq(nbd_errno(h.flush), 0, "%s: and FLUSH succeeds" % what)
    t.eq(nbd_errno(h.pwrite, piece(full_at + 1), (full_at + 1) * PIECE), 0,
         "%s: and the next write too" % what)
    t.eq(nbd_errno(h.flush), 0, "%s: and the next FLUSH" % what)
    bad = [j for j in range(full_at + 2) if h.pread(PIECE, j * PIECE) != piece(j)]
    t.check(not bad, "%s: every piece reads back%s" % (what, " (bad: %s)" % bad[:5] if bad else ""))
    h.shutdown()
    t.stop_server_ok(srv)

    if fmt == "qcow2":
        t.qemu_img_check(img, what)
    data = t.disk_bytes(img, fmt)
    bad = [j for j in range(full_at + 2) if data[j * PIECE:(j + 1) * PIECE] != piece(j)]
    t.check(not bad, "%s: the image holds every piece%s" % (what, " (bad: %s)" % bad[:5] if bad else ""))

t.finish()
