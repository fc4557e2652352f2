/* NVMe admin commands devemu answers: Identify and the Volatile Write
 * Cache feature.  Queue management, logs and the rest are the VMM's. */
#include "internal.h"
#include "nvme.h"

static enum dv_decoded
done(devemu_completion *out, uint16_t status, uint32_t dw0)
{
  out->u.nvme.status = status;
  out->u.nvme.dw0 = dw0;
  return DV_DONE;
}

static enum dv_decoded
identify(const struct dv_geom *g, const devemu_cmd *c,
         devemu_completion *out)
{
  const uint8_t *sqe = c->u.nvme_sqe;
  uint8_t data[4096];
  uint64_t total;

  if (!dv_iov_total(c->iov, c->niov, &total) || total != sizeof data)
    return done(out, NVME_SC_SGL_LEN_INVALID | NVME_DNR, 0);
  uint16_t st = dv_nvme_identify(g, sqe[40], sqe[47], dv_le32(sqe + 4),
                                 data);
  if (st == NVME_SC_SUCCESS)
    dv_iov_from_buf(c->iov, c->niov, 0, data, sizeof data);
  return done(out, st, 0);
}

static enum dv_decoded
get_vwc(const struct dv_geom *g, uint32_t cdw10, devemu_completion *out)
{
  if (!g->cache_present)
    return done(out, NVME_SC_INVALID_FIELD | NVME_DNR, 0);
  switch ((cdw10 >> 8) & 7) {
  case 0:                       /* current */
    return done(out, NVME_SC_SUCCESS, g->wce);
  case 1: case 2:               /* default, saved (nothing is saved) */
    return done(out, NVME_SC_SUCCESS, g->wce_initial);
  case 3:                       /* capabilities: bit 2 = changeable */
    return done(out, NVME_SC_SUCCESS, g->wce_changeable ? 4 : 0);
  default:
    return done(out, NVME_SC_INVALID_FIELD | NVME_DNR, 0);
  }
}

/* Turning the cache off waits for volatile writes in flight, flushes,
 * then switches (QEMU flushes too); turning it on just switches. */
static enum dv_decoded
set_vwc(const struct dv_geom *g, uint32_t cdw10, uint32_t cdw11,
        struct dv_plan *p, devemu_completion *out)
{
  bool on = cdw11 & 1;

  if (!g->cache_present)
    return done(out, NVME_SC_INVALID_FIELD | NVME_DNR, 0);
  if (cdw10 & (1u << 31))       /* SV: no saved values */
    return done(out, NVME_SC_FEAT_NOT_SAVEABLE | NVME_DNR, 0);
  if (on && g->wce)
    return done(out, NVME_SC_SUCCESS, 0);
  /* Off while already off still flushes: a switch may be in progress. */
  if (!g->wce_changeable && on != g->wce_initial)
    return done(out, NVME_SC_INVALID_FIELD | NVME_DNR, 0);
  bool flush = !on && g->can_flush && !g->no_flush;
  dv_plan_init(p, flush ? DV_OP_FLUSH : DV_OP_NONE, 0, 0);
  p->wce = on ? DV_WCE_ON : DV_WCE_OFF;
  p->drain_first = !on;
  p->errkind = DV_ERR_SETWCE;
  return DV_IO;
}

enum dv_decoded
dv_nvme_admin_decode(const struct dv_geom *g, const devemu_cmd *c,
                     struct dv_plan *p, devemu_completion *out)
{
  const uint8_t *sqe = c->u.nvme_sqe;
  uint32_t cdw10 = dv_le32(sqe + 40), cdw11 = dv_le32(sqe + 44);
  bool vwc = (cdw10 & 0xff) == NVME_FEAT_VWC;

  switch (sqe[0]) {
  case NVME_ADM_IDENTIFY:
    if (sqe[1])                 /* FUSE, PSDT */
      return done(out, NVME_SC_INVALID_FIELD | NVME_DNR, 0);
    return identify(g, c, out);
  case NVME_ADM_GET_FEATURES:
    return vwc ? get_vwc(g, cdw10, out) : DV_REJECT;
  case NVME_ADM_SET_FEATURES:
    return vwc ? set_vwc(g, cdw10, cdw11, p, out) : DV_REJECT;
  default:
    return DV_REJECT;
  }
}
