/* qcow2 header parsing and validation (QEMU's qcow2_do_open and
 * qcow2_read_extensions, without the I/O).  Cluster 0 may come from a
 * hostile file: every read is bounds-checked against the buffer, every
 * size computation against overflow. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdstack/layer.h"
#include "format.h"

#define V2_HEADER_LENGTH 72
#define V3_MIN_HEADER_LENGTH 104
#define SNAPSHOT_HEADER_SIZE 40          /* fixed part of a table entry */
#define FEATURE_ENTRY_SIZE 48
#define BITMAPS_EXT_SIZE 24
#define MAX_BITMAPS 65535u
#define MAX_BITMAP_DIRECTORY (64u << 20)

void
qcow2_header_free(struct qcow2_header *h)
{
  free(h->backing_file);
  free(h->backing_format);
  free(h->features);
  h->backing_file = h->backing_format = NULL;
  h->features = NULL;
  h->nfeatures = 0;
}

uint64_t
qcow2_l1_entries_needed(const struct qcow2_header *h, uint64_t size)
{
  /* One L1 entry maps cluster_size * l2_entries bytes: at most 2^39. */
  unsigned shift = h->cluster_bits + (h->cluster_bits - (h->extended_l2 ? 4 : 3));
  uint64_t span_mask = (UINT64_C(1) << shift) - 1;

  return (size >> shift) + ((size & span_mask) != 0);
}

int
qcow2_validate_table(const struct qcow2_header *h, uint64_t offset,
                     uint64_t entries, size_t entry_size,
                     uint64_t max_bytes, uint64_t file_size,
                     const char *what)
{
  uint64_t bytes, end;

  if (offset & (h->cluster_size - 1)) {
    nbds_error("qcow2: %s offset 0x%" PRIx64 " is not cluster-aligned",
               what, offset);
    return -1;
  }
  if (entries > max_bytes / entry_size) {
    nbds_error("qcow2: %s too large (%" PRIu64 " entries, at most %" PRIu64
               " bytes)", what, entries, max_bytes);
    return -1;
  }
  if (entries == 0)
    return 0;
  bytes = entries * entry_size;
  if (offset < h->cluster_size) {
    nbds_error("qcow2: %s at offset 0x%" PRIx64 " overlaps the header",
               what, offset);
    return -1;
  }
  if (__builtin_add_overflow(offset, bytes, &end) || end > INT64_MAX ||
      end > file_size) {
    nbds_error("qcow2: %s at 0x%" PRIx64 " (%" PRIu64 " bytes) lies beyond "
               "the end of the file (%" PRIu64 " bytes)",
               what, offset, bytes, file_size);
    return -1;
  }
  return 0;
}

/* The fixed fields.  The caller has checked that `len` covers them. */
static void
read_fixed_fields(const uint8_t *c0, struct qcow2_header *h)
{
  h->size = qcow2_be64(c0 + 24);
  h->crypt_method = qcow2_be32(c0 + 32);
  h->l1_size = qcow2_be32(c0 + 36);
  h->l1_offset = qcow2_be64(c0 + 40);
  h->reftable_offset = qcow2_be64(c0 + QCOW2_OFF_REFTABLE);
  h->reftable_clusters = qcow2_be32(c0 + QCOW2_OFF_REFTABLE + 8);
  h->nb_snapshots = qcow2_be32(c0 + 60);
  h->snapshots_offset = qcow2_be64(c0 + 64);
  if (h->version == 2) {
    h->refcount_order = 4;
    h->header_length = V2_HEADER_LENGTH;
    return;
  }
  h->incompat = qcow2_be64(c0 + QCOW2_OFF_INCOMPAT);
  h->compat = qcow2_be64(c0 + 80);
  h->autoclear = qcow2_be64(c0 + QCOW2_OFF_AUTOCLEAR);
  h->refcount_order = qcow2_be32(c0 + 96);
  /* header_length was read and checked already.  Fields at or beyond it
   * are absent (0). */
  if (h->header_length > 104)
    h->compression_type = c0[104];
  h->extended_l2 = (h->incompat & QCOW2_INCOMPAT_EXTL2) != 0;
}

