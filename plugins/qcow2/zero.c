/* WRITE_ZEROES and TRIM, as QEMU's qcow2 does them for qemu-nbd:
 *
 *  - whole clusters get the zero flag (v3): ZERO_PLAIN, freeing the host
 *    cluster, unless the client asked to keep it (NO_HOLE) and it is ours
 *    alone, then ZERO_ALLOC; v2 has no zero flag, so a cluster is
 *    deallocated when there is no backing file and written with zeroes
 *    otherwise;
 *  - with extended L2 entries, whole subclusters get their zero bit;
 *  - what is left (a partial cluster or subcluster) is written with real
 *    zeroes, unless it reads as zeroes already; FAST_ZERO refuses that;
 *  - TRIM (which only reaches here with --discard=unmap) works on whole
 *    clusters only and ignores the rest, as QEMU. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

/* Make a whole guest cluster read as zeroes through metadata alone. */
static int
zero_cluster(struct qcow2 *q, uint64_t guest, bool keep)
{
  struct qcow2_table *t;
  uint64_t i, bitmap;
  int err = qcow2_l2_for_write(q, guest, &t, &i);
  if (err)
    return err;
  uint64_t old = qcow2_l2_get(q, t, i, &bitmap);
  uint64_t host = old & QCOW2_OFFSET_MASK;
  bool ours = !(old & QCOW2_COMPRESSED) && host && (old & QCOW2_COPIED);
  if (q->h.version < 3) {
    qcow2_l2_set(q, t, i, 0, 0);
    return qcow2_release_entry(q, old, true);
  }
  if (keep && ours) {
    if (q->h.extended_l2)
      qcow2_l2_set(q, t, i, host | QCOW2_COPIED, UINT64_C(0xffffffff) << 32);
    else
      qcow2_l2_set(q, t, i, host | QCOW2_COPIED | QCOW2_ZERO, 0);
    return 0;
  }
  if (q->h.extended_l2)
    qcow2_l2_set(q, t, i, 0, UINT64_C(0xffffffff) << 32);
  else
    qcow2_l2_set(q, t, i, QCOW2_ZERO, 0);
  return qcow2_release_entry(q, old, true);
}

/* Extended L2: whole subclusters [first, last] of the cluster at guest
 * read as zeroes; the host cluster stays. */
static int
zero_subclusters(struct qcow2 *q, uint64_t guest, unsigned first,
                 unsigned last)
{
  struct qcow2_table *t;
  uint64_t i, bitmap;
  int err = qcow2_l2_for_write(q, guest, &t, &i);
  if (err)
    return err;
  uint64_t entry = qcow2_l2_get(q, t, i, &bitmap);
  if (entry & QCOW2_COMPRESSED)
    return ENOTSUP;  /* the caller writes zeroes instead */
  uint64_t bits = qcow2_subcluster_bits(first, last);
  if ((entry & QCOW2_OFFSET_MASK) && !(entry & QCOW2_COPIED))
    return ENOTSUP;
  qcow2_l2_set(q, t, i, entry, (bitmap & ~bits) | (bits << 32));
  return 0;
}

static bool
reads_as_zero(struct qcow2 *q, uint64_t guest, uint64_t len)
{
  uint64_t done = 0;
  while (done < len) {
    struct qcow2_map m;
    if (qcow2_map(q, guest + done, len - done, &m))
      return false;
    bool zero = m.type == QCOW2_ZERO_PLAIN || m.type == QCOW2_ZERO_ALLOC ||
                ((m.type == QCOW2_UNALLOCATED ||
                  m.type == QCOW2_UNALLOCATED_ALLOC) && !q->backing);
    if (!zero)
      return false;
    done += m.bytes;
  }
  return true;
}

/* TRIM leaves clusters that hold nothing alone, as QEMU does. */
static bool
trimmed_already(struct qcow2 *q, uint64_t guest)
{
  struct qcow2_map m;
  if (qcow2_map(q, guest, q->cluster_size, &m))
    return false;
  return m.bytes == q->cluster_size &&
         (m.type == QCOW2_ZERO_PLAIN ||
          (m.type == QCOW2_UNALLOCATED && !q->backing));
}

/* Real zeroes through the write path. */
static int
write_zeroes(struct qcow2 *q, struct nbds_req *req, uint64_t guest,
             uint64_t len)
{
  if (reads_as_zero(q, guest, len))
    return 0;
  if (req->flags & NBDS_F_FAST_ZERO)
    return ENOTSUP;
  uint8_t *zeroes = calloc(1, len);
  if (!zeroes)
    return ENOMEM;
  struct iovec iov = { zeroes, len };
  struct nbds_req w = { .op = NBDS_OP_WRITE, .offset = guest, .count = len,
                        .iov = &iov, .iovcnt = 1 };
  int err = qcow2_do_write(q, &w);
  free(zeroes);
  return err;
}

/* The part of one cluster [guest, guest+len) that is not whole. */
static int
zero_partial(struct qcow2 *q, struct nbds_req *req, uint64_t guest,
             uint64_t len)
{
  if (req->op == NBDS_OP_TRIM)
    return 0;
  if (!q->h.extended_l2)
    return write_zeroes(q, req, guest, len);
  uint64_t sc = q->subcluster_size, cstart = qcow2_cluster_start(q, guest);
  uint64_t a = (guest + sc - 1) & ~(sc - 1), b = (guest + len) & ~(sc - 1);
  int err = 0;
  if (a < b) {
    err = zero_subclusters(q, guest, (unsigned) ((a - cstart) / sc),
                           (unsigned) ((b - cstart) / sc - 1));
    if (err == ENOTSUP)
      err = write_zeroes(q, req, a, b - a);
  } else
    a = b = guest + len;
  if (!err && guest < a)
    err = write_zeroes(q, req, guest, a - guest);
  if (!err && b < guest + len)
    err = write_zeroes(q, req, b, guest + len - b);
  return err;
}

int
qcow2_do_zero(struct qcow2 *q, struct nbds_req *req)
{
  if (atomic_load(&q->corrupt))
    return EIO;
  bool keep = (req->flags & NBDS_F_NO_HOLE) && req->op == NBDS_OP_ZERO;
  uint64_t pos = req->offset, end = req->offset + req->count;
  int err = 0;
  while (pos < end && !err) {
    uint64_t cstart = qcow2_cluster_start(q, pos);
    uint64_t cend = cstart + q->cluster_size;
    uint64_t stop = end < cend ? end : cend;
    if (pos == cstart && stop == cend) {
      if (q->h.version < 3 && q->backing && req->op == NBDS_OP_ZERO)
        err = write_zeroes(q, req, pos, stop - pos);
      else if (req->op == NBDS_OP_ZERO || !trimmed_already(q, pos))
        err = zero_cluster(q, pos, keep);
    } else
      err = zero_partial(q, req, pos, stop - pos);
    pos = stop;
  }
  if (!err && (req->flags & NBDS_F_FUA))
    err = qcow2_do_flush(q);
  return err;
}
