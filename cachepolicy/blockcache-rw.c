/* READ, WRITE and CACHE through the block cache.
 *
 * A request is cut at block boundaries into pieces, and up to WINDOW
 * pieces are in progress at once (so a large request against a remote
 * backend keeps several round trips in flight without needing memory in
 * proportion to its size).  Each piece is a small state machine over one
 * block; when it must wait it starts again from the lookup, because the
 * block may have been filled, evicted or trimmed meanwhile.
 *
 *   hit   READ: copy out under a reader hold.  WRITE: copy in under the
 *         writer hold, then mark dirty (write-back) or write the piece
 *         below before completing (write-through, or FUA).
 *   miss  READ with read-miss=bypass, WRITE with write-miss=no-allocate:
 *         straight below.  Otherwise take a slot, fill it from below
 *         unless a WRITE covers the whole block, and go on as a hit.
 *
 * Every callback of a request runs on the reactor that submitted it:
 * below completes there, and waiters are posted back there.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "blockcache.h"

#define WINDOW 8

struct bc_req;

struct bc_op {
  struct bc_waiter w;         /* waiting for a hold, a slot or a range */
  struct bc_wb_owner owner;   /* an eviction write-back it started */
  struct bc_req *r;
  struct bc_op *next_idle;
  struct bc_slot *slot;       /* held */
  struct bc_range range;      /* a no-allocate write on its way below */
  uint64_t blkno;
  uint64_t pos;               /* of the piece in the request */
  uint32_t skip;              /* of the piece in its block */
  uint32_t len;
  bool counted;               /* as a hit or a miss, once */
  int wb_err;
  struct nbds_req below;
  struct iovec iov;           /* below.iov, when one segment will do */
  struct iovec *iovs;         /* below.iov, when it takes several */
};

struct bc_req {
  struct blockcache *bc;
  struct nbds_req *req;
  uint64_t end;               /* bytes of the request to go through */
  uint64_t pos;               /* the next piece starts here */
  unsigned running;
  int err;                    /* the first error */
  bool pumping;
  struct bc_op *idle;
  struct bc_op ops[];
};

static void op_run(struct bc_op *op);

/* Copy len bytes between buf and the request's iovecs from byte pos. */
static void
iov_copy(const struct nbds_req *req, uint64_t pos, unsigned char *buf,
         size_t len, bool to_iov)
{
  int i = 0;
  while (pos >= req->iov[i].iov_len) {
    pos -= req->iov[i].iov_len;
    i++;
  }
  for (; len > 0; i++, pos = 0) {
    size_t n = req->iov[i].iov_len - pos;
    if (n > len)
      n = len;
    unsigned char *p = (unsigned char *) req->iov[i].iov_base + pos;
    if (to_iov)
      memcpy(p, buf, n);
    else
      memcpy(buf, p, n);
    buf += n;
    len -= n;
  }
}

static void
copy_in(struct bc_op *op)
{
  unsigned char *p = bc_slot_data(op->r->bc, op->slot) + op->skip;
  iov_copy(op->r->req, op->pos, p, op->len, false);
}

static void
copy_out(struct bc_op *op)
{
  unsigned char *p = bc_slot_data(op->r->bc, op->slot) + op->skip;
  iov_copy(op->r->req, op->pos, p, op->len, true);
}

/* Point op->below at the piece's part of the request's buffers. */
static int
slice(struct bc_op *op)
{
  const struct nbds_req *req = op->r->req;
  uint64_t pos = op->pos;
  int i = 0;
  while (pos >= req->iov[i].iov_len) {
    pos -= req->iov[i].iov_len;
    i++;
  }
  int n = 0;
  for (uint64_t left = op->len, p = pos; left > 0; p = 0) {
    uint64_t avail = req->iov[i + n].iov_len - p;
    left -= avail < left ? avail : left;
    n++;
  }
  struct iovec *v = &op->iov;
  if (n > 1) {
    v = op->iovs = malloc(n * sizeof *v);
    if (!v)
      return ENOMEM;
  }
  uint64_t left = op->len;
  for (int j = 0; j < n; j++, pos = 0) {
    uint64_t len = req->iov[i + j].iov_len - pos;
    v[j].iov_base = (unsigned char *) req->iov[i + j].iov_base + pos;
    v[j].iov_len = len < left ? len : left;
    left -= v[j].iov_len;
  }
  op->below.iov = v;
  op->below.iovcnt = n;
  return 0;
}

/* The request is finished when every piece is, or after an error when
 * the pieces already started are. */
static void
pump(struct bc_req *r)
{
  /* A piece that completes inline lands here from inside the loop. */
  if (r->pumping)
    return;
  r->pumping = true;
  struct blockcache *bc = r->bc;
  while (r->idle && r->pos < r->end && !r->err) {
    struct bc_op *op = r->idle;
    r->idle = op->next_idle;
    uint64_t off = r->req->offset + r->pos;
    op->blkno = off >> bc->shift;
    op->skip = off & (bc->bs - 1);
    op->len = bc->bs - op->skip;
    if (op->len > r->end - r->pos)
      op->len = r->end - r->pos;
    op->pos = r->pos;
    op->counted = false;
    op->wb_err = 0;
    r->pos += op->len;
    r->running++;
    op_run(op);
  }
  r->pumping = false;
  if (r->running == 0 && (r->pos >= r->end || r->err)) {
    struct nbds_req *req = r->req;
    int err = r->err;
    free(r);
    nbds_req_complete(req, err);
  }
}

