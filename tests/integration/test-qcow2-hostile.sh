#!/bin/bash
# Hostile qcow2 images: iotest 080-style pokes (printf | dd) into copies of
# an image made by qemu-img.
# Header-level damage: the server must refuse to start (even with -r), exit
# with a non-zero status (not a crash, not a hang), and print one line that
# names the problem (matched with a keyword pattern that accepts QEMU's
# wording and the obvious alternatives).
# Entry-level damage (only visible when a request touches it): the request
# gets an error (EIO), other requests keep working, the server does not
# crash; in a read-write export a write that would hit the damage (or
# overwrite metadata) fails, metadata is not overwritten, and the image is
# marked corrupt (incompatible bit 0x2) as QEMU does.
# Refcounts that contradict the entries (E7-E12): an in-use cluster with
# refcount 0, or two entries (of one table or two) on a cluster counted
# once, mark the image corrupt before a write can lose data (two L1
# entries on one L2 table refuse the read-write open); a COPIED flag on a
# shared cluster is not trusted; QEMU trusts the refcounts and loses data
# (known divergences).
# Known divergence: after a fatal corruption event in a read-write export
# QEMU makes the whole image unusable (every later request fails with
# EINVAL); nbdstack keeps serving requests that do not touch the damage.
. "$(dirname "$0")/lib.sh"
. "$SRCDIR/qcow2-lib.sh"
need_tool qemu-img qemu-io
need_server
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd missing"
scratch_init
cd "$SCRATCH" || fail "cd $SCRATCH"

# The base image: 64 MiB, 64k clusters.  Layout (qemu-img 7.2): header at 0,
# refcount table 0x10000, refcount block 0x20000, L1 0x30000, L2 0x40000,
# data 0x50000 (guest 0) and 0x60000 (guest 64k).
qemu-img create -q -f qcow2 good.qcow2 64M
qio_run "make good" qcow2 good.qcow2 "write -P 0x11 0 128k" "write -P 0x12 1M 64k"
expect_eq "$(peek_hex good.qcow2 $((0x30000)))" 0x8000000000040000 "image check: L1[0] -> L2 at 0x40000"
expect_eq "$(peek_hex good.qcow2 $((0x40000)))" 0x8000000000050000 "image check: L2[0] -> data at 0x50000"
expect_eq "$(peek_be good.qcow2 112 4)" $((0x6803f857)) "image check: first header extension at 112"
qemu-img create -q -f qcow2 -b good.qcow2 -F qcow2 ovl.qcow2
expect_eq "$(peek_be ovl.qcow2 16 4)" 10 "image check: overlay backing name length"

