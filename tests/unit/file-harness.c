/* Shared by the file layer's unit tests: a reactor on this thread, a
 * scratch file in /var/tmp, and helpers that run one request to its end. */
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
#include "file-harness.h"

extern const struct nbds_layer_ops nbds_file_ops;

/* server/layers.c is not linked into unit tests. */
const struct nbds_layer_ops *
nbds_layer_type_find(const char *name)
{
  return strcmp(name, "file") == 0 ? &nbds_file_ops : NULL;
}


struct nbds_reactor *reactor;
char dir[64];
char path[128];
int loop_fd = -1;
char ram[128];  /* a ramfs mount point, when a test made one */

void
setup_with(bool uring)
{
  strcpy(dir, "/var/tmp/nbds-test-file-XXXXXX");
  cr_assert_not_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/disk.img", dir);
  reactor = reactor_create(0, uring && reactor_uring_works());
  cr_assert_not_null(reactor);
  workers_init(4);
}

void
setup(void)
{
  setup_with(true);
}

void
setup_no_ring(void)
{
  setup_with(false);
}

void
teardown(void)
{
  workers_shutdown();
  reactor_destroy(reactor);
  if (loop_fd >= 0)
    close(loop_fd);  /* autoclear detaches the device */
  unlink(path);
  if (*ram) {
    umount2(ram, MNT_DETACH);
    rmdir(ram);
  }
  rmdir(dir);
}

/* A file of `size` bytes of `byte`, on disk (so holes and st_blocks are
 * what the file system says, not delayed allocation). */
void
make_file(uint64_t size, int byte)
{
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  cr_assert(fd >= 0);
  char *buf = malloc(size);
  memset(buf, byte, size);
  cr_assert_eq(pwrite(fd, buf, size, 0), (ssize_t) size);
  cr_assert_eq(fsync(fd), 0);
  free(buf);
  close(fd);
}

struct nbds_layer *
open_layer(const char *file, const char *aio, const char *readonly)
{
  struct nbds_kv kv[] = {
    { "file", file }, { "aio", aio }, { "readonly", readonly },
  };
  struct nbds_layer *l = nbds_layer_open("file", NULL, kv, 3);
  cr_assert_not_null(l, "open: %s", nbds_last_error());
  return l;
}

/* The message a failed open leaves. */
const char *
open_error(const struct nbds_kv *kv, size_t nkv)
{
  cr_assert_null(nbds_layer_open("file", NULL, kv, nkv));
  return nbds_last_error();
}


void
on_done(struct nbds_req *req, int err)
{
  struct result *r = req->opaque;
  cr_assert(!r->fired, "completed twice");
  r->fired = true;
  r->err = err;
}

/* Submit and run the reactor until the request completes. */
int
run(struct nbds_layer *l, struct nbds_req *req)
{
  struct result res = { false, 0 };
  struct ev_loop *loop = nbds_reactor_loop(reactor);
  req->done = on_done;
  req->opaque = &res;
  nbds_layer_submit(l, req);
  ev_ref(loop);  /* let the loop sleep until a completion wakes it */
  while (!res.fired)
    ev_run(loop, EVRUN_ONCE);
  ev_unref(loop);
  return res.err;
}

int
rw(struct nbds_layer *l, enum nbds_op op, uint64_t offset,
   struct iovec *iov, int iovcnt, uint32_t flags)
{
  struct nbds_req req = {
    .op = op, .flags = flags, .offset = offset, .iov = iov, .iovcnt = iovcnt,
  };
  for (int i = 0; i < iovcnt; i++)
    req.count += iov[i].iov_len;
  return run(l, &req);
}

int
rw1(struct nbds_layer *l, enum nbds_op op, uint64_t offset, void *buf,
    size_t len, uint32_t flags)
{
  struct iovec iov = { buf, len };
  return rw(l, op, offset, &iov, 1, flags);
}

