#!/usr/bin/python3
"""A failing disk under qcow2: data and metadata writes that fail.

--inject-error sits below qcow2 (and the cache policy), so a rule with an
offset range hits one kind of cluster.  An image made by qemu-img create
(64 KiB clusters, 1 GiB) has its refcount block at 0x20000 and its L1
table at 0x30000; nbdstack allocates a write's data cluster, then its L2
table, at the end of the file.  After one write at 768 MiB (data 0x40000,
L2 0x50000) a write at 0 gets data 0x60000 and L2 0x70000.

For each, the rule fails writes to that cluster while a trigger file
exists:
  * the data write fails: the WRITE gets the error (EIO, and ENOSPC);
  * L2, refcount block, L1: these are written back at FLUSH, which fails
    and keeps failing (sticky) once the trigger is gone;
then the server stops, `qemu-img check` finds no corruption (leaks are
allowed), what was written and flushed before is intact, and a new server
writes, flushes and reads back.
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, skip, SERVER_KIND, libnbd  # noqa: E402
from nbdpeers import nbd_errno  # noqa: E402

libnbd()  # Server.client needs it
if SERVER_KIND != "nbdstack":
    skip("--inject-error is an nbdstack testing option")

K = 1024
M = K * K
BEFORE_OFF = 768 * M
BEFORE = b"\x11" * (64 * K)
Q = b"\x22" * (64 * K)
R = b"\x33" * (64 * K)

# name: (host range the rule covers, error, the request that fails)
CASES = {
    "data cluster EIO": ((0x60000, 0x70000), "EIO", "write"),
    "data cluster ENOSPC": ((0x60000, 0x70000), "ENOSPC", "write"),
    "L2 table EIO": ((0x70000, 0x80000), "EIO", "flush"),
    "refcount block EIO": ((0x20000, 0x30000), "EIO", "flush"),
    "L1 table EIO": ((0x30000, 0x40000), "EIO", "flush"),
}

t = Test()
trigger = os.path.join(t.scratch, "trigger")


for what, ((lo, hi), errname, failing) in CASES.items():
    img = os.path.join(t.scratch, "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k",
                    img, "1G"], check=True)
    rule = "--inject-error=write:%s,offset=%d-%d,file=%s" % (errname, lo, hi, trigger)
    srv = t.start_server("q", ["-f", "qcow2", "-t", rule], img)
    h = srv.client()
    h.pwrite(BEFORE, BEFORE_OFF)
    h.flush()

    open(trigger, "w").close()
    if failing == "write":
        t.eq(nbd_errno(h.pwrite, Q, 0), errname, "%s: the WRITE gets NBD_%s" % (what, errname))
    else:
        t.eq(nbd_errno(h.pwrite, Q, 0), 0, "%s: the WRITE succeeds (metadata is cached)" % what)
        t.eq(nbd_errno(h.flush), errname, "%s: the FLUSH gets NBD_%s" % (what, errname))
    t.check(srv.alive(), "%s: the server is still running" % what)
    t.same(h.pread(64 * K, BEFORE_OFF), BEFORE, "%s: data written before still reads" % what)
    os.unlink(trigger)

    if failing == "write":
        t.eq(nbd_errno(h.pwrite, Q, 0), 0, "%s: the same WRITE succeeds once the trigger is gone" % what)
        t.eq(nbd_errno(h.flush), 0, "%s: then FLUSH succeeds" % what)
        t.same(h.pread(64 * K, 0), Q, "%s: and it reads back" % what)
    else:
        t.eq(nbd_errno(h.flush), errname, "%s: FLUSH still fails with the trigger gone (sticky)" % what)
    h.shutdown()
    rc = srv.stop()
    t.eq(rc, 0 if failing == "write" else 1, "%s: exit status after SIGTERM" % what)
    t.qemu_img_check(img, what + ", after the failure")

    srv = t.start_server("q", ["-f", "qcow2", "-t"], img)
    h = srv.client()
    t.same(h.pread(64 * K, BEFORE_OFF), BEFORE, "%s: a new server reads what was flushed before" % what)
    if failing == "write":
        t.same(h.pread(64 * K, 0), Q, "%s: and the write that succeeded" % what)
    else:
        got = h.pread(64 * K, 0)
        t.check(got in (Q, bytes(64 * K)), "%s: the unflushed write reads whole or not at all" % what)
    t.eq(nbd_errno(h.pwrite, R, 0), 0, "%s: a new server writes" % what)
    t.eq(nbd_errno(h.pwrite, R, 512 * M), 0, "%s: a new server allocates" % what)
    t.eq(nbd_errno(h.flush), 0, "%s: a new server flushes" % what)
    t.same(h.pread(64 * K, 0), R, "%s: and reads it back" % what)
    h.shutdown()
    t.stop_server_ok(srv)
    t.qemu_img_check(img, what + ", after recovery")
    p = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0x33 0 64k",
                        "-c", "read -P 0x33 512M 64k", "-c", "read -P 0x11 768M 64k", img],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.decode(errors="replace")
    t.check(p.returncode == 0 and "Pattern verification failed" not in out,
            "%s: qemu-io reads the data back from the image" % what)
    os.unlink(img)

t.finish()
