/* What every file protocol driver must do, through the layer contract
 * alone: the table of conformance tests (see conformance.h).
 *
 * Portable C11 and the standard library only: the same file builds for
 * Linux (the "file" layer) and with mingw-w64 for Windows ("win32file").
 * 64-bit values are printed with PRIu64, as msvcrt's printf may know no
 * %llu or %zu.  Every test makes its own scratch file and keeps a model
 * of what it should hold; a failed check returns from the test at once,
 * leaving the file to the platform's cleanup. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

/* ---- Opening, size and capabilities ---- */

static void
test_open_missing_file(void)
{
  const char *path = conf_scratch_path("missing.img");
  CONF_CHECK(open_with(path, NULL, NULL) == NULL, "a missing file opened");
  CONF_CHECK(strstr(nbds_last_error(), path) != NULL,
             "the error does not name the file: %s", nbds_last_error());
}

static void
test_size_and_caps(void)
{
  const char *path;
  struct nbds_layer *l = setup("caps.img", 1000, 'x', false, &path);
  CONF_CHECK(l, "%s", why);
  struct nbds_caps c = l->caps;
  CONF_CHECK(l->size == 1000, "size %" PRIu64 ", want 1000", l->size);
  CONF_CHECK(c.can_write && c.can_flush && c.can_trim && c.can_zero &&
             c.can_extents && c.can_cache, "write %d flush %d trim %d "
             "zero %d extents %d cache %d", c.can_write, c.can_flush,
             c.can_trim, c.can_zero, c.can_extents, c.can_cache);
  CONF_CHECK(c.fua == NBDS_FUA_NATIVE, "fua %d, want native", (int) c.fua);
  CONF_CHECK(c.block_min == 1, "block_min %u, want 1", c.block_min);
  CONF_CHECK(c.block_pref >= 512 && (c.block_pref & (c.block_pref - 1)) == 0,
             "block_pref %u", c.block_pref);
  CONF_CHECK(c.block_max >= c.block_pref, "block_max %u", c.block_max);
  nbds_layer_close_stack(l);
  conf_file_remove(path);
}

/* ---- Reads and writes, buffered or direct ---- */

/* Several iovecs at odd offsets, read back one byte either side, split
 * differently. */
static void
round_trip(const char *name, bool direct)
{
  const char *path;
  struct nbds_layer *l = setup(name, 64 * KiB, 'a', direct, &path);
  CONF_CHECK(l, "%s", why);
  unsigned char *data = model + 12345, *buf = got(3);
  pattern(data, 10000, 1);
  struct iovec wv[] = {
    iov(data, 1), iov(data + 1, 4095), iov(data + 4096, 10000 - 4096),
  };
  CONF_CHECK(rw(l, NBDS_OP_WRITE, 12345, wv, 3, 0) == 0, "WRITE failed");
  struct iovec rv[] = { iov(buf, 7), iov(buf + 7, 10002 - 7) };
  CONF_CHECK(rw(l, NBDS_OP_READ, 12344, rv, 2, 0) == 0, "READ failed");
  CONF_CHECK(bytes_match(buf, 10002, 12344), "%s", why);
  nbds_layer_close_stack(l);
  CONF_CHECK(file_matches(path, 64 * KiB), "%s", why);
  conf_file_remove(path);
}

/* The export may reach past the file's end: that tail reads as zeroes. */
static void
read_past_eof(const char *name, bool direct)
{
  const char *path;
  struct nbds_layer *l = setup(name, 1000, 'x', direct, &path);
  CONF_CHECK(l, "%s", why);
  unsigned char *buf = got(1);
  memset(buf, 0xAA, 4096);
  struct iovec v[] = {
    iov(buf, 999), iov(buf + 999, 2), iov(buf + 1001, 4096 - 1001),
  };
  CONF_CHECK(rw(l, NBDS_OP_READ, 0, v, 3, 0) == 0, "READ across EOF failed");
  CONF_CHECK(bytes_match(buf, 4096, 0), "%s", why);
  CONF_CHECK(layer_matches(l, 999, 3), "%s", why);
  CONF_CHECK(layer_matches(l, 1 * MiB, 512), "wholly past EOF: %s", why);
  nbds_layer_close_stack(l);
  CONF_CHECK(conf_file_size(path) == 1000, "a READ changed the size to %"
             PRIu64, conf_file_size(path));
  conf_file_remove(path);
}

