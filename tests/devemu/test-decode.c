/* Unit tests of the pure decoders: the plan (NBD op, ranges, flags,
 * follow-ups) or the immediate completion each guest command becomes,
 * for each write cache state and server capability. */
#include <string.h>

#include <criterion/criterion.h>

#include "internal.h"

static struct dv_geom
geom(devemu_kind kind)
{
  struct dv_geom g = {
    .kind = kind, .size = 1 << 30, .lbs = 512, .lbs_shift = 9, .pref = 4096,
    .max_rw = 1 << 20, .max_zt = UINT32_MAX & ~511u,
    .can_flush = true, .can_fua = true, .can_trim = true, .can_zero = true,
    .cache_present = true, .wce_changeable = true, .wce_initial = true,
    .discard = true, .write_zeroes = true, .wce = true, .ata_mult = 16,
    .serial = "S", .model = "M", .firmware = "F",
  };
  return g;
}

static struct dv_range ranges[DV_MAX_RANGES];

static enum dv_decoded
decode(const struct dv_geom *g, const devemu_cmd *c, struct dv_plan *p,
       devemu_completion *out)
{
  memset(p, 0, sizeof *p);
  p->ranges = ranges;
  memset(out, 0xee, sizeof *out);
  switch (g->kind) {
  case DEVEMU_VIRTIO_BLK: return dv_virtio_decode(g, c, p, out);
  case DEVEMU_NVME:
    return c->nvme_admin ? dv_nvme_admin_decode(g, c, p, out)
                         : dv_nvme_decode(g, c, p, out);
  default: return dv_ata_decode(g, c, p, out);
  }
}

static devemu_cmd
nvme(uint8_t opc, uint64_t slba, uint32_t cdw12, const devemu_iov *iov,
     unsigned niov)
{
  devemu_cmd c = { .iov = iov, .niov = niov };
  c.u.nvme_sqe[0] = opc;
  dv_put32(c.u.nvme_sqe + 4, 1);
  dv_put64(c.u.nvme_sqe + 40, slba);
  dv_put32(c.u.nvme_sqe + 48, cdw12);
  return c;
}

static devemu_cmd
virtio(uint32_t type, uint64_t sector, const devemu_iov *iov, unsigned niov)
{
  devemu_cmd c = { .iov = iov, .niov = niov };
  dv_put32(c.u.virtio_hdr, type);
  dv_put64(c.u.virtio_hdr + 8, sector);
  return c;
}

static uint8_t data[1 << 20];

/* The write flags table: guest FUA x WCE x server FUA/flush x unsafe. */
Test(flags, write_flag_table)
{
  static const struct {
    bool guest_fua, wce, can_fua, can_flush, no_flush;
    uint32_t flags; bool flush_after, volatile_write;
  } t[] = {
    { 0, 1, 1, 1, 0, 0, 0, 1 },
    { 1, 1, 1, 1, 0, DV_NBD_FUA, 0, 0 },
    { 0, 0, 1, 1, 0, DV_NBD_FUA, 0, 0 },
    { 0, 0, 0, 1, 0, 0, 1, 0 },                /* emulated FUA */
    { 1, 1, 0, 1, 0, 0, 1, 0 },
    { 1, 0, 1, 1, 1, 0, 0, 0 },                /* unsafe drops FUA */
    { 0, 0, 0, 0, 0, 0, 0, 0 },                /* nothing to do it with */
  };
  for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
    struct dv_geom g = geom(DEVEMU_NVME);
    g.wce = t[i].wce;
    g.can_fua = t[i].can_fua;
    g.can_flush = t[i].can_flush;
    g.no_flush = t[i].no_flush;
    devemu_iov v = { data, 512 };
    devemu_cmd c = nvme(0x01, 0, t[i].guest_fua ? 1u << 30 : 0, &v, 1);
    struct dv_plan p;
    devemu_completion out;
    cr_assert_eq(decode(&g, &c, &p, &out), DV_IO, "row %zu", i);
    cr_assert_eq(p.flags, t[i].flags, "row %zu", i);
    cr_assert_eq(p.flush_after, t[i].flush_after, "row %zu", i);
    cr_assert_eq(p.volatile_write, t[i].volatile_write, "row %zu", i);
  }
}

