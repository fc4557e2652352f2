#!/bin/bash
# qcow2 under concurrent load.
# 1. fio's nbd engine, random writes of mixed sizes (bssplit 512..1M) at
#    iodepth 16 with crc32c verify headers, verified in the same run and by
#    a verify-only pass on a new connection, on a fresh 256 MiB image and on
#    an overlay with a raw backing file; then `qemu-img check` must exit 0
#    (not even leaks) and, for the overlay, the unwritten ranges still read
#    the backing data.  Also on a 4k-cluster image through a tiny L2 cache.
# 2. Raw replica: one deterministic sequence (seeded writes of mixed sizes,
#    zero writes with and without NO_HOLE, trims, flushes; up to 16 requests
#    in flight, never two overlapping) goes through the server to a qcow2
#    image and, separately, to a raw file (-f raw); afterwards
#    `qemu-img compare` must find them identical and `qemu-img check` clean.
#    Done for a fresh image, an overlay on a raw backing file (the replica
#    starts as a copy of the backing file), an extended-L2 overlay and a
#    512-byte-cluster image.
. "$(dirname "$0")/lib.sh"
. "$SRCDIR/qcow2-lib.sh"
need_tool fio qemu-img qemu-io
need_server
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio lacks the nbd ioengine"
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd missing"
scratch_init
cd "$SCRATCH" || fail "cd $SCRATCH"     # fio drops *-verify.state files in the cwd

M=$((1024 * 1024))

fio_kb() {
    /usr/bin/python3 -c '
import json, sys
print(json.load(open(sys.argv[1]))["jobs"][0][sys.argv[2]]["io_kbytes"])' "$1" "$2" 2>/dev/null
}

# fio_case WHAT IMAGE [SERVER ARGS...]: fio write+verify, verify-only, check.
fio_case() {
    local what=$1 img=$2
    shift 2
    dut f -t "$@" "$img" || return 1
    local job=(--name=q --ioengine=nbd "--uri=$(uri f)" --rw=randwrite
        --bssplit=512/10:4k/40:16k/15:64k/15:256k/10:1m/10 --iodepth=16
        --size=256M --io_size=96M --verify=crc32c --verify_fatal=1 --randrepeat=1
        --randseed=1234 --output-format=json)
    if with_timeout 200 fio "${job[@]}" --output=fio1.json >fio1.out 2>&1; then
        ok "$what: fio randwrite (mixed sizes, iodepth 16) + crc32c verify"
    else
        sed 's/^/  fio: /' fio1.out >&2
        head -c 3000 fio1.json | sed 's/^/  fio: /' >&2
        check_fail "$what: fio randwrite with verify failed"
    fi
    local w r
    w=$(fio_kb fio1.json write)
    r=$(fio_kb fio1.json read)
    expect_true "$what: fio wrote 96 MiB ($w KiB) and read it back ($r KiB)" \
        [ "${w:-0}" -ge 98304 ] && [ "${r:-0}" -eq "${w:-0}" ]
    if with_timeout 200 fio "${job[@]}" --verify_only=1 --output=fio2.json >fio2.out 2>&1; then
        ok "$what: fio verify-only pass on a new connection"
    else
        sed 's/^/  fio: /' fio2.out >&2
        check_fail "$what: fio verify-only pass failed"
    fi
    stop_server_ok f
    qimg_check "$img" "$what"
}

