/* The POSIX file layer, driven through the layer contract on a real
 * reactor (reactor 0 on this thread) with the worker pool, in both aio
 * modes, on files in /var/tmp (a real file system: holes, fallocate and
 * O_DIRECT behave as they do for users) and on a loop device when we may
 * make one. */
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

#define SUITE file
#include "file-harness.h"

/* ---- Opening ---- */

TestSuite(file, .init = setup, .fini = teardown, .timeout = 60);

Test(file, open_errors)
{
  char want[256], missing[128];
  snprintf(missing, sizeof missing, "%s/missing.img", dir);

  struct nbds_kv kv_missing[] = { { "file", missing } };
  snprintf(want, sizeof want,
           "cannot open '%s': No such file or directory", missing);
  cr_expect_str_eq(open_error(kv_missing, 1), want);

  struct nbds_kv kv_dir[] = { { "file", dir } };
  snprintf(want, sizeof want, "cannot open '%s': Is a directory", dir);
  cr_expect_str_eq(open_error(kv_dir, 1), want);

  struct nbds_kv kv_dir_ro[] = { { "file", dir }, { "readonly", "on" } };
  snprintf(want, sizeof want,
           "'%s' is not a regular file or block device", dir);
  cr_expect_str_eq(open_error(kv_dir_ro, 2), want);

  make_file(4096, 0);
  struct nbds_kv kv_unknown[] = { { "file", path }, { "bogus", "1" } };
  cr_expect_str_eq(open_error(kv_unknown, 2), "file: unknown option 'bogus'");
  struct nbds_kv kv_aio[] = { { "file", path }, { "aio", "posix" } };
  cr_expect_str_eq(open_error(kv_aio, 2),
                   "file: aio must be io_uring or threads, not 'posix'");
  struct nbds_kv kv_ro[] = { { "file", path }, { "readonly", "yes" } };
  cr_expect_str_eq(open_error(kv_ro, 2),
                   "file: readonly must be on or off, not 'yes'");
  struct nbds_kv kv_direct[] = { { "file", path }, { "direct", "yes" } };
  cr_expect_str_eq(open_error(kv_direct, 2),
                   "file: direct must be on or off, not 'yes'");
  struct nbds_kv kv_none[] = { { "aio", "threads" } };
  cr_expect_not_null(strstr(open_error(kv_none, 1), "'file'"));
}

Test(file, caps_and_exact_size)
{
  make_file(1000, 'x');
  struct nbds_layer *l = open_layer(path, "io_uring", "off");
  cr_expect_eq(l->size, 1000);
  struct nbds_caps c = l->caps;
  cr_expect(c.can_write && c.can_flush && c.can_trim && c.can_zero &&
            c.can_fast_zero && c.can_extents && c.can_cache &&
            c.can_multi_conn);
  cr_expect_eq(c.fua, NBDS_FUA_NATIVE);
  cr_expect_eq(c.block_min, 1);
  cr_expect_eq(c.block_pref, 4096);
  cr_expect_eq(c.block_max, 32 * MiB);
  nbds_layer_close_stack(l);
}

Test(file, readonly_refuses_writes)
{
  make_file(8192, 'r');
  struct nbds_layer *l = open_layer(path, "io_uring", "on");
  cr_expect(!l->caps.can_write);
  cr_expect(!l->caps.can_trim && !l->caps.can_zero);
  char buf[512];
  memset(buf, 'w', sizeof buf);
  cr_expect_eq(rw1(l, NBDS_OP_WRITE, 0, buf, sizeof buf, 0), EROFS);
  cr_expect_eq(cmd(l, NBDS_OP_ZERO, 0, 4096, 0), EROFS);
  cr_expect_eq(rw1(l, NBDS_OP_READ, 0, buf, sizeof buf, 0), 0);
  cr_expect(all_bytes((unsigned char *) buf, sizeof buf, 'r'));
  nbds_layer_close_stack(l);
  expect_bytes(0, 8192, 'r');
}

