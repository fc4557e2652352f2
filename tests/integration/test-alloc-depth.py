#!/usr/bin/python3
"""qemu:allocation-depth (-A) side by side with qemu-nbd.

Through libnbd: which contexts LIST_META_CONTEXT offers (everything, the
"qemu:" and "base:" namespaces, exact names), BLOCK_STATUS with both
contexts selected at once (one chunk per context) with and without
REQ_ONE, and the depths of a three-deep qcow2 chain, a raw image and a
temporary overlay (-s) — each compared with real qemu-nbd on the same
image, and the chain's depths also with values known from how it was
made.  Without -A the context must not be offered.
"""
import os
import subprocess

from harness import Test, skip

import nbd

QEMU_NBD = os.environ.get("QEMU_NBD", "/usr/bin/qemu-nbd")
if not os.path.exists(QEMU_NBD):
    skip("qemu-nbd is not installed")

BASE = "base:allocation"
DEPTH = "qemu:allocation-depth"
K, M = 1024, 1024 * 1024

t = Test()
d = t.scratch


def run(*argv):
    subprocess.run(argv, check=True, cwd=d, stdout=subprocess.DEVNULL)


def qio(img, *cmds):
    argv = ["qemu-io", "-f", "qcow2"]
    for c in cmds:
        argv += ["-c", c]
    run(*argv, img)


# b1 (2M): data at 1M.  b2 (3M, over b1): data at 0.  top (4M, over b2):
# data at 128k, a zero cluster at 3584k.
run("qemu-img", "create", "-q", "-f", "qcow2", "b1.qcow2", "2M")
qio("b1.qcow2", "write -P 1 1M 64k")
run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "b1.qcow2", "-F", "qcow2",
    "b2.qcow2", "3M")
qio("b2.qcow2", "write -P 2 0 64k")
run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "b2.qcow2", "-F", "qcow2",
    "top.qcow2", "4M")
qio("top.qcow2", "write -P 3 128k 64k", "write -z 3584k 64k")
raw = t.image("disk.raw", 4 * M, [(M, b"x" * 4096)])


def listed(uri, queries):
    """The contexts LIST_META_CONTEXT returns for these queries."""
    h = nbd.NBD()
    h.set_opt_mode(True)
    for q in queries:
        h.add_meta_context(q)
    h.connect_uri(uri)
    got = []
    h.opt_list_meta_context(lambda name: got.append(name))
    h.opt_abort()
    return sorted(got)


def statuses(uri, size, req_one):
    """Every BLOCK_STATUS reply over the export with both contexts
    selected, walked in 1 MiB requests: [(context, offset, entries)]."""
    h = nbd.NBD()
    h.add_meta_context(BASE)
    h.add_meta_context(DEPTH)
    h.connect_uri(uri)
    both = (h.can_meta_context(BASE), h.can_meta_context(DEPTH))
    out = []
    flags = nbd.CMD_FLAG_REQ_ONE if req_one else 0
    for off in range(0, size, M):
        h.block_status(min(M, size - off), off,
                       lambda ctx, o, ents, err: out.append((ctx, o, list(ents))) or 0,
                       flags)
    h.shutdown()
    return both, out


def depth_at(replies, offset):
    """The depth of byte `offset` from the replies' depth extents."""
    for ctx, off, ents in replies:
        if ctx != DEPTH:
            continue
        for i in range(0, len(ents), 2):
            if off <= offset < off + ents[i]:
                return ents[i + 1]
            off += ents[i]
    return None


def compare(what, args, image, size):
    ref = t.start_server("ref-" + what, ["-r", "-t", "-A"] + args, image,
                         program=QEMU_NBD)
    dut = t.start_server("dut-" + what, ["-r", "-t", "-A"] + args, image)
    for queries in ([], ["qemu:"], ["base:"], [DEPTH], [BASE, DEPTH],
                    ["qemu:nonesuch"]):
        t.eq(listed(dut.uri(), queries), listed(ref.uri(), queries),
             "%s: LIST_META_CONTEXT %r vs qemu-nbd" % (what, queries))
    results = {}
    for req_one in (False, True):
        got = statuses(dut.uri(), size, req_one)
        want = statuses(ref.uri(), size, req_one)
        t.eq(got[0], (True, True), "%s: both contexts selected" % what)
        t.eq(got, want, "%s: BLOCK_STATUS replies%s vs qemu-nbd"
             % (what, " (REQ_ONE)" if req_one else ""))
        results[req_one] = got[1]
    t.stop_server_ok(dut)
    ref.stop()
    return results[False]


chain = compare("chain", ["-f", "qcow2"], os.path.join(d, "top.qcow2"), 4 * M)
for offset, depth, why in ((0, 2, "data in b2"), (64 * K, 0, "unallocated everywhere"),
                           (128 * K, 1, "data in top"), (M, 3, "data in b1"),
                           (2 * M + 4096, 3, "past b1's end, inside b2"),
                           (3 * M + 4096, 2, "past b2's end"),
                           (3584 * K, 1, "zero cluster in top")):
    t.eq(depth_at(chain, offset), depth, "chain: depth at %d (%s)" % (offset, why))
compare("raw", ["-f", "raw"], raw, 4 * M)
over = compare("overlay", ["-f", "qcow2", "-s"], os.path.join(d, "top.qcow2"), 4 * M)
t.eq(depth_at(over, 128 * K), 2, "overlay: the image's own data one deeper")

# Without -A, the context is not there.
plain = t.start_server("plain", ["-r", "-t", "-f", "qcow2"], os.path.join(d, "top.qcow2"))
t.eq(listed(plain.uri(), []), [BASE], "without -A: only base:allocation listed")
h = nbd.NBD()
h.add_meta_context(DEPTH)
h.connect_uri(plain.uri())
t.eq(h.can_meta_context(DEPTH), False, "without -A: qemu:allocation-depth not selected")
h.shutdown()
t.stop_server_ok(plain)
t.finish()
