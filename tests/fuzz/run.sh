#!/bin/bash
# Build the libFuzzer targets with clang, ASan and UBSan in a build
# directory of their own, replay the regression inputs, then fuzz over the
# committed seed corpus for a bounded time.  Exits non-zero on any crash,
# 77 (skip) when clang or libFuzzer (libclang-rt-14-dev) is missing.
#
#   bash tests/fuzz/run.sh                  # 110 s in all
#   FUZZ_TIME=600 bash tests/fuzz/run.sh    # fuzz-qcow2 longer
#   FUZZ_HANDSHAKE_TIME=, FUZZ_PROTOCOL_TIME=, FUZZ_DEVEMU_TIME=: the others
#   FUZZ_BUILD=build-fuzz FUZZ_JOBS=2 ...   # build dir, parallel jobs
#
# New corpus entries go to $FUZZ_BUILD/corpus-NAME (not committed), crash
# inputs to $FUZZ_BUILD/artifacts/.  A crash input that should stay
# fixed belongs in tests/fuzz/regress/ (fuzz-qcow2's) or
# tests/fuzz/regress/fuzz-NAME/ (another target's), replayed first, every
# run.
#
# Each result (every regression input, the fuzzing run) is also a line of
# $FUZZ_BUILD/fuzz-testlog.json in the form of meson's testlog.json, for
# the tally of tests/run-all.sh.
set -uo pipefail
cd "$(dirname "$0")/../.."

time_limit=${FUZZ_TIME:-50}
build=${FUZZ_BUILD:-build-fuzz}
jobs=${FUZZ_JOBS:-1}

mkdir -p "$build"
testlog=$build/fuzz-testlog.json
: >"$testlog"
tally() {  # tally NAME OK|FAIL|SKIP
  printf '{"name": "%s", "result": "%s"}\n' "$1" "$2" >>"$testlog"
}

skip() {
  echo "SKIP fuzz: $*"
  tally fuzz-qcow2 SKIP
  exit 77
}

command -v clang >/dev/null || skip "clang is not installed (apt-get install clang)"
# libFuzzer ships with compiler-rt: check that clang can link a fuzzer.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
  'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)' \
  '{ (void) d; (void) n; return 0; }' >"$probe/p.c"
clang -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" \
  2>"$probe/err" ||
  skip "clang cannot link -fsanitize=fuzzer,address,undefined" \
       "(apt-get install libclang-rt-14-dev): $(head -1 "$probe/err")"

echo "== fuzz: building in $build"
setup_args=(-Dfuzz=true -Dtests=false -Dbuildtype=debugoptimized
            -Db_sanitize=address,undefined -Db_lundef=false
            -Dc_args=-fsanitize=fuzzer-no-link)
if [ -d "$build/meson-private" ]; then
  CC=clang meson setup --reconfigure "$build" "${setup_args[@]}" >/dev/null
else
  CC=clang meson setup "$build" "${setup_args[@]}" >/dev/null
fi || { echo "fuzz: meson setup failed"; tally fuzz-qcow2-build FAIL; exit 1; }
targets=(fuzz-qcow2 fuzz-devemu fuzz-protocol fuzz-handshake)
meson compile -C "$build" "${targets[@]}" >/dev/null ||
  { meson compile -C "$build" "${targets[@]}"
    tally fuzz-build FAIL
    exit 1; }

seeds=tests/fuzz/corpus/qcow2
regress=tests/fuzz/regress
work=$build/corpus-qcow2
artifacts=$build/artifacts
mkdir -p "$work" "$artifacts"

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
# Crash inputs go to $artifacts; libFuzzer's own code for a crash (77)
# would read as a skip.
fuzz_opts=(-timeout=30 -rss_limit_mb=4096 -malloc_limit_mb=1024
           -error_exitcode=1 -artifact_prefix="$artifacts/")
status=0

# regression inputs: fuzz-qcow2's in $regress, the others' in $regress/NAME
for target in "${targets[@]}"; do
  dir=$regress/$target
  [ "$target" = fuzz-qcow2 ] && dir=$regress
  mapfile -t inputs < <(find "$dir" -maxdepth 1 -type f ! -name '*.txt' \
                          ! -name '*.md' ! -name '.*' 2>/dev/null | sort)
  [ ${#inputs[@]} -gt 0 ] || continue
  echo "== fuzz: replaying ${#inputs[@]} regression inputs of $target"
  for f in "${inputs[@]}"; do
    if "$build/tests/fuzz/$target" "${fuzz_opts[@]}" "$f" \
         >"$build/regress.log" 2>&1; then
      echo "ok   $f"
      tally "fuzz-regress/${f##*/}" OK
    else
      echo "FAIL $f"
      tally "fuzz-regress/${f##*/}" FAIL
      grep -E -A30 "ERROR: |runtime error:|$target: " "$build/regress.log" |
        head -60
      status=1
    fi
  done
done

# fuzz NAME SECONDS CORPUS-DIR...: one bounded libFuzzer run, tallied.
fuzz() {
  local name=$1 secs=$2 log=$build/$1.log rc
  shift 2
  echo "== fuzz: $name for ${secs}s"
  "$build/tests/fuzz/$name" "${fuzz_opts[@]}" "${par[@]}" \
    -max_total_time="$secs" -close_fd_mask=2 -print_final_stats=1 "$@" \
    >"$log" 2>&1
  rc=$?
  # (-close_fd_mask=2: the layer logs every inconsistency of a hostile
  # image on stderr; sanitizer reports and the target's own messages still
  # go to the log.)
  grep -E "^INFO: Seed:|^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::" "$log" |
    tail -12
  if [ $rc -ne 0 ] || grep -qE "ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:|^==[0-9]+== ERROR: libFuzzer" "$log"; then
    echo "fuzz: $name FAILED (exit $rc); the report:"
    grep -E -B2 -A40 "ERROR: |runtime error:|$name: " "$log" | head -80
    ls -l "$artifacts"
    echo "fuzz: full log in $log; crash inputs in $artifacts/"
    tally "$name" FAIL
    status=1
  else
    echo "fuzz: $name: no crash"
    tally "$name" OK
  fi
}

if [ "$jobs" -gt 1 ]; then
  par=(-fork="$jobs" -ignore_crashes=0)
else
  par=()
fi
fuzz fuzz-qcow2 "$time_limit" "$work" "$seeds"
mkdir -p "$build/corpus-devemu"
fuzz fuzz-devemu "${FUZZ_DEVEMU_TIME:-25}" "$build/corpus-devemu"
mkdir -p "$build/corpus-protocol" "$build/corpus-handshake"
fuzz fuzz-protocol "${FUZZ_PROTOCOL_TIME:-15}" "$build/corpus-protocol" \
  tests/fuzz/corpus/protocol
fuzz fuzz-handshake "${FUZZ_HANDSHAKE_TIME:-20}" "$build/corpus-handshake" \
  tests/fuzz/corpus/handshake
exit $status
