/* The engine: executes a decoded plan as libnbd asynchronous requests.
 *
 * A job is split into chunks (one NBD request each) at the server's
 * maximum.  libnbd completion callbacks only record the result and put the
 * job on the backend's run list: they run with the handle lock held, so
 * every follow-up (the next chunk, a trailing flush, the flush of a write
 * cache switch) is issued later, from dv_run().  A job completes once,
 * after all its requests have replied, with the first error seen.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#include "engine.h"

_Static_assert(DV_NBD_FUA == LIBNBD_CMD_FLAG_FUA, "FUA flag");
_Static_assert(DV_NBD_NO_HOLE == LIBNBD_CMD_FLAG_NO_HOLE, "NO_HOLE flag");

/* One NBD request of a job. */
struct dv_chunk {
  struct dv_job *job;
  void *bounce;                /* when the data spans guest segments */
  uint64_t doff;               /* guest data offset (read/write) */
  uint64_t off;                /* export offset */
  size_t len;
};

static void
list_push(struct dv_list *l, struct dv_job *j)
{
  j->next = NULL;
  if (l->tail)
    l->tail->next = j;
  else
    l->head = j;
  l->tail = j;
}

static struct dv_job *
list_pop(struct dv_list *l)
{
  struct dv_job *j = l->head;
  if (j) {
    l->head = j->next;
    if (!l->head)
      l->tail = NULL;
  }
  return j;
}

/* Append all of src to dst. */
static void
list_splice(struct dv_list *dst, struct dv_list *src)
{
  if (!src->head)
    return;
  if (dst->tail)
    dst->tail->next = src->head;
  else
    dst->head = src->head;
  dst->tail = src->tail;
  src->head = src->tail = NULL;
}

static void
list_remove(struct dv_list *l, struct dv_job *j)
{
  struct dv_job **pp = &l->head, *prev = NULL;
  for (; *pp; prev = *pp, pp = &(*pp)->next)
    if (*pp == j) {
      *pp = j->next;
      if (l->tail == j)
        l->tail = prev;
      return;
    }
}

static void
make_runnable(struct dv_job *j)
{
  if (!j->queued) {
    j->queued = true;
    list_push(&j->dev->b->run, j);
  }
}

static void
job_fail(struct dv_job *j, int err, uint64_t off)
{
  if (j->err == 0) {
    j->err = err ? err : EIO;
    j->fail_off = off;
  }
}

void
dv_dev_update_wce(devemu_dev *d)
{
  d->g.wce = d->wce && d->switching_off == 0;
}

/* ---- libnbd callbacks: record only, never call libnbd ---- */

static void
chunk_free(struct dv_chunk *ch)
{
  free(ch->bounce);
  free(ch);
}

static int
chunk_done(void *opaque, int *error)
{
  struct dv_chunk *ch = opaque;
  struct dv_job *j = ch->job;

  if (*error)
    job_fail(j, *error, ch->off);
  else if (ch->bounce && j->plan.op == DV_OP_READ)
    dv_iov_from_buf(j->iov, j->niov, ch->doff, ch->bounce, ch->len);
  chunk_free(ch);
  j->inflight--;
  j->replies++;
  j->dev->b->nbd_inflight--;
  make_runnable(j);
  return 1;                    /* retire the command */
}

/* ---- issuing ---- */

/* A pointer to [doff, doff+len) of the guest data if it lies in one
 * segment (zero copy), else NULL. */
static void *
direct_buffer(const struct dv_job *j, uint64_t doff, size_t len)
{
  for (unsigned i = 0; i < j->niov; i++) {
    if (doff < j->iov[i].len)
      return len <= j->iov[i].len - doff
             ? (uint8_t *) j->iov[i].base + doff : NULL;
    doff -= j->iov[i].len;
  }
  return NULL;
}

static bool
job_has_more(const struct dv_job *j)
{
  if (j->plan.op == DV_OP_FLUSH)
    return !j->flush_issued;
  return j->ri < j->plan.nranges;
}

