/* The Win32 file protocol layer ("win32file"): a local file through the
 * Win32 API, with the POSIX layer's keys and behaviour.
 *
 *   file=PATH      the file to export (UTF-8)
 *   readonly=on    open for reading only
 *   direct=on      FILE_FLAG_NO_BUFFERING (cache modes none, directsync)
 *   aio=overlapped|threads
 *                  READ and WRITE as overlapped calls completed through a
 *                  completion port, or blocking calls on the worker pool
 *                  (the default under Wine: see win32-io.c)
 *
 * One handle serves every connection on every reactor; every call carries
 * its offset in an OVERLAPPED, so requests never share a file position.
 * READ and WRITE go through win32-io.c; FLUSH, TRIM, ZERO, BLOCK_STATUS
 * and CACHE are blocking calls on the worker pool (win32-sync.c).  Either
 * way a request completes on the reactor that submitted it. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "win32.h"

#include <winioctl.h>

static const char *const known_keys[] = {
  "file", "readonly", "direct", "aio", NULL
};

/* An on/off key; off when absent. */
static int
parse_bool(const struct nbds_kv *kv, size_t nkv, const char *key, bool *v)
{
  const char *s = nbds_kv_get(kv, nkv, key);
  if (!s || strcmp(s, "off") == 0)
    *v = false;
  else if (strcmp(s, "on") == 0)
    *v = true;
  else {
    nbds_error("win32file: %s must be on or off, not '%s'", key, s);
    return -1;
  }
  return 0;
}

static int
parse_aio(const struct nbds_kv *kv, size_t nkv, struct w32_file *f)
{
  const char *aio = nbds_kv_get(kv, nkv, "aio");
  if (!aio)
    f->threads = w32_is_wine();
  else if (strcmp(aio, "overlapped") == 0)
    f->threads = false;
  else if (strcmp(aio, "threads") == 0)
    f->threads = true;
  else {
    nbds_error("win32file: aio must be overlapped or threads, not '%s'",
               aio);
    return -1;
  }
  return 0;
}

static wchar_t *
utf8_to_wide(const char *s)
{
  int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, NULL, 0);
  if (n <= 0)
    return NULL;
  wchar_t *w = malloc(n * sizeof *w);
  if (w && MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, w,
                               n) != n) {
    free(w);
    w = NULL;
  }
  return w;
}

/* Others may read and write the file while we export it, as on POSIX. */
static HANDLE
open_handle(const wchar_t *wpath, bool readonly, DWORD flags)
{
  DWORD access = GENERIC_READ | (readonly ? 0 : GENERIC_WRITE);
  return CreateFileW(wpath, access,
                     FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                     NULL, OPEN_EXISTING, flags, NULL);
}

static int
open_error(const char *path)
{
  char msg[300];
  nbds_error("cannot open '%s': %s", path,
             w32_strerror(GetLastError(), msg, sizeof msg));
  return -1;
}

/* A regular file, and how big. */
static int
probe(const char *path, struct w32_file *f)
{
  BY_HANDLE_FILE_INFORMATION info;
  LARGE_INTEGER size;
  if (GetFileType(f->h) != FILE_TYPE_DISK ||
      !GetFileInformationByHandle(f->h, &info) ||
      (info.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY)) {
    nbds_error("'%s' is not a regular file", path);
    return -1;
  }
  if (!GetFileSizeEx(f->h, &size))
    return open_error(path);
  f->size = size.QuadPart;
  return 0;
}

/* NTFS deallocates zeroed ranges only in a sparse file.  A file system
 * without sparse files (FAT) just zeroes; nothing to report. */
static void
make_sparse(struct w32_file *f)
{
  HANDLE ev = w32_thread_event();
  if (!ev)
    return;
  OVERLAPPED ov = { .hEvent = ev };
  DWORD n;
  if (!DeviceIoControl(f->h, FSCTL_SET_SPARSE, NULL, 0, NULL, 0, &n, &ov) &&
      GetLastError() == ERROR_IO_PENDING)
    GetOverlappedResult(f->h, &ov, &n, TRUE);
}

static void
close_handles(struct w32_file *f)
{
  if (f->h_fua)
    CloseHandle(f->h_fua);
  if (f->h != INVALID_HANDLE_VALUE)
    CloseHandle(f->h);
}

static int
open_file(const char *path, const wchar_t *wpath, struct w32_file *f)
{
  f->h = open_handle(wpath, f->readonly, win32file_open_flags(f->direct));
  if (f->h == INVALID_HANDLE_VALUE)
    return open_error(path);
  f->align = 1;
  if (probe(path, f) == -1 ||
      (f->direct && w32_direct_probe(path, wpath, f) == -1))
    return -1;
  if (f->readonly)
    return 0;

  HANDLE fua = open_handle(wpath, false, win32file_fua_flags(f->direct));
  if (fua == INVALID_HANDLE_VALUE)
    return open_error(path);
  f->h_fua = fua;
  make_sparse(f);
  return 0;
}

