/* The POSIX file protocol layer: a local regular file or block device.
 *
 * One fd serves every connection on every reactor; requests use explicit
 * offsets, so they never share a file position.  I/O goes through the
 * calling reactor's io_uring ring (aio=io_uring) or the worker pool
 * (aio=threads, or when the reactor has no ring). */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file.h"

static const char *const known_keys[] = {
  "file", "readonly", "aio", "direct", NULL
};

/* An on/off key; off when absent. */
static int
parse_bool(const struct nbds_kv *kv, size_t nkv, const char *key, bool *v)
{
  const char *s = nbds_kv_get(kv, nkv, key);
  if (!s || strcmp(s, "off") == 0)
    *v = false;
  else if (strcmp(s, "on") == 0)
    *v = true;
  else {
    nbds_error("file: %s must be on or off, not '%s'", key, s);
    return -1;
  }
  return 0;
}

static int
parse_options(const struct nbds_kv *kv, size_t nkv, struct file_disk *h)
{
  if (parse_bool(kv, nkv, "readonly", &h->readonly) == -1 ||
      parse_bool(kv, nkv, "direct", &h->direct) == -1)
    return -1;

  const char *aio = nbds_kv_get(kv, nkv, "aio");
  if (!aio || strcmp(aio, "io_uring") == 0)
    h->want_uring = true;
  else if (strcmp(aio, "threads") == 0)
    h->want_uring = false;
  else {
    nbds_error("file: aio must be io_uring or threads, not '%s'", aio);
    return -1;
  }
  return 0;
}

/* Learn what the fd is and how big. */
static int
probe(const char *path, struct file_disk *h)
{
  struct stat st;
  if (fstat(h->fd, &st) == -1) {
    nbds_error("cannot stat '%s': %s", path, strerror(errno));
    return -1;
  }
  if (S_ISREG(st.st_mode)) {
    h->size = st.st_size;
    return 0;
  }
  if (S_ISBLK(st.st_mode)) {
    int sector;
    if (ioctl(h->fd, BLKGETSIZE64, &h->size) == -1 ||
        ioctl(h->fd, BLKSSZGET, &sector) == -1) {
      nbds_error("cannot get the size of '%s': %s", path, strerror(errno));
      return -1;
    }
    h->is_bdev = true;
    h->sector = sector > 0 ? sector : 512;
    return 0;
  }
  nbds_error("'%s' is not a regular file or block device", path);
  return -1;
}

static int
file_open(struct nbds_layer *l, const struct nbds_kv *kv, size_t nkv)
{
  if (nbds_kv_check("file", kv, nkv, known_keys) == -1)
    return -1;
  const char *path = nbds_kv_get(kv, nkv, "file");
  if (!path || !*path) {
    nbds_error("file: the option 'file' (the path to export) is required");
    return -1;
  }
  int err = file_init_once();
  if (err) {
    nbds_error("file: cannot set up: %s", strerror(err));
    return -1;
  }

  struct file_disk *h = calloc(1, sizeof *h);
  if (!h) {
    nbds_error("out of memory");
    return -1;
  }
  if (parse_options(kv, nkv, h) == -1) {
    free(h);
    return -1;
  }
  int flags = (h->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  h->fd = open(path, flags | (h->direct ? O_DIRECT : 0));
  if (h->fd == -1) {
    if (h->direct && errno == EINVAL)
      file_direct_unsupported(path);
    else
      nbds_error("cannot open '%s': %s", path, strerror(errno));
    free(h);
    return -1;
  }
  h->align = h->mem_align = 1;
  if (probe(path, h) == -1 ||
      (h->direct && file_direct_probe(path, h) == -1)) {
    close(h->fd);
    free(h);
    return -1;
  }
  atomic_init(&h->no_punch, false);
  atomic_init(&h->no_zero_range, false);
  file_ranges_init(&h->ranges);
  l->priv = h;
  return 0;
}

static void
file_close(struct nbds_layer *l)
{
  struct file_disk *h = l->priv;
  file_ranges_destroy(&h->ranges);
  close(h->fd);
  free(h);
}

static uint64_t
file_size(struct nbds_layer *l)
{
  struct file_disk *h = l->priv;
  return h->size;
}

static void
file_caps(struct nbds_layer *l, struct nbds_caps *caps)
{
  struct file_disk *h = l->priv;
  caps->can_write = !h->readonly;
  caps->can_flush = true;
  caps->fua = NBDS_FUA_NATIVE;  /* RWF_DSYNC */
  caps->can_trim = true;
  caps->can_zero = true;
  caps->can_fast_zero = true;
  caps->can_extents = true;
  caps->can_cache = true;
  caps->can_multi_conn = true;  /* one fd: a flush covers every writer */
  /* Unaligned requests are served under direct too (bounce.c), as
   * qemu-nbd does; a whole block is still what costs least. */
  caps->block_min = 1;
  caps->block_pref = h->align > 4096 ? h->align : 4096;
  caps->block_max = 32 * 1024 * 1024;
}

static void
file_submit(struct nbds_layer *l, struct nbds_req *req)
{
  struct file_disk *h = l->priv;

  switch (req->op) {
  case NBDS_OP_WRITE:
  case NBDS_OP_TRIM:
  case NBDS_OP_ZERO:
    /* The server never sends these without can_write; a layer above
     * might, and deserves a clear answer rather than EBADF. */
    if (h->readonly) {
      nbds_req_complete(req, EROFS);
      return;
    }
    break;
  case NBDS_OP_BLOCK_STATUS:
    /* A block device has no holes we can see. */
    if (h->is_bdev) {
      nbds_extents_add(req->extents, req->count, 0);
      nbds_req_complete(req, 0);
      return;
    }
    break;
  default:
    break;
  }
  /* Nothing to do, and fallocate and write would reject a zero length. */
  if (req->count == 0 && req->op != NBDS_OP_FLUSH) {
    nbds_req_complete(req, 0);
    return;
  }

  struct file_io *io = file_io_get(h, req);
  if (!io) {
    nbds_req_complete(req, ENOMEM);
    return;
  }
  if (h->direct) {
    io->bounced = (req->op == NBDS_OP_READ || req->op == NBDS_OP_WRITE) &&
                  !file_direct_aligned(h, req);
    if (!file_ranges_enter(io))
      return;  /* file_dispatch() runs when the range is free */
  }
  file_dispatch(io);
}

/* Start a request: now, or when ranges.c says its turn has come. */
void
file_dispatch(struct file_io *io)
{
  struct file_disk *h = io->h;
  struct nbds_req *req = io->req;
  if (io->bounced) {
    int err = file_bounce_init(&io->bounce, h, req->op == NBDS_OP_WRITE,
                               req->offset, req->count, req->iov,
                               req->iovcnt,
                               req->flags & NBDS_F_FUA ? RWF_DSYNC : 0);
    if (err) {
      file_io_finish(io, err);
      return;
    }
  }
  if (h->want_uring && nbds_uring_available())
    file_uring_submit(io);
  else
    file_threads_submit(io);
}

const struct nbds_layer_ops nbds_file_ops = {
  .name = "file",
  .open = file_open,
  .close = file_close,
  .size = file_size,
  .caps = file_caps,
  .submit = file_submit,
};
