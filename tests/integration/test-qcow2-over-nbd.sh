#!/bin/bash
# qcow2 over an upstream raw NBD export: nbdstack -f qcow2 nbd+unix://...
#
# The qcow2 image sits at the start of a file with free space after it (an
# NBD export has a fixed size, so the qcow2 layer must place new clusters
# in the space whose refcount is 0 rather than grow the file).  The file is
# served raw by a real upstream: qemu-nbd -f raw, nbdkit file, and nbdkit
# file behind the blocksize-policy filter (minimum 4K, maximum 64K, errors
# on anything else: qcow2's small metadata writes go through the nbd
# layer's read-modify-write).  Through the chain: fio --verify=crc32c with
# mixed block sizes; then the chain's contents are copied to a raw replica
# and the same qemu-io commands (write, write -z, discard, flush) and the
# same seeded libnbd writer (unaligned writes, zeroes, trims, FUA) go to
# both.  The chain is stopped (SIGTERM, exit 0), the image is copied out of
# the upstream with nbdcopy, and `qemu-img check` must exit 0 and `qemu-img
# compare` must find its guest contents equal to the replica and to what
# the chain served.  Last, an export too small for what is written: the
# write that does not fit fails with ENOSPC, the rest stays readable, and
# the image still checks clean.
. "$(dirname "$0")/lib.sh"
. "$SRCDIR/qcow2-lib.sh"
need_tool fio qemu-img qemu-io qemu-nbd nbdkit nbdcopy
need_server
[ "$SERVER_KIND" = nbdstack ] || skip "the nbd layer is an nbdstack feature"
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio lacks the nbd ioengine"
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd missing"
nbdkit --filter=blocksize-policy null >/dev/null 2>&1 </dev/null --dump-plugin ||
    skip "nbdkit lacks the blocksize-policy filter"
scratch_init
cd "$SCRATCH" || fail "cd $SCRATCH"

M=$((1024 * 1024))
VSIZE=$((64 * M))      # the guest disk
HOST=$((96 * M))       # the upstream export: image + room to allocate

cat >writer.py <<'EOF'
# writer.py URI SEED: a seeded sequence of unaligned writes, zeroes (with
# and without NO_HOLE), trims, FUA writes and flushes, one at a time.
import random, sys
sys.path.insert(0, "/usr/lib/python3/dist-packages")
import nbd
uri, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
sizes = [1, 511, 512, 4096, 4099, 65536 + 17, 300000, 1 << 20]
for i in range(400):
    r, n = rng.random(), rng.choice(sizes)
    off = rng.randrange(0, size - n)
    if r < 0.6:
        h.pwrite(rng.randbytes(n), off, nbd.CMD_FLAG_FUA if rng.random() < 0.1 else 0)
    elif r < 0.75:
        h.zero(n, off, nbd.CMD_FLAG_NO_HOLE if rng.random() < 0.5 else 0)
    elif r < 0.9:
        h.trim(n, off)
    else:
        h.flush()
h.flush()
h.shutdown()
EOF

QIO_CMDS=("write -P 0x61 0 1M" "write -P 0x62 3M 12345" "write -P 0x63 $((40 * M + 7)) 100000"
    "write -z 5M 2M" "write -z 1000 4096" "discard 8M 4M" "discard 3M 4096" "flush"
    "write -P 0x64 $((VSIZE - 65536)) 65536" "write -z -u 20M 1M" "flush")

