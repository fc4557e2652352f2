/* The POSIX file layer with direct=on (O_DIRECT): the alignment probe,
 * bounce buffers for unaligned requests, and read-modify-writes that never
 * interleave, in both aio modes on real files. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "nbdstack/layer.h"
#include "reactor.h"
#include "../../plugins/file/file.h"

#define SUITE file_direct
#include "file-harness.h"

TestSuite(file_direct, .init = setup, .fini = teardown, .timeout = 60);

/* ---- Direct I/O (direct=on) ---- */

/* What statx says O_DIRECT needs here; false if it does not say. */
static bool
statx_dio(const char *file, uint32_t *align, uint32_t *mem_align)
{
  struct statx stx;
  if (statx(AT_FDCWD, file, 0, STATX_DIOALIGN, &stx) != 0 ||
      !(stx.stx_mask & STATX_DIOALIGN))
    return false;
  *align = stx.stx_dio_offset_align;
  *mem_align = stx.stx_dio_mem_align;
  return true;
}


AIO_TEST(direct_opens_with_o_direct)
{
  make_file(64 * KiB, 'a');
  struct nbds_layer *l = open_direct(path, aio->name);
  struct file_disk *h = l->priv;
  cr_expect(has_o_direct(h->fd));
  uint32_t align, mem_align;
  if (statx_dio(path, &align, &mem_align)) {
    cr_expect_eq(h->align, align);
    cr_expect_eq(h->mem_align, mem_align);
  }
  cr_expect_geq(h->align, 512);
  cr_log_info("direct I/O alignment on %s: %u, memory %u", dir, h->align,
              h->mem_align);
  /* Still byte-granular to clients, as qemu-nbd. */
  cr_expect_eq(l->caps.block_min, 1);
  cr_expect_eq(l->caps.block_pref, 4096);
  nbds_layer_close_stack(l);

  l = open_layer(path, aio->name, "off");
  cr_expect(!has_o_direct(((struct file_disk *) l->priv)->fd));
  nbds_layer_close_stack(l);
}

/* The trial reads, for kernels without STATX_DIOALIGN: on a file with
 * data they find what statx says; on an empty file a 1-byte read works,
 * which proves nothing, and the safe 4096 is assumed. */
Test(file_direct, direct_trial_probe)
{
  make_file(64 * KiB, 'a');
  int fd = open(path, O_RDONLY | O_DIRECT);
  cr_assert(fd >= 0);
  uint32_t align = 0, mem_align = 0, want, want_mem;
  cr_assert_eq(file_direct_trial(fd, &align, &mem_align), 0);
  close(fd);
  if (statx_dio(path, &want, &want_mem))
    cr_expect_eq(align, want);
  cr_expect(mem_align >= 1 && mem_align <= 4096);

  make_file(0, 0);
  fd = open(path, O_RDONLY | O_DIRECT);
  cr_assert(fd >= 0);
  cr_assert_eq(file_direct_trial(fd, &align, &mem_align), 0);
  close(fd);
  cr_expect_eq(align, 4096);
  cr_expect_eq(mem_align, 4096);
}

AIO_TEST(direct_aligned_round_trip)
{
  make_file(64 * KiB, 'a');
  struct nbds_layer *l = open_direct(path, aio->name);
  void *p;
  cr_assert_eq(posix_memalign(&p, 4096, 16 * KiB), 0);
  unsigned char *buf = p;
  pattern(buf, 8 * KiB, 1);
  struct iovec v[] = { { buf, 4096 }, { buf + 4096, 4096 } };
  cr_assert_eq(rw(l, NBDS_OP_WRITE, 8 * KiB, v, 2, 0), 0);
  expect_bytes(0, 8 * KiB, 'a');
  expect_bytes(16 * KiB, 48 * KiB, 'a');

  memset(buf + 8 * KiB, 0, 8 * KiB);
  cr_assert_eq(rw1(l, NBDS_OP_READ, 8 * KiB, buf + 8 * KiB, 8 * KiB, 0), 0);
  cr_expect_eq(memcmp(buf, buf + 8 * KiB, 8 * KiB), 0);
  free(p);
  expect_ranges_idle(l);
  nbds_layer_close_stack(l);
}

