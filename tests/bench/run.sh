#!/bin/bash
# The benchmark: nbdstack against qemu-nbd and nbdkit (file plugin) on the
# same images, with fio's nbd engine over a Unix socket, plus fio straight
# on the raw image through io_uring (no NBD: the speed no server can pass).
# Workloads: raw 4k random read and write and 1M sequential read and write
# at iodepth 32; the 4k random ones again at iodepth 1 for latency; qcow2
# 4k random read on a full image and random write on an empty one (nbdkit
# has no qcow2 here); 4k random read and write over 2 and 4 connections
# (multi-conn: fio's nbd engine opens one per job).  Each run also takes
# the server's CPU time per request from its own rusage, and each round
# measures every server's memory per idle connection (1000 connections).
#
# Servers and workloads are interleaved within each round, the servers'
# order turning from round to round, so drift on the machine hits every
# server alike; the report gives the medians of the rounds and
# nbdstack/peer, and the chart docs/performance.png.
#
#   tests/bench/run.sh [ROUNDS] [SECONDS]   (defaults: 3 rounds, 5 s)
#   tests/bench/run.sh --quick              (1 round, 2 s, 100 idle
#                                            connections, no chart kept:
#                                            checks the script itself)
#
# Environment: NBDSTACK (server binary), BENCH_DIR (where the images go;
# default /var/tmp), BENCH_SIZE (image size, default 1G), BENCH_CHART (the
# PNG to write; default docs/performance.png, none with --quick).
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/lib.sh

idle=1000
if [ "${1:-}" = --quick ]; then
  rounds=1 secs=2 idle=100
  export BENCH_CHART=${BENCH_CHART:-$dir/performance.png}
else
  rounds=${1:-3} secs=${2:-5}
  export BENCH_CHART=${BENCH_CHART:-docs/performance.png}
fi
all="nbdstack qemu-nbd nbdkit"
make_image
raw=$img
full=$dir/full.qcow2
empty=$dir/empty.qcow2
qemu-img convert -f raw -O qcow2 "$raw" "$full"

# name, image (raw | full or empty qcow2), fio rw, block size, iodepth,
# connections, the direct run too (yes|no), servers
workloads=(
  "randread-4k       raw   randread  4k 32 1 yes $all"
  "randwrite-4k      raw   randwrite 4k 32 1 yes $all"
  "seqread-1M        raw   read      1M 32 1 yes $all"
  "seqwrite-1M       raw   write     1M 32 1 yes $all"
  "qd1-randread-4k   raw   randread  4k  1 1 yes $all"
  "qd1-randwrite-4k  raw   randwrite 4k  1 1 yes $all"
  "qcow2-randread-4k full  randread  4k 32 1 no  nbdstack qemu-nbd"
  "qcow2-randwrite-4k empty randwrite 4k 32 1 no nbdstack qemu-nbd"
  "mc2-randread-4k   raw   randread  4k 32 2 yes $all"
  "mc4-randread-4k   raw   randread  4k 32 4 yes $all"
  "mc2-randwrite-4k  raw   randwrite 4k 32 2 yes $all"
  "mc4-randwrite-4k  raw   randwrite 4k 32 4 yes $all"
)

# turn ROUND WORD...: the words rotated left by ROUND - 1.
turn() {
  local n=$(( ($1 - 1) % ($# - 1) )); shift
  echo "${@:n+1}" "${@:1:n}"
}

for round in $(seq "$rounds"); do
  for w in "${workloads[@]}"; do
    set -- $w
    name=$1 image=$2 rw=$3 bs=$4 qd=$5 jobs=$6 direct=$7
    shift 7
    case $image in
      raw)   fmt=raw img=$raw ;;
      full)  fmt=qcow2 img=$full ;;
      empty) fmt=qcow2 img=$empty ;;
    esac
    for server in $(turn "$round" "$@"); do
      if [ "$image" = empty ]; then
        rm -f "$empty"
        qemu-img create -q -f qcow2 "$empty" "$size"
      fi
      start_server "$server"
      run_fio "$round" "$name" "$server" "$rw" "$bs" "$secs"
      stop_server
    done
    if [ "$direct" = yes ]; then
      run_direct "$round" "$name" "$rw" "$bs" "$secs"
    fi
  done

  fmt=raw img=$raw
  for server in $(turn "$round" $all); do
    start_server "$server"
    echo "$server $(/usr/bin/python3 "$bench/idle-conns.py" "$sock" "$pid" "$idle")" \
      >>"$dir/memory.tsv"
    stop_server
  done
done
summary --memory="$dir/memory.tsv" nbdstack qemu-nbd nbdkit direct
