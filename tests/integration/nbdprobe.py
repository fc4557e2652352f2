#!/usr/bin/python3
"""nbdprobe: a tiny raw-socket NBD client for wire-level tests (stdlib only).

libnbd refuses to send invalid traffic, so the edge cases (bad magic, unknown
commands and flags, out-of-range requests, junk option payloads) are sent with
this module instead.  It speaks fixed-newstyle negotiation and the compact
(28-byte) request header; replies may be simple or structured.

    c = Conn.unix("/path/sock")
    c.handshake()
    c.structured_reply()            # -> True on ACK
    c.set_meta_context("", ["base:allocation"])
    info = c.go("")                 # ExportInfo(size, flags, ...)
    r = c.request(CMD_READ, 0, 4096)
    r.error, r.data, r.chunks

Every socket read has a timeout (default 10 s) so a silent server fails a
test instead of hanging it.  A peer that closes the stream raises Closed.

Run as a script for a quick look at a server:
    nbdprobe.py SOCKET_OR_HOST:PORT [EXPORT]
"""

import socket
import struct
import sys

# Magic numbers.
NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

# Handshake flags (server, u16) and client flags (u32).
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1

# Options.
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

# Option reply types.
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR = 1 << 31
REP_ERR_UNSUP = REP_ERR + 1
REP_ERR_POLICY = REP_ERR + 2
REP_ERR_INVALID = REP_ERR + 3
REP_ERR_PLATFORM = REP_ERR + 4
REP_ERR_TLS_REQD = REP_ERR + 5
REP_ERR_UNKNOWN = REP_ERR + 6
REP_ERR_SHUTDOWN = REP_ERR + 7
REP_ERR_BLOCK_SIZE_REQD = REP_ERR + 8
REP_ERR_TOO_BIG = REP_ERR + 9
REP_ERR_EXT_HEADER_REQD = REP_ERR + 10

# NBD_INFO_* items.
INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# Transmission flags.
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_ROTATIONAL = 1 << 4
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8
TF_SEND_RESIZE = 1 << 9
TF_SEND_CACHE = 1 << 10
TF_SEND_FAST_ZERO = 1 << 11

# Commands.
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

# Command flags.
CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

# Structured reply chunk types and flags.
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

# base:allocation bits.
STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1

# NBD error values.
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

_ERRNAMES = {1: "EPERM", 5: "EIO", 12: "ENOMEM", 22: "EINVAL", 28: "ENOSPC",
             75: "EOVERFLOW", 95: "ENOTSUP", 108: "ESHUTDOWN", 0: "OK"}


def errname(e):
    """'EINVAL' for 22, 'OK' for 0, 'E?(n)' otherwise."""
    return _ERRNAMES.get(e, "E?(%d)" % e)


def repname(t):
    """Option reply type name, e.g. 'REP_ERR_UNSUP'."""
    if t == REP_ACK:
        return "REP_ACK"
    for k, v in globals().items():
        if k.startswith("REP_") and v == t and k != "REP_ERR":
            return k
    return "REP_?(0x%x)" % t


def chunkname(t):
    for k, v in globals().items():
        if k.startswith("REPLY_TYPE_") and v == t:
            return k[len("REPLY_TYPE_"):]
    return "?(%d)" % t


class Closed(Exception):
    """The server closed the connection (EOF or reset)."""


class ProtocolError(Exception):
    """The server sent something that does not parse as NBD."""


class ExportInfo:
    def __init__(self):
        self.size = None
        self.flags = None
        self.name = None
        self.description = None
        self.block_min = self.block_pref = self.block_max = None
        self.unknown = []

    def __repr__(self):
        return ("ExportInfo(size=%r, flags=0x%x, name=%r, description=%r, "
                "block=%r/%r/%r)" % (self.size, self.flags or 0, self.name,
                                     self.description, self.block_min,
                                     self.block_pref, self.block_max))


