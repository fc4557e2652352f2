"""harness: the Python side of lib.sh (scratch dir, servers, checks).

    from harness import Test
    t = Test()                      # scratch dir, cleanup at exit
    srv = t.start_server("a", ["-t"], image)
    ... t.check(cond, "what") / t.eq(got, want, "what") ...
    t.finish()                      # exit 0 or 1

Environment: NBDSTACK (server program, qemu-nbd CLI), SRCDIR, TMPDIR,
MESON_BUILD_ROOT, as for lib.sh.  Exit codes: 0 pass, 1 fail, 77 skip.
"""

import atexit
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.environ.get("SRCDIR", HERE)


def server_program():
    p = os.environ.get("NBDSTACK")
    if p:
        return p
    if os.environ.get("MESON_BUILD_ROOT"):
        return os.path.join(os.environ["MESON_BUILD_ROOT"], "server", "nbdstack")
    return os.path.normpath(os.path.join(SRCDIR, "..", "..", "build", "server", "nbdstack"))


NBDSTACK = server_program()
SERVER_KIND = "qemu-nbd" if os.path.basename(NBDSTACK).startswith("qemu-nbd") else "nbdstack"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    """A TCP port nothing listens on now (the kernel's pick)."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    def __init__(self, test, name, args, image, start_timeout=15.0, wrapper=None,
                 program=None, config=None, tcp=None):
        self.test = test
        self.name = name
        self.sock = os.path.join(test.scratch, name + ".sock")
        self.pidfile = os.path.join(test.scratch, name + ".pid")
        self.logpath = os.path.join(test.scratch, name + ".log")
        for p in (self.sock, self.pidfile):
            if os.path.exists(p):
                os.unlink(p)
        # wrapper: a command the server runs under (strace); signals then go
        # to the server itself, by its pid file, and the wrapper's exit
        # status is the server's.
        self.wrapper = list(wrapper or [])
        # image None: the arguments name the export (--plugin ...).
        # program: another server with qemu-nbd's command line (the peer).
        # config: a configuration file naming the exports (no -f, no image;
        # it makes the server persistent).
        # tcp: (host, port) to listen on instead of the Unix socket.
        self.tcp = tcp
        self.argv = self.wrapper + [program or NBDSTACK]
        self.argv += ["--config", config] if config else ["-f", "raw"]
        self.argv += ["-b", tcp[0], "-p", str(tcp[1])] if tcp else ["-k", self.sock]
        self.argv += ["--pid-file=" + self.pidfile] + list(args)
        if image is not None:
            self.argv.append(image)
        self.log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        persistent = config or "-t" in args or "--persistent" in args
        deadline = time.monotonic() + start_timeout
        while True:
            if self.proc.poll() is not None:
                self.test.fatal("server %r exited with %d during start-up: %s\n%s"
                                % (name, self.proc.returncode, " ".join(self.argv), self.logtext()))
            if (os.path.exists(self.pidfile) and os.path.getsize(self.pidfile) > 0
                    and (tcp or os.path.exists(self.sock))
                    and (not (persistent or tcp) or self._connectable())):
                break
            if time.monotonic() > deadline:
                self.test.fatal("server %r not ready after %.0fs: %s\n%s"
                                % (name, start_timeout, " ".join(self.argv), self.logtext()))
            time.sleep(0.05)

    def _connectable(self):
        s = socket.socket(socket.AF_INET if self.tcp else socket.AF_UNIX)
        s.settimeout(2)
        try:
            s.connect(self.tcp or self.sock)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def logtext(self):
        try:
            with open(self.logpath, "rb") as f:
                return "".join("  server: " + l + "\n" for l in f.read().decode("utf-8", "replace").splitlines())
        except OSError:
            return ""

    def uri(self, export=""):
        if self.tcp:
            return "nbd://%s:%d/%s" % (self.tcp[0], self.tcp[1], export)
        return "nbd+unix:///%s?socket=%s" % (export, self.sock)

    def alive(self):
        return self.proc.poll() is None

    def client(self, export=""):
        """A libnbd handle connected to the export."""
        h = libnbd().NBD()
        h.connect_uri(self.uri(export))
        return h

    def wait_log(self, text, count=1, timeout=60.0):
        """Wait until the log has text in it count times (a server's own
        account of what it did, such as a reload); False if it never
        comes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.logtext().count(text) >= count:
                return True
            if not self.alive():
                return False
            time.sleep(0.05)
        return False

    def pid(self):
        """The server's own pid (under a wrapper, from its pid file)."""
        if not self.wrapper:
            return self.proc.pid
        with open(self.pidfile) as f:
            return int(f.read())

    def rss_kib(self):
        """Resident memory (VmRSS) in KiB."""
        with open("/proc/%d/status" % self.pid()) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise OSError("no VmRSS for pid %d" % self.pid())

    def sanitized(self):
        """Built with AddressSanitizer?  (Its quarantine and shadow memory
        make RSS mean little; LeakSanitizer checks leaks at exit instead.)"""
        with open("/proc/%d/maps" % self.pid()) as f:
            if "libasan" in f.read():
                return True
        with open("/proc/%d/exe" % self.pid(), "rb") as f:
            return b"__asan_init" in f.read()  # clang links it statically

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Signal and wait; returns the exit status (-N: killed by signal N;
        None: had to be SIGKILLed after timeout)."""
        if self.proc.poll() is None:
            if self.wrapper:
                with open(self.pidfile) as f:
                    os.kill(int(f.read()), sig)
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.log.close()
                return None
        self.log.close()
        return self.proc.returncode


class Test:
    def __init__(self, holes=False):
        self.name = os.path.basename(sys.argv[0])
        self.failures = 0
        self.servers = []
        self.scratch = None
        bases = [os.environ.get("TMPDIR") or "/tmp"]
        if holes:
            bases += ["/var/tmp", os.environ.get("MESON_BUILD_ROOT", "")]
        for base in bases:
            if not base or not os.path.isdir(base):
                continue
            d = tempfile.mkdtemp(prefix="nbdstack-it.", dir=base)
            if not holes or self._holes_work(d):
                self.scratch = d
                break
            shutil.rmtree(d, ignore_errors=True)
        if self.scratch is None:
            self.fatal("no scratch directory%s" % (" with 4K hole support" if holes else ""))
        atexit.register(self._cleanup)
        if not (shutil.which(NBDSTACK) or os.access(NBDSTACK, os.X_OK)):
            self.fatal("server program not found: %s (build it, or set NBDSTACK)" % NBDSTACK)

    @staticmethod
    def _holes_work(d):
        p = os.path.join(d, ".holeprobe")
        try:
            with open(p, "wb") as f:
                f.truncate(1 << 20)
                f.seek(32768)
                f.write(os.urandom(4096))
            fd = os.open(p, os.O_RDONLY)
            try:
                return (os.lseek(fd, 0, os.SEEK_DATA) == 32768
                        and os.lseek(fd, 32768, os.SEEK_HOLE) == 36864)
            finally:
                os.close(fd)
                os.unlink(p)
        except OSError:
            return False

    def _cleanup(self):
        for s in self.servers:
            try:
                s.stop(timeout=5)
            except Exception:
                pass
        if self.scratch and os.environ.get("KEEP_SCRATCH") and self.failures:
            print("scratch kept: %s" % self.scratch, file=sys.stderr)
        elif self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)

    # ---- servers ---------------------------------------------------------
    def start_server(self, name, args, image, wrapper=None, program=None,
                     config=None, tcp=None):
        s = Server(self, name, args, image, wrapper=wrapper, program=program,
                   config=config, tcp=tcp)
        self.servers.append(s)
        return s

    def stop_server_ok(self, srv):
        rc = srv.stop()
        self.eq(rc, 0, "server %r exit status after SIGTERM" % srv.name)
        if rc != 0:
            sys.stderr.write(srv.logtext())

    def image(self, name, size, fill=None):
        """A sparse image of size bytes; fill=(offset, bytes) pieces."""
        p = os.path.join(self.scratch, name)
        with open(p, "wb") as f:
            f.truncate(size)
            for off, data in (fill or []):
                f.seek(off)
                f.write(data)
        return p

    def qemu_img_check(self, img, what):
        """qemu-img check finds no corruption: exit 0, or 3 (leaked
        clusters only); its output goes to stderr otherwise."""
        p = subprocess.run(["qemu-img", "check", img], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        if not self.check(p.returncode in (0, 3), "%s: qemu-img check exit %d (0, or 3: leaks only)"
                          % (what, p.returncode)):
            sys.stderr.write("".join("  check: " + l + "\n"
                                     for l in p.stdout.decode(errors="replace").splitlines()))

    def disk_bytes(self, img, fmt):
        """The whole disk an image holds: a raw file's bytes, or a qcow2
        image converted by qemu-img."""
        if fmt != "raw":
            raw = os.path.join(self.scratch, ".disk_bytes.raw")
            subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", img, raw], check=True)
            img = raw
        with open(img, "rb") as f:
            data = f.read()
        if fmt != "raw":
            os.unlink(img)
        return data

    # ---- checks ----------------------------------------------------------
    def ok(self, what):
        print("ok - %s" % what)

    def fail(self, what):
        print("FAIL: %s: %s" % (self.name, what), file=sys.stderr)
        sys.stderr.flush()
        self.failures += 1

    def fatal(self, what):
        """Fail and stop now."""
        self.fail(what)
        sys.exit(1)

    def check(self, cond, what, xfail=None):
        """xfail=(peer, why): a failure with that peer is reported as XFAIL
        (nbdstack follows the spec where that peer does not)."""
        if cond:
            self.ok(what)
        elif xfail and SERVER_KIND == xfail[0]:
            print("XFAIL - %s (%s: %s)" % (what, xfail[0], xfail[1]))
        else:
            self.fail(what)
        return bool(cond)

    def eq(self, got, want, what, xfail=None):
        if got == want:
            self.ok("%s = %s" % (what, _short(want)))
            return True
        if xfail and SERVER_KIND == xfail[0]:
            print("XFAIL - %s: got %s, nbdstack must give %s (%s: %s)"
                  % (what, _short(got), _short(want), xfail[0], xfail[1]))
            return False
        self.fail("%s: got %s, expected %s" % (what, _short(got), _short(want)))
        return False

    def same(self, got, want, what):
        """Byte strings equal; on mismatch report the first differing offset."""
        if got == want:
            self.ok("%s (%d bytes)" % (what, len(want)))
            return True
        if len(got) != len(want):
            self.fail("%s: got %d bytes, expected %d" % (what, len(got), len(want)))
        else:
            i = next(i for i in range(len(got)) if got[i] != want[i])
            self.fail("%s: first difference at +%d: 0x%02x, expected 0x%02x" % (what, i, got[i], want[i]))
        return False

    def finish(self):
        if self.failures:
            print("%s: %d check(s) failed" % (self.name, self.failures), file=sys.stderr)
            sys.exit(1)
        print("%s: PASS" % self.name)
        sys.exit(0)


def _short(v):
    s = repr(v)
    return s if len(s) <= 120 else s[:117] + "..."


def libnbd():
    """python3-libnbd's module (Debian's, beside the python3 first on PATH),
    or skip the test without it."""
    sys.path.insert(0, "/usr/lib/python3/dist-packages")
    try:
        import nbd
    except ImportError:
        skip("python3-libnbd missing")
    return nbd


def skip(why):
    print("SKIP: %s: %s" % (os.path.basename(sys.argv[0]), why), file=sys.stderr)
    sys.exit(77)
