#!/bin/bash
# Process lifetime: SIGTERM with an idle client, --fork + --pid-file
# readiness, exit after the first client without -t, -e 1 serialising
# clients, and one clear stderr line for bad command lines.
. "$(dirname "$0")/lib.sh"
need_tool nbdinfo
need_server
scratch_init

img=$SCRATCH/disk.img
truncate -s 16M "$img"
fill "$img" 0 4096 0x42

# idle_client SOCK READYFILE RESULTFILE: background client that negotiates,
# reads, touches READYFILE, then idles until the server closes the
# connection (at most 30 s) and writes "closed" or "open" to RESULTFILE.
idle_client() {
    /usr/bin/python3 - "$@" <<'EOF' &
import sys
sys.path.insert(0, sys.argv[4])
import nbdprobe as P
sock, ready, result = sys.argv[1:4]
try:
    c = P.Conn.connect(sock, timeout=30)
    c.open("")
    assert c.pread(0, 4096) == b"\x42" * 4096
    open(ready, "w").close()
    open(result, "w").write("closed" if c.wait_closed(30) else "open")
except Exception as e:
    open(result, "w").write("error: %s" % e)
EOF
    EXTRA_PIDS+=($!)
}

# wait_file PATH SECONDS
wait_file() {
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        [ -e "$1" ] && return 0
        sleep 0.05
    done
    return 1
}

# --- 1. SIGTERM with a connected idle client ---------------------------------
start_server term -t "$img"
idle_client "$(sock term)" "$SCRATCH/ready1" "$SCRATCH/result1" "$SRCDIR"
wait_file "$SCRATCH/ready1" 15 || fail "idle client did not connect: $(cat "$SCRATCH/result1" 2>/dev/null)"
# The idle client never leaves by itself: a server that waited for it
# would run until the bound (generous: the machine may be loaded).
STOP_TIMEOUT=30 stop_server term
expect_eq "$STOP_RC" 0 "SIGTERM with an idle client: exit status (124 = still running after 30 s)"
wait_file "$SCRATCH/result1" 10
expect_eq "$(cat "$SCRATCH/result1" 2>/dev/null)" closed "idle client sees the connection closed"
expect_true "socket file removed at exit" test ! -e "$(sock term)"

# --- 2. --fork --pid-file: ready when --fork returns --------------------------
fsock=$SCRATCH/fork.sock
fpid=$SCRATCH/fork.pid
if with_timeout 20 "$NBDSTACK" -f raw -k "$fsock" --pid-file="$fpid" --fork -t "$img" \
    >"$SCRATCH/fork.out" 2>&1 </dev/null; then
    ok "--fork returned 0"
else
    cat "$SCRATCH/fork.out" >&2
    fail "--fork failed"
fi
# No waiting at all here: everything must be ready already.
expect_true "--fork: pid file exists on return" test -s "$fpid"
dpid=$(cat "$fpid" 2>/dev/null)
case "$dpid" in '' | *[!0-9]*) fail "pid file does not hold a pid: '$dpid'" ;; esac
expect_true "--fork: pid file names a live process" kill -0 "$dpid"
expect_true "--fork: socket connectable on return" socket_connectable "$fsock"
size=$(with_timeout 20 nbdinfo --size "nbd+unix:///?socket=$fsock")
expect_eq "$size" 16777216 "--fork: nbdinfo --size on return"
kill -TERM "$dpid" 2>/dev/null
if wait_pid_exit "$dpid" 10; then ok "--fork daemon exits on SIGTERM"; else
    check_fail "--fork daemon still running 10 s after SIGTERM"
    kill -9 "$dpid" 2>/dev/null
fi

# --- 3. without -t: exit after the first client disconnects --------------------
start_server once "$img"
sleep 0.3
expect_true "without -t: still running before any client" kill -0 "${SERVER_PID[once]}"
size=$(with_timeout 20 nbdinfo --size "$(uri once)")
expect_eq "$size" 16777216 "without -t: first client served"
opid=${SERVER_PID[once]}
if wait_pid_exit "$opid" 10; then
    wait "$opid"
    rc=$?
    unset 'SERVER_PID[once]'
    expect_eq "$rc" 0 "without -t: exit status after the first client left"
else
    check_fail "without -t: server still running 10 s after the first client left"
fi

