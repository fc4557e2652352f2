/* The fast path, on the reactor that received the request: reads, and
 * writes over clusters that are ours alone, whose L2 tables are cached.
 * The request becomes one child request per run of contiguous host
 * clusters (usually exactly one), zero-filled runs, and reads from the
 * backing file; no metadata changes, no lock held across I/O.
 *
 * A FUA write takes this path only when the L2 tables it goes through are
 * clean: then its mapping is already durable and the FUA of the data write
 * is all it needs.  fast_inflight counts requests on this path so that the
 * metadata thread never reuses a cluster one of them may still touch. */
#include <errno.h>
#include <stdlib.h>

#include "qcow2.h"

#define MAX_RUNS 8
/* A child's scratch space holds this many iovecs. */
#define SCRATCH_IOVECS 2
_Static_assert(sizeof ((struct nbds_req *) 0)->scratch >=
                 SCRATCH_IOVECS * sizeof (struct iovec),
               "iovecs fit in scratch");

struct run {
  enum qcow2_type type;
  uint64_t pos;       /* offset in the request */
  uint64_t host;
  uint64_t len;
};

static void
finish(struct qcow2 *q, struct nbds_req *req, int err)
{
  atomic_fetch_sub(&q->fast_inflight, 1);
  nbds_req_complete(req, err);
}

/* One run that is the whole request. */
static void
whole_done(struct nbds_req *child, int err)
{
  struct qcow2 *q = child->opaque;
  struct nbds_req *req = child->parent;
  nbds_req_free(child);
  finish(q, req, err);
}

/* Several runs: ctx is a request of ours that is never submitted, and
 * counts the runs still going (scratch[0]) and the first error
 * (scratch[1]). */
static void
ctx_put(struct nbds_req *ctx)
{
  if (--ctx->scratch[0] > 0)
    return;
  struct qcow2 *q = ctx->opaque;
  struct nbds_req *req = ctx->parent;
  int err = (int) ctx->scratch[1];
  nbds_req_free(ctx);
  finish(q, req, err);
}

static void
run_done(struct nbds_req *child, int err)
{
  struct nbds_req *ctx = child->opaque;
  if (err && !ctx->scratch[1])
    ctx->scratch[1] = (uint64_t) err;
  nbds_req_free(child);
  ctx_put(ctx);
}

/* A child for bytes [pos, pos+len) of the request, its iovecs kept in its
 * own scratch space (two fit; the caller checked). */
static struct nbds_req *
child_for(struct nbds_req *ctx, struct nbds_req *req, uint64_t pos,
          uint64_t len, uint64_t offset)
{
  struct nbds_req *c = nbds_req_child(req);
  struct iovec *iov = (struct iovec *) c->scratch;
  c->iovcnt = qcow2_iov_slice(req->iov, req->iovcnt, pos, len, iov,
                              SCRATCH_IOVECS);
  c->iov = iov;
  c->offset = offset;
  c->count = len;
  c->done = run_done;
  c->opaque = ctx;
  ctx->scratch[0]++;
  return c;
}

static void
start_run(struct qcow2 *q, struct nbds_req *ctx, struct nbds_req *req,
          const struct run *r)
{
  switch (r->type) {
  case QCOW2_NORMAL:
    nbds_layer_submit(q->file, child_for(ctx, req, r->pos, r->len, r->host));
    return;
  case QCOW2_UNALLOCATED:
  case QCOW2_UNALLOCATED_ALLOC:
    if (q->backing) {
      uint64_t guest = req->offset + r->pos, in = 0;
      if (guest < q->backing_size)
        in = q->backing_size - guest < r->len ? q->backing_size - guest
                                              : r->len;
      qcow2_iov_zero(req->iov, req->iovcnt, r->pos + in, r->len - in);
      if (in)
        nbds_layer_submit(q->backing, child_for(ctx, req, r->pos, in, guest));
      return;
    }
    /* fall through */
  default:
    qcow2_iov_zero(req->iov, req->iovcnt, r->pos, r->len);
    return;
  }
}

/* Plan the runs under the lock; false when the request needs the
 * metadata thread. */
static bool
plan(struct qcow2 *q, struct nbds_req *req, struct run *runs, int *n)
{
  bool write = req->op == NBDS_OP_WRITE;
  uint64_t done = 0;
  *n = 0;
  if (write && atomic_load(&q->corrupt))
    return false;  /* the metadata thread refuses it */
  while (done < req->count) {
    struct qcow2_map m;
    if (*n == MAX_RUNS ||
        qcow2_map_cached(q, req->offset + done, req->count - done, &m) != 1)
      return false;
    if (write ? m.type != QCOW2_NORMAL || !m.copied ||
                  ((req->flags & NBDS_F_FUA) && !m.clean)
              : m.type == QCOW2_COMPRESSED_DATA)
      return false;
    runs[(*n)++] = (struct run) { m.type, done, m.host, m.bytes };
    done += m.bytes;
  }
  return true;
}

bool
qcow2_fast_submit(struct qcow2 *q, struct nbds_req *req)
{
  if (req->op != NBDS_OP_READ && req->op != NBDS_OP_WRITE)
    return false;
  struct run runs[MAX_RUNS];
  int n;
  pthread_mutex_lock(&q->lock);
  bool ok = plan(q, req, runs, &n);
  /* A child's iovecs must fit in its scratch space. */
  if (ok && req->iovcnt > SCRATCH_IOVECS && !(n == 1 && runs[0].type == QCOW2_NORMAL))
    ok = false;
  if (ok)
    atomic_fetch_add(&q->fast_inflight, 1);
  pthread_mutex_unlock(&q->lock);
  if (!ok)
    return false;

  if (n == 1 && runs[0].type == QCOW2_NORMAL) {
    struct nbds_req *c = nbds_req_child(req);
    c->offset = runs[0].host;
    c->done = whole_done;
    c->opaque = q;
    nbds_layer_submit(q->file, c);
    return true;
  }
  struct nbds_req *ctx = nbds_req_child(req);
  ctx->opaque = q;
  ctx->scratch[0] = 1;  /* held until every run has started */
  for (int i = 0; i < n; i++)
    start_run(q, ctx, req, &runs[i]);
  ctx_put(ctx);
  return true;
}
