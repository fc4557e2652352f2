# shellcheck shell=bash
# lib.sh - shared helpers for nbdstack's shell integration tests.
# Source it first thing:   . "$(dirname "$0")/lib.sh"
#
# Environment:
#   NBDSTACK  server program (qemu-nbd's command line).  Default:
#             $MESON_BUILD_ROOT/server/nbdstack, else <repo>/build/server/nbdstack.
#             NBDSTACK=qemu-nbd runs the suite against the peer.
#   SRCDIR    this directory (default: where lib.sh lives).
#   TMPDIR    parent of the scratch directory (default /tmp).
#
# Exit codes: 0 pass, 1 fail, 77 skip (a required external tool is missing).

set -u
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH   # nbdsh needs Debian's python3
export LC_ALL=C

SRCDIR=${SRCDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
TEST_NAME=$(basename "$0")

if [ -z "${NBDSTACK:-}" ]; then
    if [ -n "${MESON_BUILD_ROOT:-}" ]; then
        NBDSTACK=$MESON_BUILD_ROOT/server/nbdstack
    else
        NBDSTACK=$SRCDIR/../../build/server/nbdstack
    fi
fi
# Which server are we testing?  Only used to mark the few asserts where
# nbdstack follows the NBD spec and qemu-nbd does not (see known_divergence).
SERVER_KIND=nbdstack
case "$(basename "$NBDSTACK")" in qemu-nbd*) SERVER_KIND=qemu-nbd ;; esac

FAILURES=0

# ---- reporting -------------------------------------------------------------

# fail MSG...: print a clear message and exit 1 (the EXIT trap cleans up).
fail() {
    echo "FAIL: $TEST_NAME: $*" >&2
    exit 1
}

# check_fail MSG...: record a failure but keep going; finish() exits 1.
check_fail() {
    echo "FAIL: $TEST_NAME: $*" >&2
    FAILURES=$((FAILURES + 1))
}

ok() { echo "ok - $*"; }

skip() {
    echo "SKIP: $TEST_NAME: $*" >&2
    exit 77
}

# known_divergence PEER WHY: call just before an expect_eq/expect_true whose
# failure is expected with that peer (nbdstack follows the spec or a stricter
# rule there); with that peer a failure of that one check prints XFAIL.
XFAIL_NEXT=
known_divergence() {
    if [ "$SERVER_KIND" = "$1" ]; then XFAIL_NEXT=$2; fi
}

