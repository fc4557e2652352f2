#!/usr/bin/python3
"""Per-export statistics (--metrics, --metrics-json), checked against the
work real clients did:

- fio's nbd engine (two jobs, two connections on two reactors, reads,
  writes, flushes and trims in known numbers): /metrics scraped while it
  runs moves and never goes back; afterwards the counters' deltas equal
  fio's own JSON numbers exactly, nothing is in flight, the latency
  histogram counts every request, and the text parses with the Prometheus
  client library's own parser;
- errors: an out-of-range read (EINVAL, refused by the server) and an
  nbdkit plugin whose reads fail (EIO) are counted by command and class;
- the block cache: reading one range twice moves hits and misses exactly
  as the pattern says;
- the SIGUSR1 JSON dump and GET /metrics.json parse and agree with the
  Prometheus text;
- garbage, an overlong request, other methods and paths, and a slowloris
  client get an error or are dropped, while scrapes and NBD clients carry
  on;
- --metrics=HOST:PORT serves over TCP, and a bad address is refused.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, skip  # noqa: E402

sys.path.insert(0, "/usr/lib/python3/dist-packages")
import nbd  # noqa: E402

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    skip("python3-prometheus-client is not installed")

K = 1024
M = 1 << 20
OPS = ["read", "write", "flush", "trim", "zero", "block_status", "cache", "other"]

try:
    subprocess.run(["fio", "--enghelp=nbd"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
except (OSError, subprocess.CalledProcessError):
    skip("fio with the nbd ioengine is not installed")

t = Test()


# ---- HTTP over a Unix or TCP socket ---------------------------------------
def http_raw(addr, data, timeout=10):
    """Send data, return everything the server sends back before closing."""
    if addr.startswith("/"):
        s = socket.socket(socket.AF_UNIX)
        target = addr
    else:
        host, port = addr.rsplit(":", 1)
        s = socket.socket(socket.AF_INET)
        target = (host, int(port))
    s.settimeout(timeout)
    s.connect(target)
    s.sendall(data)
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        out += b
    s.close()
    return out


def http_get(addr, path):
    resp = http_raw(addr, b"GET " + path.encode() + b" HTTP/1.0\r\nHost: x\r\n\r\n")
    head, _, body = resp.partition(b"\r\n\r\n")
    status = head.split(b"\r\n")[0].decode()
    return status, head.decode(), body.decode()


def scrape(addr):
    """Every sample of /metrics as {(name, frozenset(labels)): value}, after
    checking the text with prometheus_client's parser."""
    status, head, body = http_get(addr, "/metrics")
    if status != "HTTP/1.0 200 OK":
        t.fatal("GET /metrics: %s" % status)
    if "text/plain; version=0.0.4" not in head:
        t.fatal("GET /metrics: content type in %r" % head)
    samples = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def val(samples, name, export="", **labels):
    labels["export"] = export
    return samples.get((name, frozenset(labels.items())))


def delta(a, b, name, **labels):
    return val(b, name, **labels) - val(a, name, **labels)


def metrics_json(addr):
    status, head, body = http_get(addr, "/metrics.json")
    if status != "HTTP/1.0 200 OK" or "application/json" not in head:
        t.fatal("GET /metrics.json: %s" % head)
    return json.loads(body)


def wait_idle(addr, export=""):
    """Scrape until no request is in flight and no client is connected (a
    client's connection is counted down once the server has freed it)."""
    for _ in range(100):
        s = scrape(addr)
        if (val(s, "nbdstack_requests_in_flight", export) == 0 and
                val(s, "nbdstack_connections", export) == 0):
            return s
        time.sleep(0.1)
    return s


def fio_job(name, uri, outfile, extra):
    return ["fio", "--name=" + name, "--ioengine=nbd", "--uri=" + uri,
            "--output-format=json", "--output=" + outfile] + extra


def check_histograms(s, what, export=""):
    """_count is the request count, buckets are cumulative up to +Inf."""
    good = True
    for op in OPS:
        n = val(s, "nbdstack_requests_total", export, op=op)
        c = val(s, "nbdstack_request_duration_seconds_count", export, op=op)
        buckets = sorted((float(dict(k[1])["le"]), v) for k, v in s.items()
                         if k[0] == "nbdstack_request_duration_seconds_bucket"
                         and dict(k[1]).get("op") == op
                         and dict(k[1]).get("export") == export)
        counts = [v for _, v in buckets]
        if (c != n or not buckets or buckets[-1][0] != float("inf")
                or counts[-1] != n or counts != sorted(counts)):
            t.fail("%s: histogram of %s: count %s, requests %s, buckets %s"
                   % (what, op, c, n, counts))
            good = False
    if good:
        t.ok("%s: every histogram counts its requests, cumulative to +Inf" % what)


