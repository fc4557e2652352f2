#!/bin/bash
# qemu-img over NBD: convert a patterned image into the export and back out,
# compare; qemu-img map through BLOCK_STATUS must match the file's real holes.
. "$(dirname "$0")/lib.sh"
need_tool qemu-img fallocate
need_server
scratch_init_holes

M=$((1024 * 1024))
K=1024

# src.img: 16 MiB of data and holes, with zero-filled (allocated) runs too.
src=$SCRATCH/src.img
truncate -s 16M "$src"
random_fill "$src" 0 $((1 * M)) 1
random_fill "$src" $((3 * M)) $((64 * K)) 2
random_fill "$src" $((5 * M + 4 * K)) $((4 * K)) 3
fill "$src" $((6 * M)) $((1 * M)) 0            # allocated zeroes
random_fill "$src" $((9 * M)) $((3 * M)) 4
random_fill "$src" $((16 * M - 512)) 512 5     # last sector

# dst.img: same size, full of 0xff, so every zero run of src must be
# actively zeroed by the client (WRITE_ZEROES) - nothing is zero by luck.
dst=$SCRATCH/dst.img
fill "$dst" 0 $((16 * M)) 0xff

# --- convert into the export, compare, convert back out --------------------
start_server w -t "$dst"
if with_timeout 120 qemu-img convert -n -f raw -O raw "$src" "$(uri w)" 2>"$SCRATCH/err"; then
    ok "qemu-img convert src.img -> export"
else
    check_fail "qemu-img convert into the export failed: $(cat "$SCRATCH/err")"
fi
if with_timeout 120 qemu-img compare -f raw -F raw "$src" "$(uri w)" >"$SCRATCH/cmp" 2>&1; then
    ok "qemu-img compare src.img export"
else
    check_fail "qemu-img compare src.img vs export: $(cat "$SCRATCH/cmp")"
fi
if with_timeout 120 qemu-img convert -f raw -O raw "$(uri w)" "$SCRATCH/out.img" 2>"$SCRATCH/err"; then
    ok "qemu-img convert export -> out.img"
else
    check_fail "qemu-img convert out of the export failed: $(cat "$SCRATCH/err")"
fi
stop_server_ok w
expect_true "dst.img (the exported file) equals src.img" cmp "$src" "$dst"
expect_true "out.img (read back over NBD) equals src.img" cmp "$src" "$SCRATCH/out.img"

# --- qemu-img map over BLOCK_STATUS vs. the file's own map -----------------
# map.img: 8 MiB: data [0,1M), hole, data [3M,3M+64K), hole, data [6M,6M+4K),
# a punched hole inside data [7M,7M+512K) at [7M+128K,+128K), hole to the end.
mapimg=$SCRATCH/map.img
truncate -s 8M "$mapimg"
random_fill "$mapimg" 0 $((1 * M)) 11
random_fill "$mapimg" $((3 * M)) $((64 * K)) 12
random_fill "$mapimg" $((6 * M)) $((4 * K)) 13
random_fill "$mapimg" $((7 * M)) $((512 * K)) 14
fallocate -p -o $((7 * M + 128 * K)) -l $((128 * K)) "$mapimg" || fail "fallocate -p failed"
sync "$mapimg"

want=$(qemu-img map --output=json -f raw "$mapimg" | map_summary)
ndata=$(echo "$want" | grep -c 'data=true')
nhole=$(echo "$want" | grep -c 'data=false zero=true')
[ "$ndata" -ge 4 ] && [ "$nhole" -ge 4 ] ||
    fail "scratch filesystem did not keep the holes of map.img (file map: $want)"

before=$(sha "$mapimg")
for mode in rw ro; do
    if [ $mode = ro ]; then start_server m$mode -t -r "$mapimg"; else start_server m$mode -t "$mapimg"; fi
    got=$(with_timeout 60 qemu-img map --output=json -f raw "$(uri m$mode)" | map_summary)
    expect_eq "$got" "$want" "qemu-img map over NBD ($mode export) = file map"
    # The same with a 1 MiB-unaligned start: BLOCK_STATUS from an offset
    # inside an extent (qemu-img map --start-offset).
    got=$(with_timeout 60 qemu-img map --output=json -f raw --start-offset=$((3 * M + 32 * K)) "$(uri m$mode)" | map_summary)
    want2=$(qemu-img map --output=json -f raw --start-offset=$((3 * M + 32 * K)) "$mapimg" | map_summary)
    expect_eq "$got" "$want2" "qemu-img map --start-offset over NBD ($mode export)"
    stop_server_ok m$mode
done
expect_eq "$(sha "$mapimg")" "$before" "map.img unchanged by map"

finish