# header_case WHAT KEYWORD_ERE IMAGE OFFSET HEX [OFFSET HEX...]
header_case() {
    local what=$1 kw=$2 src=$3
    shift 3
    cp "$src" bad.qcow2
    while [ $# -gt 0 ]; do
        poke bad.qcow2 "$1" "$2"
        shift 2
    done
    expect_refused h "$kw" "$what" "$NBDSTACK" -f qcow2 -r -t bad.qcow2
}

RT='(refcount|reference count).*table|reftable|refcount_table'
header_case "bad magic" 'qcow2|magic|format' good.qcow2 0 00000000
header_case "version 4" 'version' good.qcow2 4 00000004
header_case "cluster_bits 30" 'cluster.?(size|bits)' good.qcow2 20 0000001e
header_case "cluster_bits 8" 'cluster.?(size|bits)' good.qcow2 20 00000008
header_case "huge header_length" 'header.?(length|size)|header.*(exceeds|too)' good.qcow2 100 ffffffff
header_case "header_length below 104" 'header.?(length|size)|header.*(short|small)' good.qcow2 100 00000040
header_case "huge header extension" 'extension' good.qcow2 116 7fffffff
header_case "refcount_table_clusters 0xffffffff" "$RT" good.qcow2 56 ffffffff
header_case "refcount_table_clusters 0" "$RT" good.qcow2 56 00000000
header_case "misaligned refcount table offset" "$RT" good.qcow2 48 0000000000012345
header_case "nb_snapshots 0xffffffff" 'snapshot' good.qcow2 60 ffffffff
header_case "misaligned snapshot table offset" 'snapshot' good.qcow2 60 00000001 64 0000000000012345
header_case "l1_size 0xffffffff" 'L1' good.qcow2 36 ffffffff
header_case "l1_size too small for the disk" 'L1' good.qcow2 36 00000000
header_case "misaligned L1 table offset" 'L1' good.qcow2 40 0000000000012345
header_case "unknown incompatible feature bit" 'incompatible|feature' good.qcow2 79 20
header_case "compression-type bit with zlib type" 'compression' good.qcow2 79 08
header_case "encrypted (crypt_method 1)" 'encrypt|crypt|cipher|AES' good.qcow2 32 00000001
header_case "backing_file_size 0xffffffff" 'backing' ovl.qcow2 16 ffffffff
header_case "backing_file_offset past cluster 0" 'backing' ovl.qcow2 8 0000000100000000

# --- entry-level damage ------------------------------------------------------
# op_is NAME OP WANT_ERE WHAT: the nbdops result for OP matches WANT_ERE.
# (results come from one nbdops run, in $OPS_OUT)
op_is() {
    local op=$1 want=$2 what=$3 got
    got=$(grep -F "$op:" <<<"$OPS_OUT" | sed -n "${4:-1}p")
    got=${got#*: }
    if [[ "$got" =~ ^($want)$ ]]; then
        ok "$what: '$op' -> $got"
    elif [ -n "$XFAIL_NEXT" ]; then
        echo "XFAIL - $what: '$op' -> '$got' ($SERVER_KIND: $XFAIL_NEXT)"
    else
        check_fail "$what: '$op' gave '$got', expected /$want/"
    fi
    XFAIL_NEXT=
}

alive_then_stop() {
    if server_exited "$1"; then
        sed 's/^/  server: /' "$SCRATCH/$1.log" >&2
        check_fail "$2: the server died"
        stop_server "$1"
    else
        ok "$2: server still running"
        stop_server_ok "$1"
    fi
}

BADIO='EIO|EINVAL|EPERM|ENOSPC|EROFS'
DIVERGE="after a fatal corruption event QEMU fails every request on the image"

# E1: L2 entry with an unaligned host offset, read-only export
cp good.qcow2 e1.qcow2
poke e1.qcow2 $((0x40006)) 02
sum=$(sha e1.qcow2)
if dut e1 -r -t e1.qcow2; then
    OPS_OUT=$(nbdops e1 "r 65536 4096" "r 0 4096" "r 4096 512" "r 1048576 65536")
    op_is "r 65536 4096" ok "unaligned L2 entry, -r: read of a good cluster"
    op_is "r 0 4096" EIO "unaligned L2 entry, -r: read of the bad cluster"
    op_is "r 4096 512" EIO "unaligned L2 entry, -r: another read of the bad cluster"
    op_is "r 1048576 65536" ok "unaligned L2 entry, -r: later read of a good cluster"
    alive_then_stop e1 "unaligned L2 entry, -r"
fi
expect_eq "$(sha e1.qcow2)" "$sum" "unaligned L2 entry, -r: image unchanged"

# E2: the same, read-write: the write fails and the image is marked corrupt
cp good.qcow2 e2.qcow2
poke e2.qcow2 $((0x40006)) 02
if dut e2 -t e2.qcow2; then
    OPS_OUT=$(nbdops e2 "r 65536 4096" "r 0 4096" "w 0 4096" "r 1048576 4096" "f")
    op_is "r 65536 4096" ok "unaligned L2 entry, rw: read of a good cluster"
    op_is "r 0 4096" EIO "unaligned L2 entry, rw: read of the bad cluster"
    op_is "w 0 4096" "$BADIO" "unaligned L2 entry, rw: write to the bad cluster fails"
    known_divergence qemu-nbd "$DIVERGE"
    op_is "r 1048576 4096" ok "unaligned L2 entry, rw: later read of a good cluster"
    alive_then_stop e2 "unaligned L2 entry, rw"
fi
expect_eq "$(($(incompat_bits e2.qcow2) & 2))" 2 "unaligned L2 entry, rw: image marked corrupt (incompat bit 0x2)"
expect_eq "$(peek_hex e2.qcow2 $((0x40000)))" 0x8000000000050200 "unaligned L2 entry, rw: bad entry left as it was"
expect_refused e2b corrupt "after the corruption event: read-write open" "$NBDSTACK" -f qcow2 -t e2.qcow2

# E3/E4: L2 entry for guest 64k pointing into the refcount table / L1 table
for target in 0x10000:refcount-table 0x30000:L1-table 0x20000:refcount-block; do
    off=${target%%:*} tname=${target#*:}
    cp good.qcow2 e3.qcow2
    poke e3.qcow2 $((0x40008)) "$(printf '%016x' $((0x8000000000000000 | off)))"
    before=$(dd if=e3.qcow2 bs=4096 skip=$((off / 4096)) count=16 status=none | sha256sum)
    if dut e3 -t e3.qcow2; then
        OPS_OUT=$(nbdops e3 "r 0 4096" "r 65536 4096" "w 65536 4096" "r 1048576 4096")
        op_is "r 0 4096" ok "L2 entry into the $tname, rw: read of a good cluster"
        op_is "r 65536 4096" "ok|EIO" "L2 entry into the $tname, rw: read of the bad cluster (data or EIO)"
        op_is "w 65536 4096" "$BADIO" "L2 entry into the $tname, rw: write refused"
        known_divergence qemu-nbd "$DIVERGE"
        op_is "r 1048576 4096" ok "L2 entry into the $tname, rw: later read of a good cluster"
        alive_then_stop e3 "L2 entry into the $tname"
    fi
    after=$(dd if=e3.qcow2 bs=4096 skip=$((off / 4096)) count=16 status=none | sha256sum)
    expect_eq "$after" "$before" "L2 entry into the $tname: the $tname was not overwritten"
    expect_eq "$(($(incompat_bits e3.qcow2) & 2))" 2 "L2 entry into the $tname: image marked corrupt"
done

# E5: L1 entry with an unaligned L2 offset, read-only
cp good.qcow2 e5.qcow2
poke e5.qcow2 $((0x30006)) 02
if dut e5 -r -t e5.qcow2; then
    OPS_OUT=$(nbdops e5 "r 0 4096" "r 1048576 4096" "r 0 4096")
    op_is "r 0 4096" EIO "unaligned L1 entry, -r: read"
    op_is "r 1048576 4096" EIO "unaligned L1 entry, -r: read elsewhere under the same L1 entry"
    alive_then_stop e5 "unaligned L1 entry, -r"
fi

# E6: L2 entry far beyond the end of the file (reads as zeros in QEMU, or
# EIO); a write must not extend the file to that offset.
cp good.qcow2 e6.qcow2
poke e6.qcow2 $((0x40008)) 8000100000000000
if dut e6 -t e6.qcow2; then
    OPS_OUT=$(nbdops e6 "r 65536 4096" "r 0 4096" "w 65536 4096" "r 0 4096")
    op_is "r 65536 4096" "ok|EIO" "L2 entry beyond EOF: read (zeros or EIO)"
    op_is "r 0 4096" ok "L2 entry beyond EOF: read of a good cluster"
    alive_then_stop e6 "L2 entry beyond EOF"
fi
expect_true "L2 entry beyond EOF: file not grown to the bogus offset ($(stat -c %s e6.qcow2) bytes)" \
    [ "$(stat -c %s e6.qcow2)" -lt $((1 << 40)) ]

# E7: a data cluster in use (guest 0 at 0x50000) whose refcount is 0.  The
# allocator would hand 0x50000 out for the next new cluster, and guest 0
# would then read another cluster's data: the write is refused instead,
# and the image marked corrupt, before anything is allocated.
cp good.qcow2 e7.qcow2
poke e7.qcow2 $((0x2000a)) 0000   # 16-bit refcount of cluster 5
data_sum() { dd if="$1" bs=64k skip=5 count=1 status=none | sha256sum; }
before=$(data_sum e7.qcow2)
if dut e7 -t e7.qcow2; then
    OPS_OUT=$(nbdops e7 "w 2097152 65536" "r 0 4096" "f")
    known_divergence qemu-nbd "QEMU allocates the in-use cluster"
    op_is "w 2097152 65536" "$BADIO" "in-use cluster with refcount 0: a write that would allocate is refused"
    op_is "r 0 4096" ok "in-use cluster with refcount 0: the cluster still reads"
    alive_then_stop e7 "in-use cluster with refcount 0"
fi
known_divergence qemu-nbd "QEMU allocates the in-use cluster"
expect_eq "$(data_sum e7.qcow2)" "$before" "in-use cluster with refcount 0: its data was not overwritten"
known_divergence qemu-nbd "QEMU does not look at the refcounts of clusters in use"
expect_eq "$(($(incompat_bits e7.qcow2) & 2))" 2 "in-use cluster with refcount 0: image marked corrupt"

# E8: an internal snapshot whose creation left the COPIED flags set
# (refcounts 2, the flags of the active L1 and L2 entries not yet
# cleared).  A write must copy the shared L2 table and data cluster, not
# change them in place: the snapshot keeps its data.
cp good.qcow2 e8.qcow2
qemu-img snapshot -c s1 e8.qcow2 || fail "qemu-img snapshot -c"
expect_eq "$(peek_hex e8.qcow2 $((0x30000)))" 0x0000000000040000 "image check: snapshot cleared COPIED in L1[0]"
expect_eq "$(peek_hex e8.qcow2 $((0x40000)))" 0x0000000000050000 "image check: snapshot cleared COPIED in L2[0]"
poke e8.qcow2 $((0x30000)) 8000000000040000
poke e8.qcow2 $((0x40000)) 8000000000050000
if dut e8 -t e8.qcow2; then
    OPS_OUT=$(nbdops e8 "w 0 4096" "f")
    op_is "w 0 4096" ok "COPIED flags contradicting refcount 2: write"
    op_is "f" ok "COPIED flags contradicting refcount 2: flush"
    alive_then_stop e8 "COPIED flags contradicting refcount 2"
fi
QIO_RO=1 qio_run "COPIED flags contradicting refcount 2: the write landed" \
    qcow2 e8.qcow2 "read -P 0x5a 0 4k" "read -P 0x11 4k 124k" &&
    ok "COPIED flags contradicting refcount 2: the write landed"
qemu-img convert -f qcow2 -O raw -l snapshot.name=s1 e8.qcow2 e8-s1.raw ||
    check_fail "qemu-img convert -l s1"
known_divergence qemu-nbd "QEMU trusts the COPIED flag and writes in place"
expect_eq "$(head -c 128k e8-s1.raw | sha256sum)" \
    "$(head -c 128k /dev/zero | tr '\0' '\021' | sha256sum)" \
    "COPIED flags contradicting refcount 2: the snapshot kept its data (sha256 of 0x11 x 128k)"

# E9: two L2 entries of one table on the same data cluster (guest 0 and
# 64k both at 0x50000, refcount 1): a write to one would change the other.
cp good.qcow2 e9.qcow2
poke e9.qcow2 $((0x40008)) 8000000000050000
if dut e9 -t e9.qcow2; then
    OPS_OUT=$(nbdops e9 "w 0 131072" "r 0 4096")
    known_divergence qemu-nbd "QEMU writes both in place"
    op_is "w 0 131072" "$BADIO" "two entries on one cluster with refcount 1: write refused"
    op_is "r 0 4096" ok "two entries on one cluster with refcount 1: the cluster still reads"
    alive_then_stop e9 "two entries on one cluster with refcount 1"
fi
known_divergence qemu-nbd "QEMU does not compare entries with refcounts"
expect_eq "$(($(incompat_bits e9.qcow2) & 2))" 2 "two entries on one cluster with refcount 1: image marked corrupt"

# E10: two L1 entries on one L2 table counted once (a 1 GiB image: guest
# [0, 512M) and [512M, 1G) share their mappings).  The read-write open is
# refused with one line; read-only it serves both ranges alike.
qemu-img create -q -f qcow2 e10.qcow2 1G
qio_run "make e10" qcow2 e10.qcow2 "write -P 0x21 0 64k"
expect_eq "$(peek_hex e10.qcow2 $((0x30000)))" 0x8000000000040000 "image check: e10 L1[0] -> L2 at 0x40000"
poke e10.qcow2 $((0x30008)) 8000000000040000
known_divergence qemu-nbd "QEMU does not compare L1 entries with refcounts"
expect_refused e10 'share.*L2 table.*refcount' "two L1 entries on one L2 table, rw" \
    "$NBDSTACK" -f qcow2 -t e10.qcow2
if dut e10r -r -t e10.qcow2; then
    OPS_OUT=$(nbdops e10r "r 0 4096" "r 536870912 4096")
    op_is "r 0 4096" ok "two L1 entries on one L2 table, -r: read"
    op_is "r 536870912 4096" ok "two L1 entries on one L2 table, -r: read of the other range"
    alive_then_stop e10r "two L1 entries on one L2 table, -r"
fi

# E11: a table first read after the allocator appended a cluster, whose
# entry points at that cluster (past the end of the file at open).  Until
# the table is read its entry is unknown; when it is, the cluster counts
# as ours (refcount 1), so only "past the end at open" gives it away.
qemu-img create -q -f qcow2 e11.qcow2 1G
qio_run "make e11" qcow2 e11.qcow2 "write -P 0x31 0 64k" "write -P 0x32 512M 64k"
expect_eq "$(peek_hex e11.qcow2 $((0x30008)))" 0x8000000000060000 "image check: e11 L1[1] -> L2 at 0x60000"
expect_eq "$(stat -c %s e11.qcow2)" $((0x80000)) "image check: e11 ends at 0x80000"
poke e11.qcow2 $((0x60008)) 8000000000080000   # guest 512M+64k -> 0x80000
if dut e11 -t e11.qcow2; then
    OPS_OUT=$(nbdops e11 "w 65536 65536" "w 536936448 65536" "r 0 4096")
    op_is "w 65536 65536" ok "entry on a cluster appended since open: the write that appends it"
    known_divergence qemu-nbd "QEMU writes both guest clusters into one host cluster"
    op_is "w 536936448 65536" "$BADIO" "entry on a cluster appended since open: write through the hostile entry refused"
    op_is "r 0 4096" ok "entry on a cluster appended since open: later read"
    alive_then_stop e11 "entry on a cluster appended since open"
fi
known_divergence qemu-nbd "QEMU does not look at where entries point"
expect_eq "$(($(incompat_bits e11.qcow2) & 2))" 2 "entry on a cluster appended since open: image marked corrupt"

# E12: entries of two different tables on one data cluster (guest 0 and
# guest 512M both at 0x50000, refcount 1).  Reading guest 0 vets the first
# table; the second is vetted when the write reaches it.
qemu-img create -q -f qcow2 e12.qcow2 1G
qio_run "make e12" qcow2 e12.qcow2 "write -P 0x41 0 64k" "write -P 0x42 512M 64k"
expect_eq "$(peek_hex e12.qcow2 $((0x60000)))" 0x8000000000070000 "image check: e12 L2 of 512M at 0x60000 -> 0x70000"
poke e12.qcow2 $((0x60000)) 8000000000050000   # guest 512M -> guest 0's cluster
if dut e12 -t e12.qcow2; then
    OPS_OUT=$(nbdops e12 "r 0 4096" "w 536870912 4096" "r 4096 4096")
    op_is "r 0 4096" ok "entries of two tables on one cluster: read"
    known_divergence qemu-nbd "QEMU writes guest 0's cluster in place"
    op_is "w 536870912 4096" "$BADIO" "entries of two tables on one cluster: write through the second refused"
    op_is "r 4096 4096" ok "entries of two tables on one cluster: later read"
    alive_then_stop e12 "entries of two tables on one cluster"
fi
# pattern_is IMAGE PATTERN OFFSET LENGTH: qemu-io reads the pattern there.
pattern_is() {
    local out
    out=$(qemu-io -r -f qcow2 -c "read -P $2 $3 $4" "$1" 2>&1) &&
        ! grep -qiE 'fail|error' <<<"$out"
}
known_divergence qemu-nbd "QEMU writes guest 0's cluster in place"
expect_true "entries of two tables on one cluster: guest 0 kept its data" \
    pattern_is e12.qcow2 0x41 0 64k
known_divergence qemu-nbd "QEMU does not compare entries with refcounts"
expect_eq "$(($(incompat_bits e12.qcow2) & 2))" 2 "entries of two tables on one cluster: image marked corrupt"

finish
