# shellcheck shell=bash
# qcow2-lib.sh - helpers shared by the test-qcow2-*.sh integration tests.
# Source it after lib.sh:
#     . "$(dirname "$0")/lib.sh"
#     . "$SRCDIR/qcow2-lib.sh"
#
# The server under test is $NBDSTACK (qemu-nbd's command line); the
# reference is always the real qemu-nbd ($QEMU_NBD), which the maps and the
# allocation shapes are compared against.

QEMU_NBD=${QEMU_NBD:-/usr/bin/qemu-nbd}

# ---- servers ---------------------------------------------------------------

# qstart NAME PROGRAM ARGS... : like lib.sh's start_server, but runs PROGRAM
# with exactly ARGS (plus -k/--pid-file; no implicit "-f raw"), and does not
# exit the test when the server fails to start: it prints the server's log,
# records a failure (unless QSTART_QUIET=1) and returns 1.  QSTART_CWD=DIR
# starts the server from DIR.  Must not be called in a subshell.
qstart() {
    local name=$1 prog=$2
    shift 2
    local sock=$SCRATCH/$name.sock pidf=$SCRATCH/$name.pid log=$SCRATCH/$name.log
    rm -f "$sock" "$pidf"
    (cd "${QSTART_CWD:-.}" && exec "$prog" -k "$sock" --pid-file="$pidf" "$@") </dev/null >"$log" 2>&1 &
    local pid=$!
    SERVER_PID[$name]=$pid
    SERVER_SOCK[$name]=$sock
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
            QSTART_RC=$?
            unset 'SERVER_PID[$name]'
            if [ "${QSTART_QUIET:-0}" != 1 ]; then
                sed 's/^/  server: /' "$log" >&2
                check_fail "server '$name' exited with status $QSTART_RC during start-up: $prog $*"
            fi
            return 1
        fi
        sleep 0.05
    done
    QSTART_RC=124
    stop_server "$name" KILL
    if [ "${QSTART_QUIET:-0}" != 1 ]; then
        sed 's/^/  server: /' "$log" >&2
        check_fail "server '$name' not ready after ${START_TIMEOUT}s: $prog $*"
    fi
    return 1
}

# dut NAME ARGS... IMAGE: the server under test, qcow2 (add -r etc. in ARGS).
dut() {
    local name=$1
    shift
    qstart "$name" "$NBDSTACK" -f qcow2 "$@"
}

# ref NAME ARGS... IMAGE: the reference, real qemu-nbd -f qcow2.
ref() {
    local name=$1
    shift
    qstart "$name" "$QEMU_NBD" -f qcow2 "$@"
}

# expect_refused NAME KEYWORD_ERE WHAT PROGRAM ARGS...: the server must
# refuse to start: exit with a non-zero status (not a signal), without
# ever serving, printing a one-line error (one non-empty line on stderr)
# that matches KEYWORD_ERE (grep -iE).  Honours known_divergence for the
# whole check.
expect_refused() {
    local name=$1 kw=$2 what=$3
    shift 3
    local xf=$XFAIL_NEXT
    XFAIL_NEXT=
    if QSTART_QUIET=1 qstart "$name" "$@"; then
        stop_server "$name"
        if [ -n "$xf" ]; then
            echo "XFAIL - $what: server started and served ($SERVER_KIND: $xf)"
        else
            check_fail "$what: server started instead of refusing the image"
        fi
        return 1
    fi
    local log=$SCRATCH/$name.log msg
    msg=$(grep -v '^[[:space:]]*$' "$log" | head -3 | tr '\n' '|')
    if [ "$QSTART_RC" -ge 124 ]; then
        sed 's/^/  server: /' "$log" >&2
        check_fail "$what: server died with status $QSTART_RC (crash or hang?) instead of a clean refusal"
    elif ! grep -qiE "$kw" "$log"; then
        if [ -n "$xf" ]; then
            echo "XFAIL - $what: refused, but the message does not match /$kw/: $msg ($SERVER_KIND: $xf)"
        else
            check_fail "$what: refused (status $QSTART_RC) but the error does not match /$kw/: $msg"
        fi
        return 1
    elif [ "$(grep -c '[^[:space:]]' "$log")" -ne 1 ]; then
        check_fail "$what: refused, but the error is not one line: $msg"
    else
        ok "$what: refused (status $QSTART_RC): $(grep -iE -m1 "$kw" "$log")"
    fi
}

# ---- clients ---------------------------------------------------------------

# qio_uri NAME CMDS...: one qemu-io session on the export NAME (-f raw).
# Fails the check (and returns 1) if qemu-io exits non-zero or reports an
# error.  QIO_RO=1 opens read-only.
qio_uri() {
    local name=$1
    shift
    qio_run "nbd $name" raw "$(uri "$name")" "$@"
}

# qio_run WHAT FORMAT TARGET CMDS...: one qemu-io session, -f FORMAT TARGET,
# one -c per CMD.  Example: qio_run oracle raw "$oracle" "write -P 1 0 4k"
qio_run() {
    local what=$1 fmt=$2 target=$3
    shift 3
    local args=() c
    for c in "$@"; do args+=(-c "$c"); done
    if ! with_timeout 120 qemu-io ${QIO_RO:+-r} -f "$fmt" "$target" "${args[@]}" >"$SCRATCH/io.out" 2>&1; then
        sed 's/^/  qemu-io: /' "$SCRATCH/io.out" >&2
        check_fail "$what: qemu-io failed: $*"
        return 1
    fi
    if grep -qiE 'fail|error|invalid|denied|Pattern verification' "$SCRATCH/io.out"; then
        sed 's/^/  qemu-io: /' "$SCRATCH/io.out" >&2
        check_fail "$what: qemu-io reported an error: $*"
        return 1
    fi
    return 0
}