class Chunk:
    """One structured reply chunk, parsed by type."""

    def __init__(self, flags, ctype, cookie, payload):
        self.flags, self.type, self.cookie, self.payload = flags, ctype, cookie, payload
        self.offset = None      # OFFSET_DATA, OFFSET_HOLE, ERROR_OFFSET
        self.data = None        # OFFSET_DATA
        self.size = None        # OFFSET_HOLE
        self.context = None     # BLOCK_STATUS
        self.extents = None     # BLOCK_STATUS: [(length, flags)]
        self.error = None       # ERROR, ERROR_OFFSET
        self.message = None     # ERROR, ERROR_OFFSET
        p = payload
        if ctype == REPLY_TYPE_OFFSET_DATA:
            if len(p) < 9:
                raise ProtocolError("OFFSET_DATA chunk too short (%d)" % len(p))
            self.offset = struct.unpack(">Q", p[:8])[0]
            self.data = p[8:]
        elif ctype == REPLY_TYPE_OFFSET_HOLE:
            if len(p) != 12:
                raise ProtocolError("OFFSET_HOLE chunk length %d != 12" % len(p))
            self.offset, self.size = struct.unpack(">QI", p)
        elif ctype == REPLY_TYPE_BLOCK_STATUS:
            if len(p) < 12 or (len(p) - 4) % 8:
                raise ProtocolError("bad BLOCK_STATUS chunk length %d" % len(p))
            self.context = struct.unpack(">I", p[:4])[0]
            self.extents = [struct.unpack(">II", p[i:i + 8]) for i in range(4, len(p), 8)]
        elif ctype in (REPLY_TYPE_ERROR, REPLY_TYPE_ERROR_OFFSET):
            if len(p) < 6:
                raise ProtocolError("error chunk too short (%d)" % len(p))
            self.error, mlen = struct.unpack(">IH", p[:6])
            if 6 + mlen > len(p):
                raise ProtocolError("error chunk message overruns payload")
            self.message = p[6:6 + mlen].decode("utf-8", "replace")
            if ctype == REPLY_TYPE_ERROR_OFFSET:
                if len(p) != 6 + mlen + 8:
                    raise ProtocolError("ERROR_OFFSET chunk has bad length")
                self.offset = struct.unpack(">Q", p[6 + mlen:])[0]
        elif ctype == REPLY_TYPE_NONE:
            if len(p) != 0:
                raise ProtocolError("NONE chunk with payload")

    @property
    def done(self):
        return bool(self.flags & REPLY_FLAG_DONE)

    def __repr__(self):
        s = "%s%s" % (chunkname(self.type), "|DONE" if self.done else "")
        if self.type == REPLY_TYPE_OFFSET_DATA:
            s += " off=%d len=%d" % (self.offset, len(self.data))
        elif self.type == REPLY_TYPE_OFFSET_HOLE:
            s += " off=%d size=%d" % (self.offset, self.size)
        elif self.type == REPLY_TYPE_BLOCK_STATUS:
            s += " ctx=%d %r" % (self.context, self.extents[:8])
        elif self.error is not None:
            s += " %s %r" % (errname(self.error), self.message)
        return s


class Reply:
    """The whole reply to one request (a simple reply or all its chunks)."""

    def __init__(self, cookie, structured):
        self.cookie = cookie
        self.structured = structured
        self.error = 0          # first non-zero error seen (simple or chunk)
        self.data = None        # simple READ payload
        self.chunks = []

    def errors(self):
        return [c.error for c in self.chunks if c.error is not None]

    def read_data(self, offset, length):
        """Assemble a READ's result from data/hole chunks (or the simple payload).

        Raises ProtocolError if chunks overlap, fall outside the request, or
        leave parts of it uncovered (only checked for error-free replies)."""
        if not self.structured:
            return self.data
        buf = bytearray(length)
        spans = []
        for c in self.chunks:
            if c.type == REPLY_TYPE_OFFSET_DATA:
                s, n = c.offset, len(c.data)
            elif c.type == REPLY_TYPE_OFFSET_HOLE:
                s, n = c.offset, c.size
            else:
                continue
            if n == 0 or s < offset or s + n > offset + length:
                raise ProtocolError("chunk %r outside request [%d,+%d)" % (c, offset, length))
            spans.append((s, n))
            if c.type == REPLY_TYPE_OFFSET_DATA:
                buf[s - offset:s - offset + n] = c.data
        spans.sort()
        pos = offset
        for s, n in spans:
            if s < pos:
                raise ProtocolError("overlapping read chunks at %d" % s)
            if s > pos and not self.error:
                raise ProtocolError("read chunks leave a gap at %d" % pos)
            pos = s + n
        if pos != offset + length and not self.error:
            raise ProtocolError("read chunks end at %d, request ends at %d" % (pos, offset + length))
        return bytes(buf)

    def __repr__(self):
        if not self.structured:
            return "SimpleReply(%s%s)" % (errname(self.error),
                                           "" if self.data is None else ", %d bytes" % len(self.data))
        return "StructuredReply(%s, %r)" % (errname(self.error), self.chunks)