/* Without a ring on this reactor, aio=io_uring quietly uses the workers. */
Test(file_no_ring, io_uring_uses_workers, .init = setup_no_ring,
     .fini = teardown, .timeout = 60)
{
  make_file(64 * KiB, 'a');
  struct nbds_layer *l = open_layer(path, "io_uring", "off");
  cr_assert(!nbds_uring_available());
  char buf[3000];
  memset(buf, 'b', sizeof buf);
  cr_assert_eq(rw1(l, NBDS_OP_WRITE, 4097, buf, sizeof buf, NBDS_F_FUA), 0);
  memset(buf, 0, sizeof buf);
  cr_assert_eq(rw1(l, NBDS_OP_READ, 4097, buf, sizeof buf, 0), 0);
  cr_expect(all_bytes((unsigned char *) buf, sizeof buf, 'b'));
  nbds_layer_close_stack(l);
}

/* ---- Every operation, in both aio modes ---- */


AIO_TEST(write_read_round_trip)
{
  make_file(64 * KiB, 'a');
  struct nbds_layer *l = open_layer(path, aio->name, "off");

  unsigned char data[10000];
  for (size_t i = 0; i < sizeof data; i++)
    data[i] = i * 7 + 1;
  struct iovec wv[] = {
    { data, 1 }, { data + 1, 4095 }, { data + 4096, sizeof data - 4096 },
  };
  cr_assert_eq(rw(l, NBDS_OP_WRITE, 12345, wv, 3, 0), 0);

  /* Read one byte either side, split differently. */
  unsigned char back[10002];
  struct iovec rv[] = { { back, 7 }, { back + 7, sizeof back - 7 } };
  cr_assert_eq(rw(l, NBDS_OP_READ, 12344, rv, 2, 0), 0);
  cr_expect_eq(back[0], 'a');
  cr_expect_eq(memcmp(back + 1, data, sizeof data), 0);
  cr_expect_eq(back[sizeof back - 1], 'a');
  nbds_layer_close_stack(l);
  expect_bytes(0, 12345, 'a');
  expect_bytes(12345 + sizeof data, 64 * KiB - 12345 - sizeof data, 'a');
}

/* More iovecs than one syscall takes (IOV_MAX is 1024): the layer must go
 * on from where a call stopped, across iovec boundaries. */
AIO_TEST(more_iovecs_than_iov_max)
{
  enum { N = 1500, EACH = 3 };
  make_file(64 * KiB, 'a');
  struct nbds_layer *l = open_layer(path, aio->name, "off");

  static unsigned char data[N * EACH], back[N * EACH];
  static struct iovec v[N];
  for (size_t i = 0; i < sizeof data; i++)
    data[i] = i % 251;
  for (int i = 0; i < N; i++)
    v[i] = (struct iovec) { data + i * EACH, EACH };
  cr_assert_eq(rw(l, NBDS_OP_WRITE, 7, v, N, 0), 0);
  /* The submitter's iovecs are left as they were. */
  cr_expect(v[N - 1].iov_base == data + (N - 1) * EACH);
  cr_expect_eq(v[N - 1].iov_len, EACH);

  for (int i = 0; i < N; i++)
    v[i] = (struct iovec) { back + i * EACH, EACH };
  cr_assert_eq(rw(l, NBDS_OP_READ, 7, v, N, 0), 0);
  cr_expect_eq(memcmp(back, data, sizeof data), 0);

  /* The same across end of file: 2000 bytes of file, then zeroes. */
  memset(back, 0xAA, sizeof back);
  cr_assert_eq(rw(l, NBDS_OP_READ, 64 * KiB - 2000, v, N, 0), 0);
  cr_expect(all_bytes(back, 2000, 'a'));
  cr_expect(all_bytes(back + 2000, sizeof back - 2000, 0));
  nbds_layer_close_stack(l);
}

AIO_TEST(read_past_eof_zero_fills)
{
  make_file(1000, 'x');
  struct nbds_layer *l = open_layer(path, aio->name, "off");

  unsigned char buf[4096];
  memset(buf, 0xAA, sizeof buf);
  struct iovec v[] = { { buf, 999 }, { buf + 999, 2 }, { buf + 1001, 3095 } };
  cr_assert_eq(rw(l, NBDS_OP_READ, 0, v, 3, 0), 0);
  cr_expect(all_bytes(buf, 1000, 'x'));
  cr_expect(all_bytes(buf + 1000, sizeof buf - 1000, 0));

  /* Wholly past the end. */
  memset(buf, 0xAA, sizeof buf);
  cr_assert_eq(rw1(l, NBDS_OP_READ, 1000, buf, 512, 0), 0);
  cr_expect(all_bytes(buf, 512, 0));
  nbds_layer_close_stack(l);
}

