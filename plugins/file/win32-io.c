/* READ and WRITE, in either of two ways (the aio key):
 *
 * aio=overlapped: overlapped ReadFile/WriteFile from the reactor.  Both
 * handles of a file belong to one I/O completion port, and one thread
 * per file waits on it.  That thread does nothing but hand each completion
 * to the reactor that submitted the request (nbds_reactor_post), so the
 * request's next step — the next iovec, the next phase of a bounce, its
 * completion — always runs on its own reactor, and any number of reactors
 * can share the file.  (A reactor built on IOCP could own the port
 * instead, but a handle belongs to one port, and the file is shared by
 * every reactor.)
 *
 * aio=threads: the same transfers with blocking calls on the worker pool.
 * Wine does an overlapped call's read or write in the calling thread
 * before it returns ERROR_IO_PENDING, which would stall the reactor for
 * the whole transfer: under Wine this is the default.
 *
 * ReadFile and WriteFile take one buffer, so a request goes one iovec at
 * a time, at most W32_IO_MAX bytes per call. */
#include <errno.h>
#include <string.h>

#include "win32.h"

enum { KEY_IO = 1, KEY_STOP };

static void step(struct w32_io *io, DWORD n, DWORD error);

static void
resumed(void *arg)
{
  struct w32_io *io = arg;
  step(io, io->bytes, io->error);
}

static DWORD WINAPI
port_main(void *arg)
{
  struct w32_file *f = arg;
  for (;;) {
    DWORD n = 0;
    ULONG_PTR key = 0;
    OVERLAPPED *ov = NULL;
    BOOL ok = GetQueuedCompletionStatus(f->port, &n, &key, &ov, INFINITE);
    if (!ov) {
      /* The stop packet, or the port itself is gone. */
      if (key == KEY_STOP || !ok)
        return 0;
      continue;
    }
    struct w32_io *io = container_of(ov, struct w32_io, ov);
    io->bytes = n;
    io->error = ok ? ERROR_SUCCESS : GetLastError();
    nbds_reactor_post(io->reactor, resumed, io);
  }
}

/* Create the port, tie both handles to it and start its thread.  0 or a
 * Win32 error. */
int
w32_port_start(struct w32_file *f)
{
  f->port = CreateIoCompletionPort(f->h, NULL, KEY_IO, 1);
  if (!f->port)
    return GetLastError();
  if (f->h_fua && !CreateIoCompletionPort(f->h_fua, f->port, KEY_IO, 0)) {
    DWORD error = GetLastError();
    CloseHandle(f->port);
    f->port = NULL;
    return error;
  }
  f->port_thread = CreateThread(NULL, 0, port_main, f, 0, NULL);
  if (!f->port_thread) {
    DWORD error = GetLastError();
    CloseHandle(f->port);
    f->port = NULL;
    return error;
  }
  return 0;
}

/* Every request has completed: stop the thread, close the port. */
void
w32_port_stop(struct w32_file *f)
{
  if (!f->port)
    return;
  PostQueuedCompletionStatus(f->port, 0, KEY_STOP, NULL);
  WaitForSingleObject(f->port_thread, INFINITE);
  CloseHandle(f->port_thread);
  CloseHandle(f->port);
  f->port = NULL;
}

static HANDLE
handle_for(const struct w32_io *io, bool write)
{
  return write && (io->req->flags & NBDS_F_FUA) ? io->f->h_fua : io->f->h;
}

/* The next transfer of a READ or WRITE; false when there is none left. */
static bool
next_xfer(struct w32_io *io, struct w32_xfer *x)
{
  struct nbds_req *req = io->req;
  if (io->bounced)
    return w32_bounce_next(&io->bounce, x);

  while (io->seg < req->iovcnt && io->seg_done == req->iov[io->seg].iov_len) {
    io->seg++;
    io->seg_done = 0;
  }
  if (io->done >= req->count || io->seg >= req->iovcnt)
    return false;
  uint64_t left = req->iov[io->seg].iov_len - io->seg_done;
  if (left > req->count - io->done)
    left = req->count - io->done;
  x->write = req->op == NBDS_OP_WRITE;
  x->buf = (char *) req->iov[io->seg].iov_base + io->seg_done;
  x->len = left < W32_IO_MAX ? left : W32_IO_MAX;
  x->pos = req->offset + io->done;
  return true;
}

/* A READ hit end of file: the export is rounded up past it, and the rest
 * reads as zeroes. */
static void
zero_rest(struct w32_io *io)
{
  struct nbds_req *req = io->req;
  for (int i = io->seg; i < req->iovcnt; i++) {
    size_t skip = i == io->seg ? io->seg_done : 0;
    memset((char *) req->iov[i].iov_base + skip, 0,
           req->iov[i].iov_len - skip);
  }
  io->done = req->count;
}

/* The transfer done last moved n bytes or failed with error.  Returns 0
 * to go on, or the errno value that fails the request. */
