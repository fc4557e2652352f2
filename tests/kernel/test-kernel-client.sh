#!/bin/bash
# The Linux kernel's NBD client against nbdstack, for real: boots Debian's
# kernel under qemu-system-x86_64 (TCG, no KVM needed) with an initramfs of
# busybox, nbd.ko, nbd-client and e2fsprogs built here, and runs
# guest-init.sh's sequence (connect, O_DIRECT and page-cache writes and
# reads, discard, mkfs.ext4, mount, files, umount, fsck, disconnect,
# reconnect, verify) against two nbdstack servers on the host, reached
# through qemu's user-mode network:
#   a: raw, default cache (writeback), --discard=unmap (discard reads zeroes)
#   b: qcow2, --cache=none (O_DIRECT), default --discard=ignore (a
#      discarded range keeps its data, as with qemu-nbd)
# Then it checks on the host that what the guest wrote is in the images:
# the raw patterns at their offsets, e2fsck -fn, and the files through
# debugfs.
#
# Environment: NBDSTACK (the server), KERNEL_IMAGE (a vmlinuz; default the
# newest /boot/vmlinuz-* whose modules are in /lib/modules), KEEP_SCRATCH.
# Exits 77 only when qemu-system-x86_64, the kernel or a guest tool is
# missing (.ci/install-deps installs them all).
# shellcheck source=../integration/lib.sh
. "$(dirname "$0")/../integration/lib.sh"
GUEST_INIT=$(cd "$(dirname "$0")" && pwd)/guest-init.sh

need_tool qemu-system-x86_64 qemu-img busybox nbd-client mke2fs e2fsck debugfs modprobe
need_server
for t in /usr/sbin/nbd-client /usr/sbin/mke2fs /usr/sbin/e2fsck /etc/mke2fs.conf; do
    [ -e "$t" ] || skip "$t not found"
done

if [ -n "${KERNEL_IMAGE:-}" ]; then
    vmlinuz=$KERNEL_IMAGE
else
    vmlinuz=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
fi
[ -n "$vmlinuz" ] && [ -e "$vmlinuz" ] || skip "no kernel image in /boot (install linux-image-amd64)"
[ -r "$vmlinuz" ] || fail "kernel image $vmlinuz is not readable"
kver=${vmlinuz##*/vmlinuz-}
[ -d "/lib/modules/$kver" ] || skip "no /lib/modules/$kver for $vmlinuz"

# On disk, not tmpfs: --cache=none needs O_DIRECT.
TMPDIR=/var/tmp scratch_init

SIZE=$((64 * 1024 * 1024))
FS_BLOCKS=8192                       # a 32 MiB filesystem at the start
DIRECT_OFF=$((40 * 1024 * 1024))     # 1 MiB written with O_DIRECT
CACHED_OFF=$((44 * 1024 * 1024))     # 1 MiB written through the page cache
DISCARD_OFF=$((DIRECT_OFF + 256 * 1024))
DISCARD_LEN=$((512 * 1024))
MAGIC="nbdstack kernel client test $$"

# ---- the initramfs -------------------------------------------------------

root=$SCRATCH/root
mkdir -p "$root"/{bin,sbin,etc,dev,proc,sys,tmp,mnt,lib/modules}

# copy_prog PATH: the program into /sbin, its shared libraries (and the
# dynamic loader) at the paths ldd names.
copy_prog() {
    cp "$1" "$root/sbin/" || fail "copying $1"
    local lib
    for lib in $(ldd "$1" | grep -o '/[^ ]*'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib" || fail "copying $lib for $1"
    done
}

cp "$(command -v busybox)" "$root/bin/busybox"
ldd "$root/bin/busybox" >/dev/null 2>&1 &&
    skip "busybox is dynamically linked (install busybox-static)"
for a in $("$root/bin/busybox" --list | grep -vx busybox); do
    ln -s busybox "$root/bin/$a"
done
for p in /usr/sbin/nbd-client /usr/sbin/mke2fs /usr/sbin/e2fsck; do
    copy_prog "$p"
done
cp /etc/mke2fs.conf "$root/etc/"
cp "$GUEST_INIT" "$root/init"
chmod 755 "$root/init"

# Modules in load order, dependencies first, from the host's modules.dep.
# crc32c-intel is left out: TCG's default CPU lacks SSE4.2, so it would
# refuse to load; crc32c_generic serves ext4 and jbd2 instead.
modprobe -S "$kver" -D -a nbd virtio_pci virtio_net crc32c_generic ext4 >"$SCRATCH/mods" ||
    fail "modprobe -S $kver -D could not resolve the guest's modules"
: >"$root/modules.list"
for ko in $(awk '$1 == "insmod" { print $2 }' "$SCRATCH/mods" | grep -v crc32c-intel); do
    base=$(basename "$ko")
    case $base in
        *.ko.xz) base=${base%.xz}; xz -dc "$ko" >"$root/lib/modules/$base" ;;
        *.ko.zst) base=${base%.zst}; zstd -qdc "$ko" >"$root/lib/modules/$base" ;;
        *) cp "$ko" "$root/lib/modules/$base" ;;
    esac || fail "copying module $ko"
    grep -qx "$base" "$root/modules.list" || echo "$base" >>"$root/modules.list"
