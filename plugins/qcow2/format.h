/* qcow2 on disk: constants, the parsed header, snapshots, and the pure
 * functions that validate and decode them.  Nothing here does I/O: every
 * function works on bytes already read, so hostile images can be tested
 * (and fuzzed) without a file.  QEMU's docs/interop/qcow2.txt is the
 * format; the limits are QEMU's (block/qcow2.h). */
#ifndef NBDS_QCOW2_FORMAT_H
#define NBDS_QCOW2_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QCOW2_MAGIC 0x514649fbu
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21

/* QEMU's caps on what is loaded whole at open. */
#define QCOW2_MAX_L1_BYTES (32u << 20)
#define QCOW2_MAX_REFTABLE_BYTES (8u << 20)
#define QCOW2_MAX_SNAPSHOTS 65536u
#define QCOW2_MAX_SNAPSHOT_TABLE_BYTES (64u << 20)
#define QCOW2_MAX_SNAPSHOT_EXTRA 1024u
#define QCOW2_MAX_BACKING_NAME 1023u
#define QCOW2_MAX_BACKING_FORMAT 15u

/* Feature bits. */
#define QCOW2_INCOMPAT_DIRTY       (UINT64_C(1) << 0)
#define QCOW2_INCOMPAT_CORRUPT     (UINT64_C(1) << 1)
#define QCOW2_INCOMPAT_DATA_FILE   (UINT64_C(1) << 2)
#define QCOW2_INCOMPAT_COMPRESSION (UINT64_C(1) << 3)
#define QCOW2_INCOMPAT_EXTL2       (UINT64_C(1) << 4)
#define QCOW2_INCOMPAT_KNOWN       (UINT64_C(0x1f))
#define QCOW2_COMPAT_LAZY_REFCOUNTS (UINT64_C(1) << 0)
#define QCOW2_AUTOCLEAR_BITMAPS    (UINT64_C(1) << 0)

/* Header field offsets this driver rewrites. */
#define QCOW2_OFF_L1_SIZE        36   /* u32 l1_size + u64 l1_table_offset */
#define QCOW2_OFF_REFTABLE       48   /* u64 offset + u32 clusters */
#define QCOW2_OFF_INCOMPAT       72
#define QCOW2_OFF_AUTOCLEAR      88

/* Header extension types. */
#define QCOW2_EXT_END            0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE  0x6803f857u
#define QCOW2_EXT_BITMAPS        0x23852875u
#define QCOW2_EXT_CRYPTO         0x0537be77u
#define QCOW2_EXT_DATA_FILE      0x44415441u

/* L1/L2 entries. */
#define QCOW2_COPIED          (UINT64_C(1) << 63)
#define QCOW2_COMPRESSED      (UINT64_C(1) << 62)
#define QCOW2_ZERO            (UINT64_C(1) << 0)
#define QCOW2_OFFSET_MASK     UINT64_C(0x00fffffffffffe00)
#define QCOW2_L1_RESERVED     UINT64_C(0x7f000000000001ff)
#define QCOW2_L2_RESERVED     UINT64_C(0x3f000000000001fe)
#define QCOW2_REFT_RESERVED   UINT64_C(0x00000000000001ff)

/* What cluster_type() finds for a guest cluster (or subcluster). */
enum qcow2_type {
  QCOW2_UNALLOCATED,        /* backing file, else zeroes */
  QCOW2_UNALLOCATED_ALLOC,  /* ext L2: host cluster exists, this subcluster
                               is not written: backing file, else zeroes */
  QCOW2_ZERO_PLAIN,         /* zeroes, no host cluster */
  QCOW2_ZERO_ALLOC,         /* zeroes, host cluster kept for reuse */
  QCOW2_NORMAL,             /* data at the host offset */
  QCOW2_COMPRESSED_DATA,    /* decompress */
};

struct qcow2_feature_name {
  uint8_t type;   /* 0 incompatible, 1 compatible, 2 autoclear */
  uint8_t bit;
  char name[47];  /* NUL-terminated copy */
};

/* The header and its extensions, validated.  Strings are owned (free with
 * qcow2_header_free). */
struct qcow2_header {
  uint32_t version;             /* 2 or 3 */
  uint32_t cluster_bits;
  uint64_t cluster_size;
  uint64_t size;                /* virtual disk size */
  uint32_t crypt_method;
  uint32_t l1_size;
  uint64_t l1_offset;
  uint64_t reftable_offset;
  uint32_t reftable_clusters;
  uint32_t nb_snapshots;
  uint64_t snapshots_offset;
  uint64_t incompat, compat, autoclear;
  uint32_t refcount_order;      /* refcount_bits = 1 << order */
  uint32_t header_length;       /* 72 for v2 */
  uint8_t compression_type;     /* 0 zlib, 1 zstd */
  bool extended_l2;
  char *backing_file;           /* NULL: none */
  char *backing_format;         /* NULL: the extension is absent */
  /* Bitmaps extension (present iff nb_bitmaps > 0). */
  uint32_t nb_bitmaps;
  uint64_t bitmap_dir_size, bitmap_dir_offset;
  /* Where the extension with this offset's type lives, so the header can
   * be rewritten without losing unknown extensions: the byte range of
   * extensions in cluster 0. */
  uint32_t ext_start, ext_end;
  struct qcow2_feature_name *features;  /* the feature name table */
  size_t nfeatures;
};

