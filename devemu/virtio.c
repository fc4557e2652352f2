/* virtio-blk: request decoding and completion status (virtio 1.2, 5.2). */
#include <string.h>

#include "internal.h"
#include "virtio.h"

/* QEMU's internal per-request limit (BDRV_REQUEST_MAX_SECTORS is about
 * 2^31 bytes); a larger transfer is an I/O error there too. */
#define VIRTIO_MAX_XFER (1ull << 30)

static enum dv_decoded
done(devemu_completion *out, uint8_t status, uint32_t used)
{
  out->u.virtio.status = status;
  out->u.virtio.used_len = used;
  return DV_DONE;
}

static enum dv_decoded
decode_rw(const struct dv_geom *g, const devemu_cmd *c, uint64_t sector,
          bool write, struct dv_plan *p, devemu_completion *out)
{
  uint64_t len;
  uint32_t blk_sectors = g->lbs >> 9;

  if (!dv_iov_total(c->iov, c->niov, &len) || c->niov > VIRTIO_SEG_MAX)
    return done(out, DEVEMU_VIRTIO_S_IOERR, 1);
  if (write && g->read_only)
    return done(out, DEVEMU_VIRTIO_S_IOERR, 1);
  /* sector is in 512-byte units whatever blk_size is */
  if (len % g->lbs || sector % blk_sectors || len > VIRTIO_MAX_XFER ||
      sector > UINT64_MAX >> 9 ||
      !dv_in_range(sector << 9, len, g->size))
    return done(out, DEVEMU_VIRTIO_S_IOERR, write ? 1 : len + 1);
  if (len == 0)
    return done(out, DEVEMU_VIRTIO_S_OK, 1);
  dv_plan_init(p, write ? DV_OP_WRITE : DV_OP_READ, sector << 9, len);
  if (write)
    dv_plan_write_flags(g, false, p);
  p->used_extra = 1;
  return DV_IO;
}

/* DISCARD and WRITE_ZEROES carry an array of 16-byte segments
 * {le64 sector, le32 num_sectors, le32 flags}. */
static enum dv_decoded
decode_segments(const struct dv_geom *g, const devemu_cmd *c, bool zero,
                struct dv_plan *p, devemu_completion *out)
{
  uint64_t len;
  uint32_t blk_sectors = g->lbs >> 9;
  uint64_t max_sectors = g->max_zt >> 9;

  if ((zero && !g->write_zeroes) || (!zero && !g->discard))
    return done(out, DEVEMU_VIRTIO_S_UNSUPP, 1);
  if (!dv_iov_total(c->iov, c->niov, &len) || len == 0 || len % 16)
    return done(out, DEVEMU_VIRTIO_S_IOERR, 1);
  if (len / 16 > VIRTIO_MAX_SEGS)
    return done(out, DEVEMU_VIRTIO_S_UNSUPP, 1);
  if (g->read_only)
    return done(out, DEVEMU_VIRTIO_S_IOERR, 1);

  unsigned nseg = len / 16;
  bool unmap = false;
  dv_plan_init(p, zero ? DV_OP_ZERO : DV_OP_TRIM, 0, 0);
  for (unsigned i = 0; i < nseg; i++) {
    uint8_t s[16];
    dv_iov_to_buf(c->iov, c->niov, i * 16ull, s, 16);
    uint64_t sector = dv_le64(s);
    uint32_t n = dv_le32(s + 8), flags = dv_le32(s + 12);

    /* Unknown flags, or unmap on DISCARD: UNSUPP (spec MUST). */
    if (flags & ~VIRTIO_BLK_WZ_UNMAP || (!zero && flags))
      return done(out, DEVEMU_VIRTIO_S_UNSUPP, 1);
    if (n > max_sectors || sector % blk_sectors || n % blk_sectors ||
        sector > UINT64_MAX >> 9 ||
        !dv_in_range(sector << 9, (uint64_t) n << 9, g->size))
      return done(out, DEVEMU_VIRTIO_S_IOERR, 1);
    /* One request carries one set of flags: the segments agree on unmap
     * or the whole request is the stricter (no unmap). */
    if (i == 0)
      unmap = flags & VIRTIO_BLK_WZ_UNMAP;
    else if (unmap != (bool) (flags & VIRTIO_BLK_WZ_UNMAP))
      unmap = false;
    if (n == 0)
      continue;
    p->ranges[p->nranges].off = sector << 9;
    p->ranges[p->nranges].len = (uint64_t) n << 9;
    p->nranges++;
  }
  p->used_extra = 1;
  if (zero) {
    if (!unmap)
      p->flags |= DV_NBD_NO_HOLE;
    dv_plan_write_flags(g, false, p);
  }
  if (p->nranges == 0)
    return done(out, DEVEMU_VIRTIO_S_OK, 1);
  return DV_IO;
}