Test(virtio, zero_length_and_bounds)
{
  struct dv_geom g = geom(DEVEMU_VIRTIO_BLK);
  struct dv_plan p;
  devemu_completion out;
  devemu_iov v = { data, 0 };
  devemu_cmd c = virtio(0, 0, &v, 1);
  cr_assert_eq(decode(&g, &c, &p, &out), DV_DONE);
  cr_assert_eq(out.u.virtio.status, 0, "0-byte read is OK, no I/O");
  v.len = 512;
  uint64_t cap = g.size >> 9;
  c = virtio(0, cap - 1, &v, 1);
  cr_assert_eq(decode(&g, &c, &p, &out), DV_IO);
  cr_assert(p.op == DV_OP_READ && p.ranges[0].off == (cap - 1) * 512);
  c = virtio(0, cap, &v, 1);
  cr_assert_eq(decode(&g, &c, &p, &out), DV_DONE);
  cr_assert_eq(out.u.virtio.status, 1);
  c = virtio(1, UINT64_MAX, &v, 1);
  cr_assert_eq(decode(&g, &c, &p, &out), DV_DONE);
  cr_assert_eq(out.u.virtio.status, 1);
  /* type decoded exactly: 10 (GET_LIFETIME) and 15 (zoned) are UNSUPP */
  c = virtio(10, 0, NULL, 0);
  decode(&g, &c, &p, &out);
  cr_assert_eq(out.u.virtio.status, 2);
  c = virtio(15, 0, NULL, 0);
  decode(&g, &c, &p, &out);
  cr_assert_eq(out.u.virtio.status, 2);
  /* bit 31 (BARRIER) is ignored */
  c = virtio(0x80000001u, 0, &v, 1);
  cr_assert_eq(decode(&g, &c, &p, &out), DV_IO);
  cr_assert_eq(p.op, DV_OP_WRITE);
  /* too many segments */
  static devemu_iov many[300];
  for (int i = 0; i < 300; i++)
    many[i] = (devemu_iov) { data, 512 };
  c = virtio(0, 0, many, 300);
  cr_assert_eq(decode(&g, &c, &p, &out), DV_DONE);
  cr_assert_eq(out.u.virtio.status, 1);
  /* a NULL buffer with a length */
  devemu_iov bad = { NULL, 512 };
  c = virtio(0, 0, &bad, 1);
  cr_assert_eq(decode(&g, &c, &p, &out), DV_DONE);
}

Test(virtio, segments)
{
  struct dv_geom g = geom(DEVEMU_VIRTIO_BLK);
  struct dv_plan p;
  devemu_completion out;
  uint8_t s[16 * 3] = { 0 };
  dv_put64(s, 8); dv_put32(s + 8, 8);
  dv_put64(s + 16, 100); dv_put32(s + 24, 0);  /* empty: skipped */
  dv_put64(s + 32, 200); dv_put32(s + 40, 16);
  devemu_iov v = { s, sizeof s };
  devemu_cmd c = virtio(11, 0, &v, 1);
  cr_assert_eq(decode(&g, &c, &p, &out), DV_IO);
  cr_assert(p.op == DV_OP_TRIM && p.nranges == 2);
  cr_assert(p.ranges[1].off == 200 * 512 && p.ranges[1].len == 16 * 512);
  /* write zeroes: unmap on every segment -> may punch; mixed -> NO_HOLE */
  dv_put32(s + 12, 1); dv_put32(s + 28, 1); dv_put32(s + 44, 1);
  c = virtio(13, 0, &v, 1);
  cr_assert_eq(decode(&g, &c, &p, &out), DV_IO);
  cr_assert_eq(p.flags, 0);
  dv_put32(s + 44, 0);
  decode(&g, &c, &p, &out);
  cr_assert_eq(p.flags, DV_NBD_NO_HOLE);
  g.wce = false;
  decode(&g, &c, &p, &out);
  cr_assert_eq(p.flags, DV_NBD_NO_HOLE | DV_NBD_FUA);
  /* unmap on discard, unknown flags: UNSUPP */
  c = virtio(11, 0, &v, 1);
  cr_assert_eq(decode(&g, &c, &p, &out), DV_DONE);
  cr_assert_eq(out.u.virtio.status, 2);
  dv_put32(s + 12, 4);
  c = virtio(13, 0, &v, 1);
  decode(&g, &c, &p, &out);
  cr_assert_eq(out.u.virtio.status, 2);
  /* not a whole number of segments */
  v.len = 20;
  decode(&g, &c, &p, &out);
  cr_assert_eq(out.u.virtio.status, 1);
  /* not offered */
  g.discard = false;
  v.len = 16;
  c = virtio(11, 0, &v, 1);
  decode(&g, &c, &p, &out);
  cr_assert_eq(out.u.virtio.status, 2);
}

Test(virtio, config_space)
{
  struct dv_geom g = geom(DEVEMU_VIRTIO_BLK);
  uint8_t cfg[64];
  cr_assert_eq(dv_virtio_config(&g, cfg), 60);
  cr_assert_eq(dv_le64(cfg), g.size >> 9);
  cr_assert_eq(dv_le32(cfg + 12), 254);
  cr_assert_eq(dv_le32(cfg + 20), 512);
  cr_assert_eq(cfg[24], 3, "physical_block_exp: 4096/512");
  cr_assert_eq(cfg[32], 1);
  cr_assert_eq(dv_le32(cfg + 36) % 1, 0);
  cr_assert_eq(dv_le32(cfg + 36), (UINT32_MAX & ~511u) >> 9);
  g.discard = g.write_zeroes = false;
  cr_assert_eq(dv_virtio_config(&g, cfg), 36);
  cr_assert_not(dv_virtio_features(&g) & 1ull << 13);
}

