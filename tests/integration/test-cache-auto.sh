#!/bin/bash
# --cache=auto: direct I/O where the filesystem has it, the page cache where
# it does not, and the choice logged.  --cache=none on a filesystem without
# O_DIRECT fails at start with one line naming the modes to use instead.
. "$(dirname "$0")/lib.sh"
need_server
scratch_init

# o_direct PIDFILE IMAGE: "yes" if the server has IMAGE open with O_DIRECT.
o_direct() {
    local pid fd
    pid=$(cat "$1")
    for fd in /proc/"$pid"/fd/*; do
        [ "$(readlink "$fd")" = "$2" ] || continue
        # fdinfo flags are octal; O_DIRECT is 040000 on x86.
        if (( 0$(awk '/^flags:/ {print $2}' /proc/"$pid"/fdinfo/"${fd##*/}") & 040000 )); then
            echo yes
        else
            echo no
        fi
        return
    done
    echo "not open"
}

img=/var/tmp/nbdstack-auto.$$.img
trap 'rm -f "$img"' EXIT
truncate -s 16M "$img"
start_server a -t --cache=auto "$img"
expect_eq "$(o_direct "$SCRATCH/a.pid" "$img")" yes "auto on /var/tmp: image opened with O_DIRECT"
expect_true "auto on /var/tmp: the choice is logged" grep -q 'cache=auto: using cache=none' "$SCRATCH/a.log"
qemu-io -f raw "$(uri a)" -c "write -P 0x3c 1 4095" -c "read -P 0x3c 1 4095" >/dev/null ||
    check_fail "auto on /var/tmp: unaligned write/read through O_DIRECT"
stop_server_ok a
expect_bytes "$img" 1 4095 0x3c "auto on /var/tmp: unaligned write landed"

# A filesystem without O_DIRECT: ramfs, if this machine lets us mount one.
ram=$SCRATCH/ram
mkdir -p "$ram"
if mount -t ramfs ramfs "$ram" 2>/dev/null; then
    truncate -s 16M "$ram/disk.img"
    start_server b -t --cache=auto "$ram/disk.img"
    expect_eq "$(o_direct "$SCRATCH/b.pid" "$ram/disk.img")" no "auto on ramfs: no O_DIRECT"
    expect_true "auto on ramfs: fell back to writeback, logged" grep -q 'cache=auto: using cache=writeback' "$SCRATCH/b.log"
    stop_server_ok b
    out=$("$NBDSTACK" -f raw -k "$SCRATCH/c.sock" --cache=none "$ram/disk.img" 2>&1)
    rc=$?
    expect_true "--cache=none on ramfs fails at start" [ $rc -ne 0 ]
    expect_eq "$(echo "$out" | wc -l)" 1 "--cache=none on ramfs: one line"
    case $out in
    *"does not support direct I/O"*--cache=writeback*) ok "--cache=none on ramfs names the mode to use: $out" ;;
    *) check_fail "--cache=none on ramfs: unexpected message: $out" ;;
    esac
    umount "$ram"
else
    echo "ok - # SKIP ramfs: cannot mount here"
fi
finish
