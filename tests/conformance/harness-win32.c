/* The conformance tests' platform functions on Windows: the "win32file"
 * layer, a minimal reactor on the calling thread, the system thread pool
 * as the worker pool, scratch files in a fresh directory under the temp
 * directory, and plain Win32 calls to look at the files.
 *
 * CONF_AIO=overlapped|threads in the environment picks the layer's aio
 * mode (its own default when unset), so one binary covers both paths.
 *
 * The reactor is what include/nbdstack/reactor.h asks of one and no more:
 * nbds_reactor_post() queues a call under a lock and sets an event;
 * conf_run_many() runs queued calls and waits on the event until its
 * requests have completed.  Any thread may post, as the layer's completion
 * port thread and the workers do. */
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#include <winioctl.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdstack/layer.h"
#include "nbdstack/reactor.h"
#include "conformance.h"

/* Longer than any test request takes, even under Wine on a slow CI
 * machine: a request that never completes fails instead of hanging. */
#define STALL_MS 60000

struct post {
  void (*fn)(void *);
  void *arg;
  struct post *next;
};

struct nbds_reactor {
  CRITICAL_SECTION lock;
  HANDLE wake;                 /* auto-reset: set by every post */
  struct post *posts, **posts_tail;
};

static struct nbds_reactor reactor;
static __thread struct nbds_reactor *self;

static char dir[MAX_PATH];
static char **paths;  /* every scratch path handed out, removed at the end */
static size_t npaths;

static void
die(const char *what)
{
  fprintf(stderr, "conformance: %s: Windows error %lu\n", what,
          (unsigned long) GetLastError());
  exit(2);
}

struct nbds_reactor *
nbds_reactor_self(void)
{
  return self;
}

void
nbds_reactor_post(struct nbds_reactor *r, void (*fn)(void *), void *arg)
{
  struct post *p = malloc(sizeof *p);
  if (!p)
    abort();
  p->fn = fn;
  p->arg = arg;
  p->next = NULL;
  EnterCriticalSection(&r->lock);
  *r->posts_tail = p;
  r->posts_tail = &p->next;
  LeaveCriticalSection(&r->lock);
  SetEvent(r->wake);
}

/* Run what has been posted; false when there was nothing. */
static bool
run_posts(struct nbds_reactor *r)
{
  EnterCriticalSection(&r->lock);
  struct post *p = r->posts;
  r->posts = NULL;
  r->posts_tail = &r->posts;
  LeaveCriticalSection(&r->lock);
  if (!p)
    return false;
  while (p) {
    struct post *next = p->next;
    p->fn(p->arg);
    free(p);
    p = next;
  }
  return true;
}

static void
work_done(void *arg)
{
  struct nbds_work *w = arg;
  w->done(w);
}

static void CALLBACK
work_run(PTP_CALLBACK_INSTANCE instance, void *arg)
{
  (void) instance;
  struct nbds_work *w = arg;
  w->fn(w);
  nbds_reactor_post(w->reactor, work_done, w);
}

void
nbds_work_submit(struct nbds_work *w)
{
  w->reactor = self;
  w->next = NULL;
  if (!TrySubmitThreadpoolCallback(work_run, w, NULL))
    die("TrySubmitThreadpoolCallback");
}

static wchar_t *
wide(const char *s)
{
  int n = MultiByteToWideChar(CP_UTF8, 0, s, -1, NULL, 0);
  wchar_t *w = n > 0 ? malloc(n * sizeof *w) : NULL;
  if (!w || MultiByteToWideChar(CP_UTF8, 0, s, -1, w, n) != n)
    die("MultiByteToWideChar");
  return w;
}

void
conf_platform_init(void)
{
  InitializeCriticalSection(&reactor.lock);
  reactor.wake = CreateEventW(NULL, FALSE, FALSE, NULL);
  if (!reactor.wake)
    die("CreateEvent");
  reactor.posts = NULL;
  reactor.posts_tail = &reactor.posts;
  self = &reactor;

  char tmp[MAX_PATH];
  DWORD n = GetTempPathA(sizeof tmp, tmp);
  if (n == 0 || n > sizeof tmp - 40)
    die("GetTempPath");
  snprintf(dir, sizeof dir, "%snbds-conformance-%lu-%lu", tmp,
           (unsigned long) GetCurrentProcessId(),
           (unsigned long) GetTickCount());
  if (!CreateDirectoryA(dir, NULL))
    die("CreateDirectory");
}

