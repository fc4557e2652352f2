#!/usr/bin/python3
"""SIGTERM with clients connected in the middle of writing.

Two libnbd clients each have 32 writes of 256 KiB queued (no FLUSH), and a
raw-socket client has sent a WRITE header and half its payload and then
stalls.  Once a few writes have been acknowledged the server gets SIGTERM.
It must drain and exit 0: every write it acknowledged is in the image
(through the block cache too, whose dirty blocks exist only in the
server's memory), every other write got an error or a closed connection
rather than silence (requests still in the socket when the server stops
reading are never received), and the half-sent write changed nothing.
That the exit flush is an fdatasync is test-cache-modes.py's business.
"""
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, libnbd  # noqa: E402
import nbdprobe as P  # noqa: E402

nbd = libnbd()

K = 1024
M = K * K
SIZE = 64 * M
PIECE = 256 * K
NWRITES = 32
STALL_OFF = 48 * M

CASES = [("raw", []), ("raw", ["--block-cache=4M"]), ("qcow2", [])]

t = Test()


def piece(client, i):
    return bytes([0x10 * (client + 1) + i % 16]) * PIECE


def offset(client, i):
    return client * NWRITES * PIECE + i * PIECE


def reap(h, cookies, outcome):
    """Record the outcome of every command that has one: 0 or an errno
    name (libnbd retires a command once it has reported it)."""
    for c in cookies:
        if c in outcome:
            continue
        try:
            if h.aio_command_completed(c):
                outcome[c] = 0
        except nbd.Error as e:
            outcome[c] = e.errno or str(e)


def settle(h, cookies, outcome, deadline):
    """Poll until every command has an outcome, "closed" for those still
    without one once the connection is gone."""
    while time.monotonic() < deadline:
        reap(h, cookies, outcome)
        if len(outcome) == len(cookies):
            return
        if h.aio_is_dead() or h.aio_is_closed():
            for c in cookies:
                outcome.setdefault(c, "closed")
            return
        try:
            h.poll(100)
        except nbd.Error:
            pass


for fmt, args in CASES:
    what = "%s %s" % (fmt, " ".join(args))
    img = os.path.join(t.scratch, "disk." + fmt)
    if fmt == "raw":
        t.image("disk.raw", SIZE)
    else:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, str(SIZE)], check=True)
    srv = t.start_server("d", ["-f", fmt, "-t", "-e", "0"] + args, img)

    stalled = P.Conn.connect(srv.sock)
    stalled.open("")
    stalled.send_request(P.CMD_WRITE, STALL_OFF, PIECE, payload=b"\xee" * (PIECE // 2))

    handles, cookies, outcome = [], [], []
    for client in range(2):
        h = srv.client()
        handles.append(h)
        cookies.append([h.aio_pwrite(piece(client, i), offset(client, i)) for i in range(NWRITES)])
        outcome.append({})
    # A few acknowledged, the rest still on their way.
    deadline = time.monotonic() + 30
    while sum(list(o.values()).count(0) for o in outcome) < 4 and time.monotonic() < deadline:
        for h, cs, out in zip(handles, cookies, outcome):
            h.poll(10)
            reap(h, cs, out)
    acked_before = sum(list(o.values()).count(0) for o in outcome)
    srv.proc.send_signal(signal.SIGTERM)

    deadline = time.monotonic() + 60
    for h, cs, out in zip(handles, cookies, outcome):
        settle(h, cs, out, deadline)
    try:
        rc = srv.proc.wait(60)
    except subprocess.TimeoutExpired:
        rc = "still running 60 s after SIGTERM"
    t.eq(rc, 0, "%s: exit status after SIGTERM with writes in flight" % what)
    srv.stop()

    acked = [(cl, i) for cl in range(2) for i, c in enumerate(cookies[cl]) if outcome[cl].get(c) == 0]
    others = [outcome[cl].get(c, "no outcome") for cl in range(2) for c in cookies[cl]
              if outcome[cl].get(c) != 0]
    print("# %s: %d writes acknowledged (%d after SIGTERM), the rest: %s"
          % (what, len(acked), len(acked) - acked_before, sorted(set(map(str, others)))))
    t.check(len(acked) >= 4, "%s: the writes acknowledged before SIGTERM count (%d)" % (what, len(acked)))
    t.check("no outcome" not in others, "%s: every write got a reply or a closed connection" % what)
    t.check(stalled.wait_closed(10), "%s: the stalled client's connection is closed" % what)

    if fmt == "qcow2":
        t.qemu_img_check(img, what)
    data = t.disk_bytes(img, fmt)
    bad = [(cl, i) for cl, i in acked if data[offset(cl, i):offset(cl, i) + PIECE] != piece(cl, i)]
    t.check(not bad, "%s: every acknowledged write is in the image%s" % (what, " (not: %s)" % bad[:4] if bad else ""))
    t.same(data[STALL_OFF:STALL_OFF + PIECE], bytes(PIECE), "%s: the half-sent write changed nothing" % what)
    os.unlink(img)

t.finish()