AIO_TEST(fua_write_and_flush)
{
  make_file(64 * KiB, 'a');
  struct nbds_layer *l = open_layer(path, aio->name, "off");
  char buf[5000];
  memset(buf, 'f', sizeof buf);
  cr_assert_eq(rw1(l, NBDS_OP_WRITE, 333, buf, sizeof buf, NBDS_F_FUA), 0);
  cr_assert_eq(cmd(l, NBDS_OP_FLUSH, 0, 0, 0), 0);
  expect_bytes(333, sizeof buf, 'f');
  expect_bytes(333 + sizeof buf, 100, 'a');
  nbds_layer_close_stack(l);
}

AIO_TEST(trim_punches_a_hole)
{
  make_file(1 * MiB, 0x55);
  long long before = blocks();
  struct nbds_layer *l = open_layer(path, aio->name, "off");
  cr_assert_eq(cmd(l, NBDS_OP_TRIM, 256 * KiB, 256 * KiB, 0), 0);
  cr_expect_eq(seek(SEEK_HOLE, 0), 256 * KiB);
  cr_expect_eq(seek(SEEK_DATA, 256 * KiB), 512 * KiB);
  cr_expect_leq(blocks(), before - 256 * KiB / 512);
  expect_bytes(256 * KiB, 256 * KiB, 0);
  expect_bytes(512 * KiB, 512 * KiB, 0x55);
  /* With FUA too. */
  cr_assert_eq(cmd(l, NBDS_OP_TRIM, 768 * KiB, 64 * KiB, NBDS_F_FUA), 0);
  cr_expect_eq(seek(SEEK_HOLE, 512 * KiB), 768 * KiB);
  nbds_layer_close_stack(l);
}

AIO_TEST(zero_may_punch)
{
  make_file(1 * MiB, 0x55);
  long long before = blocks();
  struct nbds_layer *l = open_layer(path, aio->name, "off");
  /* Unaligned ends: the partial blocks are zeroed, their neighbours kept. */
  cr_assert_eq(cmd(l, NBDS_OP_ZERO, 256 * KiB - 100, 256 * KiB + 200,
                   NBDS_F_FAST_ZERO | NBDS_F_FUA), 0);
  expect_bytes(0, 256 * KiB - 100, 0x55);
  expect_bytes(256 * KiB - 100, 256 * KiB + 200, 0);
  expect_bytes(512 * KiB + 100, 512 * KiB - 100, 0x55);
  cr_expect_eq(seek(SEEK_HOLE, 0), 256 * KiB);
  cr_expect_lt(blocks(), before);

  unsigned char buf[1000];
  memset(buf, 0xAA, sizeof buf);
  cr_assert_eq(rw1(l, NBDS_OP_READ, 256 * KiB - 500, buf, sizeof buf, 0), 0);
  cr_expect(all_bytes(buf, 400, 0x55));
  cr_expect(all_bytes(buf + 400, 600, 0));
  nbds_layer_close_stack(l);
}

AIO_TEST(zero_no_hole_keeps_blocks)
{
  make_file(1 * MiB, 0x55);
  long long before = blocks();
  struct nbds_layer *l = open_layer(path, aio->name, "off");
  cr_assert_eq(cmd(l, NBDS_OP_ZERO, 256 * KiB, 256 * KiB, NBDS_F_NO_HOLE), 0);
  cr_expect_geq(blocks(), before);
  /* ZERO_RANGE on a regular file is cheap, so FAST_ZERO is served. */
  cr_assert_eq(cmd(l, NBDS_OP_ZERO, 600 * KiB + 1, 10000,
                   NBDS_F_NO_HOLE | NBDS_F_FAST_ZERO | NBDS_F_FUA), 0);
  expect_bytes(0, 256 * KiB, 0x55);
  expect_bytes(256 * KiB, 256 * KiB, 0);
  expect_bytes(600 * KiB + 1, 10000, 0);
  expect_bytes(600 * KiB + 10001, 100, 0x55);
  /* Not fewer blocks; split extents may cost the file system a block of
   * extent tree. */
  cr_expect_geq(blocks(), before);
  nbds_layer_close_stack(l);
}

