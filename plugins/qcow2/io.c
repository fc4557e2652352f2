/* The metadata thread, its job queue, and synchronous I/O to the layers
 * below.
 *
 * The metadata code is written as plain sequential C (read the L2 table,
 * allocate, copy, link) because the ordering rules of qcow2 are easiest to
 * get right that way.  It runs on a thread of its own, one per image, so
 * that waiting for I/O never blocks a reactor: each request it makes is
 * posted to the reactor of the job being served, submitted there, and its
 * completion wakes the thread.  A pool thread would not do: with
 * --aio=threads the file layer's I/O itself runs on the worker pool, and
 * pool threads waiting for pool threads can deadlock. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "qcow2.h"

static __thread struct qcow2 *metadata_thread_of;

struct sync_io {
  struct nbds_req req;
  struct nbds_layer *l;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool done;
  int err;
};

static void
sync_io_done(struct nbds_req *r, int err)
{
  struct sync_io *s = r->opaque;
  pthread_mutex_lock(&s->lock);
  s->err = err;
  s->done = true;
  pthread_cond_signal(&s->cond);
  pthread_mutex_unlock(&s->lock);
}

static void
sync_io_start(void *arg)
{
  struct sync_io *s = arg;
  nbds_layer_submit(s->l, &s->req);
}

int
qcow2_io(struct qcow2 *q, struct nbds_layer *l, struct nbds_req *r)
{
  struct sync_io s = { .req = *r, .l = l };
  s.req.done = sync_io_done;
  s.req.opaque = &s;
  s.req.parent = NULL;
  pthread_mutex_init(&s.lock, NULL);
  pthread_cond_init(&s.cond, NULL);

  if (metadata_thread_of == q && q->io_reactor) {
    nbds_reactor_post(q->io_reactor, sync_io_start, &s);
    pthread_mutex_lock(&s.lock);
    while (!s.done)
      pthread_cond_wait(&s.cond, &s.lock);
    pthread_mutex_unlock(&s.lock);
  } else {
    /* Opening or closing, on a reactor thread (or in a test with a layer
     * that completes at once): run the loop until the request is done. */
    nbds_layer_submit(l, &s.req);
    struct nbds_reactor *self = nbds_reactor_self();
    while (!s.done) {
      if (!self) {
        nbds_error("qcow2: I/O outside a reactor did not complete");
        s.err = EIO;
        break;
      }
      ev_run(nbds_reactor_loop(self), EVRUN_ONCE);
    }
  }
  pthread_cond_destroy(&s.cond);
  pthread_mutex_destroy(&s.lock);
  if (r->op == NBDS_OP_BLOCK_STATUS)
    r->extents = s.req.extents;
  return s.err;
}

static int
rw(struct qcow2 *q, enum nbds_op op, void *buf, uint64_t len, uint64_t off,
   uint32_t flags)
{
  struct iovec iov = { buf, len };
  struct nbds_req r = { .op = op, .flags = flags, .offset = off,
                        .count = len, .iov = &iov, .iovcnt = 1 };
  int err = qcow2_io(q, q->file, &r);
  if (op == NBDS_OP_WRITE && !err)
    q->unsynced = true;
  return err;
}

int
qcow2_pread(struct qcow2 *q, void *buf, uint64_t len, uint64_t off)
{
  return rw(q, NBDS_OP_READ, buf, len, off, 0);
}

int
qcow2_pwrite(struct qcow2 *q, const void *buf, uint64_t len, uint64_t off)
{
  return rw(q, NBDS_OP_WRITE, (void *) buf, len, off, 0);
}

int
qcow2_pwritev(struct qcow2 *q, struct iovec *iov, int iovcnt, uint64_t off,
              uint32_t flags)
{
  uint64_t len = 0;
  for (int i = 0; i < iovcnt; i++)
    len += iov[i].iov_len;
  struct nbds_req r = { .op = NBDS_OP_WRITE, .flags = flags, .offset = off,
                        .count = len, .iov = iov, .iovcnt = iovcnt };
  int err = qcow2_io(q, q->file, &r);
  if (!err)
    q->unsynced = true;
  return err;
}

int
qcow2_sync(struct qcow2 *q)
{
  if (q->flush_err)
    return q->flush_err;
  struct nbds_req r = { .op = NBDS_OP_FLUSH };
  int err = qcow2_io(q, q->file, &r);
  if (err)
    q->flush_err = err;  /* what was not written is lost: never forget */
  else
    q->unsynced = false;
  return err;
}

int
qcow2_backing_read(struct qcow2 *q, struct iovec *iov, int iovcnt,
                   uint64_t off, uint64_t len)
{
  if (!q->backing || off >= q->backing_size) {
    qcow2_iov_zero(iov, iovcnt, 0, len);
    return 0;
  }
  uint64_t n = len;
  if (n > q->backing_size - off) {
    n = q->backing_size - off;
    qcow2_iov_zero(iov, iovcnt, n, len - n);
  }
  struct iovec part[64];
  int cnt = qcow2_iov_slice(iov, iovcnt, 0, n, part, 64);
  if (cnt < 0)
    return EINVAL;
  struct nbds_req r = { .op = NBDS_OP_READ, .offset = off, .count = n,
                        .iov = part, .iovcnt = cnt };
  return qcow2_io(q, q->backing, &r);
}

