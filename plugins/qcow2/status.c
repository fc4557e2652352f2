/* BLOCK_STATUS as qemu-nbd reports a qcow2 image.
 *
 * base:allocation: data clusters (compressed too) as data; zero clusters
 * and unallocated ones without a backing file as hole+zero; unallocated
 * ones with a backing file as the backing file reports them.
 *
 * qemu:allocation-depth (NBDS_F_DEPTH): every cluster the image describes
 * (data, compressed or zero) at depth 1; unallocated ones at the backing
 * file's depth plus one, or 0 without a backing file.  Past the end of a
 * shorter backing file QEMU counts the range as allocated (as zeroes) in
 * that backing file, so it is at depth 2 there. */
#include <errno.h>
#include <stdlib.h>

#include "qcow2.h"

/* Ask layer l for the extents of [off, off+len) and add them to req's
 * list.  For base:allocation keep only the flags in `keep`; when l says
 * nothing (no block status) the range is data.  With NBDS_F_DEPTH, l is
 * the backing file: its depths grow by one, and a backing file that says
 * nothing has it all (depth 2).  A short answer (REQ_ONE, a full list)
 * leaves the range short: the caller stops there. */
static int
add_extents_of(struct qcow2 *q, struct nbds_layer *l, struct nbds_req *req,
               uint64_t off, uint64_t len, uint32_t keep)
{
  bool depth = req->flags & NBDS_F_DEPTH;
  /* With REQ_ONE, one extent: the caller's list holds just one (and
   * grows it while the flags match, as qemu-nbd's answer does). */
  struct nbds_extent v[64];
  struct nbds_extents ex = { .v = v,
                             .cap = req->flags & NBDS_F_REQ_ONE ? 1 : 64 };
  struct nbds_req r = { .op = NBDS_OP_BLOCK_STATUS, .offset = off,
                        .count = len, .extents = &ex,
                        .flags = req->flags & (NBDS_F_REQ_ONE | NBDS_F_DEPTH) };
  if (depth ? l->caps.can_alloc_depth : l->caps.can_extents) {
    int err = qcow2_io(q, l, &r);
    if (err)
      return err;
  }
  uint64_t covered = 0;
  for (size_t i = 0; i < ex.count && covered < len; i++) {
    uint64_t n = ex.v[i].length < len - covered ? ex.v[i].length
                                                : len - covered;
    uint32_t f = ex.v[i].flags;
    if (!nbds_extents_add(req->extents, n,
                          depth ? (f ? f + 1 : 0) : f & keep))
      return 0;
    covered += n;
  }
  if (ex.count == 0)
    nbds_extents_add(req->extents, len, depth ? 2 : 0);
  return 0;
}

/* Unallocated clusters over a backing file: what the backing file says;
 * past its end, hole+zero (or depth 2, see above). */
static int
backing_status(struct qcow2 *q, struct nbds_req *req, uint64_t off,
               uint64_t len)
{
  const uint32_t none = NBDS_EXTENT_HOLE | NBDS_EXTENT_ZERO;
  uint64_t in = off < q->backing_size ? q->backing_size - off : 0;
  if (in > len)
    in = len;
  uint64_t before = req->extents->covered;
  int err = in ? add_extents_of(q, q->backing, req, off, in, none) : 0;
  if (!err && in < len && req->extents->covered - before == in)
    nbds_extents_add(req->extents, len - in,
                     req->flags & NBDS_F_DEPTH ? 2 : none);
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
  bool depth = req->flags & NBDS_F_DEPTH;
  uint64_t done = 0;
  while (done < req->count) {
    struct qcow2_map m;
    int err = qcow2_map(q, req->offset + done, req->count - done, &m);
    if (err)
      return err;
    uint64_t covered = req->extents->covered;
    switch (m.type) {
    case QCOW2_NORMAL:
      if (depth)
        nbds_extents_add(req->extents, m.bytes, 1);
      else if ((err = file_status(q, req, m.host, m.bytes)))
        return err;
      break;
    case QCOW2_COMPRESSED_DATA:
      nbds_extents_add(req->extents, m.bytes, depth ? 1 : 0);
      break;
    case QCOW2_ZERO_PLAIN:
    case QCOW2_ZERO_ALLOC:
      nbds_extents_add(req->extents, m.bytes,
                       depth ? 1 : NBDS_EXTENT_HOLE | NBDS_EXTENT_ZERO);
      break;
    case QCOW2_UNALLOCATED:
    case QCOW2_UNALLOCATED_ALLOC:
      if (!q->backing)
        nbds_extents_add(req->extents, m.bytes,
                         depth ? 0 : NBDS_EXTENT_HOLE | NBDS_EXTENT_ZERO);
      else if ((err = backing_status(q, req, req->offset + done, m.bytes)))
        return err;
      break;
    }
    if (req->extents->covered - covered < m.bytes)
      break;  /* the list is full, or a REQ_ONE answer was short */
    done += m.bytes;
  }
  return 0;
}
