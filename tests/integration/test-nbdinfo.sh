#!/bin/bash
# nbdinfo --json / --list: export size (incl. rounding and -o), name (-x),
# description (-D), transmission flags (writable, -r, -e), block sizes.
. "$(dirname "$0")/lib.sh"
need_tool nbdinfo
need_server
scratch_init

# info NAME [EXPORT]: nbdinfo --json of one export into $SCRATCH/NAME.json
info() {
    with_timeout 30 nbdinfo --json "$(uri "$1" "${2:-}")" >"$SCRATCH/$1.json" 2>"$SCRATCH/$1.nbdinfo.err" ||
        { cat "$SCRATCH/$1.nbdinfo.err" >&2; fail "nbdinfo --json $(uri "$1" "${2:-}") failed"; }
}
# field NAME KEY: a key of the first export in $SCRATCH/NAME.json
field() {
    /usr/bin/python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))["exports"][0].get(sys.argv[2], "<missing>")
print(str(v).lower() if isinstance(v, bool) else v)' "$SCRATCH/$1.json" "$2"
}

# --- sizes -------------------------------------------------------------------
truncate -s 1000 "$SCRATCH/odd.img"
start_server odd -t "$SCRATCH/odd.img"
info odd
expect_eq "$(field odd export-size)" 1024 "1000-byte file: export size rounded up to 512"
stop_server_ok odd

truncate -s 64M "$SCRATCH/big.img"
start_server off -t -o 4096 "$SCRATCH/big.img"
info off
expect_eq "$(field off export-size)" 67104768 "64 MiB file with -o 4096: export size"
stop_server_ok off

# --- writable export, default -e 1: name, description, flags, block sizes ---
start_server rw -t -x disk0 -D "scratch disk" "$SCRATCH/big.img"
info rw disk0
expect_eq "$(field rw export-size)" 67108864 "64 MiB file: export size"
expect_eq "$(field rw export-name)" disk0 "export name (-x)"
expect_eq "$(field rw description)" "scratch disk" "description (-D)"
expect_eq "$(field rw is_read_only)" false "writable: is_read_only"
for k in can_flush can_fua can_trim can_zero can_fast_zero can_df can_cache; do
    expect_eq "$(field rw $k)" true "writable: $k"
done
expect_eq "$(field rw can_multi_conn)" false "default -e 1: can_multi_conn"
expect_eq "$(field rw block_size_minimum)" 1 "block_size_minimum"
expect_eq "$(field rw block_size_preferred)" 4096 "block_size_preferred"
expect_eq "$(field rw block_size_maximum)" 33554432 "block_size_maximum"
expect_eq "$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["structured"])' "$SCRATCH/rw.json")" \
    True "structured replies negotiated"
ctx=$(/usr/bin/python3 -c 'import json,sys; print(",".join(json.load(open(sys.argv[1]))["exports"][0].get("contexts", [])))' "$SCRATCH/rw.json")
case ",$ctx," in *,base:allocation,*) ok "base:allocation context offered" ;;
*) check_fail "base:allocation not among contexts: '$ctx'" ;; esac

# A name the server does not export must not connect.
if with_timeout 30 nbdinfo --json "$(uri rw nosuchexport)" >/dev/null 2>&1; then
    check_fail "nbdinfo on an unknown export name succeeded"
else
    ok "unknown export name refused"
fi

# --list (needs -t: nbdinfo --list opens several connections)
with_timeout 30 nbdinfo --list --json "$(uri rw)" >"$SCRATCH/list.json" 2>"$SCRATCH/list.err" ||
    { cat "$SCRATCH/list.err" >&2; check_fail "nbdinfo --list failed"; }
listed=$(/usr/bin/python3 -c '
import json, sys
for e in json.load(open(sys.argv[1]))["exports"]:
    print("%s|%s|%s" % (e["export-name"], e.get("description", ""), e.get("export-size")))' "$SCRATCH/list.json")
expect_eq "$listed" "disk0|scratch disk|67108864" "nbdinfo --list: one export with name, description, size"
stop_server_ok rw

# --- read-only export --------------------------------------------------------
start_server ro -t -r "$SCRATCH/big.img"
info ro
expect_eq "$(field ro is_read_only)" true "-r: is_read_only"
for k in can_flush can_fua can_df can_cache; do
    expect_eq "$(field ro $k)" true "-r: $k"
done
for k in can_trim can_zero can_fast_zero; do
    expect_eq "$(field ro $k)" false "-r: $k"
done
stop_server_ok ro

# --- multi-conn ----------------------------------------------------------------
for e in 2 0; do    # 0 = no limit
    start_server mc$e -t -e $e "$SCRATCH/big.img"
    info mc$e
    expect_eq "$(field mc$e can_multi_conn)" true "-e $e: can_multi_conn"
    expect_eq "$(field mc$e is_read_only)" false "-e $e: is_read_only"
    stop_server_ok mc$e
done
start_server ro2 -t -r -e 2 "$SCRATCH/big.img"
info ro2
expect_eq "$(field ro2 can_multi_conn)" true "-r -e 2: can_multi_conn"
stop_server_ok ro2

expect_eq "$(sha "$SCRATCH/big.img")" "$(truncate -s 64M "$SCRATCH/ref.img" && sha "$SCRATCH/ref.img")" \
    "image untouched by info/list"
finish
