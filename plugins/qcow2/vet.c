/* Vetting an L2 table when it is read from the image.
 *
 * Entries that point at the header or a table this layer knows keep the
 * table off the fast path (the metadata thread then refuses them with a
 * clear error).  On a writable image the entries must also agree with the
 * refcounts, which QEMU trusts: a cluster an entry uses but nothing
 * counts is one the allocator would hand out again, and two guest
 * clusters would then share one host cluster; a COPIED flag on a shared
 * cluster would let a write change a snapshot.  What qemu-img check calls
 * an error here marks the image corrupt, so nothing more is written.
 *
 * The entries are sorted by host offset once, so that every check is a
 * pass over them (or a binary search in them) and refcount blocks are
 * looked up in order.  A table is vetted once per open (map.c). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "qcow2.h"

struct use {
  uint64_t host;   /* the cluster's offset */
  uint64_t index;  /* of the entry in the table */
};

static int
cmp_use(const void *a, const void *b)
{
  const struct use *x = a, *y = b;
  if (x->host != y->host)
    return x->host < y->host ? -1 : 1;
  return x->index < y->index ? -1 : x->index > y->index;
}

/* The clusters of [off, off+bytes) were inside the file at open (the
 * table is as it was then: clusters appended since are this layer's) and
 * are counted, else the image is marked corrupt.  Returns an error only
 * when a refcount cannot be read. */
