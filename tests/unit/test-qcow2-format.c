/* Unit tests for the qcow2 on-disk format code (plugins/qcow2/format.h):
 * images made by qemu-img/qemu-io 7.2 must parse to what `qemu-img info`
 * says, every compressed cluster must inflate to the source data, hostile
 * images (iotest 080's pokes and more) must be refused with a clear
 * message, and qcow2_format_new must write what qemu-img create writes. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "qcow2-harness.h"

TestSuite(qcow2, .init = setup, .fini = teardown, .timeout = 300);

/* ---- valid images against qemu-img info ---- */

Test(qcow2, default_image)
{
  struct qcow2_header h;
  size_t len;
  uint8_t *buf;
  char *js;

  SH_OK("qemu-img create -q -f qcow2 a.qcow2 1G");
  SH_OK("qemu-img bitmap --add a.qcow2 b0 && qemu-img bitmap --add a.qcow2 b1");
  buf = parse_image("a.qcow2", &h, &len);
  js = info("a.qcow2");
  cr_assert_eq(h.size, json_u64(js, "virtual-size"));
  cr_assert_eq(h.cluster_size, json_u64(js, "cluster-size"));
  cr_assert_eq(1u << h.refcount_order, json_u64(js, "refcount-bits"));
  cr_assert(h.version == 3 && h.header_length == 112);
  cr_assert_eq(h.l1_size, 2);
  cr_assert_eq(h.l1_offset, 0x30000);
  cr_assert(h.reftable_offset == 0x10000 && h.reftable_clusters == 1);
  cr_assert(h.compression_type == 0 && !h.extended_l2);
  cr_assert(!h.backing_file && !h.backing_format);
  cr_assert_eq(h.nfeatures, 8);
  cr_assert_str_eq(h.features[0].name, "dirty bit");
  cr_assert_str_eq(h.features[7].name, "raw external data");
  cr_assert_eq(h.features[7].type, 2);
  cr_assert_eq(h.ext_start, 112);
  /* Feature table, bitmaps extension, end marker. */
  cr_assert_eq(h.ext_end, 0x70 + 8 + 0x180 + 8 + 24 + 8);
  cr_assert(h.autoclear & QCOW2_AUTOCLEAR_BITMAPS);
  cr_assert_eq(h.nb_bitmaps, 2);
  cr_assert_gt(h.bitmap_dir_size, 0);
  cr_assert_eq(h.bitmap_dir_offset % h.cluster_size, 0);
  cr_assert_eq(qcow2_l1_entries_needed(&h, h.size), 2);
  qcow2_header_free(&h);
  free(buf);
  free(js);
}

Test(qcow2, all_geometries)
{
  static const char *const sizes[] = { "512", "4k", "64k", "2M" };

  for (int c = 0; c < 4; c++) {
    for (int order = 0; order <= 6; order++) {
      struct qcow2_header h;
      size_t len;
      uint8_t *buf;
      char *js;

      SH_OK("rm -f g.qcow2 && qemu-img create -q -f qcow2 -o cluster_size=%s,"
            "refcount_bits=%d g.qcow2 16M", sizes[c], 1 << order);
      buf = parse_image("g.qcow2", &h, &len);
      js = info("g.qcow2");
      cr_assert_eq(h.cluster_size, json_u64(js, "cluster-size"));
      cr_assert_eq(h.refcount_order, (uint32_t) order);
      cr_assert_eq(1u << h.refcount_order, json_u64(js, "refcount-bits"));
      cr_assert_eq(h.size, json_u64(js, "virtual-size"));
      cr_assert_geq(h.l1_size, qcow2_l1_entries_needed(&h, h.size));
      /* qemu-img writes the feature table only above 4 KiB clusters. */
      cr_assert_eq(h.nfeatures, h.cluster_size > 4096 ? 8 : 0);
      qcow2_header_free(&h);
      free(buf);
      free(js);
    }
  }
}

Test(qcow2, version2_image)
{
  struct qcow2_header h;
  size_t len;
  uint8_t *buf;
  char *js;

  SH_OK("qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 100M");
  buf = parse_image("v2.qcow2", &h, &len);
  js = info("v2.qcow2");
  cr_assert_eq(h.version, 2);
  cr_assert(strstr(js, "\"compat\": \"0.10\""));
  cr_assert_eq(h.header_length, 72);
  cr_assert_eq(h.ext_start, 72);
  cr_assert_eq(h.refcount_order, 4);
  cr_assert_eq(h.incompat | h.compat | h.autoclear, 0);
  cr_assert_eq(h.size, json_u64(js, "virtual-size"));
  qcow2_header_free(&h);
  free(buf);
  free(js);
}

