/* Refcounts: reading and setting them, allocating clusters, growing the
 * refcount structures, and dropping references only once it is safe.
 *
 * Everything here runs on the metadata thread (or at open), so none of it
 * takes q->lock except to drop a freed L2 table from the shared cache.
 *
 * New refcount blocks and tables are appended at the end of the image (a
 * block that falls in its own range describes itself).  Increments reach
 * disk before anything that points at the new clusters (flush.c writes
 * refcount blocks first); decrements wait in q->frees until the metadata
 * that stopped using the clusters is on disk, so a crash can leak clusters
 * but never leave a used cluster with refcount 0. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

int
qcow2_refcount_load(struct qcow2 *q)
{
  uint64_t bytes = (uint64_t) q->h.reftable_clusters << q->cluster_bits;
  uint8_t *raw = malloc(bytes);
  q->reftable_entries = bytes / 8;
  q->reftable = malloc(q->reftable_entries * sizeof *q->reftable);
  if (!raw || !q->reftable) {
    free(raw);
    nbds_error("qcow2: out of memory for the refcount table");
    return -1;
  }
  int err = qcow2_pread(q, raw, bytes, q->h.reftable_offset);
  if (err) {
    free(raw);
    nbds_error("qcow2: cannot read the refcount table: %s", strerror(err));
    return -1;
  }
  for (uint64_t i = 0; i < q->reftable_entries; i++)
    q->reftable[i] = qcow2_be64(raw + i * 8);
  free(raw);
  q->reftable_offset = q->h.reftable_offset;
  q->refblock_index_stale = true;
  if (qcow2_cache_init(&q->refblocks, 32, "refcount block") == -1)
    return -1;
  return 0;
}

void
qcow2_refcount_destroy(struct qcow2 *q)
{
  qcow2_cache_destroy(&q->refblocks);
  free(q->reftable);
  q->reftable = NULL;
  free(q->refblock_index);
  q->refblock_index = NULL;
  free(q->frees);
  q->frees = NULL;
}

static unsigned
bits(const struct qcow2 *q)
{
  return 1u << q->h.refcount_order;
}

static uint64_t
decode(const struct qcow2 *q, const uint8_t *b, uint64_t i)
{
  unsigned n = bits(q);
  if (n >= 8) {
    uint64_t v = 0;
    for (unsigned k = 0; k < n / 8; k++)
      v = (v << 8) | b[i * (n / 8) + k];
    return v;
  }
  return (b[i * n / 8] >> ((i * n) % 8)) & ((1u << n) - 1);
}

static void
encode(const struct qcow2 *q, uint8_t *b, uint64_t i, uint64_t v)
{
  unsigned n = bits(q);
  if (n >= 8) {
    for (unsigned k = n / 8; k-- > 0; v >>= 8)
      b[i * (n / 8) + k] = (uint8_t) v;
    return;
  }
  unsigned shift = (i * n) % 8;
  uint8_t mask = (uint8_t) (((1u << n) - 1) << shift);
  b[i * n / 8] = (uint8_t) ((b[i * n / 8] & ~mask) | ((v << shift) & mask));
}

static uint64_t
max_refcount(const struct qcow2 *q)
{
  return bits(q) == 64 ? UINT64_MAX : (UINT64_C(1) << bits(q)) - 1;
}

/* The refcount block holding cluster's count, or NULL when there is none
 * (every count in its range is 0). */
static int
block_of(struct qcow2 *q, uint64_t cluster, struct qcow2_table **t)
{
  uint64_t ri = cluster / q->refblock_entries;
  *t = NULL;
  if (ri >= q->reftable_entries || q->reftable[ri] == 0)
    return 0;
  uint64_t off = q->reftable[ri];
  if ((off & QCOW2_REFT_RESERVED) || off < q->cluster_size)
    return qcow2_corrupt(q, "refcount block offset %#" PRIx64
                         " is invalid", off);
  return qcow2_cache_get(q, &q->refblocks, off, t);
}

int
qcow2_refcount_get(struct qcow2 *q, uint64_t cluster, uint64_t *value)
{
  struct qcow2_table *t;
  int err = block_of(q, cluster, &t);
  if (err)
    return err;
  *value = t ? decode(q, t->data, cluster % q->refblock_entries) : 0;
  return 0;
}

int
qcow2_refcount_get_next(struct qcow2 *q, struct qcow2_refcount_cursor *c,
                        uint64_t cluster, uint64_t *value)
{
  uint64_t ri = cluster / q->refblock_entries;
  if (!c->valid || c->range != ri) {
    c->valid = false;
    int err = block_of(q, cluster, &c->t);
    if (err)
      return err;
    c->valid = true;
    c->range = ri;
  }
  *value = c->t ? decode(q, c->t->data, cluster % q->refblock_entries) : 0;
  return 0;
}

static int grow_reftable(struct qcow2 *q, uint64_t min_entries);

/* A new refcount block for range ri, appended at the end of the image. */
/* n free clusters at the end of the image: past q->end, skipping any a
 * truncated image still counts (its refcounts can point past the end of
 * the file). */