/* ---- jobs ---- */

static void
job_complete(void *arg)
{
  struct qcow2_job *j = arg;
  struct nbds_req *req = j->req;
  int err = j->err;
  free(j);
  nbds_req_complete(req, err);
}

/* Wait for the allocations j's range overlaps (alloc.c). */
static void
park(struct qcow2 *q, struct qcow2_job *j)
{
  j->next = NULL;
  *q->parked_tail = j;
  q->parked_tail = &j->next;
}

void
qcow2_jobs_unpark(struct qcow2 *q)
{
  if (!q->parked)
    return;
  pthread_mutex_lock(&q->qlock);
  *q->parked_tail = q->jobs;
  if (!q->jobs)
    q->jobs_tail = q->parked_tail;
  q->jobs = q->parked;
  pthread_mutex_unlock(&q->qlock);
  q->parked = NULL;
  q->parked_tail = &q->parked;
}

void
qcow2_job_requeue(struct qcow2 *q, struct qcow2_job *j)
{
  pthread_mutex_lock(&q->qlock);
  j->next = q->jobs;
  if (!q->jobs)
    q->jobs_tail = &j->next;
  q->jobs = j;
  pthread_cond_signal(&q->qcond);
  pthread_mutex_unlock(&q->qlock);
}

static int
run_job(struct qcow2 *q, struct qcow2_job *j)
{
  struct nbds_req *req = j->req;
  if (j->alloc)
    return qcow2_alloc_link(q, j);
  bool modifies = req->op == NBDS_OP_WRITE || req->op == NBDS_OP_ZERO ||
                  req->op == NBDS_OP_TRIM;
  if (modifies && qcow2_alloc_busy(q, req->offset, req->count)) {
    park(q, j);
    return QCOW2_PENDING;
  }
  int err;
  if (req->op == NBDS_OP_WRITE && qcow2_alloc_start(q, j, &err))
    return err;
  switch (req->op) {
  case NBDS_OP_READ:
    return qcow2_do_read(q, req);
  case NBDS_OP_WRITE:
    return qcow2_do_write(q, req);
  case NBDS_OP_TRIM:
  case NBDS_OP_ZERO:
    return qcow2_do_zero(q, req);
  case NBDS_OP_FLUSH:
    return qcow2_do_flush(q);
  case NBDS_OP_BLOCK_STATUS:
    return qcow2_do_block_status(q, req);
  case NBDS_OP_CACHE:
    return 0;
  }
  return EINVAL;
}

static void *
metadata_thread(void *arg)
{
  struct qcow2 *q = arg;
  metadata_thread_of = q;
  pthread_mutex_lock(&q->qlock);
  for (;;) {
    while (!q->jobs && !q->stopping)
      pthread_cond_wait(&q->qcond, &q->qlock);
    struct qcow2_job *j = q->jobs;
    if (!j)
      break;
    q->jobs = j->next;
    if (!q->jobs)
      q->jobs_tail = &q->jobs;
    pthread_mutex_unlock(&q->qlock);

    q->io_reactor = j->reactor;
    j->err = run_job(q, j);
    q->io_reactor = NULL;
    if (j->err != QCOW2_PENDING)
      nbds_reactor_post(j->reactor, job_complete, j);

    pthread_mutex_lock(&q->qlock);
  }
  pthread_mutex_unlock(&q->qlock);
  return NULL;
}

int
qcow2_thread_start(struct qcow2 *q)
{
  q->jobs = NULL;
  q->jobs_tail = &q->jobs;
  q->parked = NULL;
  q->parked_tail = &q->parked;
  int err = pthread_create(&q->thread, NULL, metadata_thread, q);
  if (err) {
    nbds_error("qcow2: cannot start the metadata thread: %s", strerror(err));
    return -1;
  }
  q->thread_started = true;
  return 0;
}

void
qcow2_thread_stop(struct qcow2 *q)
{
  if (!q->thread_started)
    return;
  pthread_mutex_lock(&q->qlock);
  q->stopping = true;
  pthread_cond_signal(&q->qcond);
  pthread_mutex_unlock(&q->qlock);
  pthread_join(q->thread, NULL);
  q->thread_started = false;
}

void
qcow2_job_submit(struct qcow2 *q, struct nbds_req *req)
{
  struct qcow2_job *j = malloc(sizeof *j);
  if (!j) {
    nbds_req_complete(req, ENOMEM);
    return;
  }
  j->req = req;
  j->reactor = nbds_reactor_self();
  j->err = 0;
  j->alloc = NULL;
  j->next = NULL;
  if (!j->reactor) {
    /* No reactor to complete on (a unit test): run it here.  Without a
     * reactor nothing is pipelined, so the job never waits. */
    int err = run_job(q, j);
    free(j);
    nbds_req_complete(req, err);
    return;
  }
  pthread_mutex_lock(&q->qlock);
  *q->jobs_tail = j;
  q->jobs_tail = &j->next;
  pthread_cond_signal(&q->qcond);
  pthread_mutex_unlock(&q->qlock);
}