Test(qcow2, extended_l2_zstd_lazy_backing)
{
  struct qcow2_header h;
  size_t len;
  uint8_t *buf;
  char *js;
  char v[64];

  SH_OK("qemu-img create -q -f raw base.raw 64M");
  SH_OK("qemu-img create -q -f qcow2 -b base.raw -F raw -o extended_l2=on,"
        "cluster_size=128k,compression_type=zstd,lazy_refcounts=on e.qcow2");
  /* A crash with lazy refcounts leaves the dirty bit: parsed, not refused. */
  sh("qemu-io -c 'write -P 7 0 64k' -c abort e.qcow2 >/dev/null 2>&1");
  buf = parse_image("e.qcow2", &h, &len);
  js = info("e.qcow2");
  cr_assert(h.extended_l2);
  cr_assert(strstr(js, "\"extended-l2\": true"));
  cr_assert_eq(h.compression_type, 1);
  json_get(js, "compression-type", v, sizeof v);
  cr_assert_str_eq(v, "zstd");
  cr_assert_eq(h.incompat, QCOW2_INCOMPAT_COMPRESSION | QCOW2_INCOMPAT_EXTL2 |
               QCOW2_INCOMPAT_DIRTY);
  cr_assert_eq(h.compat, QCOW2_COMPAT_LAZY_REFCOUNTS);
  json_get(js, "backing-filename", v, sizeof v);
  cr_assert_str_eq(h.backing_file, v);
  json_get(js, "backing-filename-format", v, sizeof v);
  cr_assert_str_eq(h.backing_format, v);
  cr_assert_eq(qcow2_l2_entries(&h), 8192);
  cr_assert_eq(h.size, json_u64(js, "virtual-size"));
  qcow2_header_free(&h);
  free(buf);
  free(js);
}

/* ---- snapshots ---- */

static struct qcow2_snapshot *
parse_snapshots(const uint8_t *buf, size_t len, const struct qcow2_header *h)
{
  struct qcow2_snapshot *s;
  size_t n = len - h->snapshots_offset;

  if (n > QCOW2_MAX_SNAPSHOT_TABLE_BYTES)
    n = QCOW2_MAX_SNAPSHOT_TABLE_BYTES;
  cr_assert_eq(qcow2_snapshots_parse(h, buf + h->snapshots_offset, n, len,
                                     &s), 0, "%s", nbds_last_error());
  return s;
}

Test(qcow2, snapshot_table)
{
  struct qcow2_header h;
  struct qcow2_snapshot *s;
  size_t len;
  uint8_t *buf;
  char *list;

  SH_OK("qemu-img create -q -f qcow2 sn.qcow2 16M");
  SH_OK("qemu-io -c 'write -P 1 0 64k' sn.qcow2 >/dev/null");
  SH_OK("qemu-img snapshot -c 2 sn.qcow2");     /* id 1, named "2" */
  SH_OK("qemu-io -c 'write -P 2 0 64k' sn.qcow2 >/dev/null");
  SH_OK("qemu-img resize -q sn.qcow2 32M");
  SH_OK("qemu-img snapshot -c second sn.qcow2"); /* id 2 */
  SH_OK("qemu-io -c 'write -P 3 0 64k' sn.qcow2 >/dev/null");
  list = capture("qemu-img snapshot -l sn.qcow2");
  cr_assert(strstr(list, "second"));

  buf = parse_image("sn.qcow2", &h, &len);
  cr_assert_eq(h.nb_snapshots, 2);
  s = parse_snapshots(buf, len, &h);
  cr_assert_str_eq(s[0].id, "1");
  cr_assert_str_eq(s[0].name, "2");
  cr_assert_eq(s[0].disk_size, 16 << 20);
  cr_assert_str_eq(s[1].id, "2");
  cr_assert_str_eq(s[1].name, "second");
  cr_assert_eq(s[1].disk_size, 32 << 20);
  cr_assert_eq(s[1].l1_offset % h.cluster_size, 0);
  cr_assert_geq(s[0].l1_size, 1);
  cr_assert_eq(qcow2_snapshot_find(s, 2, "second"), &s[1]);
  cr_assert_eq(qcow2_snapshot_find(s, 2, "1"), &s[0]);
  cr_assert_null(qcow2_snapshot_find(s, 2, "third"));

  /* "2" is snapshot 1's name and snapshot 2's id: qemu (convert -l and
   * qemu-nbd -l alike) takes the id; the data tells which it chose. */
  SH_OK("qemu-img convert -f qcow2 -O raw -l 2 sn.qcow2 two.raw");
  SH_OK("qemu-io -f raw -c 'read -P 2 0 64k' two.raw | grep -q 'read 65536'");
  cr_assert_eq(qcow2_snapshot_find(s, 2, "2"), &s[1]);

  qcow2_snapshots_free(s, 2);
  qcow2_header_free(&h);
  free(buf);
  free(list);
}

