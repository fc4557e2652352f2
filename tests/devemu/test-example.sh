#!/bin/bash
# Run examples/devemu/scripted against nbdkit memory and check what it
# printed and what reached the server.  Usage: test-example.sh PROGRAM
set -euo pipefail
command -v nbdkit >/dev/null || { echo "skipped: nbdkit not found"; exit 77; }
prog=$1
dir=$(mktemp -d /tmp/devemu-example-XXXXXX)
trap 'kill $(cat $dir/pid 2>/dev/null) 2>/dev/null; rm -rf $dir' EXIT
nbdkit -U $dir/sock -P $dir/pid --filter=log memory 64M logfile=$dir/log
out=$("$prog" "nbd+unix:///?socket=$dir/sock")
echo "$out"
grep -q "read back matches" <<<"$out"
grep -q "tag 4   status 1" <<<"$out"           # OUT past the end: IOERR
grep -q "VWC 0x07" <<<"$out"
grep -q "tag 13  status 0x0000" <<<"$out"       # Set Features VWC=0
grep -q "tag 21  status 0x50 error 0x00" <<<"$out"
# the FUA write arrived with FUA; the WCE switches flushed
grep -q "Write id=.* count=0x2000 fua=1" $dir/log
test "$(grep -c 'Flush id=' $dir/log)" -ge 3
echo ok