/* Parse and validate cluster 0 (`len` bytes: the whole first cluster, or
 * the whole file when it is shorter).  `file_size` is the image file's
 * size, for checking that tables lie inside it.  On failure returns -1
 * with a one-line reason set by nbds_error() ("qcow2: ..."), naming
 * unknown incompatible features by their table name when it has one. */
int qcow2_header_parse(const uint8_t *c0, size_t len, uint64_t file_size,
                       struct qcow2_header *h);
void qcow2_header_free(struct qcow2_header *h);

/* Entries of an L2 table (8 or 16 bytes each) per cluster. */
static inline uint64_t
qcow2_l2_entries(const struct qcow2_header *h)
{
  return h->cluster_size / (h->extended_l2 ? 16 : 8);
}

/* The L1 entries the virtual size needs. */
uint64_t qcow2_l1_entries_needed(const struct qcow2_header *h, uint64_t size);

/* Check a table's placement as QEMU's qcow2_validate_table does: aligned to
 * a cluster, entries * entry_size without overflow and at most max_bytes,
 * inside the file and not in cluster 0.  `what` names it in the error. */
int qcow2_validate_table(const struct qcow2_header *h, uint64_t offset,
                         uint64_t entries, size_t entry_size,
                         uint64_t max_bytes, uint64_t file_size,
                         const char *what);

/* Decode a guest cluster's L2 entry (and, with extended L2, its bitmap
 * for subcluster `sc`) as QEMU's qcow2_get_(sub)cluster_type.  Returns -1
 * with nbds_error() when the entry is invalid (reserved bits, unaligned
 * offset, both bits of a subcluster, ...). */
int qcow2_entry_type(const struct qcow2_header *h, uint64_t entry,
                     uint64_t bitmap, unsigned sc, enum qcow2_type *type);

/* A compressed cluster descriptor: the host byte offset and how many bytes
 * to read (QEMU's qcow2_parse_compressed_l2_entry). */
void qcow2_compressed_range(const struct qcow2_header *h, uint64_t entry,
                            uint64_t *host, uint64_t *bytes);

/* Inflate one cluster: `in` holds `in_len` compressed bytes, `out` gets
 * exactly cluster_size bytes.  Returns 0, or -1 with nbds_error() when the
 * stream is invalid or does not fill the cluster. */
int qcow2_decompress(const struct qcow2_header *h, const uint8_t *in,
                     size_t in_len, uint8_t *out);

/* One internal snapshot. */
struct qcow2_snapshot {
  uint64_t l1_offset;
  uint32_t l1_size;
  uint64_t disk_size;   /* from the extra data; the image size when absent */
  char *id;
  char *name;
};

/* Parse the snapshot table (`len` bytes read from snapshots_offset, at most
 * QCOW2_MAX_SNAPSHOT_TABLE_BYTES), validating every entry: L1 placement as
 * above, lengths inside the table, v3 extra data of at least 16 bytes.
 * On success *out holds h->nb_snapshots entries. */
int qcow2_snapshots_parse(const struct qcow2_header *h, const uint8_t *buf,
                          size_t len, uint64_t file_size,
                          struct qcow2_snapshot **out);
void qcow2_snapshots_free(struct qcow2_snapshot *s, size_t n);
/* The snapshot with ID NAME, else the one named NAME, or NULL: qemu-nbd -l
 * (bdrv_snapshot_load_tmp_by_id_or_name) tries the id first. */
const struct qcow2_snapshot *qcow2_snapshot_find(
  const struct qcow2_snapshot *s, size_t n, const char *name);

/* The bytes of a new, empty image as `qemu-img create -f qcow2` makes it
 * (v3, refcount_bits 16, header_length 112, the feature name table; the
 * backing file name and its format extension when backing is not NULL):
 * header, refcount table, one refcount block, L1 table.  *out is
 * malloc'ed.  Returns -1 with nbds_error() on invalid arguments. */
int qcow2_format_new(uint64_t size, uint32_t cluster_bits,
                     const char *backing, const char *backing_format,
                     uint8_t **out, size_t *out_len);

/* Big-endian access. */
static inline uint64_t
qcow2_be64(const uint8_t *p)
{
  return ((uint64_t) p[0] << 56) | ((uint64_t) p[1] << 48) |
         ((uint64_t) p[2] << 40) | ((uint64_t) p[3] << 32) |
         ((uint64_t) p[4] << 24) | ((uint64_t) p[5] << 16) |
         ((uint64_t) p[6] << 8) | p[7];
}

static inline uint32_t
qcow2_be32(const uint8_t *p)
{
  return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) |
         ((uint32_t) p[2] << 8) | p[3];
}

static inline uint16_t
qcow2_be16(const uint8_t *p)
{
  return (uint16_t) ((p[0] << 8) | p[1]);
}

static inline void
qcow2_put_be64(uint8_t *p, uint64_t v)
{
  for (int i = 7; i >= 0; i--, v >>= 8)
    p[i] = (uint8_t) v;
}

static inline void
qcow2_put_be32(uint8_t *p, uint32_t v)
{
  for (int i = 3; i >= 0; i--, v >>= 8)
    p[i] = (uint8_t) v;
}

#endif