Test(qcow2, snapshot_table_hostile)
{
  struct qcow2_header h;
  struct qcow2_snapshot *s;
  size_t len;
  uint8_t *buf, *t;

  SH_OK("qemu-img create -q -f qcow2 sn.qcow2 16M");
  SH_OK("qemu-img snapshot -c one sn.qcow2");
  buf = parse_image("sn.qcow2", &h, &len);
  t = buf + h.snapshots_offset;
  cr_assert_eq(qcow2_be32(t + 36), 24);   /* qemu-img 7.2's extra size */

  /* Truncated table: every shorter length fails cleanly. */
  for (size_t n = 0; n < 40 + 24 + 1 + 3; n++)
    cr_assert_eq(qcow2_snapshots_parse(&h, t, n, len, &s), -1);
  cr_assert(strstr(nbds_last_error(), "truncated"));

  qcow2_put_be32(t + 36, 2000);
  cr_assert_eq(qcow2_snapshots_parse(&h, t, len - h.snapshots_offset, len,
                                     &s), -1);
  cr_assert(strstr(nbds_last_error(), "too much extra data"));
  qcow2_put_be32(t + 36, 8);
  cr_assert_eq(qcow2_snapshots_parse(&h, t, len - h.snapshots_offset, len,
                                     &s), -1);
  cr_assert(strstr(nbds_last_error(), "lacks the disk size"));
  qcow2_put_be32(t + 36, 24);
  qcow2_put_be64(t, qcow2_be64(t) + 512);
  cr_assert_eq(qcow2_snapshots_parse(&h, t, len - h.snapshots_offset, len,
                                     &s), -1);
  cr_assert(strstr(nbds_last_error(), "snapshot 0 L1 table offset"));
  qcow2_put_be64(t, qcow2_be64(t) - 512);
  qcow2_put_be32(t + 8, 0xffffffff);
  cr_assert_eq(qcow2_snapshots_parse(&h, t, len - h.snapshots_offset, len,
                                     &s), -1);
  cr_assert(strstr(nbds_last_error(), "snapshot 0 L1 table too large"));
  qcow2_header_free(&h);
  free(buf);
}

/* ---- hostile headers ---- */

struct poke {
  const char *what;
  unsigned off, width;   /* width 1, 4 or 8 */
  uint64_t value;
  const char *expect;
};

static void
apply(uint8_t *b, const struct poke *p)
{
  if (p->width == 8)
    qcow2_put_be64(b + p->off, p->value);
  else if (p->width == 4)
    qcow2_put_be32(b + p->off, (uint32_t) p->value);
  else
    b[p->off] = (uint8_t) p->value;
}

static void
expect_refused(const uint8_t *buf, size_t len, const char *what,
               const char *expect)
{
  struct qcow2_header h;

  cr_assert_eq(parse_bytes(buf, len, &h), -1, "%s: accepted", what);
  cr_assert(strstr(nbds_last_error(), expect), "%s: got '%s', want '%s'",
            what, nbds_last_error(), expect);
  cr_assert(strncmp(nbds_last_error(), "qcow2: ", 7) == 0);
}

/* Each poke on a fresh 1 GiB, 64 KiB-cluster image. */
static const struct poke pokes[] = {
  { "bad magic", 0, 4, 0x514649fa, "bad magic" },
  { "version 1", 4, 4, 1, "unsupported qcow2 version 1" },
  { "version 4", 4, 4, 4, "unsupported qcow2 version 4" },
  { "cluster_bits 8", 20, 4, 8, "cluster_bits 8" },
  { "cluster_bits 22", 20, 4, 22, "cluster_bits 22" },
  { "huge header_length", 100, 4, 0xfffffff8, "exceeds the cluster size" },
  { "odd header_length", 100, 4, 0xffffffff, "not a multiple of 8" },
  { "short header_length", 100, 4, 96, "too short" },
  { "huge extension", 0x74, 4, 0xffffffff, "header extension too large" },
  { "extension past cluster", 0x74, 4, 0x10000 - 0x78 + 1,
    "header extension too large" },
  { "reftable clusters max", 56, 4, 0xffffffff, "refcount table too large" },
  { "reftable clusters 0", 56, 4, 0, "no refcount table" },
  { "reftable misaligned", 48, 8, 0x10200, "refcount table offset 0x10200 is not cluster-aligned" },
  { "reftable in cluster 0", 48, 8, 0, "refcount table at offset 0x0 overlaps the header" },
  { "reftable past EOF", 48, 8, 0x40000, "beyond the end of the file" },
  { "L1 misaligned", 40, 8, 0x30200, "L1 table offset 0x30200 is not cluster-aligned" },
  { "L1 past EOF", 40, 8, 0x7fffffffffff0000, "beyond the end of the file" },
  { "l1_size max", 36, 4, 0xffffffff, "L1 table too large" },
  { "l1_size 4Mi+1", 36, 4, (32u << 20) / 8 + 1, "L1 table too large" },
  { "l1_size too small", 36, 4, 1, "L1 table is too small" },
  { "nb_snapshots max", 60, 4, 0xffffffff, "snapshot table too large" },
  { "size too big", 24, 8, UINT64_C(1) << 62, "image is too big" },
  { "size huge", 24, 8, UINT64_MAX, "image is too big" },
  { "crypt aes", 32, 4, 1, "encrypted images are not supported" },
  { "crypt luks", 32, 4, 2, "encrypted images are not supported" },
  { "refcount_order 7", 96, 4, 7, "refcount width too large" },
  { "data file bit", 72, 8, QCOW2_INCOMPAT_DATA_FILE, "external data files" },
  { "compression bit, zlib", 72, 8, QCOW2_INCOMPAT_COMPRESSION,
    "feature bit set with zlib" },
  { "zstd without bit", 104, 1, 1, "without the compression type feature bit" },
  { "compression type 2", 104, 1, 2, "unknown compression type 2" },
  { "unknown bit 5, no name", 72, 8, UINT64_C(1) << 5,
    "unsupported incompatible feature(s): bit 5" },
  { "unknown bit 63", 72, 8, UINT64_C(1) << 63,
    "unsupported incompatible feature(s): bit 63" },
  { "crypto extension", 0x70, 4, QCOW2_EXT_CRYPTO, "encryption header extension" },
  { "bitmaps ext length", 0x70, 4, QCOW2_EXT_BITMAPS, "bitmaps extension has invalid length" },
};

