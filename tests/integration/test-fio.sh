#!/bin/bash
# fio's nbd engine: random 4K writes at queue depth 32 with crc32c verify
# headers, verified in the same run and again by a separate verify-only pass
# on a new connection.
. "$(dirname "$0")/lib.sh"
need_tool fio
need_server
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio lacks the nbd ioengine"
scratch_init

cd "$SCRATCH" || fail "cd $SCRATCH"     # fio drops *-verify.state files in the cwd
img=$SCRATCH/disk.img
truncate -s 64M "$img"
start_server f -t "$img"

# Common job: randwrite covers every 4K block of 64 MiB exactly once
# (norandommap off, randrepeat on: the verify pass replays the same offsets).
job=(--ioengine=nbd "--uri=$(uri f)" --rw=randwrite --bs=4k --iodepth=32
    --size=64M --verify=crc32c --verify_fatal=1 --randrepeat=1 --output-format=json)

# fio_kb JSONFILE read|write: KiB the job moved that way (a verify_only run
# still counts its replayed writes, so only "read" means something there)
fio_kb() {
    /usr/bin/python3 -c '
import json, sys
print(json.load(open(sys.argv[1]))["jobs"][0][sys.argv[2]]["io_kbytes"])' "$1" "$2" 2>/dev/null
}

# fio_pass N WHAT FIO-ARGS...: one fio run (JSON in fioN.json) that must
# succeed
fio_pass() {
    local n=$1 what=$2
    shift 2
    if with_timeout 120 fio "$@" --output="$SCRATCH/fio$n.json" >"$SCRATCH/fio$n.out" 2>&1; then
        ok "$what"
    else
        sed 's/^/  fio: /' "$SCRATCH/fio$n.out" >&2
        check_fail "$what: failed"
    fi
}

# 1: write + verify in one run
fio_pass 1 "fio randwrite + crc32c verify" --name=write "${job[@]}"
# the verify phase reads back everything that was written
expect_eq "$(fio_kb "$SCRATCH/fio1.json" write)" 65536 "fio wrote 64 MiB"
expect_eq "$(fio_kb "$SCRATCH/fio1.json" read)" 65536 "fio verified (read back) 64 MiB"

# 2: verify-only pass on a new connection: the data must still be there
fio_pass 2 "fio verify-only pass" --name=write "${job[@]}" --verify_only=1
expect_eq "$(fio_kb "$SCRATCH/fio2.json" read)" 65536 "verify-only pass read 64 MiB"

stop_server_ok f

# 3: the verify pass must be able to fail: corrupt one block in the file and
# expect a fresh server + verify-only run to report it.
fill "$img" $((12345 * 4096)) 4096 0
start_server g -t "$img"
if with_timeout 120 fio --name=write "${job[@]}" --verify_only=1 --output="$SCRATCH/fio3.json" >"$SCRATCH/fio3.out" 2>&1; then
    check_fail "verify-only pass did not notice a corrupted block"
else
    ok "verify-only pass detects a corrupted block"
fi
stop_server_ok g

# 4: the worker-pool path (--aio=threads) and several reactors carry the
# same workload just as well.
rm -f "$img"; truncate -s 64M "$img"
start_server h -t --aio=threads --threads=3 "$img"
job[1]="--uri=$(uri h)"
fio_pass 4 "fio randwrite + verify with --aio=threads --threads=3" \
    --name=write "${job[@]}"
stop_server_ok h

# 5: the benchmark's other settings (tests/bench/run.sh): 1 MiB sequential
# writes at iodepth 32 (payloads larger than the input buffer), and 4k
# random writes over 4 connections at once (multi-conn; each job verifies
# its own 16 MiB).
start_server m -t -e 0 "$img"
bench=(--ioengine=nbd "--uri=$(uri m)" --iodepth=32 --verify=crc32c
       --verify_fatal=1 --group_reporting --output-format=json)
fio_pass 5 "fio 1M sequential write + verify at iodepth 32" \
    --name=seq "${bench[@]}" --rw=write --bs=1M --size=64M
expect_eq "$(fio_kb "$SCRATCH/fio5.json" read)" 65536 "1M pass verified 64 MiB"
fio_pass 6 "fio 4k randwrite + verify over 4 connections" \
    --name=mc "${bench[@]}" --rw=randwrite --bs=4k --numjobs=4 --size=16M \
    --offset_increment=16M
expect_eq "$(fio_kb "$SCRATCH/fio6.json" read)" 65536 "4 connections verified 64 MiB"
stop_server_ok m
finish