static void
fua_write(const char *name, bool direct)
{
  const char *path;
  struct nbds_layer *l = setup(name, 64 * KiB, 'a', direct, &path);
  CONF_CHECK(l, "%s", why);
  memset(model + 333, 'f', 5000);
  CONF_CHECK(rw1(l, NBDS_OP_WRITE, 333, model + 333, 5000, NBDS_F_FUA) == 0,
             "FUA WRITE failed");
  CONF_CHECK(file_matches(path, 64 * KiB), "%s", why);
  CONF_CHECK(layer_matches(l, 0, 64 * KiB), "%s", why);
  nbds_layer_close_stack(l);
  conf_file_remove(path);
}

static void
test_flush(void)
{
  const char *path;
  struct nbds_layer *l = setup("flush.img", 64 * KiB, 'a', false, &path);
  CONF_CHECK(l, "%s", why);
  CONF_CHECK(cmd(l, NBDS_OP_FLUSH, 0, 0, 0) == 0,
             "FLUSH with nothing written failed");
  memset(model + 4097, 'w', 3000);
  CONF_CHECK(rw1(l, NBDS_OP_WRITE, 4097, model + 4097, 3000, 0) == 0,
             "WRITE failed");
  CONF_CHECK(cmd(l, NBDS_OP_FLUSH, 0, 0, 0) == 0, "FLUSH failed");
  CONF_CHECK(file_matches(path, 64 * KiB), "%s", why);
  nbds_layer_close_stack(l);
  conf_file_remove(path);
}

/* A write past the end of the file grows it; the gap reads as zeroes.
 * (Direct I/O may write the whole last block: zeroes past the data.) */
static void
write_grows_file(const char *name, bool direct)
{
  const uint64_t at = 100 * KiB + 3, end = at + 1000;
  const char *path;
  struct nbds_layer *l = setup(name, 64 * KiB, 'a', direct, &path);
  CONF_CHECK(l, "%s", why);
  memset(model + at, 'g', 1000);
  CONF_CHECK(rw1(l, NBDS_OP_WRITE, at, model + at, 1000, 0) == 0,
             "WRITE past EOF failed");
  uint64_t size = conf_file_size(path);
  CONF_CHECK(size >= end && size <= 1 * MiB, "size %" PRIu64 ", want %"
             PRIu64 " or a little more", size, end);
  CONF_CHECK(file_matches(path, size), "%s", why);
  CONF_CHECK(layer_matches(l, 0, end + 100), "%s", why);
  nbds_layer_close_stack(l);
  conf_file_remove(path);
}

/* Many requests in flight together: disjoint writes, then reads. */
static void
test_requests_in_flight(void)
{
  enum { N = 32, LEN = 3000, STEP = 4099 };
  const char *path;
  struct nbds_layer *l = setup("flight.img", N * STEP + 1, 'a', false, &path);
  CONF_CHECK(l, "%s", why);
  static struct nbds_req req[N];
  static struct nbds_req *reqs[N];
  static struct iovec v[N];
  for (int pass = 0; pass < 2; pass++) {
    for (int i = 0; i < N; i++) {
      uint64_t off = (uint64_t) i * STEP + 1;
      if (pass == 0)
        pattern(model + off, LEN, i);
      v[i] = iov(pass == 0 ? model + off : got(1) + off, LEN);
      req[i] = (struct nbds_req) {
        .op = pass == 0 ? NBDS_OP_WRITE : NBDS_OP_READ, .offset = off,
        .count = LEN, .iov = &v[i], .iovcnt = 1,
        .flags = pass == 0 && i % 4 == 0 ? NBDS_F_FUA : 0,
      };
      reqs[i] = &req[i];
    }
    CONF_CHECK(conf_run_many(l, reqs, N) == 0, "a %s failed",
               pass == 0 ? "WRITE" : "READ");
  }
  for (int i = 0; i < N; i++) {
    uint64_t off = (uint64_t) i * STEP + 1;
    CONF_CHECK(bytes_match(got(1) + off, LEN, off), "%s", why);
  }
  nbds_layer_close_stack(l);
  CONF_CHECK(file_matches(path, N * STEP + 1), "%s", why);
  conf_file_remove(path);
}

