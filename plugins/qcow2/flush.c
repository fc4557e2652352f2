/* FLUSH: write the cached metadata back in an order that a crash at any
 * point leaves a consistent image (leaked clusters at worst), then make
 * it durable.  QEMU's rules (docs/architecture.md):
 *
 *   1. refcount blocks, then the refcount table, each synced: a new
 *      cluster is counted before anything points at it;
 *   2. then the L2 tables: the sync of step 1 also made the data copied
 *      into new clusters durable, so no entry exposes a cluster whose data
 *      is not on disk;
 *   3. then the L1 entries, after a sync, so that a new L2 table is on disk
 *      before the L1 entry that points at it;
 *   4. a final sync (which also covers the fast path's in-place writes);
 *   5. only now drop the references that step 2 and 3 removed.
 *
 * A failed write-back or sync is sticky (q->flush_err): the metadata that
 * could not be written may be lost, and later flushes must not succeed. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

#define L1_PAGE 4096

static int
write_l1(struct qcow2 *q, bool *wrote)
{
  uint64_t pages = (q->l1_bytes + L1_PAGE - 1) / L1_PAGE;
  uint8_t *page = malloc(L1_PAGE);
  if (!page)
    return ENOMEM;
  int err = 0;
  *wrote = false;
  for (uint64_t p = 0; p < pages && !err; p++) {
    if (!q->l1_dirty[p])
      continue;
    uint64_t len = q->l1_bytes - p * L1_PAGE;
    if (len > L1_PAGE)
      len = L1_PAGE;
    pthread_mutex_lock(&q->lock);
    memcpy(page, q->l1 + p * L1_PAGE, len);
    q->l1_dirty[p] = 0;
    pthread_mutex_unlock(&q->lock);
    err = qcow2_pwrite(q, page, len, q->l1_offset + p * L1_PAGE);
    if (err)
      q->l1_dirty[p] = 1;
    *wrote = true;
  }
  free(page);
  return err;
}

static bool
l1_dirty(struct qcow2 *q)
{
  uint64_t pages = (q->l1_bytes + L1_PAGE - 1) / L1_PAGE;
  for (uint64_t p = 0; p < pages; p++)
    if (q->l1_dirty[p])
      return true;
  return false;
}

static int
write_back(struct qcow2 *q)
{
  bool wrote;
  int err = qcow2_refcount_write_back(q, &wrote);
  if (err)
    return err;
  bool l2_dirty = false;
  for (size_t i = 0; i < q->l2.nslots; i++)
    if (q->l2.slots[i].offset && q->l2.slots[i].dirty)
      l2_dirty = true;
  if (l2_dirty) {
    if (q->unsynced && (err = qcow2_sync(q)))
      return err;
    if ((err = qcow2_cache_write_all(q, &q->l2, &wrote)))
      return err;
  }
  if (l1_dirty(q)) {
    if (q->unsynced && (err = qcow2_sync(q)))
      return err;
    if ((err = write_l1(q, &wrote)))
      return err;
  }
  return 0;
}

int
qcow2_do_flush(struct qcow2 *q)
{
  if (q->flush_err)
    return q->flush_err;
  if (q->readonly)
    return 0;
  int err = write_back(q);
  if (!err)
    err = qcow2_sync(q);
  if (err) {
    q->flush_err = err;
    return err;
  }
  err = qcow2_apply_frees(q);
  return err;
}
