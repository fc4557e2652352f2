/* Opening an image: the header, the L1 table (the active one, or an
 * internal snapshot's with -l), the refcount table, and what a read-write
 * open must settle before the first write: the corrupt bit refuses it, a
 * dirty image gets its refcounts rebuilt, unknown autoclear bits are
 * cleared, persistent bitmaps are refused or marked in use. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "qcow2.h"

int
qcow2_write_header_u64(struct qcow2 *q, unsigned off, uint64_t v)
{
  uint8_t b[8];
  qcow2_put_be64(b, v);
  return qcow2_pwrite(q, b, 8, off);
}

static int
read_header(struct qcow2 *q)
{
  uint64_t file_size = q->file->size;
  uint8_t first[512] = { 0 };
  int err = qcow2_pread(q, first, sizeof first, 0);
  if (err) {
    nbds_error("qcow2: cannot read the header: %s", strerror(err));
    return -1;
  }
  uint32_t bits = qcow2_be32(first + 20);
  if (qcow2_be32(first) != QCOW2_MAGIC) {
    nbds_error("qcow2: not a qcow2 image (bad magic)");
    return -1;
  }
  if (bits < QCOW2_MIN_CLUSTER_BITS || bits > QCOW2_MAX_CLUSTER_BITS) {
    nbds_error("qcow2: unsupported cluster size 2^%" PRIu32, bits);
    return -1;
  }
  uint64_t len = UINT64_C(1) << bits;
  if (len > file_size)
    len = file_size;
  uint8_t *c0 = calloc(1, len > sizeof first ? len : sizeof first);
  if (!c0) {
    nbds_error("qcow2: out of memory");
    return -1;
  }
  err = qcow2_pread(q, c0, len, 0);
  int r = err ? -1 : qcow2_header_parse(c0, len, file_size, &q->h);
  if (err)
    nbds_error("qcow2: cannot read the header: %s", strerror(err));
  free(c0);
  return r;
}

static int
load_l1(struct qcow2 *q, uint64_t offset, uint64_t entries)
{
  q->l1_offset = offset;
  q->l1_entries = entries;
  q->l1_bytes = (entries * 8 + q->cluster_size - 1) & ~(q->cluster_size - 1);
  if (q->l1_bytes == 0)
    q->l1_bytes = q->cluster_size;
  q->l1 = calloc(1, q->l1_bytes);
  q->l1_dirty = calloc((q->l1_bytes + 4095) / 4096, 1);
  q->l2_vetted = calloc(entries ? entries : 1, 1);
  if (!q->l1 || !q->l1_dirty || !q->l2_vetted) {
    nbds_error("qcow2: out of memory for the L1 table");
    return -1;
  }
  int err = entries ? qcow2_pread(q, q->l1, q->l1_bytes, offset) : 0;
  if (err) {
    nbds_error("qcow2: cannot read the L1 table: %s", strerror(err));
    return -1;
  }
  return 0;
}

/* -l NAME: the snapshot's L1 table and size, read-only. */
static int
open_snapshot(struct qcow2 *q, const char *name)
{
  if (q->h.nb_snapshots == 0) {
    nbds_error("qcow2: the image has no snapshot '%s'", name);
    return -1;
  }
  uint64_t len = q->file->size - q->h.snapshots_offset;
  if (len > QCOW2_MAX_SNAPSHOT_TABLE_BYTES)
    len = QCOW2_MAX_SNAPSHOT_TABLE_BYTES;
  uint8_t *buf = malloc(len ? len : 1);
  if (!buf) {
    nbds_error("qcow2: out of memory for the snapshot table");
    return -1;
  }
  struct qcow2_snapshot *s = NULL;
  int err = qcow2_pread(q, buf, len, q->h.snapshots_offset);
  int r = -1;
  if (err)
    nbds_error("qcow2: cannot read the snapshot table: %s", strerror(err));
  else if (qcow2_snapshots_parse(&q->h, buf, len, q->file->size, &s) == 0) {
    const struct qcow2_snapshot *sn =
      qcow2_snapshot_find(s, q->h.nb_snapshots, name);
    if (!sn)
      nbds_error("qcow2: the image has no snapshot '%s'", name);
    else  /* as qemu-nbd: at the image's size, past the L1 unallocated */
      r = load_l1(q, sn->l1_offset, sn->l1_size);
    qcow2_snapshots_free(s, q->h.nb_snapshots);
  }
  free(buf);
  return r;
}

/* Bitmaps: set in_use in every directory entry, as a QEMU that was
 * writing would have left them (qemu-img check stays clean; QEMU refuses
 * to use them until they are removed). */
