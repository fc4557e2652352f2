/* The POSIX file layer's internals, shared by its files:
 *   posix.c    the layer: open, caps, size, request dispatch
 *   request.c  per-request state and its free list, iovec bookkeeping,
 *              the choice of how to zero
 *   uring.c    requests through the reactor's io_uring ring
 *   threads.c  requests on the worker pool: aio=threads, and what io_uring
 *              cannot do
 *   extents.c  BLOCK_STATUS from SEEK_DATA/SEEK_HOLE
 *   odirect.c  direct=on: O_DIRECT and the alignment it needs
 *   bounce.c   unaligned requests under O_DIRECT, through aligned buffers
 *   ranges.c   read-modify-writes kept apart from the writes they overlap
 */
#ifndef NBDS_FILE_H
#define NBDS_FILE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "nbdstack/layer.h"
#include "nbdstack/reactor.h"

#define container_of(ptr, type, member) \
  ((type *) ((char *) (ptr) - offsetof(type, member)))

/* The shared zero buffer: the most one zero-writing call sends. */
#define FILE_ZERO_CHUNK (1024 * 1024)

/* Writes in flight on one file, for ranges.c (see there). */
struct file_ranges {
  pthread_mutex_t lock;
  atomic_uint rmws;    /* read-modify-writes listed, running or waiting */
  atomic_uint fast;    /* writes in flight that took the lock-free path */
  struct file_range *active;
  struct file_range *waiting, **waiting_tail;  /* first come, first served */
};

/* One open file or block device, shared by every reactor. */
struct file_disk {
  int fd;
  bool readonly;
  bool want_uring;     /* aio=io_uring */
  bool is_bdev;
  bool direct;         /* direct=on: O_DIRECT */
  uint32_t sector;     /* block device: discard and fallocate alignment */
  /* What O_DIRECT transfers must be aligned to: file offset and length,
   * and buffer address.  Both are 1 without direct. */
  uint32_t align;
  uint32_t mem_align;
  uint64_t size;
  /* Learned at run time: once the file system says EOPNOTSUPP, every
   * later request skips the call. */
  atomic_bool no_punch;
  atomic_bool no_zero_range;
  struct file_ranges ranges;
};

static inline uint64_t
file_align_down(const struct file_disk *h, uint64_t x)
{
  return x & ~(uint64_t) (h->align - 1);
}

static inline uint64_t
file_align_up(const struct file_disk *h, uint64_t x)
{
  return file_align_down(h, x + h->align - 1);
}

/* An unaligned READ or WRITE under O_DIRECT, done in whole blocks through
 * an aligned buffer (bounce.c).  The plan is here; uring.c and threads.c
 * carry out the transfers it asks for. */
struct file_bounce {
  char *buf;               /* holds [start, end) of the file */
  uint64_t start, end;     /* the whole blocks that cover the request */
  uint64_t offset, count;  /* the part the request reads or writes */
  const struct iovec *iov; /* READ: target; WRITE: source, or NULL: zeroes */
  int iovcnt;
  bool write;
  int rwf;                 /* WRITE: RWF_DSYNC for FUA */
  uint32_t align;
  int phase;
  uint64_t done;           /* bytes of the current phase's transfer */
};

/* One aligned transfer a bounce asks for. */
struct file_xfer {
  bool write;
  char *buf;
  size_t len;
  uint64_t pos;
  int rwf;
};

/* A request's place in ranges.c's lists. */
enum file_held { RANGE_NONE, RANGE_FAST, RANGE_LISTED };
struct file_range {
  uint64_t start, end;
  bool rmw;
  enum file_held held;
  struct nbds_reactor *reactor;  /* where to resume a waiter */
  struct file_range *next;       /* active or waiting list */
  struct file_range *ready;      /* woken, to be posted */
};

/* One request in flight.  Both the ring and the worker pool can carry it,
 * so it embeds both hooks. */
struct file_io {
  struct nbds_uring_op uop;
  struct nbds_work work;
  struct file_disk *h;
  struct nbds_req *req;
  int step;            /* uring.c: what the SQE in flight does */
  int err;             /* threads.c: the result, from worker to reactor */
  uint64_t done;       /* bytes of READ/WRITE/written zeroes finished */
  /* What is left to transfer: req's own iovecs until a short transfer
   * makes us advance, then our private copy. */
  struct iovec *iov;
  int iovcnt;
  bool iov_private;
  struct iovec *own;
  int own_cap;
  bool bounced;        /* direct=on and not aligned: through `bounce` */
  struct file_bounce bounce;
  struct file_range range;
  struct file_io *next;  /* free list */
};

/* request.c */
int file_init_once(void);
struct file_io *file_io_get(struct file_disk *h, struct nbds_req *req);
void file_io_finish(struct file_io *io, int err);
int file_io_progress(struct file_io *io, size_t n);
int file_io_iovcnt(const struct file_io *io);
void file_io_zero_rest(struct file_io *io);
bool file_io_eof(const struct file_io *io);
void *file_zero_buf(void);

/* How the next attempt at a ZERO request should go. */
enum file_zero {
  FILE_ZERO_PUNCH,     /* fallocate PUNCH_HOLE: fast, deallocates */
  FILE_ZERO_RANGE,     /* fallocate ZERO_RANGE: keeps the blocks */
  FILE_ZERO_WRITE,     /* write zeroes: slow */
  FILE_ZERO_NOTSUP,    /* FAST_ZERO and nothing fast is left */
};
enum file_zero file_zero_how(struct file_disk *h, uint32_t flags);

/* posix.c: start a request whose turn has come (ranges.c) */
void file_dispatch(struct file_io *io);

/* odirect.c */
int file_direct_unsupported(const char *path);
int file_direct_probe(const char *path, struct file_disk *h);
int file_direct_trial(int fd, uint32_t *align, uint32_t *mem_align);

/* bounce.c */
bool file_direct_aligned(const struct file_disk *h, const struct nbds_req *req);
int file_bounce_init(struct file_bounce *b, const struct file_disk *h,
                     bool write, uint64_t offset, uint64_t count,
                     const struct iovec *iov, int iovcnt, int rwf);
void file_bounce_free(struct file_bounce *b);
bool file_bounce_next(const struct file_bounce *b, struct file_xfer *x);
int file_bounce_done(struct file_bounce *b, ssize_t res);

/* ranges.c */
void file_ranges_init(struct file_ranges *s);
void file_ranges_destroy(struct file_ranges *s);
bool file_ranges_enter(struct file_io *io);
void file_ranges_leave(struct file_io *io);

/* uring.c, threads.c, extents.c */
void file_uring_submit(struct file_io *io);
void file_threads_submit(struct file_io *io);
int file_extents(struct file_disk *h, struct nbds_req *req);

#endif
