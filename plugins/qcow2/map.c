/* From guest offsets to host offsets: the L1 table, L2 lookups, runs of
 * clusters that map alike, and getting an L2 table ready for change
 * (allocated when missing, copied when shared with a snapshot).  Also
 * what happens when the metadata turns out to be wrong. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "qcow2.h"

uint64_t
qcow2_l1_get(struct qcow2 *q, uint64_t index)
{
  return qcow2_be64(q->l1 + index * 8);
}

/* Under q->lock. */
static void
l1_set(struct qcow2 *q, uint64_t index, uint64_t entry)
{
  qcow2_put_be64(q->l1 + index * 8, entry);
  q->l1_dirty[index * 8 / 4096] = 1;
}

uint64_t
qcow2_l2_get(struct qcow2 *q, const struct qcow2_table *t, uint64_t index,
             uint64_t *bitmap)
{
  const uint8_t *p = t->data + index * q->l2_entry_size;
  *bitmap = q->h.extended_l2 ? qcow2_be64(p + 8) : 0;
  return qcow2_be64(p);
}

void
qcow2_l2_set(struct qcow2 *q, struct qcow2_table *t, uint64_t index,
             uint64_t entry, uint64_t bitmap)
{
  uint8_t *p = t->data + index * q->l2_entry_size;
  pthread_mutex_lock(&q->lock);
  qcow2_put_be64(p, entry);
  if (q->h.extended_l2)
    qcow2_put_be64(p + 8, bitmap);
  t->dirty = true;
  pthread_mutex_unlock(&q->lock);
}

int
qcow2_corrupt(struct qcow2 *q, const char *fmt, ...)
{
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (q->readonly || (q->h.incompat & QCOW2_INCOMPAT_CORRUPT)) {
    nbds_log_error("qcow2: %s", msg);
    return EIO;
  }
  /* As QEMU: mark the image corrupt so that nothing writes to it again
   * until it is repaired (qemu-img check -r). */
  nbds_log_error("qcow2: marking the image as corrupt: %s", msg);
  q->h.incompat |= QCOW2_INCOMPAT_CORRUPT;
  atomic_store(&q->corrupt, true);
  if (qcow2_write_header_u64(q, QCOW2_OFF_INCOMPAT, q->h.incompat) == 0)
    qcow2_sync(q);
  return EIO;
}

static bool
overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
  return a < b + blen && b < a + alen;
}

