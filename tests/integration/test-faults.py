#!/usr/bin/python3
"""A failing disk (--inject-error below the cache policy), raw images.

For read, write, flush, trim and zero, each with EIO and ENOSPC: while the
trigger file exists the request fails with exactly that NBD error and
changes no byte; the connection, a second connection to the same server
and another server stay up and keep working; once the trigger is gone the
same request succeeds and the data is right.

Flush failures are sticky, as QEMU's file-posix makes them after a failed
fdatasync (the kernel may have dropped the dirty pages and reports it only
once): with the trigger gone, writes work but every FLUSH keeps failing
until the server restarts.  A FUA write whose flush fails gets the error,
not success, whether FUA is native (the file layer's RWF_DSYNC, under
both --aio modes; writethrough adds FUA to every write) or emulated by
the cache policy as write then flush (an nbdkit eval plugin that has a
flush but no FUA, through --plugin).  rate= and offset= narrow a rule;
a bad rule is one clear error at start-up.
"""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, skip, NBDSTACK, SERVER_KIND, libnbd  # noqa: E402
from nbdpeers import nbd_errno  # noqa: E402

nbd = libnbd()
if SERVER_KIND != "nbdstack":
    skip("--inject-error is an nbdstack testing option")

K = 1024
M = K * K
SIZE = 16 * M
A = b"\xa5" * (64 * K)   # what the disk holds before every case
B = b"\x5b" * (4 * K)    # what a write writes

t = Test()
trigger = os.path.join(t.scratch, "trigger")


