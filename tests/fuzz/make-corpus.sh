#!/bin/bash
# Make the seed corpus of tests/fuzz/fuzz-qcow2.c: one small image per
# geometry class qemu-img 7.2 makes (v2, v3, cluster sizes 512 B / 4 KiB /
# 16 KiB, refcount_bits 1/16/64, zlib and zstd compressed clusters,
# extended L2, internal snapshots, a dirty lazy-refcounts image, persistent
# bitmaps, backing files, ...), each 1-4 MiB virtual, a few KiB on disk
# (16 KiB clusters: ~100 KiB).
#
# Every seed ends with a control trailer (see fuzz-qcow2.c): 56 control
# bytes then "NBDSFUZZ".  The fuzz target strips it, so the image is
# exactly what qemu-img made; the control bytes choose how it is opened
# (read-write, read-only, snapshot=NAME, ...) and which requests follow.
#
# The seeds are committed: run this only to regenerate them
# (bash tests/fuzz/make-corpus.sh [OUTDIR]).  Needs qemu-img and qemu-io.
set -euo pipefail
cd "$(dirname "$0")"
out=$(realpath -m "${1:-corpus/qcow2}")
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

create() {  # create NAME SIZE OPTIONS
  qemu-img create -q -f qcow2 -o "$3" "$1" "$2"
}

io() {  # io NAME CMD...: qemu-io commands on an image
  local img=$1; shift
  local args=()
  for c in "$@"; do args+=(-c "$c"); done
  qemu-io -f qcow2 "${args[@]}" "$img" >/dev/null
}

# The usual mix: data, a partial cluster, a zero cluster, a discarded one,
# data far out (a second L2 table on small clusters).
fill() {
  io "$1" "write -P 0xa1 0 8k" "write -P 0xb2 12k 1536" "write -z 64k 8k" \
          "write -P 0xc3 96k 4k" "discard 96k 4k" "write -P 0xd4 900k 4k"
}

# trailer NAME BYTE...: append the control trailer (hex bytes, the rest 0).
trailer() {
  local img=$1; shift
  local ctl="" n=0
  for b in "$@"; do ctl+="\\x$b"; n=$((n + 1)); done
  while [ $n -lt 56 ]; do ctl+="\\x00"; n=$((n + 1)); done
  printf "$ctl%s" NBDSFUZZ >>"$img"
}

# Control: byte 0 mode (0 rw, 02 ro, 07 snapshot=snap1, 0b snapshot=snap2,
# 03 snapshot=1, 10 tiny L2 cache, 20 bitmaps=in-use, 80 reopen after),
# byte 1 the read walk's chunk (512 << n; 80: three iovecs), then 9 ops of
# 6 bytes: op, offset (3 bytes, a fraction of the disk), length-1 (2 bytes).
# Ops: 00 write, 01 FUA write, 02 zero, 03 zero no-hole, 04 trim,
# 05 flush, 06 read, 07 fast zero; 08 align to 4k, 10 length x32,
# 20 three iovecs, 40 block status of the range afterwards.
OPS_MIX=(00 01  00 00 00 00 0f ff  42 10 00 00 1f ff  04 40 00 00 0f ff
         61 80 00 00 01 ff  05 00 00 00 00 00  53 c0 00 00 ff ff
         4e f0 00 00 7f ff)

# v2 (compat=0.10), 512-byte clusters: no zero flag, no feature table.
create v2-c512.qcow2 1M compat=0.10,cluster_size=512
io v2-c512.qcow2 "write -P 0xa1 0 8k" "write -P 0xb2 12k 1536" \
   "write -P 0xd4 900k 4k"
# v2 with a snapshot: snapshot table entries without extra data.
create v2-c512-snap.qcow2 1M compat=0.10,cluster_size=512
io v2-c512-snap.qcow2 "write -P 0x11 0 16k"
qemu-img snapshot -c s1 v2-c512-snap.qcow2
io v2-c512-snap.qcow2 "write -P 0x22 4k 4k"
cp v2-c512-snap.qcow2 v2-c512-snap-view.qcow2
trailer v2-c512-snap-view.qcow2 03 03