static int
take_end(struct qcow2 *q, uint64_t n, uint64_t *first)
{
  uint64_t run = 0, c = q->end;
  while (run < n) {
    uint64_t v;
    int err = qcow2_refcount_get(q, c, &v);
    if (err)
      return err;
    run = v ? 0 : run + 1;
    c++;
  }
  *first = c - n;
  q->end = c;
  return 0;
}

static int
new_refblock(struct qcow2 *q, uint64_t ri)
{
  uint64_t b;
  int err = take_end(q, 1, &b);
  if (err)
    return err;
  struct qcow2_table *t;
  err = qcow2_cache_new(q, &q->refblocks, b << q->cluster_bits, &t);
  if (err)
    return err;
  q->reftable[ri] = b << q->cluster_bits;
  q->reftable_dirty = true;
  q->refblock_index_stale = true;
  if (b / q->refblock_entries == ri) {
    encode(q, t->data, b % q->refblock_entries, 1);
    return 0;
  }
  return qcow2_refcount_set(q, b, 1);
}

int
qcow2_refcount_set(struct qcow2 *q, uint64_t cluster, uint64_t value)
{
  if (value > max_refcount(q))
    return qcow2_corrupt(q, "refcount of cluster %" PRIu64 " would overflow",
                         cluster);
  uint64_t ri = cluster / q->refblock_entries;
  int err = 0;
  if (ri >= q->reftable_entries)
    err = grow_reftable(q, ri + 1);
  if (!err && q->reftable[ri] == 0) {
    if (value == 0)
      return 0;
    err = new_refblock(q, ri);
  }
  struct qcow2_table *t;
  if (!err)
    err = block_of(q, cluster, &t);
  if (err)
    return err;
  encode(q, t->data, cluster % q->refblock_entries, value);
  t->dirty = true;
  if (value == 0 && cluster < q->free_hint)
    q->free_hint = cluster;
  return 0;
}

/* Write the refcount blocks and the table, each durable before what
 * depends on it. */
int
qcow2_refcount_write_back(struct qcow2 *q, bool *wrote)
{
  int err = qcow2_cache_write_all(q, &q->refblocks, wrote);
  if (!err && *wrote)
    err = qcow2_sync(q);
  if (err || !q->reftable_dirty)
    return err;
  uint64_t bytes = q->reftable_entries * 8;
  uint8_t *raw = malloc(bytes);
  if (!raw)
    return ENOMEM;
  for (uint64_t i = 0; i < q->reftable_entries; i++)
    qcow2_put_be64(raw + i * 8, q->reftable[i]);
  err = qcow2_pwrite(q, raw, bytes, q->reftable_offset);
  free(raw);
  if (!err)
    err = qcow2_sync(q);
  if (!err)
    q->reftable_dirty = false;
  *wrote = true;
  return err;
}

/* A bigger refcount table at the end of the image: written with the
 * blocks it needs and made durable, then the header switched to it in
 * one write, then the old table freed. */
static int
grow_reftable(struct qcow2 *q, uint64_t min_entries)
{
  uint64_t per_cluster = q->cluster_size / 8;
  uint64_t entries = q->reftable_entries * 2;
  if (entries < min_entries + 1)
    entries = min_entries + 1;
  entries = (entries + per_cluster - 1) / per_cluster * per_cluster;
  if (entries * 8 > QCOW2_MAX_REFTABLE_BYTES)
    return qcow2_corrupt(q, "the refcount table would exceed %u bytes",
                         QCOW2_MAX_REFTABLE_BYTES);
  uint64_t clusters = entries / per_cluster;
  uint64_t *table = calloc(entries, sizeof *table);
  if (!table)
    return ENOMEM;
  memcpy(table, q->reftable, q->reftable_entries * sizeof *table);

  uint64_t old_offset = q->reftable_offset;
  uint64_t old_bytes = q->reftable_entries * 8;
  uint64_t first;
  int err = take_end(q, clusters, &first);
  if (err) {
    free(table);
    return err;
  }
  free(q->reftable);
  q->reftable = table;
  q->reftable_entries = entries;
  q->reftable_offset = first << q->cluster_bits;
  q->reftable_dirty = true;
  q->refblock_index_stale = true;

  for (uint64_t c = first; c < first + clusters && !err; c++)
    err = qcow2_refcount_set(q, c, 1);
  bool wrote;
  if (!err)
    err = qcow2_refcount_write_back(q, &wrote);
  if (err)
    return err;
  uint8_t hdr[12];
  qcow2_put_be64(hdr, q->reftable_offset);
  qcow2_put_be32(hdr + 8, (uint32_t) clusters);
  err = qcow2_pwrite(q, hdr, sizeof hdr, QCOW2_OFF_REFTABLE);
  if (!err)
    err = qcow2_sync(q);
  if (err)
    return err;
  q->h.reftable_offset = q->reftable_offset;
  q->h.reftable_clusters = (uint32_t) clusters;
  return qcow2_free_later(q, old_offset, old_bytes, false);
}

