#!/bin/bash
# nbdstack against qemu-nbd on the same Ceph RBD image (a one-node
# cluster started here, tests/tools/ceph-one-node.sh, removed at exit):
# fio's nbd engine over a Unix socket, iodepth 32, the servers
# interleaved within each round; the table gives medians and
# nbdstack/qemu-nbd.  Both run with their default cache mode (writeback:
# librbd's client cache on).
#
#   tests/bench/rbd.sh [ROUNDS] [SECONDS]       (defaults: 3 rounds, 5 s)
#
# Environment as for run.sh; BENCH_SIZE defaults to 256M here (the OSD
# keeps the data in RAM: about 1.3 GB for a fully written 256 MiB image).
# Needs ceph-mon, ceph-osd, ceph-common and qemu-block-extra.
set -euo pipefail
cd "$(dirname "$0")/../.."
export BENCH_SIZE=${BENCH_SIZE:-256M}
. tests/bench/lib.sh

rounds=${1:-3}
secs=${2:-5}
ceph_tool=$PWD/tests/tools/ceph-one-node.sh
ceph_dir=$dir/ceph
for tool in ceph-mon ceph-osd rbd; do
  command -v $tool >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done

bench_cleanup_rbd() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  pid=
  [ -f "$ceph_dir/.ceph-one-node" ] && "$ceph_tool" stop "$ceph_dir" >/dev/null 2>&1
  bench_cleanup
}
trap bench_cleanup_rbd EXIT

echo "bench: starting a one-node Ceph cluster in $ceph_dir" >&2
conf=$(CEPH_ONE_NODE_TTL=7200 "$ceph_tool" start "$ceph_dir")
# A $size image of random data (so reads touch real objects).
fio --name=fill --filename="$dir/random" --size="$size" --rw=write --bs=1M \
    --ioengine=psync --refill_buffers --output=/dev/null
rbd -c "$conf" import --no-progress "$dir/random" rbd/bench >/dev/null
rm -f "$dir/random"
img="rbd:rbd/bench:conf=$conf"   # what start_server serves, with -f raw

workloads=(
  "randread-4k randread 4k"
  "randwrite-4k randwrite 4k"
  "seqread-1M read 1M"
  "seqwrite-1M write 1M"
)

for round in $(seq "$rounds"); do
  for w in "${workloads[@]}"; do
    set -- $w
    for server in nbdstack qemu-nbd; do
      start_server $server
      run_fio "$round" "$1" $server "$2" "$3" "$secs"
      stop_server
    done
  done
done
summary nbdstack qemu-nbd
