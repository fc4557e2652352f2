#!/bin/bash
# qcow2 interop matrix, read side.  Every image is made by qemu-img/qemu-io,
# exported read-only by the server under test (-f qcow2 -r -t -A) and by the
# real qemu-nbd (the reference), then:
#   - the export's size equals the image's virtual size;
#   - `qemu-img compare IMAGE URI` (the image read by qemu-img itself,
#     backing chain included) exits 0;
#   - `nbdinfo --map` (base:allocation) equals qemu-nbd's, and so does
#     `nbdinfo --map=qemu:allocation-depth`.
# Images: v3 and v2 with NORMAL/UNALLOCATED/ZERO_PLAIN/ZERO_ALLOC clusters;
# all 28 geometries (cluster_size 512/4k/64k/2M x refcount_bits 1..64);
# preallocation=metadata; a 4T sparse image with data near the end;
# zlib/zstd compressed (cluster sizes 64k, 512, 2M); extended L2 with and
# without a backing file; raw backing; a 3-deep qcow2 chain; a backing file
# shorter than the overlay; a relative backing path with the server started
# from another directory (holding a decoy of the same name); an internal
# snapshot with -l NAME (which must refuse writes).
. "$(dirname "$0")/lib.sh"
. "$SRCDIR/qcow2-lib.sh"
need_tool qemu-img qemu-io qemu-nbd nbdinfo
need_server
scratch_init_holes
cd "$SCRATCH" || fail "cd $SCRATCH"

K=1024
M=$((1024 * K))
DUT_A=(-A)    # dropped (one failure recorded) if the server refuses -A

