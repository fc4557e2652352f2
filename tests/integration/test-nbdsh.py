#!/usr/bin/python3
# libnbd (the module nbdsh runs) against the server: FUA write, read, flush,
# zero with NO_HOLE and FAST_ZERO, trim, cache, block_status with REQ_ONE,
# structured read with DF, and multi-conn flush visibility (-e 3 -t).
import errno
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, skip  # noqa: E402

try:
    import nbd
except ImportError:
    skip("python3-libnbd (module nbd) is not installed for /usr/bin/python3")

K = 1024
M = K * K
SIZE = 8 * M
DATA0 = bytes((i * 7 + 3) & 0xFF for i in range(M))   # [0,1M) is data

t = Test(holes=True)
img = t.image("disk.img", SIZE, [(0, DATA0)])
srv = t.start_server("s", ["-t", "-e", "3"], img)


def connect():
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(srv.uri())
    return h


def file_bytes(off, n):
    with open(img, "rb") as f:
        f.seek(off)
        return f.read(n)


def nbd_errno(fn, *a):
    """Run fn; return 0 or the errno of the nbd.Error it raised."""
    try:
        fn(*a)
        return 0
    except nbd.Error as e:
        return e.errno or -1


h = connect()
t.eq(h.get_size(), SIZE, "export size")
t.eq(h.can_multi_conn(), True, "-e 3: can_multi_conn")
t.eq(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), True, "base:allocation negotiated")
t.eq(h.get_structured_replies_negotiated(), True, "structured replies negotiated")

# --- pwrite with FUA, pread, flush -----------------------------------------
pat = bytes((i * 13 + 1) & 0xFF for i in range(64 * K))
h.pwrite(pat, 1 * M, nbd.CMD_FLAG_FUA)
t.same(h.pread(64 * K, 1 * M), pat, "pread after FUA pwrite returns the data")
t.same(file_bytes(1 * M, 64 * K), pat, "FUA pwrite is in the image file when acknowledged")
h.flush()
t.ok("flush")
t.same(h.pread(4096, 0), DATA0[:4096], "pread of pre-existing data")

# --- zero with NO_HOLE -------------------------------------------------------
h.pwrite(b"\x55" * (256 * K), 2 * M)
h.flush()
blocks_before = os.stat(img).st_blocks
h.zero(256 * K, 2 * M, nbd.CMD_FLAG_NO_HOLE)
t.same(h.pread(256 * K, 2 * M), bytes(256 * K), "zero(NO_HOLE) reads back as zero")
t.same(file_bytes(2 * M, 256 * K), bytes(256 * K), "zero(NO_HOLE): image bytes are zero")
t.check(os.stat(img).st_blocks >= blocks_before,
        "zero(NO_HOLE) did not deallocate (st_blocks %d -> %d)" % (blocks_before, os.stat(img).st_blocks))

# --- zero with FAST_ZERO: succeeds (zeroes) or fails ENOTSUP (untouched) ----
t.eq(h.can_fast_zero(), True, "can_fast_zero")
h.pwrite(b"\x66" * (256 * K), 3 * M)
e = nbd_errno(h.zero, 256 * K, 3 * M, nbd.CMD_FLAG_FAST_ZERO)
if e == 0:
    t.same(h.pread(256 * K, 3 * M), bytes(256 * K), "zero(FAST_ZERO) succeeded and reads back as zero")
else:
    t.eq(e, errno.ENOTSUP, "zero(FAST_ZERO) may only fail with ENOTSUP")
    t.same(h.pread(256 * K, 3 * M), b"\x66" * (256 * K), "failed FAST_ZERO left the data untouched")
# plain zero (may punch) still zeroes
h.zero(64 * K, 3 * M + 512 * K)
t.same(h.pread(64 * K, 3 * M + 512 * K), bytes(64 * K), "zero() without flags reads back as zero")

# --- trim and cache ------------------------------------------------------------
h.pwrite(b"\x77" * (64 * K), 4 * M)
t.eq(nbd_errno(h.trim, 64 * K, 4 * M), 0, "trim succeeds")
t.eq(nbd_errno(h.trim, 64 * K, 4 * M, nbd.CMD_FLAG_FUA), 0, "trim with FUA succeeds")
t.eq(len(h.pread(64 * K, 4 * M)), 64 * K, "trimmed range is readable")
t.eq(h.can_cache(), True, "can_cache")
t.eq(nbd_errno(h.cache, 64 * K, 0), 0, "cache succeeds")
t.eq(nbd_errno(h.cache, SIZE, 0), 0, "cache of the whole export succeeds")
t.same(h.pread(4096, 0), DATA0[:4096], "data unchanged by cache")

# --- block_status --------------------------------------------------------------
def block_status(count, offset, flags=0):
    got = {}

    def cb(ctx, off, entries, err):
        got.setdefault(ctx, []).append((off, list(entries)))
        return 0
    h.block_status(count, offset, cb, flags)
    return got