/* ---- TRIM and ZERO ---- */

static void
test_trim(void)
{
  const char *path;
  struct nbds_layer *l = setup("trim.img", 4 * MiB, 0x55, false, &path);
  CONF_CHECK(l, "%s", why);
  uint64_t before = conf_file_allocated(path);
  CONF_CHECK(cmd(l, NBDS_OP_TRIM, 1 * MiB, 1 * MiB, 0) == 0, "TRIM failed");
  uint64_t after = conf_file_allocated(path);
  CONF_CHECK(layer_read(l, 1 * MiB, 1 * MiB), "%s", why);
  bool zeroed = bytes_are(got(1), 1 * MiB, 0, 1 * MiB);
  if (after == before) {
    /* TRIM is a hint: a file system that cannot deallocate may keep the
     * data, or zero it, but not leave a mix. */
    printf("note: trim: %" PRIu64 " bytes allocated before and after: "
           "this file system did not deallocate\n", before);
    CONF_CHECK(zeroed || bytes_are(got(1), 1 * MiB, 0x55, 1 * MiB),
               "the trimmed range is neither zero nor kept: %s", why);
  } else {
    CONF_CHECK(zeroed, "the trimmed range: %s", why);
    /* 1 MiB less, give or take a little metadata. */
    CONF_CHECK(after + 1 * MiB <= before + 64 * KiB, "allocated %" PRIu64
               " bytes before, %" PRIu64 " after", before, after);
  }
  if (zeroed)
    memset(model + 1 * MiB, 0, 1 * MiB);
  nbds_layer_close_stack(l);
  CONF_CHECK(conf_file_size(path) == 4 * MiB, "size %" PRIu64,
             conf_file_size(path));
  CONF_CHECK(file_matches(path, 4 * MiB), "%s", why);
  conf_file_remove(path);
}

/* ZERO unaligned ranges of a file of data: they read as zeroes and their
 * neighbours keep their bytes.  NO_HOLE must not deallocate. */
static void
zero(const char *name, bool direct, uint32_t flags)
{
  const uint64_t at = 256 * KiB - 100, len = 256 * KiB + 200;
  const char *path;
  struct nbds_layer *l = setup(name, 1 * MiB, 0x55, direct, &path);
  CONF_CHECK(l, "%s", why);
  uint64_t before = conf_file_allocated(path);
  CONF_CHECK(cmd(l, NBDS_OP_ZERO, at, len, flags) == 0, "ZERO failed");
  CONF_CHECK(cmd(l, NBDS_OP_ZERO, 600 * KiB + 1, 10000, flags | NBDS_F_FUA)
             == 0, "ZERO with FUA failed");
  memset(model + at, 0, len);
  memset(model + 600 * KiB + 1, 0, 10000);
  CONF_CHECK(layer_matches(l, 0, 1 * MiB), "%s", why);
  nbds_layer_close_stack(l);
  CONF_CHECK(file_matches(path, 1 * MiB), "%s", why);
  if (flags & NBDS_F_NO_HOLE)
    CONF_CHECK(conf_file_allocated(path) >= before, "NO_HOLE deallocated: %"
               PRIu64 " bytes before, %" PRIu64 " after", before,
               conf_file_allocated(path));
  conf_file_remove(path);
}