static int
check_version_and_geometry(const uint8_t *c0, size_t len,
                           struct qcow2_header *h)
{
  if (len < V2_HEADER_LENGTH) {
    nbds_error("qcow2: file too short for a qcow2 header (%zu bytes)", len);
    return -1;
  }
  if (qcow2_be32(c0) != QCOW2_MAGIC) {
    nbds_error("qcow2: bad magic 0x%08" PRIx32 " (not a qcow2 image)",
               qcow2_be32(c0));
    return -1;
  }
  h->version = qcow2_be32(c0 + 4);
  if (h->version != 2 && h->version != 3) {
    nbds_error("qcow2: unsupported qcow2 version %" PRIu32, h->version);
    return -1;
  }
  h->cluster_bits = qcow2_be32(c0 + 20);
  if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
      h->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
    nbds_error("qcow2: unsupported cluster size (cluster_bits %" PRIu32
               ", must be 9..21)", h->cluster_bits);
    return -1;
  }
  h->cluster_size = UINT64_C(1) << h->cluster_bits;
  if (h->version == 2)
    return 0;

  if (len < V3_MIN_HEADER_LENGTH) {
    nbds_error("qcow2: file too short for a version 3 header (%zu bytes)",
               len);
    return -1;
  }
  h->header_length = qcow2_be32(c0 + 100);
  if (h->header_length < V3_MIN_HEADER_LENGTH) {
    nbds_error("qcow2: header_length %" PRIu32 " too short (at least 104)",
               h->header_length);
    return -1;
  }
  if (h->header_length % 8) {
    nbds_error("qcow2: header_length %" PRIu32 " is not a multiple of 8",
               h->header_length);
    return -1;
  }
  if (h->header_length > h->cluster_size) {
    nbds_error("qcow2: header_length %" PRIu32 " exceeds the cluster size",
               h->header_length);
    return -1;
  }
  if (h->header_length > len) {
    nbds_error("qcow2: file truncated inside the header (%zu of %" PRIu32
               " bytes)", len, h->header_length);
    return -1;
  }
  return 0;
}

/* A string of `n` bytes at c0[off] (no NUL inside), or NULL with an
 * error.  The caller has bounds-checked it. */
static char *
copy_name(const uint8_t *p, size_t n, const char *what)
{
  char *s;

  if (memchr(p, 0, n)) {
    nbds_error("qcow2: %s contains a NUL byte", what);
    return NULL;
  }
  s = malloc(n + 1);
  if (!s) {
    nbds_error("qcow2: out of memory");
    return NULL;
  }
  memcpy(s, p, n);
  s[n] = '\0';
  return s;
}

static int
parse_backing_name(const uint8_t *c0, size_t len, struct qcow2_header *h)
{
  uint64_t off = qcow2_be64(c0 + 8);
  uint32_t n = qcow2_be32(c0 + 16);

  if (off == 0)
    return 0;
  if (off > h->cluster_size) {
    nbds_error("qcow2: invalid backing file offset 0x%" PRIx64
               " (beyond cluster 0)", off);
    return -1;
  }
  if (n > QCOW2_MAX_BACKING_NAME || n > h->cluster_size - off) {
    nbds_error("qcow2: backing file name too long (%" PRIu32 " bytes at "
               "offset %" PRIu64 ")", n, off);
    return -1;
  }
  if (off < h->header_length) {
    nbds_error("qcow2: backing file name at offset %" PRIu64
               " overlaps the header", off);
    return -1;
  }
  if (off + n > len) {
    nbds_error("qcow2: file truncated inside the backing file name");
    return -1;
  }
  if (n == 0)  /* QEMU: an empty name is no backing file */
    return 0;
  h->backing_file = copy_name(c0 + off, n, "backing file name");
  return h->backing_file ? 0 : -1;
}

static int
parse_feature_table(const uint8_t *p, uint32_t n, struct qcow2_header *h)
{
  size_t count = n / FEATURE_ENTRY_SIZE;   /* QEMU ignores a remainder */

  h->features = calloc(count ? count : 1, sizeof *h->features);
  if (!h->features) {
    nbds_error("qcow2: out of memory");
    return -1;
  }
  for (size_t i = 0; i < count; i++, p += FEATURE_ENTRY_SIZE) {
    h->features[i].type = p[0];
    h->features[i].bit = p[1];
    memcpy(h->features[i].name, p + 2, FEATURE_ENTRY_SIZE - 2);
    h->features[i].name[FEATURE_ENTRY_SIZE - 2] = '\0';
  }
  h->nfeatures = count;
  return 0;
}