# nbdmap NAME [CONTEXT]: nbdinfo --map of the export (totals not needed).
nbdmap() {
    with_timeout 60 nbdinfo --map${2:+=$2} "$(uri "$1")" 2>&1
}

# ---- images ----------------------------------------------------------------

# qimg_check IMG WHAT [ALLOWED_RCS]: qemu-img check exit status must be in
# ALLOWED_RCS (default "0"); prints check's output on failure.
qimg_check() {
    local img=$1 what=$2 allowed=${3:-0} rc
    with_timeout 120 qemu-img check "$img" >"$SCRATCH/check.out" 2>&1
    rc=$?
    case " $allowed " in
    *" $rc "*) ok "$what: qemu-img check exit $rc" ;;
    *)
        sed 's/^/  check: /' "$SCRATCH/check.out" >&2
        check_fail "$what: qemu-img check exit $rc (allowed: $allowed)"
        return 1
        ;;
    esac
}

# qimg_compare A B WHAT [compare args...]: qemu-img compare A B must exit 0.
qimg_compare() {
    local a=$1 b=$2 what=$3
    shift 3
    if with_timeout 180 qemu-img compare "$@" "$a" "$b" >"$SCRATCH/cmp.out" 2>&1; then
        ok "$what: qemu-img compare identical"
    else
        sed 's/^/  compare: /' "$SCRATCH/cmp.out" >&2
        check_fail "$what: qemu-img compare $* $a $b says they differ (or failed)"
        return 1
    fi
}

# qmap_shape IMG [qemu-img map args...]: the allocation shape of a qcow2
# from `qemu-img map --output=json`, one line per extent, neighbours that
# agree merged: "START LENGTH data=B zero=B depth=N present=B host=yes|no"
# (present=false: unallocated in the whole chain; host: a host offset is
# reported, i.e. ZERO_ALLOC vs ZERO_PLAIN, NORMAL vs compressed).
qmap_shape() {
    qemu-img map --output=json "$@" | /usr/bin/python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    k = (e["data"], e["zero"], e.get("depth", 0), e.get("present", True), "offset" in e)
    if out and out[-1][2] == k and out[-1][0] + out[-1][1] == e["start"]:
        out[-1][1] += e["length"]
    else:
        out.append([e["start"], e["length"], k])
for s, n, (d, z, dep, p, h) in out:
    print(s, n, "data=%s zero=%s depth=%d present=%s host=%s"
          % (str(d).lower(), str(z).lower(), dep, str(p).lower(), "yes" if h else "no"))
'
}

# incompat_bits IMG: the qcow2 incompatible_features word (header 72..79)
# as a decimal number (0 for v2 images).
incompat_bits() {
    /usr/bin/python3 -c '
import struct, sys
with open(sys.argv[1], "rb") as f:
    h = f.read(80)
print(struct.unpack(">I", h[4:8])[0] >= 3 and struct.unpack(">Q", h[72:80])[0] or 0)' "$1"
}

# poke IMG OFFSET HEXBYTES: write raw bytes (e.g. "ffffffff") at OFFSET, the
# printf|dd way iotest 080 does it.
poke() {
    local img=$1 off=$2 hex=$3 esc="" i
    for ((i = 0; i < ${#hex}; i += 2)); do esc+="\\x${hex:i:2}"; done
    # shellcheck disable=SC2059
    printf "$esc" | dd of="$img" bs=1 seek="$((off))" conv=notrunc status=none
}

# peek_be IMG OFFSET BYTES: big-endian unsigned integer at OFFSET (decimal).
peek_be() {
    /usr/bin/python3 -c '
import sys
f, off, n = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3], 0)
with open(f, "rb") as fh:
    fh.seek(off)
    print(int.from_bytes(fh.read(n), "big"))' "$@"
}

# nbdops NAME OP...: one libnbd connection to export NAME, one request per
# OP ("r OFF LEN", "w OFF LEN" writes 0x5a bytes, "z OFF LEN" write-zeroes,
# "f" flush); prints one line per OP: "OP: ok" or "OP: EIO" (the errno the
# server replied with), or "OP: DISCONNECTED" once the connection is gone.
nbdops() {
    local name=$1
    shift
    with_timeout 60 /usr/bin/python3 - "$(uri "$name")" "$@" <<'PYEOF' 2>&1
import errno, sys
sys.path.insert(0, "/usr/lib/python3/dist-packages")
import nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
gone = False
for op in sys.argv[2:]:
    f = op.split()
    if gone:
        print("%s: DISCONNECTED" % op)
        continue
    try:
        if f[0] == "r":
            h.pread(int(f[2], 0), int(f[1], 0))
        elif f[0] == "w":
            h.pwrite(b"\x5a" * int(f[2], 0), int(f[1], 0))
        elif f[0] == "z":
            h.zero(int(f[2], 0), int(f[1], 0))
        elif f[0] == "f":
            h.flush()
        print("%s: ok" % op)
    except nbd.Error as e:
        if e.errnum:
            print("%s: %s" % (op, errno.errorcode.get(e.errnum, str(e.errnum))))
        else:
            print("%s: DISCONNECTED (%s)" % (op, e.string))
            gone = True
PYEOF
}

# peek_hex IMG OFFSET: the big-endian u64 at OFFSET as 0x%016x.
peek_hex() {
    /usr/bin/python3 -c '
import sys
with open(sys.argv[1], "rb") as fh:
    fh.seek(int(sys.argv[2], 0))
    print("0x%016x" % int.from_bytes(fh.read(8), "big"))' "$@"
}
