/* The bytes of a new, empty image, laid out as qemu-img 7.2's
 * `qemu-img create -f qcow2` lays them out (observed and compared byte by
 * byte in tests/unit/test-qcow2-format.c):
 *
 *   cluster 0   header (v3, header_length 112), extensions, backing name
 *   cluster 1   refcount table (one cluster)
 *   cluster 2   refcount block 0 (16-bit refcounts)
 *   cluster 3   L1 table, l1_size * 8 bytes (none when l1_size is 0)
 *   after it    further refcount blocks, when the L1 table reaches past
 *               what block 0 covers (only with small clusters)
 *
 * The file ends right after the L1 entries (QEMU writes only those), or
 * after the last refcount block.  Every cluster in use has refcount 1.
 *
 * Intentional limit: QEMU grows the refcount table when one cluster of it
 * cannot describe the L1 table (512-byte clusters and sizes above about
 * 32 GiB); we refuse those instead of copying that algorithm. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "nbdstack/layer.h"
#include "format.h"

#define HEADER_LENGTH 112
#define REFCOUNT_ORDER 4
#define FEATURE_ENTRY_SIZE 48
/* qemu-img 7.2 writes the feature name table only above 4 KiB clusters
 * (observed: 512..4096 have none, 8192 and up have it). */
#define FEATURE_TABLE_MIN_CLUSTER 8192

static const struct { uint8_t type, bit; const char *name; } qemu_features[] = {
  { 0, 0, "dirty bit" },
  { 0, 1, "corrupt bit" },
  { 0, 2, "external data file" },
  { 0, 3, "compression type" },
  { 0, 4, "extended L2 entries" },
  { 1, 0, "lazy refcounts" },
  { 2, 0, "bitmaps" },
  { 2, 1, "raw external data" },
};
#define NFEATURES (sizeof qemu_features / sizeof qemu_features[0])

/* Where the refcount blocks go.  QEMU allocates a missing block at the
 * first free cluster; when that cluster is not in the block's own range,
 * the cluster's own refcount first needs its block (recursively). */
struct layout {
  uint64_t cluster_size;
  uint64_t per_block;       /* refcounts per block */
  uint64_t reftable_len;    /* entries in the one-cluster table */
  uint64_t next_free;       /* first unused cluster */
  uint64_t *refblock;       /* cluster index of block r, 0: none yet */
};

static int
ensure_refblock(struct layout *lo, uint64_t r)
{
  uint64_t nb;

  if (r >= lo->reftable_len) {
    nbds_error("qcow2: the virtual size needs a refcount table larger than "
               "one cluster with %" PRIu64 "-byte clusters (not supported)",
               lo->cluster_size);
    return -1;
  }
  if (lo->refblock[r])
    return 0;
  nb = lo->next_free++;
  if (nb / lo->per_block != r && ensure_refblock(lo, nb / lo->per_block) == -1)
    return -1;
  lo->refblock[r] = nb;
  return 0;
}

static int
plan_layout(struct layout *lo, uint64_t l1_clusters)
{
  lo->per_block = lo->cluster_size * 8 / (1u << REFCOUNT_ORDER);
  lo->reftable_len = lo->cluster_size / 8;
  lo->refblock = calloc(lo->reftable_len, sizeof *lo->refblock);
  if (!lo->refblock) {
    nbds_error("qcow2: out of memory");
    return -1;
  }
  lo->refblock[0] = 2;
  lo->next_free = 3 + l1_clusters;
  for (uint64_t c = 3; c < 3 + l1_clusters; c++)
    if (ensure_refblock(lo, c / lo->per_block) == -1)
      return -1;
  return 0;
}

/* One extension: type, length, data padded to 8.  Returns the new end. */
static size_t
put_extension(uint8_t *c0, size_t pos, uint32_t type, const void *data,
              uint32_t len)
{
  qcow2_put_be32(c0 + pos, type);
  qcow2_put_be32(c0 + pos + 4, len);
  if (len)
    memcpy(c0 + pos + 8, data, len);
  return pos + 8 + ((len + 7) & ~7u);
}

static void
put_feature_table(uint8_t *c0, size_t *pos)
{
  uint8_t table[NFEATURES * FEATURE_ENTRY_SIZE] = { 0 };

  for (size_t i = 0; i < NFEATURES; i++) {
    uint8_t *e = table + i * FEATURE_ENTRY_SIZE;
    e[0] = qemu_features[i].type;
    e[1] = qemu_features[i].bit;
    memcpy(e + 2, qemu_features[i].name, strlen(qemu_features[i].name));
  }
  *pos = put_extension(c0, *pos, QCOW2_EXT_FEATURE_TABLE, table, sizeof table);
}

/* Extensions and the backing name; the caller checked they fit. */
static void
put_cluster0_tail(uint8_t *c0, uint64_t cluster_size, const char *backing,
                  const char *backing_format)
{
  size_t pos = HEADER_LENGTH;

  if (backing)
    pos = put_extension(c0, pos, QCOW2_EXT_BACKING_FORMAT, backing_format,
                        strlen(backing_format));
  if (cluster_size >= FEATURE_TABLE_MIN_CLUSTER)
    put_feature_table(c0, &pos);
  pos += 8;  /* the end marker: zeroes */
  if (backing) {
    qcow2_put_be64(c0 + 8, pos);
    qcow2_put_be32(c0 + 16, strlen(backing));
    memcpy(c0 + pos, backing, strlen(backing));
  }
}