Test(qcow2, iotest080_pokes)
{
  size_t len;
  uint8_t *orig, *buf;

  SH_OK("qemu-img create -q -f qcow2 a.qcow2 1G");
  orig = slurp("a.qcow2", &len);
  buf = malloc(len);
  for (size_t i = 0; i < sizeof pokes / sizeof pokes[0]; i++) {
    memcpy(buf, orig, len);
    apply(buf, &pokes[i]);
    if (strstr(pokes[i].what, "bitmaps"))
      qcow2_put_be64(buf + QCOW2_OFF_AUTOCLEAR, QCOW2_AUTOCLEAR_BITMAPS);
    expect_refused(buf, len, pokes[i].what, pokes[i].expect);
  }
  free(buf);
  free(orig);
}

Test(qcow2, backing_pokes)
{
  size_t len;
  uint8_t *orig, *buf;

  SH_OK("qemu-img create -q -f raw base.raw 1M");
  SH_OK("qemu-img create -q -f qcow2 -b base.raw -F raw b.qcow2 1M");
  orig = slurp("b.qcow2", &len);
  cr_assert_eq(qcow2_be64(orig + 8), 0x210);
  buf = malloc(len);

  memcpy(buf, orig, len);
  qcow2_put_be64(buf + 8, 0x10008);
  expect_refused(buf, len, "offset beyond cluster", "invalid backing file offset");
  memcpy(buf, orig, len);
  qcow2_put_be64(buf + 8, 0x10000 - 4);
  expect_refused(buf, len, "name past cluster", "backing file name too long");
  memcpy(buf, orig, len);
  qcow2_put_be64(buf + 8, 0x20);
  expect_refused(buf, len, "name in header", "overlaps the header");
  memcpy(buf, orig, len);
  qcow2_put_be64(buf + 8, 0x1000);   /* iotest 080 */
  qcow2_put_be32(buf + 16, 0xffffffff);
  expect_refused(buf, len, "name size max", "backing file name too long");
  memcpy(buf, orig, len);
  qcow2_put_be32(buf + 16, 1024);
  expect_refused(buf, len, "name 1024", "backing file name too long");
  memcpy(buf, orig, len);
  buf[0x212] = 0;
  expect_refused(buf, len, "NUL in name", "contains a NUL byte");
  memcpy(buf, orig, len);
  qcow2_put_be32(buf + 0x74, 16);   /* the format extension, "raw" */
  expect_refused(buf, len, "format 16", "backing format name too long");
  memcpy(buf, orig, len);
  /* A backing name where the format extension's data should be. */
  qcow2_put_be64(buf + 8, 0x78);
  qcow2_put_be32(buf + 16, 8);
  memcpy(buf + 0x78, "abcdefgh", 8);
  expect_refused(buf, len, "ext area cut", "header extension too large");
  free(buf);
  free(orig);
}

/* Write extensions after the feature table (which ends at 0x1f8). */
static size_t
add_ext(uint8_t *b, size_t pos, uint32_t type, const void *data, uint32_t n)
{
  qcow2_put_be32(b + pos, type);
  qcow2_put_be32(b + pos + 4, n);
  memcpy(b + pos + 8, data, n);
  pos += 8 + ((n + 7) & ~7u);
  qcow2_put_be64(b + pos, 0);
  return pos;
}