/* Send one NBD request: the next chunk, or the job's flush. */
static void
issue(struct dv_job *j, bool trailing_flush)
{
  devemu_backend *b = j->dev->b;
  const struct dv_geom *g = &j->dev->g;
  struct dv_chunk *ch = calloc(1, sizeof *ch);
  enum dv_op op = trailing_flush ? DV_OP_FLUSH : j->plan.op;
  void *buf = NULL;
  int64_t cookie;

  if (!ch) {
    job_fail(j, ENOMEM, 0);
    return;
  }
  ch->job = j;
  if (op == DV_OP_FLUSH)
    j->flush_issued = true;
  else {
    const struct dv_range *r = &j->plan.ranges[j->ri];
    uint64_t max = op == DV_OP_READ || op == DV_OP_WRITE ? g->max_rw
                                                         : g->max_zt;
    ch->off = r->off + j->roff;
    ch->len = r->len - j->roff < max ? r->len - j->roff : max;
    ch->doff = j->doff;
    j->roff += ch->len;
    if (j->roff == r->len) {
      j->ri++;
      j->roff = 0;
    }
    if (op == DV_OP_READ || op == DV_OP_WRITE) {
      j->doff += ch->len;
      buf = direct_buffer(j, ch->doff, ch->len);
      if (!buf) {
        buf = ch->bounce = malloc(ch->len);
        if (!buf) {
          job_fail(j, ENOMEM, ch->off);
          free(ch);
          return;
        }
        if (op == DV_OP_WRITE)
          dv_iov_to_buf(j->iov, j->niov, ch->doff, buf, ch->len);
      }
    }
  }

  nbd_completion_callback cb = { .callback = chunk_done, .user_data = ch };
  uint32_t flags = trailing_flush ? 0 : j->plan.flags;
  unsigned replies = j->replies;
  j->inflight++;
  b->nbd_inflight++;
  switch (op) {
  case DV_OP_READ:
    cookie = nbd_aio_pread(b->nbd, buf, ch->len, ch->off, cb, 0);
    break;
  case DV_OP_WRITE:
    cookie = nbd_aio_pwrite(b->nbd, buf, ch->len, ch->off, cb, flags);
    break;
  case DV_OP_TRIM:
    cookie = nbd_aio_trim(b->nbd, ch->len, ch->off, cb, 0);
    break;
  case DV_OP_ZERO:
    cookie = nbd_aio_zero(b->nbd, ch->len, ch->off, cb, flags);
    break;
  default:
    cookie = nbd_aio_flush(b->nbd, cb, 0);
    break;
  }
  /* A synchronous failure: libnbd does not call the callback (we also
   * cope if it did, by counting replies, so nothing completes twice). */
  if (cookie == -1 && j->replies == replies) {
    int err = nbd_get_errno();
    job_fail(j, err, ch->off);
    chunk_free(ch);
    j->inflight--;
    b->nbd_inflight--;
  }
}

/* ---- finishing ---- */

static void
job_finish(struct dv_job *j)
{
  devemu_dev *d = j->dev;
  devemu_backend *b = d->b;
  devemu_completion c = { .tag = j->tag, .nbd_errno = j->err };

  switch (d->g.kind) {
  case DEVEMU_VIRTIO_BLK:
    dv_virtio_finish(&j->plan, j->err, j->fail_off, &c);
    break;
  case DEVEMU_NVME:
    dv_nvme_finish(&j->plan, j->err, j->fail_off, &c);
    break;
  case DEVEMU_ATA:
    dv_ata_finish(&d->g, &j->plan, j->err, j->fail_off, &c);
    break;
  }
  /* The switch happens even if its flush failed: writes from now on are
   * durable on their own, which is the safe side. */
  if (j->plan.wce == DV_WCE_OFF) {
    d->switching_off--;
    if (d->wce_gen == j->wce_gen)
      d->wce = false;
    dv_dev_update_wce(d);
  }
  if (j->plan.set_ata_mult)
    d->g.ata_mult = j->plan.ata_mult;
  if (j->plan.volatile_write && --d->volatile_writes == 0) {
    for (struct dv_job *w = d->drain.head; w; w = w->next)
      w->phase = PH_ISSUE;
    list_splice(&b->run, &d->drain);
  }
  /* Only if a callback ran inside the libnbd call that issued its last
   * request can a finishing job still be on the run list. */
  if (j->queued)
    list_remove(&b->run, j);
  d->pending--;
  b->pending--;
  bool internal = j->internal;
  free(j->iov);
  free(j);
  if (!internal && d->complete)
    d->complete(d->opaque, &c);
}

