/* Rebuilding the refcounts of a dirty image (one a writer with lazy
 * refcounts left without closing it), as QEMU does on a read-write open:
 * count every reference from the header, the tables and the active L1/L2
 * tables, set each refcount to its count, fix the COPIED flags to match,
 * write everything back, then clear the dirty bit.
 *
 * Internal snapshots and persistent bitmaps hold references this walk
 * does not follow: such an image is refused read-write instead of being
 * "repaired" into corruption (qemu-img check -r all handles it). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

#define MAX_REPAIR_CLUSTERS (UINT64_C(1) << 28)

struct counts {
  uint32_t *v;
  uint64_t n;
  int err;
};

static void
count(struct qcow2 *q, struct counts *c, uint64_t off, uint64_t bytes)
{
  uint64_t first = off >> q->cluster_bits;
  uint64_t last = (off + bytes - 1) >> q->cluster_bits;
  for (uint64_t i = first; i <= last && !c->err; i++) {
    if (i >= c->n) {
      nbds_error("qcow2: dirty image: a reference to %#" PRIx64 " lies past "
                 "the end of the file", i << q->cluster_bits);
      c->err = EINVAL;
    } else
      c->v[i]++;
  }
}

static void
count_l2(struct qcow2 *q, struct counts *c, const uint8_t *t)
{
  uint64_t n = UINT64_C(1) << q->l2_bits;
  for (uint64_t i = 0; i < n && !c->err; i++) {
    uint64_t e = qcow2_be64(t + i * q->l2_entry_size);
    if (e & QCOW2_COMPRESSED) {
      uint64_t host, bytes;
      qcow2_compressed_range(&q->h, e, &host, &bytes);
      count(q, c, host, bytes);
    } else if (e & QCOW2_OFFSET_MASK)
      count(q, c, e & QCOW2_OFFSET_MASK, q->cluster_size);
  }
}

static int
count_all(struct qcow2 *q, struct counts *c)
{
  count(q, c, 0, q->cluster_size);
  count(q, c, q->l1_offset, q->l1_bytes);
  count(q, c, q->reftable_offset, q->reftable_entries * 8);
  for (uint64_t i = 0; i < q->reftable_entries; i++)
    if (q->reftable[i])
      count(q, c, q->reftable[i] & ~QCOW2_REFT_RESERVED, q->cluster_size);
  uint8_t *t = malloc(q->cluster_size);
  if (!t)
    return ENOMEM;
  for (uint64_t i = 0; i < q->l1_entries && !c->err; i++) {
    uint64_t l2 = qcow2_l1_get(q, i) & QCOW2_OFFSET_MASK;
    if (!l2)
      continue;
    count(q, c, l2, q->cluster_size);
    int err = qcow2_pread(q, t, q->cluster_size, l2);
    if (err)
      c->err = err;
    else
      count_l2(q, c, t);
  }
  free(t);
  return c->err;
}

static uint32_t
refs(struct qcow2 *q, const struct counts *c, uint64_t off)
{
  uint64_t i = off >> q->cluster_bits;
  return i < c->n ? c->v[i] : 0;
}

/* COPIED exactly where the refcount is 1, in the active L1 and L2. */
static int
fix_copied(struct qcow2 *q, const struct counts *c)
{
  for (uint64_t i = 0; i < q->l1_entries; i++) {
    uint64_t e = qcow2_l1_get(q, i), l2 = e & QCOW2_OFFSET_MASK;
    if (!l2)
      continue;
    uint64_t want = refs(q, c, l2) == 1 ? l2 | QCOW2_COPIED : l2;
    if (want != e) {
      qcow2_put_be64(q->l1 + i * 8, want);
      q->l1_dirty[i * 8 / 4096] = 1;
    }
    struct qcow2_table *t;
    int err = qcow2_cache_get(q, &q->l2, l2, &t);
    if (err)
      return err;
    for (uint64_t j = 0; j < (UINT64_C(1) << q->l2_bits); j++) {
      uint64_t bitmap, x = qcow2_l2_get(q, t, j, &bitmap);
      uint64_t host = x & QCOW2_OFFSET_MASK;
      if ((x & QCOW2_COMPRESSED) || !host)
        continue;
      uint64_t fixed = refs(q, c, host) == 1 ? x | QCOW2_COPIED
                                             : x & ~QCOW2_COPIED;
      if (fixed != x)
        qcow2_l2_set(q, t, j, fixed, bitmap);
    }
  }
  return 0;
}

int
qcow2_repair_refcounts(struct qcow2 *q)
{
  if (q->h.nb_snapshots || q->h.nb_bitmaps) {
    nbds_error("qcow2: the image is dirty and has %s; repair it with "
               "qemu-img check -r all, or open it read-only",
               q->h.nb_snapshots ? "internal snapshots" : "bitmaps");
    return -1;
  }
  struct counts c = { .n = q->end };
  if (c.n > MAX_REPAIR_CLUSTERS ||
      !(c.v = calloc(c.n ? c.n : 1, sizeof *c.v))) {
    nbds_error("qcow2: the image is too large to rebuild its refcounts");
    return -1;
  }
  int err = count_all(q, &c);
  uint64_t n = c.n;
  for (uint64_t i = 0; i < n && !err; i++) {
    uint64_t v;
    err = qcow2_refcount_get(q, i, &v);
    if (!err && v != c.v[i])
      err = qcow2_refcount_set(q, i, c.v[i]);
  }
  if (!err)
    err = fix_copied(q, &c);
  free(c.v);
  q->free_hint = 0;
  if (!err)
    err = qcow2_do_flush(q);
  if (!err) {
    q->h.incompat &= ~QCOW2_INCOMPAT_DIRTY;
    err = qcow2_write_header_u64(q, QCOW2_OFF_INCOMPAT, q->h.incompat);
  }
  if (!err)
    err = qcow2_sync(q);
  if (err) {
    if (!*nbds_last_error() || err != EINVAL)
      nbds_error("qcow2: rebuilding refcounts failed: %s", strerror(err));
    return -1;
  }
  return 0;
}
