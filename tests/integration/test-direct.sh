#!/bin/bash
# --cache=none and directsync (O_DIRECT) through the real server: writes of
# 1, 100 and 4095 bytes at odd offsets, and many concurrent writes into
# the same blocks at different bytes (aio_write, all in flight at once),
# must land exactly, next to bytes they must not touch.
. "$(dirname "$0")/lib.sh"
need_tool qemu-io
need_server
scratch_init

img=/var/tmp/nbdstack-direct.$$.img
trap 'rm -f "$img"' EXIT

for mode in none directsync; do
    fill "$img" 0 $((64 * 1024)) 0xee
    start_server d -t --cache=$mode "$img"
    ops=(-c "write -P 0x11 1 1" -c "write -P 0x22 4097 100" -c "write -P 0x33 8191 4095")
    # 16 writes of 60 bytes into the same two 4K blocks, in flight together.
    for i in $(seq 0 15); do
        ops+=(-c "aio_write -P $((0x40 + i)) $((16384 + 4000 + i * 60)) 60")
    done
    ops+=(-c "aio_flush")
    with_timeout 60 qemu-io -f raw "$(uri d)" "${ops[@]}" >"$SCRATCH/io.out" 2>&1 ||
        check_fail "$mode: qemu-io failed: $(cat "$SCRATCH/io.out")"
    with_timeout 60 qemu-io -f raw "$(uri d)" -c "read -P 0x11 1 1" \
        -c "read -P 0x22 4097 100" -c "read -P 0x33 8191 4095" >"$SCRATCH/io.out" 2>&1 &&
        ! grep -q "Pattern verification failed" "$SCRATCH/io.out" ||
        check_fail "$mode: reading back through the server: $(cat "$SCRATCH/io.out")"
    stop_server_ok d

    expect_bytes "$img" 0 1 0xee "$mode: byte before the 1-byte write"
    expect_bytes "$img" 1 1 0x11 "$mode: 1 byte at 1"
    expect_bytes "$img" 2 4095 0xee "$mode: bytes after it, same block"
    expect_bytes "$img" 4097 100 0x22 "$mode: 100 bytes at 4097"
    expect_bytes "$img" 4197 3994 0xee "$mode: bytes between"
    expect_bytes "$img" 8191 4095 0x33 "$mode: 4095 bytes at 8191"
    expect_bytes "$img" 12286 4098 0xee "$mode: bytes after, to the next 4K"
    for i in $(seq 0 15); do
        expect_bytes "$img" $((16384 + 4000 + i * 60)) 60 $((0x40 + i)) "$mode: concurrent write $i"
    done
    expect_bytes "$img" 16384 4000 0xee "$mode: untouched head of the concurrent block"
    expect_bytes "$img" $((16384 + 4960)) 1000 0xee "$mode: untouched tail"
done
finish
