#!/usr/bin/python3
# Access limits: --handshake-timeout, --idle-timeout (clients stalled
# inside a payload or not reading replies included), -e N, clients pinning
# large WRITEs, and --allow, with raw sockets (nbdprobe.py) and real
# clients (nbdinfo).
#
# Timings: the only bounds asserted are ones load cannot break.  A server
# never closes a client before its timeout, so "closed no sooner than the
# timeout" holds however slow the machine; "closed at all" gets a minute.
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import NBDSTACK, Test, free_port, skip  # noqa: E402
import nbdprobe as P  # noqa: E402

if not shutil.which("nbdinfo"):
    skip("nbdinfo not found")

HS = 2          # --handshake-timeout used here (seconds)
IDLE = 3        # --idle-timeout used here
EARLY = 0.25    # clock slack: libev and this process read the clock apart
LONG = 60.0     # "eventually": generous for a loaded 2-core machine

t = Test()
img = t.image("disk.img", 1 << 20, [(0, b"limits" * 100)])


def raw_unix(srv):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(srv.sock)
    return P.Conn(s, timeout=LONG)


def seconds_until_closed(conn, since):
    """Seconds from `since` until the server closes conn; None if it stays
    open for LONG."""
    if not conn.wait_closed(LONG):
        return None
    return time.monotonic() - since


def nbdinfo(uri, timeout=LONG):
    """-> (exit status or None if it had to be killed, output)"""
    try:
        r = subprocess.run(["nbdinfo", "--size", uri], capture_output=True,
                           timeout=timeout)
        return r.returncode, (r.stdout + r.stderr).decode(errors="replace")
    except subprocess.TimeoutExpired:
        return None, ""


def check_dropped(conn, since, limit, what):
    took = seconds_until_closed(conn, since)
    if not t.check(took is not None, "%s: dropped" % what):
        return
    t.check(took >= limit - EARLY,
            "%s: not before its %d s limit (after %.1f s)" % (what, limit, took))


# ---- handshake timeout ----------------------------------------------------
srv = t.start_server("hs", ["-t", "-e", "4", "--handshake-timeout=%d" % HS], img)

start = time.monotonic()
silent = raw_unix(srv)                      # connects, sends nothing
stalled = raw_unix(srv)                     # stops mid-handshake
stalled.handshake()
stalled.send_option(P.OPT_GO, b"\0" * 10, length=200)
trickle = raw_unix(srv)                     # a byte at a time: still dropped
trickle.handshake()
trickle.send_option(P.OPT_GO, b"", length=1000)

# Meanwhile a real client is served (it runs while they are connected).
info = subprocess.Popen(["nbdinfo", "--size", srv.uri()], stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT)

trickled = 0
trickle.sock.settimeout(0.2)
while True:
    try:
        trickle.sock.sendall(b"x")
        trickled += 1
        if trickle.sock.recv(1) == b"":
            break
    except socket.timeout:
        pass
    except OSError:
        break
    if time.monotonic() - start > LONG:
        break
took = time.monotonic() - start
t.check(took < LONG and took >= HS - EARLY,
        "trickling client dropped at its deadline, not kept alive by bytes "
        "(%d bytes, %.1f s)" % (trickled, took))

try:
    out = info.communicate(timeout=LONG)[0].decode(errors="replace").strip()
    rc = info.returncode
except subprocess.TimeoutExpired:
    info.kill()
    info.wait()
    rc, out = None, "timed out"
t.check(rc == 0 and out == str(1 << 20),
        "nbdinfo works while silent clients are connected (rc %s: %s)" % (rc, out))
check_dropped(silent, start, HS, "silent client")
check_dropped(stalled, start, HS, "client stalled mid-option")

# The server still serves, and said why it closed them.
rc, _ = nbdinfo(srv.uri())
t.eq(rc, 0, "nbdinfo after the drops: exit status")
t.check(srv.logtext().count("handshake timeout") >= 3,
        "the log names the handshake timeout for each dropped client")
t.stop_server_ok(srv)

