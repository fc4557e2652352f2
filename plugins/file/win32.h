/* The Win32 file layer's internals, shared by its files:
 *   win32.c         the layer: options, open, caps, size, dispatch
 *   win32-open.c    open flags per cache mode, direct I/O alignment
 *   win32-io.c      READ and WRITE: overlapped, completed through an I/O
 *                   completion port and posted back to the reactor, or
 *                   blocking on the worker pool
 *   win32-bounce.c  unaligned requests under direct I/O, through aligned
 *                   buffers
 *   win32-ranges.c  read-modify-writes kept apart from the writes they
 *                   overlap
 *   win32-sync.c    what only blocking calls can do, on the worker pool:
 *                   FLUSH, TRIM, ZERO, BLOCK_STATUS
 *   win32-errors.c  Win32 error codes as the errno values the POSIX layer
 *                   returns for the same conditions
 *   win32-layers.c  the layer registry of the Windows build
 */
#ifndef NBDS_WIN32FILE_H
#define NBDS_WIN32FILE_H

#define WIN32_LEAN_AND_MEAN
#include <windows.h>

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nbdstack/layer.h"
#include "nbdstack/reactor.h"

#define container_of(ptr, type, member) \
  ((type *) ((char *) (ptr) - offsetof(type, member)))

/* The most one ReadFile or WriteFile moves: its length is a DWORD. */
#define W32_IO_MAX (1u << 30)

/* Writes in flight on one file, under direct I/O (win32-ranges.c). */
struct w32_ranges {
  SRWLOCK lock;
  struct w32_range *active;
  struct w32_range *waiting, **waiting_tail;  /* first come, first served */
};

/* One open file, shared by every reactor. */
struct w32_file {
  HANDLE h;            /* reads, writes without FUA, everything else */
  HANDLE h_fua;        /* FILE_FLAG_WRITE_THROUGH: FUA writes; NULL when
                        * read-only */
  HANDLE port;         /* aio=overlapped: the completion port both
                        * handles belong to */
  HANDLE port_thread;  /* turns completions into reactor posts */
  bool readonly;
  bool direct;         /* FILE_FLAG_NO_BUFFERING */
  bool threads;        /* aio=threads: READ/WRITE on the worker pool */
  /* Wine records FILE_FLAG_WRITE_THROUGH but its writes stay in the host's
   * page cache: a FUA write is followed by FlushFileBuffers there. */
  bool fua_flush;
  /* Wine 8 also queues a completion packet for a ReadFile or WriteFile
   * that fails at once; Windows queues none. */
  bool fail_packets;
  uint32_t align;      /* direct: file offsets, lengths and buffer
                        * addresses; 1 without direct */
  uint64_t size;
  /* Learned at run time: once the file system refuses the FSCTL, later
   * requests skip it. */
  atomic_bool no_zero_data;
  atomic_bool no_ranges;
  struct w32_ranges ranges;
};

static inline uint64_t
w32_align_down(const struct w32_file *f, uint64_t x)
{
  return x & ~(uint64_t) (f->align - 1);
}

static inline uint64_t
w32_align_up(const struct w32_file *f, uint64_t x)
{
  return w32_align_down(f, x + f->align - 1);
}

/* An unaligned READ or WRITE under direct I/O, done in whole blocks
 * through an aligned buffer.  win32-bounce.c plans; the caller does each
 * transfer w32_bounce_next() asks for. */
struct w32_bounce {
  char *buf;               /* holds [start, end) of the file */
  uint64_t start, end;     /* the whole blocks that cover the request */
  uint64_t offset, count;  /* the part the request reads or writes */
  const struct iovec *iov; /* READ: target; WRITE: source, or NULL: zeroes */
  int iovcnt;
  bool write;
  uint32_t align;
  int phase;
  uint64_t done;           /* bytes of the current phase's transfer */
};

/* One transfer a bounce asks for. */
struct w32_xfer {
  bool write;
  char *buf;
  DWORD len;
  uint64_t pos;
};

/* A write's place in win32-ranges.c's lists. */
struct w32_range {
  uint64_t start, end;
  bool rmw;
  bool held;
  struct nbds_reactor *reactor;  /* where to resume a waiter */
  struct w32_range *next;        /* active or waiting list */
  struct w32_range *ready;       /* woken, to be posted */
};

/* One request in flight. */
struct w32_io {
  OVERLAPPED ov;       /* the completion port hands this back */
  struct w32_file *f;
  struct nbds_req *req;
  struct nbds_reactor *reactor;  /* where the request completes */
  struct nbds_work work;         /* win32-sync.c */
  int err;                       /* from worker to reactor */
  /* The completion packet, carried from the port thread to the reactor. */
  DWORD bytes;
  DWORD error;
  uint64_t done;       /* READ/WRITE: bytes finished */
  int seg;             /* READ/WRITE: the iovec in progress */
  size_t seg_done;     /* bytes of it finished */
  bool bounced;
  struct w32_bounce bounce;
  struct w32_range range;
};

/* win32.c: start a request whose turn has come (win32-ranges.c) */
void w32_dispatch(struct w32_io *io);
void w32_finish(struct w32_io *io, int err);

/* win32-open.c */
DWORD win32file_open_flags(bool direct);
DWORD win32file_fua_flags(bool direct);
bool win32file_mode_direct(const char *mode, bool *direct);
int w32_direct_probe(const char *path, const wchar_t *wpath,
                     struct w32_file *f);
bool w32_is_wine(void);

/* win32-io.c */
int w32_port_start(struct w32_file *f);
void w32_port_stop(struct w32_file *f);
void w32_io_start(struct w32_io *io);
HANDLE w32_thread_event(void);
bool w32_sync_io(HANDLE h, bool write, void *buf, DWORD len, uint64_t pos,
                 DWORD *n);

/* win32-bounce.c */
bool w32_direct_aligned(const struct w32_file *f, const struct nbds_req *req);
int w32_bounce_init(struct w32_bounce *b, const struct w32_file *f,
                    bool write, uint64_t offset, uint64_t count,
                    const struct iovec *iov, int iovcnt);
void w32_bounce_free(struct w32_bounce *b);
bool w32_bounce_next(const struct w32_bounce *b, struct w32_xfer *x);
int w32_bounce_done(struct w32_bounce *b, DWORD n, DWORD error);
void *w32_aligned_alloc(size_t size, uint32_t align);
void w32_aligned_free(void *p);

/* win32-ranges.c */
void w32_ranges_init(struct w32_ranges *s);
bool w32_ranges_enter(struct w32_io *io);
void w32_ranges_leave(struct w32_io *io);

/* win32-sync.c */
void w32_sync_submit(struct w32_io *io);
int w32_flush(struct w32_file *f);

/* win32-errors.c */
int w32_errno(DWORD error);
bool w32_unsupported(DWORD error);
const char *w32_strerror(DWORD error, char *buf, size_t len);

/* For tests: the handles of an open win32file layer. */
HANDLE win32file_handle(struct nbds_layer *l, bool fua);

#endif