Test(qcow2, extension_pokes)
{
  size_t len, pos;
  uint8_t *orig, *buf, bm[24] = { 0 };
  struct qcow2_header h;

  SH_OK("qemu-img create -q -f qcow2 a.qcow2 1G");
  orig = slurp("a.qcow2", &len);
  buf = malloc(len);

  memcpy(buf, orig, len);
  pos = add_ext(buf, 0x1f8, QCOW2_EXT_BACKING_FORMAT, "raw", 3);
  add_ext(buf, pos, QCOW2_EXT_BACKING_FORMAT, "raw", 3);
  expect_refused(buf, len, "duplicate", "header extension 0xe2792aca appears twice");
  memcpy(buf, orig, len);
  pos = add_ext(buf, 0x1f8, 0x12345678, "", 0);
  add_ext(buf, pos, 0x12345678, "abc", 3);
  expect_refused(buf, len, "duplicate unknown", "appears twice");

  /* An unknown extension is skipped and kept inside [ext_start, ext_end). */
  memcpy(buf, orig, len);
  pos = add_ext(buf, 0x1f8, 0x12345678, "abcde", 5);
  cr_assert_eq(parse_bytes(buf, len, &h), 0, "%s", nbds_last_error());
  cr_assert_eq(h.ext_end, pos + 8);
  qcow2_header_free(&h);

  /* Bitmaps: nb_bitmaps >= 1, aligned directory. */
  qcow2_put_be32(bm, 0);
  memcpy(buf, orig, len);
  qcow2_put_be64(buf + QCOW2_OFF_AUTOCLEAR, QCOW2_AUTOCLEAR_BITMAPS);
  add_ext(buf, 0x1f8, QCOW2_EXT_BITMAPS, bm, 24);
  expect_refused(buf, len, "0 bitmaps", "invalid number of bitmaps 0");
  qcow2_put_be32(bm, 1);
  qcow2_put_be64(bm + 16, 0x50200);
  add_ext(buf, 0x1f8, QCOW2_EXT_BITMAPS, bm, 24);
  expect_refused(buf, len, "dir misaligned", "directory offset 0x50200");
  /* Without the autoclear bit the extension is stale and ignored. */
  qcow2_put_be64(buf + QCOW2_OFF_AUTOCLEAR, 0);
  cr_assert_eq(parse_bytes(buf, len, &h), 0, "%s", nbds_last_error());
  cr_assert_eq(h.nb_bitmaps, 0);
  qcow2_header_free(&h);

  /* Unknown incompatible bit named by the feature table: rename entry 4
   * (extended L2, bit 4) to bit 9. */
  memcpy(buf, orig, len);
  cr_assert_str_eq((char *) buf + 0x78 + 4 * 48 + 2, "extended L2 entries");
  buf[0x78 + 4 * 48 + 1] = 9;
  strcpy((char *) buf + 0x78 + 4 * 48 + 2, "mystery feature");
  qcow2_put_be64(buf + QCOW2_OFF_INCOMPAT, (1u << 9) | (1u << 12));
  expect_refused(buf, len, "named bit",
                 "unsupported incompatible feature(s): mystery feature, bit 12");
  free(buf);
  free(orig);
}

Test(qcow2, extended_l2_small_clusters)
{
  size_t len;
  uint8_t *buf;

  SH_OK("qemu-img create -q -f qcow2 -o cluster_size=8k s.qcow2 1M");
  buf = slurp("s.qcow2", &len);
  qcow2_put_be64(buf + QCOW2_OFF_INCOMPAT, QCOW2_INCOMPAT_EXTL2);
  expect_refused(buf, len, "ext L2 8k", "extended L2 entries need clusters");
  free(buf);
}

Test(qcow2, truncated_and_flipped)
{
  struct qcow2_header h;
  size_t len;
  uint8_t *orig, *buf;
  unsigned seed = 1;

  SH_OK("qemu-img create -q -f raw base.raw 1M");
  SH_OK("qemu-img create -q -f qcow2 -b base.raw -F raw a.qcow2 1G");
  orig = slurp("a.qcow2", &len);
  /* Every truncation before the end of the L1 table is refused. */
  for (size_t n = 0; n < len; n += n < 0x300 ? 1 : 509) {
    buf = malloc(n ? n : 1);
    memcpy(buf, orig, n);
    cr_assert_eq(parse_bytes(buf, n, &h), -1, "truncated to %zu", n);
    free(buf);
  }
  expect_refused(orig, 50, "50 bytes", "too short for a qcow2 header");
  expect_refused(orig, 100, "100 bytes", "too short for a version 3 header");
  expect_refused(orig, 0x100, "0x100 bytes", "truncated");
  expect_refused(orig, len - 1, "L1 cut", "L1 table at 0x30000 (16 bytes) lies beyond");

  /* Random corruption of cluster 0: refused or parsed, never a crash
   * (this test matters under ASan/UBSan). */
  buf = malloc(len);
  for (int i = 0; i < 20000; i++) {
    memcpy(buf, orig, len);
    for (int k = 0; k < 1 + i % 4; k++) {
      size_t at = rand_r(&seed) % 0x220;
      buf[at] ^= (uint8_t) (1u << (rand_r(&seed) % 8));
    }
    if (parse_bytes(buf, len, &h) == 0)
      qcow2_header_free(&h);
  }
  free(buf);
  free(orig);
}

/* ---- L2 entries ---- */

