#!/usr/bin/python3
# Hostile clients on the wire (nbdprobe.py, raw sockets): bad magics,
# lengths near 2^32 and 2^64, unknown and repeated options, options out of
# order, data after DISC, clients that never read, and a hang-up at every
# step of the protocol.  Each case gets the NBD spec's reply or a clean
# disconnect, and after EACH case:
#   - a second client reads the whole export and finds its known pattern,
#     and the image file's sha256 is unchanged;
#   - the server's RSS is back within TOLERANCE of the baseline taken after
#     a warm-up (see below), so a leak that grows per case fails.
# test-reject.py holds the per-request error cases (unknown commands and
# flags, out of range, read-only) and test-tls-wire.py more TLS ones
# (--tls=require, bad handshakes).
#
# Memory.  The baseline is taken once the warm-up has made every request
# size the cases use on every reactor, in rounds until a round adds less
# than 256 KiB: by then the buffer pool (server/bufpool.c, at most 64 MiB
# per reactor) and malloc's arenas hold what they will hold.  What remains is allocator noise (heap fragments,
# a trimmed or untrimmed top chunk), measured at under 200 KiB: TOLERANCE
# is five times that.  The whole list runs twice, so one data buffer
# (>= 1 MiB here) leaked by any one case crosses TOLERANCE on its second
# run, and the RSS after round 2 must be within LEAK_PER_ROUND of the RSS
# after round 1.  Under AddressSanitizer RSS says little (quarantine,
# shadow memory): the checks are reported, not enforced, and LeakSanitizer
# checks at the server's exit instead.
import os
import random
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SERVER_KIND, SRCDIR, Test, sha256  # noqa: E402
import nbdprobe as P  # noqa: E402

K = 1024
M = K * K
SIZE = 16 * M
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
TOLERANCE = 1024            # KiB
LEAK_PER_ROUND = 512        # KiB

rng = random.Random(9)
PATTERN = rng.randbytes(SIZE)
OTHER = bytes(b ^ 0x5A for b in PATTERN[:M])   # bytes that must never land

t = Test()
img = t.image("disk.img", SIZE, [(0, PATTERN)])
IMG_SHA = sha256(img)
args = ["-t", "-e", "8"]
if SERVER_KIND == "nbdstack":
    args += ["--threads=2"]   # the warm-up reaches every reactor
# --tls=on (plain text allowed) for the STARTTLS cases, when certtool is here.
pki = None
if SERVER_KIND == "nbdstack" and shutil.which("certtool"):
    pki = os.path.join(t.scratch, "pki")
    subprocess.run(["bash", "-c", '. "$1"; make_pki "$2"', "make_pki",
                    os.path.join(SRCDIR, "test-tls-lib.sh"), pki], check=True)
    args += ["--tls=on", "--tls-certificates=" + os.path.join(pki, "server")]
else:
    print("# no certtool (gnutls-bin): the STARTTLS cases are not run")
srv = t.start_server("h", args, img)


def connect():
    return P.Conn.connect(srv.sock, timeout=20)


def rep(c, opt, payload=b"", length=None):
    return P.repname(c.option(opt, payload, length)[0])


def closed(c, what):
    t.check(c.wait_closed(20), what + ": the server closes the connection")


def go_and_read(c, what, sr=True):
    """Negotiation goes on after the case: GO, then a READ of [0, 4K)."""
    if sr and not c.sr:
        t.check(c.structured_reply(), what + ": STRUCTURED_REPLY afterwards")
    t.eq(c.go("").size, SIZE, what + ": GO afterwards")
    t.same(c.pread(0, 4096), PATTERN[:4096], what + ": READ afterwards")


def reset(c):
    """Close with an RST instead of a FIN."""
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def starttls(c):
    """STARTTLS and the TLS handshake; returns the STARTTLS reply's name."""
    rtype = c.option(P.OPT_STARTTLS)[0]
    if rtype == P.REP_ACK:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(os.path.join(pki, "client", "ca-cert.pem"))
        c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
    return P.repname(rtype)


def opened(c, sr=True, contexts=("base:allocation",)):
    c.open("", sr=sr, contexts=contexts if sr else ())
    return c


