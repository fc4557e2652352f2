/* IDE/ATA: taskfile decoding and the status and error registers. */
#include "internal.h"
#include "ata.h"

static enum dv_decoded
done(devemu_completion *out, uint8_t error, uint64_t lba)
{
  out->u.ata.status = error ? ATA_STATUS_ERR : ATA_STATUS_OK;
  out->u.ata.error = error;
  out->u.ata.lba = lba;
  return DV_DONE;
}

static uint64_t
lba48(const devemu_ata_tf *tf)
{
  return tf->lba_lo | (uint64_t) tf->lba_mid << 8 |
         (uint64_t) tf->lba_hi << 16 | (uint64_t) tf->hob_lba_lo << 24 |
         (uint64_t) tf->hob_lba_mid << 32 | (uint64_t) tf->hob_lba_hi << 40;
}

static uint32_t
count48(const devemu_ata_tf *tf)
{
  uint32_t n = tf->count | tf->hob_count << 8;
  return n ? n : 65536;
}

/* Decode the address and count of a read/write/verify command.  Returns
 * false for CHS addressing, which devemu does not implement. */
static bool
address(const devemu_ata_tf *tf, bool ext, uint64_t *lba, uint32_t *count)
{
  if (ext) {
    *lba = lba48(tf);
    *count = count48(tf);
    return true;
  }
  if (!(tf->device & ATA_DEV_LBA))
    return false;
  *lba = tf->lba_lo | tf->lba_mid << 8 | tf->lba_hi << 16 |
         (uint32_t) (tf->device & 0x0f) << 24;
  *count = tf->count ? tf->count : 256;
  return true;
}

static enum dv_decoded
decode_rw(const struct dv_geom *g, const devemu_cmd *c, bool ext, bool write,
          bool fua, struct dv_plan *p, devemu_completion *out)
{
  uint64_t lba, total;
  uint32_t count;

  if (!address(&c->u.ata, ext, &lba, &count))
    return done(out, DEVEMU_ATA_ABRT, 0);
  if (write && g->read_only)
    return done(out, DEVEMU_ATA_ABRT, 0);
  if (!dv_in_range(lba, count, g->size >> g->lbs_shift))
    return done(out, DEVEMU_ATA_IDNF, lba);
  uint64_t len = (uint64_t) count << g->lbs_shift;
  if (!dv_iov_total(c->iov, c->niov, &total) || total != len)
    return done(out, DEVEMU_ATA_ABRT, 0);
  dv_plan_init(p, write ? DV_OP_WRITE : DV_OP_READ, lba << g->lbs_shift,
               len);
  if (write)
    dv_plan_write_flags(g, fua, p);
  return DV_IO;
}

/* DATA SET MANAGEMENT / TRIM: COUNT 512-byte blocks of 64 entries, each
 * le64 {bits 0-47 LBA, bits 48-63 sectors (0 = unused)}. */
static enum dv_decoded
decode_trim(const struct dv_geom *g, const devemu_cmd *c, struct dv_plan *p,
            devemu_completion *out)
{
  const devemu_ata_tf *tf = &c->u.ata;
  uint32_t blocks = tf->count | tf->hob_count << 8;
  uint64_t total;

  if (!(tf->feature & ATA_DSM_TRIM) || !g->discard || g->read_only ||
      blocks == 0 || blocks > ATA_DSM_MAX_BLOCKS)
    return done(out, DEVEMU_ATA_ABRT, 0);
  if (!dv_iov_total(c->iov, c->niov, &total) || total != blocks * 512ull)
    return done(out, DEVEMU_ATA_ABRT, 0);
  dv_plan_init(p, DV_OP_TRIM, 0, 0);
  for (unsigned i = 0; i < blocks * 64; i++) {
    uint8_t e[8];
    dv_iov_to_buf(c->iov, c->niov, i * 8ull, e, 8);
    uint64_t v = dv_le64(e);
    uint64_t lba = v & 0xffffffffffffull, n = v >> 48;
    if (n == 0)
      continue;
    /* A bad entry aborts the whole command before any I/O (QEMU too). */
    if (!dv_in_range(lba, n, g->size >> g->lbs_shift))
      return done(out, DEVEMU_ATA_ABRT, lba);
    p->ranges[p->nranges].off = lba << g->lbs_shift;
    p->ranges[p->nranges].len = n << g->lbs_shift;
    p->nranges++;
  }
  if (p->nranges == 0)
    return done(out, 0, 0);
  return DV_IO;
}

static enum dv_decoded
decode_identify(const struct dv_geom *g, const devemu_cmd *c,
                devemu_completion *out)
{
  uint16_t w[256];
  uint8_t b[512];
  uint64_t total;

  if (!dv_iov_total(c->iov, c->niov, &total) || total != sizeof b)
    return done(out, DEVEMU_ATA_ABRT, 0);
  dv_ata_identify(g, w);
  for (unsigned i = 0; i < 256; i++)
    dv_put16(b + 2 * i, w[i]);
  dv_iov_from_buf(c->iov, c->niov, 0, b, sizeof b);
  return done(out, 0, 0);
}

