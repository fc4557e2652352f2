#!/usr/bin/python3
"""Make the seed corpus of tests/fuzz/fuzz-handshake.c: whole negotiations
as real clients send them, and the hostile ones of test-hostile.py (the
input format is described in that file).

The seeds are committed: run this only to regenerate them
(python3 tests/fuzz/make-handshake-corpus.py [OUTDIR])."""
import os
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "corpus", "handshake")
os.makedirs(out, exist_ok=True)

IHAVEOPT = 0x49484156454F5054
EXPORT_NAME, ABORT, LIST, STARTTLS, INFO, GO, SR, LIST_META, SET_META = 1, 2, 3, 5, 6, 7, 8, 9, 10
FIXED, NO_ZEROES = 1, 2
TLS_OFF, TLS_ON, TLS_REQUIRE = 0, 1, 2
DEPTH = 4           # config bit: -A
ALL_AT_ONCE = 0xF0  # config: the read size, everything at once
BYTEWISE = 0x00     # config: one byte per read


def opt(o, payload=b"", length=None):
    return struct.pack(">QII", IHAVEOPT, o, len(payload) if length is None else length) + payload


def info(name, reqs=(3,)):
    n = name.encode()
    return struct.pack(">I", len(n)) + n + struct.pack(">H", len(reqs)) + b"".join(
        struct.pack(">H", r) for r in reqs)


def meta(name, queries, count=None):
    n = name.encode()
    qs = [q.encode() for q in queries]
    return (struct.pack(">I", len(n)) + n + struct.pack(">I", len(qs) if count is None else count)
            + b"".join(struct.pack(">I", len(q)) + q for q in qs))


def write(name, config, flags, *options):
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([config]) + struct.pack(">I", flags) + b"".join(options))


both = FIXED | NO_ZEROES
# What real clients send.
write("libnbd-go", ALL_AT_ONCE, both, opt(SR), opt(SET_META, meta("", ["base:allocation"])),
      opt(GO, info("", (3, 1))))
write("qemu-go-depth", ALL_AT_ONCE | DEPTH, both, opt(SR),
      opt(SET_META, meta("", ["base:allocation", "qemu:allocation-depth"])), opt(GO, info("")))
write("nbdinfo-list", 0x90, both, opt(LIST), opt(SR), opt(LIST_META, meta("", [])),
      opt(INFO, info("disk", (0, 1, 2, 3))), opt(ABORT))
write("kernel-export-name", ALL_AT_ONCE, FIXED, opt(EXPORT_NAME, b"disk"))
write("oldstyle-export-name", BYTEWISE, 0, opt(EXPORT_NAME, b""))
write("starttls-on", ALL_AT_ONCE | TLS_ON, both, opt(SR), opt(STARTTLS), opt(SR),
      opt(SET_META, meta("", ["base:allocation"])), opt(GO, info("")))
write("starttls-require", 0x50 | TLS_REQUIRE, both, opt(LIST), opt(STARTTLS), opt(GO, info("disk")))
write("starttls-require-bytewise", BYTEWISE | TLS_REQUIRE, both, opt(STARTTLS), opt(GO, info("")))
write("starttls-twice", 0x60 | TLS_ON, both, opt(STARTTLS), opt(STARTTLS), opt(GO, info("")))
write("export-name-before-tls", ALL_AT_ONCE | TLS_REQUIRE, both, opt(EXPORT_NAME, b""))
# The hostile ones.
write("unknown-options", 0x70, both, opt(99, b"junk"), opt(0x7FFFFFFF), opt(4, b"x" * 300),
      opt(GO, info("")))
write("too-big-info", 0xC0, both, opt(INFO, info("") + bytes(66 * 1024)), opt(GO, info("")))
write("huge-length", 0xD0, both, opt(INFO, bytes(64), length=0xFFFFFFFF))
write("info-name-lies", ALL_AT_ONCE, both, opt(INFO, struct.pack(">I", 0xFFFFFFFF) + b"ab\0\0"),
      opt(GO, info("nope")), opt(GO, info("")))
write("meta-count-lies", ALL_AT_ONCE | DEPTH, both, opt(SR),
      opt(SET_META, meta("", ["base:allocation"], count=0xFFFFFFFF)),
      opt(SET_META, meta("", ["qemu:"])), opt(LIST_META, meta("", ["base:", "qemu:"])),
      opt(GO, info("")))
write("meta-before-sr", 0x30, both, opt(SET_META, meta("", ["base:allocation"])), opt(SR),
      opt(SR), opt(SR, b"xx"), opt(GO, info("disk")))
write("meta-other-export", ALL_AT_ONCE, both, opt(SR), opt(SET_META, meta("disk", ["base:allocation"])),
      opt(GO, info("")))
write("bad-option-magic", ALL_AT_ONCE, both, opt(LIST)[:7] + b"\0" + opt(LIST)[8:])
write("bad-client-flags", ALL_AT_ONCE, 0xFFFFFFFF, opt(LIST))
write("abort-payload", ALL_AT_ONCE, both, opt(ABORT, b"junk"), opt(LIST))
write("list-payload", 0x20, both, opt(LIST, b"\0\0\0\4abcd"), opt(LIST), opt(STARTTLS, b"x"))
write("many-lists", ALL_AT_ONCE, both, opt(LIST) * 100, opt(GO, info("")))