/* FAST_ZERO: zeroes, or ENOTSUP with nothing changed. */
static void
test_zero_fast(void)
{
  static const uint32_t flags[] = {
    NBDS_F_FAST_ZERO, NBDS_F_FAST_ZERO | NBDS_F_NO_HOLE | NBDS_F_FUA,
  };
  static const uint64_t at[] = { 64 * KiB - 7, 512 * KiB + 3 };
  const uint64_t len = 128 * KiB + 9;
  const char *path;
  struct nbds_layer *l = setup("zerofast.img", 1 * MiB, 0x55, false, &path);
  CONF_CHECK(l, "%s", why);
  if (!l->caps.can_fast_zero)
    printf("note: zero_fast: FAST_ZERO is not advertised\n");
  for (int i = 0; i < 2 && l->caps.can_fast_zero; i++) {
    int err = cmd(l, NBDS_OP_ZERO, at[i], len, flags[i]);
    CONF_CHECK(err == 0 || err == ENOTSUP, "FAST_ZERO gave %d (%s)", err,
               strerror(err));
    if (!err)
      memset(model + at[i], 0, len);
    CONF_CHECK(file_matches(path, 1 * MiB), "%s", why);
  }
  nbds_layer_close_stack(l);
  conf_file_remove(path);
}

/* ---- BLOCK_STATUS, CACHE, and errors ---- */

struct span {
  uint64_t length;
  uint32_t flags;
};

/* The extents say what want says about [0, count) of the request: each
 * byte has the right flags, and all of it is covered.  Extents may be
 * split differently or run past the end. */
static bool
extents_are(const struct nbds_extents *ex, uint64_t count,
            const struct span *want, size_t nwant)
{
  uint64_t pos = 0;
  for (size_t k = 0; k < ex->count && pos < count; k++) {
    uint64_t end = pos + ex->v[k].length, w = 0;
    for (size_t j = 0; j < nwant; w += want[j].length, j++) {
      if (w + want[j].length > pos && w < end &&
          want[j].flags != ex->v[k].flags) {
        snprintf(why, sizeof why, "extent %u [%" PRIu64 ", %" PRIu64
                 ") has flags %u, want %u from %" PRIu64, (unsigned) k, pos,
                 end, ex->v[k].flags, want[j].flags, w);
        return false;
      }
    }
    pos = end;
  }
  if (pos < count)
    snprintf(why, sizeof why, "extents cover %" PRIu64 " of %" PRIu64
             " bytes", pos, count);
  return pos >= count;
}

static int
block_status(struct nbds_layer *l, uint64_t offset, uint64_t count,
             uint32_t flags, struct nbds_extents *ex)
{
  ex->count = 0;
  ex->covered = 0;
  struct nbds_req req = {
    .op = NBDS_OP_BLOCK_STATUS, .flags = flags, .offset = offset,
    .count = count, .extents = ex,
  };
  return conf_run(l, &req);
}

/* Data [0, 64K), a hole [64K, 192K), data [192K, 256K), end of file, in
 * 64 KiB pieces, which NTFS's sparse files track as well as ext4. */