class Conn:
    def __init__(self, sock, timeout=10.0):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.timeout = timeout
        self.hflags = None
        self.sr = False             # structured replies negotiated
        self.no_zeroes = False
        self.info = None
        self.pending = {}           # cookie -> (cmd, length)
        self._next_cookie = 1

    # ---- connection -----------------------------------------------------
    @classmethod
    def connect(cls, where, timeout=10.0):
        """where: a unix socket path (contains '/') or 'host:port'."""
        if "/" in where or not (":" in where):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(where)
        else:
            host, port = where.rsplit(":", 1)
            s = socket.create_connection((host, int(port)), timeout=timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(s, timeout)

    unix = connect

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Closed("send failed: %s" % e)

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            try:
                b = self.sock.recv(min(n - len(buf), 1 << 20))
            except ConnectionResetError:
                raise Closed("connection reset after %d of %d bytes" % (len(buf), n))
            except socket.timeout:
                raise TimeoutError("server sent %d of %d expected bytes within %.1fs"
                                   % (len(buf), n, self.timeout))
            if not b:
                raise Closed("EOF after %d of %d bytes" % (len(buf), n))
            buf += b
        return bytes(buf)

    def wait_closed(self, timeout=5.0):
        """True if the server closes the stream within timeout (any bytes it
        sends first are discarded), False if it is still open."""
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            while True:
                try:
                    b = self.sock.recv(65536)
                except ConnectionResetError:
                    return True
                except socket.timeout:
                    return False
                if not b:
                    return True
        finally:
            self.sock.settimeout(old)

    # ---- handshake ------------------------------------------------------
    def read_greeting(self):
        magic, opt, hflags = struct.unpack(">QQH", self.recv_exact(18))
        if magic != NBDMAGIC:
            raise ProtocolError("bad NBDMAGIC 0x%x" % magic)
        if opt != IHAVEOPT:
            raise ProtocolError("not newstyle (second word 0x%x)" % opt)
        self.hflags = hflags
        return hflags

    def handshake(self, client_flags=None):
        """Read the greeting, send client flags (default: echo FIXED_NEWSTYLE
        and NO_ZEROES if offered).  Returns the server's handshake flags."""
        hflags = self.read_greeting()
        if client_flags is None:
            client_flags = FLAG_C_FIXED_NEWSTYLE if hflags & FLAG_FIXED_NEWSTYLE else 0
            if hflags & FLAG_NO_ZEROES:
                client_flags |= FLAG_C_NO_ZEROES
        self.no_zeroes = bool(client_flags & FLAG_C_NO_ZEROES)
        self.send(struct.pack(">I", client_flags))
        return hflags

    def send_option(self, opt, payload=b"", length=None):
        """Send one option.  length overrides the header's length field
        (to lie about it); the payload is sent as given."""
        if length is None:
            length = len(payload)
        self.send(struct.pack(">QII", IHAVEOPT, opt, length) + payload)

    def read_option_reply(self):
        """-> (option, reply_type, payload)"""
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv_exact(20))
        if magic != OPT_REPLY_MAGIC:
            raise ProtocolError("bad option reply magic 0x%x" % magic)
        if length > 16 << 20:
            raise ProtocolError("option reply length %d is absurd" % length)
        return opt, rtype, self.recv_exact(length)

    def option(self, opt, payload=b"", length=None):
        """Send an option and read replies up to the final one (ACK or error).
        Returns (final_reply_type, [(type, payload), ...] of all replies).
        Raises ProtocolError if a reply echoes the wrong option."""
        self.send_option(opt, payload, length)
        replies = []
        while True:
            o, t, p = self.read_option_reply()
            if o != opt:
                raise ProtocolError("reply for option %d while waiting for %d" % (o, opt))
            replies.append((t, p))
            if t == REP_ACK or t & REP_ERR:
                return t, replies

    def structured_reply(self):
        t, _ = self.option(OPT_STRUCTURED_REPLY)
        if t == REP_ACK:
            self.sr = True
        return t == REP_ACK

    @staticmethod
    def meta_payload(export, queries):
        e = export.encode()
        p = struct.pack(">I", len(e)) + e + struct.pack(">I", len(queries))
        for q in queries:
            qb = q.encode()
            p += struct.pack(">I", len(qb)) + qb
        return p

    def set_meta_context(self, export, queries, opt=OPT_SET_META_CONTEXT):
        """-> (final_reply_type, {context_name: id})"""
        t, reps = self.option(opt, self.meta_payload(export, queries))
        ctx = {}
        for rt, p in reps:
            if rt == REP_META_CONTEXT:
                cid = struct.unpack(">I", p[:4])[0]
                ctx[p[4:].decode()] = cid
        if opt == OPT_SET_META_CONTEXT and t == REP_ACK:
            self.contexts = ctx
        return t, ctx

    def list_exports(self, payload=b""):
        """-> (final_reply_type, [(name, description)])"""
        t, reps = self.option(OPT_LIST, payload)
        out = []
        for rt, p in reps:
            if rt == REP_SERVER:
                n = struct.unpack(">I", p[:4])[0]
                out.append((p[4:4 + n].decode(), p[4 + n:].decode()))
        return t, out

    @staticmethod
    def info_payload(export, requests=()):
        e = export.encode()
        return (struct.pack(">I", len(e)) + e + struct.pack(">H", len(requests))
                + b"".join(struct.pack(">H", r) for r in requests))

    def _info_or_go(self, opt, export, requests):
        t, reps = self.option(opt, self.info_payload(export, requests))
        info = ExportInfo()
        for rt, p in reps:
            if rt != REP_INFO:
                continue
            itype = struct.unpack(">H", p[:2])[0]
            if itype == INFO_EXPORT:
                if len(p) != 12:
                    raise ProtocolError("INFO_EXPORT length %d != 12" % len(p))
                info.size, info.flags = struct.unpack(">QH", p[2:])
            elif itype == INFO_NAME:
                info.name = p[2:].decode()
            elif itype == INFO_DESCRIPTION:
                info.description = p[2:].decode()
            elif itype == INFO_BLOCK_SIZE:
                if len(p) != 14:
                    raise ProtocolError("INFO_BLOCK_SIZE length %d != 14" % len(p))
                info.block_min, info.block_pref, info.block_max = struct.unpack(">III", p[2:])
            else:
                info.unknown.append((itype, p[2:]))
        if t == REP_ACK and info.size is None:
            raise ProtocolError("ACK without NBD_INFO_EXPORT")
        return t, info

    def info_opt(self, export="", requests=(INFO_BLOCK_SIZE,)):
        """NBD_OPT_INFO -> (final_reply_type, ExportInfo)"""
        return self._info_or_go(OPT_INFO, export, requests)

    def go(self, export="", requests=(INFO_BLOCK_SIZE,)):
        """NBD_OPT_GO; raises ProtocolError unless ACKed.  -> ExportInfo"""
        t, info = self._info_or_go(OPT_GO, export, requests)
        if t != REP_ACK:
            raise ProtocolError("GO %r failed: %s" % (export, repname(t)))
        self.info = info
        return info

    def export_name(self, export=""):
        """NBD_OPT_EXPORT_NAME -> ExportInfo (size, flags)."""
        self.send_option(OPT_EXPORT_NAME, export.encode())
        size, flags = struct.unpack(">QH", self.recv_exact(10))
        if not self.no_zeroes:
            self.recv_exact(124)
        info = ExportInfo()
        info.size, info.flags = size, flags
        self.info = info
        return info

    def open(self, export="", sr=True, contexts=()):
        """Handshake + optional SR + optional SET_META_CONTEXT + GO."""
        self.handshake()
        if sr:
            if not self.structured_reply():
                raise ProtocolError("server refused structured replies")
        if contexts:
            t, ctx = self.set_meta_context(export, list(contexts))
            if t != REP_ACK:
                raise ProtocolError("SET_META_CONTEXT failed: %s" % repname(t))
        return self.go(export)

    # ---- transmission ---------------------------------------------------
    def send_request(self, cmd, offset=0, length=0, flags=0, payload=None,
                     cookie=None, magic=REQUEST_MAGIC, raw_tail=b""):
        """Send one 28-byte request (+ payload).  For WRITE without payload
        given, `length` bytes of 0xa5 are sent.  Returns the cookie."""
        if cookie is None:
            cookie = self._next_cookie
            self._next_cookie += 1
        if payload is None and cmd == CMD_WRITE:
            payload = b"\xa5" * length
        hdr = struct.pack(">IHHQQI", magic, flags, cmd, cookie,
                          offset & 0xFFFFFFFFFFFFFFFF, length & 0xFFFFFFFF)
        self.pending[cookie] = (cmd, length)
        self.send(hdr + (payload or b"") + raw_tail)
        return cookie

    def read_reply(self):
        """Read one complete reply (simple, or chunks up to DONE; chunks of
        other cookies are collected into their own Reply objects)."""
        partial = {}
        while True:
            magic = struct.unpack(">I", self.recv_exact(4))[0]
            if magic == SIMPLE_REPLY_MAGIC:
                error, cookie = struct.unpack(">IQ", self.recv_exact(12))
                cmd, length = self.pending.pop(cookie, (None, 0))
                r = Reply(cookie, False)
                r.error = error
                # A simple reply to READ carries data only on success.  (With
                # structured replies negotiated a READ must not get one.)
                if cmd == CMD_READ and error == 0:
                    r.data = self.recv_exact(length)
                return r
            if magic == STRUCTURED_REPLY_MAGIC:
                flags, ctype, cookie, length = struct.unpack(">HHQI", self.recv_exact(16))
                if length > (64 << 20):
                    raise ProtocolError("chunk length %d is absurd" % length)
                c = Chunk(flags, ctype, cookie, self.recv_exact(length))
                r = partial.setdefault(cookie, Reply(cookie, True))
                r.chunks.append(c)
                if c.error is not None and not r.error:
                    r.error = c.error
                if c.done:
                    self.pending.pop(cookie, None)
                    del partial[cookie]
                    return r
                continue
            raise ProtocolError("bad reply magic 0x%08x" % magic)

    def request(self, cmd, offset=0, length=0, flags=0, payload=None, **kw):
        """send_request + read_reply, checking the cookie is echoed."""
        cookie = self.send_request(cmd, offset, length, flags, payload, **kw)
        r = self.read_reply()
        if r.cookie != cookie:
            raise ProtocolError("reply cookie %d != request cookie %d" % (r.cookie, cookie))
        return r

    def pread(self, offset, length, flags=0):
        """READ that must succeed; returns the bytes."""
        r = self.request(CMD_READ, offset, length, flags)
        if r.error:
            raise ProtocolError("READ %d+%d failed: %s %r" % (offset, length, errname(r.error), r))
        return r.read_data(offset, length)

    def pwrite(self, data, offset, flags=0):
        r = self.request(CMD_WRITE, offset, len(data), flags, data)
        if r.error:
            raise ProtocolError("WRITE %d+%d failed: %s" % (offset, len(data), errname(r.error)))

    def disconnect(self):
        """NBD_CMD_DISC, then close."""
        try:
            self.send_request(CMD_DISC)
        except Closed:
            pass
        self.close()


def _main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    export = argv[2] if len(argv) > 2 else ""
    with Conn.connect(argv[1]) as c:
        hf = c.handshake()
        print("handshake flags 0x%x" % hf)
        print("STRUCTURED_REPLY:", c.structured_reply())
        t, ctx = c.set_meta_context(export, ["base:allocation"])
        print("SET_META_CONTEXT:", repname(t), ctx)
        t, exports = c.list_exports()
        print("LIST:", repname(t), exports)
        info = c.go(export)
        print("GO:", info)
        r = c.request(CMD_READ, 0, min(4096, info.size))
        print("READ 0:", r)
        if ctx:
            print("BLOCK_STATUS:", c.request(CMD_BLOCK_STATUS, 0, info.size))
        c.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
