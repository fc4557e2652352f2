/* Fuzz target over the three command decoders.
 *
 * With clang: clang -fsanitize=fuzzer,address -DDEVEMU_LIBFUZZER ... runs
 * it under libFuzzer.  Otherwise main() feeds it N pseudo-random inputs
 * (argv[1], fixed seed) so the test suite runs it in bounded time.
 *
 * The input picks a geometry (size, block size, capabilities, write
 * cache) and supplies the command bytes and a guest buffer layout.
 * Invariants checked on every plan: no request out of bounds, empty,
 * misaligned; only flags the server advertised; statuses from the
 * allowed sets. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define CHECK(x) do { if (!(x)) { fprintf(stderr, "invariant: %s\n", #x); \
                                  abort(); } } while (0)

static uint8_t guest[1 << 16];

static void
check_plan(const struct dv_geom *g, const struct dv_plan *p)
{
  CHECK(p->nranges <= DV_MAX_RANGES);
  if (p->flags & DV_NBD_FUA)
    CHECK(g->can_fua && !g->no_flush);
  if (p->flush_after)
    CHECK(g->can_flush && !g->no_flush);
  if (p->op == DV_OP_FLUSH)
    CHECK(g->can_flush);
  if (p->op == DV_OP_TRIM)
    CHECK(g->can_trim);
  if (p->op == DV_OP_ZERO)
    CHECK(g->can_zero);
  if (p->op == DV_OP_WRITE || p->op == DV_OP_ZERO || p->op == DV_OP_TRIM)
    CHECK(!g->read_only);
  for (unsigned i = 0; i < p->nranges; i++) {
    CHECK(p->ranges[i].len > 0);
    CHECK(dv_in_range(p->ranges[i].off, p->ranges[i].len, g->size));
    CHECK(p->ranges[i].off % g->lbs == 0 && p->ranges[i].len % g->lbs == 0);
  }
}

static void
check_done(const struct dv_geom *g, const devemu_completion *c)
{
  switch (g->kind) {
  case DEVEMU_VIRTIO_BLK:
    CHECK(c->u.virtio.status <= 2);
    break;
  case DEVEMU_NVME: {
    static const uint16_t ok[] = { 0, 1, 2, 0xb, 0xf, 0x20, 0x80, 0x10d };
    bool found = false;
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++)
      found |= (c->u.nvme.status & 0x3fff) == ok[i];
    CHECK(found);
    break;
  }
  case DEVEMU_ATA:
    CHECK(c->u.ata.status == 0x50 || c->u.ata.status == 0x41);
    CHECK((c->u.ata.status == 0x41) == (c->u.ata.error != 0));
    break;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t n);

int
LLVMFuzzerTestOneInput(const uint8_t *in, size_t n)
{
  if (n < 80)
    return 0;
  uint8_t caps = in[0], cfg = in[1];
  struct dv_geom g = {
    .kind = in[2] % 3, .lbs = cfg & 1 ? 4096 : 512,
    .lbs_shift = cfg & 1 ? 12 : 9, .pref = 4096,
    .max_rw = cfg & 2 ? 65536 : 1 << 20,
    .can_flush = caps & 1, .can_fua = caps & 2, .can_trim = caps & 4,
    .can_zero = caps & 8, .no_flush = caps & 16, .read_only = caps & 32,
    .wce = caps & 64, .ata_mult = cfg & 4 ? 16 : 0,
    .serial = "fuzz", .model = "fuzz", .firmware = "1",
  };
  g.size = ((uint64_t) dv_le32(in + 4) << 9) & ~(uint64_t) (g.lbs - 1);
  if (g.size == 0)
    g.size = g.lbs;
  g.max_zt = UINT32_MAX & ~(uint64_t) (g.lbs - 1);
  g.cache_present = (g.can_flush || g.can_fua) && !(caps & 128);
  g.wce_changeable = g.cache_present && !(cfg & 8);
  g.wce &= g.cache_present;
  g.wce_initial = g.wce;
  g.discard = !(cfg & 16) && !g.read_only &&
              (g.can_trim || (g.kind == DEVEMU_NVME && g.can_zero));
  g.write_zeroes = !(cfg & 32) && g.can_zero && !g.read_only;
  g.can_trim &= !g.read_only;
  g.can_zero &= !g.read_only;

  /* Command bytes, then the guest buffer split into up to 4 segments. */
  devemu_cmd c = { .nvme_admin = cfg & 64 };
  memcpy(&c.u, in + 8, 64);
  size_t payload = n - 72 < sizeof guest ? n - 72 : sizeof guest;
  memcpy(guest, in + 72, payload);
  devemu_iov iov[4];
  unsigned niov = in[3] % 5;
  size_t len = (size_t) dv_le16(in + 2 + 64) * 8 % (sizeof guest + 1);
  for (unsigned i = 0; i < niov; i++) {
    size_t part = i + 1 == niov ? len : len / niov;
    iov[i] = (devemu_iov) { guest + (len - part) * (i != 0), part };
    len -= part;
  }
  c.iov = iov;
  c.niov = niov;

  static struct dv_range ranges[DV_MAX_RANGES];
  struct dv_plan p = { .ranges = ranges };
  devemu_completion out;
  enum dv_decoded r;
  switch (g.kind) {
  case DEVEMU_VIRTIO_BLK: r = dv_virtio_decode(&g, &c, &p, &out); break;
  case DEVEMU_NVME:
    r = c.nvme_admin ? dv_nvme_admin_decode(&g, &c, &p, &out)
                     : dv_nvme_decode(&g, &c, &p, &out);
    break;
  default: r = dv_ata_decode(&g, &c, &p, &out); break;
  }
  if (r == DV_IO) {
    check_plan(&g, &p);
    if (p.op == DV_OP_READ || p.op == DV_OP_WRITE) {
      uint64_t total;
      CHECK(dv_iov_total(c.iov, c.niov, &total) && total == p.data_len);
    }
  }
  else if (r == DV_DONE)
    check_done(&g, &out);
  else
    CHECK(g.kind == DEVEMU_NVME && c.nvme_admin);
  return 0;
}

#ifndef DEVEMU_LIBFUZZER
int
main(int argc, char *argv[])
{
  unsigned long iters = argc > 1 ? strtoul(argv[1], NULL, 0) : 100000;
  static uint8_t buf[4096];
  uint64_t x = 0x9e3779b97f4a7c15ull;

  for (unsigned long i = 0; i < iters; i++) {
    size_t n = 80 + (x >> 40) % (sizeof buf - 80);
    for (size_t j = 0; j < n; j++) {
      x ^= x << 13; x ^= x >> 7; x ^= x << 17;
      buf[j] = x >> 24;
    }
    /* Bias towards valid opcodes and small sizes so deep paths run. */
    static const uint8_t ops[] = { 0, 1, 2, 4, 8, 9, 11, 13, 0x06, 0x20,
                                   0x25, 0x35, 0x3d, 0xc8, 0xca, 0xe7,
                                   0xec, 0xef, 0x0a };
    buf[8] = ops[buf[8] % sizeof ops];
    buf[9] &= i % 2 ? 0 : 0xff;
    if (i % 3)
      memset(buf + 4 + 8 + 4, 0, 4);        /* small LBAs */
    LLVMFuzzerTestOneInput(buf, n);
  }
  printf("%lu inputs, no findings\n", iters);
  return 0;
}
#endif