static void
test_block_status(void)
{
  const char *path = conf_scratch_path("bs.img");
  memset(model, 'd', 64 * KiB);
  CONF_CHECK(conf_file_write(path, 0, model, 64 * KiB) &&
             conf_file_write(path, 192 * KiB, model, 64 * KiB),
             "cannot make the file");
  bool sparse = conf_file_allocated(path) < 192 * KiB;
  if (!sparse)
    printf("note: block_status: the file system allocated the hole\n");
  struct nbds_layer *l = open_with(path, NULL, NULL);
  CONF_CHECK(l, "open: %s", nbds_last_error());
  CONF_CHECK(l->size == 256 * KiB, "size %" PRIu64, l->size);

  struct nbds_extent v[16];
  struct nbds_extents ex = { .v = v, .cap = 16 };
  const uint32_t hole = sparse ? HZ : 0;
  const struct span layout[] = {
    { 64 * KiB, 0 }, { 128 * KiB, hole }, { 64 * KiB, 0 },
    { 256 * KiB, HZ },  /* past end of file */
  };
  CONF_CHECK(block_status(l, 0, 512 * KiB, 0, &ex) == 0,
             "BLOCK_STATUS failed");
  CONF_CHECK(extents_are(&ex, 512 * KiB, layout, 4), "%s", why);

  /* Starting inside the hole, ending inside data. */
  const struct span mid[] = {
    { 192 * KiB - 100000, hole }, { 200000 - 192 * KiB, 0 },
  };
  CONF_CHECK(block_status(l, 100000, 100000, 0, &ex) == 0,
             "BLOCK_STATUS failed");
  CONF_CHECK(extents_are(&ex, 100000, mid, 2), "inside: %s", why);

  /* Only the part past end of file. */
  const struct span past[] = { { 1000, HZ } };
  CONF_CHECK(block_status(l, 300000, 1000, 0, &ex) == 0,
             "BLOCK_STATUS failed");
  CONF_CHECK(extents_are(&ex, 1000, past, 1), "past EOF: %s", why);

  /* REQ_ONE: at least one extent, and it is right. */
  CONF_CHECK(block_status(l, 0, 512 * KiB, NBDS_F_REQ_ONE, &ex) == 0,
             "BLOCK_STATUS failed");
  CONF_CHECK(ex.count >= 1 && v[0].flags == 0 && v[0].length > 0 &&
             v[0].length <= (sparse ? 64 * KiB : 256 * KiB),
             "REQ_ONE: %u extents, the first %" PRIu64 " bytes flags %u",
             (unsigned) ex.count, v[0].length, v[0].flags);

  /* A full list ends the walk without an error. */
  ex.cap = 2;
  CONF_CHECK(block_status(l, 0, 512 * KiB, 0, &ex) == 0,
             "BLOCK_STATUS failed");
  CONF_CHECK(ex.count == 2 && extents_are(&ex, ex.covered, layout, 4),
             "%u extents: %s", (unsigned) ex.count, why);
  nbds_layer_close_stack(l);
  conf_file_remove(path);
}

static void
test_cache(void)
{
  const char *path;
  struct nbds_layer *l = setup("cache.img", 64 * KiB, 'c', false, &path);
  CONF_CHECK(l, "%s", why);
  CONF_CHECK(cmd(l, NBDS_OP_CACHE, 0, 64 * KiB, 0) == 0, "CACHE failed");
  CONF_CHECK(cmd(l, NBDS_OP_CACHE, 1, 1000, 0) == 0, "CACHE failed");
  nbds_layer_close_stack(l);
  CONF_CHECK(file_matches(path, 64 * KiB), "%s", why);
  conf_file_remove(path);
}

/* A read-only layer says so, reads, and refuses every write with the
 * errno value the POSIX driver gives. */
static void
test_readonly(void)
{
  const char *path = make_file("readonly.img", 64 * KiB, 'r');
  CONF_CHECK(path, "cannot make the file");
  struct nbds_layer *l = open_with(path, "readonly", "on");
  CONF_CHECK(l, "open: %s", nbds_last_error());
  CONF_CHECK(!l->caps.can_write && !l->caps.can_trim && !l->caps.can_zero,
             "write %d trim %d zero %d", l->caps.can_write, l->caps.can_trim,
             l->caps.can_zero);
  static const enum nbds_op ops[] = {
    NBDS_OP_WRITE, NBDS_OP_WRITE, NBDS_OP_TRIM, NBDS_OP_ZERO, NBDS_OP_ZERO,
  };
  static const uint32_t flags[] = { 0, NBDS_F_FUA, 0, 0, NBDS_F_NO_HOLE };
  unsigned char buf[4096];
  memset(buf, 'w', sizeof buf);
  struct iovec v = iov(buf, sizeof buf);
  for (int i = 0; i < 5; i++) {
    struct nbds_req req = {
      .op = ops[i], .flags = flags[i], .offset = 4096, .count = sizeof buf,
      .iov = ops[i] == NBDS_OP_WRITE ? &v : NULL,
      .iovcnt = ops[i] == NBDS_OP_WRITE,
    };
    int err = conf_run(l, &req);
    CONF_CHECK(err == EROFS || err == EPERM, "op %d flags %u gave %d (%s), "
               "want EROFS or EPERM", (int) ops[i], flags[i], err,
               strerror(err));
  }
  CONF_CHECK(cmd(l, NBDS_OP_FLUSH, 0, 0, 0) == 0, "FLUSH failed");
  CONF_CHECK(layer_matches(l, 0, 64 * KiB), "%s", why);
  nbds_layer_close_stack(l);
  CONF_CHECK(file_matches(path, 64 * KiB), "%s", why);
  conf_file_remove(path);
}

