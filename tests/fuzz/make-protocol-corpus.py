#!/usr/bin/python3
"""Make the seed corpus of tests/fuzz/fuzz-protocol.c: well-formed and
edge-case inputs for each parser (the format is described in that file).

The seeds are committed: run this only to regenerate them
(python3 tests/fuzz/make-protocol-corpus.py [OUTDIR])."""
import os
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "corpus", "protocol")
os.makedirs(out, exist_ok=True)

REQUEST_MAGIC = 0x25609513
# Transmission flags: HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM,
# SEND_WRITE_ZEROES, SEND_DF, CAN_MULTI_CONN, SEND_CACHE, SEND_FAST_ZERO.
RW = 0x1 | 0x4 | 0x8 | 0x20 | 0x40 | 0x80 | 0x100 | 0x400 | 0x800
RO = 0x1 | 0x2 | 0x4 | 0x100


def write(name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)


def control(eflags, structured=True, meta=3, size_sel=4, bmin_sel=0, bmax_sel=0,
            raw_size=None):
    """8 control bytes: the negotiated state."""
    bits = (1 if structured else 0) | (meta << 1)
    if raw_size is not None:
        return struct.pack(">HBBI", eflags, bits, 0x80 | bmin_sel << 3 | bmax_sel << 5,
                           raw_size)
    return struct.pack(">HBBI", eflags, bits, size_sel | bmin_sel << 3 | bmax_sel << 5, 0)


def request(flags, cmd, offset, count, cookie=1):
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, cookie, offset, count)


# Requests: every command, valid and at the edges (size 1 MiB: selector 4).
M = 1 << 20
cases = [
    ("read", RW, request(0, 0, 0, 4096)),
    ("read-df", RW, request(4, 0, 0, 4096)),
    ("read-end", RW, request(0, 0, M - 512, 512)),
    ("read-past-end", RW, request(0, 0, M - 512, 1024)),
    ("read-wrap", RW, request(0, 0, 2**64 - 512, 1024)),
    ("read-too-big", RW, request(0, 0, 0, 64 * M)),
    ("write-fua", RW, request(1, 1, 4096, 4096)),
    ("write-ro", RO, request(0, 1, 0, 512)),
    ("disc", RW, request(0, 2, 0, 0)),
    ("flush", RW, request(0, 3, 0, 0)),
    ("flush-unadvertised", RO & ~0x4, request(0, 3, 0, 0)),
    ("trim", RW, request(0, 4, 0, 65536)),
    ("cache", RW, request(0, 5, 0, 65536)),
    ("zero-nohole-fast", RW, request(0x12, 6, 0, M)),
    ("block-status", RW, request(0x8, 7, 0, M)),
    ("block-status-zero", RW, request(0, 7, 0, 0)),
    ("unknown-cmd", RW, request(0, 99, 0, 0)),
    ("unknown-flags", RW, request(0xffff, 0, 0, 512)),
    ("bad-magic", RW, struct.pack(">I", 0x25609514) + request(0, 0, 0, 512)[4:]),
]
for name, eflags, req in cases:
    write("req-" + name, b"\x00" + control(eflags) + req)
write("req-aligned-4k", b"\x00" + control(RW, bmin_sel=2) + request(0, 0, 4096, 8192))
write("req-unaligned-4k", b"\x00" + control(RW, bmin_sel=2) + request(0, 1, 512, 4096))
write("req-raw-size", b"\x00" + control(RW, raw_size=12345) + request(0, 0, 12000, 345))
write("req-no-structured", b"\x00" + control(RW, structured=False, meta=0)
      + request(0, 7, 0, 512))

# NBD_OPT_INFO / GO payloads: name length, name, count, info requests.
def info(name, reqs, lie=None):
    n = name.encode()
    return (struct.pack(">I", len(n) if lie is None else lie) + n
            + struct.pack(">H", len(reqs)) + b"".join(struct.pack(">H", r) for r in reqs))


write("info-default", b"\x01" + info("", [3]))
write("info-named", b"\x01" + info("disk", [0, 1, 2, 3]))
write("info-long-name", b"\x01" + info("x" * 4096, []))
write("info-name-lies", b"\x01" + info("abc", [3], lie=0xffffffff))
write("info-short", b"\x01" + b"\x00\x00\x00")


# *_META_CONTEXT payloads: export name, query count, queries.
def meta(name, queries, count=None):
    n = name.encode()
    qs = [q.encode() for q in queries]
    return (struct.pack(">I", len(n)) + n
            + struct.pack(">I", len(qs) if count is None else count)
            + b"".join(struct.pack(">I", len(q)) + q for q in qs))


write("meta-base", b"\x02" + meta("", ["base:allocation"]))
write("meta-two", b"\x02" + meta("disk", ["base:allocation", "qemu:allocation-depth"]))
write("meta-list-all", b"\x02" + meta("", []))
write("meta-namespace", b"\x02" + meta("", ["base:", "qemu:"]))
write("meta-count-lies", b"\x02" + meta("", ["base:allocation"], count=1000))
write("meta-trailing", b"\x02" + meta("", ["base:allocation"]) + b"junk")
