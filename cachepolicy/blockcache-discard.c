/* TRIM and ZERO through the block cache.
 *
 * The range is marked as changing below first, so that no block in it is
 * filled from below until the change has landed (the fill could read the
 * old bytes and keep them).  Then every cached block in the range is
 * dealt with: dropped when the range covers it or when it is clean (below
 * will have the new contents), or, when it is dirty and only partly
 * covered, zeroed in place where covered — its other bytes are newer than
 * below's and must stay.  Then the request goes below as it came.
 *
 * A FAST_ZERO must fail without changing anything when it cannot be fast;
 * a dirty block in its range would have to be written back first, so it
 * fails with ENOTSUP there (clean copies dropped by then change nothing
 * a reader can see).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "blockcache.h"

struct bc_discard {
  struct bc_waiter w;
  struct blockcache *bc;
  struct nbds_req *req;
  struct bc_range range;
  uint64_t start, end;     /* bytes */
  uint64_t cursor;         /* a block number, or a slot when by_slot */
  bool by_slot;            /* the range is wider than the table */
};

static void
finish(struct bc_discard *d, int err)
{
  struct nbds_req *req = d->req;
  free(d);
  nbds_req_complete(req, err);
}

static void
below_done(struct nbds_req *child, int err)
{
  struct bc_discard *d = child->opaque;
  nbds_req_free(child);
  pthread_mutex_lock(&d->bc->lock);
  bc_range_remove(d->bc, &d->range);
  pthread_mutex_unlock(&d->bc->lock);
  finish(d, err);
}

/* The next cached block in the range, from the cursor on. */
static struct bc_slot *
next_cached(struct bc_discard *d)
{
  struct blockcache *bc = d->bc;
  if (d->by_slot) {
    for (; d->cursor < bc->nslots; d->cursor++) {
      struct bc_slot *s = &bc->slots[d->cursor];
      if (s->state != SLOT_FREE && s->blkno >= d->range.first &&
          s->blkno <= d->range.last)
        return s;
    }
    return NULL;
  }
  for (; d->cursor <= d->range.last; d->cursor++) {
    struct bc_slot *s = bc_lookup(bc, d->cursor);
    if (s)
      return s;
  }
  return NULL;
}

static void
walk(struct bc_discard *d)
{
  struct blockcache *bc = d->bc;
  struct bc_slot *s;
  pthread_mutex_lock(&bc->lock);
  while ((s = next_cached(d)) != NULL) {
    if (!bc_idle(s)) {
      bc_wait(&s->waiters, &d->w);
      pthread_mutex_unlock(&bc->lock);
      return;
    }
    if (s->state == SLOT_DIRTY && (d->req->flags & NBDS_F_FAST_ZERO)) {
      bc_range_remove(bc, &d->range);
      pthread_mutex_unlock(&bc->lock);
      finish(d, ENOTSUP);
      return;
    }
    d->cursor++;
    uint64_t bstart = s->blkno << bc->shift;
    uint64_t bend = bstart + bc_block_len(bc, s->blkno);
    uint64_t from = d->start > bstart ? d->start : bstart;
    uint64_t to = d->end < bend ? d->end : bend;
    if (s->state != SLOT_DIRTY || (from == bstart && to == bend)) {
      bc_drop(bc, s);
      continue;
    }
    s->writer = true;
    pthread_mutex_unlock(&bc->lock);
    memset(bc_slot_data(bc, s) + (from - bstart), 0, to - from);
    pthread_mutex_lock(&bc->lock);
    s->writer = false;
    bc_release(bc, s);
  }
  pthread_mutex_unlock(&bc->lock);

  struct nbds_req *child = nbds_req_child(d->req);
  child->done = below_done;
  child->opaque = d;
  nbds_layer_submit(bc->below, child);
}

static void
resume(struct bc_waiter *w)
{
  walk(bc_container(w, struct bc_discard, w));
}

void
bc_discard_submit(struct blockcache *bc, struct nbds_req *req)
{
  if (req->count == 0) {
    nbds_layer_submit(bc->below, req);
    return;
  }
  struct bc_discard *d = malloc(sizeof *d);
  if (!d) {
    nbds_req_complete(req, ENOMEM);
    return;
  }
  *d = (struct bc_discard) {
    .w = { .reactor = nbds_reactor_self(), .resume = resume },
    .bc = bc, .req = req,
    .start = req->offset, .end = req->offset + req->count,
  };
  uint64_t first = d->start >> bc->shift, last = (d->end - 1) >> bc->shift;
  d->by_slot = last - first >= bc->nslots;
  d->cursor = d->by_slot ? 0 : first;
  pthread_mutex_lock(&bc->lock);
  bc_range_add(bc, &d->range, first, last);
  pthread_mutex_unlock(&bc->lock);
  walk(d);
}