/* One decoding case: header kind (2, 3, 'x' extended L2 at 128 KiB,
 * 'c' 512-byte clusters), entry, bitmap, subcluster, expected type or -1
 * with an error substring. */
static const struct entry_case {
  int kind;
  uint64_t entry, bitmap;
  unsigned sc;
  int type;
  const char *error;
} entry_cases[] = {
  { 3, 0x8000000000050000, 0, 0, QCOW2_NORMAL, NULL },
  { 3, 0x8000000000150001, 0, 0, QCOW2_ZERO_ALLOC, NULL },
  { 3, 0x1, 0, 0, QCOW2_ZERO_PLAIN, NULL },
  { 3, 0, 0, 0, QCOW2_UNALLOCATED, NULL },
  { 2, 0x1, 0, 0, -1, "zero flag in a version 2 image" },
  { 3, 0x8000000000050002, 0, 0, -1, "reserved bits" },
  { 3, 0x0100000000050000, 0, 0, -1, "reserved bits" },
  { 3, 0x8000000000050200, 0, 0, -1, "not cluster-aligned" },
  { 3, QCOW2_COMPRESSED | (UINT64_C(3) << 54) | 0x50123, 0, 0,
    QCOW2_COMPRESSED_DATA, NULL },
  { 3, QCOW2_COPIED | QCOW2_COMPRESSED | 0x50000, 0, 0, -1, "COPIED" },
  { 3, QCOW2_COMPRESSED | 0x100, 0, 0, -1, "header cluster" },
  { 'c', QCOW2_COMPRESSED | (UINT64_C(1) << 56), 0, 0, -1, "2^56" },
  /* Extended L2: alloc bits 0-31, zero bits 32-63. */
  { 'x', 0x80000000000a0000, 0x0003000000000002, 1, QCOW2_NORMAL, NULL },
  { 'x', 0x80000000000a0000, 0x0003000000000002, 16, QCOW2_ZERO_ALLOC, NULL },
  { 'x', 0x80000000000a0000, 0x0003000000000002, 5,
    QCOW2_UNALLOCATED_ALLOC, NULL },
  { 'x', 0, UINT64_C(1) << 35, 3, QCOW2_ZERO_PLAIN, NULL },
  { 'x', 0, UINT64_C(1) << 35, 4, QCOW2_UNALLOCATED, NULL },
  { 'x', 0, 1, 0, -1, "without a host cluster" },
  { 'x', 0xa0000, 0x0000000100000001, 1, -1, "both allocated and zero" },
  { 'x', 0xa0001, 0, 0, -1, "bit 0" },
  { 'x', QCOW2_COMPRESSED | 0x40000, 1, 0, -1, "subcluster bitmap" },
  { 'x', 0xa0000, 0, 32, -1, "subcluster index" },
};

Test(qcow2, entry_types)
{
  struct qcow2_header v3 = { .version = 3, .cluster_bits = 16,
                             .cluster_size = 65536 };
  struct qcow2_header v2 = v3, ext = v3, c9 = v3;
  enum qcow2_type t;
  uint64_t host, bytes;

  v2.version = 2;
  ext.cluster_bits = 17;
  ext.cluster_size = 131072;
  ext.extended_l2 = true;
  c9.cluster_bits = 9;
  c9.cluster_size = 512;
  for (size_t i = 0; i < sizeof entry_cases / sizeof entry_cases[0]; i++) {
    const struct entry_case *c = &entry_cases[i];
    const struct qcow2_header *h = c->kind == 2 ? &v2 : c->kind == 'x' ? &ext
                                   : c->kind == 'c' ? &c9 : &v3;
    int r = qcow2_entry_type(h, c->entry, c->bitmap, c->sc, &t);

    if (c->type == -1) {
      cr_assert_eq(r, -1, "case %zu accepted", i);
      cr_assert(strstr(nbds_last_error(), c->error), "case %zu: %s", i,
                nbds_last_error());
    }
    else {
      cr_assert_eq(r, 0, "case %zu: %s", i, nbds_last_error());
      cr_assert_eq(t, (enum qcow2_type) c->type, "case %zu", i);
    }
  }
  /* Compressed descriptors: x = 62 - (cluster_bits - 8) offset bits. */
  qcow2_compressed_range(&v3, QCOW2_COMPRESSED | (UINT64_C(3) << 54) | 0x50123,
                         &host, &bytes);
  cr_assert_eq(host, 0x50123);
  cr_assert_eq(bytes, 4 * 512 - 0x123);
  qcow2_compressed_range(&c9, QCOW2_COMPRESSED | (UINT64_C(1) << 61) | 0x1000,
                         &host, &bytes);
  cr_assert_eq(host, 0x1000);
  cr_assert_eq(bytes, 1024);
}

