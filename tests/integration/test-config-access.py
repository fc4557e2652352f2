#!/usr/bin/python3
# Per-export access in the configuration file:
#   tls = require (the server offering TLS, tls = on in [server]): a
#   client that did not do STARTTLS does not see the export in LIST and
#   gets NBD_REP_ERR_TLS_REQD for INFO and GO, a hang-up for EXPORT_NAME,
#   NBD_REP_ERR_UNKNOWN for SET_META_CONTEXT,
#   while the other exports serve it in plain text; over TLS (nbdinfo with
#   nbds+unix://) it is listed and served.
#   allow = NETWORKS: a TCP client outside them does not see the export in
#   LIST and gets NBD_REP_ERR_POLICY for INFO and GO; inside, it is listed
#   and served.  (A Unix-socket client is always allowed, as with --allow:
#   the same allow.c check, tested by test-limits.py.)
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, free_port, skip  # noqa: E402
import nbdprobe as P  # noqa: E402

for tool in ("nbdinfo", "certtool", "psktool"):
    if not shutil.which(tool):
        skip("%s not found" % tool)

SRCDIR = os.path.dirname(os.path.abspath(__file__))
M = 1024 * 1024
t = Test()
img = t.image("disk.img", 1 * M, [(0, b"plain" * 100)])
secret = t.image("secret.img", 2 * M, [(0, b"secret" * 100)])
pki = os.path.join(t.scratch, "pki")
subprocess.run(["bash", "-c", '. "$1"; make_pki "$2"', "make_pki",
                os.path.join(SRCDIR, "test-tls-lib.sh"), pki], check=True)


def write_config(name, text):
    path = os.path.join(t.scratch, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def names_listed(where):
    with P.Conn.connect(where) as c:
        c.handshake()
        rt, names = c.list_exports()
        t.eq(P.repname(rt), P.repname(P.REP_ACK), "LIST over %s: answered" % where)
        return sorted(n for n, _ in names)


def refused(where, export, want, what):
    for opt, name in ((P.OPT_INFO, "INFO"), (P.OPT_GO, "GO")):
        with P.Conn.connect(where) as c:
            c.handshake()
            rt, _ = c.option(opt, c.info_payload(export))
            t.eq(P.repname(rt), P.repname(want), "%s: %s" % (what, name))


# ---- tls = require ----------------------------------------------------------------
conf = write_config("tls.conf", """\
[server]
tls = on
tls-certificates = %s/server

[open]
file = disk.img

[secure]
file = secret.img
tls = require
""" % pki)
srv = t.start_server("tls", [], None, config=conf)
t.eq(names_listed(srv.sock), ["open"], "plain text: LIST hides the tls = require export")
refused(srv.sock, "secure", P.REP_ERR_TLS_REQD, "plain text: secure refused")
with P.Conn.connect(srv.sock) as c:
    c.handshake()
    c.send_option(P.OPT_EXPORT_NAME, b"secure")
    t.check(c.wait_closed(30), "plain text: EXPORT_NAME secure: hung up")
with P.Conn.connect(srv.sock) as c:
    c.handshake()
    c.option(P.OPT_STRUCTURED_REPLY)
    rt, _ = c.set_meta_context("secure", ["base:allocation"])
    t.eq(P.repname(rt), P.repname(P.REP_ERR_UNKNOWN),
         "plain text: SET_META_CONTEXT on secure: unknown (TLS_REQD is for INFO/GO)")
    t.eq(c.go("open").size, 1 * M, "plain text: open is served")

tls_uri = "nbds+unix:///%%s?socket=%s&tls-certificates=%s/client" % (srv.sock, pki)
out = subprocess.run(["nbdinfo", "--list", tls_uri % ""], capture_output=True)
listed = out.stdout.decode()
t.check(out.returncode == 0 and 'export="secure"' in listed and 'export="open"' in listed,
        "TLS: LIST shows both exports")
out = subprocess.run(["nbdinfo", "--size", tls_uri % "secure"], capture_output=True)
t.eq(out.stdout.decode().strip(), str(2 * M), "TLS: secure is served")
t.stop_server_ok(srv)

# ---- allow ------------------------------------------------------------------------
port = free_port()
where = "127.0.0.1:%d" % port
conf = write_config("allow.conf", """\
[everyone]
file = disk.img

[near]
file = disk.img
allow = 10.0.0.0/8, 127.0.0.0/8

[far]
file = secret.img
allow = 192.0.2.0/24,2001:db8::/32
""")
srv = t.start_server("allow", [], None, config=conf, tcp=("127.0.0.1", port))
t.eq(names_listed(where), ["everyone", "near"],
     "TCP from 127.0.0.1: LIST hides the export it may not have")
refused(where, "far", P.REP_ERR_POLICY, "TCP from 127.0.0.1: far refused")
with P.Conn.connect(where) as c:
    c.handshake()
    t.eq(c.go("near").size, 1 * M, "TCP from 127.0.0.1: near is served")
out = subprocess.run(["nbdinfo", "--size", srv.uri("far")], capture_output=True)
t.check(out.returncode != 0, "nbdinfo: far refused")
out = subprocess.run(["nbdinfo", "--size", srv.uri("near")], capture_output=True)
t.eq(out.stdout.decode().strip(), str(1 * M), "nbdinfo: near served")
t.stop_server_ok(srv)
t.finish()