static void
put_header(uint8_t *c0, uint32_t cluster_bits, uint64_t size,
           uint32_t l1_size)
{
  uint64_t cluster_size = UINT64_C(1) << cluster_bits;

  qcow2_put_be32(c0, QCOW2_MAGIC);
  qcow2_put_be32(c0 + 4, 3);
  qcow2_put_be32(c0 + 20, cluster_bits);
  qcow2_put_be64(c0 + 24, size);
  qcow2_put_be32(c0 + QCOW2_OFF_L1_SIZE, l1_size);
  qcow2_put_be64(c0 + QCOW2_OFF_L1_SIZE + 4, l1_size ? 3 * cluster_size : 0);
  qcow2_put_be64(c0 + QCOW2_OFF_REFTABLE, cluster_size);
  qcow2_put_be32(c0 + QCOW2_OFF_REFTABLE + 8, 1);
  qcow2_put_be32(c0 + 96, REFCOUNT_ORDER);
  qcow2_put_be32(c0 + 100, HEADER_LENGTH);
}

static void
put_refcounts(uint8_t *buf, const struct layout *lo)
{
  uint64_t cs = lo->cluster_size;

  for (uint64_t r = 0; r < lo->reftable_len; r++)
    if (lo->refblock[r])
      qcow2_put_be64(buf + cs + 8 * r, lo->refblock[r] * cs);
  for (uint64_t c = 0; c < lo->next_free; c++) {
    uint8_t *block = buf + lo->refblock[c / lo->per_block] * cs;
    uint8_t *e = block + 2 * (c % lo->per_block);
    e[0] = 0;
    e[1] = 1;
  }
}

static int
check_args(uint32_t cluster_bits, const char *backing,
           const char *backing_format)
{
  uint64_t cluster_size, need;

  if (cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
      cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
    nbds_error("qcow2: cluster size must be 512 bytes .. 2 MiB "
               "(cluster_bits %" PRIu32 ")", cluster_bits);
    return -1;
  }
  if (!backing != !backing_format) {
    nbds_error("qcow2: a backing file needs a backing format and the "
               "reverse");
    return -1;
  }
  if (!backing)
    return 0;
  if (strlen(backing) == 0 || strlen(backing) > QCOW2_MAX_BACKING_NAME) {
    nbds_error("qcow2: backing file name must be 1..1023 bytes");
    return -1;
  }
  if (strlen(backing_format) == 0 ||
      strlen(backing_format) > QCOW2_MAX_BACKING_FORMAT) {
    nbds_error("qcow2: backing format name must be 1..15 bytes");
    return -1;
  }
  cluster_size = UINT64_C(1) << cluster_bits;
  need = HEADER_LENGTH + 8 + 16 + 8 + strlen(backing);
  if (cluster_size >= FEATURE_TABLE_MIN_CLUSTER)
    need += 8 + NFEATURES * FEATURE_ENTRY_SIZE;
  if (need > cluster_size) {
    nbds_error("qcow2: backing file name too long for %" PRIu64
               "-byte clusters", cluster_size);
    return -1;
  }
  return 0;
}

/* qemu-img rounds the size up to whole sectors. */
static int
l1_for_size(uint32_t cluster_bits, uint64_t *size, uint32_t *l1_size)
{
  struct qcow2_header geometry = { .cluster_bits = cluster_bits };
  uint64_t needed;

  if (*size > INT64_MAX - 511) {
    nbds_error("qcow2: virtual size %" PRIu64 " too large", *size);
    return -1;
  }
  *size = (*size + 511) & ~UINT64_C(511);
  needed = qcow2_l1_entries_needed(&geometry, *size);
  if (needed > QCOW2_MAX_L1_BYTES / 8) {
    nbds_error("qcow2: virtual size %" PRIu64 " too large for %" PRIu64
               "-byte clusters (L1 table over 32 MiB)", *size,
               UINT64_C(1) << cluster_bits);
    return -1;
  }
  *l1_size = (uint32_t) needed;
  return 0;
}

int
qcow2_format_new(uint64_t size, uint32_t cluster_bits,
                 const char *backing, const char *backing_format,
                 uint8_t **out, size_t *out_len)
{
  struct layout lo = { 0 };
  uint32_t l1_size;
  uint64_t l1_bytes, l1_clusters, len;
  uint8_t *buf;
  int r = -1;

  if (check_args(cluster_bits, backing, backing_format) == -1 ||
      l1_for_size(cluster_bits, &size, &l1_size) == -1)
    return -1;
  lo.cluster_size = UINT64_C(1) << cluster_bits;
  l1_bytes = (uint64_t) l1_size * 8;
  l1_clusters = (l1_bytes + lo.cluster_size - 1) >> cluster_bits;
  if (plan_layout(&lo, l1_clusters) == -1)
    goto out;

  len = 3 * lo.cluster_size + l1_bytes;
  if (lo.next_free > 3 + l1_clusters)  /* refcount blocks after the L1 */
    len = lo.next_free * lo.cluster_size;
  buf = calloc(1, len);
  if (!buf) {
    nbds_error("qcow2: out of memory");
    goto out;
  }
  put_header(buf, cluster_bits, size, l1_size);
  put_cluster0_tail(buf, lo.cluster_size, backing, backing_format);
  put_refcounts(buf, &lo);
  *out = buf;
  *out_len = len;
  r = 0;
out:
  free(lo.refblock);
  return r;
}