static void
op_done(struct bc_op *op, int err)
{
  struct bc_req *r = op->r;
  free(op->iovs);
  op->iovs = NULL;
  op->slot = NULL;
  if (err && !r->err)
    r->err = err;
  r->running--;
  op->next_idle = r->idle;
  r->idle = op;
  pump(r);
}

static void
through_done(struct nbds_req *below, int err)
{
  struct bc_op *op = below->opaque;
  struct blockcache *bc = op->r->bc;
  struct bc_slot *s = op->slot;
  pthread_mutex_lock(&bc->lock);
  s->writer = false;
  if (!err) {
    if (s->state == SLOT_FILLING)
      bc_set_state(bc, s, SLOT_CLEAN);
    bc_release(bc, s);
  } else if (s->state == SLOT_DIRTY)
    bc_release(bc, s);    /* it holds earlier writes: keep it */
  else
    bc_drop(bc, s);       /* the failed range is undefined: read below */
  pthread_mutex_unlock(&bc->lock);
  op_done(op, err);
}

/* New data is in the slot, held as writer: apply the write-hit policy. */
static void
written(struct bc_op *op)
{
  struct bc_req *r = op->r;
  struct blockcache *bc = r->bc;
  struct bc_slot *s = op->slot;
  uint32_t fua = r->req->flags & NBDS_F_FUA;
  if (bc->write_back && !fua) {
    pthread_mutex_lock(&bc->lock);
    s->writer = false;
    bc_set_state(bc, s, SLOT_DIRTY);
    bc_release(bc, s);
    pthread_mutex_unlock(&bc->lock);
    op_done(op, 0);
    return;
  }
  /* Only the piece goes below (nbdkit writes the whole block); the rest
   * of a dirty block stays dirty. */
  op->iov.iov_base = bc_slot_data(bc, s) + op->skip;
  op->iov.iov_len = op->len;
  op->below = (struct nbds_req) {
    .op = NBDS_OP_WRITE, .flags = fua,
    .offset = (op->blkno << bc->shift) + op->skip, .count = op->len,
    .iov = &op->iov, .iovcnt = 1, .done = through_done, .opaque = op,
  };
  nbds_layer_submit(bc->below, &op->below);
}

static void
fill_done(struct nbds_req *below, int err)
{
  struct bc_op *op = below->opaque;
  struct bc_req *r = op->r;
  struct blockcache *bc = r->bc;
  struct bc_slot *s = op->slot;
  if (err) {
    pthread_mutex_lock(&bc->lock);
    bc_drop(bc, s);
    pthread_mutex_unlock(&bc->lock);
    op_done(op, err);
    return;
  }
  if (r->req->op == NBDS_OP_WRITE) {
    copy_in(op);
    written(op);
    return;
  }
  if (r->req->op == NBDS_OP_READ)
    copy_out(op);
  pthread_mutex_lock(&bc->lock);
  s->writer = false;
  bc_set_state(bc, s, SLOT_CLEAN);
  bc_release(bc, s);
  pthread_mutex_unlock(&bc->lock);
  op_done(op, 0);
}

static void
fill(struct bc_op *op)
{
  struct blockcache *bc = op->r->bc;
  uint32_t len = bc_block_len(bc, op->blkno);
  op->iov.iov_base = bc_slot_data(bc, op->slot);
  op->iov.iov_len = len;
  op->below = (struct nbds_req) {
    .op = NBDS_OP_READ, .offset = op->blkno << bc->shift, .count = len,
    .iov = &op->iov, .iovcnt = 1, .done = fill_done, .opaque = op,
  };
  nbds_layer_submit(bc->below, &op->below);
}

static void
around_done(struct nbds_req *below, int err)
{
  struct bc_op *op = below->opaque;
  struct blockcache *bc = op->r->bc;
  if (below->op == NBDS_OP_WRITE) {
    pthread_mutex_lock(&bc->lock);
    bc_range_remove(bc, &op->range);
    pthread_mutex_unlock(&bc->lock);
  }
  op_done(op, err);
}

/* A miss that does not allocate: the piece goes below as it is. */
static void
around(struct bc_op *op, uint32_t flags)
{
  struct bc_req *r = op->r;
  struct blockcache *bc = r->bc;
  op->below = (struct nbds_req) {
    .op = r->req->op, .flags = flags,
    .offset = (op->blkno << bc->shift) + op->skip, .count = op->len,
    .done = around_done, .opaque = op,
  };
  int err = slice(op);
  if (err)
    around_done(&op->below, err);
  else
    nbds_layer_submit(bc->below, &op->below);
}