/* 1, 100 and 4095 bytes at odd offsets: read-modify-write of the blocks
 * around them, and their neighbours keep their bytes. */
AIO_TEST(direct_unaligned_round_trip)
{
  static const uint64_t offsets[] = { 1, 4097, 8191 };
  static const size_t lens[] = { 1, 100, 4095 };
  enum { REGION = 16 * KiB, SIZE = 9 * REGION };
  make_file(SIZE, 'a');
  static unsigned char model[SIZE];
  memset(model, 'a', SIZE);
  struct nbds_layer *l = open_direct(path, aio->name);

  int k = 0;
  for (int i = 0; i < 3; i++) {
    for (int j = 0; j < 3; j++, k++) {
      uint64_t off = k * REGION + offsets[i];
      size_t len = lens[j];
      unsigned char data[4095], back[4095 + 2];
      pattern(data, len, k);
      cr_assert_eq(rw1(l, NBDS_OP_WRITE, off, data, len, 0), 0,
                   "write %zu at %llu", len, (unsigned long long) off);
      memcpy(model + off, data, len);
      expect_file(model, SIZE);

      /* Read back with a byte either side. */
      memset(back, 0, sizeof back);
      cr_assert_eq(rw1(l, NBDS_OP_READ, off - 1, back, len + 2, 0), 0);
      cr_expect_eq(memcmp(back, model + off - 1, len + 2), 0,
                   "read back %zu at %llu", len, (unsigned long long) off);
    }
  }
  expect_ranges_idle(l);
  nbds_layer_close_stack(l);
}

/* Aligned ranges whose buffers are not: copied through an aligned buffer;
 * and a large request unaligned everywhere. */
AIO_TEST(direct_unaligned_iovecs)
{
  enum { SIZE = 512 * KiB };
  make_file(SIZE, 'a');
  static unsigned char model[SIZE];
  memset(model, 'a', SIZE);
  struct nbds_layer *l = open_direct(path, aio->name);

  void *p, *q;
  cr_assert_eq(posix_memalign(&p, 4096, 256 * KiB), 0);
  cr_assert_eq(posix_memalign(&q, 4096, 256 * KiB), 0);
  unsigned char *src = (unsigned char *) p + 1, *dst = (unsigned char *) q + 3;
  pattern(src, 200 * KiB, 9);

  /* One iovec at an odd address. */
  cr_assert_eq(rw1(l, NBDS_OP_WRITE, 8 * KiB, src, 16 * KiB, 0), 0);
  memcpy(model + 8 * KiB, src, 16 * KiB);
  /* Odd segment lengths adding up to whole blocks. */
  struct iovec wv[] = {
    { src + 5, 100 }, { src + 105, 16 * KiB - 100 },
  };
  cr_assert_eq(rw(l, NBDS_OP_WRITE, 64 * KiB, wv, 2, 0), 0);
  memcpy(model + 64 * KiB, src + 5, 16 * KiB);
  /* Unaligned everywhere, large, in three pieces. */
  struct iovec bv[] = {
    { src + 7, 3 }, { src + 10, 100 * KiB }, { src + 10 + 100 * KiB, 99 * KiB },
  };
  uint64_t big = 3 + 199 * KiB;
  cr_assert_eq(rw(l, NBDS_OP_WRITE, 128 * KiB + 513, bv, 3, NBDS_F_FUA), 0);
  memcpy(model + 128 * KiB + 513, src + 7, big);
  expect_file(model, SIZE);

  struct iovec rv[] = { { dst, 1000 }, { dst + 1000, big - 1000 + 2 } };
  cr_assert_eq(rw(l, NBDS_OP_READ, 128 * KiB + 512, rv, 2, 0), 0);
  cr_expect_eq(memcmp(dst, model + 128 * KiB + 512, big + 2), 0);
  cr_assert_eq(rw1(l, NBDS_OP_READ, 64 * KiB, dst, 16 * KiB, 0), 0);
  cr_expect_eq(memcmp(dst, model + 64 * KiB, 16 * KiB), 0);
  free(p);
  free(q);
  expect_ranges_idle(l);
  nbds_layer_close_stack(l);
}

