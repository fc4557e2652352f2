/* A reactor: a libev loop, an io_uring ring whose completions wake the loop
 * through an eventfd, and a mailbox for work from other threads.
 *
 * SQEs are not submitted one by one: nbds_uring_sqe() only fills them, and
 * an ev_prepare watcher submits the whole batch once per loop iteration,
 * just before the loop would sleep. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "reactor.h"

#define RING_ENTRIES 256

struct post {
  void (*fn)(void *);
  void *arg;
  struct post *next;
};

struct nbds_reactor {
  int index;
  struct ev_loop *loop;
  pthread_t thread;
  bool has_thread;

  bool has_ring;
  struct io_uring ring;
  unsigned unsubmitted;
  int ring_efd;
  ev_io ring_watcher;
  ev_prepare submit_watcher;

  /* Busy polling (see poll_cb). */
  ev_tstamp poll_window;     /* --busy-poll, seconds; 0: never */
  ev_tstamp poll_now;        /* the current window, adapted */
  ev_tstamp active_at;       /* when an iteration last handled an event */
  ev_check activity_watcher;
  ev_idle poll_watcher;

  ev_async mailbox_watcher;
  pthread_mutex_t lock;
  struct post *posts, **posts_tail;
  struct nbds_work *done, **done_tail;
};

static __thread struct nbds_reactor *self;

struct nbds_reactor *
nbds_reactor_self(void)
{
  return self;
}

struct ev_loop *
nbds_reactor_loop(struct nbds_reactor *r)
{
  return r->loop;
}

int
reactor_index(struct nbds_reactor *r)
{
  return r->index;
}

bool
nbds_uring_available(void)
{
  return self && self->has_ring;
}

static void
ring_submit(struct nbds_reactor *r)
{
  if (r->unsubmitted == 0)
    return;
  int n = io_uring_submit(&r->ring);
  if (n >= 0)
    r->unsubmitted -= (unsigned) n > r->unsubmitted ? r->unsubmitted : (unsigned) n;
  else if (n != -EAGAIN && n != -EBUSY && n != -EINTR)
    nbds_log_error("io_uring_submit: %s", strerror(-n));
}

static void
ring_reap(struct nbds_reactor *r)
{
  struct io_uring_cqe *cqe;
  unsigned head;
  /* Copy out before calling back: a callback may submit (and the ring may
   * wrap) while we walk. */
  for (;;) {
    struct {
      struct nbds_uring_op *op;
      int res;
    } batch[64];
    unsigned n = 0;
    io_uring_for_each_cqe(&r->ring, head, cqe) {
      batch[n].op = io_uring_cqe_get_data(cqe);
      batch[n].res = cqe->res;
      if (++n == 64)
        break;
    }
    if (n == 0)
      break;
    io_uring_cq_advance(&r->ring, n);
    for (unsigned i = 0; i < n; i++)
      batch[i].op->complete(batch[i].op, batch[i].res);
  }
}

struct io_uring_sqe *
nbds_uring_sqe(struct nbds_uring_op *op)
{
  struct nbds_reactor *r = self;
  struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
  while (!sqe) {
    /* Full: submit what we have to make room. */
    io_uring_submit(&r->ring);
    r->unsubmitted = 0;
    sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) {
      /* The kernel has not consumed yet (CQ pressure): reap and retry. */
      ring_reap(r);
    }
  }
  io_uring_sqe_set_data(sqe, op);
  r->unsubmitted++;
  return sqe;
}

static void
ring_ready_cb(struct ev_loop *loop, ev_io *w, int revents)
{
  (void) loop;
  (void) revents;
  struct nbds_reactor *r = w->data;
  uint64_t count;
  if (read(r->ring_efd, &count, sizeof count) == -1 && errno != EAGAIN)
    nbds_log_error("eventfd read: %s", strerror(errno));
  ring_reap(r);
}

static void
submit_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
  (void) loop;
  (void) revents;
  struct nbds_reactor *r = w->data;
  ring_submit(r);
  /* Completions that arrived during submission (cached buffered reads
   * complete inline) are picked up now rather than after a wake-up.  The
   * eventfd they signalled stays set: loops that run the reactor until a
   * request completes (ev_run ONCE) count on it not to sleep. */
  ring_reap(r);
  ring_submit(r);
}

