#!/usr/bin/python3
# TLS on the wire (nbdprobe.py, with Python's ssl module as the TLS client):
#   --tls=require (FORCEDTLS): every option but STARTTLS and ABORT gets
#     NBD_REP_ERR_TLS_REQD before TLS, EXPORT_NAME a disconnect, while a TLS
#     client on another connection works;
#   STARTTLS with a payload or twice gets NBD_REP_ERR_INVALID; STARTTLS
#     forgets what was negotiated before it;
#   garbage instead of a ClientHello, plain text injected after STARTTLS, a
#     client that vanishes mid-handshake and one that stalls there: each
#     ends that connection only, and never blocks the others;
#   --tls=off: STARTTLS gets NBD_REP_ERR_POLICY.
import os
import shutil
import ssl
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test  # noqa: E402
import nbdprobe as P  # noqa: E402

M = 1024 * 1024
SRCDIR = os.path.dirname(os.path.abspath(__file__))

t = Test()
for tool in ("certtool", "psktool"):
    if not shutil.which(tool):
        print("SKIP: %s not found" % tool, file=sys.stderr)
        sys.exit(77)
pki = os.path.join(t.scratch, "pki")
subprocess.run(["bash", "-c", '. "$1"; make_pki "$2"', "make_pki",
                os.path.join(SRCDIR, "test-tls-lib.sh"), pki], check=True)

data = os.urandom(4 * M)
image = t.image("disk.img", 64 * M, [(0, data)])


def client_ctx(which="client"):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    d = os.path.join(pki, which)
    ctx.load_verify_locations(os.path.join(d, "ca-cert.pem"))
    if os.path.exists(os.path.join(d, "client-cert.pem")):
        ctx.load_cert_chain(os.path.join(d, "client-cert.pem"),
                            os.path.join(d, "client-key.pem"))
    return ctx


def starttls(c):
    """STARTTLS and the TLS handshake; returns the STARTTLS reply type."""
    rtype, _ = c.option(P.OPT_STARTTLS)
    if rtype == P.REP_ACK:
        c.sock = client_ctx().wrap_socket(c.sock, server_hostname="localhost")
    return rtype