static int
mark_bitmaps_in_use(struct qcow2 *q)
{
  uint64_t len = q->h.bitmap_dir_size;
  if (len > (64u << 20) || len < 24) {
    nbds_error("qcow2: bitmap directory size %" PRIu64 " is invalid", len);
    return -1;
  }
  uint8_t *dir = malloc(len);
  if (!dir)
    return -1;
  int err = qcow2_pread(q, dir, len, q->h.bitmap_dir_offset);
  uint64_t pos = 0;
  for (uint32_t i = 0; !err && i < q->h.nb_bitmaps; i++) {
    if (pos + 24 > len) {
      err = EINVAL;
      break;
    }
    uint32_t flags = qcow2_be32(dir + pos + 12);
    qcow2_put_be32(dir + pos + 12, flags | 1);
    uint64_t entry = 24 + qcow2_be32(dir + pos + 20) +
                     qcow2_be16(dir + pos + 18);
    pos += (entry + 7) & ~UINT64_C(7);
  }
  if (!err)
    err = qcow2_pwrite(q, dir, len, q->h.bitmap_dir_offset);
  if (!err)
    err = qcow2_sync(q);
  free(dir);
  if (err) {
    nbds_error("qcow2: cannot mark the persistent bitmaps in use: %s",
               strerror(err));
    return -1;
  }
  nbds_log_info("qcow2: persistent bitmaps marked in use: they no longer "
                "track writes (qemu-img bitmap --remove them)");
  return 0;
}

/* Before the first write to a read-write image. */
static int
settle_for_writing(struct qcow2 *q)
{
  if (q->h.incompat & QCOW2_INCOMPAT_CORRUPT) {
    nbds_error("qcow2: the image is marked corrupt; it can only be opened "
               "read-only (repair it with qemu-img check -r all)");
    return -1;
  }
  bool bitmaps = q->h.nb_bitmaps > 0 &&
                 (q->h.autoclear & QCOW2_AUTOCLEAR_BITMAPS);
  if (bitmaps && !q->allow_bitmaps) {
    nbds_error("qcow2: the image has persistent bitmaps, which this server "
               "does not update; open it read-only, or pass "
               "--bitmaps=in-use to mark them in use");
    return -1;
  }
  if (q->h.incompat & QCOW2_INCOMPAT_DIRTY) {
    nbds_log_info("qcow2: the image was not closed cleanly; rebuilding "
                  "refcounts");
    if (qcow2_repair_refcounts(q) == -1)
      return -1;
  }
  if (qcow2_vet_l1(q) == -1)
    return -1;
  uint64_t keep = bitmaps ? QCOW2_AUTOCLEAR_BITMAPS : 0;
  if (q->h.autoclear & ~keep) {
    q->h.autoclear &= keep;
    if (qcow2_write_header_u64(q, QCOW2_OFF_AUTOCLEAR, q->h.autoclear) ||
        qcow2_sync(q)) {
      nbds_error("qcow2: cannot update the header");
      return -1;
    }
  }
  if (bitmaps)
    return mark_bitmaps_in_use(q);
  return 0;
}

#define DEFAULT_L2_CACHE_MAX (32u << 20)

static int
init_l2_cache(struct qcow2 *q, const char *setting)
{
  uint64_t tables = qcow2_l1_entries_needed(&q->h, q->size);
  uint64_t bytes = tables << q->cluster_bits;
  if (bytes > DEFAULT_L2_CACHE_MAX)
    bytes = DEFAULT_L2_CACHE_MAX;
  if (setting && nbds_parse_size(setting, &bytes) == -1) {
    nbds_error("qcow2: invalid l2-cache-size '%s'", setting);
    return -1;
  }
  uint64_t slots = bytes >> q->cluster_bits;
  if (slots < 4)
    slots = 4;  /* the metadata thread holds at most two at a time */
  return qcow2_cache_init(&q->l2, slots, "L2 table");
}

int
qcow2_open_image(struct qcow2 *q, const char *snapshot,
                 const char *l2_cache_size)
{
  if (read_header(q) == -1)
    return -1;
  q->cluster_bits = q->h.cluster_bits;
  q->cluster_size = q->h.cluster_size;
  q->l2_entry_size = q->h.extended_l2 ? 16 : 8;
  q->l2_bits = q->cluster_bits - (q->h.extended_l2 ? 4 : 3);
  q->subcluster_size = q->h.extended_l2 ? q->cluster_size / 32
                                        : q->cluster_size;
  q->refblock_entries = q->cluster_size * 8 >> q->h.refcount_order;
  q->size = q->h.size;
  q->end = (q->file->size + q->cluster_size - 1) >> q->cluster_bits;
  if (snapshot) {
    q->readonly = true;
    q->snapshot_view = true;
    if (open_snapshot(q, snapshot) == -1)
      return -1;
  } else if (load_l1(q, q->h.l1_offset, q->h.l1_size) == -1)
    return -1;
  if (qcow2_refcount_load(q) == -1 ||
      init_l2_cache(q, l2_cache_size) == -1)
    return -1;
  if (!q->readonly && settle_for_writing(q) == -1)
    return -1;
  q->open_end = q->end;
  if (!q->readonly) {
    q->claimed = calloc(q->open_end / 8 + 1, 1);
    if (!q->claimed) {
      nbds_error("qcow2: out of memory for the cluster map");
      return -1;
    }
  }
  return 0;
}