# read_case WHAT IMAGE [SERVER ARGS...]
# CMP_WITH="FMT FILE" compares against FILE instead of IMAGE read as qcow2.
read_case() {
    local what=$1 img=$2
    shift 2
    ref r -r -t -A "$@" "$img" || return 1
    if ! QSTART_QUIET=1 dut d -r -t "${DUT_A[@]}" "$@" "$img"; then
        local why
        why=$(grep -m1 . "$SCRATCH/d.log")
        if [ ${#DUT_A[@]} -gt 0 ] && QSTART_QUIET=1 dut d -r -t "$@" "$img"; then
            check_fail "server refuses -A (qemu:allocation-depth; depth maps not compared from now on): $why"
            DUT_A=()
        else
            sed 's/^/  server: /' "$SCRATCH/d.log" >&2
            check_fail "$what: server failed to start (status $QSTART_RC): $(grep -m1 . "$SCRATCH/d.log")"
            stop_server r
            return 1
        fi
    fi
    local want got
    want=$(nbdinfo --size "$(uri r)" 2>&1)
    got=$(nbdinfo --size "$(uri d)" 2>&1)
    expect_eq "$got" "$want" "$what: export size"
    if [ -n "${CMP_WITH:-}" ]; then
        # shellcheck disable=SC2086
        qimg_compare "${CMP_WITH#* }" "$(uri d)" "$what" -f ${CMP_WITH%% *} -F raw
    else
        qimg_compare "$img" "$(uri d)" "$what" -f qcow2 -F raw
    fi
    expect_eq "$(nbdmap d)" "$(nbdmap r)" "$what: nbdinfo --map vs qemu-nbd"
    if [ ${#DUT_A[@]} -gt 0 ]; then
        expect_eq "$(nbdmap d qemu:allocation-depth)" "$(nbdmap r qemu:allocation-depth)" \
            "$what: allocation-depth map vs qemu-nbd"
    fi
    stop_server_ok d
    stop_server r
}

# has_shape IMG REGEX WHAT: the image's qmap_shape has a line matching REGEX
# (checks the test's own images really contain the cluster kind).
has_shape() {
    qmap_shape "$1" >"$SCRATCH/shape.txt"
    if grep -qE "$2" "$SCRATCH/shape.txt"; then
        ok "image check: $3"
    else
        sed 's/^/  map: /' "$SCRATCH/shape.txt" >&2
        fail "test image $1 lacks $3 (qemu-img behaves differently than this test assumes)"
    fi
}

qio() { qio_run "make $1" qcow2 "$@"; }

# --- 1. cluster kinds, v3 and v2 -------------------------------------------
ZOPS=("write -P 0xaa 0 1M" "write -z 512k 64k" "write -z 2M 1M" "write -z -u 3M 64k"
    "write -P 0x55 4M 4k")
qemu-img create -q -f qcow2 kinds3.qcow2 16M
qio kinds3.qcow2 "${ZOPS[@]}"
has_shape kinds3.qcow2 'data=true zero=false .*host=yes' "NORMAL clusters"
has_shape kinds3.qcow2 'data=false zero=true .*present=true host=yes' "ZERO_ALLOC clusters"
has_shape kinds3.qcow2 'data=false zero=true .*present=true host=no' "ZERO_PLAIN clusters"
has_shape kinds3.qcow2 'present=false' "UNALLOCATED clusters"
read_case "v3 zero/normal/unallocated" kinds3.qcow2

qemu-img create -q -f qcow2 -o compat=0.10 kinds2.qcow2 16M
qio kinds2.qcow2 "${ZOPS[@]}"
expect_eq "$(peek_be kinds2.qcow2 4 4)" 2 "image check: compat=0.10 is qcow2 version 2"
read_case "v2 (compat=0.10)" kinds2.qcow2

# preallocation=metadata: NORMAL clusters whose host range is a file hole
# (qemu-nbd reports them as "zero").
qemu-img create -q -f qcow2 -o preallocation=metadata prealloc.qcow2 8M
qio prealloc.qcow2 "write -P 0x31 1M 64k"
read_case "preallocation=metadata" prealloc.qcow2

# --- 2. geometries: all 28 cluster_size x refcount_bits combinations --------
for cs in 512 4k 64k 2M; do
    for rb in 1 2 4 8 16 32 64; do
        g=geo-$cs-$rb.qcow2
        qemu-img create -q -f qcow2 -o cluster_size=$cs,refcount_bits=$rb "$g" 16M
        qio "$g" "write -P 0x5a 1000 70000" "write -z 3M 1M" "write -P 0x5b 15M 4k"
        read_case "cluster_size=$cs refcount_bits=$rb" "$g"
        rm -f "$g"
    done
done

# --- 3. 4T sparse image, data near the end ----------------------------------
qemu-img create -q -f qcow2 big.qcow2 4T
qio big.qcow2 "write -P 9 4398046445568 64k" "write -P 8 0 4k"
read_case "4T sparse, data at the end" big.qcow2

# --- 4. compressed clusters (zlib, zstd; cluster sizes 64k, 512, 2M) --------
# Source: 8 MiB mixing random (stays uncompressed), text-like, byte
# patterns with some noise, and zeros, in chunks of varying size.
/usr/bin/python3 - "$SCRATCH/src.raw" <<'EOF'
import random, sys
rng = random.Random(4)
out = bytearray()
words = [b"qcow2 ", b"cluster ", b"nbdstack ", b"compress ", b"zstd ", b"zlib\n"]
while len(out) < 8 << 20:
    n = rng.choice([512, 3000, 4096, 65536, 70000, 200000, 1 << 20])
    kind = rng.randrange(4)
    if kind == 0:
        chunk = rng.randbytes(n)
    elif kind == 1:
        chunk = b"".join(rng.choice(words) for _ in range(n // 4))[:n]
    elif kind == 2:
        chunk = bytearray([rng.randrange(256)]) * n
        for _ in range(n // 64):
            chunk[rng.randrange(n)] = rng.randrange(256)
        chunk = bytes(chunk)
    else:
        chunk = bytes(n)
    out += chunk
open(sys.argv[1], "wb").write(bytes(out[:8 << 20]))
EOF
for ct in zlib zstd; do
    for cs in 64k 512 2M; do
        c=comp-$ct-$cs.qcow2
        qemu-img convert -c -f raw -O qcow2 -o compression_type=$ct,cluster_size=$cs src.raw "$c" ||
            fail "qemu-img convert -c $ct $cs failed"
        has_shape "$c" 'data=true zero=false .*host=no' "compressed clusters in $c"
        [ $ct = zstd ] && expect_eq "$(($(incompat_bits "$c") & 8))" 8 "image check: $c has the compression-type bit"
        read_case "compressed $ct cluster_size=$cs" "$c"
        rm -f "$c"
    done
done

# --- 5. extended L2, without and with a backing file ------------------------
XOPS=("write -P 0x44 4k 4k" "write -z 64k 8k" "write -P 0x45 1M 128k" "write -P 0x46 2M 20k"
    "write -z -u 3M 128k")
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k ext.qcow2 64M
qio ext.qcow2 "${XOPS[@]}"
read_case "extended L2, no backing" ext.qcow2

qemu-img create -q -f raw xbase.raw 64M
qio_run "make xbase.raw" raw xbase.raw "write -P 0x11 0 64M"
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k -b "$SCRATCH/xbase.raw" -F raw extb.qcow2
qio extb.qcow2 "${XOPS[@]}"
# [0,4k) of the first cluster is UNALLOCATED_ALLOC: it must come from the base
QIO_RO=1 qio_run "check extb.qcow2" qcow2 extb.qcow2 "read -P 0x11 0 4k" "read -P 0x44 4k 4k" "read -P 0x11 8k 56k"
read_case "extended L2 over a raw backing file" extb.qcow2

# --- 6. backing chains -------------------------------------------------------
# raw backing (reference P0 item 4)
qemu-img create -q -f raw base.raw 64M
qio_run "make base.raw" raw base.raw "write -P 0x11 0 64M"
qemu-img create -q -f qcow2 -b "$SCRATCH/base.raw" -F raw ovl.qcow2
qio ovl.qcow2 "write -P 0x22 64k 4k" "write -z 128k 64k" "discard 192k 64k" "write -P 0x23 10M 1M"
read_case "overlay on a raw backing file" ovl.qcow2

# 3-deep qcow2 chain: base <- mid <- top
qemu-img create -q -f qcow2 c-base.qcow2 16M
qio c-base.qcow2 "write -P 0x01 0 8M" "write -z -u 6M 64k"
qemu-img create -q -f qcow2 -b c-base.qcow2 -F qcow2 c-mid.qcow2
qio c-mid.qcow2 "write -P 0x02 1M 1M" "write -z 3M 64k" "write -P 0x03 9M 100k"
qemu-img create -q -f qcow2 -b c-mid.qcow2 -F qcow2 c-top.qcow2
qio c-top.qcow2 "write -P 0x04 1536k 64k" "write -P 0x05 7M 3000" "write -z 4M 128k"
read_case "3-deep qcow2 chain" "$SCRATCH/c-top.qcow2"

# backing shorter than the overlay: reads past its end are zeros
qemu-img create -q -f raw short.raw 4M
qio_run "make short.raw" raw short.raw "write -P 0x66 0 4M"
qemu-img create -q -f qcow2 -b "$SCRATCH/short.raw" -F raw long.qcow2 16M
qio long.qcow2 "write -P 0x67 2M 64k" "write -P 0x68 10M 64k"
QIO_RO=1 qio_run "check long.qcow2" qcow2 long.qcow2 "read -P 0x66 0 2M" "read -P 0 4M 6M"
read_case "backing file shorter than the overlay" long.qcow2

# relative backing name, server started from another directory that holds
# a decoy with the same relative name
mkdir -p rel/sub decoy/sub
(cd rel && qemu-img create -q -f qcow2 sub/rbase.qcow2 8M &&
    qemu-io -f qcow2 sub/rbase.qcow2 -c "write -P 0x71 0 8M" >/dev/null &&
    qemu-img create -q -f qcow2 -b rbase.qcow2 -F qcow2 sub/rtop.qcow2 &&
    qemu-io -f qcow2 sub/rtop.qcow2 -c "write -P 0x72 1M 64k" >/dev/null) || fail "making rel/ images"
qemu-img create -q -f qcow2 decoy/rbase.qcow2 8M
qemu-io -f qcow2 decoy/rbase.qcow2 -c "write -P 0x99 0 8M" >/dev/null
cp decoy/rbase.qcow2 decoy/sub/rbase.qcow2
expect_eq "$(qemu-img info --output=json rel/sub/rtop.qcow2 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["backing-filename"])')" \
    rbase.qcow2 "image check: backing name is relative"
QSTART_CWD=$SCRATCH/decoy read_case "relative backing path, server cwd elsewhere" "$SCRATCH/rel/sub/rtop.qcow2"

# --- 7. internal snapshot, -l NAME ------------------------------------------
qemu-img create -q -f qcow2 sn.qcow2 16M
qio sn.qcow2 "write -P 0x61 0 2M" "write -z 4M 64k"
qemu-img snapshot -c snap1 sn.qcow2 || fail "qemu-img snapshot -c"
qio sn.qcow2 "write -P 0x62 1M 2M" "write -z 0 64k" "write -P 0x63 8M 64k"
qemu-img convert -f qcow2 -O raw -l snapshot.name=snap1 sn.qcow2 snap1.raw || fail "convert -l"
QIO_RO=1 qio_run "check snap1.raw" raw snap1.raw "read -P 0x61 0 2M" "read -P 0 2M 14M"
CMP_WITH="raw $SCRATCH/snap1.raw" read_case "internal snapshot -l snap1" sn.qcow2 -l snap1
# -l implies read-only (started here without -r)
snap_sum=$(sha sn.qcow2)
if dut ls -t -l snap1 sn.qcow2; then
    ro=$(nbdinfo --json "$(uri ls)" 2>/dev/null | /usr/bin/python3 -c '
import json, sys
print(json.load(sys.stdin)["exports"][0]["is_read_only"])' 2>&1)
    expect_eq "$ro" True "-l snap1 without -r: export is read-only"
    if with_timeout 60 qemu-io -f raw "$(uri ls)" -c "write -P 0x11 0 4k" >"$SCRATCH/io.out" 2>&1 &&
        ! grep -qiE 'fail|error|denied|read-only' "$SCRATCH/io.out"; then
        check_fail "-l snap1: a write was accepted: $(cat "$SCRATCH/io.out")"
    else
        ok "-l snap1: write refused ($(grep -m1 -iE 'fail|error|denied|read-only' "$SCRATCH/io.out"))"
    fi
    QIO_RO=1 qio_uri ls "read -P 0x61 0 2M" && ok "-l snap1: snapshot data readable"
    stop_server_ok ls
fi
expect_eq "$(sha sn.qcow2)" "$snap_sum" "-l snap1: image file unchanged"

finish