# REQ_ONE over data: exactly one extent, flags 0, not longer than asked
bs = block_status(SIZE, 0, nbd.CMD_FLAG_REQ_ONE)
ents = bs.get(nbd.CONTEXT_BASE_ALLOCATION)
t.check(ents is not None and len(ents) == 1, "REQ_ONE: one reply chunk for base:allocation: %r" % (bs,))
if ents:
    e = ents[0][1]
    t.eq(len(e), 2, "REQ_ONE: exactly one extent (length, flags)")
    t.check(0 < e[0] <= SIZE, "REQ_ONE: extent length %d within request" % e[0])
    t.eq(e[1], 0, "REQ_ONE at offset 0 (data): flags")
# REQ_ONE in a hole, with a short request
bs = block_status(64 * K, 6 * M, nbd.CMD_FLAG_REQ_ONE)
e = bs[nbd.CONTEXT_BASE_ALLOCATION][0][1]
t.eq(len(e), 2, "REQ_ONE in a hole: exactly one extent")
t.check(0 < e[0] <= 64 * K, "REQ_ONE in a hole: length %d <= 64K requested" % e[0])
t.eq(e[1], nbd.STATE_HOLE | nbd.STATE_ZERO, "REQ_ONE in a hole: flags HOLE|ZERO")
# without REQ_ONE: consecutive extents from the offset, data first, a hole later
bs = block_status(SIZE, 0)
e = bs[nbd.CONTEXT_BASE_ALLOCATION][0][1]
lens, fl = e[0::2], e[1::2]
t.check(len(lens) >= 2 and all(x > 0 for x in lens), "block_status: >= 2 extents, all non-empty: %r" % e[:16])
t.check(sum(lens[:-1]) < SIZE, "block_status: only the last extent may reach past the request")
t.eq(fl[0], 0, "block_status: first extent (data) flags")
t.check(lens[0] >= 1 * M, "block_status: first data extent covers [0,1M) (len %d)" % lens[0])
t.check((nbd.STATE_HOLE | nbd.STATE_ZERO) in fl, "block_status: a HOLE|ZERO extent is reported")
t.eq(sorted(set(fl) - {0, 1, 2, 3}), [], "block_status: only base:allocation bits")

# --- pread_structured with DF ----------------------------------------------------
def pread_structured(count, offset, flags=0):
    chunks = []

    def cb(buf, off, status, err):
        chunks.append((off, bytes(buf), status))
        return 0
    data = h.pread_structured(count, offset, cb, flags)
    return data, chunks


t.eq(h.can_df(), True, "can_df")
for off, what, want in ((0, "data", DATA0[:64 * K]), (6 * M, "hole", bytes(64 * K)),
                        (1 * M - 32 * K, "data+hole", DATA0[-32 * K:] + pat[:32 * K])):
    data, chunks = pread_structured(64 * K, off, nbd.CMD_FLAG_DF)
    t.eq(len(chunks), 1, "DF read over %s: exactly one chunk" % what)
    t.eq([(c[0], len(c[1]), c[2]) for c in chunks], [(off, 64 * K, nbd.READ_DATA)],
         "DF read over %s: one OFFSET_DATA chunk covering the request" % what)
    t.same(data, want, "DF read over %s: content" % what)
# without DF, chunks (data or hole) tile the range exactly
data, chunks = pread_structured(2 * M, 0)
pos = 0
for off, buf, status in sorted(chunks):
    if off != pos:
        break
    pos += len(buf)
t.eq(pos, 2 * M, "structured read without DF: chunks tile the request")
t.same(data[:M + 64 * K], DATA0 + pat, "structured read without DF: content")
h.shutdown()

# --- multi-conn: write on 1, flush on 2, read on 3 --------------------------------
hs = [connect() for _ in range(3)]
for i, x in enumerate(hs):
    t.eq(x.can_multi_conn(), True, "conn %d: can_multi_conn" % (i + 1))
blob = bytes([3]) * (64 * K)
hs[0].pwrite(blob, 7 * M)
hs[1].flush()
t.same(hs[2].pread(64 * K, 7 * M), blob, "write on conn 1, flush on conn 2, visible on conn 3")
blob2 = bytes([4]) * (4 * K)
hs[2].pwrite(blob2, 7 * M + 4 * K, nbd.CMD_FLAG_FUA)
t.same(hs[0].pread(4 * K, 7 * M + 4 * K), blob2, "FUA write on conn 3 visible on conn 1")
for x in hs:
    x.shutdown()

t.stop_server_ok(srv)
t.same(file_bytes(7 * M, 8 * K), blob[:4 * K] + blob2, "multi-conn writes are in the image file")
t.same(file_bytes(0, M), DATA0, "[0,1M) of the image unchanged")
t.finish()