# over_case WHAT UPSTREAM_CMD...: the whole sequence over one upstream.
over_case() {
    local what=$1
    shift
    rm -f host.img replica.raw served.raw out.qcow2 ./*.state
    qemu-img create -q -f qcow2 host.img "$VSIZE"
    truncate -s "$HOST" host.img
    local up=$SCRATCH/up.sock
    rm -f "$up"
    "$@" </dev/null >up.log 2>&1 &
    local up_pid=$! i
    for ((i = 0; i < 300; i++)); do
        [ -S "$up" ] && socket_connectable "$up" && break
        sleep 0.05
    done
    if ! socket_connectable "$up"; then
        sed 's/^/  upstream: /' up.log >&2
        kill "$up_pid" 2>/dev/null
        wait "$up_pid" 2>/dev/null
        check_fail "$what: the upstream did not start: $*"
        return 1
    fi
    local up_uri="nbd+unix:///?socket=$up"
    if ! dut q -t -e 4 "$up_uri"; then
        kill "$up_pid"
        wait "$up_pid" 2>/dev/null
        return 1
    fi

    if with_timeout 300 fio --name=q --ioengine=nbd "--uri=$(uri q)" --rw=randwrite \
        --bssplit=512/10:4k/40:16k/15:64k/15:256k/10:1m/10 --iodepth=16 --size=48M \
        --io_size=32M --verify=crc32c --verify_fatal=1 --randrepeat=1 --randseed=99 \
        >fio.out 2>&1; then
        ok "$what: fio randwrite (mixed sizes, iodepth 16) + crc32c verify through the chain"
    else
        sed 's/^/  fio: /' fio.out | tail -30 >&2
        check_fail "$what: fio through the chain failed"
    fi

    # The replica starts as what the chain serves now.
    with_timeout 120 nbdcopy "$(uri q)" replica.raw || check_fail "$what: nbdcopy chain -> replica"
    start_server rr -t replica.raw
    qio_run "$what: chain" raw "$(uri q)" "${QIO_CMDS[@]}" && ok "$what: qemu-io write/write -z/discard/flush through the chain"
    qio_run "$what: replica" raw "$(uri rr)" "${QIO_CMDS[@]}"
    with_timeout 200 /usr/bin/python3 writer.py "$(uri q)" 5 >w1.out 2>&1 ||
        { sed 's/^/  writer: /' w1.out >&2; check_fail "$what: writer through the chain failed"; }
    with_timeout 200 /usr/bin/python3 writer.py "$(uri rr)" 5 >w2.out 2>&1 ||
        { sed 's/^/  writer: /' w2.out >&2; check_fail "$what: writer on the replica failed"; }
    with_timeout 120 nbdcopy "$(uri q)" served.raw || check_fail "$what: nbdcopy chain -> served.raw"
    stop_server_ok q
    stop_server_ok rr
    if grep -qiE "error|failed" "$SCRATCH/q.log"; then
        sed 's/^/  chain: /' "$SCRATCH/q.log" >&2
        check_fail "$what: the chain logged errors"
    fi

    # (--request-size: nbdcopy 1.14 ignores an upstream's maximum block size)
    with_timeout 120 nbdcopy --request-size=65536 "$up_uri" out.qcow2 || check_fail "$what: nbdcopy upstream -> out.qcow2"
    kill "$up_pid"
    wait "$up_pid" 2>/dev/null
    qimg_check out.qcow2 "$what: the image copied out"
    qimg_compare out.qcow2 replica.raw "$what: image vs replica" -f qcow2 -F raw
    qimg_compare out.qcow2 served.raw "$what: image vs what the chain served" -f qcow2 -F raw
    # The layer allocated inside the export: the image still fits in it.
    local end
    end=$(qemu-img check --output=json out.qcow2 2>/dev/null |
        /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin).get("image-end-offset", 0))' 2>/dev/null)
    expect_true "$what: image end offset ${end:-?} within the ${HOST}-byte export" \
        test "${end:-0}" -gt 0 -a "${end:-0}" -le "$HOST"
}

over_case "over qemu-nbd -f raw" qemu-nbd -f raw -t -e 8 -k "$SCRATCH/up.sock" "$SCRATCH/host.img"
over_case "over nbdkit file" nbdkit -f -U "$SCRATCH/up.sock" file "$SCRATCH/host.img"
over_case "over nbdkit file, 4K minimum / 64K maximum block size (errors otherwise)" \
    nbdkit -f -U "$SCRATCH/up.sock" --filter=blocksize-policy file "$SCRATCH/host.img" \
    blocksize-minimum=4096 blocksize-preferred=65536 blocksize-maximum=65536 \
    blocksize-error-policy=error
# --- an export that fills up ---------------------------------------------------
qemu-img create -q -f qcow2 full.img "$VSIZE"
truncate -s $((8 * M)) full.img
qstart upfull /usr/bin/qemu-nbd -f raw -t full.img || fail "qemu-nbd did not start"
dut qf -t "$(uri upfull)" || fail "chain over the small export did not start"
qio_run "small export" raw "$(uri qf)" "write -P 0x71 0 6M" && ok "small export: 6 MiB fit"
with_timeout 120 qemu-io -f raw "$(uri qf)" -c "write -P 0x72 6M 4M" >full.out 2>&1
expect_true "small export: a write past the room fails with ENOSPC ($(tr '\n' ' ' <full.out | cut -c1-120))" \
    grep -q "No space left on device" full.out
QIO_RO=1 qio_run "small export" raw "$(uri qf)" "read -P 0x71 0 6M" && ok "small export: the data that fit reads back"
stop_server_ok qf
stop_server upfull
qimg_check full.img "small export: the full image"
finish
