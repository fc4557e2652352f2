#!/usr/bin/python3
# SIGHUP re-reads the configuration file:
#   a client connected to an export that is then removed keeps reading and
#   writing, and its data reaches the file; a new client cannot open it
#   (GO: unknown export), LIST no longer shows it, and once the client
#   leaves the export is flushed and closed;
#   a new section appears; a changed one is withdrawn while a client of
#   the old one keeps it (with the old settings), and offered with its new
#   settings once that client has left and the old export is closed (its
#   image is never open twice; the new one sees what the old wrote); an
#   unchanged one keeps its stack and its client;
#   a bad file on reload changes nothing;
#   a removed export over an upstream NBD server (nbdkit, multi-conn: a
#   libnbd handle on each reactor) is closed on every reactor once its
#   clients leave, while the other reactors keep serving.
# Waits are for the server's own log lines, never for a time.
import json
import os
import shutil
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, sha256, skip  # noqa: E402
from nbdpeers import Peers  # noqa: E402
import nbdprobe as P  # noqa: E402

for tool in ("nbdinfo", "nbdkit"):
    if not shutil.which(tool):
        skip("%s not found" % tool)
import nbd  # noqa: E402  (python3-libnbd)

M = 1024 * 1024
t = Test()
keep_img = t.image("keep.img", 4 * M)
gone_img = t.image("gone.img", 4 * M)
change_img = t.image("change.img", 4 * M)
new_img = t.image("new.img", 2 * M)
conf = os.path.join(t.scratch, "nbdstack.conf")
ksock = os.path.join(t.scratch, "nbdkit.sock")
Peers(t).start("nbdkit", ["nbdkit", "-f", "-U", ksock, "memory", "8M"], ksock)

FIRST = """\
[keep]
file = keep.img
description = kept as it is

[gone]
file = gone.img

[change]
file = change.img
description = before

[upstream]
file = nbd+unix:///?socket=%s
""" % ksock

SECOND = """\
[keep]
file = keep.img
description = kept as it is

[change]
file = change.img
description = after
readonly = true

[new]
file = new.img
"""


def write(text):
    # A new file renamed over the old, as editors and config managers do.
    with open(conf + ".tmp", "w") as f:
        f.write(text)
    os.rename(conf + ".tmp", conf)


def listing():
    out = subprocess.run(["nbdinfo", "--list", "--json", srv.uri()], check=True,
                         capture_output=True).stdout
    return {e["export-name"]: e for e in json.loads(out)["exports"]}


def reload(nth):
    """SIGHUP; wait until the server says it is reloading for the nth
    time (the lines that say what it did follow)."""
    srv.proc.send_signal(signal.SIGHUP)
    return srv.wait_log("reloading (SIGHUP)", nth)


def connect(export):
    h = nbd.NBD()
    h.connect_uri(srv.uri(export))
    return h


write(FIRST)
srv = t.start_server("reload", ["--threads=2"], None, config=conf)
ex = listing()
t.eq(sorted(ex), ["change", "gone", "keep", "upstream"], "LIST before")
t.eq(ex["change"].get("description"), "before", "change: description before")

# Two clients of the upstream export, one per reactor (round robin).
on_up = [connect("upstream"), connect("upstream")]
for i, h in enumerate(on_up):
    h.pwrite(bytes([0x40 + i]) * 4096, i * 4096)
on_gone = connect("gone")
on_keep = connect("keep")
on_change = connect("change")
on_gone.pwrite(b"G" * 65536, 0)
on_keep.pwrite(b"K" * 65536, 0)
t.eq(on_change.is_read_only(), False, "change: writable before")

# ---- a good reload ----------------------------------------------------------
write(SECOND)
t.check(reload(1), "SIGHUP: the server reloads")
t.check(srv.wait_log("export 'new': added"), "log: new added")
t.check(srv.wait_log("export 'gone': removed"), "log: gone removed")
t.check(srv.wait_log("export 'change': changed"), "log: change changed")
t.check(srv.wait_log("export 'upstream': removed"), "log: upstream removed")
t.check("export 'keep'" not in srv.logtext().split("reloading (SIGHUP)")[1],
        "log: keep untouched")
ex = listing()
# "change" is withdrawn until its old client leaves: its image is never
# open in two stacks at once.
t.eq(sorted(ex), ["keep", "new"], "LIST after: gone and change (still in use) are not there, new is")
t.eq(ex["new"]["export-size"], 2 * M, "new: served")