/* Far past what any file may hold: the system refuses, the driver says
 * so with a positive errno value, and nothing changes. */
static void
test_errors_huge_offset(void)
{
  const char *path;
  struct nbds_layer *l = setup("efbig.img", 4 * KiB, 'a', false, &path);
  CONF_CHECK(l, "%s", why);
  unsigned char buf[512];
  memset(buf, 'w', sizeof buf);
  int err = rw1(l, NBDS_OP_WRITE, INT64_MAX, buf, sizeof buf, 0);
  CONF_CHECK(err == EINVAL || err == EFBIG || err == ENOSPC ||
             err == EOVERFLOW, "WRITE at 2^63-1 gave %d (%s)", err,
             strerror(err));
  nbds_layer_close_stack(l);
  CONF_CHECK(conf_file_size(path) == 4 * KiB, "size %" PRIu64,
             conf_file_size(path));
  CONF_CHECK(file_matches(path, 4 * KiB), "%s", why);
  conf_file_remove(path);
}

/* The shared tests, buffered and direct. */
static void test_round_trip(void) { round_trip("rt.img", false); }
static void test_read_past_eof(void) { read_past_eof("eof.img", false); }
static void test_fua_write(void) { fua_write("fua.img", false); }
static void test_write_grows_file(void) { write_grows_file("grow.img", false); }
static void test_zero(void) { zero("zero.img", false, 0); }
static void test_zero_no_hole(void) { zero("zeronh.img", false, NBDS_F_NO_HOLE); }
static void test_direct_round_trip(void) { round_trip("drt.img", true); }
static void test_direct_read_past_eof(void) { read_past_eof("deof.img", true); }
static void test_direct_fua_write(void) { fua_write("dfua.img", true); }
static void test_direct_write_grows_file(void) { write_grows_file("dgrow.img", true); }
static void test_direct_zero(void) { zero("dzero.img", true, 0); }

const struct conf_test conf_tests[] = {
  { "open_missing_file", test_open_missing_file },
  { "readonly", test_readonly },
  { "size_and_caps", test_size_and_caps },
  { "round_trip", test_round_trip },
  { "read_past_eof", test_read_past_eof },
  { "fua_write", test_fua_write },
  { "flush", test_flush },
  { "write_grows_file", test_write_grows_file },
  { "requests_in_flight", test_requests_in_flight },
  { "trim", test_trim },
  { "zero", test_zero },
  { "zero_no_hole", test_zero_no_hole },
  { "zero_fast", test_zero_fast },
  { "block_status", test_block_status },
  { "cache", test_cache },
  { "errors_huge_offset", test_errors_huge_offset },
  { "direct_round_trip", test_direct_round_trip },
  { "direct_read_past_eof", test_direct_read_past_eof },
  { "direct_fua_write", test_direct_fua_write },
  { "direct_write_grows_file", test_direct_write_grows_file },
  { "direct_zero", test_direct_zero },
  { "direct_small_writes", test_direct_small_writes },
  { "direct_unaligned_buffers", test_direct_unaligned_buffers },
  { "direct_alignment", test_direct_alignment },
  { "direct_concurrent_rmw", test_direct_concurrent_rmw },
  { "direct_aligned_against_rmw", test_direct_aligned_against_rmw },
  { NULL, NULL },
};