Test(nvme, boundaries)
{
  struct dv_geom g = geom(DEVEMU_NVME);
  uint64_t nsze = g.size >> 9;
  struct dv_plan p;
  devemu_completion out;
  /* NLB 65535 = 65536 blocks (32 MiB) */
  devemu_cmd c = nvme(0x08, 0, 0xffff, NULL, 0);
  cr_assert_eq(decode(&g, &c, &p, &out), DV_IO);
  cr_assert_eq(p.ranges[0].len, 65536ull * 512);
  c = nvme(0x08, nsze - 65536, 0xffff, NULL, 0);
  cr_assert_eq(decode(&g, &c, &p, &out), DV_IO);
  c = nvme(0x08, nsze - 65535, 0xffff, NULL, 0);
  cr_assert_eq(decode(&g, &c, &p, &out), DV_DONE);
  cr_assert_eq(out.u.nvme.status, 0x4080);
  c = nvme(0x08, UINT64_MAX - 1, 3, NULL, 0);
  decode(&g, &c, &p, &out);
  cr_assert_eq(out.u.nvme.status, 0x4080);
  /* DEAC: may punch; without: NO_HOLE */
  c = nvme(0x08, 0, 0 | 1u << 25, NULL, 0);
  decode(&g, &c, &p, &out);
  cr_assert_eq(p.flags, 0);
  c = nvme(0x08, 0, 0, NULL, 0);
  decode(&g, &c, &p, &out);
  cr_assert_eq(p.flags, DV_NBD_NO_HOLE);
}

Test(nvme, dsm_256_ranges)
{
  struct dv_geom g = geom(DEVEMU_NVME);
  static uint8_t r[256 * 16];
  for (int i = 0; i < 256; i++) {
    dv_put32(r + 16 * i + 4, i % 2 ? 8 : 0);    /* half empty */
    dv_put64(r + 16 * i + 8, 1000 + 16 * i);
  }
  devemu_iov v = { r, sizeof r };
  devemu_cmd c = nvme(0x09, 0, 0, &v, 1);
  c.u.nvme_sqe[40] = 255;
  c.u.nvme_sqe[44] = 4;
  struct dv_plan p;
  devemu_completion out;
  cr_assert_eq(decode(&g, &c, &p, &out), DV_IO);
  cr_assert_eq(p.nranges, 128);
  cr_assert_eq(p.op, DV_OP_ZERO, "read-as-zero deallocation");
  g.can_zero = false;
  decode(&g, &c, &p, &out);
  cr_assert_eq(p.op, DV_OP_TRIM);
  c.u.nvme_sqe[40] = 254;                      /* iov longer than NR */
  decode(&g, &c, &p, &out);
  cr_assert_eq(out.u.nvme.status, 0x400f);
}

Test(nvme, identify_fields)
{
  struct dv_geom g = geom(DEVEMU_NVME);
  static uint8_t id[4096];
  cr_assert_eq(dv_nvme_identify(&g, 1, 0, 0, id), 0);
  cr_assert_eq(id[525], 7);
  cr_assert_eq(id[77], 8, "MDTS: 4 KiB << 8 = 1 MiB = max_rw");
  cr_assert_eq(dv_le16(id + 520), 0x1c);
  g.cache_present = false;
  g.discard = g.write_zeroes = false;
  dv_nvme_identify(&g, 1, 0, 0, id);
  cr_assert_eq(id[525], 0);
  cr_assert_eq(dv_le16(id + 520), 0x10);
  cr_assert_eq(dv_nvme_identify(&g, 0, 0, 1, id), 0);
  cr_assert_eq(id[33], 0, "DLFEAT only where true");
  cr_assert_eq(dv_le64(id), g.size >> 9);
  cr_assert_eq(dv_nvme_identify(&g, 6, 0, 0, id), 0);
  cr_assert_eq(dv_le32(id + 4), g.max_zt >> 9, "DMRSL fits one NBD request");
  cr_assert_eq(dv_nvme_identify(&g, 6, 2, 0, id), 0x4002);
}

