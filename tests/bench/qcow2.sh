#!/bin/bash
# qcow2: nbdstack -f qcow2 against qemu-nbd -f qcow2 on the same images,
# fio's nbd engine, iodepth 32, interleaved per round.  Reads run on a
# fully allocated image (a qemu-img convert of random data); writes on a
# fresh empty image each run, so they measure allocation.  The l2-64K
# reads use a copy with 4 KiB clusters (512 L2 tables) through a 64 KiB
# L2 cache on both servers (qemu-nbd: --image-opts l2-cache-size), so
# nearly every read misses the cache.
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
full4k=$dir/full4k.qcow2
qemu-img convert -f raw -O qcow2 -o cluster_size=4k "$img" "$full4k"

# workload name, image (full|empty), fio rw, block size
workloads=(
  "qcow2-randread-4k full randread 4k"
  "qcow2-randwrite-4k empty randwrite 4k"
  "qcow2-seqread-1M full read 1M"
  "qcow2-seqwrite-1M empty write 1M"
  "qcow2-l2-64K-randread-4k full4k randread 4k"
)

for round in $(seq "$rounds"); do
  for w in "${workloads[@]}"; do
    set -- $w
    for server in nbdstack qemu-nbd; do
      fmt=qcow2 args=()
      case $2 in
        empty)
          rm -f "$empty"
          qemu-img create -q -f qcow2 "$empty" "$size"
          img=$empty ;;
        full) img=$full ;;
        full4k)
          img=$full4k args=(--l2-cache-size=64K)
          if [ $server = qemu-nbd ]; then
            fmt= args=(--image-opts)
            img=driver=qcow2,file.filename=$full4k,l2-cache-size=65536
          fi ;;
      esac
      start_server $server "${args[@]}"
      run_fio "$round" "$1" $server "$3" "$4" "$secs"
      stop_server
    done
  done
done
summary nbdstack qemu-nbd
