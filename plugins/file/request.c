/* Per-request state of the file layer, the bookkeeping for short
 * transfers, and the choice of how to zero a range. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "file.h"

/* Requests' state comes from a per-thread free list: a reactor takes and
 * returns its own (worker completions come back on the submitting
 * reactor), so no lock is needed and there is no malloc per request once
 * the list is as deep as the deepest burst.  The list head is the value of
 * a thread key, whose destructor frees the list when a reactor thread
 * exits. */
static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_key_t free_key;
static int init_err;
static void *zero_buf;

static void
free_list(void *head)
{
  struct file_io *io = head;
  while (io) {
    struct file_io *next = io->next;
    free(io->own);
    free(io);
    io = next;
  }
}

static void
init(void)
{
  init_err = pthread_key_create(&free_key, free_list);
  if (init_err)
    return;
  /* Anonymous read-only pages all map the kernel's zero page: the buffer
   * costs no memory and nothing can scribble on it. */
  zero_buf = mmap(NULL, FILE_ZERO_CHUNK, PROT_READ,
                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (zero_buf == MAP_FAILED) {
    init_err = errno;
    zero_buf = NULL;
  }
}

/* Set up what every handle shares; 0 or an errno value. */
int
file_init_once(void)
{
  pthread_once(&once, init);
  return init_err;
}

void *
file_zero_buf(void)
{
  return zero_buf;
}

struct file_io *
file_io_get(struct file_disk *h, struct nbds_req *req)
{
  struct file_io *io = pthread_getspecific(free_key);
  if (io)  /* cannot fail: setting the key has worked on this thread */
    pthread_setspecific(free_key, io->next);
  else {
    io = calloc(1, sizeof *io);
    if (!io)
      return NULL;
  }
  io->h = h;
  io->req = req;
  io->done = 0;
  io->err = 0;
  io->iov = req->iov;
  io->iovcnt = req->iovcnt;
  io->iov_private = false;
  io->bounced = false;
  io->range.held = RANGE_NONE;
  return io;
}

/* Let waiting writes go, return the state to the free list, then
 * complete: the done callback may submit again and reuse it at once. */
void
file_io_finish(struct file_io *io, int err)
{
  struct nbds_req *req = io->req;
  file_ranges_leave(io);
  if (io->bounced)
    file_bounce_free(&io->bounce);
  io->next = pthread_getspecific(free_key);
  if (pthread_setspecific(free_key, io) != 0) {
    free(io->own);
    free(io);
  }
  nbds_req_complete(req, err);
}

/* Account for n bytes transferred and, if the request is not finished,
 * advance the iovecs past them.  The submitter's array is never modified:
 * the first advance copies it.  Returns 0 or ENOMEM. */
int
file_io_progress(struct file_io *io, size_t n)
{
  io->done += n;
  if (io->done >= io->req->count)
    return 0;

  if (!io->iov_private) {
    if (io->own_cap < io->iovcnt) {
      struct iovec *own = malloc(io->iovcnt * sizeof *own);
      if (!own)
        return ENOMEM;
      free(io->own);
      io->own = own;
      io->own_cap = io->iovcnt;
    }
    memcpy(io->own, io->iov, io->iovcnt * sizeof *io->own);
    io->iov = io->own;
    io->iov_private = true;
  }

  while (io->iovcnt > 0 && n >= io->iov[0].iov_len) {
    n -= io->iov[0].iov_len;
    io->iov++;
    io->iovcnt--;
  }
  if (n > 0) {
    io->iov[0].iov_base = (char *) io->iov[0].iov_base + n;
    io->iov[0].iov_len -= n;
  }
  return 0;
}

/* How many iovecs one call may take: more than IOV_MAX fails with EINVAL,
 * so a longer list goes in several calls through the short-transfer
 * path. */
int
file_io_iovcnt(const struct file_io *io)
{
  return io->iovcnt < IOV_MAX ? io->iovcnt : IOV_MAX;
}

/* A READ hit end of file: the export is rounded up past it, and the
 * rest reads as zeroes. */
void
file_io_zero_rest(struct file_io *io)
{
  for (int i = 0; i < io->iovcnt; i++)
    memset(io->iov[i].iov_base, 0, io->iov[i].iov_len);
}

/* A READ that stopped short inside a block under O_DIRECT stopped at end
 * of file: reading on from there would be refused as unaligned. */
bool
file_io_eof(const struct file_io *io)
{
  return io->h->direct &&
         file_align_down(io->h, io->req->offset + io->done) !=
           io->req->offset + io->done;
}

/* Fast and deallocating first, unless the client asked to keep the
 * blocks; then zeroing in place; writing zeroes only when the client
 * accepts slow. */
enum file_zero
file_zero_how(struct file_disk *h, uint32_t flags)
{
  bool no_zero_range = atomic_load_explicit(&h->no_zero_range,
                                            memory_order_relaxed);
  if (!(flags & NBDS_F_NO_HOLE) &&
      !atomic_load_explicit(&h->no_punch, memory_order_relaxed))
    return FILE_ZERO_PUNCH;
  /* A block device's ZERO_RANGE falls back to writing zeroes inside the
   * kernel: it cannot promise to be fast. */
  if ((flags & NBDS_F_FAST_ZERO) && (h->is_bdev || no_zero_range))
    return FILE_ZERO_NOTSUP;
  if (!no_zero_range)
    return FILE_ZERO_RANGE;
  return FILE_ZERO_WRITE;
}