int
qcow2_alloc_clusters(struct qcow2 *q, uint64_t n, uint64_t *offset,
                     bool *zeroed)
{
  if (atomic_load(&q->corrupt))
    return EIO;  /* nothing more is allocated in a corrupt image */
  uint64_t old_end = q->end;
  uint64_t start = UINT64_MAX, run = 0, first_free = UINT64_MAX;
  for (uint64_t c = q->free_hint; c < q->end; c++) {
    uint64_t v;
    int err = qcow2_refcount_get(q, c, &v);
    if (err)
      return err;
    if (v != 0 || c == 0) {
      run = 0;
      continue;
    }
    if (first_free == UINT64_MAX)
      first_free = c;
    if (++run == n) {
      start = c + 1 - n;
      break;
    }
  }
  if (start == UINT64_MAX) {
    int err = take_end(q, n, &start);
    if (err)
      return err;
  }
  if (first_free == UINT64_MAX || first_free == start)
    q->free_hint = start + n;
  else
    q->free_hint = first_free;
  for (uint64_t c = start; c < start + n; c++) {
    int err = qcow2_refcount_set(q, c, 1);
    if (err)
      return err;
    qcow2_claim(q, c);
  }
  *offset = start << q->cluster_bits;
  if (zeroed)
    *zeroed = start >= old_end;
  return 0;
}

int
qcow2_refcount_adjust(struct qcow2 *q, uint64_t offset, uint64_t bytes,
                      int delta)
{
  uint64_t first = offset >> q->cluster_bits;
  uint64_t last = (offset + bytes - 1) >> q->cluster_bits;
  for (uint64_t c = first; c <= last; c++) {
    uint64_t v;
    int err = qcow2_refcount_get(q, c, &v);
    if (err)
      return err;
    if (delta < 0 && v == 0)
      return qcow2_corrupt(q, "cluster %#" PRIx64 " freed with refcount 0",
                           c << q->cluster_bits);
    err = qcow2_refcount_set(q, c, delta < 0 ? v - 1 : v + 1);
    if (err)
      return err;
  }
  return 0;
}

int
qcow2_free_later(struct qcow2 *q, uint64_t offset, uint64_t bytes,
                 bool discard)
{
  if (q->nfrees == q->frees_cap) {
    size_t cap = q->frees_cap ? 2 * q->frees_cap : 64;
    struct qcow2_free *f = realloc(q->frees, cap * sizeof *f);
    if (!f)
      return ENOMEM;
    q->frees = f;
    q->frees_cap = cap;
  }
  q->frees[q->nfrees++] = (struct qcow2_free) { offset, bytes, discard };
  return 0;
}

/* Punch the clusters of [offset, offset+bytes) that no longer hold
 * anything out of the file, as QEMU passes a guest's discards down
 * (pass-discard-request).  Synchronous, on the metadata thread, so no
 * allocation can reuse a cluster before its punch is done.  A discard is
 * advisory: its failure changes nothing the guest can see, and is
 * ignored as QEMU does. */
static void
punch_unused(struct qcow2 *q, uint64_t offset, uint64_t bytes)
{
  if (!q->file->caps.can_trim)
    return;
  uint64_t first = offset >> q->cluster_bits;
  uint64_t last = (offset + bytes - 1) >> q->cluster_bits;
  uint64_t run = first, n = 0;
  for (uint64_t c = first; c <= last + 1; c++) {
    uint64_t v = 1;
    if (c <= last && qcow2_refcount_get(q, c, &v))
      return;
    if (v == 0) {
      if (n++ == 0)
        run = c;
      continue;
    }
    if (n) {
      struct nbds_req r = { .op = NBDS_OP_TRIM,
                            .offset = run << q->cluster_bits,
                            .count = n << q->cluster_bits };
      qcow2_io(q, q->file, &r);
    }
    n = 0;
  }
}

/* The metadata no longer pointing at the clusters in q->frees is on disk:
 * drop their references, unless fast-path I/O that may have looked them
 * up before is still running (then at the next flush). */
int
qcow2_apply_frees(struct qcow2 *q)
{
  if (q->nfrees == 0)
    return 0;
  pthread_mutex_lock(&q->lock);
  bool busy = atomic_load(&q->fast_inflight) != 0;
  if (!busy)
    for (size_t i = 0; i < q->nfrees; i++)
      qcow2_cache_drop(&q->l2, q->frees[i].offset & ~(q->cluster_size - 1));
  pthread_mutex_unlock(&q->lock);
  if (busy)
    return 0;
  int err = 0;
  size_t i;
  for (i = 0; i < q->nfrees && !err; i++) {
    struct qcow2_free *f = &q->frees[i];
    err = qcow2_refcount_adjust(q, f->offset, f->bytes, -1);
    if (!err && f->discard)
      punch_unused(q, f->offset, f->bytes);
  }
  memmove(q->frees, q->frees + i, (q->nfrees - i) * sizeof *q->frees);
  q->nfrees -= i;
  return err;
}