def file_bytes(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


# The request each case makes, at [0, 4K).
REQUESTS = {
    "read": lambda h: h.pread(4 * K, 0),
    "write": lambda h: h.pwrite(B, 0),
    "flush": lambda h: h.flush(),
    "trim": lambda h: h.trim(4 * K, 0),
    "zero": lambda h: h.zero(4 * K, 0),
}
# What [0, 4K) holds once the request has succeeded.
AFTER = {"read": A[:4 * K], "write": B, "flush": A[:4 * K],
         "trim": bytes(4 * K), "zero": bytes(4 * K)}

# Another server, on its own image, that no trigger touches.
other_img = t.image("other.img", SIZE)
other = t.start_server("other", ["-t"], other_img)
ho = other.client()

for op in REQUESTS:
    for errname in ("EIO", "ENOSPC"):
        what = "%s %s" % (op, errname)
        img = t.image("disk.img", SIZE, fill=[(0, A)])
        srv = t.start_server("f", ["-t", "-e", "0", "--discard=unmap",
                                   "--inject-error=%s:%s,file=%s" % (op, errname, trigger)], img)
        h, h2 = srv.client(), srv.client()
        # The flush case needs a write since the last flush, or the flush
        # never reaches the disk (flush elision).
        if op == "flush":
            h.pwrite(A[:4 * K], 0)
        open(trigger, "w").close()

        t.eq(nbd_errno(REQUESTS[op], h), errname, "%s: the client gets NBD_%s" % (what, errname))
        t.eq(nbd_errno(REQUESTS[op], h), errname, "%s: and again" % what)
        t.check(srv.alive(), "%s: the server is still running" % what)
        if op == "read":
            t.eq(nbd_errno(h2.pwrite, A[:4 * K], 32 * K), 0, "%s: a second connection still writes" % what)
        else:
            t.eq(nbd_errno(h2.pread, 4 * K, 32 * K), 0, "%s: a second connection still reads" % what)
        t.eq(nbd_errno(ho.pwrite, B, 0), 0, "%s: another server still writes" % what)
        t.eq(nbd_errno(ho.flush), 0, "%s: another server still flushes" % what)
        if op in ("write", "trim", "zero"):
            t.same(h2.pread(4 * K, 0), A[:4 * K], "%s: the failed request changed no byte" % what)

        os.unlink(trigger)
        if op == "flush":
            t.eq(nbd_errno(h.flush), errname, "%s: sticky: FLUSH still fails with the trigger gone" % what)
            t.eq(nbd_errno(h.pwrite, B, 4 * K), 0, "%s: sticky: writes still work" % what)
            t.eq(nbd_errno(h2.flush), errname, "%s: sticky: FLUSH fails on every connection" % what)
        else:
            t.eq(nbd_errno(REQUESTS[op], h), 0, "%s: the same request succeeds once the trigger is gone" % what)
            t.eq(nbd_errno(h.flush), 0, "%s: then FLUSH succeeds" % what)
        t.same(h.pread(4 * K, 0), AFTER[op], "%s: the data reads back right" % what)
        t.same(h.pread(60 * K, 4 * K), A[4 * K:] if op != "flush" else B + A[8 * K:],
               "%s: the bytes around are untouched" % what)
        h.shutdown()
        h2.shutdown()
        if op == "flush":
            # Exit status 1: the flush at exit fails too, and says so.
            t.eq(srv.stop(), 1, "%s: exit status after SIGTERM" % what)
            t.check("flush at exit failed" in srv.logtext(), "%s: the log says the flush failed" % what)
        else:
            t.stop_server_ok(srv)
        t.same(file_bytes(img, 0, 4 * K), AFTER[op], "%s: the image file holds it" % what)
        os.unlink(img)

t.same(ho.pread(4 * K, 0), B, "the other server's data")
ho.shutdown()

# After a restart the flush error is gone: it was the process's, not the disk's.
img = t.image("disk.img", SIZE, fill=[(0, A)])
rule = "--inject-error=flush:EIO,file=%s" % trigger
srv = t.start_server("f", ["-t", rule], img)
h = srv.client()
h.pwrite(B, 0)
open(trigger, "w").close()
t.eq(nbd_errno(h.flush), "EIO", "restart: FLUSH fails")
os.unlink(trigger)
h.shutdown()
srv.stop()
srv = t.start_server("f", ["-t", rule], img)
h = srv.client()
t.eq(nbd_errno(h.pwrite, B, 4 * K), 0, "restart: a write")
t.eq(nbd_errno(h.flush), 0, "restart: FLUSH works again in a new server")
h.shutdown()
t.stop_server_ok(srv)

# FUA over a failing flush.  A FUA write that failed with EIO makes FLUSH
# fail too: native FUA's sync may have been the one to hear of lost
# write-back, and emulated FUA's flush did fail.
fua_cases = [(["--aio=io_uring"], "native, io_uring"), (["--aio=threads"], "native, threads"),
             (["--cache=writethrough"], "writethrough")]
if shutil.which("nbdkit"):
    fua_cases.append((None, "emulated, nbdkit eval plugin"))
for args, label in fua_cases:
    img = t.image("disk.img", SIZE, fill=[(0, A)])
    if args is None:
        # A plugin with flush and no can_fua: the host emulates FUA.
        srv = t.start_server("f", ["-t", rule, "--plugin", "eval", "get_size=echo %d" % SIZE,
                                   "pread=dd if=%s iflag=skip_bytes,count_bytes skip=$4 count=$3 "
                                   "status=none" % img,
                                   "pwrite=dd of=%s oflag=seek_bytes conv=notrunc seek=$4 "
                                   "status=none" % img,
                                   "flush=sync " + img, "can_write=exit 0", "can_flush=exit 0"],
                             None)
    else:
        srv = t.start_server("f", ["-t", rule] + args, img)
    h = srv.client()
    open(trigger, "w").close()
    t.eq(nbd_errno(h.pwrite, B, 0, nbd.CMD_FLAG_FUA), "EIO",
         "%s: a FUA write over a failing flush gets NBD_EIO" % label)
    if label == "writethrough":
        t.eq(nbd_errno(h.pwrite, B, 0), "EIO",
             "writethrough: a plain write over a failing flush gets NBD_EIO")
    t.eq(nbd_errno(h.zero, 4 * K, 8 * K, nbd.CMD_FLAG_FUA), "EIO",
         "%s: a FUA zero over a failing flush gets NBD_EIO" % label)
    os.unlink(trigger)
    t.eq(nbd_errno(h.pwrite, B, 0), 0, "%s: a plain write works with the trigger gone" % label)
    t.eq(nbd_errno(h.flush), "EIO", "%s: FLUSH fails after the failed FUA write" % label)
    h.shutdown()
    srv.stop()
    os.unlink(img)

img = t.image("disk.img", SIZE, fill=[(0, A)])
srv = t.start_server("f", ["-t", "--cache=unsafe", rule], img)
h = srv.client()
open(trigger, "w").close()
t.eq(nbd_errno(h.pwrite, B, 0, nbd.CMD_FLAG_FUA), 0, "unsafe: FUA never reaches the disk")
t.eq(nbd_errno(h.flush), 0, "unsafe: nor does FLUSH")
os.unlink(trigger)
h.shutdown()
t.stop_server_ok(srv)

# rate: some requests fail, the others succeed; nothing else breaks.
srv = t.start_server("f", ["-t", "--inject-error=read:EIO,rate=50%"], img)
h = srv.client()
results = [nbd_errno(h.pread, 512, 0) for _ in range(200)]
t.check(set(results) == {0, "EIO"} and 20 < results.count(0) < 180,
        "rate=50%%: %d of 200 reads failed, all with EIO" % results.count("EIO"))
h.shutdown()
t.stop_server_ok(srv)

# offset: only requests touching [64K, 128K) fail.
srv = t.start_server("f", ["-t", "--inject-error=write:ENOSPC,offset=65536-131072"], img)
h = srv.client()
t.eq(nbd_errno(h.pwrite, B, 60 * K), 0, "offset: a write ending before the range")
t.eq(nbd_errno(h.pwrite, B, 62 * K), "ENOSPC", "offset: a write reaching into it")
t.eq(nbd_errno(h.pwrite, B, 128 * K - 1), "ENOSPC", "offset: a write starting on its last byte")
t.eq(nbd_errno(h.pwrite, B, 128 * K), 0, "offset: a write after it")
t.eq(nbd_errno(h.pread, 64 * K, 64 * K), 0, "offset: reads are not in the rule")
h.shutdown()
t.stop_server_ok(srv)

# A bad rule: one clear line, exit 1, no socket.
srv_sock = os.path.join(t.scratch, "bad.sock")
p = subprocess.run([NBDSTACK, "-f", "raw", "-k", srv_sock,
                    "--inject-error=write:EBADF", img],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
lines = p.stderr.decode().strip().splitlines()
t.check(p.returncode == 1 and len(lines) == 1 and "EBADF" in lines[0],
        "a bad rule: exit 1 and one line naming it (%d, %r)" % (p.returncode, lines))
t.check(not os.path.exists(srv_sock), "a bad rule: no socket left behind")

t.finish()
