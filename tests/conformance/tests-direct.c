/* The conformance tests of direct I/O (direct=on): unaligned requests
 * are served too, and read-modify-writes never interleave.  Portable C11,
 * as tests.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

/* ---- Direct I/O (direct=on): unaligned requests are served too ---- */

/* 1, 100 and 4095 bytes at offsets 1, 4097 and 8191 (of a region each):
 * read-modify-writes of the blocks around them, neighbours untouched. */
void
test_direct_small_writes(void)
{
  static const uint64_t offsets[] = { 1, 4097, 8191 };
  static const size_t lens[] = { 1, 100, 4095 };
  enum { REGION = 16 * KiB, SIZE = 9 * REGION };
  const char *path;
  struct nbds_layer *l = setup("dsmall.img", SIZE, 'a', true, &path);
  CONF_CHECK(l, "%s", why);
  for (int k = 0; k < 9; k++) {
    uint64_t off = k * REGION + offsets[k / 3];
    size_t len = lens[k % 3];
    pattern(model + off, len, k + 1);
    CONF_CHECK(rw1(l, NBDS_OP_WRITE, off, model + off, len, 0) == 0,
               "WRITE of %u bytes at %" PRIu64 " failed", (unsigned) len, off);
    CONF_CHECK(file_matches(path, SIZE), "after %u bytes at %" PRIu64
               ": %s", (unsigned) len, off, why);
    CONF_CHECK(layer_matches(l, off - 1, len + 2), "%s", why);
  }
  nbds_layer_close_stack(l);
  conf_file_remove(path);
}

/* Ranges aligned in the file whose buffers are not, odd iovec lengths
 * adding up to whole blocks, and a large request unaligned everywhere. */
void
test_direct_unaligned_buffers(void)
{
  const char *path;
  struct nbds_layer *l = setup("dbuf.img", 512 * KiB, 'a', true, &path);
  CONF_CHECK(l, "%s", why);
  unsigned char *src = got(1), *dst = got(2 * MiB + 3);
  pattern(src, 200 * KiB, 9);

  CONF_CHECK(rw1(l, NBDS_OP_WRITE, 8 * KiB, src, 16 * KiB, 0) == 0,
             "WRITE from an odd address failed");
  memcpy(model + 8 * KiB, src, 16 * KiB);
  struct iovec wv[] = { iov(src + 5, 100), iov(src + 105, 16 * KiB - 100) };
  CONF_CHECK(rw(l, NBDS_OP_WRITE, 64 * KiB, wv, 2, 0) == 0,
             "WRITE of odd iovecs failed");
  memcpy(model + 64 * KiB, src + 5, 16 * KiB);
  const uint64_t big = 3 + 199 * KiB;
  struct iovec bv[] = {
    iov(src + 7, 3), iov(src + 10, 100 * KiB),
    iov(src + 10 + 100 * KiB, 99 * KiB),
  };
  CONF_CHECK(rw(l, NBDS_OP_WRITE, 128 * KiB + 513, bv, 3, NBDS_F_FUA) == 0,
             "large unaligned WRITE failed");
  memcpy(model + 128 * KiB + 513, src + 7, big);
  CONF_CHECK(file_matches(path, 512 * KiB), "%s", why);

  struct iovec rv[] = { iov(dst, 1000), iov(dst + 1000, big - 1000 + 2) };
  CONF_CHECK(rw(l, NBDS_OP_READ, 128 * KiB + 512, rv, 2, 0) == 0,
             "READ failed");
  CONF_CHECK(bytes_match(dst, big + 2, 128 * KiB + 512), "%s", why);
  CONF_CHECK(rw1(l, NBDS_OP_READ, 64 * KiB, dst, 16 * KiB, 0) == 0,
             "READ to an odd address failed");
  CONF_CHECK(bytes_match(dst, 16 * KiB, 64 * KiB), "%s", why);
  nbds_layer_close_stack(l);
  conf_file_remove(path);
}

/* A scratch file of `blocks` blocks of the platform's direct I/O
 * alignment, opened with direct=on.  NULL with why set on failure. */
static struct nbds_layer *
setup_blocks(const char *name, unsigned blocks, int byte, uint32_t *align,
             const char **path)
{
  *align = 0;
  if (!(*path = make_file(name, 1, byte)))
    return NULL;
  *align = conf_direct_alignment(*path);
  if (*align < 512 || *align > 64 * KiB || (*align & (*align - 1)) ||
      (uint64_t) blocks * *align > MODEL_SIZE) {
    snprintf(why, sizeof why, "unusable alignment %u", *align);
    return NULL;
  }
  return setup(name, (size_t) blocks * *align, byte, true, path);
}

