/* What only blocking calls can do, on the worker pool: FlushFileBuffers,
 * the FSCTLs for trim, zero and extents, zeroes written by hand where the
 * file system cannot zero a range, and CACHE.  The result completes the
 * request back on the reactor that submitted it.
 *
 * TRIM and ZERO use FSCTL_SET_ZERO_DATA, which deallocates in a sparse
 * file (the layer marks the file sparse at open) and zeroes in place
 * otherwise.  BLOCK_STATUS uses FSCTL_QUERY_ALLOCATED_RANGES.  Where the
 * file system lacks them (FAT; Wine 8 implements neither), TRIM does
 * nothing (it is only advice), ZERO writes zeroes, and every extent is
 * data — what the POSIX layer does without fallocate or SEEK_DATA.  CACHE
 * reads the range through the system cache. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "win32.h"

#include <winioctl.h>

#define HOLE (NBDS_EXTENT_HOLE | NBDS_EXTENT_ZERO)
/* The most one write of zeroes, or one CACHE read, moves. */
#define ZERO_CHUNK (1024 * 1024)

/* FlushFileBuffers needs write access; a read-only layer has written
 * nothing to flush. */
int
w32_flush(struct w32_file *f)
{
  if (f->readonly || FlushFileBuffers(f->h))
    return 0;
  return w32_errno(GetLastError());
}

/* A blocking DeviceIoControl on an overlapped handle: the event's low bit
 * keeps the completion off the port.  Returns the Win32 error. */
static DWORD
fsctl(HANDLE h, DWORD code, void *in, DWORD in_len, void *out, DWORD out_len,
      DWORD *n)
{
  HANDLE ev = w32_thread_event();
  if (!ev)
    return GetLastError();
  OVERLAPPED ov = { .hEvent = (HANDLE) ((uintptr_t) ev | 1) };
  DWORD got = 0;
  BOOL ok = DeviceIoControl(h, code, in, in_len, out, out_len, &got, &ov);
  if (!ok && GetLastError() == ERROR_IO_PENDING) {
    WaitForSingleObject(ev, INFINITE);
    ok = GetOverlappedResult(h, &ov, &got, FALSE);
  }
  if (n)
    *n = got;
  return ok ? ERROR_SUCCESS : GetLastError();
}

/* FSCTL_SET_ZERO_DATA over [offset, offset+len).  ENOTSUP when the file
 * system has no such thing (remembered). */
static int
zero_data(struct w32_file *f, uint64_t offset, uint64_t len)
{
  if (atomic_load(&f->no_zero_data))
    return ENOTSUP;
  FILE_ZERO_DATA_INFORMATION z;
  z.FileOffset.QuadPart = offset;
  z.BeyondFinalZero.QuadPart = offset + len;
  DWORD error = fsctl(f->h, FSCTL_SET_ZERO_DATA, &z, sizeof z, NULL, 0,
                      NULL);
  if (w32_unsupported(error)) {
    atomic_store(&f->no_zero_data, true);
    return ENOTSUP;
  }
  return w32_errno(error);
}

/* Zeroes over part of one sector, under direct I/O: read, modify, write. */
static int
zero_partial(struct w32_file *f, uint64_t offset, uint64_t len)
{
  struct w32_bounce b;
  int err = w32_bounce_init(&b, f, true, offset, len, NULL, 0);
  struct w32_xfer x;
  while (!err && w32_bounce_next(&b, &x)) {
    DWORD n = 0;
    bool ok = w32_sync_io(f->h, x.write, x.buf, x.len, x.pos, &n);
    err = w32_bounce_done(&b, n, ok ? ERROR_SUCCESS : GetLastError());
  }
  w32_bounce_free(&b);
  return err;
}

/* Whole sectors of zeroes from an aligned buffer. */
static int
write_zero_buf(struct w32_file *f, uint64_t offset, uint64_t len)
{
  void *zeroes = w32_aligned_alloc(ZERO_CHUNK, f->align);
  if (!zeroes)
    return ENOMEM;
  memset(zeroes, 0, ZERO_CHUNK);
  int err = 0;
  while (!err && len > 0) {
    DWORD n = len < ZERO_CHUNK ? len : ZERO_CHUNK;
    if (!w32_sync_io(f->h, true, zeroes, n, offset, &n))
      err = w32_errno(GetLastError());
    else if (n == 0)
      err = ENOSPC;
    offset += n;
    len -= n;
  }
  w32_aligned_free(zeroes);
  return err;
}

/* Write zeroes; under direct I/O the partial sectors at either end go
 * through zero_partial() (without it every offset is aligned). */
static int
write_zeroes(struct w32_file *f, uint64_t offset, uint64_t len)
{
  uint64_t end = offset + len;
  uint64_t a = w32_align_up(f, offset);
  uint64_t b = w32_align_down(f, end);
  if (a > b)  /* inside one sector */
    return zero_partial(f, offset, len);
  int err = 0;
  if (offset < a)
    err = zero_partial(f, offset, a - offset);
  if (!err && a < b)
    err = write_zero_buf(f, a, b - a);
  if (!err && b < end)
    err = zero_partial(f, b, end - b);
  return err;
}

