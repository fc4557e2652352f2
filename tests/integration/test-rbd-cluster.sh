#!/bin/bash
# nbdstack and a Ceph cluster that misbehaves (a real one-node cluster):
# data flushed over NBD survives kill -9 (read back by a fresh librbd
# client); a restricted Ceph user is refused writes to a pool it lacks,
# with a clear error to the client and the server still serving; an OSD
# that stops answering fails requests after --rbd-timeout, not never;
# cache modes reach librbd's client cache.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/test-rbd-lib.sh"
need_tool nbdsh

rbd_cluster_start
M=$((1024 * 1024))
alive() { ! server_exited "$1"; }

# nbd_py URI CODE: run CODE with h connected to URI; prints what CODE prints.
nbd_py() {
    with_timeout 120 python3 -c "
import errno, sys
import nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
def try_(f):
    try:
        f()
        return 'ok'
    except nbd.Error as e:
        return errno.errorcode.get(e.errnum, str(e.errnum))
$2" "$1" 2>&1
}

# ---- kill -9: what was flushed is in the cluster ---------------------------------
for mode in writeback none; do
    rbd_create crash-$mode 64M
    start_server crash -t --cache=$mode "$(rbd_name crash-$mode)"
    out=$(nbd_py "$(uri crash)" "
h.pwrite(b'\x5c' * (4 << 20), 8 << 20)
h.pwrite(b'\x5d' * 4096, 20 << 20, nbd.CMD_FLAG_FUA)
h.flush()
print('flushed')")
    expect_eq "$out" flushed "cache=$mode: writes flushed over NBD"
    stop_server crash KILL
    rbd_export crash-$mode "$SCRATCH/crash.raw"
    expect_bytes "$SCRATCH/crash.raw" $((8 * M)) $((4 * M)) 0x5c "cache=$mode: flushed write survives kill -9"
    expect_bytes "$SCRATCH/crash.raw" $((20 * M)) 4096 0x5d "cache=$mode: FUA write survives kill -9"
done

# writethrough: every write is durable when acknowledged, no flush needed.
rbd_create crash-wt 64M
start_server crash -t --cache=writethrough "$(rbd_name crash-wt)"
out=$(nbd_py "$(uri crash)" "h.pwrite(b'\x5e' * 65536, 4 << 20); print('written')")
expect_eq "$out" written "cache=writethrough: a write, no flush"
stop_server crash KILL
rbd_export crash-wt "$SCRATCH/crash.raw"
expect_bytes "$SCRATCH/crash.raw" $((4 * M)) 65536 0x5e "cache=writethrough: unflushed write survives kill -9"

# ---- cache modes reach librbd -------------------------------------------------------
for pair in writeback:on writethrough:on unsafe:on none:off directsync:off auto:off; do
    mode=${pair%:*} want=${pair#*:}
    start_server cm -v --cache=$mode "$(rbd_name crash-none)"
    expect_true "cache=$mode: librbd client cache $want" \
        grep -q "client cache $want" "$SCRATCH/cm.log"
    stop_server cm
done

# ---- a restricted user --------------------------------------------------------------
# client.nbd (the script's user) has "profile rbd" on pool rbd only.  An
# image whose data objects live in another pool: it can open it, and the
# cluster refuses it the data.  client.ro may read that pool, not write.
ceph -c "$CONF" osd pool create other 8 8 >/dev/null 2>&1 || fail "pool create"
rbd -c "$CONF" pool init other >/dev/null 2>&1 || fail "pool init"
rbd_create split 64M --data-pool other
qemu-io -f raw -c "write -P 0x71 0 1M" "$(rbd_name split)" >/dev/null 2>&1 || fail "writing split"
ceph -c "$CONF" auth get-or-create client.ro mon 'profile rbd' \
    osd 'profile rbd pool=rbd, profile rbd-read-only pool=other' \
    -o "$SCRATCH/ro.keyring" >/dev/null 2>&1 || fail "auth get-or-create client.ro"

start_server nbduser -t "$(rbd_name split :id=nbd)"
out=$(nbd_py "$(uri nbduser)" "print(try_(lambda: h.pwrite(b'x' * 4096, 0)))")
expect_eq "$out" EPERM "client.nbd: a write to a pool it lacks gets EPERM"
expect_true "client.nbd: one clear log line" \
    grep -q "write at 0+4096 failed: Operation not permitted: permission denied by the cluster" "$SCRATCH/nbduser.log"
expect_true "client.nbd: the server keeps running" alive nbduser
out=$(nbd_py "$(uri nbduser)" "print(h.get_size())")
expect_eq "$out" $((64 * M)) "client.nbd: a new client still connects"
stop_server_ok nbduser

start_server rouser -t "$(rbd_name split ":id=ro:keyring=$SCRATCH/ro.keyring")"
out=$(nbd_py "$(uri rouser)" "
print(h.pread(4096, 0) == b'\x71' * 4096, try_(lambda: h.pwrite(b'x' * 4096, 0)),
      try_(lambda: h.zero(4096, 1 << 20)), h.pread(4096, 0) == b'\x71' * 4096)")
expect_eq "$out" "True EPERM EPERM True" "client.ro: reads work, writes and zeroes refused, data unchanged"
expect_true "client.ro: the server keeps running" alive rouser
stop_server_ok rouser
rbd_export split "$SCRATCH/split.raw"
expect_bytes "$SCRATCH/split.raw" 0 $((1 * M)) 0x71 "the refused writes changed nothing"

# An image in a pool the user lacks entirely: refused at start, clearly.
rbd -c "$CONF" create --size 16M other/img >/dev/null 2>&1 || fail "create other/img"
out=$(with_timeout 120 "$NBDSTACK" -k "$SCRATCH/x.sock" "rbd:other/img:conf=$CONF:id=nbd" 2>&1)
expect_eq "$?" 1 "client.nbd: serving an image of a pool it lacks fails at start"
expect_true "... with a clear message ($out)" grep -q "cannot open image other/img: Operation not permitted" <<<"$out"

# ---- an OSD that stops answering ----------------------------------------------------
rbd_create slow 64M
start_server slow -t --rbd-timeout=3 "$(rbd_name slow)"
out=$(nbd_py "$(uri slow)" "h.pwrite(b'w' * 4096, 0); h.flush(); print('ok')")
expect_eq "$out" ok "a write before the OSD stops (takes the image's lock)"
osd=$(cat "$CEPH_DIR/run/osd.0.pid")
kill -STOP "$osd"
out=$(nbd_py "$(uri slow)" "
print(try_(lambda: h.pwrite(b'y' * 4096, 1 << 20, nbd.CMD_FLAG_FUA)), try_(lambda: h.pread(4096, 2 << 20)))")
kill -CONT "$osd"
expect_eq "$out" "EIO EIO" "stopped OSD: requests fail with EIO after the timeout"
expect_true "stopped OSD: logged" grep -q "the cluster did not answer in time" "$SCRATCH/slow.log"
expect_eq "$(grep -c 'rbd: .*failed' "$SCRATCH/slow.log")" 1 "stopped OSD: one log line for both failures"
expect_true "stopped OSD: the server keeps running" alive slow
out=$(nbd_py "$(uri slow)" "
h.pwrite(b'z' * 4096, 3 << 20); print(h.pread(4096, 3 << 20) == b'z' * 4096)")
expect_eq "$out" True "OSD back: requests work again"
# The failed flush stays failed (cachepolicy: the cache may have dropped
# what it held), so the exit flush fails too: no clean-exit check here.
stop_server slow

finish
