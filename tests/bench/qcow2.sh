#!/bin/bash
# qcow2: nbdstack -f qcow2 against qemu-nbd -f qcow2 on the same images,
# fio's nbd engine, iodepth 32, interleaved per round.  Reads run on a
# fully allocated image (a qemu-img convert of random data); writes on a
# fresh empty image each run, so they measure allocation.
#
#   tests/bench/qcow2.sh [ROUNDS] [SECONDS]   (defaults: 3 rounds, 5 s)
#
# Environment as for run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/lib.sh

rounds=${1:-3}
secs=${2:-5}
make_image
full=$dir/full.qcow2
empty=$dir/empty.qcow2
qemu-img convert -f raw -O qcow2 "$img" "$full"
fmt=qcow2

# workload name, image (full|empty), fio rw, block size
workloads=(
  "qcow2-randread-4k full randread 4k"
  "qcow2-randwrite-4k empty randwrite 4k"
  "qcow2-seqread-1M full read 1M"
  "qcow2-seqwrite-1M empty write 1M"
)

for round in $(seq "$rounds"); do
  for w in "${workloads[@]}"; do
    set -- $w
    for server in nbdstack qemu-nbd; do
      if [ "$2" = empty ]; then
        rm -f "$empty"
        qemu-img create -q -f qcow2 "$empty" "$size"
        img=$empty
      else
        img=$full
      fi
      start_server $server
      run_fio "$round" "$1" $server "$3" "$4" "$secs"
      stop_server
    done
  done
done
summary nbdstack qemu-nbd