static int
w32_open(struct nbds_layer *l, const struct nbds_kv *kv, size_t nkv)
{
  if (nbds_kv_check("win32file", kv, nkv, known_keys) == -1)
    return -1;
  const char *path = nbds_kv_get(kv, nkv, "file");
  if (!path || !*path) {
    nbds_error("win32file: the option 'file' (the path to export) is "
               "required");
    return -1;
  }
  struct w32_file *f = calloc(1, sizeof *f);
  wchar_t *wpath = utf8_to_wide(path);
  if (!f || !wpath) {
    if (f)
      nbds_error("win32file: '%s' is not valid UTF-8", path);
    else
      nbds_error("out of memory");
    free(f);
    free(wpath);
    return -1;
  }
  f->h = INVALID_HANDLE_VALUE;
  f->fua_flush = f->fail_packets = w32_is_wine();
  if (parse_bool(kv, nkv, "readonly", &f->readonly) == -1 ||
      parse_bool(kv, nkv, "direct", &f->direct) == -1 ||
      parse_aio(kv, nkv, f) == -1 ||
      open_file(path, wpath, f) == -1)
    goto fail;
  DWORD error = f->threads ? 0 : w32_port_start(f);
  if (error) {
    char msg[300];
    nbds_error("win32file: cannot create a completion port: %s",
               w32_strerror(error, msg, sizeof msg));
    goto fail;
  }
  atomic_init(&f->no_zero_data, false);
  atomic_init(&f->no_ranges, false);
  w32_ranges_init(&f->ranges);
  free(wpath);
  l->priv = f;
  return 0;

fail:
  close_handles(f);
  free(wpath);
  free(f);
  return -1;
}

static void
w32_close(struct nbds_layer *l)
{
  struct w32_file *f = l->priv;
  w32_port_stop(f);
  close_handles(f);
  free(f);
}

static uint64_t
w32_size(struct nbds_layer *l)
{
  struct w32_file *f = l->priv;
  return f->size;
}

static void
w32_caps(struct nbds_layer *l, struct nbds_caps *caps)
{
  struct w32_file *f = l->priv;
  caps->can_write = !f->readonly;
  caps->can_flush = true;
  caps->fua = NBDS_FUA_NATIVE;  /* the write-through handle */
  caps->can_trim = true;
  caps->can_zero = true;
  caps->can_fast_zero = true;
  caps->can_extents = true;
  caps->can_cache = true;
  caps->can_multi_conn = true;  /* FlushFileBuffers covers every handle */
  caps->block_min = 1;          /* unaligned requests bounce under direct */
  caps->block_pref = f->align > 4096 ? f->align : 4096;
  caps->block_max = 32 * 1024 * 1024;
}

static void
w32_submit(struct nbds_layer *l, struct nbds_req *req)
{
  struct w32_file *f = l->priv;

  switch (req->op) {
  case NBDS_OP_WRITE:
  case NBDS_OP_TRIM:
  case NBDS_OP_ZERO:
    if (f->readonly) {
      nbds_req_complete(req, EROFS);
      return;
    }
    break;
  case NBDS_OP_CACHE:
    /* Without the system cache there is nothing to warm. */
    if (f->direct) {
      nbds_req_complete(req, 0);
      return;
    }
    break;
  default:
    break;
  }
  if (req->count == 0 && req->op != NBDS_OP_FLUSH) {
    nbds_req_complete(req, 0);
    return;
  }
  /* Past what a file offset can hold: what the system would answer,
   * without asking it. */
  if (req->count > INT64_MAX || req->offset > INT64_MAX - req->count) {
    nbds_req_complete(req, EINVAL);
    return;
  }

  struct w32_io *io = calloc(1, sizeof *io);
  if (!io) {
    nbds_req_complete(req, ENOMEM);
    return;
  }
  io->f = f;
  io->req = req;
  io->reactor = nbds_reactor_self();
  if (f->direct) {
    io->bounced = (req->op == NBDS_OP_READ || req->op == NBDS_OP_WRITE) &&
                  !w32_direct_aligned(f, req);
    if (!w32_ranges_enter(io))
      return;  /* w32_dispatch() runs when the range is free */
  }
  w32_dispatch(io);
}

/* Start a request: now, or when win32-ranges.c says its turn has come. */
void
w32_dispatch(struct w32_io *io)
{
  struct nbds_req *req = io->req;
  if (io->bounced) {
    int err = w32_bounce_init(&io->bounce, io->f, req->op == NBDS_OP_WRITE,
                              req->offset, req->count, req->iov,
                              req->iovcnt);
    if (err) {
      w32_finish(io, err);
      return;
    }
  }
  if (req->op == NBDS_OP_READ || req->op == NBDS_OP_WRITE)
    w32_io_start(io);
  else
    w32_sync_submit(io);
}

/* Let waiting writes go, free the state, then complete: the done
 * callback may submit again at once. */
void
w32_finish(struct w32_io *io, int err)
{
  struct nbds_req *req = io->req;
  w32_ranges_leave(io);
  if (io->bounced)
    w32_bounce_free(&io->bounce);
  free(io);
  nbds_req_complete(req, err);
}

HANDLE
win32file_handle(struct nbds_layer *l, bool fua)
{
  struct w32_file *f = l->priv;
  return fua ? f->h_fua : f->h;
}

const struct nbds_layer_ops nbds_win32file_ops = {
  .name = "win32file",
  .open = w32_open,
  .close = w32_close,
  .size = w32_size,
  .caps = w32_caps,
  .submit = w32_submit,
};