/* Pretend the file system has neither PUNCH_HOLE nor ZERO_RANGE: zeroing
 * writes zeroes (over several 1 MiB chunks), and FAST_ZERO is refused
 * with nothing changed. */
AIO_TEST(zero_by_writing)
{
  make_file(4 * MiB, 0x55);
  long long before = blocks();
  struct nbds_layer *l = open_layer(path, aio->name, "off");
  struct file_disk *h = l->priv;
  atomic_store(&h->no_punch, true);
  atomic_store(&h->no_zero_range, true);

  cr_expect_eq(cmd(l, NBDS_OP_ZERO, 5, 3 * MiB, NBDS_F_FAST_ZERO), ENOTSUP);
  expect_bytes(0, 4 * MiB, 0x55);

  cr_assert_eq(cmd(l, NBDS_OP_ZERO, 5, 3 * MiB, NBDS_F_FUA), 0);
  expect_bytes(0, 5, 0x55);
  expect_bytes(5, 3 * MiB, 0);
  expect_bytes(3 * MiB + 5, 1 * MiB - 5, 0x55);
  cr_expect_eq(blocks(), before);

  /* Trim without PUNCH_HOLE does nothing, successfully. */
  cr_expect_eq(cmd(l, NBDS_OP_TRIM, 0, 4 * MiB, 0), 0);
  expect_bytes(0, 5, 0x55);
  nbds_layer_close_stack(l);
}

/* Data [0, 64K), a hole [64K, 192K), data [192K, 256K + 100), end of file,
 * then export padding. */
AIO_TEST(block_status_follows_the_layout)
{
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  cr_assert(fd >= 0);
  static char data[64 * KiB + 100];
  memset(data, 'd', sizeof data);
  cr_assert_eq(pwrite(fd, data, 64 * KiB, 0), 64 * KiB);
  cr_assert_eq(pwrite(fd, data, sizeof data, 192 * KiB), sizeof data);
  cr_assert_eq(fsync(fd), 0);
  close(fd);
  if (seek(SEEK_HOLE, 0) != 64 * KiB)
    cr_skip_test("this file system does not report holes");
  struct nbds_layer *l = open_layer(path, aio->name, "off");
  const uint64_t eof = 256 * KiB + 100;
  cr_expect_eq(l->size, eof);

  struct nbds_extent v[8];
  size_t n = block_status(l, 0, 512 * KiB, 0, v, 8);
  cr_expect_eq(n, 4);
  expect_extent(&v[0], 64 * KiB, 0);
  expect_extent(&v[1], 128 * KiB, HZ);
  expect_extent(&v[2], eof - 192 * KiB, 0);
  expect_extent(&v[3], 512 * KiB - eof, HZ);

  /* REQ_ONE: the first extent is enough. */
  n = block_status(l, 0, 512 * KiB, NBDS_F_REQ_ONE, v, 8);
  cr_expect_eq(n, 1);
  expect_extent(&v[0], 64 * KiB, 0);

  /* Starting inside the hole, ending inside data. */
  n = block_status(l, 100000, 100000, 0, v, 8);
  cr_expect_eq(n, 2);
  expect_extent(&v[0], 192 * KiB - 100000, HZ);
  expect_extent(&v[1], 200000 - 192 * KiB, 0);

  /* Only the padding past end of file. */
  n = block_status(l, 300000, 1000, 0, v, 8);
  cr_expect_eq(n, 1);
  expect_extent(&v[0], 1000, HZ);

  /* A full list stops the walk. */
  n = block_status(l, 0, 512 * KiB, 0, v, 2);
  cr_expect_eq(n, 2);
  expect_extent(&v[1], 128 * KiB, HZ);
  nbds_layer_close_stack(l);
}

AIO_TEST(cache_is_a_hint)
{
  make_file(64 * KiB, 'c');
  struct nbds_layer *l = open_layer(path, aio->name, "off");
  cr_expect_eq(cmd(l, NBDS_OP_CACHE, 0, 64 * KiB, 0), 0);
  cr_expect_eq(cmd(l, NBDS_OP_CACHE, 1 * MiB, 4096, 0), 0);
  nbds_layer_close_stack(l);
}

/* Requests from a second reactor, on its own thread, complete there; when
 * the thread exits, its free list of request state goes with it (the
 * leak checker of a sanitizer build would see it otherwise). */
