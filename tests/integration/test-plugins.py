#!/usr/bin/python3
"""Unmodified nbdkit plugins loaded by nbdstack (--plugin NAME key=value...)
give the same bytes as the same plugin run by nbdkit itself.

For Debian's memory, file, pattern, data and sparse-random plugins: the
same reads from both servers compare equal; where the plugin is writable,
the same writes, zeroes and trims go to both, and everything reads back
equal again.  Both servers also agree on the size and the capabilities
the plugin decides (read-only, flush, trim, zero).
"""
import os
import random
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, skip  # noqa: E402

sys.path.insert(0, "/usr/lib/python3/dist-packages")
import nbd  # noqa: E402

if not shutil.which("nbdkit"):
    skip("nbdkit is missing")
PLUGINS = "/usr/lib/x86_64-linux-gnu/nbdkit/plugins"
M = 1 << 20

t = Test()
rng = random.Random(7)


def start_nbdkit(name, args):
    sock = os.path.join(t.scratch, "nbdkit-" + name + ".sock")
    proc = subprocess.Popen(["nbdkit", "-f", "-U", sock] + args,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(sock):
            return proc, sock
        time.sleep(0.05)
    t.fatal("nbdkit %s did not start" % " ".join(args))


def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def reads(size):
    """Some ranges to read: the start, the end, and random ones."""
    out = [(0, min(size, 64 * 1024)), (max(0, size - 4096), min(size, 4096))]
    for _ in range(20):
        n = rng.choice([1, 512, 4096, 65536])
        if n <= size:
            out.append((rng.randrange(0, size - n + 1), n))
    return out


def compare(name, a, b):
    size = a.get_size()
    t.eq(b.get_size(), size, "%s: size" % name)
    t.eq(b.is_read_only(), a.is_read_only(), "%s: read-only" % name)
    for what in ("can_flush", "can_trim", "can_zero"):
        t.eq(getattr(b, what)(), getattr(a, what)(), "%s: %s" % (name, what))
    for off, n in reads(size):
        if a.pread(n, off) != b.pread(n, off):
            t.fail("%s: bytes differ at %d+%d" % (name, off, n))
            return
    t.ok("%s: reads are byte-identical" % name)


def mutate(name, a, b):
    size = a.get_size()
    for _ in range(30):
        off = rng.randrange(0, size - 70000)
        op = rng.random()
        payload = rng.randbytes(4096)
        for h in (a, b):
            if op < 0.6:
                h.pwrite(payload, off)
            elif op < 0.8 and a.can_zero():
                h.zero(65536, off)
            elif a.can_trim():
                h.trim(4096, off)
    for off, n in reads(size):
        if a.pread(n, off) != b.pread(n, off):
            t.fail("%s: after the same writes, bytes differ at %d+%d" % (name, off, n))
            return
    t.ok("%s: the same writes read back byte-identical" % name)


def case(name, plugin_args, writable):
    kit, ksock = start_nbdkit(name, plugin_args)
    # nbdstack takes the plugin and its parameters after --plugin, as
    # nbdkit does, and no image argument.
    srv = t.start_server(name, ["-t", "--plugin"] + plugin_args, None)
    a, b = connect("nbd+unix:///?socket=" + ksock), connect(srv.uri())
    compare(name, a, b)
    if writable:
        mutate(name, a, b)
    a.shutdown()
    b.shutdown()
    kit.terminate()
    kit.wait()
    t.stop_server_ok(srv)


img_a = t.image("file-a.img", 8 * M, [(0, os.urandom(M)), (5 * M, os.urandom(M))])
img_b = t.image("file-b.img", 8 * M)
with open(img_a, "rb") as f:
    data = f.read()
with open(img_b, "wb") as f:
    f.write(data)

case("memory", ["memory", "size=8M"], True)
case("pattern", ["pattern", "size=8M"], False)
case("data", ["data", "1 2 3 @4096 4 5 6 @1048576 " + " ".join(str(i % 256) for i in range(300))], True)
# sparse-random accepts only writes of what it already holds.
case("sparse-random", ["sparse-random", "16M", "seed=42"], False)
# The file plugin on two copies of one image, so the writes do not meet.
kit, ksock = start_nbdkit("file", ["file", "file=" + img_a])
srv = t.start_server("file", ["-t", "--plugin", "file", "file=" + img_b], None)
a, b = connect("nbd+unix:///?socket=" + ksock), connect(srv.uri())
compare("file", a, b)
mutate("file", a, b)
a.shutdown()
b.shutdown()
kit.terminate()
kit.wait()
t.stop_server_ok(srv)
t.finish()