done
grep -qx nbd.ko "$root/modules.list" || fail "nbd.ko not found for $kver"

random_fill "$root/pat-a" 0 1048576 1
random_fill "$root/pat-b" 0 1048576 2
cp "$root/pat-a" "$root/pat-a-zeroed"
fill "$root/pat-a-zeroed" $((DISCARD_OFF - DIRECT_OFF)) "$DISCARD_LEN" 0

# ---- the servers ---------------------------------------------------------

free_port() {
    /usr/bin/python3 -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
'
}

# start_tcp NAME ARGS... FILE: nbdstack on 127.0.0.1 and a free port (in
# PORT[NAME]), export name NAME, persistent (the guest reconnects).
declare -A PORT=()
start_tcp() {
    local name=$1
    shift
    local pidf=$SCRATCH/$name.pid log=$SCRATCH/$name.log i
    PORT[$name]=$(free_port)
    "$NBDSTACK" -b 127.0.0.1 -p "${PORT[$name]}" -x "$name" -t -v --pid-file="$pidf" \
        "$@" </dev/null >"$log" 2>&1 &
    SERVER_PID[$name]=$!
    for ((i = 0; i < START_TIMEOUT * 20; i++)); do
        [ -s "$pidf" ] && return 0
        server_exited "$name" && { cat "$log" >&2; fail "server $name did not start: $*"; }
        sleep 0.05
    done
    fail "server $name not ready after ${START_TIMEOUT}s: $*"
}

truncate -s "$SIZE" "$SCRATCH/a.img"
qemu-img create -q -f qcow2 "$SCRATCH/b.qcow2" "$SIZE" || fail "qemu-img create"
start_tcp a -f raw --discard=unmap "$SCRATCH/a.img"
start_tcp b -f qcow2 --cache=none "$SCRATCH/b.qcow2"

cat >"$root/test.conf" <<EOF
EXPORTS="a:${PORT[a]}:zero b:${PORT[b]}:keep"
SIZE=$SIZE
FS_BLOCKS=$FS_BLOCKS
DIRECT_OFF=$DIRECT_OFF
CACHED_OFF=$CACHED_OFF
DISCARD_OFF=$DISCARD_OFF
DISCARD_LEN=$DISCARD_LEN
MAGIC="$MAGIC"
EOF