enum { BURST = 8 };
struct burst {
  struct nbds_layer *l;
  struct nbds_req req[BURST];
  struct iovec iov[BURST];
  char buf[BURST][4096];
  int err[BURST];
  pthread_t thread[BURST];
  sem_t done;
};

static void
burst_done(struct nbds_req *req, int err)
{
  struct burst *b = req->opaque;
  int i = req - b->req;
  b->err[i] = err;
  b->thread[i] = pthread_self();
  sem_post(&b->done);
}

static void
burst_submit(void *arg)
{
  struct burst *b = arg;
  for (int i = 0; i < BURST; i++)
    nbds_layer_submit(b->l, &b->req[i]);
}

AIO_TEST(requests_from_another_reactor)
{
  make_file(64 * KiB, 'a');
  static struct burst b;
  b.l = open_layer(path, aio->name, "off");
  sem_init(&b.done, 0, 0);
  for (int i = 0; i < BURST; i++) {
    memset(b.buf[i], 'A' + i, sizeof b.buf[i]);
    b.iov[i] = (struct iovec) { b.buf[i], sizeof b.buf[i] };
    b.req[i] = (struct nbds_req) {
      .op = NBDS_OP_WRITE, .flags = NBDS_F_FUA, .offset = i * 4096 + 1,
      .count = 4096, .iov = &b.iov[i], .iovcnt = 1,
      .done = burst_done, .opaque = &b,
    };
  }
  struct nbds_reactor *r1 = reactor_create(1, reactor_uring_works());
  cr_assert_not_null(r1);
  reactor_start(r1);
  nbds_reactor_post(r1, burst_submit, &b);
  for (int i = 0; i < BURST; i++)
    sem_wait(&b.done);
  reactor_stop(r1);
  reactor_destroy(r1);

  for (int i = 0; i < BURST; i++) {
    cr_expect_eq(b.err[i], 0);
    cr_expect(pthread_equal(b.thread[i], b.thread[0]));
    cr_expect(!pthread_equal(b.thread[i], pthread_self()));
    expect_bytes(i * 4096 + 1, 4096, 'A' + i);
  }
  sem_destroy(&b.done);
  nbds_layer_close_stack(b.l);
}

/* ---- A block device: a loop device over a file, if we may make one ---- */

static void
make_loop_device(char *dev, size_t len)
{
  make_file(8 * MiB, 0x55);
  int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (ctl < 0)
    cr_skip_test("no /dev/loop-control: %s", strerror(errno));
  int backing = open(path, O_RDWR | O_CLOEXEC);
  cr_assert(backing >= 0);
  /* Tests run in parallel: another may take the device we were offered. */
  for (int tries = 0; tries < 20 && loop_fd < 0; tries++) {
    int n = ioctl(ctl, LOOP_CTL_GET_FREE);
    if (n < 0)
      break;
    snprintf(dev, len, "/dev/loop%d", n);
    int fd = open(dev, O_RDWR | O_CLOEXEC);
    if (fd < 0)
      break;
    if (ioctl(fd, LOOP_SET_FD, backing) == 0)
      loop_fd = fd;
    else
      close(fd);
  }
  /* Detach when the last fd closes, even if this test crashes. */
  struct loop_info64 info = { .lo_flags = LO_FLAGS_AUTOCLEAR };
  if (loop_fd >= 0)
    ioctl(loop_fd, LOOP_SET_STATUS64, &info);
  close(backing);
  close(ctl);
  if (loop_fd < 0)
    cr_skip_test("cannot set up a loop device");
}