# expect_eq ACTUAL EXPECTED WHAT
expect_eq() {
    local xf=$XFAIL_NEXT
    XFAIL_NEXT=
    if [ "$1" = "$2" ]; then
        local shown=${2//$'\n'/; }
        [ ${#shown} -le 120 ] || shown="${shown:0:117}..."
        ok "$3 = $shown"
    elif [ -n "$xf" ]; then
        echo "XFAIL - $3: got '$1', nbdstack must give '$2' ($SERVER_KIND: $xf)"
    else
        check_fail "$3: got '$1', expected '$2'"
    fi
}

# expect_true WHAT CMD...: CMD must succeed.
expect_true() {
    local what=$1
    shift
    local xf=$XFAIL_NEXT
    XFAIL_NEXT=
    if "$@"; then
        ok "$what"
    elif [ -n "$xf" ]; then
        echo "XFAIL - $what ($SERVER_KIND: $xf)"
    else
        check_fail "$what (command failed: $*)"
    fi
}

finish() {
    if [ "$FAILURES" -ne 0 ]; then
        echo "$TEST_NAME: $FAILURES check(s) failed" >&2
        exit 1
    fi
    echo "$TEST_NAME: PASS"
    exit 0
}

# need_tool PROG...: skip (77) unless every PROG is on PATH.
need_tool() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || skip "required tool '$t' not found"
    done
}

# need_server: the server binary must exist (a missing build is a failure,
# not a skip: the suite exists to test it).
need_server() {
    if ! command -v "$NBDSTACK" >/dev/null 2>&1 && [ ! -x "$NBDSTACK" ]; then
        fail "server program not found: $NBDSTACK (build it, or set NBDSTACK)"
    fi
}

# ---- scratch directory and cleanup ----------------------------------------

SCRATCH=
declare -A SERVER_PID=()     # name -> pid of servers we started
declare -A SERVER_SOCK=()    # name -> unix socket path
EXTRA_PIDS=()                # other background helpers to kill at exit

cleanup() {
    local rc=$?
    local n p
    for p in "${EXTRA_PIDS[@]:-}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null
    done
    for n in "${!SERVER_PID[@]}"; do
        stop_server "$n" >/dev/null 2>&1
    done
    if [ -n "$SCRATCH" ] && [ -d "$SCRATCH" ]; then
        if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && [ -n "${KEEP_SCRATCH:-}" ]; then
            echo "scratch kept: $SCRATCH" >&2
        else
            rm -rf "$SCRATCH"
        fi
    fi
    exit "$rc"
}

# scratch_init: make $SCRATCH (mktemp -d under ${TMPDIR:-/tmp}) and arrange
# for servers and the directory to go away at exit.
scratch_init() {
    SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/nbdstack-it.XXXXXX") || fail "mktemp -d failed"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# map_summary: read `qemu-img map --output=json` on stdin, print one line
# "START LENGTH data=BOOL zero=BOOL" per extent, merging neighbours that
# agree (so two maps of the same layout compare equal as text).
map_summary() {
    /usr/bin/python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    k = (e["data"], e["zero"])
    if out and out[-1][2] == k and out[-1][0] + out[-1][1] == e["start"]:
        out[-1][1] += e["length"]
    else:
        out.append([e["start"], e["length"], k])
for s, n, (d, z) in out:
    print(s, n, "data=%s" % str(d).lower(), "zero=%s" % str(z).lower())
'
}

# map_extent_of SUMMARY START LENGTH: the map_summary line whose extent
# contains all of [START, START+LENGTH), or nothing.
map_extent_of() {
    echo "$1" | /usr/bin/python3 -c '
import sys
s, n = int(sys.argv[1]), int(sys.argv[2])
for line in sys.stdin:
    f = line.split()
    if int(f[0]) <= s and s + n <= int(f[0]) + int(f[1]):
        print(line.strip())
' "$2" "$3"
}

# scratch_supports_holes: true if $SCRATCH punches and reports holes at 4 KiB
# granularity (ext4/xfs/btrfs do; some tmpfs/overlay setups do not).
scratch_supports_holes() {
    local f=$SCRATCH/.holeprobe got
    truncate -s 1M "$f" || return 1
    dd if=/dev/urandom of="$f" bs=4096 count=1 seek=8 conv=notrunc status=none || return 1
    got=$(qemu-img map --output=json -f raw "$f" 2>/dev/null | map_summary) || return 1
    rm -f "$f"
    [ "$got" = "0 32768 data=false zero=true
32768 4096 data=true zero=false
36864 1011712 data=false zero=true" ]
}

# scratch_init_holes: scratch_init on a filesystem where holes work (tries
# ${TMPDIR:-/tmp}, then /var/tmp, then $MESON_BUILD_ROOT).
scratch_init_holes() {
    local d
    for d in "${TMPDIR:-/tmp}" /var/tmp "${MESON_BUILD_ROOT:-}"; do
        [ -n "$d" ] && [ -d "$d" ] && [ -w "$d" ] || continue
        TMPDIR=$d scratch_init
        scratch_supports_holes && return 0
        rm -rf "$SCRATCH"
        SCRATCH=
    done
    fail "no scratch filesystem with 4K hole support (tried \$TMPDIR, /var/tmp, build dir)"
}

# ---- images ----------------------------------------------------------------

# fill FILE OFFSET LENGTH BYTE: write LENGTH bytes of value BYTE (0-255).
fill() {
    /usr/bin/python3 - "$@" <<'EOF'
import os, sys
f, off, n, b = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3], 0), int(sys.argv[4], 0)
fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
os.pwrite(fd, bytes([b]) * n, off)
os.close(fd)
EOF
}

# random_fill FILE OFFSET LENGTH [SEED]: deterministic pseudo-random bytes.
random_fill() {
    /usr/bin/python3 - "$@" <<'EOF'
import os, random, sys
f, off, n = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3], 0)
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1
rng = random.Random(seed)
fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
os.pwrite(fd, rng.randbytes(n), off)
os.close(fd)
EOF
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# expect_bytes FILE OFFSET LENGTH BYTE WHAT: every byte of the range is BYTE.
expect_bytes() {
    local got
    got=$(/usr/bin/python3 -c '
import sys
f, off, n, b = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3], 0), int(sys.argv[4], 0)
with open(f, "rb") as fh:
    fh.seek(off)
    data = fh.read(n)
if len(data) != n:
    print("short file: %d of %d bytes at %d" % (len(data), n, off))
else:
    bad = next((i for i, x in enumerate(data) if x != b), None)
    print("ok" if bad is None else "byte 0x%02x at offset %d" % (data[bad], off + bad))
' "$@")
    expect_eq "$got" ok "$5: [$2,+$3) of $(basename "$1") is all $4"
}

