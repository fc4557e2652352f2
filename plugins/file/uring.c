/* Requests through the reactor's io_uring ring.
 *
 * Each request is a small state machine: `step` says what the SQE in
 * flight does, issue() prepares the SQE for the current step and
 * complete() decides the next one.  Short transfers and EINTR simply issue
 * the step again with the remainder.  What io_uring cannot do (discard on
 * a block device, SEEK_DATA) goes to the worker pool instead, and so does
 * writing zeroes with unaligned ends under O_DIRECT (a slow fallback
 * already). */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>

#include "file.h"

enum step {
  STEP_READ,
  STEP_WRITE,
  STEP_FSYNC,
  STEP_TRIM,           /* PUNCH_HOLE, unsupported is fine */
  STEP_ZERO_PUNCH,     /* PUNCH_HOLE, unsupported tries the next way */
  STEP_ZERO_RANGE,
  STEP_ZERO_WRITE,
  STEP_FADVISE,
  STEP_BOUNCE,         /* a transfer of bounce.c's plan */
};

#define PUNCH (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
#define ZERO_RANGE (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)

static void
issue(struct file_io *io)
{
  struct nbds_req *req = io->req;
  int fd = io->h->fd;
  uint64_t pos = req->offset + io->done;
  struct io_uring_sqe *sqe = nbds_uring_sqe(&io->uop);

  switch ((enum step) io->step) {
  case STEP_READ:
    io_uring_prep_readv(sqe, fd, io->iov, file_io_iovcnt(io), pos);
    break;
  case STEP_WRITE:
    io_uring_prep_writev2(sqe, fd, io->iov, file_io_iovcnt(io), pos,
                          req->flags & NBDS_F_FUA ? RWF_DSYNC : 0);
    break;
  case STEP_FSYNC:
    io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
    break;
  case STEP_TRIM:
  case STEP_ZERO_PUNCH:
    io_uring_prep_fallocate(sqe, fd, PUNCH, req->offset, req->count);
    break;
  case STEP_ZERO_RANGE:
    io_uring_prep_fallocate(sqe, fd, ZERO_RANGE, req->offset, req->count);
    break;
  case STEP_ZERO_WRITE: {
    uint64_t left = req->count - io->done;
    io_uring_prep_write(sqe, fd, file_zero_buf(),
                        left < FILE_ZERO_CHUNK ? left : FILE_ZERO_CHUNK, pos);
    break;
  }
  case STEP_FADVISE:
    /* The SQE holds a 32-bit length; a hint may cover less. */
    io_uring_prep_fadvise(sqe, fd, req->offset,
                          req->count < UINT32_MAX ? req->count : UINT32_MAX,
                          POSIX_FADV_WILLNEED);
    break;
  case STEP_BOUNCE: {
    struct file_xfer x;
    file_bounce_next(&io->bounce, &x);  /* there is one: see complete() */
    if (x.write) {
      io_uring_prep_write(sqe, fd, x.buf, x.len, x.pos);
      sqe->rw_flags = x.rwf;
    }
    else
      io_uring_prep_read(sqe, fd, x.buf, x.len, x.pos);
    break;
  }
  }
}

static void
next(struct file_io *io, enum step step)
{
  io->step = step;
  issue(io);
}

/* TRIM and ZERO changed the file: with FUA, make it durable. */
static void
changed(struct file_io *io)
{
  if (io->req->flags & NBDS_F_FUA)
    next(io, STEP_FSYNC);
  else
    file_io_finish(io, 0);
}

/* Start, or continue after EOPNOTSUPP, a ZERO on a regular file. */
static void
zero(struct file_io *io)
{
  switch (file_zero_how(io->h, io->req->flags)) {
  case FILE_ZERO_PUNCH:
    next(io, STEP_ZERO_PUNCH);
    break;
  case FILE_ZERO_RANGE:
    next(io, STEP_ZERO_RANGE);
    break;
  case FILE_ZERO_WRITE:
    if (file_align_down(io->h, io->req->offset) != io->req->offset ||
        file_align_down(io->h, io->req->count) != io->req->count) {
      file_threads_submit(io);
      break;
    }
    io->done = 0;
    next(io, STEP_ZERO_WRITE);
    break;
  case FILE_ZERO_NOTSUP:
    file_io_finish(io, ENOTSUP);
    break;
  }
}

