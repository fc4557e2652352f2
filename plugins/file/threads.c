/* Requests on the worker pool, with plain blocking syscalls: the whole of
 * aio=threads, and the parts of aio=io_uring that the ring cannot do.
 * run() executes on a worker thread; the result completes the request back
 * on the reactor that submitted it. */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "file.h"

#define PUNCH (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
#define ZERO_RANGE (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)

static int
do_read(struct file_io *io)
{
  struct nbds_req *req = io->req;
  while (io->done < req->count) {
    ssize_t r = preadv(io->h->fd, io->iov, file_io_iovcnt(io),
                       req->offset + io->done);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return errno;
    }
    if (r == 0) {
      file_io_zero_rest(io);
      return 0;
    }
    int err = file_io_progress(io, r);
    if (err)
      return err;
    if (io->done < req->count && file_io_eof(io)) {
      file_io_zero_rest(io);
      return 0;
    }
  }
  return 0;
}

static int
do_write(struct file_io *io)
{
  struct nbds_req *req = io->req;
  int flags = req->flags & NBDS_F_FUA ? RWF_DSYNC : 0;
  while (io->done < req->count) {
    ssize_t r = pwritev2(io->h->fd, io->iov, file_io_iovcnt(io),
                         req->offset + io->done, flags);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return errno;
    }
    if (r == 0)
      return ENOSPC;  /* no progress: the device is full */
    int err = file_io_progress(io, r);
    if (err)
      return err;
  }
  return 0;
}

static int
datasync(int fd)
{
  while (fdatasync(fd) == -1) {
    if (errno != EINTR)
      return errno;
  }
  return 0;
}

static int
do_fallocate(int fd, int mode, uint64_t offset, uint64_t len)
{
  while (fallocate(fd, mode, offset, len) == -1) {
    if (errno != EINTR)
      return errno;
  }
  return 0;
}

/* Carry out bounce.c's plan with blocking calls. */
static int
run_bounce(int fd, struct file_bounce *b)
{
  struct file_xfer x;
  while (file_bounce_next(b, &x)) {
    struct iovec v = { x.buf, x.len };
    ssize_t r = x.write ? pwritev2(fd, &v, 1, x.pos, x.rwf)
                        : pread(fd, x.buf, x.len, x.pos);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      r = -errno;
    }
    int err = file_bounce_done(b, r);
    if (err)
      return err;
  }
  return 0;
}

/* Zeroes from the shared buffer: page-aligned, so O_DIRECT takes it for
 * whole blocks. */
static int
write_zero_buf(int fd, uint64_t offset, uint64_t len)
{
  const void *zeroes = file_zero_buf();
  while (len > 0) {
    size_t n = len < FILE_ZERO_CHUNK ? len : FILE_ZERO_CHUNK;
    ssize_t r = pwrite(fd, zeroes, n, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return errno;
    }
    if (r == 0)
      return ENOSPC;
    offset += r;
    len -= r;
  }
  return 0;
}

/* Zeroes over part of one block, under O_DIRECT: read, modify, write. */
static int
zero_partial(struct file_disk *h, uint64_t offset, uint64_t len)
{
  struct file_bounce b;
  int err = file_bounce_init(&b, h, true, offset, len, NULL, 0, 0);
  if (!err)
    err = run_bounce(h->fd, &b);
  file_bounce_free(&b);
  return err;
}

/* Under O_DIRECT the partial blocks at either end go through
 * zero_partial() (without direct, every offset is aligned). */
static int
write_zeroes(struct file_disk *h, uint64_t offset, uint64_t len)
{
  uint64_t end = offset + len;
  uint64_t a = file_align_up(h, offset);
  uint64_t b = file_align_down(h, end);
  if (a > b)  /* inside one block */
    return zero_partial(h, offset, len);
  int err = 0;
  if (offset < a)
    err = zero_partial(h, offset, a - offset);
  if (!err && a < b)
    err = write_zero_buf(h->fd, a, b - a);
  if (!err && b < end)
    err = zero_partial(h, b, end - b);
  return err;
}

/* Zero [offset, offset+len) with the fastest way the file allows, learning
 * from EOPNOTSUPP on the way. */