/* Busy polling, as QEMU's adaptive polling of its I/O threads: after a
 * loop iteration that handled an event, the loop keeps polling without
 * sleeping (an active idle watcher makes libev poll with a zero timeout)
 * for up to poll_now with nothing to do.  A client at queue depth 1 sends
 * its next request, and a write comes back from io_uring's workers, a few
 * tens of microseconds later: sleeping in between costs a wake-up each
 * time, which on a VM is most of a request's latency.
 *
 * poll_now adapts to the gaps between events, as QEMU's does: it grows
 * (from 4 us, doubling) while gaps are longer than it but within the
 * --busy-poll bound, and is halved by a gap beyond the bound, so events
 * that come far apart cost no polling.  While polling the reactor yields
 * the CPU to anything else runnable there (the io_uring workers doing our
 * writes, the client on a small machine). */
#define POLL_START 4e-6

static void
poll_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
  (void) revents;
  struct nbds_reactor *r = w->data;
  if (ev_time() - r->active_at > r->poll_now) {
    ev_ref(loop);
    ev_idle_stop(loop, w);
  } else
    sched_yield();
}

static void
poll_adapt(struct nbds_reactor *r, ev_tstamp gap)
{
  if (gap <= r->poll_now)
    return;  /* polling caught it */
  if (gap > r->poll_window)
    r->poll_now = r->poll_now / 2 < POLL_START ? 0 : r->poll_now / 2;
  else if (r->poll_now == 0)
    r->poll_now = POLL_START;
  else
    r->poll_now = 2 * r->poll_now < r->poll_window ? 2 * r->poll_now
                                                   : r->poll_window;
}

/* After each poll: did this iteration get anything besides the poll
 * watcher?  (libev runs check watchers first of what is pending, and
 * counts this one as no longer pending.) */
static void
activity_cb(struct ev_loop *loop, ev_check *w, int revents)
{
  (void) revents;
  struct nbds_reactor *r = w->data;
  unsigned ours = ev_is_pending(&r->poll_watcher) ? 1 : 0;
  if (ev_pending_count(loop) <= ours)
    return;
  ev_tstamp now = ev_now(loop);
  poll_adapt(r, now - r->active_at);
  r->active_at = now;
  if (r->poll_now > 0 && !ev_is_active(&r->poll_watcher)) {
    ev_idle_start(loop, &r->poll_watcher);
    ev_unref(loop);  /* polling does not keep a loop alive */
  }
}

void
reactor_set_poll(struct nbds_reactor *r, unsigned usec)
{
  r->poll_window = usec * 1e-6;
  if (usec == 0 || ev_is_active(&r->activity_watcher))
    return;
  ev_idle_init(&r->poll_watcher, poll_cb);
  r->poll_watcher.data = r;
  ev_check_init(&r->activity_watcher, activity_cb);
  r->activity_watcher.data = r;
  ev_check_start(r->loop, &r->activity_watcher);
  ev_unref(r->loop);
}

static void
mailbox_cb(struct ev_loop *loop, ev_async *w, int revents)
{
  (void) loop;
  (void) revents;
  struct nbds_reactor *r = w->data;
  pthread_mutex_lock(&r->lock);
  struct post *posts = r->posts;
  struct nbds_work *done = r->done;
  r->posts = NULL;
  r->posts_tail = &r->posts;
  r->done = NULL;
  r->done_tail = &r->done;
  pthread_mutex_unlock(&r->lock);

  while (done) {
    struct nbds_work *next = done->next;
    done->done(done);
    done = next;
  }
  while (posts) {
    struct post *next = posts->next;
    posts->fn(posts->arg);
    free(posts);
    posts = next;
  }
}

void
nbds_reactor_post(struct nbds_reactor *r, void (*fn)(void *), void *arg)
{
  struct post *p = malloc(sizeof *p);
  if (!p)
    abort();
  p->fn = fn;
  p->arg = arg;
  p->next = NULL;
  pthread_mutex_lock(&r->lock);
  *r->posts_tail = p;
  r->posts_tail = &p->next;
  pthread_mutex_unlock(&r->lock);
  ev_async_send(r->loop, &r->mailbox_watcher);
}