(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$SCRATCH/initramfs.gz" ||
    fail "building the initramfs"

# ---- the guest -----------------------------------------------------------

# no_timer_check: on a loaded host, TCG can be too slow for the kernel's
# check that the timer interrupt works, which then panics at boot.
serial=$SCRATCH/serial.log
start=$SECONDS
timeout --kill-after=10 600 qemu-system-x86_64 \
    -machine pc -accel tcg -m 512 -smp 1 -nodefaults -no-reboot \
    -display none -monitor none -serial "file:$serial" \
    -kernel "$vmlinuz" -initrd "$SCRATCH/initramfs.gz" \
    -append "console=ttyS0 panic=-1 rdinit=/init no_timer_check" \
    -nic user,model=virtio-net-pci >"$SCRATCH/qemu.out" 2>&1
qemu_rc=$?
echo "guest ran for $((SECONDS - start))s (qemu exit status $qemu_rc)"

# On failure: what the guest and the servers said.
show_logs() {
    echo "---- guest serial console (last 60 lines)" >&2
    tail -n 60 "$serial" | tr -d '\r' >&2
    echo "---- qemu" >&2
    cat "$SCRATCH/qemu.out" >&2
    local n
    for n in a b; do
        echo "---- server $n stderr" >&2
        cat "$SCRATCH/$n.log" >&2
    done
}

steps="connect direct-write direct-read cached-write cached-read discard mkfs
       mount write-files umount fsck disconnect reconnect mount-again
       verify-files write-after-reconnect umount-again fsck-again final-disconnect"
tr -d '\r' <"$serial" | grep -E '^(STEP |GUEST DONE)' >"$SCRATCH/steps"
cat "$SCRATCH/steps"
expect_eq "$qemu_rc" 0 "qemu exit status (124: the guest did not power off in time)"
expect_true "the guest ran to its end (GUEST DONE)" grep -qx "GUEST DONE" "$SCRATCH/steps"
declare -A GUEST_OK=()
for e in a b; do
    bad=
    for s in $steps; do
        line=$(grep -m1 "^STEP $e:$s " "$SCRATCH/steps")
        if [ "$line" != "STEP $e:$s ok" ]; then
            bad=${line:-"step $s did not run"}
            break
        fi
    done
    if [ -z "$bad" ]; then
        GUEST_OK[$e]=1
        ok "export $e: every guest step ran and passed"
    else
        check_fail "export $e: ${bad#STEP }"
    fi
done
stop_server_ok a
stop_server_ok b

# ---- what is in the images -----------------------------------------------

qemu-img check -q "$SCRATCH/b.qcow2" || check_fail "qemu-img check of b.qcow2"
qemu-img convert -f qcow2 -O raw "$SCRATCH/b.qcow2" "$SCRATCH/b.img" ||
    fail "qemu-img convert b.qcow2"

# range_is IMAGE OFFSET FILE WHAT: the image holds FILE at OFFSET.
range_is() {
    expect_true "$4" cmp -n "$(stat -c %s "$3")" -i "$2:0" "$1" "$3"
}

for e in a b; do
    [ -n "${GUEST_OK[$e]:-}" ] || continue   # nothing to look for
    img=$SCRATCH/$e.img
    expected=$root/pat-a-zeroed
    [ "$e" = b ] && expected=$root/pat-a
    range_is "$img" "$DIRECT_OFF" "$expected" "$e: the O_DIRECT pattern, after discard, is in the image"
    range_is "$img" "$CACHED_OFF" "$root/pat-b" "$e: the page-cache pattern is in the image"
    if [ "$e" = a ] && scratch_supports_holes; then
        # --discard=unmap: the discarded range is a hole in the raw file.
        got=$(map_extent_of "$(qemu-img map --output=json -f raw "$img" | map_summary)" \
            "$DISCARD_OFF" "$DISCARD_LEN")
        expect_eq "${got#* * }" "data=false zero=true" "a: the discarded range is unmapped"
    fi
    expect_true "$e: e2fsck -fn on the host" e2fsck -fn "$img"
    expect_eq "$(debugfs -R 'cat /hello.txt' "$img" 2>/dev/null)" "$MAGIC" "$e: /hello.txt"
    expect_eq "$(debugfs -R 'cat /after.txt' "$img" 2>/dev/null)" "$MAGIC after reconnect" \
        "$e: /after.txt (written after the reconnect)"
    expect_eq "$(debugfs -R 'cat /dir/f37' "$img" 2>/dev/null)" "file 37 of $e" "$e: /dir/f37"
    debugfs -R 'cat /dir/pattern.bin' "$img" >"$SCRATCH/pattern.bin" 2>/dev/null
    expect_true "$e: /dir/pattern.bin" cmp "$SCRATCH/pattern.bin" "$root/pat-b"
done

[ "$FAILURES" = 0 ] || show_logs
finish
