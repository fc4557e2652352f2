#!/bin/bash
# qcow2 write side, against a raw oracle.  For every case the same qemu-io
# operations are applied (a) through the server under test (-f qcow2) to the
# image and (b) with `qemu-io -f raw` to a raw copy of the image's contents
# (the oracle); then, with the server stopped, `qemu-img check IMAGE` must
# exit 0 and `qemu-img compare IMAGE ORACLE` must say identical.
# Where the allocation shape matters (discard and write-zeroes handling),
# the same ops also go through the real qemu-nbd to an identical copy, and
# `qemu-img map --output=json` of the two results must have the same shape
# (data/zero/present/depth, and whether a host cluster is kept: ZERO_ALLOC
# vs ZERO_PLAIN).
#
# Oracle rules (QEMU's behaviour): with --discard=ignore (default) a discard
# changes nothing; with --discard=unmap a discard zeroes the whole clusters
# it covers and ignores partial clusters (only used on v3 images, where
# discarded clusters become ZERO_PLAIN and do not show the backing file).
#
# Cases: fresh images (64k, 512, 2M clusters), overlay on a raw backing file
# (COW), image with an internal snapshot (snapshot data must not change),
# compressed image (partial and full overwrites), extended L2 with and
# without backing, v2 image, --discard=unmap vs ignore, write -z with and
# without unmap (ZERO_ALLOC vs ZERO_PLAIN), the file space a discard gives
# back (vs qemu-nbd's), growing the file with 512-byte
# clusters until the refcount table grows, a dirty lazy-refcounts image
# (repaired on a read-write open, served read-only), a corrupt-bit image
# (refused read-write, served read-only), an image with a persistent bitmap
# (refused read-write, served read-only), and -s (snapshot mode).
. "$(dirname "$0")/lib.sh"
. "$SRCDIR/qcow2-lib.sh"
need_tool qemu-img qemu-io qemu-nbd nbdinfo
need_server
scratch_init_holes
cd "$SCRATCH" || fail "cd $SCRATCH"

K=1024
M=$((1024 * K))

# oracle_ops MODE OPS...: the ops to apply to the raw oracle (see above).
# Prints one op per line.
oracle_ops() {
    local mode=$1 op
    shift
    for op in "$@"; do
        case "$op" in
        discard*)
            [ "$mode" = unmap ] || continue
            /usr/bin/python3 - "$op" "$CS" <<'EOF'
import sys
_, off, n = sys.argv[1].split()
cs = int(sys.argv[2])
def num(s):
    m = {"k": 1 << 10, "K": 1 << 10, "m": 1 << 20, "M": 1 << 20}
    return int(s[:-1]) * m[s[-1]] if s[-1] in m else int(s)
off, n = num(off), num(n)
start = -(-off // cs) * cs
end = (off + n) // cs * cs
if end > start:
    print("write -z %d %d" % (start, end - start))
EOF
            ;;
        *) echo "$op" ;;
        esac
    done
}

# wcase WHAT IMAGE: apply "${OPS[@]}" through the server (extra arguments
# "${SRV[@]}") and to the oracle; check + compare.  CS = cluster size (for
# discard rounding).  SHAPE=1: also through qemu-nbd to a copy, compare the
# allocation shape.
wcase() {
    local what=$1 img=$2
    local oracle=$img.oracle.raw refimg=$img.ref.qcow2 mode=ignore a
    for a in "${SRV[@]}"; do [ "$a" = --discard=unmap ] && mode=unmap; done
    qemu-img convert -f qcow2 -O raw "$img" "$oracle" || fail "$what: making the oracle"
    [ "${SHAPE:-0}" = 1 ] && cp "$img" "$refimg"
    dut w -t "${SRV[@]}" "$img" || return 1
    qio_uri w "${OPS[@]}" && ok "$what: ops through the server"
    stop_server_ok w
    local oops=()
    mapfile -t oops < <(oracle_ops "$mode" "${OPS[@]}")
    qio_run "$what: oracle" raw "$oracle" "${oops[@]}"
    qimg_check "$img" "$what"
    qimg_compare "$img" "$oracle" "$what: image vs raw oracle" -f qcow2 -F raw
    if [ "${SHAPE:-0}" = 1 ]; then
        ref wr -t "${SRV[@]}" "$refimg" || return 1
        qio_uri wr "${OPS[@]}"
        stop_server wr
        # With --discard=ignore nbdstack keeps the host cluster of a
        # `write -z -u` (ZERO_ALLOC) where qemu-nbd frees it: ignore means
        # nothing is deallocated.  Both read as zeroes and map as hole+zero.
        [ "$SERVER_KIND" = nbdstack ] && [ "${SRV[*]}" = "--discard=ignore" ] &&
            case $what in "write -z"*) known_divergence nbdstack \
                "--discard=ignore keeps zeroed clusters allocated" ;; esac
        expect_eq "$(qmap_shape "$img")" "$(qmap_shape "$refimg")" "$what: allocation shape vs qemu-nbd's"
        rm -f "$refimg"
    fi
    rm -f "$oracle"
}