# v3, refcount widths 1, 16, 64.
create v3-c512-rc1.qcow2 1M cluster_size=512,refcount_bits=1
fill v3-c512-rc1.qcow2
create v3-c4k-rc16.qcow2 4M cluster_size=4k
fill v3-c4k-rc16.qcow2
io v3-c4k-rc16.qcow2 "write -P 0xe5 3M 8k"
create v3-c4k-rc64.qcow2 1M cluster_size=4k,refcount_bits=64
fill v3-c4k-rc64.qcow2
create v3-c512-rc16.qcow2 2M cluster_size=512
fill v3-c512-rc16.qcow2
cp v3-c512-rc16.qcow2 v3-c512-rc16-ops.qcow2
trailer v3-c512-rc16-ops.qcow2 90 81 "${OPS_MIX[@]}"
cp v3-c4k-rc16.qcow2 v3-c4k-rc16-ops.qcow2
trailer v3-c4k-rc16-ops.qcow2 80 03 "${OPS_MIX[@]}"
cp v3-c512-rc1.qcow2 v3-c512-rc1-ops.qcow2
trailer v3-c512-rc1-ops.qcow2 10 00 "${OPS_MIX[@]}"
# An empty image (no L2 table at all).
create v3-c4k-empty.qcow2 1M cluster_size=4k

# Compressed clusters, zlib and zstd (whole clusters written with -c).
create zlib-c4k.qcow2 1M cluster_size=4k
io zlib-c4k.qcow2 "write -c -P 0x31 0 16k" "write -c -P 0x32 64k 4k" \
   "write -P 0x33 128k 4k"
cp zlib-c4k.qcow2 zlib-c4k-ops.qcow2
trailer zlib-c4k-ops.qcow2 00 04 "${OPS_MIX[@]}"
create zstd-c512.qcow2 1M cluster_size=512,compression_type=zstd
io zstd-c512.qcow2 "write -c -P 0x41 0 16k" "write -c -P 0x42 64k 4k"
cp zstd-c512.qcow2 zstd-c512-ops.qcow2
trailer zstd-c512-ops.qcow2 80 02 "${OPS_MIX[@]}"
create zlib-c512.qcow2 1M cluster_size=512
io zlib-c512.qcow2 "write -c -P 0x51 0 4k"

# Extended L2 (subclusters need 16 KiB clusters or more).
create extl2-c16k.qcow2 1M cluster_size=16k,extended_l2=on
io extl2-c16k.qcow2 "write -P 0x61 0 2k" "write -P 0x62 3k 1k" \
   "write -z 8k 4k" "write -P 0x63 32k 16k" "write -z 64k 16k" \
   "write -c -P 0x64 128k 16k" "discard 32k 512"
cp extl2-c16k.qcow2 extl2-c16k-ops.qcow2
trailer extl2-c16k-ops.qcow2 00 02 "${OPS_MIX[@]}"

# Internal snapshots (v3: extra data with the disk size).
create snap-c512.qcow2 1M cluster_size=512
io snap-c512.qcow2 "write -P 0x71 0 16k"
qemu-img snapshot -c snap1 snap-c512.qcow2
io snap-c512.qcow2 "write -P 0x72 4k 8k" "write -z 12k 4k"
qemu-img snapshot -c snap2 snap-c512.qcow2
io snap-c512.qcow2 "write -P 0x73 0 4k"
cp snap-c512.qcow2 snap-c512-snap1.qcow2
trailer snap-c512-snap1.qcow2 07 01
cp snap-c512.qcow2 snap-c512-snap2.qcow2
trailer snap-c512-snap2.qcow2 0b 00
cp snap-c512.qcow2 snap-c512-ops.qcow2
trailer snap-c512-ops.qcow2 00 00 "${OPS_MIX[@]}"

# A dirty image: lazy refcounts, qemu-io aborted after writing (refcounts
# are stale; a read-write open rebuilds them).
create dirty-lazy-c512.qcow2 1M cluster_size=512,lazy_refcounts=on
(ulimit -c 0; qemu-io -f qcow2 -c "write -P 0x81 0 8k" -c "write -z 16k 4k" \
   -c "write -P 0x82 200k 4k" -c abort dirty-lazy-c512.qcow2 \
   >/dev/null 2>&1) || true
