#!/bin/bash
# nbdstack over a Ceph RBD image (a real one-node cluster): qemu-io and
# nbdsh through every command and flag, each checked through a fresh
# librbd client (rbd export); fio --verify; block status; qcow2 on RBD;
# a snapshot served read-only; malformed names refused.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/test-rbd-lib.sh"
need_tool nbdsh nbdinfo fio

alive() { ! server_exited "$1"; }

rbd_cluster_start
K=1024
M=$((1024 * 1024))

# run_io NAME CMDS...: one qemu-io session over the server NAME.
run_io() {
    local name=$1 args=() c
    shift
    for c in "$@"; do args+=(-c "$c"); done
    if ! with_timeout 120 qemu-io -f raw "$(uri "$name")" "${args[@]}" >"$SCRATCH/io.out" 2>&1 ||
        grep -qiE 'fail|error|invalid|mismatch' "$SCRATCH/io.out"; then
        sed 's/^/  qemu-io: /' "$SCRATCH/io.out" >&2
        check_fail "qemu-io: $*"
        return 1
    fi
    ok "qemu-io: $*"
}

# ---- names ---------------------------------------------------------------
rbd_create disk 64M
for bad in "rbd:rbd" "rbd:rbd/" "rbd:/disk" "rbd:rbd/disk@" \
           "rbd:rbd/disk:conf" "rbd:rbd/disk:conf=$SCRATCH/none.conf" \
           "rbd:rbd/nosuch:conf=$CONF" "rbd:nopool/disk:conf=$CONF" \
           "rbd:rbd/disk:conf=$CONF:no_such_ceph_option=1"; do
    out=$(with_timeout 60 "$NBDSTACK" -k "$SCRATCH/bad.sock" "$bad" 2>&1)
    rc=$?
    expect_eq "$rc" 1 "'$bad' refused"
    expect_true "'$bad': one clear line ($out)" \
        test "$(echo "$out" | grep -c 'rbd:')" -eq 1
done
# Escapes, as QEMU reads them: "\:" in a value, "\@" in a path.
mkdir -p "$SCRATCH/a:b@c"
cp "$CONF" "$SCRATCH/a:b@c/ceph.conf"
esc_conf=$(echo "$SCRATCH/a:b@c/ceph.conf" | sed 's/[:@]/\\&/g')
start_server esc -r "rbd:rbd/disk:conf=$esc_conf"
expect_eq "$(nbdinfo --size "$(uri esc)")" $((64 * M)) "escaped conf path: size"
stop_server_ok esc

# ---- qemu-io: every command, read back through librbd -----------------------
start_server io -t -e 4 --discard=unmap "$(rbd_name disk)"
run_io io "write -P 0x5a 0 64k" "read -P 0x5a 0 64k" \
    "write -f -P 0x77 1M 4k" "write -P 0x66 2M 1M" "write -z 2M 64k" \
    "write -z -u 2112k 64k" "write -P 0x33 5M 8k" "discard 4M 4M" \
    "aio_write -P 0x01 9M 4k" "aio_write -P 0x02 9220k 4k" "aio_flush" \
    "write -P 0x44 10M 512" "write -P 0x45 10M 17" "flush"
run_io io "read -P 0x5a 0 64k" "read -P 0x77 1M 4k" "read -P 0 2M 128k" \
    "read -P 0x66 2176k 896k" "read -P 0 4M 4M" "read -P 0x01 9M 4k" \
    "read -P 0x02 9220k 4k" "read -P 0x45 10M 17" "read -P 0x44 10485777 495"