/* READ or WRITE moved res > 0 bytes: finish or issue the rest. */
static void
transferred(struct file_io *io, int res)
{
  int err = file_io_progress(io, res);
  if (err)
    file_io_finish(io, err);
  else if (io->done >= io->req->count)
    file_io_finish(io, 0);
  else if (io->step == STEP_READ && file_io_eof(io)) {
    file_io_zero_rest(io);
    file_io_finish(io, 0);
  }
  else
    issue(io);
}

static void
complete(struct nbds_uring_op *op, int res)
{
  struct file_io *io = container_of(op, struct file_io, uop);
  struct file_disk *h = io->h;

  if (res == -EINTR || res == -EAGAIN) {
    issue(io);
    return;
  }

  switch ((enum step) io->step) {
  case STEP_READ:
    if (res < 0)
      file_io_finish(io, -res);
    else if (res == 0) {
      file_io_zero_rest(io);
      file_io_finish(io, 0);
    }
    else
      transferred(io, res);
    break;

  case STEP_WRITE:
    if (res < 0)
      file_io_finish(io, -res);
    else if (res == 0)
      file_io_finish(io, ENOSPC);  /* no progress: the device is full */
    else
      transferred(io, res);
    break;

  case STEP_FSYNC:
    file_io_finish(io, res < 0 ? -res : 0);
    break;

  case STEP_TRIM:
    if (res == -EOPNOTSUPP) {
      /* Trim is advisory: not doing it is a correct answer. */
      atomic_store(&h->no_punch, true);
      res = 0;
    }
    if (res < 0)
      file_io_finish(io, -res);
    else
      changed(io);
    break;

  case STEP_ZERO_PUNCH:
  case STEP_ZERO_RANGE:
    if (res == -EOPNOTSUPP) {
      atomic_store(io->step == STEP_ZERO_PUNCH ? &h->no_punch
                                               : &h->no_zero_range, true);
      zero(io);
    }
    else if (res < 0)
      file_io_finish(io, -res);
    else
      changed(io);
    break;

  case STEP_ZERO_WRITE:
    if (res < 0)
      file_io_finish(io, -res);
    else if (res == 0)
      file_io_finish(io, ENOSPC);
    else {
      io->done += res;
      if (io->done < io->req->count)
        issue(io);
      else
        changed(io);
    }
    break;

  case STEP_FADVISE:
    file_io_finish(io, 0);  /* only a hint: its failure is not the client's */
    break;

  case STEP_BOUNCE: {
    struct file_xfer x;
    int err = file_bounce_done(&io->bounce, res);
    if (err)
      file_io_finish(io, err);
    else if (file_bounce_next(&io->bounce, &x))
      issue(io);
    else
      file_io_finish(io, 0);
    break;
  }
  }
}

void
file_uring_submit(struct file_io *io)
{
  struct file_disk *h = io->h;
  io->uop.complete = complete;

  switch (io->req->op) {
  case NBDS_OP_READ:
    next(io, io->bounced ? STEP_BOUNCE : STEP_READ);
    return;
  case NBDS_OP_WRITE:
    next(io, io->bounced ? STEP_BOUNCE : STEP_WRITE);
    return;
  case NBDS_OP_FLUSH:
    next(io, STEP_FSYNC);
    return;
  case NBDS_OP_TRIM:
    if (h->is_bdev)
      file_threads_submit(io);  /* BLKDISCARD is an ioctl */
    else if (atomic_load(&h->no_punch))
      changed(io);
    else
      next(io, STEP_TRIM);
    return;
  case NBDS_OP_ZERO:
    if (h->is_bdev)
      file_threads_submit(io);  /* alignment and fallbacks, done simply */
    else
      zero(io);
    return;
  case NBDS_OP_BLOCK_STATUS:
    file_threads_submit(io);    /* lseek may block on metadata */
    return;
  case NBDS_OP_CACHE:
    next(io, STEP_FADVISE);
    return;
  }
  file_io_finish(io, EINVAL);   /* not an operation */
}