static int
account(struct w32_io *io, DWORD n, DWORD error)
{
  struct nbds_req *req = io->req;
  bool write = req->op == NBDS_OP_WRITE;
  if (io->bounced)
    return w32_bounce_done(&io->bounce, n, error);

  if (!write && error == ERROR_HANDLE_EOF) {
    n = 0;
    error = ERROR_SUCCESS;
  }
  if (error)
    return w32_errno(error);
  if (n == 0) {
    if (write)
      return ENOSPC;  /* no progress: the disk is full */
    zero_rest(io);
  }
  io->done += n;
  io->seg_done += n;
  /* Under direct I/O a read that stopped inside a sector stopped at end
   * of file: reading on from there would be refused as unaligned. */
  if (!write && io->f->direct && io->done < req->count &&
      w32_align_down(io->f, req->offset + io->done) != req->offset + io->done)
    zero_rest(io);
  return 0;
}

/* A FUA write under Wine still needs FlushFileBuffers (win32.h). */
static bool
needs_flush(const struct w32_io *io)
{
  return io->req->op == NBDS_OP_WRITE && (io->req->flags & NBDS_F_FUA) &&
         io->f->fua_flush;
}

/* aio=overlapped: issue the next transfer, or finish. */
static void
advance(struct w32_io *io)
{
  struct w32_xfer x;
  if (!next_xfer(io, &x)) {
    if (needs_flush(io))
      w32_sync_submit(io);  /* FlushFileBuffers, then complete */
    else
      w32_finish(io, 0);
    return;
  }
  memset(&io->ov, 0, sizeof io->ov);
  io->ov.Offset = (DWORD) x.pos;
  io->ov.OffsetHigh = (DWORD) (x.pos >> 32);
  HANDLE h = handle_for(io, x.write);
  BOOL ok = x.write ? WriteFile(h, x.buf, x.len, NULL, &io->ov)
                    : ReadFile(h, x.buf, x.len, NULL, &io->ov);
  /* Success, even at once, still queues a packet to the port; a failure
   * other than "pending" queues nothing, except under Wine. */
  if (ok || GetLastError() == ERROR_IO_PENDING || io->f->fail_packets)
    return;
  step(io, 0, GetLastError());
}

/* aio=overlapped, on the submitting reactor: a transfer has completed. */
static void
step(struct w32_io *io, DWORD n, DWORD error)
{
  int err = account(io, n, error);
  if (err)
    w32_finish(io, err);
  else
    advance(io);
}

/* aio=threads, on a worker: every transfer with blocking calls. */
static void
work_fn(struct nbds_work *w)
{
  struct w32_io *io = container_of(w, struct w32_io, work);
  struct w32_xfer x;
  io->err = 0;
  while (!io->err && next_xfer(io, &x)) {
    DWORD n = 0;
    bool ok = w32_sync_io(handle_for(io, x.write), x.write, x.buf, x.len,
                          x.pos, &n);
    io->err = account(io, n, ok ? ERROR_SUCCESS : GetLastError());
  }
  if (!io->err && needs_flush(io))
    io->err = w32_flush(io->f);
}

static void
work_done(struct nbds_work *w)
{
  struct w32_io *io = container_of(w, struct w32_io, work);
  w32_finish(io, io->err);
}

void
w32_io_start(struct w32_io *io)
{
  io->done = 0;
  io->seg = 0;
  io->seg_done = 0;
  if (io->f->threads) {
    io->work.fn = work_fn;
    io->work.done = work_done;
    nbds_work_submit(&io->work);
  }
  else
    advance(io);
}

static INIT_ONCE event_once = INIT_ONCE_STATIC_INIT;
static DWORD event_slot = FLS_OUT_OF_INDEXES;

static void WINAPI
close_event(void *ev)
{
  if (ev)
    CloseHandle(ev);
}

static BOOL CALLBACK
make_slot(INIT_ONCE *once, void *param, void **context)
{
  (void) once, (void) param, (void) context;
  event_slot = FlsAlloc(close_event);
  return event_slot != FLS_OUT_OF_INDEXES;
}

/* The calling thread's event for blocking calls, closed when the thread
 * ends: creating one per call would cost two more system calls each time
 * (wineserver round trips under Wine).  NULL if none can be made. */
HANDLE
w32_thread_event(void)
{
  if (!InitOnceExecuteOnce(&event_once, make_slot, NULL, NULL))
    return NULL;
  HANDLE ev = FlsGetValue(event_slot);
  if (!ev) {
    ev = CreateEventW(NULL, TRUE, FALSE, NULL);
    if (ev && !FlsSetValue(event_slot, ev)) {
      CloseHandle(ev);
      ev = NULL;
    }
  }
  return ev;
}

/* A blocking transfer on an overlapped handle.  The event's low bit keeps
 * the completion off the port, so it is ours alone.  False with
 * GetLastError() set on failure. */
bool
w32_sync_io(HANDLE h, bool write, void *buf, DWORD len, uint64_t pos,
            DWORD *n)
{
  HANDLE ev = w32_thread_event();
  if (!ev)
    return false;
  OVERLAPPED ov = {
    .Offset = (DWORD) pos,
    .OffsetHigh = (DWORD) (pos >> 32),
    .hEvent = (HANDLE) ((uintptr_t) ev | 1),
  };
  BOOL ok = write ? WriteFile(h, buf, len, NULL, &ov)
                  : ReadFile(h, buf, len, NULL, &ov);
  if (ok || GetLastError() == ERROR_IO_PENDING) {
    WaitForSingleObject(ev, INFINITE);
    ok = GetOverlappedResult(h, &ov, n, FALSE);
  }
  return ok;
}
