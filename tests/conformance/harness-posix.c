/* The conformance tests' platform functions on Linux: the "file" layer on
 * reactor 0 (this thread) with the worker pool, scratch files in a fresh
 * directory under /var/tmp (a real file system: holes and O_DIRECT behave
 * as they do for users), and plain POSIX calls to look at the files.
 *
 * CONF_AIO=io_uring|threads in the environment picks the layer's aio mode
 * (io_uring by default), so one binary covers both I/O paths. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nbdstack/layer.h"
#include "reactor.h"
#include "conformance.h"

extern const struct nbds_layer_ops nbds_file_ops;

/* server/layers.c is not linked here: "file" is the only layer. */
const struct nbds_layer_ops *
nbds_layer_type_find(const char *name)
{
  return strcmp(name, "file") == 0 ? &nbds_file_ops : NULL;
}

static struct nbds_reactor *reactor;
static char dir[64];
static char **paths;  /* every scratch path handed out, removed at the end */
static size_t npaths;

static void
die(const char *what)
{
  fprintf(stderr, "conformance: %s: %s\n", what, strerror(errno));
  exit(2);
}

void
conf_platform_init(void)
{
  strcpy(dir, "/var/tmp/nbds-conformance-XXXXXX");
  if (!mkdtemp(dir))
    die("mkdtemp");
  reactor = reactor_create(0, reactor_uring_works());
  if (!reactor) {
    fprintf(stderr, "conformance: cannot create a reactor\n");
    exit(2);
  }
  workers_init(4);
}

void
conf_platform_fini(void)
{
  workers_shutdown();
  reactor_destroy(reactor);
  for (size_t i = 0; i < npaths; i++) {
    unlink(paths[i]);
    free(paths[i]);
  }
  free(paths);
  rmdir(dir);
}

const char *
conf_scratch_path(const char *name)
{
  char *p;
  if (asprintf(&p, "%s/%s", dir, name) == -1)
    die("asprintf");
  char **v = realloc(paths, (npaths + 1) * sizeof *v);
  if (!v)
    die("realloc");
  paths = v;
  paths[npaths++] = p;
  unlink(p);  /* fresh, even when a name is asked for twice */
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
  all[n++] = (struct nbds_kv) { "aio", aio && *aio ? aio : "io_uring" };
  for (size_t i = 0; i < nkv; i++)
    all[n++] = kv[i];
  return nbds_layer_open("file", NULL, all, n);
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
  struct ev_loop *loop = nbds_reactor_loop(reactor);

  for (size_t i = 0; i < n; i++) {
    reqs[i]->done = on_done;
    reqs[i]->opaque = &p;
    nbds_layer_submit(l, reqs[i]);
  }
  ev_ref(loop);  /* let the loop sleep until a completion wakes it */
  while (p.left > 0)
    ev_run(loop, EVRUN_ONCE);
  ev_unref(loop);
  return p.err;
}

int
conf_run(struct nbds_layer *l, struct nbds_req *req)
{
  return conf_run_many(l, &req, 1);
}

bool
conf_file_write(const char *path, uint64_t offset, const void *buf,
                size_t len)
{
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd == -1)
    return false;
  bool ok = pwrite(fd, buf, len, offset) == (ssize_t) len &&
            fsync(fd) == 0;  /* allocated on disk, not delayed */
  close(fd);
  return ok;
}

bool
conf_file_read(const char *path, uint64_t offset, void *buf, size_t len)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return false;
  bool ok = pread(fd, buf, len, offset) == (ssize_t) len;
  close(fd);
  return ok;
}

bool
conf_file_truncate(const char *path, uint64_t size)
{
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd == -1)
    return false;
  bool ok = ftruncate(fd, size) == 0;
  close(fd);
  return ok;
}

uint64_t
conf_file_size(const char *path)
{
  struct stat st;
  return stat(path, &st) == 0 ? (uint64_t) st.st_size : 0;
}

uint64_t
conf_file_allocated(const char *path)
{
  struct stat st;
  return stat(path, &st) == 0 ? (uint64_t) st.st_blocks * 512 : 0;
}

void
conf_file_remove(const char *path)
{
  unlink(path);
}

/* What the file system tells statx, as the layer's probe asks it first;
 * 512, the smallest sector, when it does not say. */
uint32_t
conf_direct_alignment(const char *path)
{
  struct statx stx;
  if (statx(AT_FDCWD, path, 0, STATX_DIOALIGN, &stx) == 0 &&
      (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align)
    return stx.stx_dio_offset_align;
  return 512;
}
