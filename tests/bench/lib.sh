# Shared by the benchmarks: a scratch image, servers on a Unix socket, one
# fio run (against a server, or straight on the image file), and the
# report.  Source it; set qd and jobs before run_fio to change the queue
# depth and the number of connections.
export PATH=/usr/bin:$PATH

nbdstack=${NBDSTACK:-build/server/nbdstack}
size=${BENCH_SIZE:-1G}
dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/nbdstack-bench.XXXXXX")
sock=$dir/sock
img=$dir/disk.img
fmt=raw    # the format start_server passes with -f, for $img (empty: no -f)
results=$dir/results.tsv
bench=$(dirname "${BASH_SOURCE[0]}")
pid=
qd=32      # fio iodepth, per connection
jobs=1     # fio numjobs: the nbd engine opens one connection per job

bench_cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$dir"
}
trap bench_cleanup EXIT

for tool in fio qemu-nbd nbdkit; do
  command -v $tool >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
[ -x "$nbdstack" ] || { echo "bench: build nbdstack first ($nbdstack)" >&2; exit 1; }
# Servers inherit this: the idle-connections measure opens 1000 sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# make_image: a $size image of random data (so reads touch real data).
make_image() {
  echo "bench: writing a $size image of random data in $dir" >&2
  fio --name=fill --filename="$img" --size="$size" --rw=write --bs=1M \
      --ioengine=psync --refill_buffers --output=/dev/null
}

# start_server nbdstack|qemu-nbd|nbdkit [EXTRA ARGS...]
# -e 0: any number of clients, which makes both nbdstack and qemu-nbd
# advertise multi-conn (nbdkit's file plugin always does).
start_server() {
  local server=$1; shift
  rm -f "$sock"
  case $server in
    nbdstack) "$nbdstack" -t -e 0 ${fmt:+-f "$fmt"} -k "$sock" "$@" "$img" 2>/dev/null &
              pid=$! ;;
    qemu-nbd) qemu-nbd -t -e 0 ${fmt:+-f "$fmt"} -k "$sock" "$@" "$img" & pid=$! ;;
    nbdkit)   nbdkit -f -U "$sock" "$@" file "$img" & pid=$! ;;
  esac
  for _ in $(seq 100); do [ -S "$sock" ] && return; sleep 0.05; done
  echo "bench: $server did not start" >&2; exit 1
}

stop_server() {
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

# cpu_ticks: user + system time of the server so far, all its threads
# ("-" when the benchmark did not start the server).
cpu_ticks() {
  local stat
  [ -n "$pid" ] || { echo -; return; }
  stat=$(<"/proc/$pid/stat")
  set -- ${stat##*) }   # fields from the third on: utime is the 14th
  echo $(( ${12} + ${13} ))
}

# record ROUND WORKLOAD SERVER CPU_TICKS < fio's JSON: one line of
# $results (see fio-result.py).
record() {
  /usr/bin/python3 "$bench/fio-result.py" "$@" "$(getconf CLK_TCK)" >>"$results"
  echo "round $1 $2 $3 done" >&2
}

# run_fio ROUND WORKLOAD SERVER RW BS SECONDS: one fio run against the
# server on $sock, with the server's CPU time over the run (no ramp time:
# fio then counts the requests of the whole span the CPU time covers).
run_fio() {
  local out before ticks=-
  before=$(cpu_ticks)
  out=$(fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$sock" \
            --rw="$4" --bs="$5" --iodepth="$qd" --numjobs="$jobs" \
            --group_reporting --lat_percentiles=1 --size="$size" --time_based --runtime="$6" \
            --output-format=json)
  [ "$before" = - ] || ticks=$(( $(cpu_ticks) - before ))
  record "$1" "$2" "$3" "$ticks" <<<"$out"
}

# run_direct ROUND WORKLOAD RW BS SECONDS: the same job straight on the
# image file through io_uring, page cache and all, as the servers use it:
# the speed no NBD server can pass.  --invalidate=0: fio would otherwise
# drop the file's pages from the cache first, making this run and the
# server run after it read from the disk.
run_direct() {
  local out
  out=$(fio --name=b --ioengine=io_uring --filename="$img" --invalidate=0 \
            --rw="$3" --bs="$4" --iodepth="$qd" --numjobs="$jobs" \
            --group_reporting --lat_percentiles=1 --size="$size" --time_based --runtime="$5" \
            --output-format=json)
  record "$1" "$2" direct - <<<"$out"
}

# summary SERVER...: medians per workload and server, each server's ratio
# to the first one named; with BENCH_CHART=FILE.png, also the chart.
summary() {
  /usr/bin/python3 "$bench/report.py" "$results" ${BENCH_CHART:+--chart="$BENCH_CHART"} "$@"
}