static int
zero_range(struct file_disk *h, uint64_t offset, uint64_t len,
           uint32_t flags)
{
  for (;;) {
    int err;
    switch (file_zero_how(h, flags)) {
    case FILE_ZERO_PUNCH:
      err = do_fallocate(h->fd, PUNCH, offset, len);
      if (err != EOPNOTSUPP)
        return err;
      atomic_store(&h->no_punch, true);
      break;
    case FILE_ZERO_RANGE:
      err = do_fallocate(h->fd, ZERO_RANGE, offset, len);
      if (err != EOPNOTSUPP)
        return err;
      atomic_store(&h->no_zero_range, true);
      break;
    case FILE_ZERO_WRITE:
      return write_zeroes(h, offset, len);
    case FILE_ZERO_NOTSUP:
      return ENOTSUP;
    }
  }
}

/* A block device's fallocate wants whole sectors: zero the aligned middle
 * that way, first, so a FAST_ZERO refusal leaves everything untouched, and
 * write the partial sectors at either end. */
static int
zero_bdev(struct file_disk *h, uint64_t offset, uint64_t len,
          uint32_t flags)
{
  uint64_t end = offset + len;
  uint64_t a = (offset + h->sector - 1) / h->sector * h->sector;
  uint64_t b = end / h->sector * h->sector;
  if (a >= b)
    return write_zeroes(h, offset, len);

  int err = zero_range(h, a, b - a, flags);
  if (!err && offset < a)
    err = write_zeroes(h, offset, a - offset);
  if (!err && b < end)
    err = write_zeroes(h, b, end - b);
  return err;
}

/* Discard the whole sectors inside the range; the partial ones at the
 * ends are left alone, as trim is only advice. */
static int
discard_bdev(struct file_disk *h, uint64_t offset, uint64_t len)
{
  uint64_t a = (offset + h->sector - 1) / h->sector * h->sector;
  uint64_t b = (offset + len) / h->sector * h->sector;
  if (a >= b)
    return 0;
  uint64_t range[2] = { a, b - a };
  while (ioctl(h->fd, BLKDISCARD, range) == -1) {
    if (errno == EOPNOTSUPP)
      return 0;
    if (errno != EINTR)
      return errno;
  }
  return 0;
}

static int
do_trim(struct file_io *io)
{
  struct file_disk *h = io->h;
  struct nbds_req *req = io->req;
  int err = 0;
  if (h->is_bdev)
    err = discard_bdev(h, req->offset, req->count);
  else if (!atomic_load(&h->no_punch)) {
    err = do_fallocate(h->fd, PUNCH, req->offset, req->count);
    if (err == EOPNOTSUPP) {
      atomic_store(&h->no_punch, true);
      err = 0;
    }
  }
  if (!err && (req->flags & NBDS_F_FUA))
    err = datasync(h->fd);
  return err;
}

static int
do_zero(struct file_io *io)
{
  struct file_disk *h = io->h;
  struct nbds_req *req = io->req;
  int err = h->is_bdev ? zero_bdev(h, req->offset, req->count, req->flags)
                       : zero_range(h, req->offset, req->count, req->flags);
  if (!err && (req->flags & NBDS_F_FUA))
    err = datasync(h->fd);
  return err;
}

static int
run(struct file_io *io)
{
  struct nbds_req *req = io->req;
  if (io->bounced)
    return run_bounce(io->h->fd, &io->bounce);
  switch (req->op) {
  case NBDS_OP_READ:
    return do_read(io);
  case NBDS_OP_WRITE:
    return do_write(io);
  case NBDS_OP_FLUSH:
    return datasync(io->h->fd);
  case NBDS_OP_TRIM:
    return do_trim(io);
  case NBDS_OP_ZERO:
    return do_zero(io);
  case NBDS_OP_BLOCK_STATUS:
    return file_extents(io->h, req);
  case NBDS_OP_CACHE:
    /* Only a hint: its failure is not the client's. */
    posix_fadvise(io->h->fd, req->offset, req->count, POSIX_FADV_WILLNEED);
    return 0;
  }
  return EINVAL;
}

static void
work_fn(struct nbds_work *w)
{
  struct file_io *io = container_of(w, struct file_io, work);
  io->err = run(io);
}

static void
work_done(struct nbds_work *w)
{
  struct file_io *io = container_of(w, struct file_io, work);
  file_io_finish(io, io->err);
}

void
file_threads_submit(struct file_io *io)
{
  io->work.fn = work_fn;
  io->work.done = work_done;
  nbds_work_submit(&io->work);
}
