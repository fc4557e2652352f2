#!/usr/bin/python3
# nbds:// upstreams: TLS through libnbd, with libnbd's URI query
# parameters.  An X.509 CA, server and client certificate made here by
# certtool, and a PSK file made by psktool; the upstream is
# `nbdkit --tls=require` (memory), which refuses plain connections.
#
# - nbds+unix:// with tls-certificates=DIR (nbdkit verifying the client's
#   certificate too) and nbds://localhost:PORT (the server certificate
#   names localhost): writes and reads through the chain, seen upstream;
# - nbds+unix://USER@/?tls-psk-file=FILE: the same with a pre-shared key;
# - refused, with a clear one-line error and exit status 1: a plain nbd://
#   URI to the TLS-only upstream, a server certificate the client's CA did
#   not sign (over TCP: libnbd 1.14 verifies the server only against a host
#   name), a client certificate nbdkit cannot verify, a wrong PSK;
#   tls-verify-peer=false accepts the unverifiable server;
# - the upstream restarts: the chain reconnects over TLS.
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Test, skip, SERVER_KIND, NBDSTACK  # noqa: E402
from nbdpeers import Peers  # noqa: E402

try:
    import nbd
except ImportError:
    skip("python3-libnbd (module nbd) is not installed for /usr/bin/python3")
if SERVER_KIND != "nbdstack":
    skip("the nbd layer is an nbdstack feature")
for tool in ("nbdkit", "certtool", "psktool"):
    if not shutil.which(tool):
        skip("%s is not installed" % tool)
if not nbd.NBD().supports_tls():
    skip("this libnbd was built without TLS")

K = 1024
M = K * K
t = Test()
D = t.scratch
peers = Peers(t)


def run(argv, stdin=None):
    r = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=D)
    if r.returncode != 0:
        t.fatal("%s failed: %s" % (" ".join(argv), r.stdout.decode(errors="replace")))


def make_ca(name):
    key, cert = os.path.join(D, name + "-key.pem"), os.path.join(D, name + "-cert.pem")
    run(["certtool", "--generate-privkey", "--outfile", key])
    with open(os.path.join(D, name + ".info"), "w") as f:
        f.write("cn = %s\nca\ncert_signing_key\nexpiration_days = 30\n" % name)
    run(["certtool", "--generate-self-signed", "--load-privkey", key,
         "--template", os.path.join(D, name + ".info"), "--outfile", cert])
    return key, cert


def make_cert(ca, name, role, extra=""):
    key, cert = os.path.join(D, name + "-key.pem"), os.path.join(D, name + "-cert.pem")
    run(["certtool", "--generate-privkey", "--outfile", key])
    with open(os.path.join(D, name + ".info"), "w") as f:
        f.write("cn = %s\n%s%s\nencryption_key\nsigning_key\nexpiration_days = 30\n"
                % (name, extra, role))
    run(["certtool", "--generate-certificate", "--load-ca-certificate", ca[1],
         "--load-ca-privkey", ca[0], "--load-privkey", key,
         "--template", os.path.join(D, name + ".info"), "--outfile", cert])
    return key, cert


def pki_dir(name, ca_cert, files):
    """A directory as nbdkit (server-*) or libnbd (client-*) wants it."""
    d = os.path.join(D, name)
    os.mkdir(d)
    shutil.copy(ca_cert, os.path.join(d, "ca-cert.pem"))
    for src, dst in files:
        shutil.copy(src, os.path.join(d, dst))
    return d


ca = make_ca("ca")
other_ca = make_ca("other-ca")
srv = make_cert(ca, "localhost", "tls_www_server", "dns_name = localhost\nip_address = 127.0.0.1\n")
cli = make_cert(ca, "client", "tls_www_client")
srv_dir = pki_dir("server-pki", ca[1], [(srv[0], "server-key.pem"), (srv[1], "server-cert.pem")])
cli_dir = pki_dir("client-pki", ca[1], [(cli[0], "client-key.pem"), (cli[1], "client-cert.pem")])
# A client whose CA is not the server's: it cannot verify the server.
oth_cli = make_cert(other_ca, "other-client", "tls_www_client")
oth_dir = pki_dir("other-pki", other_ca[1], [(oth_cli[0], "client-key.pem"), (oth_cli[1], "client-cert.pem")])

psk = os.path.join(D, "keys.psk")
run(["psktool", "-u", "alice", "-p", psk])
bad_psk = os.path.join(D, "bad.psk")
run(["psktool", "-u", "alice", "-p", bad_psk])


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_nbdkit(name, tls_args, addr):
    """addr: a unix socket path, or a TCP port on 127.0.0.1."""
    where = ["-U", addr] if isinstance(addr, str) else ["-i", "127.0.0.1", "-p", str(addr)]
    return peers.start(name, ["nbdkit", "-f", "--tls=require"] + tls_args + where + ["memory", "64M"],
                       addr if isinstance(addr, str) else ("127.0.0.1", addr))


