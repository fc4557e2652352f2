#!/usr/bin/python3
# --config: the configuration file.
#   A good file with exports of every kind (a raw file given by a path
#   relative to the file, a read-only qcow2, an nbdkit plugin with
#   plugin.KEY parameters, a block cache): nbdinfo --list shows each with
#   its description, size and read-only flag, and data written reaches the
#   right file.  The command line overrides [server] (its -k replaces
#   [server]'s socket, and so do --single and socket activation).
#   Bad files, one per kind of mistake: one line FILE:LINE: key 'KEY': ...,
#   exit status 1, nothing listening.  An export whose image cannot be
#   opened: one line naming it, exit 1.
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import NBDSTACK, Test, skip  # noqa: E402

for tool in ("nbdinfo", "nbdsh", "qemu-img", "nbdkit"):
    if not shutil.which(tool):
        skip("%s not found" % tool)
import nbd  # noqa: E402  (python3-libnbd, with nbdsh)

M = 1024 * 1024
t = Test()
raw = t.image("raw.img", 8 * M)
qcow2 = os.path.join(t.scratch, "disk.qcow2")
subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", qcow2, "16M"], check=True)
subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", qcow2],
               check=True, stdout=subprocess.DEVNULL)


def write_config(name, text):
    path = os.path.join(t.scratch, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def exports_of(srv, uri=None):
    """nbdinfo --list --json -> {name: export}"""
    out = subprocess.run(["nbdinfo", "--list", "--json", uri or srv.uri()],
                         check=True, capture_output=True).stdout
    return {e["export-name"]: e for e in json.loads(out)["exports"]}


# ---- a good file -----------------------------------------------------------
unused_sock = os.path.join(t.scratch, "from-config.sock")
good = write_config("good.conf", """\
# several exports, of every kind
[server]
socket = %s      ; the command line's -k overrides it
threads = 2
busy-poll = 50

[raw]
file = raw.img
description = a raw disk

[qcow2]
file = %s
format = qcow2
readonly = true
cache = writethrough
description = a read-only qcow2

[mem]
plugin = memory
plugin.size = 4M
description = an nbdkit plugin

[cached]
file = raw.img
readonly = yes
block-cache = 1M
block-cache-block = 64K
discard = unmap
detect-zeroes = unmap
allocation-depth = on
""" % (unused_sock, qcow2))
srv = t.start_server("good", [], None, config=good)
t.check(not os.path.exists(unused_sock),
        "the command line's -k replaces [server]'s socket")
ex = exports_of(srv)
t.eq(sorted(ex), ["cached", "mem", "qcow2", "raw"], "LIST: every section")
t.eq(ex["raw"].get("description"), "a raw disk", "raw: description")
t.eq(ex["qcow2"].get("description"), "a read-only qcow2", "qcow2: description")
t.eq(ex["mem"].get("description"), "an nbdkit plugin", "mem: description")
t.eq(ex["raw"]["export-size"], 8 * M, "raw: size")
t.eq(ex["qcow2"]["export-size"], 16 * M, "qcow2: virtual size")
t.eq(ex["mem"]["export-size"], 4 * M, "mem: plugin.size reached the plugin")
t.eq(ex["raw"]["is_read_only"], False, "raw: writable")
t.eq(ex["qcow2"]["is_read_only"], True, "qcow2: readonly = true")
t.eq(ex["cached"]["is_read_only"], True, "cached: readonly = yes")
t.check("qemu:allocation-depth" in ex["cached"].get("contexts", []),
        "cached: allocation-depth = on offers qemu:allocation-depth")

h = nbd.NBD()
h.connect_uri(srv.uri("qcow2"))
t.same(h.pread(4096, 0), b"\x5a" * 4096, "qcow2: data through the format")
h.shutdown()
h = nbd.NBD()
h.connect_uri(srv.uri("raw"))
h.pwrite(b"config!" * 100, 1 * M)
h.flush()
h.shutdown()
with open(raw, "rb") as f:
    f.seek(1 * M)
    t.same(f.read(700), b"config!" * 100, "raw: a write reached raw.img (relative path)")
h = nbd.NBD()
h.connect_uri(srv.uri("mem"))
h.pwrite(b"\x01" * 512, 0)
t.same(h.pread(512, 0), b"\x01" * 512, "mem: the plugin serves reads and writes")
h.shutdown()
t.stop_server_ok(srv)

# --single replaces [server]'s listener: one client on stdin, one export.
h = nbd.NBD()
h.set_export_name("mem")
h.connect_command([NBDSTACK, "--config", good, "--single"])
t.eq(h.get_size(), 4 * M, "--single with --config: the client gets its export")
h.shutdown()
# So does socket activation (libnbd passes a listening socket).
h = nbd.NBD()
h.set_export_name("raw")
h.connect_systemd_socket_activation([NBDSTACK, "--config", good])
t.eq(h.get_size(), 8 * M, "socket activation with --config: served")
h.shutdown()
t.check(not os.path.exists(unused_sock), "socket activation: [server]'s socket unused")

# ---- examples/nbdstack.conf runs as its comment says ---------------------------
example_dir = os.path.join(t.scratch, "example")
os.mkdir(example_dir)
example = os.path.join(example_dir, "nbdstack.conf")
shutil.copy(os.path.join(os.environ.get("SRCDIR", os.path.dirname(__file__)),
                         "..", "..", "examples", "nbdstack.conf"), example)
with open(os.path.join(example_dir, "disk.img"), "wb") as f:
    f.truncate(64 * M)
subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2",
                os.path.join(example_dir, "golden.qcow2"), "64M"], check=True)
