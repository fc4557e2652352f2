/* Requests the upstream's minimum block size does not allow.
 *
 * An upstream may advertise a minimum block size larger than 1 and fail
 * requests that are not multiples of it (a server over 4K-sector storage,
 * nbdkit's blocksize-policy filter).  The layer still advertises a minimum
 * of 1, as qemu-nbd does: the layers above it (qcow2 updating an 8-byte
 * table entry) and clients that never asked for block sizes send small,
 * unaligned requests, and failing those would break images.  So every
 * request is made to fit, never refused:
 *
 *   READ, CACHE    the aligned range around it (READ through a bounce
 *                  buffer);
 *   BLOCK_STATUS   the aligned range; extents before the offset are dropped;
 *   TRIM           only the whole blocks inside it (a trim is advisory);
 *   WRITE          read-modify-write: the partial first and last blocks are
 *                  read, the data copied over them, the aligned range
 *                  written with the request's FUA;
 *   ZERO           the whole blocks inside get the request's ZERO (NO_HOLE,
 *                  FUA, FAST_ZERO), the partial ends are read-modify-written
 *                  with zeros.  FAST_ZERO with partial ends fails at once
 *                  with ENOTSUP: writing them is not fast, and the client
 *                  falls back to writing.
 *
 * Read-modify-writes of one upstream run one at a time (u->rmw_*, across
 * reactors): two writes to different bytes of one block must not both
 * write back the block as they read it.  A write overlapping another
 * in-flight write has no defined result in NBD, so aligned writes need not
 * wait. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "nbd.h"

static uint64_t
round_down(uint64_t v, uint32_t a)
{
  return v & ~(uint64_t) (a - 1);
}

static uint64_t
round_up(uint64_t v, uint32_t a)
{
  return round_down(v + a - 1, a);
}

bool
nbd_align_needed(const struct nbd_job *job)
{
  const struct nbds_req *req = job->req;
  uint32_t a = job->u->align;
  if (req->op == NBDS_OP_FLUSH)
    return false;
  if (req->offset % a)
    return true;
  if (req->op == NBDS_OP_READ || req->op == NBDS_OP_WRITE) {
    for (int i = 0; i < req->iovcnt; i++)
      if (req->iov[i].iov_len % a)
        return true;
    return false;
  }
  return req->count % a != 0;
}

/* ---- the read-modify-write lock ------------------------------------------ */

static void
rmw_resume(void *arg)
{
  struct nbd_job *job = arg;
  job->after(job);
}

/* Run step(job) once no other read-modify-write of the upstream runs. */
static void
rmw_lock(struct nbd_job *job, void (*step)(struct nbd_job *job))
{
  struct nbd_upstream *u = job->u;
  pthread_mutex_lock(&u->lock);
  bool busy = u->rmw_busy;
  if (busy) {
    job->after = step;
    job->rmw_next = NULL;
    *u->rmw_tail = job;
    u->rmw_tail = &job->rmw_next;
  }
  u->rmw_busy = true;
  pthread_mutex_unlock(&u->lock);
  if (!busy)
    step(job);
}

static void
rmw_unlock(struct nbd_upstream *u)
{
  pthread_mutex_lock(&u->lock);
  struct nbd_job *next = u->rmw_head;
  if (next) {
    u->rmw_head = next->rmw_next;
    if (!u->rmw_head)
      u->rmw_tail = &u->rmw_head;
  }
  else
    u->rmw_busy = false;
  pthread_mutex_unlock(&u->lock);
  /* Posted, even to this reactor: no recursion through long queues. */
  if (next)
    nbds_reactor_post(next->runner, rmw_resume, next);
}

/* ---- steps ----------------------------------------------------------------- */

static void
finish(struct nbd_job *job)
{
  free(job->bounce);
  job->bounce = NULL;
  nbd_job_finish(job);
}

static void
finish_unlock(struct nbd_job *job)
{
  struct nbd_upstream *u = job->u;
  free(job->bounce);
  job->bounce = NULL;
  nbd_job_finish(job);
  rmw_unlock(u);
}

static void
read_copy_out(struct nbd_job *job)
{
  if (!job->err) {
    const struct nbds_req *req = job->req;
    const char *p = job->bounce + (req->offset - job->lo);
    for (int i = 0; i < req->iovcnt; i++) {
      memcpy(req->iov[i].iov_base, p, req->iov[i].iov_len);
      p += req->iov[i].iov_len;
    }
  }
  finish(job);
}

/* The partial blocks at the ends of [off, end): at most two. */
static void
find_edges(struct nbd_job *job, uint64_t off, uint64_t end, char *head_buf,
           char *tail_buf)
{
  uint32_t a = job->u->align;
  job->nedges = 0;
  if (off % a)
    job->edge[job->nedges++] = (struct nbd_edge) {
      round_down(off, a), head_buf };
  if (end % a && (!job->nedges || round_down(end, a) != job->edge[0].offset))
    job->edge[job->nedges++] = (struct nbd_edge) {
      round_down(end, a), tail_buf };
}

