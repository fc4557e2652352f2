#!/bin/bash
# Build nbdstack and run the whole test suite twice: as built, and under
# AddressSanitizer + UndefinedBehaviorSanitizer.  Also checks that the
# tree builds with clang.  Ends with one line: "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."

status=0
results=()

build() {
  local dir=$1; shift
  if [ -d "$dir" ]; then
    meson setup --reconfigure "$dir" "$@" >/dev/null || return 1
  else
    meson setup "$dir" "$@" >/dev/null || return 1
  fi
  meson compile -C "$dir" >/dev/null || { meson compile -C "$dir"; return 1; }
}

suite() {
  local dir=$1
  echo "== tests in $dir"
  meson test -C "$dir" --print-errorlogs --timeout-multiplier 3 || status=1
  results+=("$dir/meson-logs/testlog.json")
}

build build || exit 1
suite build

echo "== clang build"
CC=clang build build-clang -Dtests=false || status=1

echo "== Win32 file driver: mingw-w64 cross build, conformance tests under Wine"
win32_log=$(mktemp)
bash tests/run-win32.sh 2>&1 | tee "$win32_log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

build build-sanitize -Db_sanitize=address,undefined -Db_lundef=false || exit 1
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 suite build-sanitize
# A sanitizer report in a server that exits cleanly, or in a criterion
# worker, does not always change an exit code: look for the reports.
if grep -E "ERROR: (Address|Leak)Sanitizer|runtime error:" \
     build-sanitize/meson-logs/testlog.txt; then
  echo "sanitizer reports found (see build-sanitize/meson-logs/testlog.txt)"
  status=1
fi
bash tests/fuzz/run.sh || [ $? = 77 ] || status=1; results+=(build-fuzz/fuzz-testlog.json)

python3 - "$win32_log" "${results[@]}" <<'PY'
import json, re, sys
passed = failed = skipped = 0
# run-win32.sh's last "N passed, N failed" line is its total.
totals = [m for m in (re.fullmatch(r"(\d+) passed, (\d+) failed\s*", line)
                      for line in open(sys.argv.pop(1))) if m]
if totals:
    passed += int(totals[-1].group(1))
    failed += int(totals[-1].group(2))
for path in sys.argv[1:]:
    for line in open(path):
        r = json.loads(line)["result"]
        if r in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif r == "SKIP":
            skipped += 1
        else:
            failed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
PY
rm -f "$win32_log"
exit $status
