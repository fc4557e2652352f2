# Shared by the benchmarks: a scratch image, servers on a Unix socket, one
# fio run, and a table of medians.  Source it after setting nothing.
export PATH=/usr/bin:$PATH

nbdstack=${NBDSTACK:-build/server/nbdstack}
size=${BENCH_SIZE:-1G}
dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/nbdstack-bench.XXXXXX")
sock=$dir/sock
img=$dir/disk.img
fmt=raw    # the format start_server passes with -f, for $img
results=$dir/results.tsv
pid=

bench_cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$dir"
}
trap bench_cleanup EXIT

for tool in fio qemu-nbd nbdkit; do
  command -v $tool >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
[ -x "$nbdstack" ] || { echo "bench: build nbdstack first ($nbdstack)" >&2; exit 1; }

# make_image: a $size image of random data (so reads touch real data).
make_image() {
  echo "bench: writing a $size image of random data in $dir" >&2
  fio --name=fill --filename="$img" --size="$size" --rw=write --bs=1M \
      --ioengine=psync --refill_buffers --output=/dev/null
}

# start_server nbdstack|qemu-nbd|nbdkit [EXTRA ARGS...]
start_server() {
  local server=$1; shift
  rm -f "$sock"
  case $server in
    nbdstack) "$nbdstack" -t -f "$fmt" -k "$sock" "$@" "$img" & pid=$! ;;
    qemu-nbd) qemu-nbd -t -f "$fmt" -k "$sock" "$@" "$img" & pid=$! ;;
    nbdkit)   nbdkit -f -U "$sock" "$@" file "$img" & pid=$! ;;
  esac
  for _ in $(seq 100); do [ -S "$sock" ] && return; sleep 0.05; done
  echo "bench: $server did not start" >&2; exit 1
}

stop_server() {
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

# run_fio ROUND WORKLOAD SERVER RW BS SECONDS: one fio run against the
# server on $sock, appended to $results as ROUND WORKLOAD SERVER IOPS KiB/s.
run_fio() {
  local out
  out=$(fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
            --rw="$4" --bs="$5" --iodepth=32 --size="$size" \
            --time_based --runtime="$6" --ramp_time=1 --output-format=json)
  python3 -c '
import json, sys
text = sys.stdin.read()  # the nbd engine prints a line before the JSON
j = json.loads(text[text.index("{"):])["jobs"][0]
side = "read" if j["read"]["io_bytes"] else "write"
print(*sys.argv[1:4], j[side]["iops"], j[side]["bw"], sep="\t")
' "$1" "$2" "$3" <<<"$out" >>"$results"
  echo "round $1 $2 $3 done" >&2
}

# summary SERVER...: medians per workload and server, and each server's
# ratio to the first one named.
summary() {
  python3 - "$results" "$@" <<'PY'
import statistics, sys
from collections import defaultdict
path, servers = sys.argv[1], sys.argv[2:]
iops, bw = defaultdict(list), defaultdict(list)
for line in open(path):
    r, w, s, i, b = line.rstrip("\n").split("\t")
    iops[w, s].append(float(i))
    bw[w, s].append(float(b))
workloads = list(dict.fromkeys(w for w, _ in iops))
first = servers[0]
head = f"{'workload':<28}{'unit':<7}" + "".join(f"{s:>14}" for s in servers)
head += "".join(f"{first + '/' + s:>22}" for s in servers[1:])
print()
print(head)
for w in workloads:
    big = w.endswith("1M")
    unit, data, scale = ("MiB/s", bw, 1024) if big else ("IOPS", iops, 1)
    med = {s: statistics.median(data[w, s]) for s in servers if (w, s) in data}
    line = f"{w:<28}{unit:<7}" + "".join(
        f"{med[s] / scale:>14.0f}" if s in med else f"{'-':>14}" for s in servers)
    line += "".join(f"{med[first] / med[s]:>21.2f}x" if s in med else f"{'-':>22}"
                    for s in servers[1:])
    print(line)
PY
}