Test(nvme, set_features_vwc)
{
  struct dv_geom g = geom(DEVEMU_NVME);
  devemu_cmd c = { .nvme_admin = true };
  c.u.nvme_sqe[0] = 0x09;
  dv_put32(c.u.nvme_sqe + 40, 6);
  struct dv_plan p;
  devemu_completion out;
  cr_assert_eq(decode(&g, &c, &p, &out), DV_IO);
  cr_assert(p.op == DV_OP_FLUSH && p.drain_first && p.wce == DV_WCE_OFF);
  g.no_flush = true;                           /* unsafe: switch, no flush */
  decode(&g, &c, &p, &out);
  cr_assert_eq(p.op, DV_OP_NONE);
  dv_put32(c.u.nvme_sqe + 40, 6 | 1u << 31);
  cr_assert_eq(decode(&g, &c, &p, &out), DV_DONE);
  cr_assert_eq(out.u.nvme.status, 0x410d);
  g.cache_present = false;
  dv_put32(c.u.nvme_sqe + 40, 6);
  decode(&g, &c, &p, &out);
  cr_assert_eq(out.u.nvme.status, 0x4002);
  dv_put32(c.u.nvme_sqe + 40, 7);              /* number of queues */
  cr_assert_eq(decode(&g, &c, &p, &out), DV_REJECT);
}

static devemu_cmd
ata(uint8_t cmd, uint64_t lba, uint32_t count, const devemu_iov *iov,
    unsigned niov)
{
  devemu_cmd c = { .iov = iov, .niov = niov };
  c.u.ata = (devemu_ata_tf) {
    .command = cmd, .count = count, .hob_count = count >> 8,
    .lba_lo = lba, .lba_mid = lba >> 8, .lba_hi = lba >> 16,
    .hob_lba_lo = lba >> 24, .hob_lba_mid = lba >> 32,
    .hob_lba_hi = lba >> 40, .device = 0x40 | ((lba >> 24) & 15) };
  return c;
}

Test(ata, counts_and_bounds)
{
  struct dv_geom g = geom(DEVEMU_ATA);
  static uint8_t big[65536 * 512];
  devemu_iov v = { big, sizeof big };
  struct dv_plan p;
  devemu_completion out;
  devemu_cmd c = ata(0x25, 0, 0, &v, 1);       /* LBA48 count 0 = 65536 */
  cr_assert_eq(decode(&g, &c, &p, &out), DV_IO);
  cr_assert_eq(p.ranges[0].len, sizeof big);
  v.len = 256 * 512;
  c = ata(0xC8, 0, 0, &v, 1);                  /* LBA28 count 0 = 256 */
  cr_assert_eq(decode(&g, &c, &p, &out), DV_IO);
  cr_assert_eq(p.ranges[0].len, 256 * 512);
  uint64_t n = g.size >> 9;
  v.len = 512;
  c = ata(0x25, n, 1, &v, 1);
  cr_assert_eq(decode(&g, &c, &p, &out), DV_DONE);
  cr_assert(out.u.ata.status == 0x41 && out.u.ata.error == 0x10);
  c = ata(0x25, 0xffffffffffffull, 1, &v, 1);
  decode(&g, &c, &p, &out);
  cr_assert_eq(out.u.ata.error, 0x10);
  c = ata(0x3D, 0, 1, &v, 1);                  /* FUA EXT */
  decode(&g, &c, &p, &out);
  cr_assert_eq(p.flags, DV_NBD_FUA);
  g.ata_mult = 0;
  c = ata(0xC5, 0, 1, &v, 1);                  /* MULTIPLE, not enabled */
  decode(&g, &c, &p, &out);
  cr_assert_eq(out.u.ata.error, 0x04);
}

Test(ata, identify_and_setfeatures)
{
  struct dv_geom g = geom(DEVEMU_ATA);
  uint16_t w[256];
  dv_ata_identify(&g, w);
  cr_assert_eq(w[85] & 0x20, 0x20);
  g.wce = false;
  dv_ata_identify(&g, w);
  cr_assert_eq(w[85] & 0x20, 0);
  cr_assert_eq(w[82] & 0x20, 0x20);
  g.cache_present = false;
  dv_ata_identify(&g, w);
  cr_assert_eq(w[82] & 0x20, 0);
  devemu_cmd c = ata(0xEF, 0, 0, NULL, 0);
  c.u.ata.feature = 0x02;
  struct dv_plan p;
  devemu_completion out;
  decode(&g, &c, &p, &out);
  cr_assert_eq(out.u.ata.error, 0x04, "no cache to enable");
  /* TRIM: an entry with count 0 is skipped */
  g = geom(DEVEMU_ATA);
  uint8_t blk[512] = { 0 };
  dv_put64(blk, 100 | 8ull << 48);
  dv_put64(blk + 8, 300);                      /* count 0 */
  devemu_iov v = { blk, 512 };
  c = ata(0x06, 0, 1, &v, 1);
  c.u.ata.feature = 1;
  cr_assert_eq(decode(&g, &c, &p, &out), DV_IO);
  cr_assert_eq(p.nranges, 1);
}