# --- 4. -e 1 serialises clients; -e 2 does not ----------------------------------
cat >"$SCRATCH/shared.py" <<'EOF'
import sys, time
sys.path.insert(0, sys.argv[3])
import nbdprobe as P
sock, nshared = sys.argv[1], int(sys.argv[2])
a = P.Conn.connect(sock)
a.open("")
b = P.Conn.connect(sock)        # the kernel accepts it into the backlog
b.sock.settimeout(1.5)
try:
    b.read_greeting()
    early = True
except TimeoutError:
    early = False
except Exception as e:           # socket.timeout is TimeoutError on 3.10+
    early = "error: %s" % e
print("second client greeted while the first is connected:", early)
a.pread(0, 4096)                 # the first client is still served
a.disconnect()
b.sock.settimeout(10)
t0 = time.monotonic()
if early is not True:
    b.read_greeting()            # must arrive now that the first client left
b.send(b"\0\0\0\3")              # client flags: FIXED_NEWSTYLE | NO_ZEROES
b.go("")
ok = b.pread(0, 4096) == b"\x42" * 4096
print("second client served after the first left:", ok, "after %.1fs" % (time.monotonic() - t0))
b.disconnect()
EOF
for e in 1 2; do
    start_server sh$e -t -e $e "$img"
    out=$(with_timeout 60 /usr/bin/python3 "$SCRATCH/shared.py" "$(sock sh$e)" $e "$SRCDIR" 2>&1)
    echo "$out" | sed 's/^/  /'
    if [ $e = 1 ]; then want=False; else want=True; fi
    expect_eq "$(echo "$out" | sed -n 's/^second client greeted while the first is connected: //p')" $want \
        "-e $e: second concurrent client greeted at once"
    expect_eq "$(echo "$out" | sed -n 's/^second client served after the first left: \([A-Za-z]*\).*/\1/p')" True \
        "-e $e: second client served"
    stop_server_ok sh$e
done

# --- 5. bad command lines: one clear stderr line, non-zero exit ------------------
# bad_cmdline WHAT REGEX ARGS...: run the server, expect exit 1..123 within
# 10 s and exactly one non-empty line on stderr, matching REGEX (grep -iE).
bad_cmdline() {
    local what=$1 needle=$2
    shift 2
    rm -f "$SCRATCH/bad.sock"
    with_timeout 10 "$NBDSTACK" "$@" >"$SCRATCH/bad.out" 2>"$SCRATCH/bad.err" </dev/null
    local rc=$?
    if [ "$rc" -ge 1 ] && [ "$rc" -le 123 ]; then ok "$what: exit status $rc"; else
        check_fail "$what: exit status $rc (want 1..123; 124 = hung)"
    fi
    local lines
    lines=$(grep -c . "$SCRATCH/bad.err")
    if [ "$what" = "unknown option" ] || [ "$what" = "no FILE argument" ]; then
        known_divergence qemu-nbd "adds a second line: Try \`qemu-nbd --help'"
    fi
    expect_eq "$lines" 1 "$what: lines on stderr"
    if grep -qiE -- "$needle" "$SCRATCH/bad.err"; then ok "$what: message matches '$needle'"; else
        check_fail "$what: stderr does not mention '$needle': $(head -3 "$SCRATCH/bad.err")"
    fi
    [ "$what" = "missing image file" ] &&
        known_divergence qemu-nbd "creates the socket before opening the image and leaves it behind"
    expect_true "$what: no socket left behind" test ! -e "$SCRATCH/bad.sock"
}
bs=$SCRATCH/bad.sock
bad_cmdline "unknown option" "--bogus-option" -f raw -k "$bs" --bogus-option "$img"
bad_cmdline "missing image file" "$SCRATCH/missing.img" -f raw -k "$bs" "$SCRATCH/missing.img"
bad_cmdline "no FILE argument" "argument|file|image" -f raw -k "$bs"
bad_cmdline "bad -e value" "abc" -f raw -k "$bs" -e abc "$img"
bad_cmdline "bad --cache mode" "bogus" -f raw -k "$bs" --cache=bogus "$img"
bad_cmdline "bad --discard mode" "bogus" -f raw -k "$bs" --discard=bogus "$img"
bad_cmdline "bad --aio mode" "bogus" -f raw -k "$bs" --aio=bogus "$img"
bad_cmdline "bad --detect-zeroes mode" "bogus" -f raw -k "$bs" --detect-zeroes=bogus "$img"
bad_cmdline "offset past the end of the image" "offset|-o" -f raw -k "$bs" -o 32M "$img"

finish