# ---------------------------------------------------------------------------
# after each case
def export_unchanged(what):
    if not srv.alive():
        t.fatal("%s: the server died\n%s" % (what, srv.logtext()))
    try:
        with connect() as c:
            opened(c)
            got = c.pread(0, SIZE // 2) + c.pread(SIZE // 2, SIZE // 2)
            c.disconnect()
        t.check(got == PATTERN, what + ": a second client reads the whole export unchanged")
    except (P.Closed, P.ProtocolError, TimeoutError, OSError) as e:
        t.fail("%s: a second client failed: %s: %s" % (what, type(e).__name__, e))
    t.eq(sha256(img), IMG_SHA, what + ": image file unchanged")


# ---------------------------------------------------------------------------
# memory
sanitized = SERVER_KIND == "nbdstack" and srv.sanitized()


def warm_up():
    """Every request size and pipeline depth the cases use, on each reactor."""
    for _ in range(4):
        with connect() as c:
            opened(c)
            for n in (M, 4 * M, 8 * M):
                a = c.send_request(P.CMD_WRITE, 0, n, payload=PATTERN[:n])
                b = c.send_request(P.CMD_WRITE, n, n, payload=PATTERN[n:2 * n])
                for _ in (a, b):
                    t.check(c.read_reply().error == 0, "warm-up: WRITE of %d bytes" % n)
                cookies = [c.send_request(P.CMD_READ, 0, n) for _ in range(4)]
                for _ in cookies:
                    c.read_reply()
            for _ in range(3):  # as deep as the in-flight bound
                cookies = [c.send_request(P.CMD_READ, (i % 16) * M, M) for i in range(60)]
                for _ in cookies:
                    c.read_reply()
            c.disconnect()
        with connect() as c:
            c.handshake()
            c.option(P.OPT_INFO, P.Conn.info_payload("") + bytes(60 * K))
            c.option(99, bytes(2 * M))
            if pki:
                starttls(c)
                go_and_read(c, "warm-up over TLS")
            c.close()


def rss_settled(limit=None):
    """RSS once a connection the case closed has been torn down on its
    reactor: polled until within limit, or (no limit) until it stops
    moving; at most 10 s either way."""
    deadline = time.monotonic() + 10
    last = None
    while True:
        r = srv.rss_kib()
        if (r <= limit if limit is not None else r == last) or time.monotonic() > deadline:
            return r
        last = r
        time.sleep(0.2)


baseline = None
if SERVER_KIND == "nbdstack":
    prev = None
    for rounds in range(6):
        warm_up()
        export_unchanged("warm-up")  # what every case ends with
        now = rss_settled()
        if prev is not None and now - prev < 256:
            break
        prev = now
    baseline = srv.rss_kib()
    print("# baseline RSS %d KiB after %d warm-up rounds%s"
          % (baseline, rounds + 1, " (AddressSanitizer: reported only)" if sanitized else ""))


def memory_back(what):
    if baseline is None:
        return
    r = rss_settled(None if sanitized else baseline + TOLERANCE)
    msg = "%s: RSS %d KiB, baseline %d KiB (+%d)" % (what, r, baseline, r - baseline)
    if sanitized:
        print("# " + msg)
    else:
        t.check(r <= baseline + TOLERANCE, msg + ", within %d KiB" % TOLERANCE)


cases = []


def case(name):
    def register(fn):
        cases.append((name, fn))
        return fn
    return register


def run(name, fn):
    try:
        with connect() as c:
            fn(c, name)
    except (P.Closed, P.ProtocolError, TimeoutError, OSError) as e:
        t.fail("%s: %s: %s" % (name, type(e).__name__, e))
    export_unchanged(name)
    memory_back(name)


# ---------------------------------------------------------------------------
# the handshake: bad magics, lengths near 2^32, unknown, repeated and
# out-of-order options
@case("option with a bad IHAVEOPT magic")
def _(c, what):
    c.handshake()
    c.send(struct.pack(">QII", P.IHAVEOPT ^ 1, P.OPT_LIST, 0))
    closed(c, what)


@case("client flags 0xffffffff")
def _(c, what):
    c.read_greeting()
    c.send(struct.pack(">I", U32))
    closed(c, what)


@case("plain newstyle client (no FIXED_NEWSTYLE) sends LIST")
def _(c, what):
    c.handshake(client_flags=0)
    c.send_option(P.OPT_LIST)
    closed(c, what)


@case("option length 2^32-1, 1 MiB of it sent, then a hang-up")
def _(c, what):
    c.handshake()
    c.send_option(P.OPT_INFO, bytes(M), length=U32)


@case("INFO payload just past the parse limit -> ERR_TOO_BIG")
def _(c, what):
    c.handshake()
    big = P.Conn.info_payload("") + bytes(66 * K)
    t.eq(rep(c, P.OPT_INFO, big), "REP_ERR_TOO_BIG", what)
    go_and_read(c, what)


@case("unknown option with a 4 MiB payload -> ERR_UNSUP once drained")
def _(c, what):
    c.handshake()
    t.eq(rep(c, 0x12345, bytes(4 * M)), "REP_ERR_UNSUP", what)
    go_and_read(c, what)


@case("INFO whose name length is 2^32-1")
def _(c, what):
    c.handshake()
    t.eq(rep(c, P.OPT_INFO, struct.pack(">I", U32) + b"ab\0\0"), "REP_ERR_INVALID", what)
    go_and_read(c, what)


@case("INFO announcing 65535 info requests, sending 2")
def _(c, what):
    c.handshake()
    t.eq(rep(c, P.OPT_INFO, struct.pack(">IHHH", 0, 0xFFFF, 3, 1)), "REP_ERR_INVALID", what)
    go_and_read(c, what)


@case("GO on a name of 4097 bytes (past any NBD string)")
def _(c, what):
    c.handshake()
    t.eq(rep(c, P.OPT_GO, P.Conn.info_payload("x" * 4097)), "REP_ERR_INVALID", what)
    go_and_read(c, what)


@case("GO on a name with NUL and non-UTF-8 bytes -> ERR_UNKNOWN")
def _(c, what):
    c.handshake()
    name = b"\0\xff\xfe"
    payload = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    t.eq(rep(c, P.OPT_GO, payload), "REP_ERR_UNKNOWN", what)
    go_and_read(c, what)


@case("SET_META_CONTEXT announcing 2^32-1 queries")
def _(c, what):
    c.handshake()
    c.structured_reply()
    t.eq(rep(c, P.OPT_SET_META_CONTEXT, struct.pack(">II", 0, U32)), "REP_ERR_INVALID", what)
    go_and_read(c, what)


@case("SET_META_CONTEXT with a query length of 2^32-1")
def _(c, what):
    c.handshake()
    c.structured_reply()
    payload = struct.pack(">III", 0, 1, U32) + b"base:allocation"
    t.eq(rep(c, P.OPT_SET_META_CONTEXT, payload), "REP_ERR_INVALID", what)
    go_and_read(c, what)


@case("LIST_META_CONTEXT on an unknown export")
def _(c, what):
    c.handshake()
    c.structured_reply()
    t.eq(P.repname(c.set_meta_context("nope", [], opt=P.OPT_LIST_META_CONTEXT)[0]),
         "REP_ERR_UNKNOWN", what)
    go_and_read(c, what)


@case("SET_META_CONTEXT repeated: the second, selecting nothing, wins")
def _(c, what):
    c.handshake()
    c.structured_reply()
    rt, ctx = c.set_meta_context("", ["base:allocation"])
    t.eq((P.repname(rt), list(ctx)), ("REP_ACK", ["base:allocation"]), what + ": first")
    rt, ctx = c.set_meta_context("", ["nosuch:context"])
    t.eq((P.repname(rt), ctx), ("REP_ACK", {}), what + ": second")
    c.go("")
    r = c.request(P.CMD_BLOCK_STATUS, 0, 4096)
    t.eq(P.errname(r.error), "EINVAL", what + ": BLOCK_STATUS has no context now")


@case("STRUCTURED_REPLY twice")
def _(c, what):
    c.handshake()
    t.check(c.structured_reply(), what + ": first ACKed")
    t.eq(rep(c, P.OPT_STRUCTURED_REPLY), "REP_ERR_INVALID", what + ": second")
    go_and_read(c, what)


@case("STRUCTURED_REPLY with a payload")
def _(c, what):
    c.handshake()
    t.eq(rep(c, P.OPT_STRUCTURED_REPLY, b"xy"), "REP_ERR_INVALID", what)
    go_and_read(c, what)


@case("an option after GO (out of order)")
def _(c, what):
    opened(c)
    c.send_option(P.OPT_INFO, P.Conn.info_payload("x" * 20))  # > one request header
    closed(c, what)


@case("INFO and LIST 50 times each, then GO")
def _(c, what):
    c.handshake()
    answers = set()
    for _ in range(50):
        answers.add(P.repname(c.info_opt("")[0]))
        answers.add(P.repname(c.list_exports()[0]))
    t.eq(answers, {"REP_ACK"}, what)
    go_and_read(c, what)


@case("300 options sent at once, no reply read until the end")
def _(c, what):
    c.handshake()
    c.send(struct.pack(">QII", P.IHAVEOPT, P.OPT_LIST, 0) * 300)
    finals = 0
    while finals < 300:
        opt, rtype, _ = c.read_option_reply()
        finals += rtype == P.REP_ACK or bool(rtype & P.REP_ERR)
    t.eq(finals, 300, what + ": every option answered")
    go_and_read(c, what)


@case("EXPORT_NAME of 5000 bytes")
def _(c, what):
    c.handshake()
    c.send_option(P.OPT_EXPORT_NAME, b"x" * 5000)
    closed(c, what)


@case("ABORT with a payload")
def _(c, what):
    c.handshake()
    c.send_option(P.OPT_ABORT, b"junk")
    closed(c, what)


# STARTTLS (more in test-tls-wire.py)
def tls_case(name):
    return case(name) if pki else (lambda fn: fn)


@tls_case("STARTTLS twice: the second, under TLS, -> ERR_INVALID")
def _(c, what):
    c.handshake()
    t.eq(starttls(c), "REP_ACK", what + ": first")
    t.eq(rep(c, P.OPT_STARTTLS), "REP_ERR_INVALID", what)
    go_and_read(c, what)


@tls_case("STARTTLS with a payload")
def _(c, what):
    c.handshake()
    t.eq(rep(c, P.OPT_STARTTLS, b"junk"), "REP_ERR_INVALID", what)
    go_and_read(c, what)


@tls_case("a plaintext option injected behind STARTTLS")
def _(c, what):
    c.handshake()
    c.send(struct.pack(">QII", P.IHAVEOPT, P.OPT_STARTTLS, 0)
           + struct.pack(">QII", P.IHAVEOPT, P.OPT_GO, 6) + P.Conn.info_payload(""))
    t.eq(P.repname(c.read_option_reply()[1]), "REP_ACK", what + ": STARTTLS")
    closed(c, what)


@tls_case("an HTTP request instead of a ClientHello")
def _(c, what):
    c.handshake()
    t.eq(rep(c, P.OPT_STARTTLS), "REP_ACK", what + ": STARTTLS")
    c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    closed(c, what)


# ---------------------------------------------------------------------------
# a hang-up at every step
@case("hang-up before reading the greeting")
def _(c, what):
    pass


@case("hang-up after the greeting, before the client flags")
def _(c, what):
    c.read_greeting()


@case("hang-up after the client flags")
def _(c, what):
    c.handshake()


@case("hang-up inside an option header")
def _(c, what):
    c.handshake()
    c.send(struct.pack(">QI", P.IHAVEOPT, P.OPT_GO))


@case("hang-up inside an option payload")
def _(c, what):
    c.handshake()
    c.send_option(P.OPT_GO, b"\0\0", length=100)


@case("hang-up before reading an option's reply")
def _(c, what):
    c.handshake()
    c.send_option(P.OPT_LIST)


@case("hang-up right after GO")
def _(c, what):
    opened(c)


@case("reset (RST) inside a 1 MiB WRITE payload")
def _(c, what):
    opened(c)
    c.send(struct.pack(">IHHQQI", P.REQUEST_MAGIC, 0, P.CMD_WRITE, 1, 0, M) + OTHER[:M - 1])
    reset(c)


@case("reset with 64 READs of 1 MiB in flight, none read")
def _(c, what):
    opened(c)
    for i in range(64):
        c.send_request(P.CMD_READ, (i % 16) * M, M)
    reset(c)


@case("half-close after requests: the replies still come")
def _(c, what):
    opened(c, sr=False)
    a = c.send_request(P.CMD_WRITE, 0, 4096, payload=PATTERN[:4096])
    b = c.send_request(P.CMD_READ, M, 4096)
    c.sock.shutdown(socket.SHUT_WR)
    got = {r.cookie: r for r in (c.read_reply(), c.read_reply())}
    t.eq(sorted(got), sorted([a, b]), what + ": both replies")
    if b in got:
        t.same(got[b].data, PATTERN[M:M + 4096], what + ": READ data")
    closed(c, what)


# ---------------------------------------------------------------------------
# transmission: lengths near 2^32 and 2^64, unknown commands and flags
@case("READ of 2^32-1 bytes -> EINVAL")
def _(c, what):
    opened(c)
    t.eq(P.errname(c.request(P.CMD_READ, 0, U32).error), "EINVAL", what)
    t.same(c.pread(0, 4096), PATTERN[:4096], what + ": READ afterwards")


@case("WRITE of 2^32-1 bytes, 1 MiB of payload, then a hang-up")
def _(c, what):
    opened(c)
    c.send(struct.pack(">IHHQQI", P.REQUEST_MAGIC, 0, P.CMD_WRITE, 1, 0, U32) + OTHER)
    r = c.read_reply()
    t.eq(P.errname(r.error), "EINVAL", what + ": refused before the payload")


@case("READ at offset 2^64-1 -> EINVAL")
def _(c, what):
    opened(c)
    t.eq(P.errname(c.request(P.CMD_READ, U64, 1).error), "EINVAL", what)
    t.same(c.pread(0, 4096), PATTERN[:4096], what + ": READ afterwards")


@case("WRITE_ZEROES at offset 2^63 -> ENOSPC")
def _(c, what):
    opened(c)
    t.eq(P.errname(c.request(P.CMD_WRITE_ZEROES, 1 << 63, 4096).error), "ENOSPC", what)


@case("TRIM of 2^32-1 bytes -> EINVAL")
def _(c, what):
    opened(c)
    t.eq(P.errname(c.request(P.CMD_TRIM, 0, U32).error), "EINVAL", what)


@case("BLOCK_STATUS of 2^32-1 bytes at 2^64-4096 -> EINVAL")
def _(c, what):
    opened(c)
    t.eq(P.errname(c.request(P.CMD_BLOCK_STATUS, U64 - 4095, U32).error), "EINVAL", what)


@case("zero-length READ, WRITE, TRIM and WRITE_ZEROES")
def _(c, what):
    opened(c, sr=False)
    for cmd in (P.CMD_READ, P.CMD_WRITE, P.CMD_TRIM, P.CMD_WRITE_ZEROES):
        r = c.request(cmd, 4096, 0, payload=b"")
        t.eq(P.errname(r.error), "OK", "%s: command %d" % (what, cmd))


@case("command 0xffff")
def _(c, what):
    opened(c)
    t.eq(P.errname(c.request(0xFFFF, 0, 4096).error), "EINVAL", what)
    t.same(c.pread(0, 4096), PATTERN[:4096], what + ": READ afterwards")


@case("every command flag bit on a WRITE (payload drained)")
def _(c, what):
    opened(c)
    t.eq(P.errname(c.request(P.CMD_WRITE, 0, 4096, 0xFFFF, OTHER[:4096]).error), "EINVAL", what)
    t.same(c.pread(0, 4096), PATTERN[:4096], what + ": READ afterwards")


@case("FAST_ZERO on TRIM and CACHE (a flag of another command)")
def _(c, what):
    opened(c)
    for cmd in (P.CMD_TRIM, P.CMD_CACHE):
        r = c.request(cmd, 0, 4096, P.CMD_FLAG_FAST_ZERO)
        t.eq(P.errname(r.error), "EINVAL", "%s: command %d" % (what, cmd))


@case("extended-header request magic, not negotiated")
def _(c, what):
    opened(c)
    c.send(struct.pack(">IHHQQQ", 0x21E41C71, 0, P.CMD_WRITE, 1, 0, 4096) + OTHER[:4096])
    closed(c, what)


@case("a reply magic sent as a request")
def _(c, what):
    opened(c)
    c.send(struct.pack(">IIQ", P.SIMPLE_REPLY_MAGIC, 0, 1) + bytes(12))
    closed(c, what)


@case("two requests in flight with the same cookie")
def _(c, what):
    opened(c, sr=False)
    for _ in range(2):
        c.send_request(P.CMD_READ, 0, 4096, cookie=7)
    r1 = c.read_reply()
    c.pending[7] = (P.CMD_READ, 4096)   # read_reply forgot it
    r2 = c.read_reply()
    t.eq((r1.cookie, r2.cookie, r1.data, r2.data), (7, 7, PATTERN[:4096], PATTERN[:4096]), what)


@case("a request header sent a byte at a time")
def _(c, what):
    opened(c, sr=False)
    hdr = struct.pack(">IHHQQI", P.REQUEST_MAGIC, 0, P.CMD_READ, 5, M, 512)
    for i in range(len(hdr)):
        c.send(hdr[i:i + 1])
        time.sleep(0.01)
    c.pending[5] = (P.CMD_READ, 512)
    t.same(c.read_reply().data, PATTERN[M:M + 512], what)


# DISC and what follows it
@case("data after DISC: a WRITE in the same packet is never done")
def _(c, what):
    opened(c)
    disc = struct.pack(">IHHQQI", P.REQUEST_MAGIC, 0, P.CMD_DISC, 1, 0, 0)
    write = struct.pack(">IHHQQI", P.REQUEST_MAGIC, 0, P.CMD_WRITE, 2, 0, 4096) + OTHER[:4096]
    c.send(disc + write)
    closed(c, what)


@case("DISC with a WRITE and a READ in flight: both answered, then close")
def _(c, what):
    opened(c, sr=False)
    a = c.send_request(P.CMD_WRITE, 2 * M, 64 * K, payload=PATTERN[2 * M:2 * M + 64 * K])
    b = c.send_request(P.CMD_READ, 3 * M, 64 * K)
    c.send_request(P.CMD_DISC)
    got = {r.cookie: r for r in (c.read_reply(), c.read_reply())}
    t.eq(sorted(got), sorted([a, b]), what + ": both replies")
    if b in got:
        t.same(got[b].data, PATTERN[3 * M:3 * M + 64 * K], what + ": READ data")
    closed(c, what)


@case("DISC with flags, offset and length set")
def _(c, what):
    opened(c)
    c.send_request(P.CMD_DISC, 12345, 4096, P.CMD_FLAG_FUA)
    closed(c, what)


# a client that never reads: back-pressure, then it leaves
@case("200 READs of 1 MiB, no reply read, then a hang-up")
def _(c, what):
    opened(c)
    c.sock.setblocking(False)
    sent = 0
    try:
        for i in range(200):
            c.sock.send(struct.pack(">IHHQQI", P.REQUEST_MAGIC, 0, P.CMD_READ, i, (i % 16) * M, M))
            sent += 1
    except BlockingIOError:
        pass
    t.check(sent > 0, "%s: %d requests sent before the server stopped reading" % (what, sent))


# ---------------------------------------------------------------------------
print("# %d cases, each run twice" % len(cases))
end_rss = []
for rnd in (1, 2):
    for name, fn in cases:
        run("%s (round %d)" % (name, rnd), fn)
    if baseline is not None:
        end_rss.append(rss_settled())
if baseline is not None and not sanitized:
    t.check(end_rss[1] - end_rss[0] <= LEAK_PER_ROUND,
            "RSS after round 1 %d KiB, after round 2 %d KiB: no growth per round beyond %d KiB"
            % (end_rss[0], end_rss[1], LEAK_PER_ROUND))
t.stop_server_ok(srv)
t.finish()