static int
cmp_u64(const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

/* Refcount blocks, by binary search in a sorted copy of their offsets
 * (rebuilt when a block is added): a linear walk of the refcount table
 * for each entry of each L2 table would be too slow. */
static bool
overlaps_refblock(struct qcow2 *q, uint64_t off, uint64_t len)
{
  if (q->refblock_index_stale) {
    uint64_t *v = realloc(q->refblock_index,
                          (q->reftable_entries + 1) * sizeof *v);
    if (!v)
      return true;  /* cannot tell: refuse */
    size_t n = 0;
    for (uint64_t i = 0; i < q->reftable_entries; i++)
      if (q->reftable[i])
        v[n++] = q->reftable[i] & ~QCOW2_REFT_RESERVED;
    qsort(v, n, sizeof *v, cmp_u64);
    q->refblock_index = v;
    q->nrefblock_index = n;
    q->refblock_index_stale = false;
  }
  /* The first block that ends after off. */
  size_t lo = 0, hi = q->nrefblock_index;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (q->refblock_index[mid] + q->cluster_size <= off)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < q->nrefblock_index && q->refblock_index[lo] < off + len;
}

bool
qcow2_overlaps_metadata(struct qcow2 *q, uint64_t off, uint64_t len)
{
  if (off < q->cluster_size)
    return true;  /* the header */
  if (overlap(off, len, q->l1_offset, q->l1_bytes))
    return true;
  if (q->reftable &&
      overlap(off, len, q->reftable_offset, q->reftable_entries * 8))
    return true;
  if (q->h.nb_snapshots &&
      overlap(off, len, q->h.snapshots_offset, q->cluster_size))
    return true;
  return q->reftable && overlaps_refblock(q, off, len);
}

bool
qcow2_overlaps_data_target(struct qcow2 *q, uint64_t off, uint64_t len)
{
  if (qcow2_overlaps_metadata(q, off, len))
    return true;
  /* The L2 tables in the cache, as QEMU's default overlap check: a data
   * cluster written there would be lost when the table is written back. */
  bool hit = false;
  pthread_mutex_lock(&q->lock);
  for (uint64_t c = qcow2_cluster_start(q, off); c < off + len && !hit;
       c += q->cluster_size)
    hit = qcow2_cache_find(&q->l2, c) != NULL;
  pthread_mutex_unlock(&q->lock);
  return hit;
}

/* The type of entry i (subcluster sc) of table t, or -1 if invalid. */
static int
entry_type(struct qcow2 *q, const struct qcow2_table *t, uint64_t i,
           unsigned sc, enum qcow2_type *type, uint64_t *entry)
{
  uint64_t bitmap;
  *entry = qcow2_l2_get(q, t, i, &bitmap);
  return qcow2_entry_type(&q->h, *entry, bitmap, sc, type);
}

/* The mapping of guest offset off inside L2 table t (NULL: no table),
 * extended over following entries that map alike, up to max bytes. */
static int
map_in_table(struct qcow2 *q, const struct qcow2_table *t, uint64_t off,
             uint64_t max, struct qcow2_map *m)
{
  uint64_t table_span = q->cluster_size << q->l2_bits;
  uint64_t table_end = (off | (table_span - 1)) + 1;
  if (max > table_end - off)
    max = table_end - off;
  m->clean = !t || !t->dirty;
  if (!t) {
    m->type = QCOW2_UNALLOCATED;
    m->host = 0;
    m->copied = false;
    m->bytes = max;
    return 1;
  }
  /* Step by subcluster with extended L2, else by cluster. */
  uint64_t step = q->h.extended_l2 ? q->subcluster_size : q->cluster_size;
  uint64_t mask = q->l2_entry_size == 16 ? 31 : 0;
  uint64_t pos = off, bytes = 0, expect_host = 0;
  enum qcow2_type first = QCOW2_UNALLOCATED;
  bool first_copied = false;
  while (bytes < max) {
    uint64_t gcl = pos >> q->cluster_bits;
    uint64_t i = gcl & ((UINT64_C(1) << q->l2_bits) - 1);
    unsigned sc = (unsigned) ((pos & (q->cluster_size - 1)) / step) & mask;
    enum qcow2_type type;
    uint64_t entry;
    if (entry_type(q, t, i, sc, &type, &entry) == -1) {
      if (bytes)
        break;
      return -1;
    }
    uint64_t host = (entry & QCOW2_OFFSET_MASK) + (pos & (q->cluster_size - 1));
    bool copied = (entry & QCOW2_COPIED) != 0;
    if (bytes == 0) {
      first = type;
      first_copied = copied;
      m->host = type == QCOW2_COMPRESSED_DATA ? entry : host;
    } else if (type != first || copied != first_copied ||
               (type == QCOW2_NORMAL && host != expect_host) ||
               type == QCOW2_COMPRESSED_DATA)
      break;
    uint64_t piece = step - (pos & (step - 1));
    bytes += piece;
    pos += piece;
    expect_host = host + piece;
  }
  m->type = first;
  m->copied = first_copied;
  m->bytes = bytes < max ? bytes : max;
  return 1;
}

static uint64_t
l2_offset_of(struct qcow2 *q, uint64_t off, int *bad)
{
  uint64_t l1i = off >> (q->cluster_bits + q->l2_bits);
  *bad = 0;
  if (l1i >= q->l1_entries)
    return 0;
  uint64_t e = qcow2_l1_get(q, l1i);
  if (e & QCOW2_L1_RESERVED)
    *bad = 1;
  uint64_t l2 = e & QCOW2_OFFSET_MASK;
  if (l2 & (q->cluster_size - 1))
    *bad = 1;
  return l2;
}

int
qcow2_map_cached(struct qcow2 *q, uint64_t off, uint64_t max,
                 struct qcow2_map *m)
{
  int bad;
  uint64_t l2 = l2_offset_of(q, off, &bad);
  if (bad)
    return -1;
  if (l2 == 0)
    return map_in_table(q, NULL, off, max, m);
  struct qcow2_table *t = qcow2_cache_find(&q->l2, l2);
  if (!t)
    return 0;
  if (t->suspect)
    return 0;
  return map_in_table(q, t, off, max, m);
}

/* A writable image must count every cluster an entry uses, or the
 * allocator could hand it out again while the entry still uses it: two
 * guest clusters would share one host cluster.  A cluster past everything
 * the image holds (a truncated or hostile image) or with refcount 0 is
 * what qemu-img check calls an error: the image is marked corrupt, so
 * nothing more is written.  Returns an error only when a refcount cannot
 * be read. */
static int
check_counted(struct qcow2 *q, uint64_t off, uint64_t bytes,
              const char *what, uint64_t entry)
{
  uint64_t last = (off + bytes - 1) >> q->cluster_bits;
  if (last >= q->end) {
    qcow2_corrupt(q, "%s %#" PRIx64 " points past the end of the image "
                  "file", what, entry);
    return 0;
  }
  for (uint64_t c = off >> q->cluster_bits; c <= last; c++) {
    uint64_t v;
    int err = qcow2_refcount_get(q, c, &v);
    if (err)
      return err;
    if (v == 0) {
      qcow2_corrupt(q, "cluster %#" PRIx64 " is in use (%s %#" PRIx64 ") "
                    "but its refcount is 0", c << q->cluster_bits, what,
                    entry);
      return 0;
    }
  }
  return 0;
}

/* A COPIED entry promises the cluster is ours alone (refcount 1), so
 * writes go in place.  When the refcount says it is shared, the flag is
 * wrong (an interrupted snapshot creation can leave it so): it is dropped
 * from the cached table, so that a write copies the cluster as it should.
 * The table is not marked dirty; if it is written back for another reason
 * the flag goes with it, as qemu-img check -r would fix it. */
static int
check_copied(struct qcow2 *q, struct qcow2_table *t, uint64_t i,
             uint64_t entry, uint64_t bitmap)
{
  uint64_t v;
  int err = qcow2_refcount_get(q, (entry & QCOW2_OFFSET_MASK) >>
                               q->cluster_bits, &v);
  if (err || v <= 1)
    return err;
  pthread_mutex_lock(&q->lock);
  uint8_t *p = t->data + i * q->l2_entry_size;
  qcow2_put_be64(p, entry & ~QCOW2_COPIED);
  if (q->h.extended_l2)
    qcow2_put_be64(p + 8, bitmap);
  pthread_mutex_unlock(&q->lock);
  return 0;
}

/* The refcount checks of one entry of a freshly read table. */
static int
check_entry(struct qcow2 *q, struct qcow2_table *t, uint64_t i)
{
  uint64_t bitmap;
  uint64_t e = qcow2_l2_get(q, t, i, &bitmap);
  if (e & QCOW2_COMPRESSED) {
    uint64_t host, bytes;
    qcow2_compressed_range(&q->h, e, &host, &bytes);
    return check_counted(q, host, bytes, "L2 entry", e);
  }
  uint64_t host = e & QCOW2_OFFSET_MASK;
  if (!host)
    return 0;
  int err = check_counted(q, host, q->cluster_size, "L2 entry", e);
  if (!err && (e & QCOW2_COPIED) && !atomic_load(&q->corrupt))
    err = check_copied(q, t, i, e, bitmap);
  return err;
}

/* A freshly read L2 table: entries pointing at the header or a table this
 * layer knows keep the fast path away (the metadata thread then refuses
 * them with a clear error), and on a writable image the refcounts must
 * agree with the entries (above).  An error means the table could not be
 * vetted: the caller drops it. */
static int
vet_table(struct qcow2 *q, struct qcow2_table *t)
{
  uint64_t n = UINT64_C(1) << q->l2_bits;
  if (!q->readonly && !atomic_load(&q->corrupt)) {
    int err = check_counted(q, t->offset, q->cluster_size, "L2 table",
                            t->offset);
    if (err)
      return err;
  }
  for (uint64_t i = 0; i < n; i++) {
    if (!q->readonly && !atomic_load(&q->corrupt)) {
      int err = check_entry(q, t, i);
      if (err)
        return err;
    }
    uint64_t bitmap;
    uint64_t e = qcow2_l2_get(q, t, i, &bitmap);
    if ((e & QCOW2_COMPRESSED) || !(e & QCOW2_OFFSET_MASK))
      continue;
    if (!t->suspect && qcow2_overlaps_data_target(q, e & QCOW2_OFFSET_MASK,
                                                  q->cluster_size))
      t->suspect = true;
  }
  return 0;
}

static int
get_table(struct qcow2 *q, uint64_t l2, struct qcow2_table **t)
{
  pthread_mutex_lock(&q->lock);
  bool cached = qcow2_cache_find(&q->l2, l2) != NULL;
  pthread_mutex_unlock(&q->lock);
  if (qcow2_overlaps_metadata(q, l2, q->cluster_size) ||
      l2 >= (q->end << q->cluster_bits))
    return qcow2_corrupt(q, "L2 table offset %#" PRIx64 " is invalid", l2);
  int err = qcow2_cache_get(q, &q->l2, l2, t);
  if (!err && !cached) {
    (*t)->suspect = false;
    if ((err = vet_table(q, *t))) {
      pthread_mutex_lock(&q->lock);
      qcow2_cache_drop(&q->l2, l2);
      pthread_mutex_unlock(&q->lock);
    }
  }
  return err;
}

int
qcow2_map(struct qcow2 *q, uint64_t off, uint64_t max, struct qcow2_map *m)
{
  pthread_mutex_lock(&q->lock);
  int r = qcow2_map_cached(q, off, max, m);
  pthread_mutex_unlock(&q->lock);
  if (r == 1)
    return 0;
  int bad;
  uint64_t l2 = l2_offset_of(q, off, &bad);
  if (bad)
    return qcow2_corrupt(q, "L1 entry for offset %#" PRIx64 " is invalid",
                         off);
  struct qcow2_table *t = NULL;
  if (l2) {
    int err = get_table(q, l2, &t);
    if (err)
      return err;
  }
  pthread_mutex_lock(&q->lock);
  r = map_in_table(q, t, off, max, m);
  pthread_mutex_unlock(&q->lock);
  if (r == -1)
    return qcow2_corrupt(q, "invalid L2 entry for offset %#" PRIx64 ": %s",
                         off, nbds_last_error());
  return 0;
}

int
qcow2_l2_for_write(struct qcow2 *q, uint64_t off, struct qcow2_table **t,
                   uint64_t *index)
{
  uint64_t l1i = off >> (q->cluster_bits + q->l2_bits);
  *index = (off >> q->cluster_bits) & ((UINT64_C(1) << q->l2_bits) - 1);
  int bad;
  uint64_t l2 = l2_offset_of(q, off, &bad);
  if (bad || l1i >= q->l1_entries)
    return qcow2_corrupt(q, "L1 entry %" PRIu64 " is invalid", l1i);
  uint64_t l1e = qcow2_l1_get(q, l1i);
  if (l2 && (l1e & QCOW2_COPIED)) {
    /* In place only if the table is really ours alone: a COPIED flag
     * that its refcount contradicts is treated as absent (see
     * check_copied). */
    uint64_t refs;
    int err = qcow2_refcount_get(q, l2 >> q->cluster_bits, &refs);
    if (err)
      return err;
    if (refs <= 1) {
      err = get_table(q, l2, t);
      /* Loading the table may have found the image corrupt. */
      return !err && atomic_load(&q->corrupt) ? EIO : err;
    }
  }

  /* Missing, or shared with a snapshot: a new table of our own. */
  uint8_t *copy = NULL;
  if (l2) {
    struct qcow2_table *old;
    int err = get_table(q, l2, &old);
    if (err)
      return err;
    copy = malloc(q->cluster_size);
    if (!copy)
      return ENOMEM;
    memcpy(copy, old->data, q->cluster_size);
  }
  uint64_t fresh;
  int err = qcow2_alloc_clusters(q, 1, &fresh, NULL);
  if (!err)
    err = qcow2_cache_new(q, &q->l2, fresh, t);
  if (!err && l2)
    err = qcow2_free_later(q, l2, q->cluster_size, false);
  if (err) {
    free(copy);
    return err;
  }
  pthread_mutex_lock(&q->lock);
  if (copy)
    memcpy((*t)->data, copy, q->cluster_size);
  l1_set(q, l1i, fresh | QCOW2_COPIED);
  pthread_mutex_unlock(&q->lock);
  free(copy);
  return 0;
}