# --- 1. fio -------------------------------------------------------------------
qemu-img create -q -f qcow2 fresh.qcow2 256M
fio_case "fresh 256M image" fresh.qcow2
rm -f fresh.qcow2 ./*.state

# 4 KiB clusters (128 L2 tables) through a 16 KiB L2 cache: tables are
# evicted dirty and read back (and not vetted again) all the time.
qemu-img create -q -f qcow2 -o cluster_size=4k small.qcow2 256M
fio_case "4k clusters, 16K L2 cache" small.qcow2 --l2-cache-size=16K
rm -f small.qcow2 ./*.state

qemu-img create -q -f raw base.raw 256M
qio_run "make base.raw" raw base.raw "write -P 0x5c 0 256M"
qemu-img create -q -f qcow2 -b "$SCRATCH/base.raw" -F raw ovl.qcow2
fio_case "overlay on a raw backing file" ovl.qcow2
# Where fio did not write, the backing data shows through: find a range
# qemu-img maps to the backing file (depth 1; the overlay is 0) and read it.
unwritten=$(qemu-img map --output=json ovl.qcow2 | /usr/bin/python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["depth"] == 1 and e["data"]:
        print(e["start"], e["length"])
        break')
if [ -n "$unwritten" ]; then
    set -- $unwritten
    n=$(($2 < 4 * M ? $2 : 4 * M))
    QIO_RO=1 qio_run "backing data" qcow2 ovl.qcow2 "read -P 0x5c $1 $n" &&
        ok "overlay: an unwritten range still reads the backing data ([$1,+$n))"
else
    check_fail "overlay: no range left that comes from the backing file (map: $(qemu-img map ovl.qcow2 | head -5 | tr '\n' ';'))"
fi
rm -f ovl.qcow2 ./*.state

# --- 2. raw replica ---------------------------------------------------------------
cat >writer.py <<'EOF'
# writer.py URI SEED SIZE: a deterministic write sequence through libnbd
# with up to 16 non-overlapping requests in flight.
import random, sys
sys.path.insert(0, "/usr/lib/python3/dist-packages")
import nbd

uri, seed, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
h = nbd.NBD()
h.connect_uri(uri)
inflight = {}   # cookie -> (off, end)
K = 1024
sizes = [1, 512, 1000, 4 * K, 4 * K + 7, 16 * K, 64 * K, 65 * K, 200 * K, 1024 * K, 2048 * K]
errors = []

def done(cookie):
    def cb(err):
        if err.value:
            errors.append((inflight.get(cookie), err.value))
        return 1
    return cb

def reap(block_on=None):
    while True:
        for c in list(inflight):
            if h.aio_command_completed(c):
                del inflight[c]
        if block_on is None:
            return
        off, end = block_on
        if not any(o < end and off < e for o, e in inflight.values()) and len(inflight) < 16:
            return
        h.poll(-1)

n_ops = 1500
for i in range(n_ops):
    r = rng.random()
    n = rng.choice(sizes)
    # half of the requests land in the first 8 MiB (rewrites, COW of
    # partly written clusters); the rest anywhere
    span = min(size, 8 << 20) if rng.random() < 0.5 else size
    off = rng.randrange(0, span - n)
    if rng.random() < 0.3:
        off -= off % 512
    reap((off, off + n))
    if r < 0.75:
        buf = rng.randbytes(n) if rng.random() < 0.8 else bytes([rng.randrange(256)]) * n
        flags = nbd.CMD_FLAG_FUA if rng.random() < 0.05 else 0
        c = h.aio_pwrite(buf, off, flags=flags)
    elif r < 0.85:
        flags = 0 if rng.random() < 0.5 else nbd.CMD_FLAG_NO_HOLE
        c = h.aio_zero(n, off, flags=flags)
    elif r < 0.93:
        c = h.aio_trim(n, off)
    else:
        reap((0, size))             # waits until nothing is in flight
        c = h.aio_flush()
    inflight[c] = (off, off + n) if r < 0.93 else (0, size)
while inflight:
    h.poll(-1)
    reap()
h.flush()
h.shutdown()
print("ops=%d" % n_ops)
EOF

# replica_case WHAT IMAGE REPLICA_RAW: the sequence to both; compare.
replica_case() {
    local what=$1 img=$2 replica=$3 size
    size=$(stat -c %s "$replica")
    dut q -t "$img" || return 1
    start_server rr -t "$replica"        # lib.sh: $NBDSTACK -f raw
    if ! with_timeout 200 /usr/bin/python3 writer.py "$(uri q)" 77 "$size" >w1.out 2>&1; then
        sed 's/^/  writer: /' w1.out >&2
        check_fail "$what: writer failed on the qcow2 export"
    fi
    if ! with_timeout 200 /usr/bin/python3 writer.py "$(uri rr)" 77 "$size" >w2.out 2>&1; then
        sed 's/^/  writer: /' w2.out >&2
        check_fail "$what: writer failed on the raw export"
    fi
    stop_server_ok q
    stop_server_ok rr
    qimg_check "$img" "$what"
    qimg_compare "$img" "$replica" "$what: qcow2 vs raw replica" -f qcow2 -F raw
}

qemu-img create -q -f qcow2 r1.qcow2 64M
truncate -s 64M r1.raw
replica_case "fresh image" r1.qcow2 r1.raw

qemu-img create -q -f raw rbase.raw 64M
qio_run "make rbase.raw" raw rbase.raw "write -P 0x3c 0 64M"
qemu-img create -q -f qcow2 -b "$SCRATCH/rbase.raw" -F raw r2.qcow2
cp rbase.raw r2.raw
replica_case "overlay on a raw backing file" r2.qcow2 r2.raw

qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k -b "$SCRATCH/rbase.raw" -F raw r3.qcow2
cp rbase.raw r3.raw
replica_case "extended-L2 overlay" r3.qcow2 r3.raw

qemu-img create -q -f qcow2 -o cluster_size=512 r4.qcow2 64M
truncate -s 64M r4.raw
replica_case "512-byte clusters" r4.qcow2 r4.raw

finish
