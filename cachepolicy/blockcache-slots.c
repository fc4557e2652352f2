/* The block cache's slot table: a hash from block number to slot, an LRU
 * list of clean blocks and one of dirty blocks, eviction, write-back, and
 * the waiting that ties them together.
 *
 * Eviction takes the least recently used clean block that nobody holds.
 * When every slot is dirty or held, it writes the least recently used
 * dirty one back and the requester waits for that: a dirty block is never
 * dropped unwritten (nbdkit 1.32's cache filter did drop them), and a
 * requester never grows the cache or fails for lack of room.
 *
 * Everything here but bc_submit_writeback runs with bc->lock held.
 */
#include <stdlib.h>

#include "blockcache.h"

uint32_t
bc_block_len(const struct blockcache *bc, uint64_t blkno)
{
  uint64_t start = blkno << bc->shift;
  uint64_t left = bc->size - start;
  return left < bc->bs ? (uint32_t) left : bc->bs;
}

unsigned char *
bc_slot_data(const struct blockcache *bc, const struct bc_slot *s)
{
  return bc->data + (size_t) (s - bc->slots) * bc->bs;
}

static struct bc_slot **
bucket(struct blockcache *bc, uint64_t blkno)
{
  /* Fibonacci hashing: strided access patterns still spread out. */
  uint64_t h = (blkno * UINT64_C(0x9E3779B97F4A7C15)) >> 32;
  return &bc->buckets[h & bc->mask];
}

struct bc_slot *
bc_lookup(struct blockcache *bc, uint64_t blkno)
{
  struct bc_slot *s = *bucket(bc, blkno);
  while (s && s->blkno != blkno)
    s = s->hnext;
  return s;
}

static void
unhash(struct blockcache *bc, struct bc_slot *s)
{
  struct bc_slot **p = bucket(bc, s->blkno);
  while (*p != s)
    p = &(*p)->hnext;
  *p = s->hnext;
}

bool
bc_idle(const struct bc_slot *s)
{
  return !s->writer && s->readers == 0;
}

/* The LRU list a state lives on, if any. */
static struct bc_list *
list_of(struct blockcache *bc, enum bc_state state)
{
  if (state == SLOT_CLEAN)
    return &bc->clean;
  if (state == SLOT_DIRTY)
    return &bc->dirty;
  return NULL;
}

static void
list_remove(struct bc_list *l, struct bc_slot *s)
{
  if (s->prev)
    s->prev->next = s->next;
  else
    l->head = s->next;
  if (s->next)
    s->next->prev = s->prev;
  else
    l->tail = s->prev;
}

static void
list_push(struct bc_list *l, struct bc_slot *s)
{
  s->prev = NULL;
  s->next = l->head;
  if (l->head)
    l->head->prev = s;
  else
    l->tail = s;
  l->head = s;
}

void
bc_touch(struct blockcache *bc, struct bc_slot *s)
{
  struct bc_list *l = list_of(bc, s->state);
  if (l && l->head != s) {
    list_remove(l, s);
    list_push(l, s);
  }
}

void
bc_set_state(struct blockcache *bc, struct bc_slot *s, enum bc_state state)
{
  if (s->state == state)
    return;
  struct bc_list *from = list_of(bc, s->state), *to = list_of(bc, state);
  if (from)
    list_remove(from, s);
  if (s->state == SLOT_DIRTY)
    atomic_fetch_sub(&bc->ndirty, 1);
  if (state == SLOT_DIRTY)
    atomic_fetch_add(&bc->ndirty, 1);
  s->state = state;
  if (to)
    list_push(to, s);
}

/* The caller has just given up a hold.  Waiters need the block idle
 * (readers that queued did so behind a writer or another waiter). */
void
bc_release(struct blockcache *bc, struct bc_slot *s)
{
  if (bc_idle(s)) {
    bc_wake(&s->waiters);
    bc_wake(&bc->slot_waiters);
  }
}

/* Forget a block (its fill failed, or a TRIM made the copy useless).  The
 * caller holds it as writer or not at all. */
void
bc_drop(struct blockcache *bc, struct bc_slot *s)
{
  unhash(bc, s);
  bc_set_state(bc, s, SLOT_FREE);
  atomic_fetch_sub(&bc->bytes_cached, bc_block_len(bc, s->blkno));
  s->writer = false;
  s->next = bc->free_slots;
  bc->free_slots = s;
  bc_wake(&s->waiters);
  bc_wake(&bc->slot_waiters);
}

static struct bc_slot *
evictable(struct bc_list *l)
{
  for (struct bc_slot *s = l->tail; s; s = s->prev)
    if (bc_idle(s))
      return s;
  return NULL;
}

/* A slot for blkno, returned held as writer in state FILLING.  NULL when
 * the caller must wait: then either *wb is a dirty slot whose write-back
 * the caller submits once it has dropped the lock (owner hears when it
 * ends), or w is queued until some slot is released. */