/* Step 1 of WRITE and ZERO (under the lock): read the partial blocks. */
static void
edges_read(struct nbd_job *job, void (*then)(struct nbd_job *job))
{
  struct nbd_op *ops = NULL;
  bool ok = true;
  for (unsigned i = 0; ok && i < job->nedges; i++)
    ok = nbd_add_ops(&ops, job, NBDS_OP_READ, 0, job->edge[i].offset,
                     job->u->align, job->edge[i].buf);
  nbd_job_run(job, ops, ok, then);
}

static void
write_put(struct nbd_job *job)
{
  if (job->err) {
    finish_unlock(job);
    return;
  }
  const struct nbds_req *req = job->req;
  char *p = job->bounce + (req->offset - job->lo);
  for (int i = 0; i < req->iovcnt; i++) {
    memcpy(p, req->iov[i].iov_base, req->iov[i].iov_len);
    p += req->iov[i].iov_len;
  }
  struct nbd_op *ops = NULL;
  bool ok = nbd_add_ops(&ops, job, NBDS_OP_WRITE,
                        nbd_cmd_flags(req) & LIBNBD_CMD_FLAG_FUA, job->lo,
                        job->hi - job->lo, job->bounce);
  nbd_job_run(job, ops, ok, finish_unlock);
}

static void
write_locked(struct nbd_job *job)
{
  edges_read(job, write_put);
}

static void
zero_put(struct nbd_job *job)
{
  if (job->err) {
    finish_unlock(job);
    return;
  }
  const struct nbds_req *req = job->req;
  uint32_t a = job->u->align;
  uint64_t end = req->offset + req->count;
  uint32_t flags = nbd_cmd_flags(req);
  struct nbd_op *ops = NULL;
  bool ok = true;
  for (unsigned i = 0; ok && i < job->nedges; i++) {
    uint64_t b = job->edge[i].offset;
    uint64_t from = req->offset > b ? req->offset : b;
    uint64_t to = end < b + a ? end : b + a;
    memset(job->edge[i].buf + (from - b), 0, to - from);
    ok = nbd_add_ops(&ops, job, NBDS_OP_WRITE, flags & LIBNBD_CMD_FLAG_FUA,
                     b, a, job->edge[i].buf);
  }
  uint64_t in_lo = round_up(req->offset, a), in_hi = round_down(end, a);
  if (ok && in_lo < in_hi)
    ok = nbd_add_ops(&ops, job, NBDS_OP_ZERO, flags, in_lo, in_hi - in_lo,
                     NULL);
  nbd_job_run(job, ops, ok, finish_unlock);
}

static void
zero_locked(struct nbd_job *job)
{
  edges_read(job, zero_put);
}

void
nbd_align_start(struct nbd_job *job)
{
  const struct nbds_req *req = job->req;
  uint32_t a = job->u->align;
  uint64_t end = req->offset + req->count;
  job->lo = round_down(req->offset, a);
  job->hi = round_up(end, a);
  struct nbd_op *ops = NULL;
  bool ok = true;

  switch (req->op) {
  case NBDS_OP_READ:
    job->bounce = malloc(job->hi - job->lo);
    ok = job->bounce &&
         nbd_add_ops(&ops, job, NBDS_OP_READ, 0, job->lo, job->hi - job->lo,
                     job->bounce);
    nbd_job_run(job, ops, ok, read_copy_out);
    return;
  case NBDS_OP_CACHE:
    ok = nbd_add_ops(&ops, job, NBDS_OP_CACHE, 0, job->lo, job->hi - job->lo,
                     NULL);
    nbd_job_run(job, ops, ok, NULL);
    return;
  case NBDS_OP_BLOCK_STATUS: {
    uint64_t count = job->hi - job->lo;
    if (count > UINT32_MAX)
      count = round_down(UINT32_MAX, a);
    ok = nbd_add_ops(&ops, job, NBDS_OP_BLOCK_STATUS, nbd_cmd_flags(req),
                     job->lo, count, NULL);
    if (ok)
      ops->skip = req->offset - job->lo;
    nbd_job_run(job, ops, ok, NULL);
    return;
  }
  case NBDS_OP_TRIM: {
    uint64_t in_lo = round_up(req->offset, a), in_hi = round_down(end, a);
    if (in_lo < in_hi)
      ok = nbd_add_ops(&ops, job, NBDS_OP_TRIM, nbd_cmd_flags(req), in_lo,
                       in_hi - in_lo, NULL);
    nbd_job_run(job, ops, ok, NULL);
    return;
  }
  case NBDS_OP_WRITE:
    job->bounce = malloc(job->hi - job->lo);
    if (!job->bounce)
      break;
    find_edges(job, req->offset, end, job->bounce,
               job->bounce + (round_down(end, a) - job->lo));
    rmw_lock(job, write_locked);
    return;
  case NBDS_OP_ZERO:
    if (req->flags & NBDS_F_FAST_ZERO) {
      job->err = ENOTSUP;
      nbd_job_finish(job);
      return;
    }
    job->bounce = malloc(2 * (size_t) a);
    if (!job->bounce)
      break;
    find_edges(job, req->offset, end, job->bounce, job->bounce + a);
    rmw_lock(job, zero_locked);
    return;
  default:
    break;
  }
  job->err = ENOMEM;
  finish(job);
}
