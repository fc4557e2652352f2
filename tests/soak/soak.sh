#!/bin/bash
# Soak: many connections of mixed fio verify workloads against one nbdstack
# export for a chosen time, sampling the server's RSS.  Not a CI test (it
# runs for minutes); docs/reliability.md has the figures of a 10-minute run.
#
#   tests/soak/soak.sh [-c CONNS] [-t SECONDS] [-g RSS_GROWTH_MIB] [-- SERVER ARGS]
#
# CONNS fio jobs (default 64), each on a connection of its own and a region
# of its own (so every job can verify what it wrote), cycle through four
# workloads: 4K random writes at queue depth 8; sequential 64K writes with a
# FLUSH every 16; random writes of 512 B..128 KiB; 1 MiB sequential writes
# with a FLUSH every 4.  Every job verifies with crc32c as it goes
# (verify_backlog) and again at the end.  The server's RSS is sampled every
# 5 s.  Exit status: 0 when fio reports no error and the RSS at the end is
# within RSS_GROWTH_MIB (default 64) of the RSS once every job had started.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PATH=/usr/bin:$PATH

conns=64 secs=600 growth_mib=64
while getopts "c:t:g:" o; do
  case $o in
    c) conns=$OPTARG ;;
    t) secs=$OPTARG ;;
    g) growth_mib=$OPTARG ;;
    *) sed -n '2,16s/^# \{0,1\}//p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))

nbdstack=${NBDSTACK:-build/server/nbdstack}
[ -x "$nbdstack" ] || { echo "soak: build nbdstack first ($nbdstack)" >&2; exit 2; }
command -v fio >/dev/null || { echo "soak: fio is missing" >&2; exit 2; }
fio --enghelp=nbd >/dev/null 2>&1 || { echo "soak: fio lacks the nbd engine" >&2; exit 2; }

region=$((16 << 20))                  # bytes per job
dir=$(mktemp -d "${SOAK_DIR:-/var/tmp}/nbdstack-soak.XXXXXX")
sock=$dir/sock pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
truncate -s $((conns * region)) "$dir/disk.img"

# -e CONNS+1: every job plus nothing else; "$@" adds server options
# (--cache=..., --threads=...).
"$nbdstack" -f raw -t -e $((conns + 1)) -k "$sock" "$@" "$dir/disk.img" \
  2>"$dir/server.log" &
pid=$!
for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { echo "soak: the server did not start" >&2; cat "$dir/server.log"; exit 2; }

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null; }

# The job file: one section per connection.
{
  printf '[global]\nioengine=nbd\nuri=nbd+unix:///?socket=%s\n' "$sock"
  printf 'size=%d\ntime_based=1\nruntime=%d\n' "$region" "$secs"
  printf 'verify=crc32c\nverify_fatal=1\nverify_backlog=256\ndo_verify=1\n'
  printf 'randrepeat=0\nrefill_buffers=1\n'
  for ((j = 0; j < conns; j++)); do
    printf '\n[j%d]\noffset=%d\n' "$j" $((j * region))
    case $((j % 4)) in
      0) printf 'rw=randwrite\nbs=4k\niodepth=8\n' ;;
      1) printf 'rw=write\nbs=64k\niodepth=4\nfsync=16\n' ;;
      2) printf 'rw=randwrite\nbsrange=512-128k\nbs_unaligned=0\niodepth=4\n' ;;
      3) printf 'rw=write\nbs=1m\niodepth=2\nfsync=4\n' ;;
    esac
  done
} >"$dir/soak.fio"

echo "soak: $conns connections, ${secs}s, image $((conns * region >> 20)) MiB in $dir"
start=$(date +%s)
# (in $dir: fio leaves its *-verify.state files in the current directory)
(cd "$dir" && exec fio --output-format=json --output=fio.json soak.fio \
   >fio.out 2>&1) &
fio_pid=$!

# RSS every 5 s; the baseline is the first sample once every job's
# connection is open (the pool and the caches have warmed up by then).
samples=() base=
while kill -0 "$fio_pid" 2>/dev/null; do
  sleep 5
  r=$(rss_kib) || break
  [ -n "$r" ] || break
  samples+=("$r")
  if [ -z "$base" ]; then
    held=$(find "/proc/$pid/fd" -lname 'socket:*' 2>/dev/null | wc -l)
    [ "$held" -gt "$conns" ] && base=$r base_at=$(($(date +%s) - start))
  fi
  printf 'soak: %4ds rss %6d KiB\n' $(($(date +%s) - start)) "$r"
done
wait "$fio_pid"
fio_rc=$?
end_rss=$(rss_kib)

read -r errors written verified < <(/usr/bin/python3 - "$dir/fio.json" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
jobs = json.loads(text[text.index("{"):])["jobs"]
print(sum(j["error"] for j in jobs),
      sum(j["write"]["io_bytes"] for j in jobs),
      sum(j["read"]["io_bytes"] for j in jobs))
PY
) || { errors=unknown written=0 verified=0; }

peak=0
for r in "${samples[@]}"; do [ "$r" -gt "$peak" ] && peak=$r; done
status=0
echo "soak: fio exit $fio_rc, job errors $errors"
echo "soak: written $((written >> 20)) MiB, read back and verified $((verified >> 20)) MiB"
echo "soak: rss KiB: first ${samples[0]:-?}, baseline ${base:-?} (at ${base_at:-?}s), peak $peak, end ${end_rss:-?}"
if [ "$fio_rc" != 0 ] || [ "$errors" != 0 ]; then
  echo "soak: FAIL: fio reported errors"; sed 's/^/  fio: /' "$dir/fio.out" | tail -30
  status=1
fi
if [ -z "$base" ] || [ -z "$end_rss" ] || [ $((end_rss - base)) -gt $((growth_mib * 1024)) ]; then
  echo "soak: FAIL: RSS grew by more than $growth_mib MiB (or was not measured)"
  status=1
fi
kill "$pid"; wait "$pid"; srv_rc=$?; pid=
[ "$srv_rc" = 0 ] || { echo "soak: FAIL: server exit status $srv_rc"; tail "$dir/server.log"; status=1; }
[ $status = 0 ] && echo "soak: PASS"
exit $status
