#!/usr/bin/python3
# The nbd layer over an upstream with small block-size limits: nbdkit
# memory behind the blocksize-policy filter (minimum 4K, preferred and
# maximum 64K, EINVAL for anything else), with the log filter in front of
# it recording every command nbdstack sends.
#
# - the upstream really refuses unaligned and oversized requests;
# - nbdstack advertises minimum 1 (it aligns itself: qemu-nbd's choice; the
#   layers above and clients that never ask for block sizes send unaligned
#   requests), preferred 64K, maximum 32M;
# - seeded large and unaligned writes, zeroes, trims, caches and reads
#   through the chain match a model of the disk, and what the upstream
#   holds;
# - every command the upstream sees is aligned and at most 64K; the pieces
#   of a FUA write all carry FUA, of a NO_HOLE zero all forbid trimming,
#   a plain zero allows it, FAST_ZERO reaches the aligned middle, and an
#   unaligned FAST_ZERO fails with ENOTSUP (its edges need writes) without
#   touching the data;
# - concurrent small writes to different bytes of one 4K block (each a
#   read-modify-write upstream) all land;
# - block status at an unaligned offset describes the range from there.
import os
import random
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, skip, SERVER_KIND  # noqa: E402
from nbdpeers import Peers  # noqa: E402

try:
    import nbd
except ImportError:
    skip("python3-libnbd (module nbd) is not installed for /usr/bin/python3")
if SERVER_KIND != "nbdstack":
    skip("the nbd layer is an nbdstack feature")
if not shutil.which("nbdkit"):
    skip("nbdkit is not installed")