# A client stalled inside the TLS handshake (after STARTTLS) is dropped at
# the same deadline, not after tls.c's own 30 s.
if shutil.which("psktool"):
    psk = os.path.join(t.scratch, "keys.psk")
    subprocess.run(["psktool", "-u", "alice", "-p", psk], check=True,
                   capture_output=True)
    srv = t.start_server("hs-tls", ["-t", "--tls=require", "--tls-psk=" + psk,
                                    "--handshake-timeout=%d" % HS], img)
    start = time.monotonic()
    tls = raw_unix(srv)
    tls.handshake()
    reply, _ = tls.option(P.OPT_STARTTLS)
    t.eq(reply, P.REP_ACK, "STARTTLS acknowledged")
    check_dropped(tls, start, HS, "client stalled in the TLS handshake")
    t.stop_server_ok(srv)
else:
    print("note: no psktool (gnutls-bin): TLS handshake stall not tested")

# ---- -e 1: a silent client no longer holds the only slot forever ----------
srv = t.start_server("e1", ["-t", "-e", "1", "--handshake-timeout=%d" % HS], img)
silent = raw_unix(srv)
silent.sock.settimeout(LONG)
silent.read_greeting()                      # it holds the slot now
start = time.monotonic()
rc, out = nbdinfo(srv.uri())
took = time.monotonic() - start
t.check(rc == 0, "-e 1: nbdinfo is served once the silent client is dropped "
        "(rc %s: %s)" % (rc, out.strip()))
t.check(took >= HS - 1 - EARLY,
        "-e 1: nbdinfo waited for the silent client's slot (%.1f s)" % took)
silent.close()
t.stop_server_ok(srv)

# Without the timeout, the same silent client blocks the next one.
srv = t.start_server("e1-off", ["-t", "-e", "1", "--handshake-timeout=0"], img)
silent = raw_unix(srv)
silent.read_greeting()
rc, _ = nbdinfo(srv.uri(), timeout=HS + 2)
t.eq(rc, None, "--handshake-timeout=0 -e 1: a silent client blocks the next")
t.check(not silent.wait_closed(0.5), "--handshake-timeout=0: silent client kept")
silent.close()
t.stop_server_ok(srv)

# ---- idle timeout -----------------------------------------------------------
srv = t.start_server("idle", ["-t", "-e", "4", "--idle-timeout=%d" % IDLE], img)
idle = raw_unix(srv)
idle.handshake()
idle_since = time.monotonic()   # before GO: the server's clock starts later
idle.go("")
busy = raw_unix(srv)
busy.handshake()
busy.go("")
# The busy client reads every 0.2 s for longer than the idle limit.
reads = errors = 0
while time.monotonic() - idle_since < IDLE + 2:
    try:
        r = busy.request(P.CMD_READ, 0, 600)
        reads += 1
        if r.error or r.data[:6] != b"limits":
            errors += 1
    except (P.Closed, TimeoutError, OSError) as e:
        t.fail("busy client: request failed: %s" % e)
        break
    time.sleep(0.2)
t.check(reads > 0 and errors == 0,
        "busy client served throughout (%d reads, %d bad)" % (reads, errors))
check_dropped(idle, idle_since, IDLE, "idle client")
try:
    r = busy.request(P.CMD_READ, 0, 600)
    t.check(r.error == 0, "busy client still connected after the idle one left")
except (P.Closed, TimeoutError, OSError) as e:
    t.fail("busy client dropped: %s" % e)
t.check("idle timeout" in srv.logtext(), "the log names the idle timeout")
busy.close()
t.stop_server_ok(srv)

# A client that stops half-way through a WRITE payload, or stops reading its
# replies, is idle too: otherwise it pins the request's buffer, or its
# replies, for as long as it likes.
srv = t.start_server("idle-stall", ["-t", "-e", "4", "--idle-timeout=%d" % IDLE], img)
payload = raw_unix(srv)
payload.handshake()
payload.go("")
deaf = raw_unix(srv)
deaf.handshake()
deaf.go("")
since = time.monotonic()
payload.send(struct.pack(">IHHQQI", P.REQUEST_MAGIC, 0, P.CMD_WRITE, 1, 0, 1 << 20)
             + b"x" * 1000)
deaf.sock.setblocking(False)
sent = 0
try:
    while sent < 64:   # READs of the whole 1 MiB disk, none of them read
        deaf.sock.send(struct.pack(">IHHQQI", P.REQUEST_MAGIC, 0, P.CMD_READ, sent, 0, 1 << 20))
        sent += 1