void
conf_platform_fini(void)
{
  run_posts(&reactor);
  for (size_t i = 0; i < npaths; i++) {
    conf_file_remove(paths[i]);
    free(paths[i]);
  }
  free(paths);
  RemoveDirectoryA(dir);
  CloseHandle(reactor.wake);
  DeleteCriticalSection(&reactor.lock);
  self = NULL;
}

const char *
conf_scratch_path(const char *name)
{
  size_t len = strlen(dir) + strlen(name) + 2;
  char *p = malloc(len);
  char **v = realloc(paths, (npaths + 1) * sizeof *v);
  if (!p || !v)
    die("malloc");
  snprintf(p, len, "%s\\%s", dir, name);
  paths = v;
  paths[npaths++] = p;
  conf_file_remove(p);  /* fresh, even when a name is asked for twice */
  return p;
}

struct nbds_layer *
conf_open(const char *path, const struct nbds_kv *kv, size_t nkv)
{
  const char *aio = getenv("CONF_AIO");
  struct nbds_kv all[16];
  size_t n = 0;
  if (nkv + 2 > sizeof all / sizeof all[0]) {
    nbds_error("conf_open: too many keys");
    return NULL;
  }
  all[n++] = (struct nbds_kv) { "file", path };
  if (aio && *aio)
    all[n++] = (struct nbds_kv) { "aio", aio };
  for (size_t i = 0; i < nkv; i++)
    all[n++] = kv[i];
  return nbds_layer_open("win32file", NULL, all, n);
}

/* Completions are counted down; the first error is kept. */
struct pending {
  size_t left;
  int err;
};

static void
on_done(struct nbds_req *req, int err)
{
  struct pending *p = req->opaque;
  p->left--;
  if (err && !p->err)
    p->err = err;
}

int
conf_run_many(struct nbds_layer *l, struct nbds_req **reqs, size_t n)
{
  struct pending p = { n, 0 };
  for (size_t i = 0; i < n; i++) {
    reqs[i]->done = on_done;
    reqs[i]->opaque = &p;
    nbds_layer_submit(l, reqs[i]);
  }
  /* The event is auto-reset and set after every post is queued, so a post
   * that lands after run_posts() looked still ends the wait. */
  while (p.left > 0) {
    if (run_posts(&reactor))
      continue;
    if (WaitForSingleObject(reactor.wake, STALL_MS) == WAIT_TIMEOUT) {
      fprintf(stderr, "conformance: %u requests still in flight after "
              "%d s\n", (unsigned) p.left, STALL_MS / 1000);
      exit(2);  /* their buffers are on the stack of our caller */
    }
  }
  return p.err;
}

int
conf_run(struct nbds_layer *l, struct nbds_req *req)
{
  return conf_run_many(l, &req, 1);
}

static HANDLE
open_plain(const char *path, DWORD access, DWORD disposition)
{
  wchar_t *w = wide(path);
  HANDLE h = CreateFileW(w, access,
                         FILE_SHARE_READ | FILE_SHARE_WRITE |
                         FILE_SHARE_DELETE,
                         NULL, disposition, FILE_ATTRIBUTE_NORMAL, NULL);
  free(w);
  return h;
}

static bool
seek(HANDLE h, uint64_t offset)
{
  LARGE_INTEGER li;
  li.QuadPart = offset;
  return SetFilePointerEx(h, li, NULL, FILE_BEGIN);
}

bool
conf_file_write(const char *path, uint64_t offset, const void *buf,
                size_t len)
{
  HANDLE h = open_plain(path, GENERIC_WRITE, OPEN_ALWAYS);
  if (h == INVALID_HANDLE_VALUE)
    return false;
  DWORD n = 0;
  bool ok = seek(h, offset) && WriteFile(h, buf, len, &n, NULL) &&
            n == len && FlushFileBuffers(h);
  CloseHandle(h);
  return ok;
}