/* Move a job on as far as it can go now. */
static void
job_step(struct dv_job *j)
{
  devemu_dev *d = j->dev;
  devemu_backend *b = d->b;

  if (j->phase == PH_DRAIN) {
    if (d->volatile_writes > 0) {
      j->queued = true;
      list_push(&d->drain, j);
      return;
    }
    j->phase = PH_ISSUE;
  }
  if (j->phase == PH_ISSUE) {
    /* After an error nothing more is sent; the rest is waited for. */
    while (j->err == 0 && job_has_more(j) &&
           b->nbd_inflight < DV_MAX_NBD_INFLIGHT)
      issue(j, false);
    if (j->err == 0 && job_has_more(j)) {
      j->queued = true;
      list_push(&b->starved, j);
      return;
    }
    j->phase = PH_WAIT;
  }
  if (j->inflight > 0)
    return;
  /* Emulated FUA: the write completes only once a flush after it has. */
  if (j->phase == PH_WAIT && j->err == 0 && j->plan.flush_after) {
    j->phase = PH_FLUSH;
    issue(j, true);
    if (j->inflight > 0)
      return;
  }
  job_finish(j);
}

void
dv_run(devemu_backend *b)
{
  struct dv_job *j;

  if (b->running)
    return;
  b->running = true;
  /* Jobs that waited for a request slot go first, in order. */
  struct dv_list starved = b->starved;
  b->starved.head = b->starved.tail = NULL;
  if (starved.head) {
    starved.tail->next = b->run.head;
    if (!b->run.head)
      b->run.tail = starved.tail;
    b->run.head = starved.head;
  }
  while ((j = list_pop(&b->run)) != NULL) {
    j->queued = false;
    job_step(j);
  }
  b->running = false;
}

int
dv_engine_start(devemu_dev *d, const struct dv_plan *p, const devemu_cmd *c,
                bool internal)
{
  struct dv_job *j = calloc(1, sizeof *j + p->nranges * sizeof *j->ranges);

  if (!j)
    return -1;
  if ((p->op == DV_OP_READ || p->op == DV_OP_WRITE) && c->niov > 0) {
    j->iov = malloc(c->niov * sizeof *j->iov);
    if (!j->iov) {
      free(j);
      return -1;
    }
    memcpy(j->iov, c->iov, c->niov * sizeof *j->iov);
    j->niov = c->niov;
  }
  j->dev = d;
  j->tag = c->tag;
  j->internal = internal;
  j->plan = *p;
  memcpy(j->ranges, p->ranges, p->nranges * sizeof *j->ranges);
  j->plan.ranges = j->ranges;
  j->phase = p->drain_first ? PH_DRAIN : PH_ISSUE;

  if (p->wce == DV_WCE_ON) {
    d->wce = true;
    d->wce_gen++;
  }
  else if (p->wce == DV_WCE_OFF) {
    d->switching_off++;
    j->wce_gen = ++d->wce_gen;
  }
  dv_dev_update_wce(d);
  if (p->volatile_write)
    d->volatile_writes++;
  d->pending++;
  d->b->pending++;

  make_runnable(j);
  dv_run(d->b);
  return 0;
}