Test(qcow2, entry_types_from_qemu_io)
{
  struct qcow2_header h;
  size_t len;
  uint8_t *img;
  uint64_t e, bm;
  enum qcow2_type t;

  SH_OK("qemu-img create -q -f qcow2 z.qcow2 16M && qemu-io -c 'write -P 0xaa "
        "0 1M' -c 'write -z 512k 64k' -c 'write -z -u 3M 64k' -c "
        "'write -P 0x55 4M 4k' z.qcow2 >/dev/null");
  img = parse_image("z.qcow2", &h, &len);
  static const struct { uint64_t off; enum qcow2_type t; } want[] = {
    { 0, QCOW2_NORMAL }, { 512 << 10, QCOW2_ZERO_ALLOC },
    { 3 << 20, QCOW2_ZERO_PLAIN }, { 4 << 20, QCOW2_NORMAL },
    { 8 << 20, QCOW2_UNALLOCATED },
  };
  for (size_t i = 0; i < 5; i++) {
    l2_entry(img, len, &h, want[i].off, &e, &bm);
    cr_assert_eq(qcow2_entry_type(&h, e, bm, 0, &t), 0);
    cr_assert_eq(t, want[i].t, "offset %" PRIu64, want[i].off);
  }
  qcow2_header_free(&h);
  free(img);

  SH_OK("qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k "
        "x.qcow2 64M && qemu-io -c 'write -P 0x44 4k 4k' -c 'write -z 64k 8k'"
        " x.qcow2 >/dev/null");
  img = parse_image("x.qcow2", &h, &len);
  l2_entry(img, len, &h, 0, &e, &bm);
  cr_assert_eq(bm, 0x0003000000000002);
  cr_assert_eq(qcow2_entry_type(&h, e, bm, 0, &t), 0);
  cr_assert_eq(t, QCOW2_UNALLOCATED_ALLOC);
  cr_assert_eq(qcow2_entry_type(&h, e, bm, 1, &t), 0);
  cr_assert_eq(t, QCOW2_NORMAL);
  cr_assert_eq(qcow2_entry_type(&h, e, bm, 16, &t), 0);
  cr_assert_eq(t, QCOW2_ZERO_ALLOC);
  qcow2_header_free(&h);
  free(img);
}

/* ---- compressed clusters ---- */

#define SRC_SIZE (6u << 20)

/* Text that compresses to about half, and a random middle third that
 * qemu-img leaves uncompressed. */
static uint8_t *
make_source(void)
{
  uint8_t *src = malloc(SRC_SIZE);
  uint64_t x = 88172645463325252u;

  for (size_t i = 0; i < SRC_SIZE; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    if (i >= (2u << 20) && i < (4u << 20))
      src[i] = (uint8_t) x;
    else
      src[i] = 'a' + (x >> 60);  /* 4 bits of entropy a byte */
  }
  spit("src.raw", src, SRC_SIZE);
  return src;
}

/* Decompress every compressed cluster (and compare every normal one). */
static unsigned
check_clusters(const uint8_t *img, size_t len, const struct qcow2_header *h,
               const uint8_t *src)
{
  uint8_t *out = malloc(h->cluster_size), *in = malloc(2 * h->cluster_size);
  unsigned ncompressed = 0;

  for (uint64_t g = 0; g < h->size; g += h->cluster_size) {
    uint64_t e, bm, host, bytes;
    enum qcow2_type t;

    l2_entry(img, len, h, g, &e, &bm);
    cr_assert_eq(qcow2_entry_type(h, e, bm, 0, &t), 0, "%s", nbds_last_error());
    if (t == QCOW2_NORMAL) {
      cr_assert_eq(memcmp(img + (e & QCOW2_OFFSET_MASK), src + g,
                          h->cluster_size), 0);
      continue;
    }
    cr_assert_eq(t, QCOW2_COMPRESSED_DATA, "guest 0x%" PRIx64, g);
    qcow2_compressed_range(h, e, &host, &bytes);
    cr_assert_leq(bytes, 2 * h->cluster_size);
    /* The range may run past EOF: QEMU reads zeroes there. */
    memset(in, 0, bytes);
    memcpy(in, img + host, host + bytes <= len ? bytes : len - host);
    cr_assert_eq(qcow2_decompress(h, in, bytes, out), 0, "%s",
                 nbds_last_error());
    cr_assert_eq(memcmp(out, src + g, h->cluster_size), 0,
                 "guest 0x%" PRIx64, g);
    ncompressed++;
  }
  free(out);
  free(in);
  return ncompressed;
}

Test(qcow2, decompress_qemu_images)
{
  static const char *const cs[] = { "512", "64k", "2M" };
  static const char *const types[] = { "zlib", "zstd" };
  uint8_t *src = make_source();

  for (int c = 0; c < 3; c++) {
    for (int k = 0; k < 2; k++) {
      struct qcow2_header h;
      size_t len;
      uint8_t *img;
      unsigned n;

      SH_OK("rm -f c.qcow2 && qemu-img convert -c -f raw -O qcow2 -o "
            "cluster_size=%s,compression_type=%s src.raw c.qcow2",
            cs[c], types[k]);
      img = parse_image("c.qcow2", &h, &len);
      cr_assert_eq(h.compression_type, k);
      n = check_clusters(img, len, &h, src);
      /* Two thirds of the source compress. */
      cr_assert_geq(n, (SRC_SIZE / h.cluster_size) * 2 / 3 - 1,
                    "%s %s: only %u compressed", cs[c], types[k], n);
      qcow2_header_free(&h);
      free(img);
    }
  }
  free(src);
}