int
cmd(struct nbds_layer *l, enum nbds_op op, uint64_t offset, uint64_t count,
    uint32_t flags)
{
  struct nbds_req req = {
    .op = op, .flags = flags, .offset = offset, .count = count,
  };
  return run(l, &req);
}

size_t
block_status(struct nbds_layer *l, uint64_t offset, uint64_t count,
             uint32_t flags, struct nbds_extent *v, size_t cap)
{
  struct nbds_extents ex = { .v = v, .cap = cap };
  struct nbds_req req = {
    .op = NBDS_OP_BLOCK_STATUS, .flags = flags, .offset = offset,
    .count = count, .extents = &ex,
  };
  cr_assert_eq(run(l, &req), 0);
  cr_assert_geq(ex.count, 1, "no extent");
  return ex.count;
}

void
expect_extent(const struct nbds_extent *e, uint64_t length, uint32_t flags)
{
  cr_expect_eq(e->length, length, "length %llu, want %llu",
               (unsigned long long) e->length, (unsigned long long) length);
  cr_expect_eq(e->flags, flags, "flags %u, want %u", e->flags, flags);
}

/* What the file holds, read around the layer. */
void
expect_bytes(uint64_t offset, size_t len, int byte)
{
  int fd = open(path, O_RDONLY);
  cr_assert(fd >= 0);
  unsigned char *buf = malloc(len);
  cr_assert_eq(pread(fd, buf, len, offset), (ssize_t) len);
  for (size_t i = 0; i < len; i++)
    cr_assert_eq(buf[i], byte, "byte %llu is %d, want %d",
                 (unsigned long long) (offset + i), buf[i], byte);
  free(buf);
  close(fd);
}

off_t
seek(int whence, off_t offset)
{
  int fd = open(path, O_RDONLY);
  cr_assert(fd >= 0);
  off_t r = lseek(fd, offset, whence);
  close(fd);
  return r;
}

long long
blocks(void)
{
  struct stat st;
  cr_assert_eq(stat(path, &st), 0);
  return st.st_blocks;
}

bool
all_bytes(const unsigned char *p, size_t len, int byte)
{
  for (size_t i = 0; i < len; i++)
    if (p[i] != byte)
      return false;
  return true;
}

struct nbds_layer *
open_direct(const char *file, const char *aio)
{
  struct nbds_kv kv[] = {
    { "file", file }, { "aio", aio }, { "direct", "on" },
  };
  struct nbds_layer *l = nbds_layer_open("file", NULL, kv, 3);
  cr_assert_not_null(l, "open: %s", nbds_last_error());
  return l;
}

bool
has_o_direct(int fd)
{
  int fl = fcntl(fd, F_GETFL);
  cr_assert(fl != -1);
  return fl & O_DIRECT;
}

/* The whole file is what `model` says, read around the layer. */
void
expect_file(const unsigned char *model, size_t size)
{
  int fd = open(path, O_RDONLY);
  cr_assert(fd >= 0);
  unsigned char *buf = malloc(size);
  cr_assert_eq(pread(fd, buf, size, 0), (ssize_t) size);
  close(fd);
  for (size_t i = 0; i < size; i++)
    cr_assert_eq(buf[i], model[i], "byte %zu is %d, want %d",
                 i, buf[i], model[i]);
  free(buf);
}

/* Nothing left in ranges.c's lists once every request has completed. */
void
expect_ranges_idle(struct nbds_layer *l)
{
  struct file_disk *h = l->priv;
  cr_expect_null(h->ranges.active);
  cr_expect_null(h->ranges.waiting);
  cr_expect_eq(atomic_load(&h->ranges.rmws), 0);
  cr_expect_eq(atomic_load(&h->ranges.fast), 0);
}

/* A byte pattern; different seeds give different bytes. */
void
pattern(unsigned char *p, size_t len, unsigned seed)
{
  for (size_t i = 0; i < len; i++)
    p[i] = (seed * 31 + i * 7 + 1) % 251 + 1;
}
