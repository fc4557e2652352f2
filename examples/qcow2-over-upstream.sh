#!/bin/bash
# Serve a qcow2 image that lives on an upstream NBD server, with a block
# cache in nbdstack's memory in front of the upstream:
#
#   client (qemu-io, nbdinfo)
#     -> nbdstack: qcow2 -> block cache (16M) -> cache mode -> nbd layer
#     -> upstream: qemu-nbd -f raw, serving the file that holds the qcow2
#
# The upstream exports raw bytes; nbdstack interprets them as qcow2 (-f
# qcow2: it never guesses).  An NBD export cannot grow, so the file holds
# the qcow2 image followed by free space where new clusters go.
#
# Run from anywhere; it uses build/server/nbdstack (or $NBDSTACK), needs
# qemu-img, qemu-nbd, qemu-io and nbdinfo, and cleans up after itself.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
NBDSTACK=${NBDSTACK:-$top/build/server/nbdstack}
for t in qemu-img qemu-nbd qemu-io nbdinfo; do
  command -v "$t" >/dev/null || { echo "$0: $t is needed" >&2; exit 1; }
done
[ -x "$NBDSTACK" ] || { echo "$0: build nbdstack first ($NBDSTACK)" >&2; exit 1; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/qcow2-over-upstream.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# wait_for URI: until an NBD server answers at URI.
wait_for() {
  for _ in $(seq 100); do
    nbdinfo --size "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$0: no NBD server at $1" >&2
  exit 1
}

# 1. A 64 MiB qcow2 image at the start of a 96 MiB file: the last 32 MiB
#    (and the unallocated clusters) are room for the data written below.
qemu-img create -q -f qcow2 "$dir/host.img" 64M
truncate -s 96M "$dir/host.img"

# 2. The upstream: the file served as raw bytes on a Unix socket.
qemu-nbd -f raw -t -k "$dir/upstream.sock" "$dir/host.img" &
pids+=($!)
upstream="nbd+unix:///?socket=$dir/upstream.sock"
wait_for "$upstream"

# 3. nbdstack serves the guest disk: qcow2 over the upstream, with a 16 MiB
#    block cache of 64 KiB blocks (write-back: writes are absorbed until a
#    FLUSH or an eviction; FLUSH writes every dirty block back upstream).
#    -t keeps it running between clients.
"$NBDSTACK" -f qcow2 -t -k "$dir/nbdstack.sock" \
  --block-cache=16M --block-cache-block=64K "$upstream" &
nbdstack_pid=$!
pids+=($nbdstack_pid)
served="nbd+unix:///?socket=$dir/nbdstack.sock"
wait_for "$served"
echo "== the guest disk, as clients see it:"
nbdinfo "$served" | grep -E 'export-size|is_read_only|can_flush'

# 4. A client writes patterns, flushes, and reads them back through the
#    cache; the second read of the same range is served from memory.
echo "== qemu-io writes and reads through nbdstack:"
qemu-io -f raw "$served" \
  -c 'write -P 0xab 0 4M' -c 'write -P 0xcd 32M 1M' -c flush \
  -c 'read -P 0xab 0 4M' -c 'read -P 0xcd 32M 1M' -c 'read -P 0xab 0 4M' \
  -c 'read -P 0 8M 1M'

# 5. SIGUSR1: nbdstack logs the block cache counters (hits, misses, ...).
kill -USR1 "$nbdstack_pid"
sleep 0.5

# 6. SIGTERM: nbdstack finishes, flushes the cache upstream and exits 0.
kill -TERM "$nbdstack_pid"
wait "$nbdstack_pid"
echo "== nbdstack exited cleanly"

# 7. The data is in the qcow2 image on the upstream: check it with
#    qemu-img directly on the file and read it back without nbdstack.
kill "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true
pids=()
qemu-img check -q -f qcow2 "$dir/host.img"
qemu-io -f qcow2 -r "$dir/host.img" \
  -c 'read -P 0xab 0 4M' -c 'read -P 0xcd 32M 1M' >/dev/null
echo "== qemu-img check: clean; the patterns are in the image"
