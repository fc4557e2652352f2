#!/bin/bash
# Cross-build the Win32 file driver and its tests with mingw-w64, and run
# them under Wine: the protocol-driver conformance table
# (tests/conformance/tests.c, the one the POSIX driver runs) with each
# I/O path of the layer, the open-flags test of the five cache modes, and
# the mapping of Win32 errors to the POSIX layer's errno values.  Ends with one line:
# "N passed, N failed".  Exits 0 with a SKIP line when mingw-w64 or Wine
# is missing.
#
#   tests/run-win32.sh [BUILD_DIR]      (default: build-win32)
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-win32}

if ! command -v x86_64-w64-mingw32-gcc-posix >/dev/null; then
  echo "SKIP: no x86_64-w64-mingw32-gcc-posix (apt-get install gcc-mingw-w64-x86-64)"
  exit 0
fi
# Debian's wine64 package has the loader outside PATH; the wine package
# adds /usr/bin/wine.
wine=
for w in wine64 /usr/lib/wine/wine64 wine; do
  if command -v "$w" >/dev/null; then
    wine=$w
    break
  fi
done
if [ -z "$wine" ]; then
  echo "SKIP: no wine64 (apt-get install wine64 wine)"
  exit 0
fi
wineserver=$(command -v wineserver || command -v /usr/lib/wine/wineserver64 || true)

# A prefix of our own, set before meson runs its sanity check under Wine,
# so nothing lands in ~/.wine.  No Mono or Gecko: nothing here needs them.
export WINEPREFIX
WINEPREFIX=$(mktemp -d /tmp/nbds-wine.XXXXXX) || exit 1
export WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
cleanup() {
  [ -n "$wineserver" ] && "$wineserver" -k 2>/dev/null
  rm -rf "$WINEPREFIX"
}
trap cleanup EXIT

# The first start of a prefix takes a while (about 20 s on a slow machine).
if ! timeout 180 "$wine" wineboot -i >/dev/null 2>&1; then
  echo "run-win32: wineboot failed or timed out"
  exit 1
fi

if [ -f "$build/build.ninja" ]; then
  meson setup --reconfigure "$build" >/dev/null || exit 1
else
  meson setup --cross-file cross/x86_64-w64-mingw32.txt "$build" >/dev/null ||
    exit 1
fi
meson compile -C "$build" >/dev/null || { meson compile -C "$build"; exit 1; }

status=0 passed=0 failed=0
# The conformance table once per I/O path of the layer (its aio key).
for run in conformance-win32:overlapped conformance-win32:threads \
           open-flags-win32: errors-win32:; do
  t=${run%%:*} aio=${run#*:}
  echo "== $t${aio:+ aio=$aio} (under $wine)"
  CONF_AIO=$aio timeout 600 "$wine" "$build/plugins/file/$t.exe" \
    >"$WINEPREFIX/out" 2>&1
  rc=$?
  out=$(tr -d '\r' <"$WINEPREFIX/out")
  echo "$out"
  last=$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
  if [ -z "$last" ]; then
    echo "$t: no summary line (exit status $rc)"
    failed=$((failed + 1))
    status=1
    continue
  fi
  read -r p _ f _ <<<"$last"
  passed=$((passed + p))
  failed=$((failed + f))
  [ "$rc" -eq 0 ] && [ "$f" -eq 0 ] || status=1
done
echo "$passed passed, $failed failed"
exit $status
