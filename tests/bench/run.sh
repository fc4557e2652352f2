#!/bin/bash
# Benchmark nbdstack against qemu-nbd and nbdkit on the same raw image,
# with fio's nbd engine over a Unix socket, iodepth 32.  Servers are
# interleaved within each round so drift on the machine hits every server
# alike; the table shows the median of the rounds and nbdstack/peer.
#
#   tests/bench/run.sh [ROUNDS] [SECONDS]       (defaults: 3 rounds, 5 s)
#
# Environment: NBDSTACK (server binary), BENCH_DIR (where the image goes;
# default /var/tmp), BENCH_SIZE (image size, default 1G).
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/lib.sh

rounds=${1:-3}
secs=${2:-5}
make_image

# workload name, fio rw, block size
workloads=(
  "randread-4k randread 4k"
  "randwrite-4k randwrite 4k"
  "seqread-1M read 1M"
  "seqwrite-1M write 1M"
)

for round in $(seq "$rounds"); do
  for w in "${workloads[@]}"; do
    set -- $w
    for server in nbdstack qemu-nbd nbdkit; do
      start_server $server
      run_fio "$round" "$1" $server "$2" "$3" "$secs"
      stop_server
    done
  done
done
summary nbdstack qemu-nbd nbdkit
