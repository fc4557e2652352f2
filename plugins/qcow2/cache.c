/* A write-back cache of one-cluster metadata tables (L2 tables, refcount
 * blocks), least recently used out first.
 *
 * Only the metadata thread loads, creates, writes and evicts tables; the
 * fast path only finds them.  The L2 cache is shared with the fast path,
 * so its bookkeeping happens under q->lock; a table's bytes are written
 * with the lock released (the metadata thread is the only writer of the
 * bytes, so readers never see a torn entry that matters: each entry is
 * replaced whole, under the lock).
 *
 * A dirty L2 table is written only after everything it depends on is on
 * disk: the refcounts of the clusters it points to, and the data copied
 * into new clusters (the ordering rules of docs/architecture.md). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

static size_t
hash_of(const struct qcow2_cache *c, uint64_t offset)
{
  return (size_t) ((offset >> 9) * UINT64_C(0x9e3779b97f4a7c15) >> 20) &
         (c->nhash - 1);
}

int
qcow2_cache_init(struct qcow2_cache *c, size_t nslots, const char *what)
{
  memset(c, 0, sizeof *c);
  c->what = what;
  c->nslots = nslots;
  c->nhash = 16;
  while (c->nhash < 2 * nslots)
    c->nhash *= 2;
  c->slots = calloc(nslots, sizeof *c->slots);
  c->hash = calloc(c->nhash, sizeof *c->hash);
  if (!c->slots || !c->hash) {
    nbds_error("qcow2: out of memory for the %s cache", what);
    return -1;
  }
  return 0;  /* each table's bytes are allocated when it is first used */
}

void
qcow2_cache_destroy(struct qcow2_cache *c)
{
  for (size_t i = 0; i < c->nslots; i++)
    free(c->slots[i].data);
  free(c->slots);
  free(c->hash);
  memset(c, 0, sizeof *c);
}

struct qcow2_table *
qcow2_cache_find(struct qcow2_cache *c, uint64_t offset)
{
  for (struct qcow2_table *t = c->hash[hash_of(c, offset)]; t; t = t->hnext)
    if (t->offset == offset) {
      t->used = ++c->clock;
      return t;
    }
  return NULL;
}

static void
unlink_table(struct qcow2_cache *c, struct qcow2_table *t)
{
  struct qcow2_table **p = &c->hash[hash_of(c, t->offset)];
  while (*p != t)
    p = &(*p)->hnext;
  *p = t->hnext;
  t->hnext = NULL;
  t->offset = 0;
}

static void
link_table(struct qcow2_cache *c, struct qcow2_table *t, uint64_t offset)
{
  size_t b = hash_of(c, offset);
  t->offset = offset;
  t->hnext = c->hash[b];
  c->hash[b] = t;
  t->used = ++c->clock;
}

static bool
is_l2(struct qcow2 *q, struct qcow2_cache *c)
{
  return c == &q->l2;
}

static void
lock(struct qcow2 *q, struct qcow2_cache *c)
{
  if (is_l2(q, c))
    pthread_mutex_lock(&q->lock);
}

static void
unlock(struct qcow2 *q, struct qcow2_cache *c)
{
  if (is_l2(q, c))
    pthread_mutex_unlock(&q->lock);
}

int
qcow2_cache_write(struct qcow2 *q, struct qcow2_cache *c,
                  struct qcow2_table *t)
{
  if (!t->dirty)
    return 0;
  if (is_l2(q, c) && qcow2_overlaps_metadata(q, t->offset, q->cluster_size))
    return qcow2_corrupt(q, "L2 table at %#llx overlaps other metadata",
                         (unsigned long long) t->offset);
  int err = qcow2_pwrite(q, t->data, q->cluster_size, t->offset);
  if (err)
    return err;
  lock(q, c);
  t->dirty = false;
  unlock(q, c);
  return 0;
}

/* Evicting a dirty L2 table: what it points to goes to disk first. */
static int
write_evicted(struct qcow2 *q, struct qcow2_cache *c, struct qcow2_table *t)
{
  if (is_l2(q, c)) {
    bool wrote;
    int err = qcow2_refcount_write_back(q, &wrote);
    if (!err && q->unsynced)
      err = qcow2_sync(q);
    if (err)
      return err;
  }
  return qcow2_cache_write(q, c, t);
}

int
qcow2_cache_write_all(struct qcow2 *q, struct qcow2_cache *c, bool *wrote)
{
  *wrote = false;
  for (size_t i = 0; i < c->nslots; i++) {
    struct qcow2_table *t = &c->slots[i];
    if (t->offset && t->dirty) {
      int err = qcow2_cache_write(q, c, t);
      if (err)
        return err;
      *wrote = true;
    }
  }
  return 0;
}

/* A slot to reuse: unused, else the least recently used clean one, else
 * the least recently used after writing it back. */
static int
victim(struct qcow2 *q, struct qcow2_cache *c, struct qcow2_table **out)
{
  for (;;) {
    struct qcow2_table *best = NULL, *best_dirty = NULL;
    lock(q, c);
    for (size_t i = 0; i < c->nslots; i++) {
      struct qcow2_table *t = &c->slots[i];
      if (!t->offset) {
        best = t;
        break;
      }
      if (t->dirty) {
        if (!best_dirty || t->used < best_dirty->used)
          best_dirty = t;
      } else if (!best || t->used < best->used)
        best = t;
    }
    if (best) {
      if (best->offset)
        unlink_table(c, best);
      unlock(q, c);
      *out = best;
      return 0;
    }
    unlock(q, c);
    int err = write_evicted(q, c, best_dirty);
    if (err)
      return err;
  }
}

static int
install(struct qcow2 *q, struct qcow2_cache *c, uint64_t offset,
        uint8_t *data, bool dirty, struct qcow2_table **out)
{
  struct qcow2_table *t;
  int err = victim(q, c, &t);
  if (err) {
    free(data);
    return err;
  }
  lock(q, c);
  free(t->data);
  t->data = data;
  t->dirty = dirty;
  link_table(c, t, offset);
  unlock(q, c);
  *out = t;
  return 0;
}

int
qcow2_cache_get(struct qcow2 *q, struct qcow2_cache *c, uint64_t offset,
                struct qcow2_table **out)
{
  lock(q, c);
  struct qcow2_table *t = qcow2_cache_find(c, offset);
  unlock(q, c);
  if (t) {
    *out = t;
    return 0;
  }
  uint8_t *data = malloc(q->cluster_size);
  if (!data)
    return ENOMEM;
  int err = qcow2_pread(q, data, q->cluster_size, offset);
  if (err) {
    free(data);
    return err;
  }
  return install(q, c, offset, data, false, out);
}

int
qcow2_cache_new(struct qcow2 *q, struct qcow2_cache *c, uint64_t offset,
                struct qcow2_table **out)
{
  uint8_t *data = calloc(1, q->cluster_size);
  if (!data)
    return ENOMEM;
  lock(q, c);
  struct qcow2_table *old = qcow2_cache_find(c, offset);
  if (old)  /* a freed table's cluster, reused */
    unlink_table(c, old);
  unlock(q, c);
  return install(q, c, offset, data, true, out);
}

void
qcow2_cache_drop(struct qcow2_cache *c, uint64_t offset)
{
  struct qcow2_table *t = qcow2_cache_find(c, offset);
  if (t) {
    unlink_table(c, t);
    t->dirty = false;
  }
}