rbd_export disk "$SCRATCH/disk.raw"
expect_bytes "$SCRATCH/disk.raw" 0 $((64 * K)) 0x5a "librbd sees the write"
expect_bytes "$SCRATCH/disk.raw" $((1 * M)) $((4 * K)) 0x77 "librbd sees the FUA write"
expect_bytes "$SCRATCH/disk.raw" $((2 * M)) $((128 * K)) 0 "librbd sees write zeroes"
expect_bytes "$SCRATCH/disk.raw" $((2176 * K)) $((896 * K)) 0x66 "librbd sees the rest"
expect_bytes "$SCRATCH/disk.raw" $((4 * M)) $((4 * M)) 0 "discarded objects read as zeroes"
expect_bytes "$SCRATCH/disk.raw" $((9 * M)) $((4 * K)) 0x01 "librbd sees aio write 1"
expect_bytes "$SCRATCH/disk.raw" $((9220 * K)) $((4 * K)) 0x02 "librbd sees aio write 2"
expect_bytes "$SCRATCH/disk.raw" $((10 * M)) 17 0x45 "unaligned write"
expect_bytes "$SCRATCH/disk.raw" $((10 * M + 17)) 495 0x44 "unaligned write's neighbour"

# ---- nbdsh: flags, block status, zero flags, multi-conn -----------------------
cat >"$SCRATCH/nbdsh.py" <<'EOF'
import errno, sys
import nbd
M = 1 << 20
def extents(h, off, n, flags=0):
    out = []
    def cb(meta, o, ents, err):
        out.extend(zip(ents[0::2], ents[1::2]))
    h.block_status(n, off, cb, flags=flags)
    return out
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(sys.argv[1])
g = nbd.NBD()
g.connect_uri(sys.argv[1])
print("flags", h.can_flush(), h.can_fua(), h.can_trim(), h.can_zero(),
      h.can_fast_zero(), h.can_multi_conn(), h.can_cache(), h.is_read_only())
# Object 12 (48M) is untouched, object 0 holds data.
print("hole", extents(h, 48 * M, 4 * M))
print("data", extents(h, 0, 4 * M, nbd.CMD_FLAG_REQ_ONE)[0])
h.pwrite(b"\xab" * 4096, 48 * M + 4096, nbd.CMD_FLAG_FUA)
print("written", extents(h, 48 * M, 4 * M)[0][1])
# Multi-conn: what one connection flushed, the other reads.
h.flush()
print("other conn", g.pread(4096, 48 * M + 4096) == b"\xab" * 4096)
# A zero that must stay allocated cannot be fast.
try:
    h.zero(64 * 1024, 52 * M, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FAST_ZERO)
    print("fastzero nohole ok")
except nbd.Error as e:
    print("fastzero nohole", errno.errorcode.get(e.errnum))
h.pwrite(b"\xcd" * M, 52 * M)
h.zero(8 * M, 52 * M, nbd.CMD_FLAG_FAST_ZERO)
print("zeroed", h.pread(4096, 52 * M) == bytes(4096), extents(h, 52 * M, 8 * M))
h.zero(4096, 56 * M + 100, nbd.CMD_FLAG_NO_HOLE)
print("thick", extents(h, 56 * M, 4 * M)[0][1])
try:
    h.cache(4096, 0)
    print("cache ok")
except nbd.Error as e:
    print("cache refused")
h.trim(4 * M, 48 * M)
h.flush()
print("trimmed", extents(h, 48 * M, 4 * M))
h.shutdown()
g.shutdown()
EOF
out=$(with_timeout 120 nbdsh -c "import sys; sys.argv = ['nbdsh', '$(uri io)']" \
          -c "exec(open('$SCRATCH/nbdsh.py').read())" 2>&1 ||
      echo "nbdsh failed")
echo "$out" | sed 's/^/  nbdsh: /'
grep -q "nbdsh failed" <<<"$out" && check_fail "nbdsh script failed"
expect_eq "$(grep ^flags <<<"$out")" "flags True True True True True True False False" \
    "flush, FUA, trim, zero, fast zero, multi-conn; no cache; writable"
