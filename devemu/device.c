/* Devices: geometry from the export and the options, identity data, the
 * virtio feature handshake, and command submission. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "virtio.h"

#define DEFAULT_MAX_RW (32u << 20)   /* when the server reports none */
#define LIBNBD_MAX_RW  (64u << 20)   /* libnbd's pread/pwrite limit */

static bool
pow2(uint64_t v)
{
  return v && !(v & (v - 1));
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

static devemu_dev *
fail(devemu_dev *d, char **errmsg, const char *msg)
{
  if (errmsg)
    *errmsg = strdup(msg);
  if (d) {
    free(d->serial);
    free(d->model);
    free(d->firmware);
    free(d);
  }
  return NULL;
}

/* The block size is raised to the server's minimum rather than doing
 * read-modify-write; the size is rounded down to whole blocks. */
static const char *
geometry(devemu_dev *d, const devemu_opts *o)
{
  devemu_backend *b = d->b;
  struct dv_geom *g = &d->g;

  g->kind = o->kind;
  g->lbs = o->logical_block_size ? o->logical_block_size : 512;
  if (!pow2(g->lbs) || g->lbs < 512 || g->lbs > 65536)
    return "logical_block_size must be a power of two, 512 to 64K";
  if (b->block_min > g->lbs)
    g->lbs = b->block_min;
  if (!pow2(g->lbs) || g->lbs > 65536)
    return "the server's minimum block size is not usable";
  g->lbs_shift = log2u(g->lbs);
  g->size = b->size & ~(uint64_t) (g->lbs - 1);
  if (g->size == 0)
    return "the export is smaller than one block";
  g->pref = b->block_pref > g->lbs && pow2(b->block_pref) ? b->block_pref
                                                          : g->lbs;
  uint64_t max = b->block_max ? b->block_max : DEFAULT_MAX_RW;
  if (max > LIBNBD_MAX_RW)
    max = LIBNBD_MAX_RW;
  if (o->max_transfer && o->max_transfer < max)
    max = o->max_transfer;
  g->max_rw = max & ~(uint64_t) (g->lbs - 1);
  if (g->max_rw == 0)
    return "the server's maximum block size is below the block size";
  g->max_zt = UINT32_MAX & ~(uint64_t) (g->lbs - 1);

  g->read_only = b->read_only;
  g->can_flush = b->can_flush;
  g->can_fua = b->can_fua;
  g->can_trim = b->can_trim && !b->read_only;
  g->can_zero = b->can_zero && !b->read_only;
  g->no_flush = o->cache == DEVEMU_CACHE_UNSAFE;
  g->wce_initial = o->cache != DEVEMU_CACHE_WRITETHROUGH &&
                   o->cache != DEVEMU_CACHE_DIRECTSYNC;
  /* No flush and no FUA on the server: nothing could make a cached write
   * durable, so the device has no cache (writes go through as they are). */
  g->cache_present = (b->can_flush || b->can_fua) &&
                     !(o->wce_fixed && !g->wce_initial);
  if (!g->cache_present)
    g->wce_initial = false;
  g->wce_changeable = g->cache_present && !o->wce_fixed;
  /* NVMe deallocation may use WRITE_ZEROES (so it reads back zeroes);
   * virtio and ATA discard map to TRIM only. */
  g->discard = !o->no_discard &&
               (g->can_trim || (o->kind == DEVEMU_NVME && g->can_zero));
  g->write_zeroes = !o->no_write_zeroes && g->can_zero;
  g->ata_mult = 16;
  g->serial = d->serial;
  g->model = d->model;
  g->firmware = d->firmware;
  d->wce = g->wce_initial;
  dv_dev_update_wce(d);
  return NULL;
}

devemu_dev *
devemu_dev_new(devemu_backend *b, const devemu_opts *o, char **errmsg)
{
  devemu_dev *d = calloc(1, sizeof *d);

  if (!d)
    return fail(NULL, errmsg, "out of memory");
  if (o->kind != DEVEMU_VIRTIO_BLK && o->kind != DEVEMU_NVME &&
      o->kind != DEVEMU_ATA)
    return fail(d, errmsg, "unknown device kind");
  d->b = b;
  d->serial = strdup(o->serial ? o->serial : "devemu0");
  d->model = strdup(o->model ? o->model : "nbdstack devemu");
  d->firmware = strdup(o->firmware ? o->firmware : NBDS_VERSION);
  if (!d->serial || !d->model || !d->firmware)
    return fail(d, errmsg, "out of memory");
  const char *err = geometry(d, o);
  if (err)
    return fail(d, errmsg, err);
  d->virtio_acked = dv_virtio_features(&d->g);
  return d;
}

/* Wait for the device's commands: NBD requests cannot be cancelled and
 * still point into guest memory. */
static int
drain(devemu_dev *d)
{
  while (d->pending > 0)
    if (devemu_backend_poll(d->b, -1) == -1) {
      dv_run(d->b);
      if (d->pending > 0)
        return -1;
    }
  return 0;
}

void
devemu_dev_free(devemu_dev *d)
{
  if (!d)
    return;
  drain(d);
  free(d->serial);
  free(d->model);
  free(d->firmware);
  free(d);
}

int
devemu_dev_reset(devemu_dev *d)
{
  int r = drain(d);
  d->wce = d->g.wce_initial;
  d->wce_gen++;
  d->g.ata_mult = 16;
  d->virtio_acked = dv_virtio_features(&d->g);
  dv_dev_update_wce(d);
  return r;
}

bool devemu_dev_get_wce(devemu_dev *d) { return d->g.wce; }
uint64_t devemu_capacity_bytes(devemu_dev *d) { return d->g.size; }
uint32_t devemu_block_size(devemu_dev *d) { return d->g.lbs; }

void
devemu_set_completion(devemu_dev *d, devemu_complete_fn fn, void *opaque)
{
  d->complete = fn;
  d->opaque = opaque;
}

/* ---- identity ---- */

uint64_t
devemu_virtio_host_features(devemu_dev *d)
{
  return dv_virtio_features(&d->g);
}

int
devemu_virtio_ack_features(devemu_dev *d, uint64_t acked)
{
  if (acked & ~dv_virtio_features(&d->g))
    return -1;
  d->virtio_acked = acked;
  /* Spec 5.2.5: FLUSH offered but not negotiated means writethrough (and
   * CONFIG_WCE without FLUSH starts with writeback = 0). */
  if (!(acked & 1ull << VIRTIO_BLK_F_FLUSH))
    d->wce = false;
  dv_dev_update_wce(d);
  return 0;
}

size_t
devemu_virtio_config_read(devemu_dev *d, uint32_t off, void *buf,
                          size_t len)
{
  uint8_t cfg[64];
  size_t size = dv_virtio_config(&d->g, cfg);

  if (off >= size)
    return 0;
  if (len > size - off)
    len = size - off;
  memcpy(buf, cfg + off, len);
  return len;
}

int
devemu_virtio_config_write(devemu_dev *d, uint32_t off, const void *buf,
                           size_t len)
{
  if (off != VIRTIO_CFG_WRITEBACK || len != 1 ||
      !(d->virtio_acked & 1ull << VIRTIO_BLK_F_CONFIG_WCE))
    return -1;
  bool on = *(const uint8_t *) buf != 0;
  struct dv_range none;
  struct dv_plan p = { .ranges = &none };
  devemu_cmd c = { .tag = 0 };

  if (on && d->g.wce)
    return 0;
  /* Like NVMe Set Features: off drains, flushes, then switches. */
  dv_plan_init(&p, !on && d->g.can_flush && !d->g.no_flush ? DV_OP_FLUSH
                                                           : DV_OP_NONE,
               0, 0);
  p.wce = on ? DV_WCE_ON : DV_WCE_OFF;
  p.drain_first = !on;
  p.errkind = DV_ERR_SETWCE;
  return dv_engine_start(d, &p, &c, true);
}

int
devemu_nvme_identify(devemu_dev *d, uint8_t cns, uint8_t csi, uint32_t nsid,
                     uint8_t out[4096])
{
  return dv_nvme_identify(&d->g, cns, csi, nsid, out);
}

void
devemu_ata_identify(devemu_dev *d, uint16_t words[256])
{
  dv_ata_identify(&d->g, words);
}

/* ---- commands ---- */

int
devemu_submit(devemu_dev *d, const devemu_cmd *c)
{
  struct dv_range ranges[DV_MAX_RANGES];
  struct dv_plan p = { .ranges = ranges };
  devemu_completion out = { .tag = c->tag };
  enum dv_decoded r;

  switch (d->g.kind) {
  case DEVEMU_VIRTIO_BLK:
    r = dv_virtio_decode(&d->g, c, &p, &out);
    break;
  case DEVEMU_NVME:
    r = c->nvme_admin ? dv_nvme_admin_decode(&d->g, c, &p, &out)
                      : dv_nvme_decode(&d->g, c, &p, &out);
    break;
  default:
    r = dv_ata_decode(&d->g, c, &p, &out);
    break;
  }
  if (r == DV_REJECT) {
    errno = ENOSYS;
    return -1;
  }
  if (r == DV_DONE) {
    if (d->complete)
      d->complete(d->opaque, &out);
    return 1;
  }
  if (dv_engine_start(d, &p, c, false) == -1) {
    errno = ENOMEM;
    return -1;
  }
  return 0;
}