bool
conf_file_read(const char *path, uint64_t offset, void *buf, size_t len)
{
  HANDLE h = open_plain(path, GENERIC_READ, OPEN_EXISTING);
  if (h == INVALID_HANDLE_VALUE)
    return false;
  DWORD n = 0;
  bool ok = seek(h, offset) && ReadFile(h, buf, len, &n, NULL) && n == len;
  CloseHandle(h);
  return ok;
}

bool
conf_file_truncate(const char *path, uint64_t size)
{
  HANDLE h = open_plain(path, GENERIC_WRITE, OPEN_ALWAYS);
  if (h == INVALID_HANDLE_VALUE)
    return false;
  FILE_END_OF_FILE_INFO eof;
  eof.EndOfFile.QuadPart = size;
  bool ok = SetFileInformationByHandle(h, FileEndOfFileInfo, &eof,
                                       sizeof eof);
  CloseHandle(h);
  return ok;
}

uint64_t
conf_file_size(const char *path)
{
  HANDLE h = open_plain(path, 0, OPEN_EXISTING);
  if (h == INVALID_HANDLE_VALUE)
    return 0;
  LARGE_INTEGER size;
  bool ok = GetFileSizeEx(h, &size);
  CloseHandle(h);
  return ok ? (uint64_t) size.QuadPart : 0;
}

/* The sum of FSCTL_QUERY_ALLOCATED_RANGES: what Windows says is allocated,
 * the same view the layer's BLOCK_STATUS has.  Where the FSCTL is missing
 * (Wine 8) Windows shows no holes at all, so the whole file counts as
 * allocated, as on a file system without sparse files. */
uint64_t
conf_file_allocated(const char *path)
{
  HANDLE h = open_plain(path, GENERIC_READ, OPEN_EXISTING);
  if (h == INVALID_HANDLE_VALUE)
    return 0;
  LARGE_INTEGER size;
  uint64_t total = 0, pos = 0;
  if (!GetFileSizeEx(h, &size)) {
    CloseHandle(h);
    return 0;
  }
  while (pos < (uint64_t) size.QuadPart) {
    FILE_ALLOCATED_RANGE_BUFFER in, out[64];
    in.FileOffset.QuadPart = pos;
    in.Length.QuadPart = size.QuadPart - pos;
    DWORD n = 0;
    BOOL ok = DeviceIoControl(h, FSCTL_QUERY_ALLOCATED_RANGES, &in,
                              sizeof in, out, sizeof out, &n, NULL);
    DWORD error = ok ? ERROR_SUCCESS : GetLastError();
    if (error && error != ERROR_MORE_DATA) {
      static bool said;
      if (!said)
        printf("note: FSCTL_QUERY_ALLOCATED_RANGES fails here (Windows "
               "error %lu): no holes can be seen, the whole file counts as "
               "allocated\n", (unsigned long) error);
      said = true;
      total = size.QuadPart;
      break;
    }
    size_t count = n / sizeof out[0];
    for (size_t i = 0; i < count; i++) {
      total += out[i].Length.QuadPart;
      pos = out[i].FileOffset.QuadPart + out[i].Length.QuadPart;
    }
    if (error != ERROR_MORE_DATA || count == 0)
      break;
  }
  CloseHandle(h);
  return total;
}

void
conf_file_remove(const char *path)
{
  wchar_t *w = wide(path);
  DeleteFileW(w);
  free(w);
}

/* The logical sector size, as the layer asks for it: FileStorageInfo,
 * else the volume's bytes per sector. */
uint32_t
conf_direct_alignment(const char *path)
{
  uint32_t align = 0;
  HANDLE h = open_plain(path, 0, OPEN_EXISTING);
  FILE_STORAGE_INFO si;
  if (h != INVALID_HANDLE_VALUE &&
      GetFileInformationByHandleEx(h, FileStorageInfo, &si, sizeof si))
    align = si.LogicalBytesPerSector;
  if (h != INVALID_HANDLE_VALUE)
    CloseHandle(h);

  wchar_t *w = wide(path), root[MAX_PATH];
  DWORD spc, bps, free_clusters, clusters;
  if (!align && GetVolumePathNameW(w, root, MAX_PATH) &&
      GetDiskFreeSpaceW(root, &spc, &bps, &free_clusters, &clusters))
    align = bps;
  free(w);
  return align ? align : 512;
}
