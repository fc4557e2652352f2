/* Unaligned requests under O_DIRECT, done in whole blocks through an
 * aligned buffer.
 *
 * A READ reads the blocks that cover it and copies out the part asked
 * for.  A WRITE is a read-modify-write: only the partial blocks at either
 * end are read (the middle comes from the request), the request's bytes
 * are copied over them, and the covering blocks are written in one call.
 * A request that is aligned in the file but whose buffers are not is
 * copied without reading anything.
 *
 * Past end of file a block reads short, and its missing part is taken as
 * zeroes.  Writing that block back writes it whole, so a write into the
 * last, partial block grows the file to the end of the block: O_DIRECT
 * cannot write less, and cutting the file back afterwards would race
 * with other writes.  QEMU does the same.  The bytes added are zeroes,
 * which is what the export's padding past end of file (raw rounds the size
 * up to 512) reads as already.
 *
 * This file only plans; the caller does each transfer that
 * file_bounce_next() asks for and reports it to file_bounce_done(), with
 * the ring or with blocking calls. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "file.h"

enum phase {
  PH_READ,   /* READ: the covering blocks */
  PH_HEAD,   /* WRITE: the partial block at the start */
  PH_TAIL,   /* WRITE: the partial block at the end */
  PH_WRITE,  /* WRITE: the covering blocks */
  PH_END,
};

/* Can O_DIRECT take this READ or WRITE as it is?  Each iovec's address
 * must be aligned to the memory alignment and its length to the block, as
 * the kernel checks segment by segment. */
bool
file_direct_aligned(const struct file_disk *h, const struct nbds_req *req)
{
  uint64_t mask = h->align - 1;
  uintptr_t mem_mask = h->mem_align - 1;
  if ((req->offset | req->count) & mask)
    return false;
  for (int i = 0; i < req->iovcnt; i++) {
    if (((uintptr_t) req->iov[i].iov_base & mem_mask) ||
        (req->iov[i].iov_len & mask))
      return false;
  }
  return true;
}

static bool
wanted(const struct file_bounce *b, enum phase phase)
{
  switch (phase) {
  case PH_HEAD:
    return b->offset != b->start;
  case PH_TAIL:
    /* One block that the head read already holds needs no second read. */
    return b->offset + b->count != b->end &&
           !(wanted(b, PH_HEAD) && b->end - b->start == b->align);
  default:
    return true;
  }
}

/* Where the current phase's transfer lies in the file. */
static void
span(const struct file_bounce *b, uint64_t *pos, uint64_t *len)
{
  switch ((enum phase) b->phase) {
  case PH_HEAD:
    *pos = b->start;
    *len = b->align;
    break;
  case PH_TAIL:
    *pos = b->end - b->align;
    *len = b->align;
    break;
  default:
    *pos = b->start;
    *len = b->end - b->start;
    break;
  }
}

/* WRITE: lay the request's bytes (or zeroes) over what was read. */
static void
fill(struct file_bounce *b)
{
  char *p = b->buf + (b->offset - b->start);
  if (!b->iov) {
    memset(p, 0, b->count);
    return;
  }
  uint64_t left = b->count;
  for (int i = 0; i < b->iovcnt && left > 0; i++) {
    size_t n = b->iov[i].iov_len < left ? b->iov[i].iov_len : left;
    memcpy(p, b->iov[i].iov_base, n);
    p += n;
    left -= n;
  }
}

/* READ: hand the part asked for to the request. */
static void
copy_out(const struct file_bounce *b)
{
  const char *p = b->buf + (b->offset - b->start);
  uint64_t left = b->count;
  for (int i = 0; i < b->iovcnt && left > 0; i++) {
    size_t n = b->iov[i].iov_len < left ? b->iov[i].iov_len : left;
    memcpy(b->iov[i].iov_base, p, n);
    p += n;
    left -= n;
  }
}

static void
enter(struct file_bounce *b, enum phase phase)
{
  while ((phase == PH_HEAD || phase == PH_TAIL) && !wanted(b, phase))
    phase++;
  if (phase == PH_WRITE)
    fill(b);
  else if (phase == PH_END && !b->write)
    copy_out(b);
  b->phase = phase;
  b->done = 0;
}

/* Plan [offset, offset+count) through a buffer covering its blocks.
 * Returns 0 or ENOMEM; file_bounce_free() is safe either way. */
int
file_bounce_init(struct file_bounce *b, const struct file_disk *h,
                 bool write, uint64_t offset, uint64_t count,
                 const struct iovec *iov, int iovcnt, int rwf)
{
  *b = (struct file_bounce) {
    .start = file_align_down(h, offset),
    .end = file_align_up(h, offset + count),
    .offset = offset, .count = count,
    .iov = iov, .iovcnt = iovcnt,
    .write = write, .rwf = rwf, .align = h->align,
  };
  /* At least page-aligned: what the device may want is not always what
   * the file system reports. */
  size_t mem = h->mem_align < 4096 ? 4096 : h->mem_align;
  void *buf;
  if (posix_memalign(&buf, mem, b->end - b->start) != 0)
    return ENOMEM;
  b->buf = buf;
  enter(b, write ? PH_HEAD : PH_READ);
  return 0;
}

void
file_bounce_free(struct file_bounce *b)
{
  free(b->buf);
  b->buf = NULL;
}

/* The transfer to do now; false when the bounce is finished. */
bool
file_bounce_next(const struct file_bounce *b, struct file_xfer *x)
{
  if (b->phase == PH_END)
    return false;
  uint64_t pos, len;
  span(b, &pos, &len);
  x->write = b->phase == PH_WRITE;
  x->pos = pos + b->done;
  x->buf = b->buf + (pos - b->start) + b->done;
  x->len = len - b->done;
  x->rwf = x->write ? b->rwf : 0;
  return true;
}

/* The result of the transfer file_bounce_next() gave: bytes moved or
 * -errno.  Returns 0, or the errno value that fails the request. */
int
file_bounce_done(struct file_bounce *b, ssize_t res)
{
  if (res < 0)
    return -res;
  uint64_t pos, len;
  span(b, &pos, &len);
  if (b->phase == PH_WRITE) {
    if (res == 0)
      return ENOSPC;  /* no progress: the device is full */
    b->done += res;
  }
  else {
    b->done += res;
    /* Nothing more, or a read ending inside a block: end of file.  An
     * aligned short read is only short, and goes on. */
    if (b->done < len && (res == 0 || (b->done & (b->align - 1)))) {
      memset(b->buf + (pos - b->start) + b->done, 0, len - b->done);
      b->done = len;
    }
  }
  if (b->done == len)
    enter(b, b->phase == PH_READ ? PH_END : b->phase + 1);
  return 0;
}
