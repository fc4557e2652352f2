/* Unaligned requests under FILE_FLAG_NO_BUFFERING, done in whole sectors
 * through an aligned buffer.
 *
 * A READ reads the sectors that cover it and copies out the part asked
 * for.  A WRITE reads the partial sectors at either end (the middle comes
 * from the request), lays the request's bytes over them and writes the
 * covering sectors in one call: a read-modify-write, which win32-ranges.c
 * keeps apart from every write it overlaps.  A request aligned in the file
 * whose buffers are not is copied without reading anything.
 *
 * Past end of file a read stops short and the rest of the sector is taken
 * as zeroes; writing that sector back grows the file to the sector's end,
 * since NO_BUFFERING cannot write less.  The bytes added are zeroes, which
 * is what the export's padding reads as already (the POSIX layer does the
 * same under O_DIRECT).
 *
 * Only the plan is here: win32-io.c carries it out with overlapped calls,
 * win32-sync.c with blocking ones. */
#include <errno.h>
#include <malloc.h>
#include <string.h>

#include "win32.h"

enum phase {
  PH_READ,   /* READ: the covering sectors */
  PH_HEAD,   /* WRITE: the partial sector at the start */
  PH_TAIL,   /* WRITE: the partial sector at the end */
  PH_WRITE,  /* WRITE: the covering sectors */
  PH_END,
};

/* Buffers at least page-aligned: what the device wants may be more than
 * the sector size the file system reports. */
void *
w32_aligned_alloc(size_t size, uint32_t align)
{
  return _aligned_malloc(size, align < 4096 ? 4096 : align);
}

void
w32_aligned_free(void *p)
{
  _aligned_free(p);
}

/* Can NO_BUFFERING take this READ or WRITE as it is?  Every call is one
 * iovec, so each must start on an aligned address and be whole sectors. */
bool
w32_direct_aligned(const struct w32_file *f, const struct nbds_req *req)
{
  uint64_t mask = f->align - 1;
  if ((req->offset | req->count) & mask)
    return false;
  for (int i = 0; i < req->iovcnt; i++)
    if (((uintptr_t) req->iov[i].iov_base | req->iov[i].iov_len) & mask)
      return false;
  return true;
}

static bool
wanted(const struct w32_bounce *b, enum phase phase)
{
  switch (phase) {
  case PH_HEAD:
    return b->offset != b->start;
  case PH_TAIL:
    /* A single sector that the head read already holds is not read
     * twice. */
    return b->offset + b->count != b->end &&
           !(b->offset != b->start && b->end - b->start == b->align);
  default:
    return true;
  }
}

/* Where the current phase's transfer lies in the file. */
static void
span(const struct w32_bounce *b, uint64_t *pos, uint64_t *len)
{
  *pos = b->phase == PH_TAIL ? b->end - b->align : b->start;
  *len = b->phase == PH_HEAD || b->phase == PH_TAIL ? b->align
                                                     : b->end - b->start;
}

/* Copy between the request's iovecs and the buffer. */
static void
copy(const struct w32_bounce *b, bool to_buf)
{
  char *p = b->buf + (b->offset - b->start);
  uint64_t left = b->count;
  if (to_buf && !b->iov) {
    memset(p, 0, left);
    return;
  }
  for (int i = 0; i < b->iovcnt && left > 0; i++) {
    size_t n = b->iov[i].iov_len < left ? b->iov[i].iov_len : left;
    if (to_buf)
      memcpy(p, b->iov[i].iov_base, n);
    else
      memcpy(b->iov[i].iov_base, p, n);
    p += n;
    left -= n;
  }
}

static void
enter(struct w32_bounce *b, enum phase phase)
{
  while ((phase == PH_HEAD || phase == PH_TAIL) && !wanted(b, phase))
    phase++;
  if (phase == PH_WRITE)
    copy(b, true);
  else if (phase == PH_END && !b->write)
    copy(b, false);
  b->phase = phase;
  b->done = 0;
}

/* Plan [offset, offset+count) through a buffer covering its sectors.
 * Returns 0 or ENOMEM; w32_bounce_free() is safe either way. */
int
w32_bounce_init(struct w32_bounce *b, const struct w32_file *f, bool write,
                uint64_t offset, uint64_t count, const struct iovec *iov,
                int iovcnt)
{
  *b = (struct w32_bounce) {
    .start = w32_align_down(f, offset),
    .end = w32_align_up(f, offset + count),
    .offset = offset, .count = count,
    .iov = iov, .iovcnt = iovcnt,
    .write = write, .align = f->align,
  };
  b->buf = w32_aligned_alloc(b->end - b->start, f->align);
  if (!b->buf)
    return ENOMEM;
  enter(b, write ? PH_HEAD : PH_READ);
  return 0;
}

void
w32_bounce_free(struct w32_bounce *b)
{
  w32_aligned_free(b->buf);
  b->buf = NULL;
}

/* The transfer to do now; false when the bounce is finished. */
bool
w32_bounce_next(const struct w32_bounce *b, struct w32_xfer *x)
{
  if (b->phase == PH_END)
    return false;
  uint64_t pos, len;
  span(b, &pos, &len);
  uint64_t left = len - b->done;
  x->write = b->phase == PH_WRITE;
  x->pos = pos + b->done;
  x->buf = b->buf + (pos - b->start) + b->done;
  x->len = left < W32_IO_MAX ? left : W32_IO_MAX;
  return true;
}

/* The result of the transfer w32_bounce_next() gave: n bytes, or the
 * Win32 error.  Returns 0, or the errno value that fails the request. */
int
w32_bounce_done(struct w32_bounce *b, DWORD n, DWORD error)
{
  if (error == ERROR_HANDLE_EOF && b->phase != PH_WRITE)
    n = 0;
  else if (error)
    return w32_errno(error);
  uint64_t pos, len;
  span(b, &pos, &len);
  if (b->phase == PH_WRITE && n == 0)
    return ENOSPC;  /* no progress: the disk is full */
  b->done += n;
  /* A read that got nothing, or stopped inside a sector, hit end of file:
   * the rest reads as zeroes. */
  if (b->phase != PH_WRITE && b->done < len &&
      (n == 0 || (b->done & (b->align - 1)))) {
    memset(b->buf + (pos - b->start) + b->done, 0, len - b->done);
    b->done = len;
  }
  if (b->done == len)
    enter(b, b->phase == PH_READ ? PH_END : b->phase + 1);
  return 0;
}