# ---- 1. fio: counters match the work done ---------------------------------
os.chdir(t.scratch)   # fio leaves state files in the cwd
img = t.image("disk.img", 32 * M)
msock = os.path.join(t.scratch, "metrics.sock")
mjson = os.path.join(t.scratch, "metrics.json")
srv = t.start_server("m", ["-t", "-e", "0", "--threads=2", "--discard=unmap",
                           "--metrics=" + msock, "--metrics-json=" + mjson], img)

before = wait_idle(msock)
t.eq(val(before, "nbdstack_requests_total", op="read"), 0.0,
     "a fresh server has counted no read")

jobs = [
    # randrw with a flush every 16 writes, rate-limited so that the scrapes
    # below see it running
    fio_job("rw", srv.uri(), os.path.join(t.scratch, "fio-rw.json"),
            ["--rw=randrw", "--rwmixread=60", "--bs=4k", "--size=32M",
             "--io_size=6M", "--iodepth=8", "--fsync=16", "--rate_iops=1500",
             "--randrepeat=1"]),
    # trims of 64K, on their own connection
    fio_job("trim", srv.uri(), os.path.join(t.scratch, "fio-trim.json"),
            ["--rw=randtrim", "--bs=64k", "--size=32M", "--io_size=8M",
             "--iodepth=4"]),
]
procs = [subprocess.Popen(j, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
         for j in jobs]
during = []
while any(p.poll() is None for p in procs):
    during.append(scrape(msock))
    time.sleep(0.05)
for p, j in zip(procs, jobs):
    err = p.stderr.read().decode()
    if p.wait() != 0:
        t.fatal("fio failed: %s\n%s" % (" ".join(j), err))
after = wait_idle(msock)

fio = {"read": [0, 0], "write": [0, 0], "trim": [0, 0], "flush": [0, 0]}
for j in jobs:
    out = json.load(open(j[j.index("--output-format=json") + 1][len("--output="):]))
    for job in out["jobs"]:
        for d in ("read", "write", "trim"):
            fio[d][0] += job[d]["total_ios"]
            fio[d][1] += job[d]["io_bytes"]
        fio["flush"][0] += job["sync"]["total_ios"] if "sync" in job else 0
t.check(fio["read"][0] > 0 and fio["write"][0] > 0 and fio["trim"][0] > 0
        and fio["flush"][0] > 0,
        "fio did reads, writes, trims and flushes: %s" % fio)

for op in ("read", "write", "trim", "flush"):
    t.eq(delta(before, after, "nbdstack_requests_total", op=op),
         float(fio[op][0]), "%s requests counted, as fio did" % op)
    if op != "flush":
        t.eq(delta(before, after, "nbdstack_bytes_total", op=op),
             float(fio[op][1]), "%s bytes counted, as fio moved" % op)
t.eq(sum(delta(before, after, "nbdstack_request_errors_total", op=op) for op in OPS),
     0.0, "no errors counted for fio's run")
t.eq(val(after, "nbdstack_requests_in_flight"), 0.0, "nothing in flight once idle")
t.eq(val(after, "nbdstack_connections"), 0.0, "no connection once fio has left")
t.check(delta(before, after, "nbdstack_connections_total") >= 2,
        "fio's two jobs counted as connections")
t.check(val(after, "nbdstack_request_duration_seconds_sum", op="read") > 0,
        "read latency sum is positive")
check_histograms(after, "after fio")

# Scrapes during the run: some saw fio half-way, none went backwards.
reads_final = val(after, "nbdstack_requests_total", op="read")
seen = [val(s, "nbdstack_requests_total", op="read") for s in during]
t.check(any(0 < v < reads_final for v in seen),
        "a scrape during fio saw its reads half-done (%d scrapes)" % len(seen))
t.check(seen == sorted(seen) and all(v <= reads_final for v in seen),
        "read counts scraped during fio never go backwards")
t.check(all(val(s, "nbdstack_requests_in_flight") <= 16 for s in during),
        "in flight during fio stays within fio's queue depths")

# ---- 2. JSON: the SIGUSR1 dump and /metrics.json agree with the text -------
if os.path.exists(mjson):
    os.unlink(mjson)
os.kill(srv.proc.pid, signal.SIGUSR1)
for _ in range(100):
    if os.path.exists(mjson):
        break
    time.sleep(0.05)
try:
    dump = json.load(open(mjson))
    t.ok("SIGUSR1 writes a JSON dump that parses")
except (OSError, ValueError) as e:
    t.fatal("SIGUSR1 JSON dump: %s" % e)
text = scrape(msock)   # idle: nothing changes between the two


def json_agrees(doc, s, what):
    bad = []
    ex = {e["name"]: e for e in doc["exports"]}
    for name, e in ex.items():
        for op in OPS:
            o = e["ops"][op]
            for key, metric in (("requests", "nbdstack_requests_total"),
                                ("bytes", "nbdstack_bytes_total"),
                                ("errors", "nbdstack_request_errors_total")):
                if o[key] != val(s, metric, name, op=op):
                    bad.append("%s %s %s" % (name, op, key))
            for le, n in o["latency_buckets"].items():
                if n != val(s, "nbdstack_request_duration_seconds_bucket",
                            name, op=op, le=le):
                    bad.append("%s %s bucket %s" % (name, op, le))
            if abs(o["latency_sum_seconds"] -
                   val(s, "nbdstack_request_duration_seconds_sum", name, op=op)) > 1e-6:
                bad.append("%s %s latency sum" % (name, op))
        for cls, n in e["errors_by_class"].items():
            if n != val(s, "nbdstack_errors_by_class_total", name, error=cls):
                bad.append("%s class %s" % (name, cls))
        for key, metric in (("requests_in_flight", "nbdstack_requests_in_flight"),
                            ("connections", "nbdstack_connections"),
                            ("connections_total", "nbdstack_connections_total")):
            if e[key] != val(s, metric, name):
                bad.append("%s %s" % (name, key))
        for layer, stats in e["layers"].items():
            for k, n in stats.items():
                if n != val(s, "nbdstack_%s_%s" % (layer, k), name):
                    bad.append("%s %s %s" % (name, layer, k))
    t.check(ex and not bad, "%s agrees with /metrics%s"
            % (what, (": differs in " + ", ".join(bad[:10])) if bad else ""))


json_agrees(dump, text, "the SIGUSR1 JSON dump")
json_agrees(metrics_json(msock), text, "GET /metrics.json")

# ---- 3. errors: refused by the server, failed below --------------------------
h = nbd.NBD()
h.set_strict_mode(0)          # let the out-of-range read reach the server
h.connect_uri(srv.uri())
try:
    h.pread(4 * K, 32 * M)
    t.fail("a read past the end succeeded")
except nbd.Error:
    t.ok("a read past the end fails")
h.shutdown()
del h
s = wait_idle(msock)
t.eq(delta(after, s, "nbdstack_request_errors_total", op="read"), 1.0,
     "the refused read is counted as a read error")
t.eq(delta(after, s, "nbdstack_requests_total", op="read"), 1.0,
     "... and as a read request")
t.eq(delta(after, s, "nbdstack_bytes_total", op="read"), 0.0,
     "... that moved no bytes")
t.eq(delta(after, s, "nbdstack_errors_by_class_total", error="EINVAL"), 1.0,
     "... of class EINVAL")
t.stop_server_ok(srv)

# An nbdkit plugin whose every read fails: real EIO from below.
script = os.path.join(t.scratch, "failing.sh")
with open(script, "w") as f:
    f.write("""#!/bin/sh
case "$1" in
  get_size) echo 1048576 ;;
  pread) echo "EIO injected failure" >&2; exit 1 ;;
  *) exit 2 ;;
esac
""")
os.chmod(script, 0o755)
msock2 = os.path.join(t.scratch, "metrics2.sock")
srv = t.start_server("p", ["-t", "--metrics=" + msock2, "--plugin", "sh",
                           "script=" + script], None)
h = nbd.NBD()
h.connect_uri(srv.uri())
failed = 0
for i in range(3):
    try:
        h.pread(4 * K, i * 4 * K)
    except nbd.Error:
        failed += 1
t.eq(failed, 3, "three reads through the failing plugin fail")
h.shutdown()
del h
s = wait_idle(msock2)
t.eq(val(s, "nbdstack_request_errors_total", op="read"), 3.0,
     "the plugin's failures are counted as read errors")
t.eq(val(s, "nbdstack_errors_by_class_total", error="EIO"), 3.0,
     "... of class EIO")
check_histograms(s, "with errors")
t.stop_server_ok(srv)

# ---- 4. the block cache: one range read twice ------------------------------
BLOCK = 64 * K
RANGE = 256 * K
PIECE = 4 * K
msock3 = os.path.join(t.scratch, "metrics3.sock")
img = t.image("cache.img", 4 * M)
srv = t.start_server("c", ["-t", "-x", "cached", "--block-cache=1M",
                           "--block-cache-block=64K", "--metrics=" + msock3], img)
h = nbd.NBD()
h.connect_uri(srv.uri("cached"))
s0 = scrape(msock3)
t.check(0 < val(s0, "nbdstack_blockcache_capacity_bytes", "cached") <= M,
       "the block cache reports a capacity within --block-cache")
for off in range(0, RANGE, PIECE):
    h.pread(PIECE, off)
s1 = scrape(msock3)
for off in range(0, RANGE, PIECE):
    h.pread(PIECE, off)
s2 = scrape(msock3)
blocks = RANGE // BLOCK
pieces = RANGE // PIECE
t.eq(delta(s0, s1, "nbdstack_blockcache_misses_total", export="cached"),
     float(blocks), "first pass: one miss per cache block")
t.eq(delta(s0, s1, "nbdstack_blockcache_hits_total", export="cached"),
     float(pieces - blocks), "first pass: every other read hits")
t.eq(delta(s1, s2, "nbdstack_blockcache_misses_total", export="cached"),
     0.0, "second pass: no miss")
t.eq(delta(s1, s2, "nbdstack_blockcache_hits_total", export="cached"),
     float(pieces), "second pass: every read hits")
t.eq(val(s2, "nbdstack_blockcache_cached_bytes", "cached"), float(RANGE),
     "the cache holds the range read")
t.eq(delta(s0, s2, "nbdstack_requests_total", export="cached", op="read"),
     float(2 * pieces), "reads counted on the named export")
h.shutdown()
del h
idle = wait_idle(msock3, "cached")    # first: the client's close lands
json_agrees(metrics_json(msock3), idle, "GET /metrics.json with a block cache")
t.stop_server_ok(srv)

# ---- 5. bad HTTP clients do not disturb serving ----------------------------
img = t.image("bad.img", 4 * M, fill=[(0, b"\x5a" * (64 * K))])
msock4 = os.path.join(t.scratch, "metrics4.sock")
srv = t.start_server("b", ["-t", "--metrics=" + msock4], img)
h = nbd.NBD()
h.connect_uri(srv.uri())

# a slowloris client: one byte every 0.2 s, never finishing its request
slow = socket.socket(socket.AF_UNIX)
slow.connect(msock4)
slow.settimeout(0.2)

for what, data, want in [
        ("garbage", b"\x00\xff\x13 nonsense\r\n\r\n", "400"),
        ("an overlong request line", b"GET /" + b"a" * 10000, "431"),
        ("POST", b"POST /metrics HTTP/1.0\r\n\r\n", "405"),
        ("an unknown path", b"GET /secret HTTP/1.0\r\n\r\n", "404"),
        ("HTTP/0.9", b"GET /metrics\r\n\r\n", "400")]:
    try:
        resp = http_raw(msock4, data)
    except OSError as e:
        resp = repr(e).encode()
    t.check(resp.split(b" ")[1:2] == [want.encode()],
            "%s gets %s: %r" % (what, want, resp[:40]))

dropped = False
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    try:
        slow.send(b"G")
        if slow.recv(1) == b"":
            dropped = True
            break
    except socket.timeout:
        pass
    except OSError:
        dropped = True
        break
    # meanwhile scrapes and NBD reads go on
    if val(scrape(msock4), "nbdstack_connections") != 1.0:
        t.fail("a scrape during the slowloris client shows the NBD client")
    if h.pread(64 * K, 0) != b"\x5a" * (64 * K):
        t.fail("NBD read during the slowloris client")
slow.close()
t.check(dropped, "the slowloris client is dropped after the request deadline")
t.eq(h.pread(64 * K, 0), b"\x5a" * (64 * K), "the NBD client still reads its data")
t.check(srv.alive(), "the server survives bad HTTP clients")
h.shutdown()
del h
t.stop_server_ok(srv)

# ---- 6. TCP address; bad addresses ------------------------------------------
probe = socket.socket(socket.AF_INET)
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()
addr = "127.0.0.1:%d" % port
srv = t.start_server("tcp", ["-t", "--metrics=" + addr], t.image("tcp.img", M))
t.eq(val(scrape(addr), "nbdstack_connections_total"), 0.0,
     "--metrics=HOST:PORT serves /metrics over TCP")
t.stop_server_ok(srv)

for bad in ["nonsense", "127.0.0.1:notaport", "/nonexistent-dir/m.sock"]:
    p = subprocess.run([os.environ.get("NBDSTACK", "nbdstack"), "-k",
                        os.path.join(t.scratch, "x.sock"), "--metrics=" + bad,
                        t.image("x.img", M)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    err = p.stderr.decode().strip()
    t.check(p.returncode == 1 and "--metrics" in err and len(err.splitlines()) == 1,
            "--metrics=%s is refused with one line: %s" % (bad, err))

t.finish()