static uint64_t
file_size_now(void)
{
  struct stat st;
  cr_assert_eq(stat(path, &st), 0);
  return st.st_size;
}

/* The last block is partial: reads past end of file come back as zeroes,
 * and a write there writes its whole block, growing the file to the
 * block's end (documented in bounce.c). */
AIO_TEST(direct_tail_block_past_eof)
{
  make_file(1000, 'x');
  struct nbds_layer *l = open_direct(path, aio->name);
  uint32_t align = ((struct file_disk *) l->priv)->align;
  void *p;
  cr_assert_eq(posix_memalign(&p, 4096, 8 * KiB), 0);
  unsigned char *buf = p;

  /* An aligned read across end of file, and an unaligned one. */
  memset(buf, 0xAA, 4096);
  cr_assert_eq(rw1(l, NBDS_OP_READ, 0, buf, 4096, 0), 0);
  cr_expect(all_bytes(buf, 1000, 'x'));
  cr_expect(all_bytes(buf + 1000, 4096 - 1000, 0));
  memset(buf, 0xAA, 4096);
  cr_assert_eq(rw1(l, NBDS_OP_READ, 999, buf, 3, 0), 0);
  cr_expect(buf[0] == 'x' && buf[1] == 0 && buf[2] == 0);

  /* Across end of file... */
  memset(buf, 'd', 100);
  cr_assert_eq(rw1(l, NBDS_OP_WRITE, 950, buf, 100, 0), 0);
  uint64_t size = (1050 + align - 1) / align * align;
  cr_expect_eq(file_size_now(), size);
  expect_bytes(0, 950, 'x');
  expect_bytes(950, 100, 'd');
  expect_bytes(1050, size - 1050, 0);

  /* ...and wholly past it. */
  uint64_t at = size + 77;
  cr_assert_eq(rw1(l, NBDS_OP_WRITE, at, buf, 100, 0), 0);
  uint64_t size2 = (at + 100 + align - 1) / align * align;
  cr_expect_eq(file_size_now(), size2);
  expect_bytes(size, 77, 0);
  expect_bytes(at, 100, 'd');
  expect_bytes(at + 100, size2 - at - 100, 0);

  memset(buf, 0xAA, 8 * KiB);
  cr_assert_eq(rw1(l, NBDS_OP_READ, 0, buf, 8 * KiB, 0), 0);
  cr_expect(all_bytes(buf, 950, 'x'));
  cr_expect(all_bytes(buf + 950, 100, 'd'));
  cr_expect(all_bytes(buf + 1050, at - 1050, 0));
  cr_expect(all_bytes(buf + at, 100, 'd'));
  cr_expect(all_bytes(buf + at + 100, 8 * KiB - at - 100, 0));
  free(p);
  nbds_layer_close_stack(l);
}

AIO_TEST(direct_fua_write_and_flush)
{
  make_file(64 * KiB, 'a');
  struct nbds_layer *l = open_direct(path, aio->name);
  void *p;
  cr_assert_eq(posix_memalign(&p, 4096, 8 * KiB), 0);
  memset(p, 'f', 8 * KiB);
  cr_assert_eq(rw1(l, NBDS_OP_WRITE, 333, p, 5000, NBDS_F_FUA), 0);
  cr_assert_eq(rw1(l, NBDS_OP_WRITE, 32 * KiB, p, 8 * KiB, NBDS_F_FUA), 0);
  cr_assert_eq(cmd(l, NBDS_OP_FLUSH, 0, 0, 0), 0);
  expect_bytes(0, 333, 'a');
  expect_bytes(333, 5000, 'f');
  expect_bytes(5333, 32 * KiB - 5333, 'a');
  expect_bytes(32 * KiB, 8 * KiB, 'f');
  expect_bytes(40 * KiB, 24 * KiB, 'a');
  free(p);
  nbds_layer_close_stack(l);
}

/* ZERO is fallocate whatever the open flags; writing zeroes, the fallback,
 * must then keep to whole blocks. */
