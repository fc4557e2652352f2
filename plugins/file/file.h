/* The POSIX file layer's internals, shared by its files:
 *   posix.c    the layer: open, caps, size, request dispatch
 *   request.c  per-request state and its free list, iovec bookkeeping,
 *              the choice of how to zero
 *   uring.c    requests through the reactor's io_uring ring
 *   threads.c  requests on the worker pool: aio=threads, and what io_uring
 *              cannot do
 *   extents.c  BLOCK_STATUS from SEEK_DATA/SEEK_HOLE
 */
#ifndef NBDS_FILE_H
#define NBDS_FILE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "nbdstack/layer.h"
#include "nbdstack/reactor.h"

#define container_of(ptr, type, member) \
  ((type *) ((char *) (ptr) - offsetof(type, member)))

/* The shared zero buffer: the most one zero-writing call sends. */
#define FILE_ZERO_CHUNK (1024 * 1024)

/* One open file or block device, shared by every reactor. */
struct file_disk {
  int fd;
  bool readonly;
  bool want_uring;     /* aio=io_uring */
  bool is_bdev;
  uint32_t sector;     /* block device: discard and fallocate alignment */
  uint64_t size;
  /* Learned at run time: once the file system says EOPNOTSUPP, every
   * later request skips the call. */
  atomic_bool no_punch;
  atomic_bool no_zero_range;
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
  struct file_io *next;  /* free list */
};

/* request.c */
int file_init_once(void);
struct file_io *file_io_get(struct file_disk *h, struct nbds_req *req);
void file_io_finish(struct file_io *io, int err);
int file_io_progress(struct file_io *io, size_t n);
int file_io_iovcnt(const struct file_io *io);
void file_io_zero_rest(struct file_io *io);
void *file_zero_buf(void);

/* How the next attempt at a ZERO request should go. */
enum file_zero {
  FILE_ZERO_PUNCH,     /* fallocate PUNCH_HOLE: fast, deallocates */
  FILE_ZERO_RANGE,     /* fallocate ZERO_RANGE: keeps the blocks */
  FILE_ZERO_WRITE,     /* write zeroes: slow */
  FILE_ZERO_NOTSUP,    /* FAST_ZERO and nothing fast is left */
};
enum file_zero file_zero_how(struct file_disk *h, uint32_t flags);

/* uring.c, threads.c, extents.c */
void file_uring_submit(struct file_io *io);
void file_threads_submit(struct file_io *io);
int file_extents(struct file_disk *h, struct nbds_req *req);

#endif
