#!/bin/bash
# test-tls.sh - TLS from real clients (nbdinfo, qemu-img, qemu-io, nbdcopy)
# over TCP and Unix sockets: X.509 with and without client verification,
# PSK, --tls=on/require/off, qemu-nbd's --object/--tls-creds spelling run
# side by side with the real qemu-nbd, and bad TLS command lines.
# Wire-level TLS checks (FORCEDTLS replies, STARTTLS twice, garbage and
# stalled handshakes) are in test-tls-wire.py.
. "$(dirname "$0")/lib.sh"
. "$SRCDIR/test-tls-lib.sh"

need_server
need_tool certtool psktool nbdinfo nbdcopy qemu-img qemu-io qemu-nbd
scratch_init

PKI=$SCRATCH/pki
make_pki "$PKI" || fail "cannot make certificates with certtool/psktool"
M=$((1024 * 1024))
DISK=$SCRATCH/disk.img
truncate -s $((64 * M)) "$DISK"

# start_tcp NAME PROGRAM ARGS...: PROGRAM -f raw on 127.0.0.1 at a free
# port (in $PORT), persistent, up to 8 clients, serving $DISK.
start_tcp() {
    local name=$1 prog=$2
    shift 2
    local pidf=$SCRATCH/$name.pid log=$SCRATCH/$name.log i pid
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    rm -f "$pidf"
    "$prog" -f raw -b 127.0.0.1 -p "$PORT" --pid-file="$pidf" -t -e 8 "$@" "$DISK" \
        </dev/null >"$log" 2>&1 &
    pid=$!
    SERVER_PID[$name]=$pid
    for ((i = 0; i < START_TIMEOUT * 20; i++)); do
        if [ -s "$pidf" ] && python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 2).close()' "$PORT" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            sed 's/^/  server: /' "$log" >&2
            fail "$name: $prog $* did not start"
        fi
        sleep 0.05
    done
    fail "$name: $prog $* not ready after ${START_TIMEOUT}s"
}

# The qemu client side: credentials object and NBD image options.
qcreds() { echo "tls-creds-x509,id=tls0,dir=$PKI/$1,endpoint=client"; }
qopts() { echo "driver=nbd,server.type=inet,server.host=localhost,server.port=$1,tls-creds=tls0"; }
nbds() { echo "nbds://localhost:$1?tls-certificates=$PKI/$2"; }

# attempt CMD...: append "ok" or "refused" to $outcome.
attempt() {
    if with_timeout 60 "$@" >/dev/null 2>&1; then outcome+="ok "; else outcome+="refused "; fi
}

# x509_outcomes PORT: which clients get in, as one line of text.
x509_outcomes() {
    outcome=
    attempt nbdinfo --size "$(nbds "$1" client)"
    attempt nbdinfo --size "$(nbds "$1" client-nocert)"
    attempt nbdinfo --size "$(nbds "$1" client-other)"
    attempt nbdinfo --size "nbd://localhost:$1"
    attempt qemu-img info --object "$(qcreds client)" --image-opts "$(qopts "$1")"
    attempt qemu-img info --object "$(qcreds client-nocert)" --image-opts "$(qopts "$1")"
    echo "$outcome"
}

# ---- X.509, --tls=require: data through qemu-io, qemu-img, nbdcopy --------

start_tcp req "$NBDSTACK" --tls=require --tls-certificates="$PKI/server"
expect_eq "$(nbdinfo --size "$(nbds "$PORT" client)" 2>&1)" $((64 * M)) \
    "nbdinfo nbds:// sees the export"
expect_true "plaintext nbdinfo nbd:// is refused" \
    eval "! nbdinfo --size nbd://localhost:$PORT >/dev/null 2>&1"

out=$(qemu-io --object "$(qcreds client)" --image-opts "$(qopts "$PORT")" \
      -c "write -P 0xab $M $M" -c "read -P 0xab $M $M" 2>&1)
expect_true "qemu-io writes and reads back 1M over TLS" \
    eval "! grep -qiE 'error|fail|mismatch' <<<\"\$out\""
expect_bytes "$DISK" $M $M 0xab "qemu-io's write over TLS"

random_fill "$SCRATCH/src.img" 0 $((24 * M)) 7
truncate -s $((64 * M)) "$SCRATCH/src.img"
expect_true "qemu-img convert into the export over TLS" \
    qemu-img convert -n --object "$(qcreds client)" -f raw "$SCRATCH/src.img" \
    --target-image-opts "$(qopts "$PORT")"