AIO_TEST(direct_zero)
{
  make_file(4 * MiB, 0x55);
  struct nbds_layer *l = open_direct(path, aio->name);
  cr_assert_eq(cmd(l, NBDS_OP_ZERO, 256 * KiB - 100, 256 * KiB + 200,
                   NBDS_F_FUA), 0);
  expect_bytes(256 * KiB - 200, 100, 0x55);
  expect_bytes(256 * KiB - 100, 256 * KiB + 200, 0);
  expect_bytes(512 * KiB + 100, 100, 0x55);

  struct file_disk *h = l->priv;
  atomic_store(&h->no_punch, true);
  atomic_store(&h->no_zero_range, true);
  cr_expect_eq(cmd(l, NBDS_OP_ZERO, 1 * MiB + 5, 1 * MiB, NBDS_F_FAST_ZERO),
               ENOTSUP);
  expect_bytes(1 * MiB, 3 * MiB, 0x55);
  cr_assert_eq(cmd(l, NBDS_OP_ZERO, 1 * MiB + 5, 1 * MiB, NBDS_F_FUA), 0);
  cr_assert_eq(cmd(l, NBDS_OP_ZERO, 3 * MiB + 100, 50, 0), 0);
  cr_assert_eq(cmd(l, NBDS_OP_ZERO, 3 * MiB + 8 * KiB, 4 * KiB, 0), 0);
  expect_bytes(1 * MiB, 5, 0x55);
  expect_bytes(1 * MiB + 5, 1 * MiB, 0);
  expect_bytes(2 * MiB + 5, 1 * MiB - 5 + 100, 0x55);
  expect_bytes(3 * MiB + 100, 50, 0);
  expect_bytes(3 * MiB + 150, 8 * KiB - 150, 0x55);
  expect_bytes(3 * MiB + 8 * KiB, 4 * KiB, 0);
  expect_bytes(3 * MiB + 12 * KiB, 1 * MiB - 12 * KiB, 0x55);
  expect_ranges_idle(l);
  nbds_layer_close_stack(l);
}

/* A file system without direct I/O: ramfs refuses O_DIRECT at open. */
Test(file_direct, direct_refused)
{
  snprintf(ram, sizeof ram, "%s/ram", dir);
  cr_assert_eq(mkdir(ram, 0700), 0);
  if (mount("ramfs", ram, "ramfs", 0, NULL) != 0) {
    rmdir(ram);
    *ram = 0;
    cr_skip_test("cannot mount ramfs: %s", strerror(errno));
  }
  char file[192], want[512];
  snprintf(file, sizeof file, "%s/disk.img", ram);
  int fd = open(file, O_RDWR | O_CREAT, 0644);
  cr_assert(fd >= 0);
  cr_assert_eq(ftruncate(fd, 1 * MiB), 0);
  close(fd);

  struct nbds_kv kv[] = { { "file", file }, { "direct", "on" } };
  snprintf(want, sizeof want,
           "'%s': the filesystem does not support direct I/O (O_DIRECT); "
           "use --cache=writeback or --cache=writethrough instead", file);
  cr_expect_str_eq(open_error(kv, 2), want);
  struct nbds_kv kv_ro[] = {
    { "file", file }, { "direct", "on" }, { "readonly", "on" },
  };
  cr_expect_str_eq(open_error(kv_ro, 3), want);

  /* Buffered I/O is fine there. */
  kv[1].value = "off";
  struct nbds_layer *l = nbds_layer_open("file", NULL, kv, 2);
  cr_expect_not_null(l, "open: %s", nbds_last_error());
  if (l)
    nbds_layer_close_stack(l);
}

/* tmpfs takes O_DIRECT on this kernel but does not answer STATX_DIOALIGN:
 * the trial reads decide. */