static enum dv_decoded
decode_set_features(const struct dv_geom *g, const devemu_ata_tf *tf,
                    struct dv_plan *p, devemu_completion *out)
{
  switch (tf->feature) {
  case SETFEATURES_WC_ON:
    if (!g->cache_present || (!g->wce_changeable && !g->wce))
      return done(out, DEVEMU_ATA_ABRT, 0);
    if (g->wce)
      return done(out, 0, 0);
    dv_plan_init(p, DV_OP_NONE, 0, 0);
    p->wce = DV_WCE_ON;
    return DV_IO;
  case SETFEATURES_WC_OFF:
    /* Drain volatile writes, flush, then switch (QEMU flushes too). */
    if (!g->cache_present || (!g->wce_changeable && g->wce_initial))
      return done(out, DEVEMU_ATA_ABRT, 0);
    dv_plan_init(p, g->can_flush && !g->no_flush ? DV_OP_FLUSH : DV_OP_NONE,
                 0, 0);
    p->wce = DV_WCE_OFF;
    p->drain_first = true;
    p->errkind = DV_ERR_SETWCE;
    return DV_IO;
  case 0x03:                    /* transfer mode: the VMM's timing */
  case 0x05: case 0x85:         /* APM */
  case 0x42: case 0xC2:         /* AAM */
  case 0x55: case 0xAA:         /* read look-ahead */
  case 0x66: case 0xCC:         /* revert to power-on defaults */
    return done(out, 0, 0);
  default:
    return done(out, DEVEMU_ATA_ABRT, 0);
  }
}

enum dv_decoded
dv_ata_decode(const struct dv_geom *g, const devemu_cmd *c,
              struct dv_plan *p, devemu_completion *out)
{
  const devemu_ata_tf *tf = &c->u.ata;
  uint64_t lba, nsect = g->size >> g->lbs_shift;
  uint32_t count;

  switch (tf->command) {
  case ATA_CMD_READ_MULTI: case ATA_CMD_READ_MULTI_EXT:
  case ATA_CMD_WRITE_MULTI: case ATA_CMD_WRITE_MULTI_EXT:
  case ATA_CMD_WRITE_MULTI_FUA_EXT:
    if (g->ata_mult == 0)       /* multiple mode not enabled */
      return done(out, DEVEMU_ATA_ABRT, 0);
    break;
  }

  switch (tf->command) {
  case ATA_CMD_READ: case ATA_CMD_READ_DMA: case ATA_CMD_READ_MULTI:
    return decode_rw(g, c, false, false, false, p, out);
  case ATA_CMD_READ_EXT: case ATA_CMD_READ_DMA_EXT:
  case ATA_CMD_READ_MULTI_EXT:
    return decode_rw(g, c, true, false, false, p, out);
  case ATA_CMD_WRITE: case ATA_CMD_WRITE_DMA: case ATA_CMD_WRITE_MULTI:
    return decode_rw(g, c, false, true, false, p, out);
  case ATA_CMD_WRITE_EXT: case ATA_CMD_WRITE_DMA_EXT:
  case ATA_CMD_WRITE_MULTI_EXT:
    return decode_rw(g, c, true, true, false, p, out);
  case ATA_CMD_WRITE_FUA_EXT: case ATA_CMD_WRITE_MULTI_FUA_EXT:
    return decode_rw(g, c, true, true, true, p, out);
  case ATA_CMD_VERIFY: case ATA_CMD_VERIFY_EXT:
    if (!address(tf, tf->command == ATA_CMD_VERIFY_EXT, &lba, &count))
      return done(out, DEVEMU_ATA_ABRT, 0);
    return dv_in_range(lba, count, nsect) ? done(out, 0, 0)
                                          : done(out, DEVEMU_ATA_IDNF, lba);
  case ATA_CMD_READ_NATIVE_MAX:
    return done(out, 0, nsect - 1 > 0x0fffffff ? 0x0fffffff : nsect - 1);
  case ATA_CMD_READ_NATIVE_MAX_EXT:
    return done(out, 0, nsect - 1);
  case ATA_CMD_FLUSH: case ATA_CMD_FLUSH_EXT:
    if (g->no_flush || !g->can_flush)
      return done(out, 0, 0);
    dv_plan_init(p, DV_OP_FLUSH, 0, 0);
    return DV_IO;
  case ATA_CMD_DSM:
    return decode_trim(g, c, p, out);
  case ATA_CMD_IDENTIFY:
    return decode_identify(g, c, out);
  case ATA_CMD_SET_FEATURES:
    return decode_set_features(g, tf, p, out);
  case ATA_CMD_SET_MULTI:
    if (tf->count > ATA_MAX_MULT || (tf->count & (tf->count - 1)))
      return done(out, DEVEMU_ATA_ABRT, 0);
    dv_plan_init(p, DV_OP_NONE, 0, 0);
    p->set_ata_mult = true;
    p->ata_mult = tf->count;
    return DV_IO;
  default:
    return done(out, DEVEMU_ATA_ABRT, 0);
  }
}

void
dv_ata_finish(const struct dv_geom *g, const struct dv_plan *p, int err,
              uint64_t fail_off, devemu_completion *out)
{
  if (err == 0) {
    done(out, 0, 0);
    return;
  }
  /* A read error is a media error (UNC); anything else aborts. */
  done(out, p->errkind == DV_ERR_READ ? DEVEMU_ATA_UNC : DEVEMU_ATA_ABRT,
       p->op == DV_OP_READ || p->op == DV_OP_WRITE
         ? fail_off >> g->lbs_shift : 0);
}