/* Fast first, unless the client asked to keep the blocks (SET_ZERO_DATA
 * deallocates in a sparse file); writing zeroes only when the client
 * accepts slow. */
static int
do_zero(struct w32_file *f, struct nbds_req *req)
{
  if (!(req->flags & NBDS_F_NO_HOLE)) {
    int err = zero_data(f, req->offset, req->count);
    if (err != ENOTSUP)
      return err;
  }
  if (req->flags & NBDS_F_FAST_ZERO)
    return ENOTSUP;
  return write_zeroes(f, req->offset, req->count);
}

static int
do_trim(struct w32_file *f, struct nbds_req *req)
{
  int err = zero_data(f, req->offset, req->count);
  return err == ENOTSUP ? 0 : err;
}

static uint64_t
min_u64(uint64_t a, uint64_t b)
{
  return a < b ? a : b;
}

/* BLOCK_STATUS: allocated ranges are data, the gaps between them and
 * everything past end of file are holes that read as zeroes. */
static int
do_extents(struct w32_file *f, struct nbds_req *req)
{
  struct nbds_extents *ex = req->extents;
  bool one = req->flags & NBDS_F_REQ_ONE;
  uint64_t pos = req->offset;
  uint64_t end = req->offset + req->count;

  LARGE_INTEGER size;
  if (!GetFileSizeEx(f->h, &size))
    return w32_errno(GetLastError());
  uint64_t data_end = min_u64(end, size.QuadPart);

  while (pos < data_end) {
    if (atomic_load(&f->no_ranges)) {
      /* All data: always true. */
      if (!nbds_extents_add(ex, data_end - pos, 0) || one)
        return 0;
      pos = data_end;
      break;
    }
    FILE_ALLOCATED_RANGE_BUFFER in, out[64];
    in.FileOffset.QuadPart = pos;
    in.Length.QuadPart = data_end - pos;
    DWORD n = 0;
    DWORD error = fsctl(f->h, FSCTL_QUERY_ALLOCATED_RANGES, &in, sizeof in,
                        out, sizeof out, &n);
    if (w32_unsupported(error)) {
      atomic_store(&f->no_ranges, true);
      continue;
    }
    if (error && error != ERROR_MORE_DATA)
      return w32_errno(error);
    size_t count = n / sizeof out[0];
    if (count == 0)
      break;  /* no data from pos on */
    for (size_t i = 0; i < count && pos < data_end; i++) {
      uint64_t start = out[i].FileOffset.QuadPart;
      uint64_t stop = min_u64(start + out[i].Length.QuadPart, data_end);
      if (start > pos &&
          (!nbds_extents_add(ex, min_u64(start, data_end) - pos, HOLE) ||
           one))
        return 0;
      pos = start > pos ? start : pos;
      if (stop > pos && (!nbds_extents_add(ex, stop - pos, 0) || one))
        return 0;
      pos = stop > pos ? stop : pos;
    }
    if (error != ERROR_MORE_DATA)
      break;
  }
  nbds_extents_add(ex, end - pos, HOLE);
  return 0;
}

/* CACHE: Windows has no read-ahead advice for a handle, so read the
 * range through the system cache and drop the bytes (nbdkit's
 * cache=emulate).  Only a hint: its failure is not the client's. */
static int
do_cache(struct w32_file *f, struct nbds_req *req)
{
  void *buf = malloc(ZERO_CHUNK);
  uint64_t pos = req->offset, end = req->offset + req->count;
  while (buf && pos < end) {
    DWORD n = end - pos < ZERO_CHUNK ? end - pos : ZERO_CHUNK;
    if (!w32_sync_io(f->h, false, buf, n, pos, &n) || n == 0)
      break;
    pos += n;
  }
  free(buf);
  return 0;
}

static int
run(struct w32_io *io)
{
  struct w32_file *f = io->f;
  struct nbds_req *req = io->req;
  int err;
  switch (req->op) {
  case NBDS_OP_WRITE:
    /* The data is written: make a FUA write durable where the
     * write-through handle does not (Wine). */
    return w32_flush(f);
  case NBDS_OP_FLUSH:
    return w32_flush(f);
  case NBDS_OP_TRIM:
    err = do_trim(f, req);
    break;
  case NBDS_OP_ZERO:
    err = do_zero(f, req);
    break;
  case NBDS_OP_BLOCK_STATUS:
    return do_extents(f, req);
  case NBDS_OP_CACHE:
    return do_cache(f, req);
  default:
    return EINVAL;
  }
  if (!err && (req->flags & NBDS_F_FUA))
    err = w32_flush(f);
  return err;
}

static void
work_fn(struct nbds_work *w)
{
  struct w32_io *io = container_of(w, struct w32_io, work);
  io->err = run(io);
}

static void
work_done(struct nbds_work *w)
{
  struct w32_io *io = container_of(w, struct w32_io, work);
  w32_finish(io, io->err);
}

void
w32_sync_submit(struct w32_io *io)
{
  io->work.fn = work_fn;
  io->work.done = work_done;
  nbds_work_submit(&io->work);
}