static int
parse_bitmaps_ext(const uint8_t *p, uint32_t n, struct qcow2_header *h)
{
  uint32_t nb;

  if (n != BITMAPS_EXT_SIZE) {
    nbds_error("qcow2: bitmaps extension has invalid length %" PRIu32
               " (must be 24)", n);
    return -1;
  }
  /* Without the autoclear bit the extension is stale: a program that
   * does not know bitmaps wrote the image.  QEMU ignores it too. */
  if (!(h->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
    return 0;
  nb = qcow2_be32(p);
  if (nb == 0 || nb > MAX_BITMAPS) {
    nbds_error("qcow2: bitmaps extension: invalid number of bitmaps %"
               PRIu32, nb);
    return -1;
  }
  if (qcow2_be32(p + 4) != 0) {
    nbds_error("qcow2: bitmaps extension: reserved field is not zero");
    return -1;
  }
  h->bitmap_dir_size = qcow2_be64(p + 8);
  h->bitmap_dir_offset = qcow2_be64(p + 16);
  if (h->bitmap_dir_size > MAX_BITMAP_DIRECTORY) {
    nbds_error("qcow2: bitmaps extension: directory too large (%" PRIu64
               " bytes)", h->bitmap_dir_size);
    return -1;
  }
  if (h->bitmap_dir_offset & (h->cluster_size - 1)) {
    nbds_error("qcow2: bitmaps extension: directory offset 0x%" PRIx64
               " is not cluster-aligned", h->bitmap_dir_offset);
    return -1;
  }
  h->nb_bitmaps = nb;
  return 0;
}

static int
duplicate(uint32_t type)
{
  nbds_error("qcow2: header extension 0x%08" PRIx32 " appears twice", type);
  return -1;
}

static int
parse_extension(uint32_t type, const uint8_t *p, uint32_t n,
                struct qcow2_header *h)
{
  /* Known types are checked here, before they allocate; the rest after
   * the walk. */
  if ((type == QCOW2_EXT_BACKING_FORMAT && h->backing_format) ||
      (type == QCOW2_EXT_FEATURE_TABLE && h->features))
    return duplicate(type);
  switch (type) {
  case QCOW2_EXT_BACKING_FORMAT:
    if (n > QCOW2_MAX_BACKING_FORMAT) {
      nbds_error("qcow2: backing format name too long (%" PRIu32
                 " bytes, at most 15)", n);
      return -1;
    }
    h->backing_format = copy_name(p, n, "backing format");
    return h->backing_format ? 0 : -1;
  case QCOW2_EXT_FEATURE_TABLE:
    return parse_feature_table(p, n, h);
  case QCOW2_EXT_BITMAPS:
    return parse_bitmaps_ext(p, n, h);
  case QCOW2_EXT_CRYPTO:
    nbds_error("qcow2: encryption header extension found "
               "(encrypted images are not supported)");
    return -1;
  default:  /* unknown (or the data file name: bit 2 is refused) */
    return 0;
  }
}

static int
compare_u32(const void *a, const void *b)
{
  uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;
  return (x > y) - (x < y);
}

/* No extension type twice.  Sorting keeps it O(n log n): a 2 MiB
 * cluster 0 can hold 262144 empty extensions. */
static int
check_duplicates(uint32_t *types, size_t n)
{
  qsort(types, n, sizeof *types, compare_u32);
  for (size_t i = 1; i < n; i++) {
    if (types[i] == types[i - 1])
      return duplicate(types[i]);
  }
  return 0;
}

/* Walk the extensions in [ext_start, end), where end is the backing file
 * name or the end of cluster 0.  ext_end is set past the end marker (or
 * to where the area ends without one). */
static int
walk_extensions(const uint8_t *c0, size_t len, struct qcow2_header *h)
{
  uint64_t backing_off = qcow2_be64(c0 + 8);
  uint64_t end = backing_off ? backing_off : h->cluster_size;
  uint64_t pos = h->header_length;
  uint32_t *types;
  size_t ntypes = 0;
  int r = -1;

  types = malloc((h->cluster_size / 8) * sizeof *types);
  if (!types) {
    nbds_error("qcow2: out of memory");
    return -1;
  }
  h->ext_start = h->header_length;
  while (pos < end) {
    uint32_t type, n;

    if (end - pos < 8 || pos + 8 > len) {
      nbds_error("qcow2: header extension at offset %" PRIu64 " is "
                 "truncated", pos);
      goto out;
    }
    type = qcow2_be32(c0 + pos);
    n = qcow2_be32(c0 + pos + 4);
    pos += 8;
    if (type == QCOW2_EXT_END)
      break;
    if (n > end - pos) {
      nbds_error("qcow2: header extension too large (type 0x%08" PRIx32
                 ", %" PRIu32 " bytes, %" PRIu64 " left)", type, n, end - pos);
      goto out;
    }
    if (pos + n > len) {
      nbds_error("qcow2: file truncated inside header extension 0x%08"
                 PRIx32, type);
      goto out;
    }
    types[ntypes++] = type;
    if (parse_extension(type, c0 + pos, n, h) == -1)
      goto out;
    pos += ((uint64_t) n + 7) & ~UINT64_C(7);
  }
  h->ext_end = pos < end ? pos : end;
  r = check_duplicates(types, ntypes);
out:
  free(types);
  return r;
}

/* "qcow2: unsupported incompatible feature(s): NAME, bit 9" */
static void
report_unknown_features(const struct qcow2_header *h, uint64_t bits)
{
  char buf[480];
  size_t used = 0;

  buf[0] = '\0';
  for (unsigned bit = 0; bit < 64; bit++) {
    const char *name = NULL;
    int n;

    if (!(bits & (UINT64_C(1) << bit)))
      continue;
    for (size_t i = 0; i < h->nfeatures && !name; i++)
      if (h->features[i].type == 0 && h->features[i].bit == bit &&
          h->features[i].name[0])
        name = h->features[i].name;
    if (name)
      n = snprintf(buf + used, sizeof buf - used, "%s%s",
                   used ? ", " : "", name);
    else
      n = snprintf(buf + used, sizeof buf - used, "%sbit %u",
                   used ? ", " : "", bit);
    if (n < 0 || (size_t) n >= sizeof buf - used)
      break;  /* the message is cut, which is fine */
    used += n;
  }
  nbds_error("qcow2: unsupported incompatible feature(s): %s", buf);
}

static int
check_features(const struct qcow2_header *h)
{
  uint64_t unknown = h->incompat & ~QCOW2_INCOMPAT_KNOWN;

  if (unknown) {
    report_unknown_features(h, unknown);
    return -1;
  }
  if (h->incompat & QCOW2_INCOMPAT_DATA_FILE) {
    nbds_error("qcow2: external data files are not supported");
    return -1;
  }
  if (h->crypt_method != 0) {
    nbds_error("qcow2: encrypted images are not supported (crypt_method %"
               PRIu32 ")", h->crypt_method);
    return -1;
  }
  if (h->compression_type > 1) {
    nbds_error("qcow2: unknown compression type %u", h->compression_type);
    return -1;
  }
  if (h->compression_type != 0 &&
      !(h->incompat & QCOW2_INCOMPAT_COMPRESSION)) {
    nbds_error("qcow2: compression type %u without the compression type "
               "feature bit", h->compression_type);
    return -1;
  }
  if (h->compression_type == 0 && (h->incompat & QCOW2_INCOMPAT_COMPRESSION)) {
    nbds_error("qcow2: compression type feature bit set with zlib "
               "compression");
    return -1;
  }
  if (h->refcount_order > 6) {
    nbds_error("qcow2: refcount width too large (refcount_order %" PRIu32
               ")", h->refcount_order);
    return -1;
  }
  if (h->extended_l2 && h->cluster_bits < 14) {
    nbds_error("qcow2: extended L2 entries need clusters of at least 16 KiB "
               "(cluster_bits %" PRIu32 ")", h->cluster_bits);
    return -1;
  }
  return 0;
}

static int
check_tables(const struct qcow2_header *h, uint64_t file_size)
{
  uint64_t needed;

  /* NBD sizes and host offsets are signed 64-bit further up. */
  if (h->size > INT64_MAX) {
    nbds_error("qcow2: image is too big (virtual size %" PRIu64 ")", h->size);
    return -1;
  }
  needed = qcow2_l1_entries_needed(h, h->size);
  if (needed > INT32_MAX) {
    nbds_error("qcow2: image is too big (virtual size %" PRIu64 ")", h->size);
    return -1;
  }
  if (h->reftable_clusters == 0) {
    nbds_error("qcow2: image has no refcount table "
               "(refcount_table_clusters is 0)");
    return -1;
  }
  if (qcow2_validate_table(h, h->reftable_offset, h->reftable_clusters,
                           h->cluster_size, QCOW2_MAX_REFTABLE_BYTES,
                           file_size, "refcount table") == -1)
    return -1;
  if (qcow2_validate_table(h, h->snapshots_offset, h->nb_snapshots,
                           SNAPSHOT_HEADER_SIZE,
                           SNAPSHOT_HEADER_SIZE * QCOW2_MAX_SNAPSHOTS,
                           file_size, "snapshot table") == -1)
    return -1;
  if (qcow2_validate_table(h, h->l1_offset, h->l1_size, 8,
                           QCOW2_MAX_L1_BYTES, file_size, "L1 table") == -1)
    return -1;
  if (h->l1_size < needed) {
    nbds_error("qcow2: L1 table is too small (%" PRIu32 " entries, the "
               "virtual size needs %" PRIu64 ")", h->l1_size, needed);
    return -1;
  }
  return 0;
}

int
qcow2_header_parse(const uint8_t *c0, size_t len, uint64_t file_size,
                   struct qcow2_header *h)
{
  memset(h, 0, sizeof *h);
  if (check_version_and_geometry(c0, len, h) == -1)
    return -1;
  read_fixed_fields(c0, h);
  if (parse_backing_name(c0, len, h) == -1 ||
      walk_extensions(c0, len, h) == -1 ||
      check_features(h) == -1 ||
      check_tables(h, file_size) == -1) {
    qcow2_header_free(h);
    return -1;
  }
  return 0;
}