AIO_TEST(direct_on_tmpfs)
{
  struct statfs sf;
  if (statfs("/dev/shm", &sf) != 0 || sf.f_type != 0x01021994)
    cr_skip_test("/dev/shm is not tmpfs");
  strcpy(path, "/dev/shm/nbds-test-file-XXXXXX");
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  close(fd);
  make_file(64 * KiB, 'a');
  struct nbds_kv kv[] = {
    { "file", path }, { "aio", aio->name }, { "direct", "on" },
  };
  struct nbds_layer *l = nbds_layer_open("file", NULL, kv, 3);
  if (!l && strstr(nbds_last_error(), "does not support direct I/O"))
    cr_skip_test("tmpfs refuses O_DIRECT on this kernel");
  cr_assert_not_null(l, "open: %s", nbds_last_error());
  struct file_disk *h = l->priv;
  uint32_t align, mem_align;
  if (!statx_dio(path, &align, &mem_align)) {
    cr_expect_eq(h->align, 4096);
    cr_expect_eq(h->mem_align, 4096);
  }
  cr_log_info("direct I/O alignment on tmpfs: %u, memory %u", h->align,
              h->mem_align);
  unsigned char data[100], back[102];
  pattern(data, sizeof data, 3);
  cr_assert_eq(rw1(l, NBDS_OP_WRITE, 4090, data, sizeof data, 0), 0);
  cr_assert_eq(rw1(l, NBDS_OP_READ, 4089, back, sizeof back, 0), 0);
  cr_expect(back[0] == 'a' && back[101] == 'a');
  cr_expect_eq(memcmp(back + 1, data, sizeof data), 0);
  nbds_layer_close_stack(l);
}

/* ---- Concurrent writes under direct, from two reactors ---- */

enum { STORM = 128 };
struct storm {
  struct nbds_layer *l;
  int n;
  struct nbds_req req[STORM];
  struct iovec iov[STORM];
  int reactor[STORM];         /* which reactor submits it: 0 or 1 */
  int err[STORM];
  int left0;                  /* reactor 0's not yet completed */
  sem_t done1;                /* one post per completion on reactor 1 */
};

static void
storm_done(struct nbds_req *req, int err)
{
  struct storm *s = req->opaque;
  int i = req - s->req;
  s->err[i] = err;
  if (s->reactor[i] == 0)
    s->left0--;
  else
    sem_post(&s->done1);
}

static void
storm_submit1(void *arg)
{
  struct storm *s = arg;
  for (int i = 0; i < s->n; i++)
    if (s->reactor[i] == 1)
      nbds_layer_submit(s->l, &s->req[i]);
}

static void
storm_add(struct storm *s, uint64_t offset, void *buf, size_t len)
{
  int i = s->n++;
  cr_assert_leq(s->n, STORM);
  s->iov[i] = (struct iovec) { buf, len };
  s->reactor[i] = i % 2;
  s->req[i] = (struct nbds_req) {
    .op = NBDS_OP_WRITE, .offset = offset, .count = len,
    .iov = &s->iov[i], .iovcnt = 1, .done = storm_done, .opaque = s,
  };
}

/* Submit everything at once, half from a second reactor's thread, half
 * from this one, and wait for all of it. */
static void
storm_run(struct storm *s, struct nbds_reactor *r1)
{
  struct ev_loop *loop = nbds_reactor_loop(reactor);
  s->left0 = 0;
  for (int i = 0; i < s->n; i++)
    s->left0 += s->reactor[i] == 0;
  nbds_reactor_post(r1, storm_submit1, s);
  for (int i = 0; i < s->n; i++)
    if (s->reactor[i] == 0)
      nbds_layer_submit(s->l, &s->req[i]);
  ev_ref(loop);
  while (s->left0 > 0)
    ev_run(loop, EVRUN_ONCE);
  ev_unref(loop);
  for (int i = 0; i < s->n - (s->n + 1) / 2; i++)
    sem_wait(&s->done1);
  for (int i = 0; i < s->n; i++)
    cr_expect_eq(s->err[i], 0, "write %d: %s", i, strerror(s->err[i]));
}

static unsigned
lcg(unsigned *state)
{
  *state = *state * 1103515245 + 12345;
  return (*state >> 16) & 0x7fff;
}

/* Rounds of many small writes, cutting a few blocks into disjoint pieces
 * (differently each round), all in flight at once.  Their read-modify-
 * writes share blocks: if two interleaved, one would write back the
 * other's old bytes.  After each round every byte holds what that round's
 * writer gave it. */
