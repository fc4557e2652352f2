/* Writes on the metadata thread: in place where the cluster is ours alone,
 * else into a new cluster (copy-on-write of the rest of the cluster from
 * its old contents: the backing file, zeroes, a compressed or shared
 * cluster), then the L2 entry that exposes it.  With extended L2 entries
 * only the subclusters written are allocated.
 *
 * The data is written before the L2 entry changes, so a request that
 * looks the cluster up meanwhile sees the old mapping, complete; the
 * write-back order of flush.c makes the data durable before the entry. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "zero.h"

int
qcow2_release_entry(struct qcow2 *q, uint64_t entry, bool discard)
{
  if (entry & QCOW2_COMPRESSED) {
    uint64_t host, bytes;
    qcow2_compressed_range(&q->h, entry, &host, &bytes);
    return qcow2_free_later(q, host, bytes, discard);
  }
  uint64_t host = entry & QCOW2_OFFSET_MASK;
  return host ? qcow2_free_later(q, host, q->cluster_size, discard) : 0;
}

int
qcow2_merge_prepare(struct qcow2 *q, struct nbds_req *req, uint64_t req_off,
                    uint64_t guest, uint64_t len, uint64_t rs, uint64_t re,
                    uint64_t target, bool zeroed, struct qcow2_merge *mw)
{
  uint64_t head = guest - rs, tail = re - (guest + len);
  uint64_t cstart = qcow2_cluster_start(q, guest);
  uint64_t host = target + (rs - cstart);
  *mw = (struct qcow2_merge) { .iov = NULL };
  if (qcow2_overlaps_data_target(q, host, re - rs))
    return qcow2_corrupt(q, "data write at %#" PRIx64 " would overwrite "
                         "metadata", host);
  uint8_t *buf = NULL;
  if (head || tail) {
    buf = malloc(head + tail);
    if (!buf)
      return ENOMEM;
    struct iovec b = { buf, head + tail };
    int err = qcow2_read_range(q, &b, 1, 0, rs, head);
    if (!err)
      err = qcow2_read_range(q, &b, 1, head, guest + len, tail);
    if (err) {
      free(buf);
      return err;
    }
    if (zeroed && buffer_is_zero(buf, head + tail)) {
      host += head;
      head = tail = 0;
    }
  }
  struct iovec *iov = malloc((req->iovcnt + 2) * sizeof *iov);
  if (!iov) {
    free(buf);
    return ENOMEM;
  }
  int n = 0;
  if (head)
    iov[n++] = (struct iovec) { buf, head };
  n += qcow2_iov_slice(req->iov, req->iovcnt, req_off, len, iov + n,
                       req->iovcnt);
  if (tail)
    iov[n++] = (struct iovec) { buf + head, tail };
  *mw = (struct qcow2_merge) { .iov = iov, .iovcnt = n, .buf = buf,
                               .host = host };
  return 0;
}

void
qcow2_merge_free(struct qcow2_merge *mw)
{
  free(mw->iov);
  free(mw->buf);
  mw->iov = NULL;
  mw->buf = NULL;
}

/* Write guest [rs, re) to host cluster `target`, as qcow2_merge_prepare
 * describes it. */
static int
write_merged(struct qcow2 *q, struct nbds_req *req, uint64_t req_off,
             uint64_t guest, uint64_t len, uint64_t rs, uint64_t re,
             uint64_t target, bool zeroed)
{
  struct qcow2_merge mw;
  int err = qcow2_merge_prepare(q, req, req_off, guest, len, rs, re, target,
                                zeroed, &mw);
  if (!err)
    err = qcow2_pwritev(q, mw.iov, mw.iovcnt, mw.host, 0);
  qcow2_merge_free(&mw);
  return err;
}

/* A whole new cluster for guest [guest, guest+len), which lies in one
 * cluster: the old contents around it are copied in. */
static int
write_new_cluster(struct qcow2 *q, struct nbds_req *req, uint64_t req_off,
                  uint64_t guest, uint64_t len)
{
  uint64_t cstart = qcow2_cluster_start(q, guest);
  uint64_t target;
  bool zeroed;
  int err = qcow2_alloc_clusters(q, 1, &target, &zeroed);
  if (!err)
    err = write_merged(q, req, req_off, guest, len, cstart,
                       cstart + q->cluster_size, target, zeroed);
  struct qcow2_table *t;
  uint64_t i;
  if (!err)
    err = qcow2_l2_for_write(q, guest, &t, &i);
  if (err)
    return err;
  uint64_t bitmap;
  uint64_t old = qcow2_l2_get(q, t, i, &bitmap);
  qcow2_l2_set(q, t, i, target | QCOW2_COPIED,
               q->h.extended_l2 ? UINT64_C(0xffffffff) : 0);
  return qcow2_release_entry(q, old, false);
}