def refused(what, uri, pattern):
    r = subprocess.run([NBDSTACK, "-f", "raw", "-k", os.path.join(D, "refused.sock"), uri],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    msg = r.stdout.decode(errors="replace").strip()
    why = msg.split(": nbd_connect_uri: ")[-1].lower()   # not the URI
    t.check(r.returncode == 1 and len(msg.splitlines()) == 1 and pattern in why,
            "%s: refused with exit %d: %r" % (what, r.returncode, msg))


def through_chain(what, up_uri, verify=True):
    """A chain over up_uri: data written through it is upstream."""
    chain = t.start_server("chain", ["-t", "-e", "4", "--threads", "2"], up_uri)
    h = nbd.NBD()
    h.connect_uri(chain.uri())
    data = os.urandom(1 * M + 3)
    h.pwrite(data, 5 * M + 1, nbd.CMD_FLAG_FUA)
    t.same(h.pread(len(data), 5 * M + 1), data, "%s: read back through the chain" % what)
    up = nbd.NBD()
    up.set_uri_allow_local_file(True)
    up.set_tls_verify_peer(verify)   # libnbd 1.14 ignores it in a URI
    up.connect_uri(up_uri)
    t.eq(up.get_tls_negotiated(), True, "%s: the direct check connection is TLS" % what)
    t.same(up.pread(len(data), 5 * M + 1), data, "%s: the upstream holds the write" % what)
    up.shutdown()
    h.shutdown()
    return chain


# --- X.509 over a unix socket, client certificate verified by nbdkit ----------
usock = os.path.join(D, "up.sock")
kit = start_nbdkit("nbdkit-x509", ["--tls-certificates=" + srv_dir, "--tls-verify-peer"], usock)
x509_uri = "nbds+unix:///?socket=%s&tls-certificates=%s" % (usock, cli_dir)
chain = through_chain("nbds+unix X.509", x509_uri)

refused("plain nbd+unix:// to a TLS-only upstream", "nbd+unix:///?socket=" + usock, "tls")
refused("nbdkit --tls-verify-peer: a client certificate of another CA",
        "nbds+unix:///?socket=%s&tls-certificates=%s" % (usock, oth_dir), "gnutls")

# The upstream restarts: the chain's handles reconnect over TLS.
h = nbd.NBD()
h.connect_uri(chain.uri())
h.pwrite(b"\x11" * 4096, 0)
kit.send_signal(signal.SIGKILL)
kit.wait()
err = None
try:
    h.pread(4096, 0)
except nbd.Error as e:
    err = e.errno
t.eq(err, "EIO", "upstream killed: a read through the chain fails with EIO")
kit = start_nbdkit("nbdkit-x509", ["--tls-certificates=" + srv_dir, "--tls-verify-peer"], usock)
deadline = time.monotonic() + 20
ok = False
while time.monotonic() < deadline:
    try:
        h.pwrite(b"\x22" * 4096, 8192)
        ok = True
        break
    except nbd.Error:
        time.sleep(0.2)
t.check(ok, "upstream restarted: the chain reconnects over TLS and writes succeed")
if ok:
    t.same(h.pread(4096, 8192), b"\x22" * 4096, "after the TLS reconnect: read back")
h.shutdown()
t.stop_server_ok(chain)
kit.kill()
kit.wait()

# --- X.509 over TCP: the certificate names localhost; libnbd verifies the
# server (only over TCP: libnbd 1.14 checks the certificate against the
# host name, and a unix socket has none), unless tls-verify-peer=false ----
port = free_port()
kit = start_nbdkit("nbdkit-tcp", ["--tls-certificates=" + srv_dir], port)
tcp_uri = "nbds://localhost:%d/?tls-certificates=%%s" % port
t.stop_server_ok(through_chain("nbds://localhost X.509", tcp_uri % cli_dir))
refused("a server certificate the client's CA did not sign", tcp_uri % oth_dir, "verif")
t.stop_server_ok(through_chain("tls-verify-peer=false", tcp_uri % oth_dir + "&tls-verify-peer=false", False))
refused("tls-verify-peer=maybe", tcp_uri % cli_dir + "&tls-verify-peer=maybe", "tls-verify-peer must be")
kit.kill()
kit.wait()

# --- PSK ---------------------------------------------------------------------------
kit = start_nbdkit("nbdkit-psk", ["--tls-psk=" + psk], usock)
t.stop_server_ok(through_chain("nbds+unix PSK", "nbds+unix://alice@/?socket=%s&tls-psk-file=%s" % (usock, psk)))
refused("a wrong PSK", "nbds+unix://alice@/?socket=%s&tls-psk-file=%s" % (usock, bad_psk), "tls")
kit.kill()
kit.wait()
t.finish()