static enum dv_decoded
decode_get_id(const struct dv_geom *g, const devemu_cmd *c,
              devemu_completion *out)
{
  uint64_t len;
  uint8_t id[VIRTIO_BLK_ID_BYTES] = { 0 };

  if (!dv_iov_total(c->iov, c->niov, &len))
    return done(out, DEVEMU_VIRTIO_S_IOERR, 1);
  /* ASCII padded with NULs, no terminator when it fills all 20 bytes */
  size_t n = strlen(g->serial);
  memcpy(id, g->serial, n < sizeof id ? n : sizeof id);
  if (len > sizeof id)
    len = sizeof id;
  dv_iov_from_buf(c->iov, c->niov, 0, id, len);
  return done(out, DEVEMU_VIRTIO_S_OK, len + 1);
}

enum dv_decoded
dv_virtio_decode(const struct dv_geom *g, const devemu_cmd *c,
                 struct dv_plan *p, devemu_completion *out)
{
  const uint8_t *h = c->u.virtio_hdr;
  /* Bit 31 is the legacy BARRIER flag: ignored, as QEMU does.  The rest
   * is decoded exactly (no masking of the OUT bit: DISCARD & ~OUT would
   * be GET_LIFETIME). */
  uint32_t type = dv_le32(h) & ~VIRTIO_BLK_T_BARRIER;
  uint64_t sector = dv_le64(h + 8);

  switch (type) {
  case VIRTIO_BLK_T_IN:
    return decode_rw(g, c, sector, false, p, out);
  case VIRTIO_BLK_T_OUT:
    return decode_rw(g, c, sector, true, p, out);
  case VIRTIO_BLK_T_FLUSH:
  case VIRTIO_BLK_T_FLUSH_OUT:
    /* Executed even if FLUSH was not negotiated, as QEMU does. */
    if (g->no_flush || !g->can_flush)
      return done(out, DEVEMU_VIRTIO_S_OK, 1);
    dv_plan_init(p, DV_OP_FLUSH, 0, 0);
    p->used_extra = 1;
    return DV_IO;
  case VIRTIO_BLK_T_GET_ID:
    return decode_get_id(g, c, out);
  case VIRTIO_BLK_T_DISCARD:
    return decode_segments(g, c, false, p, out);
  case VIRTIO_BLK_T_WRITE_ZEROES:
    return decode_segments(g, c, true, p, out);
  default:  /* GET_LIFETIME, SECURE_ERASE, SCSI, zoned, unknown */
    return done(out, DEVEMU_VIRTIO_S_UNSUPP, 1);
  }
}

void
dv_virtio_finish(const struct dv_plan *p, int err, uint64_t fail_off,
                 devemu_completion *out)
{
  (void) fail_off;
  out->u.virtio.status = err ? DEVEMU_VIRTIO_S_IOERR : DEVEMU_VIRTIO_S_OK;
  out->u.virtio.used_len =
    (p->op == DV_OP_READ ? p->data_len : 0) + p->used_extra;
}
