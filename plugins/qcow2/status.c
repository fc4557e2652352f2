/* BLOCK_STATUS (base:allocation) as qemu-nbd reports a qcow2 image: data
 * clusters (compressed too) as data; zero clusters and unallocated ones
 * without a backing file as hole+zero; unallocated ones with a backing
 * file as the backing file reports them. */
#include <errno.h>
#include <stdlib.h>

#include "qcow2.h"

/* Ask layer l for the extents of [off, off+len) and add them to req's
 * list, keeping only the flags in `keep`; what l does not describe (no
 * block status, or a short answer) is data. */
static int
add_extents_of(struct qcow2 *q, struct nbds_layer *l, struct nbds_req *req,
               uint64_t off, uint64_t len, uint32_t keep)
{
  struct nbds_extent v[64];
  struct nbds_extents ex = { .v = v, .cap = 64 };
  struct nbds_req r = { .op = NBDS_OP_BLOCK_STATUS, .offset = off,
                        .count = len, .extents = &ex,
                        .flags = req->flags & NBDS_F_REQ_ONE };
  if (l->caps.can_extents) {
    int err = qcow2_io(q, l, &r);
    if (err)
      return err;
  }
  uint64_t covered = 0;
  for (size_t i = 0; i < ex.count && covered < len; i++) {
    uint64_t n = ex.v[i].length < len - covered ? ex.v[i].length
                                                : len - covered;
    if (!nbds_extents_add(req->extents, n, ex.v[i].flags & keep))
      return 0;
    covered += n;
  }
  if (covered < len)
    nbds_extents_add(req->extents, len - covered, 0);
  return 0;
}

/* Unallocated clusters over a backing file: what the backing file says,
 * hole+zero past its end. */
static int
backing_status(struct qcow2 *q, struct nbds_req *req, uint64_t off,
               uint64_t len)
{
  const uint32_t none = NBDS_EXTENT_HOLE | NBDS_EXTENT_ZERO;
  uint64_t in = off < q->backing_size ? q->backing_size - off : 0;
  if (in > len)
    in = len;
  int err = in ? add_extents_of(q, q->backing, req, off, in, none) : 0;
  if (!err && in < len)
    nbds_extents_add(req->extents, len - in, none);
  return err;
}

/* A data run, as qemu-nbd reports it: where the image file has a hole
 * under allocated clusters (preallocation=metadata), zero; else data. */
static int
file_status(struct qcow2 *q, struct nbds_req *req, uint64_t host,
            uint64_t len)
{
  return add_extents_of(q, q->file, req, host, len, NBDS_EXTENT_ZERO);
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