# ---- servers ---------------------------------------------------------------

# start_server NAME ARGS... FILE
# Starts "$NBDSTACK -f raw -k $SCRATCH/NAME.sock --pid-file=$SCRATCH/NAME.pid
# ARGS... FILE" in the background (stderr to $SCRATCH/NAME.log) and waits (at
# most $START_TIMEOUT s, default 15) until the pid file exists and the socket
# is ready.  Must not be called in a subshell ($(...)).
START_TIMEOUT=${START_TIMEOUT:-15}
start_server() {
    local name=$1
    shift
    local sock=$SCRATCH/$name.sock pidf=$SCRATCH/$name.pid log=$SCRATCH/$name.log
    rm -f "$sock" "$pidf"
    "$NBDSTACK" -f raw -k "$sock" --pid-file="$pidf" "$@" </dev/null >"$log" 2>&1 &
    local pid=$!
    SERVER_PID[$name]=$pid
    SERVER_SOCK[$name]=$sock
    # Readiness is the pid file (nbdstack writes it only once the socket
    # listens) plus the socket.  A connect probe is added only for persistent
    # servers: without -t a probe connection might count as "the first client".
    local probe=: a
    for a in "$@"; do
        case "$a" in -t | --persistent) probe=socket_connectable ;; esac
    done
    local i
    for ((i = 0; i < START_TIMEOUT * 20; i++)); do
        if [ -s "$pidf" ] && [ -S "$sock" ] && $probe "$sock"; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid"
            local rc=$?
            unset 'SERVER_PID[$name]'
            sed 's/^/  server: /' "$log" >&2
            fail "server '$name' exited with status $rc during start-up: $NBDSTACK $*"
        fi
        sleep 0.05
    done
    sed 's/^/  server: /' "$log" >&2
    fail "server '$name' not ready after ${START_TIMEOUT}s (pid file/socket missing): $NBDSTACK $*"
}

# socket_connectable PATH: a unix stream connect succeeds (closed at once,
# nothing sent).
socket_connectable() {
    /usr/bin/python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
s.connect(sys.argv[1])
s.close()
EOF
}

# stop_server NAME [SIGNAL]: signal the server (default TERM), wait at most
# $STOP_TIMEOUT s (default 10), then SIGKILL.  Sets STOP_RC to its exit
# status (128+n if killed by signal n; 124 if it had to be SIGKILLed) and
# returns it.  Must not be called in a subshell.
STOP_TIMEOUT=${STOP_TIMEOUT:-10}
STOP_RC=
stop_server() {
    local name=$1 sig=${2:-TERM}
    local pid=${SERVER_PID[$name]:-}
    STOP_RC=0
    [ -n "$pid" ] || return 0
    unset 'SERVER_PID[$name]'
    kill -s "$sig" "$pid" 2>/dev/null
    if wait_pid_exit "$pid" "$STOP_TIMEOUT"; then
        wait "$pid" 2>/dev/null
        STOP_RC=$?
    else
        kill -9 "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        STOP_RC=124
    fi
    return "$STOP_RC"
}

# stop_server_ok NAME: stop_server, and check it exited 0 (SIGTERM is a clean
# shutdown; anything else means a crash or a hang).
stop_server_ok() {
    stop_server "$1"
    expect_eq "$STOP_RC" 0 "server '$1' exit status after SIGTERM"
    if [ "$STOP_RC" != 0 ]; then sed 's/^/  server: /' "$SCRATCH/$1.log" >&2; fi
}

# wait_pid_exit PID SECONDS: true once PID is gone (or a zombie), false on timeout.
wait_pid_exit() {
    local pid=$1 secs=$2 i st
    for ((i = 0; i < secs * 20; i++)); do
        st=$(ps -o stat= -p "$pid" 2>/dev/null) || return 0
        case "$st" in Z*) return 0 ;; esac
        sleep 0.05
    done
    return 1
}

# server_exited NAME: true if the server process has already gone.
server_exited() {
    local pid=${SERVER_PID[$1]:-}
    [ -z "$pid" ] && return 0
    ! kill -0 "$pid" 2>/dev/null || [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" == Z* ]]
}

# sock NAME -> path of the server's unix socket
sock() { echo "${SERVER_SOCK[$1]}"; }

# uri NAME [EXPORT] -> nbd+unix:///EXPORT?socket=PATH
uri() { echo "nbd+unix:///${2:-}?socket=${SERVER_SOCK[$1]}"; }

# with_timeout SECONDS CMD...: run CMD with a hard time limit.
with_timeout() {
    local t=$1
    shift
    timeout --kill-after=5 "$t" "$@"
}
