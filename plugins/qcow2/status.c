/* BLOCK_STATUS (base:allocation) as qemu-nbd reports a qcow2 image: data
 * clusters (compressed too) as data; zero clusters and unallocated ones
 * without a backing file as hole+zero; unallocated ones with a backing
 * file as the backing file reports them. */
#include <errno.h>
#include <stdlib.h>

#include "qcow2.h"

/* Extents of the backing file for guest [off, off+len). */
static int
backing_status(struct qcow2 *q, struct nbds_req *req, uint64_t off,
               uint64_t len)
{
  const uint32_t none = NBDS_EXTENT_HOLE | NBDS_EXTENT_ZERO;
  if (off >= q->backing_size) {
    nbds_extents_add(req->extents, len, none);
    return 0;
  }
  uint64_t in = q->backing_size - off;
  if (in > len)
    in = len;
  struct nbds_extent v[64];
  struct nbds_extents ex = { .v = v, .cap = 64 };
  struct nbds_req r = { .op = NBDS_OP_BLOCK_STATUS, .offset = off,
                        .count = in, .extents = &ex,
                        .flags = req->flags & NBDS_F_REQ_ONE };
  if (q->backing->caps.can_extents) {
    int err = qcow2_io(q, q->backing, &r);
    if (err)
      return err;
  }
  uint64_t covered = 0;
  for (size_t i = 0; i < ex.count && covered < in; i++) {
    uint64_t n = ex.v[i].length;
    if (n > in - covered)
      n = in - covered;
    if (!nbds_extents_add(req->extents, n, ex.v[i].flags))
      return 0;
    covered += n;
  }
  if (covered < in)  /* a backing file without block status: data */
    nbds_extents_add(req->extents, in - covered, 0);
  if (in < len)
    nbds_extents_add(req->extents, len - in, none);
  return 0;
}

/* A data run, as qemu-nbd reports it: where the image file has a hole
 * under allocated clusters (preallocation=metadata), zero; else data. */
static int
file_status(struct qcow2 *q, struct nbds_req *req, uint64_t host,
            uint64_t len)
{
  if (!q->file->caps.can_extents) {
    nbds_extents_add(req->extents, len, 0);
    return 0;
  }
  struct nbds_extent v[64];
  struct nbds_extents ex = { .v = v, .cap = 64 };
  struct nbds_req r = { .op = NBDS_OP_BLOCK_STATUS, .offset = host,
                        .count = len, .extents = &ex };
  int err = qcow2_io(q, q->file, &r);
  if (err)
    return err;
  uint64_t covered = 0;
  for (size_t i = 0; i < ex.count && covered < len; i++) {
    uint64_t n = ex.v[i].length < len - covered ? ex.v[i].length
                                                : len - covered;
    if (!nbds_extents_add(req->extents, n,
                          ex.v[i].flags & NBDS_EXTENT_ZERO))
      return 0;
    covered += n;
  }
  if (covered < len)
    nbds_extents_add(req->extents, len - covered, 0);
  return 0;
}

int
qcow2_do_block_status(struct qcow2 *q, struct nbds_req *req)
{
  uint64_t done = 0;
  while (done < req->count) {
    struct qcow2_map m;
    int err = qcow2_map(q, req->offset + done, req->count - done, &m);
    if (err)
      return err;
    uint64_t covered = req->extents->covered;
    switch (m.type) {
    case QCOW2_NORMAL:
      if ((err = file_status(q, req, m.host, m.bytes)))
        return err;
      break;
    case QCOW2_COMPRESSED_DATA:
      nbds_extents_add(req->extents, m.bytes, 0);
      break;
    case QCOW2_ZERO_PLAIN:
    case QCOW2_ZERO_ALLOC:
      nbds_extents_add(req->extents, m.bytes,
                       NBDS_EXTENT_HOLE | NBDS_EXTENT_ZERO);
      break;
    case QCOW2_UNALLOCATED:
    case QCOW2_UNALLOCATED_ALLOC:
      if (!q->backing)
        nbds_extents_add(req->extents, m.bytes,
                         NBDS_EXTENT_HOLE | NBDS_EXTENT_ZERO);
      else if ((err = backing_status(q, req, req->offset + done, m.bytes)))
        return err;
      break;
    }
    if (req->extents->covered == covered)
      break;  /* the list is full */
    done += m.bytes;
    if (req->flags & NBDS_F_REQ_ONE)
      break;
  }
  return 0;
}
