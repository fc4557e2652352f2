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

int
qcow2_cmp_u64(const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

/* The first of the sorted offsets v[0..n) of span-byte pieces that ends
 * after off. */
static size_t
first_ending_after(const uint64_t *v, size_t n, uint64_t span, uint64_t off)
{
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (v[mid] + span <= off)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Does a piece of sorted v[0..n) overlap [off, off+len)? */
static bool
sorted_overlap(const uint64_t *v, size_t n, uint64_t span, uint64_t off,
               uint64_t len)
{
  size_t i = first_ending_after(v, n, span, off);
  return i < n && v[i] < off + len;
}

/* Refcount blocks are found by binary search in a sorted copy of their
 * offsets (rebuilt when a block is added): a linear walk of the refcount
 * table for each entry of each L2 table would be too slow.  False when
 * out of memory. */
static bool
refblock_index_fresh(struct qcow2 *q)
{
  if (!q->refblock_index_stale)
    return true;
  uint64_t *v = realloc(q->refblock_index,
                        (q->reftable_entries + 1) * sizeof *v);
  if (!v)
    return false;
  size_t n = 0;
  for (uint64_t i = 0; i < q->reftable_entries; i++)
    if (q->reftable[i])
      v[n++] = q->reftable[i] & ~QCOW2_REFT_RESERVED;
  qsort(v, n, sizeof *v, qcow2_cmp_u64);
  q->refblock_index = v;
  q->nrefblock_index = n;
  q->refblock_index_stale = false;
  return true;
}

static bool
overlaps_refblock(struct qcow2 *q, uint64_t off, uint64_t len)
{
  if (!refblock_index_fresh(q))
    return true;  /* cannot tell: refuse */
  return sorted_overlap(q->refblock_index, q->nrefblock_index,
                        q->cluster_size, off, len);
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

bool
qcow2_any_data_target(struct qcow2 *q, const uint64_t *hosts, size_t n)
{
  uint64_t cs = q->cluster_size;
  if (sorted_overlap(hosts, n, cs, 0, cs) ||
      sorted_overlap(hosts, n, cs, q->l1_offset, q->l1_bytes))
    return true;
  if (q->h.nb_snapshots &&
      sorted_overlap(hosts, n, cs, q->h.snapshots_offset, cs))
    return true;
  if (q->reftable) {
    if (sorted_overlap(hosts, n, cs, q->reftable_offset,
                       q->reftable_entries * 8) ||
        !refblock_index_fresh(q))
      return true;
    for (size_t i = 0; i < q->nrefblock_index; i++)
      if (sorted_overlap(hosts, n, cs, q->refblock_index[i], cs))
        return true;
  }
  bool hit = false;
  pthread_mutex_lock(&q->lock);
  for (size_t i = 0; i < q->l2.nslots && !hit; i++)
    hit = q->l2.slots[i].offset &&
          sorted_overlap(hosts, n, cs, q->l2.slots[i].offset, cs);
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

/* The L2 table at l2, L1 entry l1i's.  A table is vetted (vet.c) the
 * first time it is read; what that found about it stays true while the
 * image is open (only this layer changes it, and a writable image whose
 * entries use a cluster the allocator could hand out is corrupt), so a
 * table read again after eviction is not vetted again.  Tables this layer
 * makes count as vetted, so the first reading of a slot always sees the
 * table as it was at open. */
static int
get_table(struct qcow2 *q, uint64_t l1i, uint64_t l2, struct qcow2_table **t)
{
  pthread_mutex_lock(&q->lock);
  bool cached = qcow2_cache_find(&q->l2, l2) != NULL;
  pthread_mutex_unlock(&q->lock);
  if (qcow2_overlaps_metadata(q, l2, q->cluster_size) ||
      l2 >= (q->end << q->cluster_bits))
    return qcow2_corrupt(q, "L2 table offset %#" PRIx64 " is invalid", l2);
  int err = qcow2_cache_get(q, &q->l2, l2, t);
  if (!err && !cached) {
    uint8_t *vetted = &q->l2_vetted[l1i];
    if (*vetted & QCOW2_L2_VETTED)
      (*t)->suspect = (*vetted & QCOW2_L2_SUSPECT) != 0;
    else if ((err = qcow2_vet_table(q, *t))) {
      pthread_mutex_lock(&q->lock);
      qcow2_cache_drop(&q->l2, l2);
      pthread_mutex_unlock(&q->lock);
    } else
      *vetted = QCOW2_L2_VETTED | ((*t)->suspect ? QCOW2_L2_SUSPECT : 0);
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
    int err = get_table(q, off >> (q->cluster_bits + q->l2_bits), l2, &t);
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
     * that its refcount contradicts is treated as absent (see vet.c). */
    uint64_t refs;
    int err = qcow2_refcount_get(q, l2 >> q->cluster_bits, &refs);
    if (err)
      return err;
    if (refs <= 1) {
      err = get_table(q, l1i, l2, t);
      /* Loading the table may have found the image corrupt. */
      return !err && atomic_load(&q->corrupt) ? EIO : err;
    }
  }

  /* Missing, or shared with a snapshot: a new table of our own. */
  uint8_t *copy = NULL;
  if (l2) {
    struct qcow2_table *old;
    int err = get_table(q, l1i, l2, &old);
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
  /* Ours: never vetted (a copy keeps what vetting found of the old). */
  q->l2_vetted[l1i] |= QCOW2_L2_VETTED;
  return 0;
}