except BlockingIOError:
    pass
deaf.sock.setblocking(True)
check_dropped(payload, since, IDLE, "client stalled inside a WRITE payload")
# Reading the other one would make it a reader again: the log says first.
deadline = time.monotonic() + LONG
while srv.logtext().count("idle timeout") < 2 and time.monotonic() < deadline:
    time.sleep(0.1)
t.eq(srv.logtext().count("idle timeout"), 2,
     "client that stopped reading %d replies: dropped for the idle timeout "
     "before any reply was read" % sent)
t.check(deaf.wait_closed(LONG), "client that stopped reading: closed")
rc, _ = nbdinfo(srv.uri())
t.eq(rc, 0, "nbdinfo after the stalled clients were dropped")
with open(img, "rb") as f:
    t.check(f.read(6) == b"limits", "the half-received WRITE was not written")
t.stop_server_ok(srv)

# ---- -e N: at most N clients; the next waits for a free slot ---------------
N = 3
srv = t.start_server("e3", ["-t", "-e", str(N)], img)
held = []
for i in range(N):
    c = raw_unix(srv)
    c.handshake()
    c.go("")
    held.append(c)
waiting = raw_unix(srv)
waiting.sock.settimeout(HS)
try:
    greeted = len(waiting.sock.recv(18)) > 0
except socket.timeout:
    greeted = False
t.check(not greeted, "-e %d: client %d is not served while %d are connected" % (N, N + 1, N))
for c in held:
    t.eq(c.request(P.CMD_READ, 0, 6).data, b"limits", "-e %d: a held client still works" % N)
held.pop().disconnect()
waiting.sock.settimeout(LONG)
try:
    waiting.handshake()
    waiting.go("")
    t.eq(waiting.request(P.CMD_READ, 0, 6).data, b"limits",
         "-e %d: client %d is served once a slot is free" % (N, N + 1))
    waiting.disconnect()
except (P.Closed, P.ProtocolError, TimeoutError, OSError) as e:
    t.fail("-e %d: client %d not served after a slot freed: %s" % (N, N + 1, e))
for c in held:
    c.disconnect()
t.stop_server_ok(srv)

# ---- many clients each pinning a 32 MiB WRITE -------------------------------
# Each sends a WRITE header for the largest payload, 256 KiB of it, then
# nothing.  The server holds what they sent, not what they announced: its
# RSS may grow by their bytes plus SLACK (a buffer of each pool class, malloc
# arenas), far below the 32 MiB each announced.
MANY, SENT, SLACK = 24, 256 << 10, 48 << 10   # SLACK in KiB
big = t.image("big.img", 64 << 20, [(0, b"limits")])
# meson test sets MALLOC_PERTURB_, which makes malloc fill (so touch) every
# buffer it hands out: what is measured is what the server itself touches.
os.environ.pop("MALLOC_PERTURB_", None)
srv = t.start_server("pin", ["-t", "-e", str(MANY + 2)], big)
before = srv.rss_kib()
pinners = []
for i in range(MANY):
    c = raw_unix(srv)
    c.handshake()
    c.go("")
    c.send(struct.pack(">IHHQQI", P.REQUEST_MAGIC, 0, P.CMD_WRITE, 1, 0, 32 << 20)
           + b"p" * SENT)
    pinners.append(c)
ok = raw_unix(srv)                      # a well-behaved client meanwhile
ok.handshake()
ok.go("")
t.eq(ok.request(P.CMD_READ, 0, 6).data, b"limits", "a client works beside %d pinning ones" % MANY)
ok.disconnect()
grown = srv.rss_kib() - before
bound = MANY * SENT // 1024 + SLACK
if srv.sanitized():
    print("# AddressSanitizer: RSS grew by %d KiB (bound %d KiB not enforced)" % (grown, bound))
else:
    t.check(grown <= bound, "%d clients announcing 32 MiB WRITEs, sending %d KiB each: RSS grew "
            "by %d KiB, at most %d KiB (announced: %d MiB)"
            % (MANY, SENT >> 10, grown, bound, MANY * 32))
for c in pinners:
    c.close()
with open(big, "rb") as f:
    t.check(f.read(6) == b"limits", "no half-received WRITE was written")
