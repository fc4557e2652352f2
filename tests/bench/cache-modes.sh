#!/bin/bash
# What each cache mode costs: 4k random writes and reads, iodepth 32, on
# nbdstack and on qemu-nbd with the same --cache, interleaved per round.
# The table gives medians and nbdstack/qemu-nbd for each mode.
#
#   tests/bench/cache-modes.sh [ROUNDS] [SECONDS]   (defaults: 3 rounds, 5 s)
#
# Environment as for run.sh.  The image must be on a filesystem with
# O_DIRECT for none and directsync (/var/tmp is, on ext4 and xfs).
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/lib.sh

rounds=${1:-3}
secs=${2:-5}
make_image

for round in $(seq "$rounds"); do
  for mode in writeback writethrough none directsync unsafe; do
    for rw in randwrite randread; do
      for server in nbdstack qemu-nbd; do
        start_server $server --cache=$mode
        run_fio "$round" "$mode-$rw-4k" $server $rw 4k "$secs"
        stop_server
      done
    done
  done
done
summary nbdstack qemu-nbd