expect_eq "$(sha "$DISK")" "$(sha "$SCRATCH/src.img")" "the image after qemu-img convert over TLS"
expect_true "qemu-img compare over TLS (json: spelling)" \
    qemu-img compare --object "$(qcreds client)" -f raw "$SCRATCH/src.img" \
    "json:{\"driver\":\"nbd\",\"server\":{\"type\":\"inet\",\"host\":\"localhost\",\"port\":\"$PORT\"},\"tls-creds\":\"tls0\"}"

rm -f "$SCRATCH/copy.img"
expect_true "nbdcopy out of the export over TLS" \
    with_timeout 120 nbdcopy "$(nbds "$PORT" client)" "$SCRATCH/copy.img"
expect_eq "$(sha "$SCRATCH/copy.img")" "$(sha "$SCRATCH/src.img")" "nbdcopy's copy over TLS"
random_fill "$SCRATCH/src2.img" 0 $((64 * M)) 8
expect_true "nbdcopy into the export over TLS (4 connections)" \
    with_timeout 120 nbdcopy -C 4 "$SCRATCH/src2.img" "$(nbds "$PORT" client)"
expect_eq "$(sha "$DISK")" "$(sha "$SCRATCH/src2.img")" "the image after nbdcopy over TLS"
stop_server_ok req

# Over a Unix socket: nbds+unix.
start_server ureq --tls=require --tls-certificates="$PKI/server" "$DISK"
expect_eq "$(nbdinfo --size "nbds+unix:///?socket=$(sock ureq)&tls-certificates=$PKI/client" 2>&1)" \
    $((64 * M)) "nbdinfo nbds+unix:// sees the export"
expect_true "plaintext nbd+unix:// is refused" \
    eval "! nbdinfo --size '$(uri ureq)' >/dev/null 2>&1"
stop_server_ok ureq

# ---- --tls=on: both; no TLS option: plaintext only -------------------------

start_tcp on "$NBDSTACK" --tls=on --tls-certificates="$PKI/server"
expect_eq "$(nbdinfo --size "$(nbds "$PORT" client)" 2>&1)" $((64 * M)) "--tls=on: a TLS client"
expect_eq "$(nbdinfo --size "nbd://localhost:$PORT" 2>&1)" $((64 * M)) "--tls=on: a plaintext client"
stop_server_ok on

start_tcp plain "$NBDSTACK"
expect_eq "$(nbdinfo --size "nbd://localhost:$PORT" 2>&1)" $((64 * M)) "no TLS option: a plaintext client"
expect_true "no TLS option: nbds:// is refused" \
    eval "! nbdinfo --size '$(nbds "$PORT" client)' >/dev/null 2>&1"
stop_server_ok plain

# ---- client certificates ---------------------------------------------------

start_tcp verify "$NBDSTACK" --tls=require --tls-certificates="$PKI/server" --tls-verify-peer
expect_eq "$(x509_outcomes "$PORT")" "ok refused refused refused ok refused " \
    "--tls-verify-peer: right cert / none / other CA / plaintext / qemu-img cert / qemu-img none"
expect_eq "$(nbdinfo --size "$(nbds "$PORT" client)" 2>&1)" $((64 * M)) \
    "--tls-verify-peer: the server still serves after refusals"
stop_server_ok verify

# ca-crl.pem revokes the client certificate (dh-params.pem is loaded too).
start_tcp crl "$NBDSTACK" --tls=require --tls-certificates="$PKI/server-crl" --tls-verify-peer
expect_eq "$(x509_outcomes "$PORT")" "refused refused refused refused refused refused " \
    "--tls-verify-peer with ca-crl.pem: the revoked certificate is refused too"
stop_server_ok crl
start_tcp crl "$NBDSTACK" --tls=require --tls-certificates="$PKI/server-crl"
expect_eq "$(nbdinfo --size "$(nbds "$PORT" client-nocert)" 2>&1)" $((64 * M)) \
    "ca-crl.pem and dh-params.pem without verification: clients get in"
stop_server_ok crl

# ---- qemu-nbd's spelling, side by side with qemu-nbd -----------------------

