#!/bin/sh
# /init of the guest that test-kernel-client.sh boots: Debian's kernel, this
# script, busybox, nbd.ko, nbd-client and e2fsprogs.  For each export listed
# in /test.conf it runs the kernel client's sequence against nbdstack on the
# host (10.0.2.2 through qemu's user-mode network), prints one line per step
# on the console -- "STEP export:step ok" or "STEP export:step FAIL why" --
# then "GUEST DONE" and powers off.  A failed step ends that export's
# sequence (the later steps depend on it); the next export still runs.
#
# /test.conf (written by the host) sets EXPORTS ("NAME:PORT:DISCARD ...",
# DISCARD "zero" or "keep": what a discarded range must read back as), SIZE
# (bytes), the offsets DIRECT_OFF, CACHED_OFF, DISCARD_OFF, DISCARD_LEN,
# FS_BLOCKS (4K blocks of the filesystem at the start of the disk) and MAGIC.
# /pat-a and /pat-b are 1 MiB patterns; /pat-a-zeroed is /pat-a with the
# discarded range zeroed.

# busybox-static runs its own applets before PATH: the real mke2fs and
# e2fsck are called by full name.
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
# Kernel messages would break the STEP lines apart; a failed step prints
# the tail of dmesg itself.
dmesg -n 1
. /test.conf

finish() {
    echo "GUEST DONE"
    sync
    poweroff -f
}

for m in $(cat /modules.list); do
    case $m in nbd.ko) opts=nbds_max=4 ;; *) opts= ;; esac
    insmod /lib/modules/$m $opts || { echo "STEP guest:insmod FAIL $m"; finish; }
done
ip link set lo up
ip link set eth0 up &&
    ip addr add 10.0.2.15/24 dev eth0 &&
    ip route add default via 10.0.2.2 ||
    { echo "STEP guest:network FAIL"; ip addr; finish; }
echo "STEP guest:network ok"

OUT=/tmp/step.out

# step NAME CMD...: run CMD (a shell function below), its output to $OUT.
step() {
    name=$1
    shift
    if "$@" >$OUT 2>&1; then
        echo "STEP $EXPORT:$name ok"
        return 0
    fi
    echo "STEP $EXPORT:$name FAIL $(tail -n 4 $OUT | tr '\n' '|')"
    dmesg | tail -n 15 | sed 's/^/  dmesg: /'
    return 1
}

# reads DEV OFFSET EXPECTED: the 1 MiB at OFFSET, read with O_DIRECT,
# equals the file EXPECTED.
reads() {
    dd if=$1 of=/tmp/got bs=65536 skip=$(($2 / 65536)) count=16 iflag=direct 2>/dev/null &&
        cmp /tmp/got $3
}

connected() {
    nbd-client -N $EXPORT 10.0.2.2 $PORT $DEV -b 4096 || return 1
    got=$(blockdev --getsize64 $DEV)
    [ "$got" = "$SIZE" ] || { echo "size $got, expected $SIZE"; return 1; }
    bs=$(blockdev --getbsz $DEV)
    [ "$bs" = 4096 ] || { echo "block size $bs"; return 1; }
}

direct_write() {
    dd if=/pat-a of=$DEV bs=65536 seek=$((DIRECT_OFF / 65536)) oflag=direct 2>/dev/null
}

direct_read() {
    reads $DEV $DIRECT_OFF /pat-a
}

# Through the page cache: sync and BLKFLSBUF write it back (WRITE and
# FLUSH requests) and drop it, so the O_DIRECT read below sees the server.
cached_write() {
    dd if=/pat-b of=$DEV bs=65536 seek=$((CACHED_OFF / 65536)) 2>/dev/null &&
        sync && blockdev --flushbufs $DEV
}

cached_read() {
    dd if=$DEV of=/tmp/got bs=65536 skip=$((CACHED_OFF / 65536)) count=16 2>/dev/null &&
        cmp /tmp/got /pat-b &&
        echo 3 >/proc/sys/vm/drop_caches &&
        reads $DEV $CACHED_OFF /pat-b
}

discarded() {
    max=$(cat "/sys/block/${DEV#/dev/}/queue/discard_max_bytes")
    [ "$max" -gt 0 ] || { echo "the kernel sees no discard support"; return 1; }
    blkdiscard -o $DISCARD_OFF -l $DISCARD_LEN $DEV || return 1
    case $DISCARD in
        zero) reads $DEV $DIRECT_OFF /pat-a-zeroed ;;
        keep) reads $DEV $DIRECT_OFF /pat-a ;;
    esac
}

# Write the inode tables and journal now: lazy init would go on writing
# from a kernel thread after mount.
mkfs() {
    /sbin/mke2fs -q -F -t ext4 -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 $DEV $FS_BLOCKS
}

mounted() {
    mount -t ext4 $DEV /mnt
}

write_files() {
    mkdir /mnt/dir &&
        cp /pat-b /mnt/dir/pattern.bin &&
        echo "$MAGIC" >/mnt/hello.txt || return 1
    for i in $(seq 1 50); do
        echo "file $i of $EXPORT" >/mnt/dir/f$i || return 1
    done
}

fsck_clean() {
    /sbin/e2fsck -fn $DEV
}

# nbd-client -d returns once the kernel has been asked to disconnect; the
# device's size drops to 0 when it has.
disconnected() {
    nbd-client -d $DEV || return 1
    for i in $(seq 1 100); do
        [ "$(blockdev --getsize64 $DEV 2>/dev/null || echo 0)" = 0 ] && return 0
        usleep 100000
    done
    echo "$DEV still has size $(blockdev --getsize64 $DEV) after nbd-client -d"
    return 1
}

verify_files() {
    cmp /mnt/dir/pattern.bin /pat-b &&
        [ "$(cat /mnt/hello.txt)" = "$MAGIC" ] || return 1
    for i in $(seq 1 50); do
        [ "$(cat /mnt/dir/f$i)" = "file $i of $EXPORT" ] || { echo "dir/f$i differs"; return 1; }
    done
    # The raw ranges outside the filesystem survived too.
    reads $DEV $CACHED_OFF /pat-b
}

write_after() {
    echo "$MAGIC after reconnect" >/mnt/after.txt
}

n=0
for e in $EXPORTS; do
    EXPORT=${e%%:*}
    rest=${e#*:}
    PORT=${rest%%:*}
    DISCARD=${rest#*:}
    DEV=/dev/nbd$n
    n=$((n + 1))
    step connect connected &&
        step direct-write direct_write &&
        step direct-read direct_read &&
        step cached-write cached_write &&
        step cached-read cached_read &&
        step discard discarded &&
        step mkfs mkfs &&
        step mount mounted &&
        step write-files write_files &&
        step umount umount /mnt &&
        step fsck fsck_clean &&
        step disconnect disconnected &&
        step reconnect connected &&
        step mount-again mounted &&
        step verify-files verify_files &&
        step write-after-reconnect write_after &&
        step umount-again umount /mnt &&
        step fsck-again fsck_clean &&
        step final-disconnect disconnected
    # After a failure: leave the server nothing half-done.
    umount /mnt 2>/dev/null
    nbd-client -d $DEV >/dev/null 2>&1
done
finish