cp dirty-lazy-c512.qcow2 dirty-lazy-c512-ops.qcow2
trailer dirty-lazy-c512-ops.qcow2 80 01 "${OPS_MIX[@]}"
create dirty-lazy-c512-rc64.qcow2 1M \
  cluster_size=512,lazy_refcounts=on,refcount_bits=64
(ulimit -c 0; qemu-io -f qcow2 -c "write -P 0x83 0 6k" -c abort \
   dirty-lazy-c512-rc64.qcow2 >/dev/null 2>&1) || true

# Persistent bitmaps (read-write needs bitmaps=in-use).
create bitmaps-c512.qcow2 1M cluster_size=512
qemu-img bitmap --add bitmaps-c512.qcow2 b0
qemu-img bitmap --add --granularity 8k bitmaps-c512.qcow2 b1
io bitmaps-c512.qcow2 "write -P 0x91 0 8k" "write -P 0x92 512k 4k"
cp bitmaps-c512.qcow2 bitmaps-c512-inuse.qcow2
trailer bitmaps-c512-inuse.qcow2 20 02 "${OPS_MIX[@]}"
cp bitmaps-c512.qcow2 bitmaps-c512-ro.qcow2
trailer bitmaps-c512-ro.qcow2 02 00

# Backing files: the target's "file" type never opens, so these exercise
# the error path (and json:/protocol names, a missing format).
qemu-img create -q -f raw base.raw 1M
create backing-raw-c512.qcow2 1M cluster_size=512,backing_file=base.raw,backing_fmt=raw
io backing-raw-c512.qcow2 "write -P 0xa1 4k 4k"
create backing-qcow2-c512.qcow2 1M cluster_size=512,backing_file=v3-c4k-empty.qcow2,backing_fmt=qcow2
create backing-json-c512.qcow2 1M cluster_size=512,backing_file=v3-c4k-empty.qcow2,backing_fmt=qcow2
qemu-img rebase -u -f qcow2 -b 'json:{"file.filename":"base.raw"}' -F raw \
  backing-json-c512.qcow2
create backing-nofmt-c512.qcow2 1M cluster_size=512,backing_file=base.raw,backing_fmt=raw
# Turn the backing format extension into an unknown one (ignored).
python3 - backing-nofmt-c512.qcow2 <<'PY'
import sys
b = bytearray(open(sys.argv[1], 'rb').read())
i = b.index(bytes.fromhex('e2792aca'), 72, 4096)
b[i:i + 4] = bytes.fromhex('0000fe01')
open(sys.argv[1], 'wb').write(b)
PY

# Header states: corrupt bit (read-only only), unknown autoclear bits
# (cleared at a read-write open), an external data file (refused).
setbyte() {  # setbyte NAME OFFSET HEXBYTE
  printf "\\x$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
create corrupt-c512.qcow2 1M cluster_size=512
io corrupt-c512.qcow2 "write -P 0xb1 0 8k"
setbyte corrupt-c512.qcow2 79 02
cp corrupt-c512.qcow2 corrupt-c512-ro.qcow2
trailer corrupt-c512-ro.qcow2 02 01
create autoclear-c512.qcow2 1M cluster_size=512
io autoclear-c512.qcow2 "write -P 0xc1 0 4k"
setbyte autoclear-c512.qcow2 95 f0
create datafile-c512.qcow2 1M cluster_size=512,data_file=data.raw
io datafile-c512.qcow2 "write -P 0xd1 0 8k"

rm -f base.raw data.raw
# Every seed gets a trailer (else its last bytes would choose the mode
# by chance): plain ones are opened read-write, nine 1-byte writes at 0.
for f in *.qcow2; do
  tail -c 8 "$f" | cmp -s - <(printf NBDSFUZZ) || trailer "$f" 00 00
done
for f in *.qcow2; do
  cp "$f" "$out/$f"
done
ls -l "$out" | awk 'NR > 1 { n++; s += $5 } END { printf "%d seeds, %d bytes\n", n, s }'