AIO_TEST(block_device)
{
  char dev[64];
  make_loop_device(dev, sizeof dev);
  struct nbds_layer *l = open_layer(dev, aio->name, "off");
  cr_expect_eq(l->size, 8 * MiB);

  unsigned char buf[10000];
  memset(buf, 'b', sizeof buf);
  cr_assert_eq(rw1(l, NBDS_OP_WRITE, 1001, buf, sizeof buf, NBDS_F_FUA), 0);
  memset(buf, 0, sizeof buf);
  cr_assert_eq(rw1(l, NBDS_OP_READ, 1001, buf, sizeof buf, 0), 0);
  cr_expect(all_bytes(buf, sizeof buf, 'b'));

  /* NO_HOLE on a block device can only be done slowly. */
  cr_expect_eq(cmd(l, NBDS_OP_ZERO, 1 * MiB, 1 * MiB,
                   NBDS_F_NO_HOLE | NBDS_F_FAST_ZERO), ENOTSUP);

  /* Unaligned ends are written, the sectors between deallocated. */
  cr_assert_eq(cmd(l, NBDS_OP_ZERO, 1 * MiB - 100, 1 * MiB + 200,
                   NBDS_F_FUA), 0);
  cr_assert_eq(cmd(l, NBDS_OP_ZERO, 4 * MiB + 3, 1000, NBDS_F_NO_HOLE), 0);
  cr_assert_eq(cmd(l, NBDS_OP_ZERO, 5 * MiB, 1 * MiB, NBDS_F_NO_HOLE), 0);
  cr_assert_eq(cmd(l, NBDS_OP_TRIM, 7 * MiB + 1, 512 * KiB, NBDS_F_FUA), 0);

  static unsigned char all[8 * MiB];
  cr_assert_eq(rw1(l, NBDS_OP_READ, 0, all, sizeof all, 0), 0);
  cr_expect(all_bytes(all, 1001, 0x55));
  cr_expect(all_bytes(all + 1001, 10000, 'b'));
  cr_expect(all_bytes(all + 11001, 1 * MiB - 100 - 11001, 0x55));
  cr_expect(all_bytes(all + 1 * MiB - 100, 1 * MiB + 200, 0));
  cr_expect(all_bytes(all + 2 * MiB + 100, 2 * MiB - 100 + 3, 0x55));
  cr_expect(all_bytes(all + 4 * MiB + 3, 1000, 0));
  cr_expect(all_bytes(all + 4 * MiB + 1003, 1 * MiB - 1003, 0x55));
  cr_expect(all_bytes(all + 5 * MiB, 1 * MiB, 0));

  struct nbds_extent v[4];
  size_t n = block_status(l, 4096, 1 * MiB, 0, v, 4);
  cr_expect_eq(n, 1);
  expect_extent(&v[0], 1 * MiB, 0);
  nbds_layer_close_stack(l);
}

/* A device with 4096-byte sectors: the probe must find 4096, by statx and
 * by the trial reads alike, and unaligned requests still work. */
AIO_TEST(direct_block_device_4k_sectors)
{
  char dev[64];
  make_loop_device(dev, sizeof dev);
  if (ioctl(loop_fd, LOOP_SET_BLOCK_SIZE, 4096) != 0)
    cr_skip_test("cannot set 4096-byte sectors: %s", strerror(errno));
  struct nbds_layer *l = open_direct(dev, aio->name);
  struct file_disk *h = l->priv;
  cr_expect(has_o_direct(h->fd));
  cr_expect_eq(h->align, 4096);
  uint32_t align = 0, mem_align = 0;
  cr_assert_eq(file_direct_trial(h->fd, &align, &mem_align), 0);
  cr_expect_eq(align, 4096);
  cr_expect(mem_align >= 512 && mem_align <= 4096);

  static unsigned char model[8 * MiB];
  memset(model, 0x55, sizeof model);
  static const uint64_t offsets[] = { 1, 4097, 8191 + 64 * KiB };
  static const size_t lens[] = { 100, 4095, 1 };
  for (int i = 0; i < 3; i++) {
    unsigned char data[4095];
    pattern(data, lens[i], i);
    cr_assert_eq(rw1(l, NBDS_OP_WRITE, offsets[i], data, lens[i],
                     NBDS_F_FUA), 0);
    memcpy(model + offsets[i], data, lens[i]);
  }
  cr_assert_eq(cmd(l, NBDS_OP_ZERO, 1 * MiB - 100, 1 * MiB + 200, 0), 0);
  memset(model + 1 * MiB - 100, 0, 1 * MiB + 200);
  cr_assert_eq(cmd(l, NBDS_OP_ZERO, 4 * MiB + 3, 1000, NBDS_F_NO_HOLE), 0);
  memset(model + 4 * MiB + 3, 0, 1000);

  static unsigned char all[8 * MiB];
  cr_assert_eq(rw1(l, NBDS_OP_READ, 3, all, sizeof all - 5, 0), 0);
  cr_expect_eq(memcmp(all, model + 3, sizeof all - 5), 0);
  expect_ranges_idle(l);
  nbds_layer_close_stack(l);
  /* And through the backing file. */
  expect_file(model, sizeof model);
}

