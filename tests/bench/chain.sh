#!/bin/bash
# The cost of the extra hop: fio (nbd engine, iodepth 32) against
# `nbdkit memory` directly, and through nbdstack chained in front of it
# (nbdstack nbd+unix://...), interleaved per round; medians and the ratio
# chain/direct.
#
#   tests/bench/chain.sh [ROUNDS] [SECONDS]     (defaults: 3 rounds, 5 s)
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/lib.sh

rounds=${1:-3}
secs=${2:-5}
upstream=$dir/upstream.sock

nbdkit -f -U "$upstream" memory "$size" & kit=$!
trap 'kill $kit 2>/dev/null; wait $kit 2>/dev/null; bench_cleanup' EXIT
for _ in $(seq 100); do [ -S "$upstream" ] && break; sleep 0.05; done

for round in $(seq "$rounds"); do
  for w in "randread 4k" "randwrite 4k" "read 1M" "write 1M"; do
    set -- $w
    name=$1-$2
    # Directly: point fio at the upstream's socket.
    sock_saved=$sock; sock=$upstream
    run_fio "$round" "$name" nbdkit "$1" "$2" "$secs"
    sock=$sock_saved
    rm -f "$sock"
    "$nbdstack" -t -e 0 -k "$sock" "nbd+unix:///?socket=$upstream" & pid=$!
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
    run_fio "$round" "$name" nbdstack-chain "$1" "$2" "$secs"
    stop_server
  done
done
summary nbdstack-chain nbdkit