/* Extended L2: write the subclusters [guest, guest+len) touches into the
 * cluster's own host cluster (allocated if it has none), leaving the other
 * subclusters as they are. */
static int
write_subclusters(struct qcow2 *q, struct nbds_req *req, uint64_t req_off,
                  uint64_t guest, uint64_t len, uint64_t host_cluster)
{
  uint64_t cstart = qcow2_cluster_start(q, guest);
  uint64_t sc = q->subcluster_size;
  unsigned first = (unsigned) ((guest - cstart) / sc);
  unsigned last = (unsigned) ((guest + len - 1 - cstart) / sc);
  uint64_t rs = cstart + first * sc, re = cstart + (last + 1) * sc;
  int err = 0;
  bool zeroed = false;
  if (host_cluster == 0)
    err = qcow2_alloc_clusters(q, 1, &host_cluster, &zeroed);
  if (!err)
    err = write_merged(q, req, req_off, guest, len, rs, re, host_cluster,
                       zeroed);
  struct qcow2_table *t;
  uint64_t i;
  if (!err)
    err = qcow2_l2_for_write(q, guest, &t, &i);
  if (err)
    return err;
  uint64_t bitmap;
  qcow2_l2_get(q, t, i, &bitmap);
  uint64_t bits = qcow2_subcluster_bits(first, last);
  bitmap = (bitmap | bits) & ~(bits << 32);
  qcow2_l2_set(q, t, i, host_cluster | QCOW2_COPIED, bitmap);
  return 0;
}

/* Guest [guest, guest+len) within one cluster, whose mapping is m. */
static int
write_in_cluster(struct qcow2 *q, struct nbds_req *req, uint64_t req_off,
                 uint64_t guest, uint64_t len, const struct qcow2_map *m)
{
  if (!q->h.extended_l2) {
    if (m->type == QCOW2_ZERO_ALLOC && m->copied) {
      /* Reuse the host cluster the zero flag kept. */
      uint64_t cstart = qcow2_cluster_start(q, guest);
      uint64_t target = m->host - (guest - cstart);
      int err = write_merged(q, req, req_off, guest, len, cstart,
                             cstart + q->cluster_size, target, false);
      struct qcow2_table *t;
      uint64_t i;
      if (!err)
        err = qcow2_l2_for_write(q, guest, &t, &i);
      if (!err)
        qcow2_l2_set(q, t, i, target | QCOW2_COPIED, 0);
      return err;
    }
    return write_new_cluster(q, req, req_off, guest, len);
  }
  struct qcow2_table *t;
  uint64_t i, bitmap;
  int err = qcow2_l2_for_write(q, guest, &t, &i);
  if (err)
    return err;
  uint64_t entry = qcow2_l2_get(q, t, i, &bitmap);
  uint64_t host = entry & QCOW2_OFFSET_MASK;
  if ((entry & QCOW2_COMPRESSED) || (host && !(entry & QCOW2_COPIED)))
    return write_new_cluster(q, req, req_off, guest, len);
  return write_subclusters(q, req, req_off, guest, len, host);
}

int
qcow2_do_write(struct qcow2 *q, struct nbds_req *req)
{
  uint64_t done = 0;
  int err = 0;
  while (done < req->count && !err) {
    uint64_t guest = req->offset + done;
    uint64_t left = req->count - done;
    struct qcow2_map m;
    err = qcow2_map(q, guest, left, &m);
    /* As QEMU: nothing more is written to a corrupt image, and the
     * lookup itself may have found it corrupt. */
    if (!err && atomic_load(&q->corrupt))
      err = EIO;
    if (err)
      break;
    if (m.type == QCOW2_NORMAL && m.copied) {
      if (qcow2_overlaps_data_target(q, m.host, m.bytes)) {
        err = qcow2_corrupt(q, "data write at %#" PRIx64 " would overwrite "
                            "metadata", m.host);
        break;
      }
      struct iovec *iov = malloc(req->iovcnt * sizeof *iov);
      if (!iov) {
        err = ENOMEM;
        break;
      }
      int n = qcow2_iov_slice(req->iov, req->iovcnt, done, m.bytes, iov,
                              req->iovcnt);
      err = qcow2_pwritev(q, iov, n, m.host, 0);
      free(iov);
      done += m.bytes;
      continue;
    }
    uint64_t in_cluster = q->cluster_size - (guest & (q->cluster_size - 1));
    uint64_t len = left < in_cluster ? left : in_cluster;
    if (len > m.bytes && q->h.extended_l2)
      len = m.bytes;  /* subclusters that differ are written one by one */
    err = write_in_cluster(q, req, done, guest, len, &m);
    done += len;
  }
  if (!err && (req->flags & NBDS_F_FUA))
    err = qcow2_do_flush(q);
  return err;
}
