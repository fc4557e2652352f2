/* BLOCK_STATUS: which parts of the image hold data, from
 * rbd_diff_iterate2 since the image was created (the parent included, for
 * a clone).  What it does not report reads as zeroes: a hole.
 *
 * rbd_diff_iterate2 is a blocking call, so it runs on the worker pool.
 * With fast-diff (and a valid object map) librbd answers from the object
 * map at object granularity, as QEMU asks it to; without, it asks the OSD
 * about every object, for the exact extents, so such a query is cut at
 * SLOW_OBJECTS objects (a client asks again for the rest).
 *
 * librbd before 1.17 reported wrong offsets for a fast-diff query that
 * starts inside an object (Ceph tracker 53784), so the query starts at
 * the object boundary; the answer is clipped to the request. */
#include <errno.h>
#include <stdlib.h>

#include "rbd.h"

#define SLOW_OBJECTS 32

struct range {
  uint64_t start, end;
};

struct status_job {
  struct nbds_work work;    /* first: the job is its work item */
  struct rbd_disk *d;
  struct nbds_req *req;
  uint64_t start, end;      /* the part of the request answered */
  struct range *v;
  size_t n, cap;
  int err;                  /* positive errno */
};

static int
diff_cb(uint64_t off, size_t len, int exists, void *arg)
{
  struct status_job *j = arg;
  uint64_t s = off > j->start ? off : j->start;
  uint64_t e = off + len < j->end ? off + len : j->end;
  if (!exists || s >= e)
    return 0;
  if (j->n && j->v[j->n - 1].end == s) {
    j->v[j->n - 1].end = e;
    return 0;
  }
  if (j->n == j->cap) {
    size_t cap = j->cap ? j->cap * 2 : 64;
    struct range *v = realloc(j->v, cap * sizeof *v);
    if (!v)
      return -ENOMEM;
    j->v = v;
    j->cap = cap;
  }
  j->v[j->n++] = (struct range) { s, e };
  return 0;
}

static int
by_start(const void *a, const void *b)
{
  const struct range *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

/* On a worker. */
static void
status_run(struct nbds_work *w)
{
  struct status_job *j = (struct status_job *) w;
  struct rbd_disk *d = j->d;
  uint64_t features = 0, flags = 0;
  bool fast = rbd_get_features(d->image, &features) == 0 &&
              (features & RBD_FEATURE_FAST_DIFF) &&
              rbd_get_flags(d->image, &flags) == 0 &&
              !(flags & RBD_FLAG_FAST_DIFF_INVALID);
  if (!fast && j->end - j->start > SLOW_OBJECTS * d->object_size)
    j->end = j->start + SLOW_OBJECTS * d->object_size;
  uint64_t from = j->start - j->start % d->object_size;
  int r = rbd_diff_iterate2(d->image, NULL, from, j->end - from, 1, fast,
                            diff_cb, j);
  if (r < 0)
    j->err = -r;
  else if (j->n)
    qsort(j->v, j->n, sizeof *j->v, by_start);
}

/* Back on the reactor: holes between the ranges, data in them. */
static void
status_done(struct nbds_work *w)
{
  struct status_job *j = (struct status_job *) w;
  struct nbds_req *req = j->req;
  int err = 0;
  if (j->err)
    err = rbd_error(j->d, "block status", req, j->err);
  else {
    struct nbds_extents *ex = req->extents;
    const uint32_t hole = NBDS_EXTENT_HOLE | NBDS_EXTENT_ZERO;
    uint64_t pos = j->start;
    bool room = true;
    for (size_t i = 0; room && i < j->n; i++) {
      if (j->v[i].end <= pos)
        continue;
      if (j->v[i].start > pos)
        room = nbds_extents_add(ex, j->v[i].start - pos, hole);
      uint64_t s = j->v[i].start > pos ? j->v[i].start : pos;
      if (room)
        room = nbds_extents_add(ex, j->v[i].end - s, 0);
      pos = j->v[i].end;
    }
    if (room && pos < j->end)
      nbds_extents_add(ex, j->end - pos, hole);
  }
  free(j->v);
  free(j);
  nbds_req_complete(req, err);
}

void
rbd_block_status(struct rbd_disk *d, struct nbds_req *req)
{
  struct status_job *j = calloc(1, sizeof *j);
  if (!j) {
    nbds_req_complete(req, ENOMEM);
    return;
  }
  j->work.fn = status_run;
  j->work.done = status_done;
  j->d = d;
  j->req = req;
  j->start = req->offset;
  j->end = req->offset + req->count;
  if (j->end > d->size)
    j->end = d->size;
  nbds_work_submit(&j->work);
}