void
reactor_work_done(struct nbds_work *w)
{
  struct nbds_reactor *r = w->reactor;
  w->next = NULL;
  pthread_mutex_lock(&r->lock);
  *r->done_tail = w;
  r->done_tail = &w->next;
  pthread_mutex_unlock(&r->lock);
  ev_async_send(r->loop, &r->mailbox_watcher);
}

bool
reactor_uring_works(void)
{
  struct io_uring ring;
  if (io_uring_queue_init(4, &ring, 0) < 0)
    return false;
  io_uring_queue_exit(&ring);
  return true;
}

struct nbds_reactor *
reactor_create(int index, bool want_uring)
{
  struct nbds_reactor *r = calloc(1, sizeof *r);
  if (!r)
    return NULL;
  r->index = index;
  /* Not ev_default_loop() even for reactor 0: the default loop reaps
   * every child process on SIGCHLD, which breaks nbdkit plugins that run
   * and wait for their own (sh, eval).  Signal watchers work in any one
   * loop. */
  r->loop = ev_loop_new(EVFLAG_AUTO);
  if (!r->loop) {
    free(r);
    return NULL;
  }
  pthread_mutex_init(&r->lock, NULL);
  r->posts_tail = &r->posts;
  r->done_tail = &r->done;
  ev_async_init(&r->mailbox_watcher, mailbox_cb);
  r->mailbox_watcher.data = r;
  ev_async_start(r->loop, &r->mailbox_watcher);
  /* The mailbox must not keep a loop alive on its own. */
  ev_unref(r->loop);

  if (want_uring) {
    int err = io_uring_queue_init(RING_ENTRIES, &r->ring, 0);
    if (err < 0) {
      nbds_log_error("io_uring: %s", strerror(-err));
      goto fail;
    }
    r->ring_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->ring_efd == -1 ||
        io_uring_register_eventfd(&r->ring, r->ring_efd) < 0) {
      nbds_log_error("io_uring eventfd: %s", strerror(errno));
      io_uring_queue_exit(&r->ring);
      goto fail;
    }
    r->has_ring = true;
    ev_io_init(&r->ring_watcher, ring_ready_cb, r->ring_efd, EV_READ);
    r->ring_watcher.data = r;
    ev_io_start(r->loop, &r->ring_watcher);
    ev_unref(r->loop);
    ev_prepare_init(&r->submit_watcher, submit_cb);
    r->submit_watcher.data = r;
    ev_prepare_start(r->loop, &r->submit_watcher);
    ev_unref(r->loop);
  }
  if (index == 0)
    self = r;
  return r;

fail:
  ev_loop_destroy(r->loop);
  free(r);
  return NULL;
}

/* Worker reactors run until reactor_stop(); a keep-alive watcher holds the
 * loop open while they have nothing to do. */
static void
stop_cb(void *arg)
{
  struct nbds_reactor *r = arg;
  ev_break(r->loop, EVBREAK_ALL);
}

static void *
reactor_thread(void *arg)
{
  struct nbds_reactor *r = arg;
  self = r;
  ev_ref(r->loop);  /* the mailbox keeps this loop alive */
  ev_run(r->loop, 0);
  return NULL;
}

void
reactor_start(struct nbds_reactor *r)
{
  if (pthread_create(&r->thread, NULL, reactor_thread, r) != 0) {
    nbds_log_error("pthread_create: %s", strerror(errno));
    exit(EXIT_FAILURE);
  }
  r->has_thread = true;
}

void
reactor_stop(struct nbds_reactor *r)
{
  if (!r->has_thread)
    return;
  nbds_reactor_post(r, stop_cb, r);
  pthread_join(r->thread, NULL);
  r->has_thread = false;
}

void
reactor_destroy(struct nbds_reactor *r)
{
  /* Run what was posted after the loop last looked (a shutdown request
   * that found nothing left to shut down), so nothing is lost or leaked. */
  mailbox_cb(r->loop, &r->mailbox_watcher, 0);
  if (r->has_ring) {
    io_uring_queue_exit(&r->ring);
    close(r->ring_efd);
  }
  ev_loop_destroy(r->loop);
  pthread_mutex_destroy(&r->lock);
  free(r);
}
