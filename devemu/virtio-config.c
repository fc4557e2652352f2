/* virtio-blk: the feature bits devemu offers and the config space. */
#include <string.h>

#include "internal.h"
#include "virtio.h"

uint64_t
dv_virtio_features(const struct dv_geom *g)
{
  uint64_t f = 1ull << VIRTIO_BLK_F_SEG_MAX | 1ull << VIRTIO_BLK_F_BLK_SIZE |
               1ull << VIRTIO_BLK_F_TOPOLOGY;

  if (g->read_only)
    f |= 1ull << VIRTIO_BLK_F_RO;
  /* FLUSH is offered whenever there is a cache to flush; offering it and
   * seeing it not negotiated makes the device writethrough (5.2.6.1). */
  if (g->cache_present)
    f |= 1ull << VIRTIO_BLK_F_FLUSH;
  if (g->cache_present && g->wce_changeable)
    f |= 1ull << VIRTIO_BLK_F_CONFIG_WCE;
  if (g->discard)
    f |= 1ull << VIRTIO_BLK_F_DISCARD;
  if (g->write_zeroes)
    f |= 1ull << VIRTIO_BLK_F_WRITE_ZEROES;
  return f;
}

static unsigned
log2u(uint64_t v)
{
  unsigned n = 0;
  while (v > 1) {
    v >>= 1;
    n++;
  }
  return n;
}

size_t
dv_virtio_config(const struct dv_geom *g, uint8_t cfg[64])
{
  uint32_t blk_sectors = g->lbs >> 9;
  uint32_t max_zt_sectors = (g->max_zt >> 9) / blk_sectors * blk_sectors;
  uint32_t opt_io = g->max_rw / g->lbs;

  memset(cfg, 0, 64);
  dv_put64(cfg + VIRTIO_CFG_CAPACITY, g->size >> 9);
  dv_put32(cfg + VIRTIO_CFG_SEG_MAX, VIRTIO_SEG_MAX);
  dv_put32(cfg + VIRTIO_CFG_BLK_SIZE, g->lbs);
  cfg[VIRTIO_CFG_PHYS_EXP] = log2u(g->pref / g->lbs);
  dv_put16(cfg + VIRTIO_CFG_MIN_IO, g->pref / g->lbs > 0xffff ? 0xffff
                                                         : g->pref / g->lbs);
  dv_put32(cfg + VIRTIO_CFG_OPT_IO, opt_io);
  cfg[VIRTIO_CFG_WRITEBACK] = g->wce;
  dv_put16(cfg + VIRTIO_CFG_NUM_QUEUES, 1);
  if (!g->discard && !g->write_zeroes)
    return VIRTIO_CFG_MAX_DISCARD;
  if (g->discard) {
    dv_put32(cfg + VIRTIO_CFG_MAX_DISCARD, max_zt_sectors);
    dv_put32(cfg + VIRTIO_CFG_MAX_DISCARD_SEG, VIRTIO_MAX_SEGS);
    dv_put32(cfg + VIRTIO_CFG_DISCARD_ALIGN, blk_sectors);
  }
  if (g->write_zeroes) {
    dv_put32(cfg + VIRTIO_CFG_MAX_WZ, max_zt_sectors);
    dv_put32(cfg + VIRTIO_CFG_MAX_WZ_SEG, VIRTIO_MAX_SEGS);
    cfg[VIRTIO_CFG_WZ_MAY_UNMAP] = 1;
  }
  return VIRTIO_CFG_SIZE;
}