/* Requests aligned as the platform says are taken as they are. */
void
test_direct_alignment(void)
{
  uint32_t a;
  const char *path;
  struct nbds_layer *l = setup_blocks("dalign.img", 4, 'a', &a, &path);
  CONF_CHECK(l, "%s", why);
  unsigned char *buf = got_aligned(0, a);
  pattern(model + a, 2 * a, 5);
  memset(model + 3 * a, 'f', a);
  memcpy(buf, model + a, 3 * a);
  struct iovec v[] = { iov(buf, a), iov(buf + a, a) };
  CONF_CHECK(rw(l, NBDS_OP_WRITE, a, v, 2, 0) == 0, "WRITE of 2 x %u "
             "failed", a);
  CONF_CHECK(rw1(l, NBDS_OP_WRITE, 3 * a, buf + 2 * a, a, NBDS_F_FUA) == 0,
             "FUA WRITE of %u failed", a);
  CONF_CHECK(file_matches(path, 4 * a), "%s", why);
  memset(buf, 0, 4 * a);
  CONF_CHECK(rw1(l, NBDS_OP_READ, 0, buf, 4 * a, 0) == 0, "READ failed");
  CONF_CHECK(bytes_match(buf, 4 * a, 0), "%s", why);
  nbds_layer_close_stack(l);
  conf_file_remove(path);
}

/* Requests submitted together, without waiting, for conf_run_many. */
enum { STORM = 128 };
static struct nbds_req storm_req[STORM];
static struct nbds_req *storm[STORM];
static struct iovec storm_iov[STORM];

static void
storm_add(size_t *n, uint64_t offset, void *buf, size_t len)
{
  size_t i = (*n)++;
  storm_iov[i] = iov(buf, len);
  storm_req[i] = (struct nbds_req) {
    .op = NBDS_OP_WRITE, .offset = offset, .count = len,
    .iov = &storm_iov[i], .iovcnt = 1,
  };
  storm[i] = &storm_req[i];
}

static unsigned
lcg(unsigned *state)
{
  *state = *state * 1103515245 + 12345;
  return (*state >> 16) & 0x7fff;
}

/* Rounds of small writes cutting a few blocks into disjoint pieces, all
 * in flight at once.  Their read-modify-writes share blocks: if two
 * interleaved, one would write back the other's old bytes.  After each
 * round every byte holds its writer's value. */
void
test_direct_concurrent_rmw(void)
{
  uint32_t a;
  const char *path;
  struct nbds_layer *l = setup_blocks("dstorm.img", 8, 0x11, &a, &path);
  CONF_CHECK(l, "%s", why);
  /* A little over three blocks, not starting on a boundary. */
  const uint64_t from = 3 * a - 37, to = 6 * (uint64_t) a + 41;
  unsigned seed = 7;
  for (int round = 0; round < 4; round++) {
    size_t n = 0;
    for (uint64_t pos = from; pos < to; ) {
      size_t len = 1 + lcg(&seed) % (2 * (to - from) / STORM);
      if (pos + len > to || n == STORM - 1)
        len = to - pos;
      memset(model + pos, 0x20 + round * 50 + n % 50, len);
      storm_add(&n, pos, model + pos, len);
      pos += len;
    }
    int err = conf_run_many(l, storm, n);
    CONF_CHECK(err == 0, "round %d: a WRITE failed: %s", round,
               strerror(err));
    CONF_CHECK(file_matches(path, 8 * a), "round %d, %u writes: %s", round,
               (unsigned) n, why);
  }
  nbds_layer_close_stack(l);
  conf_file_remove(path);
}

/* Whole-block writes racing small writes inside the same blocks.  Were
 * one to land between a small write's read and its write, the old bytes
 * would come back; in either order, each byte no small write touches
 * holds the whole-block write's value. */
void
test_direct_aligned_against_rmw(void)
{
  enum { BLOCKS = 8, SMALL = 12, MAX = (4 + 2 * BLOCKS) * 64 * KiB };
  static unsigned char small[BLOCKS][SMALL][3];
  static bool touched[MAX];
  uint32_t a;
  const char *path;
  struct nbds_layer *l = setup_blocks("dmixed.img", 4 + 2 * BLOCKS, 0x11, &a,
                                      &path);
  CONF_CHECK(l, "%s", why);
  unsigned char *whole = got_aligned(0, a), *disk = got(2 * MiB);
  memset(whole, 'W', BLOCKS * (size_t) a);

  for (int round = 0; round < 3; round++) {
    size_t n = 0;
    memset(touched, 0, sizeof touched);
    for (int b = 0; b < BLOCKS; b++) {
      uint64_t block = (4 + b * 2) * (uint64_t) a;
      /* Interleaved, small, whole, small..., so that both paths meet. */
      for (int i = 0; i < SMALL; i++) {
        uint64_t off = block + 1 + i * (a / SMALL) + round;
        memset(small[b][i], 0x30 + i, 3);
        storm_add(&n, off, small[b][i], 3);
        memset(touched + off, 1, 3);
        if (i == SMALL / 2)
          storm_add(&n, block, whole + b * (size_t) a, a);
      }
    }
    int err = conf_run_many(l, storm, n);
    CONF_CHECK(err == 0, "round %d: a WRITE failed: %s", round,
               strerror(err));
    CONF_CHECK(conf_file_read(path, 0, disk, (4 + 2 * BLOCKS) * (size_t) a),
               "cannot read the file");
    for (int b = 0; b < BLOCKS; b++) {
      uint64_t block = (4 + b * 2) * (uint64_t) a;
      for (uint64_t o = block; o < block + a; o++)
        CONF_CHECK(disk[o] == 'W' || (touched[o] && disk[o] >= 0x30 &&
                                      disk[o] < 0x30 + SMALL),
                   "round %d: byte %" PRIu64 " is %d: a write was lost",
                   round, o, disk[o]);
    }
  }
  nbds_layer_close_stack(l);
  conf_file_remove(path);
}

