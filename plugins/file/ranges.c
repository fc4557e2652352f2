/* Under O_DIRECT an unaligned WRITE is a read-modify-write of whole blocks
 * (bounce.c), and two things would lose data: two RMWs of one block that
 * interleave (each writes back the other's old bytes), and any write that
 * lands in a block between an RMW's read and its write.  So, for each
 * file and across every reactor:
 *   - an RMW waits until no write in flight overlaps its blocks;
 *   - a write (WRITE, ZERO, TRIM) waits while an RMW overlapping it is in
 *     flight, or waiting ahead of it: first come, first served, so a
 *     stream of writes cannot starve an RMW.
 * Reads need nothing: a read racing a write may see either anyway.
 *
 * Aligned writes, while no RMW is listed, take a lock-free path: they only
 * count themselves in `fast`, and an RMW, which cannot know their ranges,
 * waits for that count to drop to zero.  Each side bumps its own counter,
 * then reads the other's (sequentially consistent, as in Dekker's
 * algorithm), so at least one of them sees the other.  Without direct
 * nothing here runs at all.
 *
 * A waiter is resumed on the reactor that submitted it, through
 * nbds_reactor_post(); the mutex is held only while the lists change. */
#include "file.h"

void
file_ranges_init(struct file_ranges *s)
{
  pthread_mutex_init(&s->lock, NULL);
  atomic_init(&s->rmws, 0);
  atomic_init(&s->fast, 0);
  s->active = NULL;
  s->waiting = NULL;
  s->waiting_tail = &s->waiting;
}

void
file_ranges_destroy(struct file_ranges *s)
{
  pthread_mutex_destroy(&s->lock);
}

static bool
conflict(const struct file_range *a, const struct file_range *b)
{
  return (a->rmw || b->rmw) && a->start < b->end && b->start < a->end;
}

/* Must r wait?  Called with the lock held. */
static bool
blocked(struct file_ranges *s, const struct file_range *r)
{
  if (r->rmw && atomic_load(&s->fast) > 0)
    return true;
  for (const struct file_range *a = s->active; a; a = a->next)
    if (conflict(a, r))
      return true;
  for (const struct file_range *w = s->waiting; w && w != r; w = w->next)
    if (conflict(w, r))
      return true;
  return false;
}

/* Move every waiter whose turn has come to the active list, and return
 * them chained through `ready`.  Called with the lock held. */
static struct file_range *
wake(struct file_ranges *s)
{
  struct file_range *ready = NULL, **ready_tail = &ready;
  struct file_range **pw = &s->waiting;
  while (*pw) {
    struct file_range *w = *pw;
    if (blocked(s, w)) {
      pw = &w->next;
      continue;
    }
    *pw = w->next;
    if (s->waiting_tail == &w->next)
      s->waiting_tail = pw;
    w->next = s->active;
    s->active = w;
    w->ready = NULL;
    *ready_tail = w;
    ready_tail = &w->ready;
  }
  return ready;
}

static void
resume(void *arg)
{
  file_dispatch(arg);
}

/* Outside the lock: posting takes the other reactor's lock and mallocs. */
static void
post_all(struct file_range *ready)
{
  while (ready) {
    struct file_range *next = ready->ready;
    nbds_reactor_post(ready->reactor, resume,
                      container_of(ready, struct file_io, range));
    ready = next;
  }
}

static void
wake_and_post(struct file_ranges *s)
{
  pthread_mutex_lock(&s->lock);
  struct file_range *ready = s->waiting ? wake(s) : NULL;
  pthread_mutex_unlock(&s->lock);
  post_all(ready);
}

static void
fast_leave(struct file_ranges *s)
{
  /* The last of them gone: an RMW may be waiting for exactly this. */
  if (atomic_fetch_sub(&s->fast, 1) == 1 && atomic_load(&s->rmws) > 0)
    wake_and_post(s);
}

static bool
fast_enter(struct file_ranges *s)
{
  atomic_fetch_add(&s->fast, 1);
  if (atomic_load(&s->rmws) == 0)
    return true;
  fast_leave(s);
  return false;
}

/* Take the range a request writes, under direct.  True: go on now.
 * False: the request waits, and file_dispatch() will run for it later, on
 * this reactor. */
bool
file_ranges_enter(struct file_io *io)
{
  struct file_disk *h = io->h;
  struct file_ranges *s = &h->ranges;
  struct nbds_req *req = io->req;
  struct file_range *r = &io->range;
  uint64_t end = req->offset + req->count;

  switch (req->op) {
  case NBDS_OP_WRITE:
  case NBDS_OP_ZERO:
    /* Unaligned ends are read, modified and written whole.  (A WRITE
     * bounced only for its buffers' sake reads nothing.) */
    r->rmw = file_align_down(h, req->offset) != req->offset ||
             file_align_down(h, end) != end;
    break;
  case NBDS_OP_TRIM:
    r->rmw = false;
    break;
  default:
    return true;
  }
  r->start = file_align_down(h, req->offset);
  r->end = file_align_up(h, end);

  if (!r->rmw && fast_enter(s)) {
    r->held = RANGE_FAST;
    return true;
  }

  r->held = RANGE_LISTED;
  r->reactor = nbds_reactor_self();
  pthread_mutex_lock(&s->lock);
  if (r->rmw)
    atomic_fetch_add(&s->rmws, 1);
  bool go = !blocked(s, r);
  if (go) {
    r->next = s->active;
    s->active = r;
  }
  else {
    r->next = NULL;
    *s->waiting_tail = r;
    s->waiting_tail = &r->next;
  }
  pthread_mutex_unlock(&s->lock);
  return go;
}

/* The request is done with its range (it has finished or failed). */
void
file_ranges_leave(struct file_io *io)
{
  struct file_ranges *s = &io->h->ranges;
  struct file_range *r = &io->range;

  switch (r->held) {
  case RANGE_NONE:
    return;
  case RANGE_FAST:
    fast_leave(s);
    break;
  case RANGE_LISTED: {
    pthread_mutex_lock(&s->lock);
    struct file_range **pa = &s->active;
    while (*pa != r)
      pa = &(*pa)->next;
    *pa = r->next;
    if (r->rmw)
      atomic_fetch_sub(&s->rmws, 1);
    struct file_range *ready = s->waiting ? wake(s) : NULL;
    pthread_mutex_unlock(&s->lock);
    post_all(ready);
    break;
  }
  }
  r->held = RANGE_NONE;
}