expect_eq "$(grep ^hole <<<"$out")" "hole [(4194304, 3)]" "an untouched object is a hole"
expect_eq "$(grep ^data <<<"$out")" "data (4194304, 0)" "a written object is data (REQ_ONE)"
expect_eq "$(grep ^written <<<"$out")" "written 0" "a FUA write makes the object data"
expect_eq "$(grep '^other conn' <<<"$out")" "other conn True" "multi-conn: flushed data seen by the other connection"
expect_eq "$(grep '^fastzero nohole' <<<"$out")" "fastzero nohole ENOTSUP" "FAST_ZERO with NO_HOLE refused"
expect_eq "$(grep ^zeroed <<<"$out")" "zeroed True [(8388608, 3)]" "fast zero of whole objects leaves holes"
expect_eq "$(grep ^thick <<<"$out")" "thick 0" "NO_HOLE zero stays allocated"
expect_eq "$(grep ^cache <<<"$out")" "cache refused" "CACHE not advertised"
expect_eq "$(grep ^trimmed <<<"$out")" "trimmed [(4194304, 3)]" "trimmed object is a hole"
expect_true "server alive after nbdsh" alive io
stop_server_ok io

# ---- fio --verify through nbdstack (two reactors) -------------------------------
rbd_create fio 64M
start_server fio -t --threads=2 "$(rbd_name fio)"
if with_timeout 300 fio --name=v --ioengine=nbd --uri="$(uri fio)" --rw=randwrite \
        --bs=4k --bsrange=512-64k --size=32M --iodepth=16 --numjobs=1 \
        --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 --output="$SCRATCH/fio.out" \
        >/dev/null 2>&1 && ! grep -qiE "verify.*(bad|fail)|err= *[1-9]" "$SCRATCH/fio.out"; then
    ok "fio randwrite with --verify=crc32c"
else
    sed 's/^/  fio: /' "$SCRATCH/fio.out" >&2
    check_fail "fio --verify=crc32c"
fi
stop_server_ok fio

# ---- a snapshot, served read-only ------------------------------------------------
rbd -c "$CONF" snap create rbd/disk@s1 >/dev/null 2>&1 || fail "snap create"
qemu-io -f raw -c "write -P 0x99 0 64k" "$(rbd_name disk)" >/dev/null 2>&1 ||
    fail "writing the image after the snapshot"
start_server snap -t "rbd:rbd/disk@s1:conf=$CONF"
expect_eq "$(nbdinfo --json "$(uri snap)" | python3 -c 'import json,sys; print(json.load(sys.stdin)["exports"][0]["is_read_only"])')" \
    True "the snapshot export is read-only"
QIO_OUT=$(with_timeout 60 qemu-io -r -f raw -c "read -P 0x5a 0 64k" "$(uri snap)" 2>&1)
expect_true "the snapshot keeps its data" grep -q "read 65536/65536" <<<"$QIO_OUT"
out=$(python3 -c '
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
try:
    h.pwrite(b"x" * 4096, 0); print("written")
except nbd.Error as e:
    print("refused")' "$(uri snap)" 2>&1)
expect_eq "$out" refused "a write to the snapshot is refused"
stop_server_ok snap

# ---- qcow2 on an RBD image ----------------------------------------------------------
qemu-img create -q -f qcow2 "$(rbd_name q)" 48M || fail "qemu-img create on rbd"
start_server q -t -f qcow2 "$(rbd_name q)"
expect_eq "$(nbdinfo --size "$(uri q)")" $((48 * M)) "qcow2 over rbd: virtual size"
run_io q "write -P 0x21 0 1M" "write -P 0x22 20M 64k" "write -z 40M 4M" "flush" \
    "read -P 0x21 0 1M" "read -P 0x22 20M 64k" "read -P 0 40M 4M"
stop_server_ok q
out=$(qemu-img check -f qcow2 "$(rbd_name q)" 2>&1)
expect_true "qemu-img check (qemu's rbd driver) is clean: $out" grep -q "No errors were found" <<<"$out"
expect_eq "$(qemu-io -f qcow2 -c 'read -P 0x22 20M 64k' "$(rbd_name q)" 2>&1 | grep -c 'read 65536')" 1 \
    "qemu's rbd driver reads what nbdstack wrote through qcow2"

finish