struct bc_slot *
bc_take_slot(struct blockcache *bc, uint64_t blkno, struct bc_waiter *w,
             struct bc_wb_owner *owner, struct bc_slot **wb)
{
  struct bc_slot *s = bc->free_slots;
  *wb = NULL;
  if (s)
    bc->free_slots = s->next;
  else if ((s = evictable(&bc->clean)) != NULL) {
    unhash(bc, s);
    list_remove(&bc->clean, s);
    atomic_fetch_sub(&bc->bytes_cached, bc_block_len(bc, s->blkno));
    atomic_fetch_add(&bc->evictions, 1);
  } else {
    s = evictable(&bc->dirty);
    if (s) {
      bc_start_writeback(bc, s, owner);
      *wb = s;
    } else
      bc_wait(&bc->slot_waiters, w);
    return NULL;
  }
  s->blkno = blkno;
  s->state = SLOT_FILLING;
  s->writer = true;
  struct bc_slot **b = bucket(bc, blkno);
  s->hnext = *b;
  *b = s;
  atomic_fetch_add(&bc->bytes_cached, bc_block_len(bc, blkno));
  return s;
}

/* Writing back holds the block as a reader: reads go on, writes wait. */
void
bc_start_writeback(struct blockcache *bc, struct bc_slot *s,
                   struct bc_wb_owner *owner)
{
  (void) bc;
  s->readers++;
  s->writing_back = true;
  s->wb_owner = owner;
}

static void
wb_done(struct nbds_req *req, int err)
{
  struct blockcache *bc = req->opaque;
  struct bc_slot *s = bc_container(req, struct bc_slot, wb);
  pthread_mutex_lock(&bc->lock);
  struct bc_wb_owner *owner = s->wb_owner;
  s->wb_owner = NULL;
  s->writing_back = false;
  s->readers--;
  /* On failure the block stays dirty: its data is nowhere else. */
  if (!err) {
    bc_set_state(bc, s, SLOT_CLEAN);
    atomic_fetch_add(&bc->writebacks, 1);
  }
  bc_release(bc, s);
  pthread_mutex_unlock(&bc->lock);
  if (owner)
    owner->done(owner, err);
}

/* Without the lock, after bc_start_writeback. */
void
bc_submit_writeback(struct blockcache *bc, struct bc_slot *s)
{
  uint32_t len = bc_block_len(bc, s->blkno);
  s->wb_iov.iov_base = bc_slot_data(bc, s);
  s->wb_iov.iov_len = len;
  s->wb = (struct nbds_req) {
    .op = NBDS_OP_WRITE, .offset = s->blkno << bc->shift, .count = len,
    .iov = &s->wb_iov, .iovcnt = 1, .done = wb_done, .opaque = bc,
  };
  nbds_layer_submit(bc->below, &s->wb);
}

/* The lowest and highest dirty blocks in [first, last].  A range wider
 * than the table is cheaper to answer by walking the table. */
bool
bc_dirty_between(struct blockcache *bc, uint64_t first, uint64_t last,
                 uint64_t *lo, uint64_t *hi)
{
  bool found = false;
  if (last - first >= bc->nslots) {
    for (size_t i = 0; i < bc->nslots; i++) {
      struct bc_slot *s = &bc->slots[i];
      if (s->state != SLOT_DIRTY || s->blkno < first || s->blkno > last)
        continue;
      if (!found || s->blkno < *lo)
        *lo = s->blkno;
      if (!found || s->blkno > *hi)
        *hi = s->blkno;
      found = true;
    }
    return found;
  }
  for (uint64_t b = first;; b++) {
    struct bc_slot *s = bc_lookup(bc, b);
    if (s && s->state == SLOT_DIRTY) {
      if (!found)
        *lo = b;
      *hi = b;
      found = true;
    }
    if (b == last)
      return found;
  }
}

void
bc_wait(struct bc_waiter **list, struct bc_waiter *w)
{
  w->next = *list;
  *list = w;
}

static void
run_waiter(void *arg)
{
  struct bc_waiter *w = arg;
  w->resume(w);
}

/* Resume w on its own reactor, never inline: the waker may be another
 * reactor's thread, and inline resumption could recurse without bound. */
void
bc_post(struct bc_waiter *w)
{
  nbds_reactor_post(w->reactor, run_waiter, w);
}

/* Post every waiter, oldest first. */
void
bc_wake(struct bc_waiter **list)
{
  struct bc_waiter *w = *list, *rev = NULL;
  *list = NULL;
  while (w) {
    struct bc_waiter *next = w->next;
    w->next = rev;
    rev = w;
    w = next;
  }
  while (rev) {
    struct bc_waiter *next = rev->next;
    bc_post(rev);
    rev = next;
  }
}

void
bc_range_add(struct blockcache *bc, struct bc_range *r, uint64_t first,
             uint64_t last)
{
  r->first = first;
  r->last = last;
  r->waiters = NULL;
  r->prev = NULL;
  r->next = bc->ranges;
  if (bc->ranges)
    bc->ranges->prev = r;
  bc->ranges = r;
}

void
bc_range_remove(struct blockcache *bc, struct bc_range *r)
{
  if (r->prev)
    r->prev->next = r->next;
  else
    bc->ranges = r->next;
  if (r->next)
    r->next->prev = r->prev;
  bc_wake(&r->waiters);
}

struct bc_range *
bc_range_find(struct blockcache *bc, uint64_t blkno)
{
  for (struct bc_range *r = bc->ranges; r; r = r->next)
    if (blkno >= r->first && blkno <= r->last)
      return r;
  return NULL;
}