def client_hello():
    """The first flight of a TLS client, as bytes."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx().wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def tls_client_works(srv, what):
    """A full TLS client: STARTTLS, GO, read the first 4M back."""
    try:
        with P.Conn.connect(srv.sock) as c:
            c.handshake()
            t.eq(starttls(c), P.REP_ACK, "%s: STARTTLS" % what)
            c.structured_reply()
            c.go("")
            t.check(c.pread(0, len(data)) == data,
                    "%s: 4M read over TLS matches the image" % what)
            c.disconnect()
    except (P.Closed, P.ProtocolError, OSError) as e:
        t.fail("%s: TLS client failed: %s" % (what, e))


def closed_after(c, what):
    t.check(c.wait_closed(10), "%s: the server closes that connection" % what)


srv = t.start_server("req", ["-t", "-e", "0", "--tls=require",
                             "--tls-certificates=" + os.path.join(pki, "server")],
                     image)

# FORCEDTLS: everything but STARTTLS and ABORT is refused before TLS.
with P.Conn.connect(srv.sock) as plain:
    plain.handshake()
    refused = [
        ("LIST", P.OPT_LIST, b""),
        ("INFO", P.OPT_INFO, P.Conn.info_payload("")),
        ("GO", P.OPT_GO, P.Conn.info_payload("")),
        ("STRUCTURED_REPLY", P.OPT_STRUCTURED_REPLY, b""),
        ("LIST_META_CONTEXT", P.OPT_LIST_META_CONTEXT,
         P.Conn.meta_payload("", ["base:allocation"])),
        ("SET_META_CONTEXT", P.OPT_SET_META_CONTEXT,
         P.Conn.meta_payload("", ["base:allocation"])),
        ("EXTENDED_HEADERS", P.OPT_EXTENDED_HEADERS, b""),
        ("unknown option 99", 99, b"xyz"),
        ("an option with a 1M payload", P.OPT_INFO, bytes(M)),
    ]
    for name, opt, payload in refused:
        rtype, _ = plain.option(opt, payload)
        t.eq(P.repname(rtype), P.repname(P.REP_ERR_TLS_REQD),
             "require: %s before STARTTLS" % name)
    # Meanwhile, another client gets in with TLS.
    tls_client_works(srv, "require, beside a refused plaintext client")
    # The refused client may still upgrade on the same connection.
    rtype, _ = plain.option(P.OPT_STARTTLS, b"junk")
    t.eq(P.repname(rtype), P.repname(P.REP_ERR_INVALID), "STARTTLS with a payload")
    t.eq(starttls(plain), P.REP_ACK, "STARTTLS after refused options")
    rtype, _ = plain.option(P.OPT_STARTTLS)
    t.eq(P.repname(rtype), P.repname(P.REP_ERR_INVALID), "STARTTLS twice")
    t.check(plain.structured_reply(), "after TLS: STRUCTURED_REPLY is ACKed")
    info = plain.go("")
    t.eq(info.size, 64 * M, "after TLS: GO")
    new = os.urandom(M)
    plain.pwrite(new, 8 * M, flags=P.CMD_FLAG_FUA)
    t.check(plain.pread(8 * M, M) == new, "FUA write of 1M over TLS, read back")
    plain.disconnect()
with open(image, "rb") as f:
    f.seek(8 * M)
    t.check(f.read(M) == new, "the write over TLS is in the image")

with P.Conn.connect(srv.sock) as c:
    c.handshake()
    rtype, _ = c.option(P.OPT_ABORT)
    t.eq(P.repname(rtype), P.repname(P.REP_ACK), "require: ABORT before TLS")
    closed_after(c, "ABORT")

with P.Conn.connect(srv.sock) as c:
    c.handshake()
    c.send_option(P.OPT_EXPORT_NAME, b"")
    closed_after(c, "require: EXPORT_NAME before TLS")

with P.Conn.connect(srv.sock) as c:
    c.handshake(client_flags=0)   # plain newstyle: only EXPORT_NAME exists
    c.send_option(P.OPT_EXPORT_NAME, b"")
    closed_after(c, "require: non-fixed newstyle EXPORT_NAME")

# Bad TLS input: each ends that connection only.
with P.Conn.connect(srv.sock) as c:
    c.handshake()
    t.eq(c.option(P.OPT_STARTTLS)[0], P.REP_ACK, "STARTTLS before garbage")
    c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n" * 8)
    closed_after(c, "garbage instead of a ClientHello")

# Plain text injected behind STARTTLS (as in nbdkit's CVE-2021-3716) must
# never be taken as sent under TLS: one send, so it arrives with STARTTLS.
with P.Conn.connect(srv.sock) as c:
    c.handshake()
    c.send(struct.pack(">QII", P.IHAVEOPT, P.OPT_STARTTLS, 0) +
           struct.pack(">QII", P.IHAVEOPT, P.OPT_STRUCTURED_REPLY, 0))
    opt, rtype, _ = c.read_option_reply()
    t.eq(rtype, P.REP_ACK, "STARTTLS with a plaintext option behind it is ACKed")
    closed_after(c, "a plaintext option injected behind STARTTLS")

hello = client_hello()
with P.Conn.connect(srv.sock) as c:
    c.handshake()
    t.eq(c.option(P.OPT_STARTTLS)[0], P.REP_ACK, "STARTTLS, then half a ClientHello")
    c.send(hello[:len(hello) // 2])
# ... and gone.

stalled = P.Conn.connect(srv.sock)
stalled.handshake()
t.eq(stalled.option(P.OPT_STARTTLS)[0], P.REP_ACK, "STARTTLS, then a stall mid-handshake")
stalled.send(hello[:len(hello) // 2])
tls_client_works(srv, "while another client stalls mid-handshake")

# A client certificate from another CA, when the server does not ask for
# one, is simply not used; a wrong server name is the client's business.
# What the server must survive is every client above: it still serves.
t.check(srv.alive(), "the server survived the bad TLS clients")
tls_client_works(srv, "after the bad TLS clients")
# The handshake has a time limit (30 s); this bound is only for liveness.
t.check(stalled.wait_closed(120), "the server drops a client stalled mid-handshake")
stalled.close()
t.stop_server_ok(srv)

# --tls=on: STARTTLS resets what was negotiated in plain text.
srv = t.start_server("on", ["-t", "--tls=on",
                            "--tls-certificates=" + os.path.join(pki, "server")],
                     image)
with P.Conn.connect(srv.sock) as c:
    c.handshake()
    t.check(c.structured_reply(), "on: STRUCTURED_REPLY in plain text")
    t.eq(starttls(c), P.REP_ACK, "on: STARTTLS")
    rtype, _ = c.option(P.OPT_SET_META_CONTEXT,
                        P.Conn.meta_payload("", ["base:allocation"]))
    t.eq(P.repname(rtype), P.repname(P.REP_ERR_INVALID),
         "on: after STARTTLS structured replies are forgotten (SET_META_CONTEXT)")
    t.check(c.structured_reply(), "on: STRUCTURED_REPLY again after STARTTLS")
    c.go("")
    t.check(c.pread(0, 4096) == data[:4096], "on: read over TLS")
    c.disconnect()
with P.Conn.connect(srv.sock) as c:
    c.handshake()
    c.go("")
    t.check(c.pread(0, 4096) == data[:4096], "on: read in plain text")
    c.disconnect()
t.stop_server_ok(srv)

# --tls=off (the default): STARTTLS is refused by policy, never TLS_REQD.
srv = t.start_server("off", ["-t", "--tls=off"], image)
with P.Conn.connect(srv.sock) as c:
    c.handshake()
    rtype, _ = c.option(P.OPT_STARTTLS)
    t.eq(P.repname(rtype), P.repname(P.REP_ERR_POLICY), "off: STARTTLS")
    c.go("")
    t.check(c.pread(0, 4096) == data[:4096], "off: the connection goes on in plain text")
    c.disconnect()
t.stop_server_ok(srv)

t.finish()
