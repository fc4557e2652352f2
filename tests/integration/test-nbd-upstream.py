#!/usr/bin/python3
# The nbd protocol layer: nbdstack exporting an upstream NBD server given
# as an NBD URI.  Chains over nbdkit (memory), qemu-nbd and another
# nbdstack: every command through the chain, the chain advertises what the
# upstream does, fio --verify through it; then the upstream dies (kill -9)
# under load: requests fail within 5 s, nothing hangs, the chain keeps
# answering handshakes, and after the upstream restarts requests work again.
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, skip, SERVER_KIND  # noqa: E402
from nbdpeers import Peers, nbd_errno  # noqa: E402

try:
    import nbd
except ImportError:
    skip("python3-libnbd (module nbd) is not installed for /usr/bin/python3")
if SERVER_KIND != "nbdstack":
    skip("the nbd layer is an nbdstack feature")
for tool in ("nbdkit", "qemu-nbd"):
    if not shutil.which(tool):
        skip("%s is not installed" % tool)

K = 1024
M = K * K
SIZE = 64 * M

t = Test(holes=True)
peers = Peers(t)


def start_nbdkit(sock):
    return peers.start("nbdkit", ["nbdkit", "-f", "-U", sock, "memory", "64M"], sock)


def uri_of(sock):
    return "nbd+unix:///?socket=%s" % sock


def connect(uri):
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    return h


def flags(h):
    return {
        "read_only": h.is_read_only(),
        "flush": h.can_flush(),
        "fua": h.can_fua(),
        "trim": h.can_trim(),
        "zero": h.can_zero(),
        "fast_zero": h.can_fast_zero(),
        "cache": h.can_cache(),
        "multi_conn": h.can_multi_conn(),
        "base:allocation": h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION),
    }


def extents(h, length, offset, flags=0):
    """base:allocation extents as merged (length, type) pairs."""
    got = []

    def cb(meta, off, ents, err):
        if meta == nbd.CONTEXT_BASE_ALLOCATION:
            for i in range(0, len(ents), 2):
                got.append((ents[i], ents[i + 1]))
        return 0
    h.block_status(length, offset, cb, flags)
    out = []
    covered = 0
    for ln, ty in got:
        if covered >= length:
            break
        ln = min(ln, length - covered)
        covered += ln
        if out and out[-1][1] == ty:
            out[-1] = (out[-1][0] + ln, ty)
        else:
            out.append((ln, ty))
    return out