srv = t.start_server("example", [], None, config=example)
ex = exports_of(srv)
t.eq(sorted(ex), ["disk", "golden", "scratch"], "examples/nbdstack.conf: its exports")
t.eq(ex["golden"]["is_read_only"], True, "examples/nbdstack.conf: golden read-only")
t.stop_server_ok(srv)

# ---- bad files ------------------------------------------------------------
sock = os.path.join(t.scratch, "bad.sock")


def run_once(config, *extra):
    """Start the server on config, expecting it to stop at once.
    -> (exit status, stderr)"""
    r = subprocess.run([NBDSTACK, "--config", config, "-k", sock] + list(extra),
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    return r.returncode, r.stderr.decode(errors="replace").strip()


def refused(name, text, line, want, key=None):
    """The server refuses the file with one line naming it and line."""
    path = write_config(name + ".conf", text)
    rc, err = run_once(path)
    prefix = "nbdstack: %s:%d: " % (path, line)
    if key:
        prefix += "key '%s': " % key
    t.eq(rc, 1, "%s: exit status" % name)
    t.check(err.startswith(prefix) and want in err and "\n" not in err,
            "%s: one line %r...%r (got %r)" % (name, prefix, want, err))
    t.check(not os.path.exists(sock), "%s: nothing listens" % name)


refused("unknown-key", "[a]\nfile = raw.img\nbogus = 1\n", 3, "unknown key", "bogus")
refused("unknown-server-key", "[server]\nsize = 1\n[a]\nfile = raw.img\n", 2,
        "unknown key in [server]", "size")
refused("duplicate-section", "[a]\nfile = raw.img\n\n[a]\nfile = raw.img\n", 4,
        "section [a]: given twice (first at line 1)")
refused("duplicate-key", "[a]\nfile = raw.img\ncache = none\ncache = unsafe\n", 4,
        "given twice", "cache")
refused("missing-file", "[a]\nfile = raw.img\n[b]\nreadonly = true\n", 3,
        "export 'b' needs a file or a plugin", "file")
refused("empty-section", "[a]\nfile = raw.img\n[b]\n", 3,
        "export 'b' needs a file or a plugin", "file")
refused("file-and-plugin", "[a]\nfile = raw.img\nplugin = memory\n", 3,
        "file and plugin cannot both be given", "plugin")
refused("plugin-param-without-plugin", "[a]\nfile = raw.img\nplugin.size = 1M\n", 2,
        "need a plugin", "file")
refused("bad-size", "[a]\nfile = raw.img\nblock-cache = 12Q\n", 3,
        "'12Q' is not a size", "block-cache")
refused("bad-number", "[server]\nport = 99999\n[a]\nfile = raw.img\n", 2,
        "invalid port '99999'", "port")
refused("bad-busy-poll", "[server]\nbusy-poll = 2000000\n[a]\nfile = raw.img\n", 2,
        "invalid busy-poll time '2000000'", "busy-poll")
refused("bad-offset", "[a]\nfile = raw.img\noffset = -1\n", 3,
        "'-1' is not an offset", "offset")
refused("bad-cache", "[a]\nfile = raw.img\ncache = fast\n", 3,
        "invalid cache mode 'fast'", "cache")
refused("bad-discard", "[a]\nfile = raw.img\ndiscard = sometimes\n", 3,
        "invalid discard mode", "discard")
refused("bad-readonly", "[a]\nfile = raw.img\nreadonly = maybe\n", 3,
        "'maybe' is not a boolean", "readonly")
refused("bad-format", "[a]\nfile = raw.img\nformat = vmdk\n", 3,
        "unknown image format 'vmdk'", "format")
refused("bad-tls", "[a]\nfile = raw.img\ntls = always\n", 3,
        "invalid tls mode 'always'", "tls")
refused("bad-allow", "[a]\nfile = raw.img\nallow = 10.0.0.0/99\n", 3,
        "invalid address or network '10.0.0.0/99'", "allow")
refused("rule-between-keys", "[a]\nfile = raw.img\nformat = raw\nload-snapshot = s1\n", 4,
        "a snapshot needs format qcow2", "load-snapshot")
refused("zeroes-need-discard", "[a]\nfile = raw.img\ndetect-zeroes = unmap\n", 3,
        "detect-zeroes unmap needs discard unmap", "detect-zeroes")
refused("outside-section", "file = raw.img\n[a]\nfile = raw.img\n", 1,
        "outside any section", "file")
refused("syntax", "[a]\nfile = raw.img\nthis line has no equals sign\n", 3,
        "syntax error")
refused("continuation", "[a]\nfile = raw.img\n  more.img\n", 3, "syntax error")

missing = write_config("missing.conf", "[here]\nfile = raw.img\n[gone]\nfile = nothere.img\n")
rc, err = run_once(missing)
t.eq(rc, 1, "an image that cannot be opened: exit status")
t.check(err.startswith("nbdstack: export 'gone': ") and "nothere.img" in err
        and "\n" not in err, "an image that cannot be opened: one line naming "
        "the export (got %r)" % err)
t.check(not os.path.exists(sock), "an image that cannot be opened: nothing listens")

rc, err = run_once(write_config("notls.conf", "[a]\nfile = raw.img\ntls = require\n"))
t.check(rc == 1 and "export 'a': tls = require" in err,
        "tls = require without server credentials: refused (got %r)" % err)

unreadable = os.path.join(t.scratch, "no-such.conf")
rc, err = run_once(unreadable)
t.check(rc == 1 and err == "nbdstack: %s: cannot read: No such file "
        "or directory" % unreadable, "an unreadable file: one line (got %r)" % err)

rc, err = run_once(good, raw)
t.check(rc == 1 and "no image argument" in err, "--config with an image argument: refused")
rc, err = run_once(good, "-r")
t.check(rc == 1 and "--read-only is an image option" in err,
        "--config with an image option: refused")
t.check(not os.path.exists(sock), "nothing listened")

t.finish()