t.stop_server_ok(srv)

# ---- --allow ---------------------------------------------------------------
def tcp_server(name, host, family, allow):
    """A server on host:PORT with --allow=allow; -> (proc, port, logpath)."""
    port = free_port(family, host)
    log = os.path.join(t.scratch, name + ".log")
    pid = os.path.join(t.scratch, name + ".pid")
    with open(log, "wb") as lf:
        proc = subprocess.Popen([NBDSTACK, "-f", "raw", "-t", "-e", "4",
                                 "-b", host, "-p", str(port), "--pid-file=" + pid,
                                 "--allow=" + allow, img],
                                stdin=subprocess.DEVNULL, stdout=lf, stderr=lf)
    deadline = time.monotonic() + 15
    while not (os.path.exists(pid) and os.path.getsize(pid) > 0):
        if proc.poll() is not None or time.monotonic() > deadline:
            t.fatal("%s: server did not start: %s" % (name, open(log).read()))
        time.sleep(0.05)
    return proc, port, log


def stop(proc):
    proc.terminate()
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def first_bytes(family, host, port):
    """Connect and read until EOF or the greeting: b'' means closed first."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(LONG)
    s.connect((host, port))
    got = b""
    try:
        while len(got) < 18:
            b = s.recv(18 - len(got))
            if not b:
                break
            got += b
    except ConnectionResetError:
        pass
    s.close()
    return got


allow_runs = 0


def try_allow(host, family, allow, want_allowed):
    global allow_runs
    allow_runs += 1
    url_host = "[%s]" % host if family == socket.AF_INET6 else host
    proc, port, log = tcp_server("allow%d" % allow_runs, host, family, allow)
    what = "client %s with --allow=%s" % (host, allow)
    got = first_bytes(family, host, port)
    rc, out = nbdinfo("nbd://%s:%d" % (url_host, port))
    if want_allowed:
        t.check(got[:8] == b"NBDMAGIC", what + ": greeted")
        t.check(rc == 0 and out.strip() == str(1 << 20),
                what + ": nbdinfo works (rc %s: %s)" % (rc, out.strip()))
    else:
        t.eq(got, b"", what + ": closed before any handshake byte")
        t.check(rc not in (0, None), what + ": nbdinfo refused (rc %s)" % rc)
    status = stop(proc)
    t.eq(status, 0, what + ": server exit status")
    with open(log) as f:
        refusals = f.read().count("not in --allow")
    t.eq(refusals, 0 if want_allowed else 2, what + ": refusal log lines")


try_allow("127.0.0.1", socket.AF_INET, "127.0.0.1", True)
try_allow("127.0.0.1", socket.AF_INET, "10.0.0.0/8,127.0.0.0/9", True)
try_allow("127.0.0.1", socket.AF_INET, "10.0.0.0/8,128.0.0.0/1,::1", False)
try_allow("127.0.0.1", socket.AF_INET, "127.0.0.2", False)

ipv6 = False
try:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.bind(("::1", 0))
    s.close()
    ipv6 = True
except OSError:
    print("note: no ::1 here, IPv6 --allow checks not run")
if ipv6:
    try_allow("::1", socket.AF_INET6, "::1", True)
    try_allow("::1", socket.AF_INET6, "127.0.0.1,::/1", True)
    try_allow("::1", socket.AF_INET6, "127.0.0.1,fd00::/8", False)

# Unix-socket clients are always allowed.
srv = t.start_server("allow-unix", ["-t", "--allow=10.1.2.3"], img)
rc, _ = nbdinfo(srv.uri())
t.eq(rc, 0, "Unix-socket client with --allow=10.1.2.3: nbdinfo exit status")
t.stop_server_ok(srv)

# Bad lists are refused on the command line.
for bad in ("10.0.0.0/33", "::1/129", "nonsense", "10.0.0.1,", "1.2.3.4/x"):
    r = subprocess.run([NBDSTACK, "-f", "raw", "--allow=" + bad, img],
                       capture_output=True, timeout=30)
    t.check(r.returncode == 1 and b"--allow" in r.stderr,
            "--allow=%s refused (rc %d: %s)" % (bad, r.returncode,
                                                r.stderr.decode().strip()))

t.finish()