AIO_TEST(direct_concurrent_rmw)
{
  enum { SIZE = 64 * KiB, ROUNDS = 4 };
  make_file(SIZE, 0x11);
  static unsigned char model[SIZE], data[SIZE];
  memset(model, 0x11, SIZE);
  static struct storm s;
  s.l = open_direct(path, aio->name);
  uint32_t align = ((struct file_disk *) s.l->priv)->align;
  if (7 * align > SIZE)
    cr_skip_test("blocks of %u bytes are too large for this test", align);
  sem_init(&s.done1, 0, 0);
  struct nbds_reactor *r1 = reactor_create(1, reactor_uring_works());
  cr_assert_not_null(r1);
  reactor_start(r1);

  /* A little over three blocks, not starting on a boundary. */
  uint64_t from = 3 * align - 37, to = 6 * align + 41;
  unsigned seed = 7;
  for (int round = 0; round < ROUNDS; round++) {
    s.n = 0;
    uint64_t pos = from;
    for (int i = 0; pos < to; i++) {
      size_t len = 1 + lcg(&seed) % (2 * (to - from) / STORM);
      if (pos + len > to || i == STORM - 1)
        len = to - pos;
      memset(data + pos, 0x20 + round * 50 + i % 50, len);
      memcpy(model + pos, data + pos, len);
      storm_add(&s, pos, data + pos, len);
      pos += len;
    }
    cr_log_info("round %d: %d writes", round, s.n);
    storm_run(&s, r1);
    expect_file(model, SIZE);
  }
  reactor_stop(r1);
  reactor_destroy(r1);
  sem_destroy(&s.done1);
  expect_ranges_idle(s.l);
  nbds_layer_close_stack(s.l);
}

/* Whole-block writes racing small writes inside the same blocks.  Were an
 * aligned write to land between a small write's read and its write, the
 * old bytes would come back; in either serial order, each byte the small
 * writes do not touch holds the whole-block write's value. */
AIO_TEST(direct_aligned_write_against_rmw)
{
  enum { SIZE = 256 * KiB, BLOCKS = 8, SMALL = 12 };
  make_file(SIZE, 0x11);
  static struct storm s;
  s.l = open_direct(path, aio->name);
  uint32_t align = ((struct file_disk *) s.l->priv)->align;
  if ((4 + 2 * BLOCKS) * align > SIZE)
    cr_skip_test("blocks of %u bytes are too large for this test", align);
  sem_init(&s.done1, 0, 0);
  struct nbds_reactor *r1 = reactor_create(1, reactor_uring_works());
  cr_assert_not_null(r1);
  reactor_start(r1);

  void *p;
  cr_assert_eq(posix_memalign(&p, 4096, BLOCKS * align), 0);
  memset(p, 'W', BLOCKS * align);
  static unsigned char small[BLOCKS][SMALL][3];
  static bool touched[SIZE];
  for (int round = 0; round < 3; round++) {
    s.n = 0;
    memset(touched, 0, sizeof touched);
    for (int b = 0; b < BLOCKS; b++) {
      uint64_t block = (4 + b * 2) * (uint64_t) align;
      /* Interleave: small, whole, small... so that both paths meet. */
      for (int i = 0; i < SMALL; i++) {
        uint64_t off = block + 1 + i * (align / SMALL) + round;
        memset(small[b][i], 0x30 + i, 3);
        storm_add(&s, off, small[b][i], 3);
        memset(touched + off, 1, 3);
        if (i == SMALL / 2)
          storm_add(&s, block, (char *) p + b * align, align);
      }
    }
    storm_run(&s, r1);
    int fd = open(path, O_RDONLY);
    cr_assert(fd >= 0);
    static unsigned char back[SIZE];
    cr_assert_eq(pread(fd, back, SIZE, 0), SIZE);
    close(fd);
    for (int b = 0; b < BLOCKS; b++) {
      uint64_t block = (4 + b * 2) * (uint64_t) align;
      for (uint64_t o = block; o < block + align; o++)
        if (!touched[o])
          cr_assert_eq(back[o], 'W', "round %d: byte %llu is %d: a write "
                       "was lost", round, (unsigned long long) o, back[o]);
        else
          cr_assert(back[o] == 'W' || (back[o] >= 0x30 &&
                                       back[o] < 0x30 + SMALL));
    }
  }
  free(p);
  reactor_stop(r1);
  reactor_destroy(r1);
  sem_destroy(&s.done1);
  expect_ranges_idle(s.l);
  nbds_layer_close_stack(s.l);
}

