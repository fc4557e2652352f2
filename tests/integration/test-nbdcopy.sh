#!/bin/bash
# nbdcopy into and out of the export, single- and multi-connection.
. "$(dirname "$0")/lib.sh"
need_tool nbdcopy
need_server
scratch_init

M=$((1024 * 1024))

# src.img: 32 MiB, data runs and holes (nbdcopy zeroes the holes on the
# destination), last sector written.
make_src() {
    truncate -s 32M "$1"
    random_fill "$1" 0 $((2 * M)) "$2"
    random_fill "$1" $((5 * M + 512)) $((3 * M)) $(($2 + 1))
    random_fill "$1" $((20 * M)) $((64 * 1024)) $(($2 + 2))
    random_fill "$1" $((32 * M - 4096)) 4096 $(($2 + 3))
}

# --- one connection ----------------------------------------------------------
src=$SCRATCH/src.img
dst=$SCRATCH/dst.img
make_src "$src" 10
fill "$dst" 0 $((32 * M)) 0xff        # holes of src must be zeroed, not skipped
start_server one -t "$dst"
expect_true "nbdcopy src.img -> export" with_timeout 120 nbdcopy "$src" "$(uri one)"
expect_true "nbdcopy export -> out.img" with_timeout 120 nbdcopy "$(uri one)" "$SCRATCH/out.img"
sum=$(with_timeout 120 nbdcopy "$(uri one)" - | sha256sum | cut -d' ' -f1)
expect_eq "$sum" "$(sha "$src")" "nbdcopy export -> stdout: sha256"
stop_server_ok one
expect_true "exported file equals src.img" cmp "$src" "$dst"
expect_true "out.img equals src.img" cmp "$src" "$SCRATCH/out.img"

# --- four connections (-e 4: CAN_MULTI_CONN) -----------------------------------
src2=$SCRATCH/src2.img
make_src "$src2" 20
fill "$dst" 0 $((32 * M)) 0xff
start_server four -t -e 4 "$dst"
expect_true "nbdcopy --connections=4 --flush src2.img -> export" \
    with_timeout 120 nbdcopy --threads=4 --connections=4 --requests=16 --flush "$src2" "$(uri four)"
rm -f "$SCRATCH/out.img"
if with_timeout 120 nbdcopy --verbose --threads=4 --connections=4 --requests=16 "$(uri four)" "$SCRATCH/out.img" 2>"$SCRATCH/verbose"; then
    ok "nbdcopy --connections=4 export -> out.img"
else
    cat "$SCRATCH/verbose" >&2
    check_fail "nbdcopy --connections=4 export -> out.img failed"
fi
# nbdcopy opens several connections only if the server offers multi-conn
# (and no more than --threads).
conns=$(grep -oE 'connections=[0-9]+' "$SCRATCH/verbose" | head -1)
expect_eq "$conns" "connections=4" "nbdcopy --verbose: connections used"
stop_server_ok four
expect_true "exported file equals src2.img (multi-conn write)" cmp "$src2" "$dst"
expect_true "out.img equals src2.img (multi-conn read)" cmp "$src2" "$SCRATCH/out.img"

finish