if subprocess.run(["nbdkit", "--filter=blocksize-policy", "--filter=log", "null", "--dump-plugin"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
    skip("nbdkit lacks the blocksize-policy or log filter")

K = 1024
M = K * K
SIZE = 16 * M
MIN, MAX = 4 * K, 64 * K

t = Test()
ksock = os.path.join(t.scratch, "up.sock")
klog = os.path.join(t.scratch, "up-commands.log")
Peers(t).start("nbdkit", ["nbdkit", "-f", "-U", ksock, "--filter=log", "--filter=blocksize-policy",
                         "memory", str(SIZE), "logfile=" + klog,
                         "blocksize-minimum=%d" % MIN, "blocksize-preferred=%d" % MAX,
                         "blocksize-maximum=%d" % MAX, "blocksize-error-policy=error"], ksock)
UP_URI = "nbd+unix:///?socket=" + ksock

# The upstream enforces its limits.
up = nbd.NBD()
up.set_strict_mode(0)
up.connect_uri(UP_URI)
for what, fn in (("unaligned read", lambda: up.pread(512, 100)),
                 ("read above the maximum", lambda: up.pread(2 * MAX, 0)),
                 ("unaligned zero", lambda: up.zero(100, 4096))):
    try:
        fn()
        t.fail("the upstream accepted an %s: the test proves nothing" % what)
    except nbd.Error as e:
        t.eq(e.errno, "EINVAL", "upstream refuses an %s" % what)


def up_read(count, offset):
    """Read the upstream within its limits."""
    lo, hi = offset - offset % MIN, -(-(offset + count) // MIN) * MIN
    data = b"".join(up.pread(min(MAX, hi - o), o) for o in range(lo, hi, MAX))
    return data[offset - lo:offset - lo + count]


ch_srv = t.start_server("chain", ["-t", "-e", "4", "--threads", "2", "--discard=unmap"], UP_URI)
ch = nbd.NBD()
ch.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
ch.connect_uri(ch_srv.uri())
t.eq([ch.get_block_size(nbd.SIZE_MINIMUM), ch.get_block_size(nbd.SIZE_PREFERRED),
      ch.get_block_size(nbd.SIZE_MAXIMUM)], [1, MAX, 32 * M],
     "chain advertises minimum 1, preferred 64K (the upstream's), maximum 32M")
t.check(ch.can_fast_zero(), "chain advertises fast zero, as the upstream does")

# Commands the upstream received since the last call.
log_pos = 0
CMD = re.compile(r"(Read|Write|Zero|Trim|Cache|Extents) id=\d+ offset=0x([0-9a-f]+) "
                 r"count=0x([0-9a-f]+)(.*?)\.\.\.")


def new_commands():
    global log_pos
    with open(klog) as f:
        f.seek(log_pos)
        text = f.read()
        log_pos = f.tell()
    return [(m.group(1), int(m.group(2), 16), int(m.group(3), 16), m.group(4))
            for m in CMD.finditer(text)]


def all_fit(cmds):
    return all(o % MIN == 0 and c % MIN == 0 and (c <= MAX or k in ("Zero", "Trim", "Extents"))
               for k, o, c, _ in cmds)


new_commands()
model = bytearray(SIZE)
rng = random.Random(2024)

# A large unaligned FUA write: many pieces, each aligned and carrying FUA.
data = rng.randbytes(3 * M + 777)
ch.pwrite(data, 1 * M + 123, nbd.CMD_FLAG_FUA)
model[1 * M + 123:1 * M + 123 + len(data)] = data
cmds = new_commands()
writes = [c for c in cmds if c[0] == "Write"]
t.check(len(writes) >= (3 * M) // MAX and all_fit(cmds),
        "3M unaligned FUA write: %d upstream writes, all aligned and <= 64K" % len(writes))
t.check(all("fua=1" in c[3] for c in writes), "every piece of the FUA write carries FUA")
t.same(ch.pread(len(data) + 10, 1 * M + 118), bytes(model[1 * M + 118:1 * M + 128 + len(data)]),
       "large unaligned read through the chain")
t.same(up_read(len(data), 1 * M + 123), data, "the upstream holds the write")
all_fit(new_commands()) or t.fail("a read reached the upstream unaligned")

# Zero with NO_HOLE: the aligned middle forbids trimming; the edges are
# written.
ch.zero(300 * K + 5, 2 * M + 1000, nbd.CMD_FLAG_NO_HOLE)
model[2 * M + 1000:2 * M + 1000 + 300 * K + 5] = bytes(300 * K + 5)
cmds = new_commands()
zeros = [c for c in cmds if c[0] == "Zero"]
t.check(zeros and all("trim=0" in c[3] for c in zeros) and all_fit(cmds),
        "NO_HOLE zero: upstream zeroes %r forbid trimming, all aligned" % [(o, n) for _, o, n, _ in zeros])
ch.zero(200 * K + 3, 2 * M + 600 * K + 1)
model[2 * M + 600 * K + 1:2 * M + 800 * K + 4] = bytes(200 * K + 3)
cmds = new_commands()
zeros = [c for c in cmds if c[0] == "Zero"]
t.check(zeros and all("trim=1" in c[3] for c in zeros) and all_fit(cmds),
        "plain zero: the upstream may trim, all aligned")

# FAST_ZERO: aligned reaches the upstream as fast; unaligned edges would
# need writes, so ENOTSUP and nothing changes.
ch.zero(64 * K, 3 * M, nbd.CMD_FLAG_FAST_ZERO)
model[3 * M:3 * M + 64 * K] = bytes(64 * K)
cmds = new_commands()
t.check(any(c[0] == "Zero" and "fast=1" in c[3] for c in cmds), "aligned FAST_ZERO is fast upstream")
try:
    ch.zero(10 * K, 1 * M + 100, nbd.CMD_FLAG_FAST_ZERO)
    t.fail("unaligned FAST_ZERO succeeded")
except nbd.Error as e:
    t.eq(e.errno, "ENOTSUP", "unaligned FAST_ZERO fails with ENOTSUP")
t.eq([c[0] for c in new_commands() if c[0] != "Read"], [], "the failed FAST_ZERO changed nothing upstream")

# Seeded mix, checked against the model.
for i in range(300):
    r = rng.random()
    n = rng.choice([1, 100, 511, 4096, 4097, 65535, 65537, 200000, 1 * M + 3])
    off = rng.randrange(0, SIZE - n)
    if r < 0.5:
        b = rng.randbytes(n)
        ch.pwrite(b, off, nbd.CMD_FLAG_FUA if rng.random() < 0.2 else 0)
        model[off:off + n] = b
    elif r < 0.65:
        ch.zero(n, off, nbd.CMD_FLAG_NO_HOLE if rng.random() < 0.5 else 0)
        model[off:off + n] = bytes(n)
    elif r < 0.75:
        ch.trim(n, off)   # advisory: the model keeps the data, re-read below
        model[off:off + n] = ch.pread(n, off)
    elif r < 0.8:
        ch.cache(n, off)
    else:
        if ch.pread(n, off) != model[off:off + n]:
            t.fail("seeded mix: read %d+%d differs from the model (step %d)" % (off, n, i))
            break
cmds = new_commands()
t.check(all_fit(cmds), "seeded mix: %d upstream commands, every one aligned and within the maximum" % len(cmds))
ch.flush()
t.same(ch.pread(SIZE, 0), bytes(model), "seeded mix: the whole disk through the chain equals the model")
t.same(up_read(SIZE, 0), bytes(model), "seeded mix: the upstream equals the model")

# Concurrent small writes into the same blocks: serialised read-modify-writes.
ch.zero(2 * MIN, 8 * M, nbd.CMD_FLAG_NO_HOLE)
cookies = []
expect = bytearray(2 * MIN)
for j in range(64):
    off = j * 128 + 7
    b = bytes([j + 1]) * 100
    expect[off:off + 100] = b
    cookies.append(ch.aio_pwrite(b, 8 * M + off))
while ch.aio_in_flight() > 0:
    ch.poll(-1)
for c in cookies:
    ch.aio_command_completed(c)
t.same(up_read(2 * MIN, 8 * M), bytes(expect), "64 concurrent 100-byte writes into two 4K blocks all land")

# Block status at an unaligned offset starts there.
ch.zero(MAX, 12 * M)
ch.pwrite(b"\x01" * MIN, 12 * M + MAX)
got = []
ch.block_status(2 * MAX, 12 * M + 1000,
                lambda meta, off, ents, err: got.extend(ents) if meta == nbd.CONTEXT_BASE_ALLOCATION else 0)
t.check(len(got) >= 4 and got[0] == MAX - 1000 and got[1] & 2 and (got[3] & 2) == 0,
        "block status at an unaligned offset: zero to the data, then data %r" % got[:6])
t.check(all_fit(new_commands()), "block status went upstream aligned")

ch.shutdown()
up.shutdown()
t.stop_server_ok(ch_srv)
t.finish()
