"""crashload: a write workload to kill -9 a server in the middle of, and
the checks of what must have survived (test-qcow2-crash.py,
test-crash-modes.py).

    from crashload import Workload, check_survivors
    w = Workload(h, random.Random(seed), size)   # h: a connected nbd.NBD
    w.run(seconds)                               # then SIGKILL the server
    check_survivors(t, what, data, w, orig_byte, acked_durable=False)

The workload issues random writes of random sizes (up to 8 in flight,
never two overlapping), each filled with a pattern derived from
(generation, offset), with a FLUSH every few writes and some FUA writes.
A write is durable once a FLUSH sent after its reply has completed, or
when it was FUA and completed.
"""
import struct
import time

M = 1 << 20
SIZES = [1, 100, 512, 4096, 4096 + 512, 65536, 65536 + 4096, 200000, 1 << 20]

# The states of a write.
IN_FLIGHT, ACKED = 0, 1


def pattern(gen, off, n):
    """The bytes of write generation gen at [off, off+n): every 16-byte unit
    at absolute (16-aligned) offset q holds (gen, q), so any stale or
    misplaced data is recognisable."""
    q0 = off & ~15
    end = off + n
    buf = b"".join(struct.pack(">QQ", gen, q) for q in range(q0, end, 16))
    return buf[off - q0: off - q0 + n]


def subtract(ranges, a, b):
    """Remove [a, b) from a list of disjoint [s, e) ranges."""
    out = []
    for s, e in ranges:
        if e <= a or b <= s:
            out.append((s, e))
        else:
            if s < a:
                out.append((s, a))
            if b < e:
                out.append((b, e))
    return out


class Workload:
    def __init__(self, h, rng, size):
        self.h = h
        self.rng = rng
        self.size = size
        self.writes = []      # [gen, off, n, fua, state]
        self.inflight = {}    # cookie -> ("w", index) | ("f", [indexes acked when sent])
        self.durable = set()  # indexes of writes a completed FLUSH / FUA made durable
        self.nflush = 0
        self.errors = []

    def _reap(self):
        for c in list(self.inflight):
            if self.h.aio_command_completed(c):
                kind, x = self.inflight.pop(c)
                if kind == "w":
                    self.writes[x][4] = ACKED
                    if self.writes[x][3]:
                        self.durable.add(x)
                else:
                    self.durable.update(x)

    def _overlaps_inflight(self, a, b):
        for kind, x in self.inflight.values():
            if kind == "w":
                _, o, n, _, _ = self.writes[x]
                if o < b and a < o + n:
                    return True
        return False

    def run(self, seconds):
        """Write for that long; everything recorded was acknowledged before
        run returns (the caller kills the server right after)."""
        import nbd
        h, rng = self.h, self.rng
        t0 = time.monotonic()
        gen = 0
        try:
            while time.monotonic() - t0 < seconds:
                self._reap()
                if rng.random() < 0.12:
                    acked = [i for i, w in enumerate(self.writes)
                             if w[4] == ACKED and i not in self.durable]
                    self.inflight[h.aio_flush()] = ("f", acked)
                    self.nflush += 1
                    continue
                n = rng.choice(SIZES)
                span = 8 * M if rng.random() < 0.7 else self.size
                off = rng.randrange(0, span - n)
                if rng.random() < 0.4:
                    off -= off % 512
                while self._overlaps_inflight(off, off + n) or len(self.inflight) >= 8:
                    h.poll(100)
                    self._reap()
                    if time.monotonic() - t0 >= seconds:
                        break
                else:
                    gen += 1
                    fua = rng.random() < 0.05
                    self.writes.append([gen, off, n, fua, IN_FLIGHT])
                    c = h.aio_pwrite(pattern(gen, off, n), off,
                                     flags=nbd.CMD_FLAG_FUA if fua else 0)
                    self.inflight[c] = ("w", len(self.writes) - 1)
            h.poll(0)
            self._reap()
        except nbd.Error as e:
            self.errors.append(str(e))

    def summary(self):
        return "%d writes (%d acked, %d durable), %d flushes" % (
            len(self.writes), sum(1 for w in self.writes if w[4] == ACKED),
            len(self.durable), self.nflush)


def check_survivors(t, what, data, w, orig, acked_durable=False):
    """data: the whole disk after the kill.  Every durable write (with
    acked_durable, every acknowledged one) reads back, except where a later
    write (acknowledged or still in flight) overlaps it; bytes no write
    touched still hold orig."""
    keep = [i for i, x in enumerate(w.writes)
            if i in w.durable or (acked_durable and x[4] == ACKED)]
    bad = []
    for i in keep:
        g, o, n, _, _ = w.writes[i]
        rest = [(o, o + n)]
        for later in w.writes[i + 1:]:
            rest = subtract(rest, later[1], later[1] + later[2])
            if not rest:
                break
        for a, b in rest:
            if data[a:b] != pattern(g, a, b - a):
                bad.append("gen %d [%d,+%d): [%d,%d) differs" % (g, o, n, a, b))
                break
    t.check(not bad, "%s: all %d %s writes read back%s"
            % (what, len(keep), "acknowledged" if acked_durable else "durable",
               (": " + "; ".join(bad[:3])) if bad else ""))

    untouched = [(0, len(data))]
    for x in w.writes:
        untouched = subtract(untouched, x[1], x[1] + x[2])
    bad = []
    for a, b in untouched:
        if data[a:b].count(orig) != b - a:
            j = next(k for k in range(a, b) if data[k] != orig)
            bad.append("offset %d: 0x%02x" % (j, data[j]))
            if len(bad) >= 3:
                break
    t.check(not bad, "%s: untouched ranges read 0x%02x%s"
            % (what, orig, (": " + "; ".join(bad)) if bad else ""))
