/* NVMe: I/O command decoding and completion status. */
#include <errno.h>

#include "internal.h"
#include "nvme.h"

static enum dv_decoded
done(devemu_completion *out, uint16_t status)
{
  out->u.nvme.status = status;
  out->u.nvme.dw0 = 0;
  return DV_DONE;
}

/* Read, Write and Write Zeroes: SLBA in CDW10-11, 0-based NLB in CDW12. */
static enum dv_decoded
decode_rw(const struct dv_geom *g, const devemu_cmd *c, uint8_t opcode,
          struct dv_plan *p, devemu_completion *out)
{
  const uint8_t *sqe = c->u.nvme_sqe;
  uint64_t slba = dv_le64(sqe + 40);
  uint32_t cdw12 = dv_le32(sqe + 48);
  uint64_t nlb = (cdw12 & 0xffff) + 1ull;
  uint64_t nsze = g->size >> g->lbs_shift;
  uint64_t len = nlb << g->lbs_shift;
  bool write = opcode != NVME_CMD_READ;

  if (write && g->read_only)
    return done(out, NVME_SC_NS_WRITE_PROT | NVME_DNR);
  if (opcode != NVME_CMD_WRITE_ZEROES &&
      len > (uint64_t) NVME_PAGE << nvme_mdts(g->max_rw))
    return done(out, NVME_SC_INVALID_FIELD | NVME_DNR);
  if (!dv_in_range(slba, nlb, nsze))
    return done(out, NVME_SC_LBA_RANGE | NVME_DNR);

  if (opcode == NVME_CMD_WRITE_ZEROES) {
    dv_plan_init(p, DV_OP_ZERO, slba << g->lbs_shift, len);
    /* DEAC: the blocks may be deallocated (they still read as zeroes,
     * which NBD WRITE_ZEROES guarantees); without it, keep them. */
    if (!(cdw12 & NVME_WZ_DEAC))
      p->flags |= DV_NBD_NO_HOLE;
    dv_plan_write_flags(g, cdw12 & NVME_RW_FUA, p);
    return DV_IO;
  }

  uint64_t total;
  if (!dv_iov_total(c->iov, c->niov, &total))
    return done(out, NVME_SC_SGL_LEN_INVALID | NVME_DNR);
  if (total != len)
    return done(out, NVME_SC_SGL_LEN_INVALID | NVME_DNR);
  dv_plan_init(p, write ? DV_OP_WRITE : DV_OP_READ,
               slba << g->lbs_shift, len);
  /* FUA is honoured (QEMU's model ignores it); on a read NBD has no
   * equivalent and the data comes from the server anyway. */
  if (write)
    dv_plan_write_flags(g, cdw12 & NVME_RW_FUA, p);
  return DV_IO;
}

/* Dataset Management: NR+1 ranges {le32 attrs, le32 nlb, le64 slba}. */
static enum dv_decoded
decode_dsm(const struct dv_geom *g, const devemu_cmd *c, struct dv_plan *p,
           devemu_completion *out)
{
  const uint8_t *sqe = c->u.nvme_sqe;
  unsigned nr = (sqe[40]) + 1u;
  uint32_t attrs = dv_le32(sqe + 44);
  uint64_t nsze = g->size >> g->lbs_shift;
  uint64_t total;

  if (!dv_iov_total(c->iov, c->niov, &total) || total != nr * 16ull)
    return done(out, NVME_SC_SGL_LEN_INVALID | NVME_DNR);
  if (!(attrs & NVME_DSM_AD))   /* hints only */
    return done(out, NVME_SC_SUCCESS);
  if (g->read_only)
    return done(out, NVME_SC_NS_WRITE_PROT | NVME_DNR);

  /* With write zeroes, deallocated blocks read as zeroes (DLFEAT 001b):
   * NBD WRITE_ZEROES that may punch keeps that promise, TRIM does not. */
  dv_plan_init(p, g->can_zero ? DV_OP_ZERO : DV_OP_TRIM, 0, 0);
  for (unsigned i = 0; i < nr; i++) {
    uint8_t r[16];
    dv_iov_to_buf(c->iov, c->niov, i * 16ull, r, 16);
    uint64_t nlb = dv_le32(r + 4), slba = dv_le64(r + 8);
    /* Checked before any I/O (QEMU skips bad ranges silently). */
    if (!dv_in_range(slba, nlb, nsze))
      return done(out, NVME_SC_LBA_RANGE | NVME_DNR);
    if (nlb == 0)
      continue;
    p->ranges[p->nranges].off = slba << g->lbs_shift;
    p->ranges[p->nranges].len = nlb << g->lbs_shift;
    p->nranges++;
  }
  if (p->nranges == 0)
    return done(out, NVME_SC_SUCCESS);
  return DV_IO;
}

enum dv_decoded
dv_nvme_decode(const struct dv_geom *g, const devemu_cmd *c,
               struct dv_plan *p, devemu_completion *out)
{
  const uint8_t *sqe = c->u.nvme_sqe;
  uint8_t opcode = sqe[0];
  unsigned fuse = sqe[1] & 3, psdt = sqe[1] >> 6;
  uint32_t nsid = dv_le32(sqe + 4);

  switch (opcode) {
  case NVME_CMD_FLUSH: case NVME_CMD_WRITE: case NVME_CMD_READ:
    break;
  case NVME_CMD_WRITE_ZEROES:
    if (!g->write_zeroes)
      return done(out, NVME_SC_INVALID_OPCODE | NVME_DNR);
    break;
  case NVME_CMD_DSM:
    if (!g->discard)
      return done(out, NVME_SC_INVALID_OPCODE | NVME_DNR);
    break;
  default:  /* Compare, Write Uncorrectable, Verify, reservations, ... */
    return done(out, NVME_SC_INVALID_OPCODE | NVME_DNR);
  }
  /* No fused operations, no SGLs (Identify reports SGLS = 0). */
  if (fuse || psdt)
    return done(out, NVME_SC_INVALID_FIELD | NVME_DNR);
  if (nsid != NVME_NSID &&
      !(opcode == NVME_CMD_FLUSH && nsid == NVME_NSID_ALL && g->cache_present))
    return done(out, NVME_SC_INVALID_NS | NVME_DNR);

  switch (opcode) {
  case NVME_CMD_FLUSH:
    if (g->no_flush || !g->can_flush)
      return done(out, NVME_SC_SUCCESS);
    dv_plan_init(p, DV_OP_FLUSH, 0, 0);
    return DV_IO;
  case NVME_CMD_DSM:
    return decode_dsm(g, c, p, out);
  default:
    return decode_rw(g, c, opcode, p, out);
  }
}

void
dv_nvme_finish(const struct dv_plan *p, int err, uint64_t fail_off,
               devemu_completion *out)
{
  (void) fail_off;
  out->u.nvme.dw0 = 0;
  if (err == 0)
    out->u.nvme.status = NVME_SC_SUCCESS;
  else if (p->errkind == DV_ERR_SETWCE || err == ENOTCONN ||
           err == ESHUTDOWN || err == ENOMEM)
    out->u.nvme.status = NVME_SC_INTERNAL;
  else if (p->errkind == DV_ERR_READ)
    out->u.nvme.status = NVME_SC_READ_ERROR;
  else if (err == ENOSPC)
    out->u.nvme.status = NVME_SC_CAP_EXCEEDED;
  else
    out->u.nvme.status = NVME_SC_WRITE_FAULT;
}