static int
check_counted(struct qcow2 *q, struct qcow2_refcount_cursor *cur,
              uint64_t off, uint64_t bytes, const char *what,
              uint64_t entry, uint64_t *refs)
{
  uint64_t last = (off + bytes - 1) >> q->cluster_bits;
  if (last >= q->open_end) {
    qcow2_corrupt(q, "%s %#" PRIx64 " points past the end of the image "
                  "file", what, entry);
    return 0;
  }
  for (uint64_t c = off >> q->cluster_bits; c <= last; c++) {
    int err = qcow2_refcount_get_next(q, cur, c, refs);
    if (err)
      return err;
    if (*refs == 0) {
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
 * wrong (an interrupted snapshot creation can leave it so): it is dropped,
 * so that a write copies the cluster as it should, and the table written
 * back with the fix, as qemu-img check -r would. */
static void
drop_copied(struct qcow2 *q, struct qcow2_table *t, uint64_t i)
{
  uint64_t bitmap;
  uint64_t e = qcow2_l2_get(q, t, i, &bitmap);
  if (e & QCOW2_COPIED)
    qcow2_l2_set(q, t, i, e & ~QCOW2_COPIED, bitmap);
}

/* q->claimed: the clusters below the file's end at open that a vetted
 * table uses, or that the allocator has handed out since.  A table vetted
 * later (as it was at open) that uses one of them shares it with another
 * table, or uses a cluster that was free at open: unless the refcount
 * counts the other user, that is damage.  A bit per cluster: a third user
 * of a cluster counted twice goes unseen. */
static bool
claimed(const struct qcow2 *q, uint64_t c)
{
  return (q->claimed[c / 8] >> (c % 8)) & 1;
}

void
qcow2_claim(struct qcow2 *q, uint64_t c)
{
  if (q->claimed && c < q->open_end)
    q->claimed[c / 8] |= (uint8_t) (1u << (c % 8));
}

/* One host cluster and the entries [u, u+n) that use it.  Entries on the
 * same cluster (QEMU never makes them in the active tables: only
 * compressed clusters share, and they are not here) need a refcount of at
 * least their number, else a write to one would change the others, or a
 * free would leave the others on a free cluster. */
static int
check_cluster(struct qcow2 *q, struct qcow2_refcount_cursor *cur,
              struct qcow2_table *t, const struct use *u, uint64_t n)
{
  uint64_t bitmap, refs;
  uint64_t e = qcow2_l2_get(q, t, u->index, &bitmap);
  int err = check_counted(q, cur, u->host, q->cluster_size, "L2 entry", e,
                          &refs);
  if (err || atomic_load(&q->corrupt))
    return err;
  uint64_t c = u->host >> q->cluster_bits;
  if (refs < n) {
    qcow2_corrupt(q, "cluster %#" PRIx64 " is used by %" PRIu64 " L2 "
                  "entries but its refcount is %" PRIu64, u->host, n, refs);
    return 0;
  }
  if (claimed(q, c) && refs < n + 1) {
    qcow2_corrupt(q, "cluster %#" PRIx64 " is used by another L2 table (or "
                  "was free at open) but its refcount is %" PRIu64, u->host,
                  refs);
    return 0;
  }
  qcow2_claim(q, c);
  if (refs > 1)
    for (uint64_t k = 0; k < n; k++)
      drop_copied(q, t, u[k].index);
  return 0;
}

static int
check_refcounts(struct qcow2 *q, struct qcow2_table *t, const struct use *u,
                uint64_t k)
{
  struct qcow2_refcount_cursor cur = { .valid = false };
  uint64_t refs;
  int err = check_counted(q, &cur, t->offset, q->cluster_size, "L2 table",
                          t->offset, &refs);
  for (uint64_t i = 0, j; i < k && !err && !atomic_load(&q->corrupt);
       i = j) {
    for (j = i + 1; j < k && u[j].host == u[i].host; j++)
      ;
    err = check_cluster(q, &cur, t, u + i, j - i);
  }
  /* Compressed clusters: counted, and shared freely. */
  uint64_t n = UINT64_C(1) << q->l2_bits;
  for (uint64_t i = 0; i < n && !err && !atomic_load(&q->corrupt); i++) {
    uint64_t bitmap, host, bytes;
    uint64_t e = qcow2_l2_get(q, t, i, &bitmap);
    if (!(e & QCOW2_COMPRESSED))
      continue;
    qcow2_compressed_range(&q->h, e, &host, &bytes);
    cur.valid = false;  /* not in ascending order */
    err = check_counted(q, &cur, host, bytes, "L2 entry", e, &refs);
  }
  return err;
}

int
qcow2_vet_table(struct qcow2 *q, struct qcow2_table *t)
{
  uint64_t n = UINT64_C(1) << q->l2_bits, k = 0;
  struct use *u = malloc(n * sizeof *u);
  if (!u)
    return ENOMEM;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t bitmap;
    uint64_t e = qcow2_l2_get(q, t, i, &bitmap);
    if (!(e & QCOW2_COMPRESSED) && (e & QCOW2_OFFSET_MASK))
      u[k++] = (struct use) { e & QCOW2_OFFSET_MASK, i };
  }
  qsort(u, k, sizeof *u, cmp_use);

  /* The distinct clusters, for the overlap check. */
  uint64_t *hosts = malloc((k ? k : 1) * sizeof *hosts);
  if (!hosts) {
    free(u);
    return ENOMEM;
  }
  uint64_t nhosts = 0;
  for (uint64_t i = 0; i < k; i++)
    if (nhosts == 0 || hosts[nhosts - 1] != u[i].host)
      hosts[nhosts++] = u[i].host;
  t->suspect = qcow2_any_data_target(q, hosts, nhosts);
  free(hosts);

  int err = 0;
  if (!q->readonly && !atomic_load(&q->corrupt))
    err = check_refcounts(q, t, u, k);
  free(u);
  return err;
}

/* L1 entries that share an L2 table need a refcount of at least their
 * number, as entries of one table do: else a change to one guest range
 * would show in the other.  Checked once when a writable image opens (the
 * L1 table changes later only by this layer, to tables of its own). */
int
qcow2_vet_l1(struct qcow2 *q)
{
  uint64_t *v = malloc((q->l1_entries ? q->l1_entries : 1) * sizeof *v);
  if (!v) {
    nbds_error("qcow2: out of memory checking the L1 table");
    return -1;
  }
  uint64_t n = 0;
  for (uint64_t i = 0; i < q->l1_entries; i++) {
    uint64_t l2 = qcow2_l1_get(q, i) & QCOW2_OFFSET_MASK;
    if (l2)
      v[n++] = l2;
  }
  qsort(v, n, sizeof *v, qcow2_cmp_u64);
  int r = 0;
  for (uint64_t i = 0, j; i < n && r == 0; i = j) {
    for (j = i + 1; j < n && v[j] == v[i]; j++)
      ;
    uint64_t refs;
    if (j - i == 1)
      continue;
    if (qcow2_refcount_get(q, v[i] >> q->cluster_bits, &refs)) {
      nbds_error("qcow2: cannot read the refcount of the L2 table at %#"
                 PRIx64, v[i]);
      r = -1;
    } else if (refs < j - i) {
      nbds_error("qcow2: %" PRIu64 " L1 entries share the L2 table at %#"
                 PRIx64 " but its refcount is %" PRIu64 "; open the image "
                 "read-only, or repair it (qemu-img check -r all)", j - i,
                 v[i], refs);
      r = -1;
    }
  }
  free(v);
  return r;
}