# The client of the removed export goes on: writes, reads, flushes.
on_gone.pwrite(b"g" * 65536, 65536)
t.same(on_gone.pread(131072, 0), b"G" * 65536 + b"g" * 65536,
       "gone: its client reads and writes after the reload")
on_gone.flush()
# The client of the unchanged one too, on the same stack.
on_keep.pwrite(b"k" * 4096, 65536)
t.same(on_keep.pread(4096, 65536), b"k" * 4096, "keep: its client goes on")
# The client of the old "change" keeps the old settings: still writable.
on_change.pwrite(b"C" * 4096, 0)
on_change.flush()
t.same(on_change.pread(4096, 0), b"C" * 4096,
       "change: its old client still writes (old settings)")
try:
    connect("change")
    t.fail("change: a new client could open it while the old export is in use")
except nbd.Error:
    t.ok("change: no new client while its old client is connected")
t.check("export 'change': open again" not in srv.logtext(),
        "change: its new settings are not opened while the old export is")
on_change.shutdown()
t.check(srv.wait_log("export 'change': closed"), "change: the old export closed once its client left")
t.check(srv.wait_log("export 'change': open again"), "change: then opened with its new settings")
ex = listing()
t.eq(sorted(ex), ["change", "keep", "new"], "LIST: change is back")
t.eq(ex["change"].get("description"), "after", "change: the new description")
t.eq(ex["change"]["is_read_only"], True, "change: the new readonly = true")
h = connect("change")
t.eq(h.is_read_only(), True, "change: a new client gets read-only")
t.same(h.pread(4096, 0), b"C" * 4096, "change: the new export sees what the old one's client wrote")
h.shutdown()

# A new client cannot open the removed export (GO: unknown).
with P.Conn.connect(srv.sock) as c:
    c.handshake()
    rt, _ = c.info_opt("gone")
    t.eq(P.repname(rt), P.repname(P.REP_ERR_UNKNOWN), "gone: INFO refused")
    _, names = c.list_exports()
    t.eq(sorted(n for n, _ in names), ["change", "keep", "new"], "gone: not in LIST")
try:
    connect("gone")
    t.fail("gone: a new client could open it")
except nbd.Error:
    t.ok("gone: a new client cannot open it")

# Its last client leaves: it is flushed and closed.
t.check("export 'gone': closed" not in srv.logtext(),
        "gone: not closed while its client is connected")
on_gone.shutdown()
t.check(srv.wait_log("export 'gone': closed"), "gone: closed once its client left")
with open(gone_img, "rb") as f:
    t.same(f.read(131072), b"G" * 65536 + b"g" * 65536, "gone: its data is in gone.img")

# The upstream export's clients go on, then leave: it closes on both
# reactors, and the server goes on serving.
for i, h in enumerate(on_up):
    t.same(h.pread(4096, i * 4096), bytes([0x40 + i]) * 4096,
           "upstream: client %d reads after the reload" % i)
    h.shutdown()
t.check(srv.wait_log("export 'upstream': closed"), "upstream: closed once its clients left")
for _ in range(2):
    t.same(on_keep.pread(4096, 65536), b"k" * 4096, "keep: served after upstream closed")
    h = connect("new")
    h.pread(4096, 0)
    h.shutdown()

# ---- a bad file on reload -----------------------------------------------------
before = sha256(conf)
write(SECOND + "\n[broken]\nfile = new.img\ncache = sometimes\n")
t.check(reload(2), "SIGHUP with a bad file: the server is still there")
t.check(srv.wait_log("not reloaded: keeping the configuration as it was"),
        "log: a bad file is not applied")
t.check(srv.wait_log("nbdstack.conf:15: key 'cache': invalid cache mode"),
        "log: the bad file's line and key")
t.check(sha256(conf) != before, "(the file did change)")
t.eq(sorted(listing()), ["change", "keep", "new"], "a bad file changes nothing")
t.same(on_keep.pread(4096, 65536), b"k" * 4096, "keep: its client is untouched")

on_keep.shutdown()
t.stop_server_ok(srv)
with open(keep_img, "rb") as f:
    t.same(f.read(65536 + 4096), b"K" * 65536 + b"k" * 4096, "keep: data on disk")
t.finish()
