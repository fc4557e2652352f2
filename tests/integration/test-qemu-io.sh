#!/bin/bash
# qemu-io over NBD: write -P, read -P, write -z (NO_HOLE), write -z -u,
# discard, flush, write -f (FUA), aio_write + aio_flush; then the image
# file's bytes are checked directly.  A second round with --discard=unmap
# checks that TRIM really punches a hole in the file.
. "$(dirname "$0")/lib.sh"
need_tool qemu-io qemu-img
need_server
scratch_init_holes

K=1024
img=$SCRATCH/disk.img

# run_io NAME CMDS...: one qemu-io session (one NBD connection) with -c CMDS.
# QIO_RO=1 opens the export read-only (qemu-io -r).
run_io() {
    local name=$1
    shift
    local args=() c
    for c in "$@"; do args+=(-c "$c"); done
    if ! with_timeout 60 qemu-io ${QIO_RO:+-r} -f raw "$(uri "$name")" "${args[@]}" >"$SCRATCH/io.out" 2>&1; then
        sed 's/^/  qemu-io: /' "$SCRATCH/io.out" >&2
        check_fail "qemu-io session failed: $*"
        return 1
    fi
    if grep -qiE 'fail|error|invalid' "$SCRATCH/io.out"; then
        sed 's/^/  qemu-io: /' "$SCRATCH/io.out" >&2
        check_fail "qemu-io reported an error: $*"
        return 1
    fi
    ok "qemu-io: $*"
}

# The image starts as 2 MiB of 0xee, so zeroing is visible.
fresh_image() {
    rm -f "$img"
    fill "$img" 0 $((2048 * K)) 0xee
}

# The layout every round writes and then checks.
OPS=(
    "write -P 0x5a 0 64k"
    "read -P 0x5a 0 64k"
    "write -z 64k 64k"
    "write -z -u 128k 64k"
    "discard 192k 64k"
    "flush"
    "write -f -P 0x77 256k 4k"
    "aio_write -P 0x01 1M 4k"
    "aio_write -P 0x02 1028k 4k"
    "aio_flush"
)
READBACK=(
    "read -P 0x5a 0 64k"
    "read -P 0 64k 64k"
    "read -P 0 128k 64k"
    "read -P 0x77 256k 4k"
    "read -P 0xee 260k 764k"
    "read -P 0x01 1M 4k"
    "read -P 0x02 1028k 4k"
    "read -P 0xee 1032k 1016k"
)

check_file() {
    local what=$1
    expect_bytes "$img" 0 $((64 * K)) 0x5a "$what write -P"
    expect_bytes "$img" $((64 * K)) $((64 * K)) 0 "$what write -z"
    expect_bytes "$img" $((128 * K)) $((64 * K)) 0 "$what write -z -u"
    # [192k,256k) was discarded: contents undefined (checked in round 2).
    expect_bytes "$img" $((256 * K)) $((4 * K)) 0x77 "$what write -f (FUA)"
    expect_bytes "$img" $((260 * K)) $((764 * K)) 0xee "$what untouched gap"
    expect_bytes "$img" $((1024 * K)) $((4 * K)) 0x01 "$what aio_write #1"
    expect_bytes "$img" $((1028 * K)) $((4 * K)) 0x02 "$what aio_write #2"
    expect_bytes "$img" $((1032 * K)) $((1016 * K)) 0xee "$what untouched tail"
    expect_eq "$(stat -c %s "$img")" $((2048 * K)) "$what image size unchanged"
}

# --- round 1: default options ---------------------------------------------
fresh_image
start_server r1 -t "$img"
run_io r1 "${OPS[@]}"
# A second connection sees the data, including the discarded range still
# being readable (whatever its contents).
run_io r1 "${READBACK[@]}" "read 192k 64k"
stop_server_ok r1
check_file "default:"

# --- round 2: --discard=unmap: TRIM must deallocate ------------------------
fresh_image
start_server r2 -t --discard=unmap "$img"
run_io r2 "${OPS[@]}"
run_io r2 "${READBACK[@]}" "read -P 0 192k 64k"
stop_server_ok r2
check_file "--discard=unmap:"
expect_bytes "$img" $((192 * K)) $((64 * K)) 0 "--discard=unmap: discarded range reads as zero"
map=$(qemu-img map --output=json -f raw "$img" | map_summary)
case "$(map_extent_of "$map" $((192 * K)) $((64 * K)))" in
*" data=false zero=true") ok "--discard=unmap: discard punched a hole" ;;
*) check_fail "--discard=unmap: [192k,256k) is not a hole after discard; file map: $(echo "$map" | tr '\n' ';')" ;;
esac

# --- round 3: read-only export refuses writes, image unchanged -------------
fresh_image
before=$(sha "$img")
start_server r3 -t -r "$img"
# qemu-io sees READ_ONLY and refuses to open read-write; the server-side
# EPERM for each write command is checked at the wire level (test-reject.py).
if with_timeout 60 qemu-io -f raw "$(uri r3)" -c "write -P 0x11 0 4k" >"$SCRATCH/io.out" 2>&1 &&
    ! grep -qiE 'fail|error|denied|read-only' "$SCRATCH/io.out"; then
    check_fail "write to a -r export succeeded: $(cat "$SCRATCH/io.out")"
else
    ok "write to a -r export refused"
fi
QIO_RO=1 run_io r3 "read -P 0xee 0 2M" "flush"
stop_server_ok r3
expect_eq "$(sha "$img")" "$before" "-r: image unchanged"

# --- round 4: --detect-zeroes turns all-zero writes into zero writes ------
# With unmap (which needs --discard=unmap) they may deallocate: a plain
# write of zero bytes never leaves a hole, so a hole proves the conversion.
fresh_image
start_server r4 -t --discard=unmap --detect-zeroes=unmap "$img"
run_io r4 "write -P 0 512k 64k" "read -P 0 512k 64k" "read -P 0xee 576k 4k"
stop_server_ok r4
map=$(qemu-img map --output=json -f raw "$img" | map_summary)
case "$(map_extent_of "$map" $((512 * K)) $((64 * K)))" in
*" data=false zero=true") ok "--detect-zeroes=unmap: the zero write punched a hole" ;;
*) check_fail "--detect-zeroes=unmap: [512k,576k) is not a hole; file map: $(echo "$map" | tr '\n' ';')" ;;
esac
# With on (and the default --discard=ignore) the range stays allocated.
fresh_image
start_server r5 -t --detect-zeroes=on "$img"
run_io r5 "write -P 0 512k 64k"
stop_server_ok r5
expect_bytes "$img" $((512 * K)) $((64 * K)) 0 "--detect-zeroes=on: range reads as zero"
map=$(qemu-img map --output=json -f raw "$img" | map_summary)
case "$(map_extent_of "$map" $((512 * K)) $((64 * K)))" in
*" data=false zero=true") check_fail "--detect-zeroes=on deallocated without --discard=unmap" ;;
*) ok "--detect-zeroes=on: range stays allocated" ;;
esac

finish
