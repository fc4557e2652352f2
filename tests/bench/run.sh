#!/bin/bash
# Benchmark nbdstack against qemu-nbd and nbdkit on the same raw image,
# with fio's nbd engine over a Unix socket.  Servers are interleaved within
# each round so drift on the machine hits every server alike; the table
# shows the median of the rounds and the ratios nbdstack/peer.
#
#   tests/bench/run.sh [ROUNDS] [SECONDS]       (defaults: 3 rounds, 5 s)
#
# Environment: NBDSTACK (server binary), BENCH_DIR (where the image goes;
# default /var/tmp), BENCH_SIZE (image size, default 1G).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=/usr/bin:$PATH

rounds=${1:-3}
secs=${2:-5}
nbdstack=${NBDSTACK:-build/server/nbdstack}
size=${BENCH_SIZE:-1G}
dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/nbdstack-bench.XXXXXX")
sock=$dir/sock
results=$dir/results.tsv
pid=

cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT

for tool in fio qemu-nbd nbdkit; do
  command -v $tool >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
[ -x "$nbdstack" ] || { echo "bench: build nbdstack first ($nbdstack)" >&2; exit 1; }

img=$dir/disk.img
echo "bench: writing a $size image of random data in $dir"
fio --name=fill --filename="$img" --size="$size" --rw=write --bs=1M \
    --ioengine=psync --refill_buffers --output=/dev/null

start_server() {
  rm -f "$sock"
  case $1 in
    nbdstack) "$nbdstack" -t -f raw -k "$sock" "$img" & pid=$! ;;
    qemu-nbd) qemu-nbd -t -f raw -k "$sock" "$img" & pid=$! ;;
    nbdkit)   nbdkit -f -U "$sock" file "$img" & pid=$! ;;
  esac
  for _ in $(seq 100); do [ -S "$sock" ] && return; sleep 0.05; done
  echo "bench: $1 did not start" >&2; exit 1
}

stop_server() {
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

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
      out=$(fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
                --rw="$2" --bs="$3" --iodepth=32 --size="$size" \
                --time_based --runtime="$secs" --ramp_time=1 \
                --output-format=json)
      stop_server
      python3 -c '
import json, sys
text = sys.stdin.read()  # the nbd engine prints a line before the JSON
j = json.loads(text[text.index("{"):])["jobs"][0]
side = "read" if j["read"]["io_bytes"] else "write"
print(sys.argv[1], sys.argv[2], sys.argv[3], j[side]["iops"], j[side]["bw"], sep="\t")
' "$round" "$1" "$server" <<<"$out" >>"$results"
      echo "round $round $1 $server done" >&2
    done
  done
done

python3 - "$results" <<'PY'
import statistics, sys
from collections import defaultdict
iops = defaultdict(list)
bw = defaultdict(list)
for line in open(sys.argv[1]):
    r, w, s, i, b = line.split("\t")
    iops[w, s].append(float(i))
    bw[w, s].append(float(b))
workloads = list(dict.fromkeys(w for w, _ in iops))
print()
print(f"{'workload':<14}{'unit':<7}{'nbdstack':>10}{'qemu-nbd':>10}{'nbdkit':>10}"
      f"{'vs qemu-nbd':>13}{'vs nbdkit':>11}")
for w in workloads:
    unit, data = ("MiB/s", bw) if "1M" in w else ("IOPS", iops)
    med = {s: statistics.median(data[w, s]) for s in ("nbdstack", "qemu-nbd", "nbdkit")}
    scale = 1024 if unit == "MiB/s" else 1
    cells = "".join(f"{med[s] / scale:>10.0f}" for s in med)
    print(f"{w:<14}{unit:<7}{cells}{med['nbdstack'] / med['qemu-nbd']:>12.2f}x"
          f"{med['nbdstack'] / med['nbdkit']:>10.2f}x")
PY