def check_chain(name, up_uri, chain_uri):
    up = connect(up_uri)
    ch = connect(chain_uri)
    t.eq(ch.get_size(), up.get_size(), "%s: size" % name)
    fu, fc = flags(up), flags(ch)
    for k in fu:
        if k == "fua" and not fu["fua"] and fu["flush"]:
            t.eq(fc[k], True, "%s: fua emulated over the upstream's flush" % name)
            continue
        t.eq(fc[k], fu[k], "%s: chain %s = upstream's" % (name, k))

    pat1 = bytes((i * 7 + 1) & 0xFF for i in range(256 * K))
    pat2 = bytes((i * 11 + 5) & 0xFF for i in range(256 * K))
    ch.pwrite(pat1, 1 * M)
    ch.pwrite(pat2, 2 * M, nbd.CMD_FLAG_FUA)
    t.same(ch.pread(256 * K, 1 * M), pat1, "%s: pread after pwrite" % name)
    t.same(up.pread(256 * K, 2 * M), pat2, "%s: FUA pwrite is upstream" % name)
    ch.flush()
    t.same(up.pread(256 * K, 1 * M), pat1, "%s: pwrite is upstream after flush" % name)
    # As large as the chain allows (split when the upstream's max is
    # smaller), unaligned.
    n = ch.get_block_size(nbd.SIZE_MAXIMUM) - 123
    big = bytes((i * 13 + 3) & 0xFF for i in range(n))
    ch.pwrite(big, 8 * M + 7)
    t.same(ch.pread(len(big), 8 * M + 7), big, "%s: %d bytes unaligned pwrite/pread" % (name, n))
    t.same(up.pread(len(big), 8 * M + 7), big, "%s: large pwrite is upstream" % name)

    ch.zero(128 * K, 1 * M, nbd.CMD_FLAG_NO_HOLE)
    t.same(ch.pread(128 * K, 1 * M), bytes(128 * K), "%s: zero(NO_HOLE) reads zero" % name)
    if fc["fast_zero"]:
        ch.pwrite(pat1, 3 * M)
        e = nbd_errno(ch.zero, 256 * K, 3 * M, nbd.CMD_FLAG_FAST_ZERO)
        if e == 0:
            t.same(ch.pread(256 * K, 3 * M), bytes(256 * K), "%s: zero(FAST_ZERO) reads zero" % name)
        else:
            t.check(e in (95, "ENOTSUP", "EOPNOTSUPP"), "%s: zero(FAST_ZERO) fails with ENOTSUP (%s)" % (name, e))

    ch.cache(1 * M, 1 * M)
    t.ok("%s: cache" % name)

    # Holes: trim and zero on a sparse upstream, seen through the chain.
    ch.pwrite(pat1 * 4, 4 * M)
    ch.trim(1 * M, 4 * M)
    ch.flush()
    t.same(ch.pread(1 * M, 4 * M), bytes(1 * M), "%s: trimmed range reads zero" % name)
    ex = extents(ch, 1 * M, 4 * M)
    t.check(all(ty & 1 for _, ty in ex), "%s: block_status: trimmed range is a hole %r" % (name, ex))
    ch.pwrite(pat1 * 4, 5 * M)
    ch.zero(1 * M, 5 * M)
    ex = extents(ch, 1 * M, 5 * M)
    t.check(all(ty & 2 for _, ty in ex), "%s: block_status: zeroed range reads as zero %r" % (name, ex))
    ex = extents(ch, 128 * K, 1 * M + 128 * K)
    t.check(ex and all(ty == 0 for _, ty in ex), "%s: block_status: data is data %r" % (name, ex))
    t.eq(extents(ch, 16 * M, 0), extents(up, 16 * M, 0), "%s: chain extents = upstream's" % name)
    one = []
    ch.block_status(8 * M, 0, lambda m, o, e, err: one.extend(e) or 0, nbd.CMD_FLAG_REQ_ONE)
    t.check(len(one) >= 2, "%s: block_status(REQ_ONE) answers" % name)
    up.shutdown()
    ch.shutdown()

    if shutil.which("fio"):
        r = subprocess.run(["fio", "--name=v", "--ioengine=nbd", "--uri=" + chain_uri,
                            "--rw=randwrite", "--bs=4k", "--size=32M", "--iodepth=16",
                            "--verify=crc32c"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        t.check(r.returncode == 0, "%s: fio randwrite --verify=crc32c" % name)
        if r.returncode != 0:
            sys.stderr.write(r.stdout.decode("utf-8", "replace")[-3000:])
    else:
        print("SKIP - %s: fio is not installed" % name)


CHAIN_ARGS = ["-t", "-e", "4", "--threads", "4", "--discard=unmap"]

# --- over nbdkit memory ------------------------------------------------------
ksock = os.path.join(t.scratch, "nbdkit.sock")
kit = start_nbdkit(ksock)
c1 = t.start_server("over-nbdkit", CHAIN_ARGS, uri_of(ksock))
check_chain("over nbdkit", uri_of(ksock), c1.uri())

# --- over qemu-nbd (-e 8: room for the chain's per-reactor handles) -----
qimg = t.image("q.img", SIZE)
qsock = os.path.join(t.scratch, "qemu.sock")
peers.start("qemu-nbd", ["qemu-nbd", "-f", "raw", "-t", "-e", "8", "-k", qsock, "--discard=unmap",
                        "--cache=writeback", qimg], qsock)
c2 = t.start_server("over-qemu", CHAIN_ARGS, uri_of(qsock))
check_chain("over qemu-nbd", uri_of(qsock), c2.uri())

# --- over another nbdstack ------------------------------------------------------
simg = t.image("s.img", SIZE)
s0 = t.start_server("upstream", ["-t", "-e", "4", "--discard=unmap"], simg)
c3 = t.start_server("over-nbdstack", CHAIN_ARGS, s0.uri())
check_chain("over nbdstack", s0.uri(), c3.uri())

# --- over nbdkit without multi-conn: one upstream handle, owned by reactor 0,
# serves every reactor ---------------------------------------------------------
nsock = os.path.join(t.scratch, "nbdkit-nomc.sock")
peers.start("nbdkit-nomc", ["nbdkit", "-f", "-U", nsock, "--filter=multi-conn",
                           "memory", "64M", "multi-conn-mode=disable"], nsock)
c4 = t.start_server("over-nbdkit-nomc", CHAIN_ARGS, uri_of(nsock))
check_chain("over nbdkit without multi-conn", uri_of(nsock), c4.uri())

# --- the upstream dies under load, and comes back ------------------------------
h = connect(c1.uri())
buf = nbd.Buffer(1 * M)
for i in range(20):
    h.pwrite(b"\x5a" * (64 * K), i * 64 * K)
cookies = [h.aio_pwrite(buf, (i % 48) * M) for i in range(64)]
kit.send_signal(signal.SIGKILL)
kit.wait()
deadline = time.monotonic() + 5
while time.monotonic() < deadline and h.aio_in_flight() > 0:
    h.poll(100)
t.eq(h.aio_in_flight(), 0, "upstream killed: every in-flight request completed within 5 s")
failed = 0
for c in cookies:
    try:
        h.aio_command_completed(c)
    except nbd.Error:
        failed += 1
print("# %d of %d in-flight writes failed" % (failed, len(cookies)))

start = time.monotonic()
e = nbd_errno(h.pwrite, b"\x11" * 4096, 0)
t.check(e != 0 and time.monotonic() - start < 5,
        "upstream down: pwrite fails (errno %s) in %.2f s" % (e, time.monotonic() - start))
start = time.monotonic()
e = nbd_errno(h.pread, 4096, 0)
t.check(e != 0 and time.monotonic() - start < 5, "upstream down: pread fails (errno %s)" % e)
t.check(c1.alive(), "chain server still running")
try:
    h2 = connect(c1.uri())
    t.eq(h2.get_size(), SIZE, "upstream down: the chain still answers handshakes")
    t.check(nbd_errno(h2.pread, 4096, 0) != 0, "upstream down: a new connection gets errors")
    h2.shutdown()
except nbd.Error as ex:
    t.fail("upstream down: handshake failed: %s" % ex)

kit = start_nbdkit(ksock)
deadline = time.monotonic() + 10
ok = False
while time.monotonic() < deadline:
    if nbd_errno(h.pwrite, b"\x22" * 4096, 8192) == 0:
        ok = True
        break
    time.sleep(0.1)
t.check(ok, "upstream restarted: requests through the chain succeed within 10 s")
if ok:
    t.same(h.pread(4096, 8192), b"\x22" * 4096, "after reconnect: pread returns the write")
    h3 = connect(c1.uri())
    t.same(h3.pread(4096, 8192), b"\x22" * 4096, "after reconnect: a new connection reads it")
    h3.shutdown()
h.shutdown()

t.stop_server_ok(c1)
t.stop_server_ok(c2)
t.stop_server_ok(c3)
t.stop_server_ok(c4)
t.stop_server_ok(s0)
t.finish()
