/* Helpers the three decoders share: guest buffers and write flags. */
#include <string.h>

#include "internal.h"

bool
dv_iov_total(const devemu_iov *iov, unsigned niov, uint64_t *total)
{
  uint64_t t = 0;

  if (niov > DEVEMU_MAX_IOV || (niov > 0 && iov == NULL))
    return false;
  for (unsigned i = 0; i < niov; i++) {
    if (iov[i].len > 0 && iov[i].base == NULL)
      return false;
    if (iov[i].len > UINT64_MAX - t)
      return false;
    t += iov[i].len;
  }
  *total = t;
  return true;
}

void
dv_iov_to_buf(const devemu_iov *iov, unsigned niov, uint64_t off,
              void *buf, size_t len)
{
  uint8_t *b = buf;

  for (unsigned i = 0; i < niov && len > 0; i++) {
    if (off >= iov[i].len) {
      off -= iov[i].len;
      continue;
    }
    size_t n = iov[i].len - off < len ? iov[i].len - off : len;
    memcpy(b, (uint8_t *) iov[i].base + off, n);
    b += n;
    len -= n;
    off = 0;
  }
}

void
dv_iov_from_buf(const devemu_iov *iov, unsigned niov, uint64_t off,
                const void *buf, size_t len)
{
  const uint8_t *b = buf;

  for (unsigned i = 0; i < niov && len > 0; i++) {
    if (off >= iov[i].len) {
      off -= iov[i].len;
      continue;
    }
    size_t n = iov[i].len - off < len ? iov[i].len - off : len;
    memcpy((uint8_t *) iov[i].base + off, b, n);
    b += n;
    len -= n;
    off = 0;
  }
}

void
dv_plan_init(struct dv_plan *p, enum dv_op op, uint64_t off, uint64_t len)
{
  struct dv_range *r = p->ranges;

  memset(p, 0, sizeof *p);
  p->ranges = r;
  p->op = op;
  p->errkind = op == DV_OP_READ ? DV_ERR_READ
             : op == DV_OP_FLUSH ? DV_ERR_FLUSH : DV_ERR_WRITE;
  if (len > 0) {
    r[0].off = off;
    r[0].len = len;
    p->nranges = 1;
  }
  if (op == DV_OP_READ || op == DV_OP_WRITE)
    p->data_len = len;
}

/* QEMU's rule (blk_co_do_pwritev_part): with the write cache off every
 * write and write zeroes carries FUA; a server without FUA gets the write
 * followed by a flush.  cache=unsafe drops FUA altogether. */
void
dv_plan_write_flags(const struct dv_geom *g, bool guest_fua,
                    struct dv_plan *p)
{
  if (g->no_flush)
    return;
  if (guest_fua || !g->wce) {
    if (g->can_fua)
      p->flags |= DV_NBD_FUA;
    else if (g->can_flush)
      p->flush_after = true;
    /* Neither: the device advertises no cache, nothing more to do. */
  }
  else
    p->volatile_write = true;
}