# The standard op list, for 16 MiB images: aligned, unaligned and
# cluster-straddling writes, large writes, zeroes with and without unmap,
# partial zeroes, discards, rewrites of freshly zeroed/discarded ranges.
STD_OPS=(
    "write -P 0x11 0 64k"
    "write -P 0x12 100k 300k"
    "write -P 1 65000 2000"
    "write -P 0x13 1M 3M"
    "write -z 1536k 128k"
    "write -z -u 2M 256k"
    "write -z 5000 3000"
    "discard 3M 128k"
    "write -P 0x14 3100k 8k"
    "write -P 0x15 8M 8M"
    "write -z 12M 64k"
    "write -P 0x16 12M 1"
    "write -P 0x17 10000 1"
    "write -P 0x18 16383k 1k"
    "flush"
    "write -z -u 7M 2M"
    "write -P 0x19 7M 512"
)

# --- fresh images ------------------------------------------------------------
for cs in 64k 512 2M; do
    qemu-img create -q -f qcow2 -o cluster_size=$cs fresh-$cs.qcow2 16M
    CS=$(qemu-img info --output=json fresh-$cs.qcow2 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster-size"])')
    OPS=("${STD_OPS[@]}"); SRV=(); SHAPE=0 wcase "fresh cluster_size=$cs" fresh-$cs.qcow2
    rm -f fresh-$cs.qcow2
done
CS=65536

# --- overlay on a raw backing file: COW from the backing ------------------------
qemu-img create -q -f raw base.raw 16M
qio_run "make base.raw" raw base.raw "write -P 0xb1 0 16M"
qemu-img create -q -f qcow2 -b "$SCRATCH/base.raw" -F raw ovl.qcow2
OPS=("${STD_OPS[@]}"); SRV=(); SHAPE=0 wcase "overlay on raw backing" ovl.qcow2
expect_eq "$(qemu-img info --output=json ovl.qcow2 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["backing-filename"])')" \
    "$SCRATCH/base.raw" "overlay still names its backing file"

# --- internal snapshot: writes must COW, the snapshot stays intact ------------
qemu-img create -q -f qcow2 sn.qcow2 16M
qio_run "make sn.qcow2" qcow2 sn.qcow2 "write -P 0x61 0 4M" "write -P 0x62 8M 1M" "write -z 4M 64k"
qemu-img snapshot -c snap1 sn.qcow2 || fail "qemu-img snapshot -c"
qemu-img convert -f qcow2 -O raw -l snapshot.name=snap1 sn.qcow2 snap-before.raw
OPS=("${STD_OPS[@]}"); SRV=(); SHAPE=0 wcase "image with an internal snapshot" sn.qcow2
qemu-img convert -f qcow2 -O raw -l snapshot.name=snap1 sn.qcow2 snap-after.raw
expect_eq "$(sha snap-after.raw)" "$(sha snap-before.raw)" "snapshot snap1 data unchanged after writes"
expect_eq "$(qemu-img snapshot -l sn.qcow2 | grep -c snap1)" 1 "snapshot snap1 still listed"
rm -f snap-*.raw

# --- compressed image: partial and full overwrites of compressed clusters -----
qemu-img create -q -f raw csrc.raw 16M
qio_run "make csrc.raw" raw csrc.raw "write -P 0xc1 0 8M" "write -P 0xc2 8M 4M" "write -P 0xc3 12M 4M"
for ct in zlib zstd; do
    qemu-img convert -c -f raw -O qcow2 -o compression_type=$ct csrc.raw comp-$ct.qcow2
    OPS=("write -P 0x21 1000 100" "write -P 0x22 64k 128k" "write -P 0x23 300k 70k"
        "write -z 512k 64k" "write -z -u 1M 64k" "write -z 1600k 1k" "discard 2M 64k"
        "write -P 0x24 9M 3M" "write -P 0x25 16380k 4k")
    SRV=()
    SHAPE=0 wcase "compressed ($ct) image" comp-$ct.qcow2
    rm -f comp-$ct.qcow2
done

# --- extended L2 (128k clusters, 4k subclusters), without and with backing ----
XOPS=("write -P 0x31 4k 4k" "write -P 0x32 130k 2k" "write -z 64k 8k" "write -z -u 256k 128k"
    "write -P 0x33 1M 1M" "write -z 1028k 8k" "write -P 0x34 1030k 1k" "write -P 1 65000 2000"
    "write -z -u 1536k 4k" "discard 2M 128k" "write -P 0x35 5M 6000")
CS=$((128 * K))
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k ext.qcow2 16M
OPS=("${XOPS[@]}"); SRV=(); SHAPE=0 wcase "extended L2" ext.qcow2
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k -b "$SCRATCH/base.raw" -F raw extb.qcow2
OPS=("${XOPS[@]}"); SRV=(); SHAPE=0 wcase "extended L2 over a raw backing file" extb.qcow2
CS=65536

# --- v2 image ------------------------------------------------------------------
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 16M
qio_run "make v2.qcow2" qcow2 v2.qcow2 "write -P 0x41 0 2M"
OPS=("${STD_OPS[@]}"); SRV=(); SHAPE=0 wcase "v2 (compat=0.10)" v2.qcow2
expect_eq "$(peek_be v2.qcow2 4 4)" 2 "v2 image is still version 2"
qemu-img create -q -f qcow2 -o compat=0.10 -b "$SCRATCH/base.raw" -F raw v2b.qcow2
OPS=("${STD_OPS[@]}"); SRV=(); SHAPE=0 wcase "v2 overlay on raw backing" v2b.qcow2

# --- discard: ignore (default) vs unmap, shape compared with qemu-nbd's ------
DOPS=("discard 1M 1M" "discard 3147752 5000" "discard 6290456 132072" "discard 8M 64k"
    "write -P 0x52 8M 4k" "discard 12M 4M" "flush")
for mode in ignore unmap; do
    qemu-img create -q -f qcow2 disc-$mode.qcow2 16M
    qio_run "make disc" qcow2 disc-$mode.qcow2 "write -P 0x51 0 14M"
    OPS=("${DOPS[@]}"); SRV=(--discard=$mode); SHAPE=1 wcase "--discard=$mode" disc-$mode.qcow2
    rm -f disc-$mode.qcow2
done

# --- write -z with and without unmap: ZERO_ALLOC vs ZERO_PLAIN ---------------
ZOPS=("write -z 1M 128k" "write -z -u 2M 128k" "write -z 3076k 4k" "write -z -u 4100k 4k"
    "write -z 6M 1M" "write -z -u 6M 512k" "write -z -u 10M 1M")
for mode in ignore unmap; do
    qemu-img create -q -f qcow2 zero-$mode.qcow2 16M
    qio_run "make zero" qcow2 zero-$mode.qcow2 "write -P 0x53 0 8M"
    OPS=("${ZOPS[@]}"); SRV=(--discard=$mode); SHAPE=1 wcase "write -z / write -z -u, --discard=$mode" zero-$mode.qcow2
    if [ $mode = unmap ]; then
        expect_true "write -z (NO_HOLE) left ZERO_ALLOC clusters" \
            grep -q '^1048576 131072 data=false zero=true depth=0 present=true host=yes' <(qmap_shape zero-$mode.qcow2)
        expect_true "write -z -u left ZERO_PLAIN clusters" \
            grep -q '^2097152 131072 data=false zero=true depth=0 present=true host=no' <(qmap_shape zero-$mode.qcow2)
    fi
    rm -f zero-$mode.qcow2
done

# --- the file gives back what the guest discards, as qemu-nbd's does --------
# With --discard=unmap, clusters freed by a discard or a `write -z -u` are
# punched out of the file (QEMU's pass-discard-request); with ignore nothing
# is freed.  Both servers get the same ops on identical fresh images; the
# space each file gives back is measured (du) and must be within a cluster
# of the other's and at least the 20 MiB freed.
kib_used() { du -k "$1" | cut -f1; }
for mode in ignore unmap; do
    declare -A freed=()
    for who in dut ref; do
        img=punch-$mode-$who.qcow2
        qemu-img create -q -f qcow2 "$img" 64M
        $who p -t --discard=$mode "$img" || break
        qio_uri p "write -P 0x55 0 32M" "flush"
        before=$(kib_used "$img")
        qio_uri p "discard 0 16M" "write -z -u 16M 4M" "write -z 20M 4M" "flush"
        freed[$who]=$((before - $(kib_used "$img")))
        stop_server_ok p
        qimg_check "$img" "punch $mode ($who)"
        rm -f "$img"
    done
    if [ $mode = unmap ]; then
        expect_true "--discard=unmap: the file gave back ${freed[dut]} KiB (qemu-nbd's ${freed[ref]} KiB)" \
            [ "${freed[dut]}" -ge $((20 * 1024)) -a \
              $((freed[dut] - freed[ref])) -le 64 -a $((freed[ref] - freed[dut])) -le 64 ]
    else
        expect_eq "${freed[dut]}" 0 "--discard=ignore: the file gave nothing back"
    fi
    unset freed
done

# --- growing the file: 512-byte clusters, fill the whole image ----------------
CS=512
qemu-img create -q -f qcow2 -o cluster_size=512 grow.qcow2 12M
rt_before=$(peek_be grow.qcow2 56 4)
OPS=("write -P 0x61 6M 6M" "write -P 0x62 0 6M" "write -P 0x63 1000 1M" "flush")
SRV=()
wcase "fill a 512-byte-cluster image" grow.qcow2
rt_after=$(peek_be grow.qcow2 56 4)
expect_true "refcount table grew ($rt_before -> $rt_after clusters)" [ "$rt_after" -gt "$rt_before" ]
expect_true "image file grew past the virtual size" [ "$(stat -c %s grow.qcow2)" -gt $((12 * M)) ]
rm -f grow.qcow2
CS=65536

# --- dirty image (lazy refcounts + abort) --------------------------------------
qemu-img create -q -f qcow2 -o lazy_refcounts=on lz.qcow2 16M
{ qemu-io -f qcow2 lz.qcow2 -c "write -P 7 0 64k" -c "write -P 8 1M 1M" -c abort; } >/dev/null 2>&1   # abort: SIGABRT by design
expect_eq "$(($(incompat_bits lz.qcow2) & 1))" 1 "image check: lz.qcow2 has the dirty bit"
qimg_check lz.qcow2 "dirty image before the server (expected to complain)" "2" >/dev/null
cp lz.qcow2 lz-ro.qcow2
sum=$(sha lz-ro.qcow2)
if dut lr -r -t lz-ro.qcow2; then
    QIO_RO=1 qio_uri lr "read -P 7 0 64k" "read -P 8 1M 1M" "read -P 0 2M 14M" && ok "dirty image served read-only"
    stop_server_ok lr
fi
expect_eq "$(sha lz-ro.qcow2)" "$sum" "dirty image untouched by a read-only export"
OPS=("write -P 9 4M 64k" "write -P 10 32k 64k")
SRV=()
wcase "dirty image opened read-write (repaired)" lz.qcow2
expect_eq "$(($(incompat_bits lz.qcow2) & 1))" 0 "dirty bit cleared after a clean shutdown"

# --- corrupt bit ------------------------------------------------------------------
qemu-img create -q -f qcow2 cor.qcow2 16M
qio_run "make cor" qcow2 cor.qcow2 "write -P 0x71 0 1M"
poke cor.qcow2 79 02
expect_eq "$(incompat_bits cor.qcow2)" 2 "image check: corrupt bit set"
sum=$(sha cor.qcow2)
expect_refused cor 'corrupt' "corrupt-bit image opened read-write" "$NBDSTACK" -f qcow2 -t cor.qcow2
if dut cr -r -t cor.qcow2; then
    QIO_RO=1 qio_uri cr "read -P 0x71 0 1M" "read -P 0 1M 15M" && ok "corrupt-bit image served read-only"
    stop_server_ok cr
fi
expect_eq "$(sha cor.qcow2)" "$sum" "corrupt-bit image unchanged"

# --- persistent bitmap: refused read-write (no opt-in tested), served read-only ---
qemu-img create -q -f qcow2 bm.qcow2 16M
qio_run "make bm" qcow2 bm.qcow2 "write -P 0x72 0 1M"
qemu-img bitmap --add bm.qcow2 b0 || fail "qemu-img bitmap --add"
sum=$(sha bm.qcow2)
known_divergence qemu-nbd "qemu-nbd writes images with persistent bitmaps and keeps them up to date"
expect_refused bm 'bitmap' "image with a persistent bitmap opened read-write" "$NBDSTACK" -f qcow2 -t bm.qcow2
if [ "$SERVER_KIND" = nbdstack ]; then
    expect_eq "$(sha bm.qcow2)" "$sum" "bitmap image unchanged by the refused open"
fi
cp bm.qcow2 bm-ro.qcow2
sum=$(sha bm-ro.qcow2)
if dut br -r -t bm-ro.qcow2; then
    QIO_RO=1 qio_uri br "read -P 0x72 0 1M" "read -P 0 1M 15M" && ok "bitmap image served read-only"
    stop_server_ok br
fi
expect_eq "$(sha bm-ro.qcow2)" "$sum" "bitmap image unchanged by a read-only export"
qimg_check bm-ro.qcow2 "bitmap image after read-only export"

# --- -s: writes go to a temporary overlay discarded at exit -------------------
qemu-img create -q -f qcow2 ss.qcow2 16M
qio_run "make ss" qcow2 ss.qcow2 "write -P 0x81 0 2M"
sum=$(sha ss.qcow2)
mkdir -p sstmp
if TMPDIR=$SCRATCH/sstmp dut ss -t -s ss.qcow2; then
    qio_uri ss "write -P 0x82 1M 2M" "write -z 0 64k" "discard 4M 64k" "flush" && ok "-s: writes accepted"
    if [ "$SERVER_KIND" = nbdstack ]; then
        # nbdstack unlinks its overlay at once; it must still be in $TMPDIR.
        if ls -l "/proc/${SERVER_PID[ss]}/fd" | grep -q "$SCRATCH/sstmp/nbdstack-snapshot-.* (deleted)"; then
            ok "-s: the overlay is an unlinked file in \$TMPDIR"
        else
            fail "-s: no unlinked overlay in \$TMPDIR among the server's files"
        fi
    fi
    QIO_RO=1 qio_uri ss "read -P 0 0 64k" "read -P 0x81 64k 960k" "read -P 0x82 1M 2M" "read -P 0 3M 13M" &&
        ok "-s: a new connection sees the writes"
    stop_server_ok ss
fi
expect_eq "$(sha ss.qcow2)" "$sum" "-s: image file unchanged afterwards"
expect_eq "$(find sstmp -mindepth 1 | wc -l)" 0 "-s: no temporary overlay left in \$TMPDIR"
qimg_check ss.qcow2 "-s image afterwards"

# -s over a raw image: the overlay is qcow2 whatever the image's format.
truncate -s 8M sr.raw
printf 'raw data' | dd of=sr.raw bs=1 seek=4096 conv=notrunc status=none
sum=$(sha sr.raw)
if TMPDIR=$SCRATCH/sstmp dut sr -t -f raw -s sr.raw; then
    qio_uri sr "write -P 0x83 0 64k" "flush" && ok "-s over raw: writes accepted"
    QIO_RO=1 qio_uri sr "read -P 0x83 0 64k" "read -P 0 64k 8128k" &&
        ok "-s over raw: a new connection sees the writes"
    stop_server_ok sr
fi
expect_eq "$(sha sr.raw)" "$sum" "-s over raw: image file unchanged afterwards"
expect_eq "$(find sstmp -mindepth 1 | wc -l)" 0 "-s over raw: no temporary overlay left"

finish