static void
count(struct bc_op *op, atomic_uint_fast64_t *c)
{
  if (!op->counted && op->r->req->op != NBDS_OP_CACHE) {
    atomic_fetch_add(c, 1);
    op->counted = true;
  }
}

/* A cached block, under the lock (which this drops). */
static void
hit(struct bc_op *op, struct bc_slot *s)
{
  struct bc_req *r = op->r;
  struct blockcache *bc = r->bc;
  enum nbds_op kind = r->req->op;
  count(op, &bc->hits);
  if (kind == NBDS_OP_CACHE) {  /* there already, or on its way */
    bc_touch(bc, s);
    pthread_mutex_unlock(&bc->lock);
    op_done(op, 0);
    return;
  }
  /* Readers queue behind waiting writers, so a writer is not starved. */
  bool busy = kind == NBDS_OP_WRITE ? !bc_idle(s) : s->writer || s->waiters;
  if (busy) {
    bc_wait(&s->waiters, &op->w);
    pthread_mutex_unlock(&bc->lock);
    return;
  }
  bc_touch(bc, s);
  op->slot = s;
  if (kind == NBDS_OP_WRITE) {
    s->writer = true;
    pthread_mutex_unlock(&bc->lock);
    copy_in(op);
    written(op);
    return;
  }
  s->readers++;
  pthread_mutex_unlock(&bc->lock);
  copy_out(op);
  pthread_mutex_lock(&bc->lock);
  s->readers--;
  bc_release(bc, s);
  pthread_mutex_unlock(&bc->lock);
  op_done(op, 0);
}

static void
op_run(struct bc_op *op)
{
  struct bc_req *r = op->r;
  struct blockcache *bc = r->bc;
  enum nbds_op kind = r->req->op;

  if (op->wb_err) {  /* the write-back that was to make room failed */
    op_done(op, op->wb_err);
    return;
  }
  pthread_mutex_lock(&bc->lock);
  struct bc_slot *s = bc_lookup(bc, op->blkno);
  if (s) {
    hit(op, s);
    return;
  }
  count(op, &bc->misses);
  if (kind == NBDS_OP_READ && !bc->read_allocate) {
    pthread_mutex_unlock(&bc->lock);
    around(op, 0);
    return;
  }
  if (kind == NBDS_OP_WRITE && !bc->write_allocate) {
    bc_range_add(bc, &op->range, op->blkno, op->blkno);
    pthread_mutex_unlock(&bc->lock);
    around(op, r->req->flags & NBDS_F_FUA);
    return;
  }
  struct bc_range *busy = bc_range_find(bc, op->blkno);
  if (busy) {
    bc_wait(&busy->waiters, &op->w);
    pthread_mutex_unlock(&bc->lock);
    return;
  }
  struct bc_slot *wb;
  s = bc_take_slot(bc, op->blkno, &op->w, &op->owner, &wb);
  pthread_mutex_unlock(&bc->lock);
  if (!s) {
    if (wb)
      bc_submit_writeback(bc, wb);
    return;
  }
  op->slot = s;
  if (kind == NBDS_OP_WRITE && op->skip == 0 &&
      op->len == bc_block_len(bc, op->blkno)) {
    copy_in(op);  /* the whole block: nothing to read first */
    written(op);
  } else
    fill(op);
}

static void
op_resume(struct bc_waiter *w)
{
  op_run(bc_container(w, struct bc_op, w));
}

/* Runs on the op's reactor (it submitted the write-back); go through the
 * mailbox anyway, so a chain of write-backs cannot recurse. */
static void
op_wb_done(struct bc_wb_owner *o, int err)
{
  struct bc_op *op = bc_container(o, struct bc_op, owner);
  op->wb_err = err;
  bc_post(&op->w);
}

void
bc_rw_submit(struct blockcache *bc, struct nbds_req *req)
{
  uint64_t end = req->count;
  /* Prefetching more than the cache holds would only evict itself. */
  if (req->op == NBDS_OP_CACHE && end > (uint64_t) bc->nslots * bc->bs)
    end = (uint64_t) bc->nslots * bc->bs;
  if (end == 0) {
    nbds_req_complete(req, 0);
    return;
  }
  uint64_t blocks = ((req->offset + end - 1) >> bc->shift) -
    (req->offset >> bc->shift) + 1;
  unsigned n = blocks < WINDOW ? (unsigned) blocks : WINDOW;
  struct bc_req *r = malloc(sizeof *r + n * sizeof r->ops[0]);
  if (!r) {
    nbds_req_complete(req, ENOMEM);
    return;
  }
  *r = (struct bc_req) { .bc = bc, .req = req, .end = end };
  struct nbds_reactor *self = nbds_reactor_self();
  for (unsigned i = 0; i < n; i++) {
    struct bc_op *op = &r->ops[i];
    memset(op, 0, sizeof *op);
    op->r = r;
    op->w.reactor = self;
    op->w.resume = op_resume;
    op->owner.done = op_wb_done;
    op->next_idle = r->idle;
    r->idle = op;
  }
  pump(r);
}
