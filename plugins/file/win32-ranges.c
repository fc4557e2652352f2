/* Under FILE_FLAG_NO_BUFFERING an unaligned WRITE or ZERO is a
 * read-modify-write of whole sectors (win32-bounce.c), and two things would
 * lose data: two RMWs of one sector that interleave (each writes back the
 * other's old bytes), and any write that lands in a sector between an
 * RMW's read and its write.  So, per file and across every reactor:
 *   - an RMW waits until no write in flight overlaps its sectors;
 *   - a write (WRITE, ZERO, TRIM) waits while an RMW overlapping it is in
 *     flight or waiting ahead of it: first come, first served, so a stream
 *     of writes cannot starve an RMW.
 * Reads need nothing: a read racing a write may see either anyway.
 *
 * Every write under direct I/O takes the lock for a moment to list itself;
 * none is held across I/O.  (The POSIX layer's ranges.c adds a lock-free
 * path for aligned writes; direct I/O on Windows is rare enough that this
 * simple form is what we keep.)  A waiter is resumed on the reactor that
 * submitted it, through nbds_reactor_post(). */
#include "win32.h"

void
w32_ranges_init(struct w32_ranges *s)
{
  InitializeSRWLock(&s->lock);
  s->active = NULL;
  s->waiting = NULL;
  s->waiting_tail = &s->waiting;
}

static bool
conflict(const struct w32_range *a, const struct w32_range *b)
{
  return (a->rmw || b->rmw) && a->start < b->end && b->start < a->end;
}

/* Must r wait for a request listed ahead of it?  With the lock held. */
static bool
blocked(const struct w32_ranges *s, const struct w32_range *r)
{
  for (const struct w32_range *a = s->active; a; a = a->next)
    if (conflict(a, r))
      return true;
  for (const struct w32_range *w = s->waiting; w && w != r; w = w->next)
    if (conflict(w, r))
      return true;
  return false;
}

/* Move every waiter whose turn has come to the active list; return them
 * chained through `ready`.  With the lock held. */
static struct w32_range *
wake(struct w32_ranges *s)
{
  struct w32_range *ready = NULL, **ready_tail = &ready;
  struct w32_range **pw = &s->waiting;
  while (*pw) {
    struct w32_range *w = *pw;
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
  w32_dispatch(arg);
}

/* True: the request goes on now.  False: it waits, and w32_dispatch()
 * runs for it later on the reactor that submitted it. */
bool
w32_ranges_enter(struct w32_io *io)
{
  struct w32_file *f = io->f;
  struct w32_ranges *s = &f->ranges;
  struct nbds_req *req = io->req;
  struct w32_range *r = &io->range;
  uint64_t end = req->offset + req->count;

  switch (req->op) {
  case NBDS_OP_WRITE:
  case NBDS_OP_ZERO:
    /* Unaligned ends are read, modified and written whole.  (A WRITE
     * bounced only for its buffers reads nothing, but is not an RMW.) */
    r->rmw = w32_align_down(f, req->offset) != req->offset ||
             w32_align_down(f, end) != end;
    break;
  case NBDS_OP_TRIM:
    r->rmw = false;
    break;
  default:
    return true;
  }
  r->start = w32_align_down(f, req->offset);
  r->end = w32_align_up(f, end);
  r->reactor = io->reactor;
  r->held = true;

  AcquireSRWLockExclusive(&s->lock);
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
  ReleaseSRWLockExclusive(&s->lock);
  return go;
}

/* The request is done with its range (finished or failed). */
void
w32_ranges_leave(struct w32_io *io)
{
  struct w32_ranges *s = &io->f->ranges;
  struct w32_range *r = &io->range;
  if (!r->held)
    return;
  r->held = false;

  AcquireSRWLockExclusive(&s->lock);
  struct w32_range **pa = &s->active;
  while (*pa != r)
    pa = &(*pa)->next;
  *pa = r->next;
  struct w32_range *ready = s->waiting ? wake(s) : NULL;
  ReleaseSRWLockExclusive(&s->lock);

  /* Outside the lock: posting takes the other reactor's lock. */
  while (ready) {
    struct w32_range *next = ready->ready;
    nbds_reactor_post(ready->reactor, resume,
                      container_of(ready, struct w32_io, range));
    ready = next;
  }
}