for vp in "" ",verify-peer=off"; do
    obj="tls-creds-x509,id=tls0,dir=$PKI/server,endpoint=server$vp"
    start_tcp qx "$NBDSTACK" --object "$obj" --tls-creds tls0
    ours=$(x509_outcomes "$PORT")
    fill "$SCRATCH/pat" 0 $M 0x5c
    out=$(qemu-io --object "$(qcreds client)" --image-opts "$(qopts "$PORT")" \
          -c "write -P 0x5c 0 $M" -c "read -P 0x5c 0 $M" 2>&1)
    expect_true "--object x509$vp: qemu-io writes and reads back" \
        eval "! grep -qiE 'error|fail|mismatch' <<<\"\$out\""
    stop_server_ok qx
    start_tcp qemu qemu-nbd --object "$obj" --tls-creds tls0
    theirs=$(x509_outcomes "$PORT")
    stop_server qemu
    expect_eq "$ours" "$theirs" "--object x509$vp --tls-creds: who gets in, nbdstack vs qemu-nbd"
done
expect_eq "$ours" "ok ok ok refused ok ok " "verify-peer=off: any TLS client, no plaintext"

# PSK: nbdkit's --tls-psk=FILE and qemu's tls-creds-psk directory.
psk_outcomes() {
    outcome=
    attempt nbdinfo --size "nbds://alice@localhost:$1?tls-psk-file=$PKI/psk/keys.psk"
    attempt nbdinfo --size "nbds://alice@localhost:$1?tls-psk-file=$PKI/psk-wrong/keys.psk"
    attempt nbdinfo --size "nbd://localhost:$1"
    attempt qemu-img info --object "tls-creds-psk,id=tls0,dir=$PKI/psk,username=alice,endpoint=client" \
        --image-opts "$(qopts "$1")"
    attempt qemu-img info --object "tls-creds-psk,id=tls0,dir=$PKI/psk-wrong,username=alice,endpoint=client" \
        --image-opts "$(qopts "$1")"
    echo "$outcome"
}
start_tcp psk "$NBDSTACK" --tls=require --tls-psk="$PKI/psk/keys.psk"
expect_eq "$(psk_outcomes "$PORT")" "ok refused refused ok refused " \
    "--tls-psk: right key / wrong key / plaintext / qemu-img right / qemu-img wrong"
stop_server_ok psk
obj="tls-creds-psk,id=tls0,dir=$PKI/psk,endpoint=server"
start_tcp qpsk "$NBDSTACK" --object "$obj" --tls-creds tls0
ours=$(psk_outcomes "$PORT")
stop_server_ok qpsk
start_tcp qemu qemu-nbd --object "$obj" --tls-creds tls0
theirs=$(psk_outcomes "$PORT")
stop_server qemu
expect_eq "$ours" "$theirs" "--object tls-creds-psk --tls-creds: who gets in, nbdstack vs qemu-nbd"

# ---- bad TLS command lines: a clear error, exit 1 --------------------------

bad_cmdline() {
    local what=$1 err rc
    shift
    err=$(with_timeout 20 "$NBDSTACK" -f raw -k "$SCRATCH/bad.sock" "$@" "$DISK" 2>&1 </dev/null)
    rc=$?
    expect_eq "$rc" 1 "$what: exit status"
    expect_true "$what: says why ($err)" eval "grep -qi 'tls\|creds\|object\|endpoint\|certificate\|psk' <<<\"\$err\""
}
bad_cmdline "--tls=on without credentials" --tls=on
bad_cmdline "--tls=maybe" --tls=maybe --tls-certificates="$PKI/server"
bad_cmdline "a directory without a server certificate" --tls=on --tls-certificates="$PKI/client"
bad_cmdline "--tls-verify-peer without a CA certificate" --tls-certificates="$PKI/psk" --tls-verify-peer
bad_cmdline "a missing PSK file" --tls=on --tls-psk="$PKI/nothing.psk"
bad_cmdline "--tls-creds naming no object" --tls-creds nosuch
bad_cmdline "an endpoint=client object" --object "tls-creds-x509,id=t,dir=$PKI/server,endpoint=client" --tls-creds t
bad_cmdline "an unknown object property" --object "tls-creds-x509,id=t,dir=$PKI/server,endpoint=server,colour=red" --tls-creds t
bad_cmdline "--tls-creds with --tls" --object "tls-creds-x509,id=t,dir=$PKI/server,endpoint=server" --tls-creds t --tls=on

finish