/* The first compressed cluster's stream of an image made from src. */
static uint8_t *
first_stream(const char *type, struct qcow2_header *h, size_t *bytes)
{
  size_t len;
  uint8_t *img, *s;
  uint64_t e, bm, host;

  SH_OK("qemu-img convert -c -f raw -O qcow2 -o compression_type=%s "
        "src.raw %s.qcow2", type, type);
  img = parse_image(strcmp(type, "zlib") ? "zstd.qcow2" : "zlib.qcow2", h, &len);
  l2_entry(img, len, h, 0, &e, &bm);
  cr_assert(e & QCOW2_COMPRESSED);
  qcow2_compressed_range(h, e, &host, bytes);
  s = malloc(*bytes);
  memcpy(s, img + host, *bytes);
  free(img);
  return s;
}

Test(qcow2, decompress_corrupt)
{
  uint8_t *src = make_source(), *out = malloc(65536), *bad;
  static const char *const types[] = { "zlib", "zstd" };

  for (int k = 0; k < 2; k++) {
    struct qcow2_header h;
    size_t bytes;
    uint8_t *s = first_stream(types[k], &h, &bytes);
    unsigned failed = 0;

    cr_assert_eq(qcow2_decompress(&h, s, bytes, out), 0);
    cr_assert_eq(memcmp(out, src, 65536), 0);
    for (size_t n = 0; n < bytes / 2; n += 7)
      cr_assert_eq(qcow2_decompress(&h, s, n, out), -1, "%s cut %zu",
                   types[k], n);
    cr_assert(strstr(nbds_last_error(), types[k]));
    bad = malloc(bytes);
    for (size_t i = 0; i < bytes * 8; i += 3) {
      memcpy(bad, s, bytes);
      bad[i / 8] ^= 1u << (i % 8);
      if (qcow2_decompress(&h, bad, bytes, out) == -1)
        failed++;
    }
    cr_assert_gt(failed, 0);
    memset(bad, 0xa5, bytes);
    cr_assert_eq(qcow2_decompress(&h, bad, bytes, out), -1);
    cr_assert_eq(qcow2_decompress(&h, s, 2 * 65536 + 1, out), -1);
    cr_assert(strstr(nbds_last_error(), "too large"));
    free(bad);
    free(s);
    qcow2_header_free(&h);
  }
  free(out);
  free(src);
}

Test(qcow2, decompress_zstd_frames)
{
  struct qcow2_header h = { .version = 3, .cluster_bits = 16,
                            .cluster_size = 65536, .compression_type = 1 };
  uint8_t *src = make_source(), *out = malloc(65536);
  size_t cap = ZSTD_compressBound(2 * 65536), n1, n2;
  uint8_t *z = malloc(2 * cap);

  /* Two frames making one cluster: fine. */
  n1 = ZSTD_compress(z, cap, src, 30000, 3);
  n2 = ZSTD_compress(z + n1, cap, src + 30000, 65536 - 30000, 3);
  cr_assert_eq(qcow2_decompress(&h, z, n1 + n2, out), 0, "%s", nbds_last_error());
  cr_assert_eq(memcmp(out, src, 65536), 0);
  /* Only the first frame: short. */
  cr_assert_eq(qcow2_decompress(&h, z, n1, out), -1);
  cr_assert(strstr(nbds_last_error(), "short"));
  /* A frame decoding to more than a cluster. */
  n1 = ZSTD_compress(z, cap, src, 65536 + 4096, 3);
  cr_assert_eq(qcow2_decompress(&h, z, n1, out), -1);
  cr_assert(strstr(nbds_last_error(), "more than a cluster"), "%s",
            nbds_last_error());
  /* A frame of unknown size asking for a 128 MiB window. */
  {
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    ZSTD_inBuffer in = { src, 65536, 0 };
    ZSTD_outBuffer o = { z, cap, 0 };

    ZSTD_CCtx_setParameter(cc, ZSTD_c_windowLog, 27);
    cr_assert_not(ZSTD_isError(ZSTD_compressStream2(cc, &o, &in,
                                                    ZSTD_e_continue)));
    while (ZSTD_compressStream2(cc, &o, &in, ZSTD_e_end) != 0)
      ;
    ZSTD_freeCCtx(cc);
    cr_assert_eq(qcow2_decompress(&h, z, o.pos, out), -1);
    cr_assert(strstr(nbds_last_error(), "zstd"));
  }
  free(z);
  free(out);
  free(src);
}
