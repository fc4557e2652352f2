/* Allocating writes, pipelined.
 *
 * A write that falls wholly in clusters without a host cluster (never
 * written, or plain zero clusters) gets a run of new clusters on the
 * metadata thread, and its data write (with the old contents around it,
 * see qcow2_merge_prepare) is sent down without waiting: the thread goes
 * on with the next job.  When the write completes, the same job comes
 * back as a link job that sets the L2 entries — data before the entry
 * that exposes it, as everywhere — and completes the request.  So a 4 KiB
 * random write workload on a new image keeps many data writes in flight
 * instead of one.
 *
 * Until its link, an allocation's guest clusters are busy: any other
 * write, zero or trim that touches them is parked and retried after the
 * next link, so that two writes into one new cluster never both copy the
 * old contents (the second would undo the first).  Reads meanwhile see the
 * old mapping, complete, which is what a read racing a write may see.  A
 * flush need not wait: these writes are not acknowledged yet, and a crash
 * before the link only leaks the new clusters. */
#include <errno.h>
#include <stdlib.h>

#include "qcow2.h"

struct qcow2_alloc {
  struct qcow2 *q;
  struct qcow2_job *job;
  uint64_t guest;            /* first guest cluster's offset */
  uint64_t bytes;            /* whole clusters */
  uint64_t target;           /* host offset of the new run */
  struct qcow2_merge mw;
  struct nbds_req w;         /* the data write */
  int err;
  struct qcow2_alloc *next;  /* q->allocs */
};

bool
qcow2_alloc_busy(struct qcow2 *q, uint64_t off, uint64_t len)
{
  for (struct qcow2_alloc *a = q->allocs; a; a = a->next)
    if (off < a->guest + a->bytes && a->guest < off + len)
      return true;
  return false;
}

/* On the reactor: send the data write down. */
static void
data_start(void *arg)
{
  struct qcow2_alloc *a = arg;
  nbds_layer_submit(a->q->file, &a->w);
}

/* On the reactor: the data is written; the link is the thread's. */
static void
data_done(struct nbds_req *w, int err)
{
  struct qcow2_alloc *a = w->opaque;
  a->err = err;
  qcow2_job_requeue(a->q, a->job);
}

bool
qcow2_alloc_start(struct qcow2 *q, struct qcow2_job *j, int *err)
{
  struct nbds_req *req = j->req;
  if (!q->io_reactor || q->h.extended_l2 || req->count == 0 ||
      atomic_load(&q->corrupt))
    return false;
  struct qcow2_map m;
  if ((*err = qcow2_map(q, req->offset, req->count, &m)))
    return true;
  if ((m.type != QCOW2_UNALLOCATED && m.type != QCOW2_ZERO_PLAIN) ||
      m.bytes < req->count)
    return false;

  uint64_t first = qcow2_cluster_start(q, req->offset);
  uint64_t end = qcow2_cluster_start(q, req->offset + req->count - 1) +
                 q->cluster_size;
  struct qcow2_alloc *a = calloc(1, sizeof *a);
  if (!a) {
    *err = ENOMEM;
    return true;
  }
  bool zeroed;
  *a = (struct qcow2_alloc) { .q = q, .job = j, .guest = first,
                              .bytes = end - first };
  if ((*err = qcow2_alloc_clusters(q, a->bytes >> q->cluster_bits,
                                   &a->target, &zeroed))) {
    free(a);
    return true;
  }
  if ((*err = qcow2_merge_prepare(q, req, 0, req->offset, req->count, first,
                                  end, a->target, zeroed, &a->mw))) {
    qcow2_free_later(q, a->target, a->bytes, false);
    free(a);
    return true;
  }
  uint64_t len = 0;
  for (int i = 0; i < a->mw.iovcnt; i++)
    len += a->mw.iov[i].iov_len;
  a->w = (struct nbds_req) { .op = NBDS_OP_WRITE, .offset = a->mw.host,
                             .count = len, .iov = a->mw.iov,
                             .iovcnt = a->mw.iovcnt, .done = data_done,
                             .opaque = a };
  a->next = q->allocs;
  q->allocs = a;
  j->alloc = a;
  nbds_reactor_post(j->reactor, data_start, a);
  *err = QCOW2_PENDING;
  return true;
}

/* Point the L2 entries of the allocation's guest clusters at its new run. */
static int
link_entries(struct qcow2 *q, struct qcow2_alloc *a)
{
  for (uint64_t done = 0; done < a->bytes; done += q->cluster_size) {
    struct qcow2_table *t;
    uint64_t i, bitmap;
    int err = qcow2_l2_for_write(q, a->guest + done, &t, &i);
    if (err)
      return err;
    uint64_t old = qcow2_l2_get(q, t, i, &bitmap);
    qcow2_l2_set(q, t, i, (a->target + done) | QCOW2_COPIED, 0);
    if ((err = qcow2_release_entry(q, old, false)))
      return err;
  }
  return 0;
}

int
qcow2_alloc_link(struct qcow2 *q, struct qcow2_job *j)
{
  struct qcow2_alloc *a = j->alloc;
  j->alloc = NULL;
  for (struct qcow2_alloc **p = &q->allocs; *p; p = &(*p)->next)
    if (*p == a) {
      *p = a->next;
      break;
    }
  int err = a->err;
  if (!err && atomic_load(&q->corrupt))
    err = EIO;
  if (!err) {
    q->unsynced = true;
    err = link_entries(q, a);
  } else
    qcow2_free_later(q, a->target, a->bytes, false);
  if (!err && (j->req->flags & NBDS_F_FUA))
    err = qcow2_do_flush(q);
  qcow2_merge_free(&a->mw);
  free(a);
  qcow2_jobs_unpark(q);
  return err;
}
