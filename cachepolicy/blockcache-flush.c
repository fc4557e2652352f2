/* FLUSH through the block cache: write every dirty block back — the cache
 * is one for all connections, so this covers writes from every one of
 * them — then flush below, and complete after both.
 *
 * One walk over the slot table.  A dirty block that nobody holds is
 * written back at once, in parallel with the others.  One being written
 * or already being written back is waited for and looked at again: it
 * may still be dirty (that write-back failed) or be dirty again.  A block
 * that becomes dirty after the walk has passed it holds a write that
 * completed after the FLUSH arrived, which the FLUSH need not cover.
 */
#include <errno.h>
#include <stdlib.h>

#include "blockcache.h"

#define BATCH 16

struct bc_flush {
  struct bc_waiter w;
  struct bc_wb_owner owner;
  struct blockcache *bc;
  struct nbds_req *req;
  size_t cursor;      /* the next slot to look at */
  unsigned pending;   /* write-backs in flight, plus one for the walk */
  int err;            /* the first write-back error */
};

static void
finish(struct bc_flush *f, int err)
{
  struct nbds_req *req = f->req;
  if (f->err)
    err = f->err;
  free(f);
  nbds_req_complete(req, err);
}

static void
below_done(struct nbds_req *child, int err)
{
  struct bc_flush *f = child->opaque;
  nbds_req_free(child);
  finish(f, err);
}

static void
put(struct bc_flush *f)
{
  if (--f->pending > 0)
    return;
  struct nbds_layer *below = f->bc->below;
  if (!below->caps.can_flush) {
    finish(f, 0);
    return;
  }
  /* Even after a failed write-back: what did reach below is made
   * durable, and the FLUSH still reports the failure. */
  struct nbds_req *child = nbds_req_child(f->req);
  child->done = below_done;
  child->opaque = f;
  nbds_layer_submit(below, child);
}

static void
wb_done(struct bc_wb_owner *o, int err)
{
  struct bc_flush *f = bc_container(o, struct bc_flush, owner);
  if (err && !f->err)
    f->err = err;
  put(f);
}

static void
walk(struct bc_flush *f)
{
  struct blockcache *bc = f->bc;
  for (;;) {
    struct bc_slot *batch[BATCH];
    unsigned n = 0;
    bool wait = false;
    pthread_mutex_lock(&bc->lock);
    for (; f->cursor < bc->nslots && n < BATCH; f->cursor++) {
      struct bc_slot *s = &bc->slots[f->cursor];
      if (s->state != SLOT_DIRTY)
        continue;
      if (s->writer || s->writing_back) {
        bc_wait(&s->waiters, &f->w);
        wait = true;
        break;
      }
      bc_start_writeback(bc, s, &f->owner);
      f->pending++;
      batch[n++] = s;
    }
    bool walked = f->cursor == bc->nslots;
    pthread_mutex_unlock(&bc->lock);
    /* Our waiter runs on this reactor, so not before we return. */
    for (unsigned i = 0; i < n; i++)
      bc_submit_writeback(bc, batch[i]);
    if (wait)
      return;
    if (walked) {
      put(f);
      return;
    }
  }
}

static void
resume(struct bc_waiter *w)
{
  walk(bc_container(w, struct bc_flush, w));
}

void
bc_flush_submit(struct blockcache *bc, struct nbds_req *req)
{
  struct bc_flush *f = malloc(sizeof *f);
  if (!f) {
    nbds_req_complete(req, ENOMEM);
    return;
  }
  *f = (struct bc_flush) {
    .w = { .reactor = nbds_reactor_self(), .resume = resume },
    .owner = { .done = wb_done },
    .bc = bc, .req = req, .pending = 1,
  };
  walk(f);
}
