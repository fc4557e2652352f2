# shellcheck shell=bash
# test-rbd-lib.sh - a throw-away one-node Ceph cluster for the RBD tests
# (tests/tools/ceph-one-node.sh), started in $SCRATCH and stopped at exit,
# also on failure.  Source after lib.sh:
#
#   . "$(dirname "$0")/test-rbd-lib.sh"
#   rbd_cluster_start          # sets CONF; pool "rbd"; users admin and nbd
#   rbd_name IMAGE [OPTS]      # -> rbd:rbd/IMAGE:conf=$CONF[OPTS]
#
# Skips (77) when the Ceph packages are not installed.

need_tool ceph-mon ceph-osd ceph-authtool monmaptool ceph rbd qemu-img qemu-io
need_server
scratch_init

CEPH_TOOL=$SRCDIR/../tools/ceph-one-node.sh
CEPH_DIR=$SCRATCH/ceph
CONF=

rbd_cluster_stop() {
    [ -n "$CONF" ] && "$CEPH_TOOL" stop "$CEPH_DIR" >/dev/null 2>&1
    CONF=
}

rbd_cluster_start() {
    # The watchdog stops the cluster even if this script is killed.
    if ! CEPH_ONE_NODE_TTL=900 "$CEPH_TOOL" start "$CEPH_DIR" \
            >"$SCRATCH/ceph-start.out" 2>"$SCRATCH/ceph-start.log"; then
        sed 's/^/  ceph: /' "$SCRATCH/ceph-start.log" >&2
        fail "the one-node Ceph cluster did not start"
    fi
    CONF=$CEPH_DIR/ceph.conf
    ok "one-node Ceph cluster up"
}

# Stop the cluster before lib.sh's cleanup, keeping the exit status.
trap 'rc=$?; rbd_cluster_stop; (exit $rc); cleanup' EXIT

rbd_name() { echo "rbd:rbd/$1:conf=$CONF${2:-}"; }

# rbd_create IMAGE SIZE [ARGS...]
rbd_create() {
    local img=$1 size=$2
    shift 2
    rbd -c "$CONF" create --size "$size" "$@" "rbd/$img" ||
        fail "rbd create $img failed"
}

# rbd_export IMAGE[@SNAP] FILE: the image's bytes through a fresh librbd client.
rbd_export() {
    rm -f "$2"
    with_timeout 120 rbd -c "$CONF" export --no-progress "$1" "$2" >/dev/null 2>&1 ||
        fail "rbd export $1 failed"
}
