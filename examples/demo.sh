#!/bin/bash
# Install what is missing, build nbdstack, and serve a generated sparse
# demo disk on localhost until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-deps
[ -d build ] || meson setup build >/dev/null
meson compile -C build >/dev/null

img=${DEMO_IMAGE:-/var/tmp/nbdstack-demo.img}
port=${DEMO_PORT:-10809}
if [ ! -e "$img" ]; then
  # 1 GiB, almost all holes: a label at the start, 1 MiB of data in the middle.
  truncate -s 1G "$img"
  printf 'nbdstack demo disk\n' | dd of="$img" conv=notrunc status=none
  head -c 1M /dev/urandom | dd of="$img" bs=1M seek=512 conv=notrunc status=none
fi

uri="nbd://127.0.0.1:$port/demo"
cat <<MSG
Serving $img as $uri (Ctrl-C to stop). Try, in another terminal:
  nbdinfo $uri
  nbdinfo --map $uri
  qemu-img info $uri
  qemu-io -f raw $uri -c 'read -v 0 32'
MSG
exec build/server/nbdstack -t -e 0 -f raw -x demo -D "nbdstack demo disk" \
  -b 127.0.0.1 -p "$port" "$img"
