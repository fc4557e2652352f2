/* Requests to an nbdkit plugin: every callback runs on the worker pool
 * (a plugin blocks as it likes) and the request completes back on the
 * reactor that submitted it.  Unless the plugin's thread model is
 * PARALLEL, one call at a time reaches the plugin. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "reactor.h"

/* The most one callback is asked for at once. */
#define CHUNK (1u << 30)
#define ZERO_CHUNK (1u << 20)

struct ph_io {
  struct nbds_work work;
  struct ph_plugin *h;
  struct nbds_req *req;
  int err;
};

/* Map a callback's result: 0, or the positive errno of its failure. */
#define CALL(h, expr)                                                   \
  __extension__ ({                                                      \
    ph_error_reset();                                                   \
    errno = 0;                                                          \
    int r_ = (expr);                                                    \
    r_ == -1 ? ph_error_get((h), errno) : 0;                            \
  })

static int
call_pread(struct ph_plugin *h, void *buf, uint32_t n, uint64_t off)
{
  if (h->api_version == 1)
    return CALL(h, h->p._pread_v1(h->handle, buf, n, off));
  return CALL(h, h->p.pread(h->handle, buf, n, off, 0));
}

static int
call_pwrite(struct ph_plugin *h, const void *buf, uint32_t n, uint64_t off,
            uint32_t fl)
{
  if (h->api_version == 1)
    return CALL(h, h->p._pwrite_v1(h->handle, buf, n, off));
  return CALL(h, h->p.pwrite(h->handle, buf, n, off, fl));
}

static int
call_flush(struct ph_plugin *h)
{
  if (h->api_version == 1)
    return h->p._flush_v1 ? CALL(h, h->p._flush_v1(h->handle)) : EINVAL;
  return h->p.flush ? CALL(h, h->p.flush(h->handle, 0)) : EINVAL;
}

/* Each segment of the request's iovecs, in chunks a callback takes. */
static int
do_rw(struct ph_plugin *h, struct nbds_req *req, uint32_t fl)
{
  uint64_t off = req->offset;
  for (int i = 0; i < req->iovcnt; i++) {
    char *p = req->iov[i].iov_base;
    size_t len = req->iov[i].iov_len;
    while (len > 0) {
      uint32_t n = len < CHUNK ? len : CHUNK;
      int err = req->op == NBDS_OP_READ ? call_pread(h, p, n, off)
                                        : call_pwrite(h, p, n, off, fl);
      if (err)
        return err;
      p += n;
      off += n;
      len -= n;
    }
  }
  return 0;
}

/* Zeroes by .pwrite, as nbdkit does without .zero. */
static int
write_zeroes(struct ph_plugin *h, uint64_t off, uint64_t count, uint32_t fl)
{
  size_t bufsz = count < ZERO_CHUNK ? count : ZERO_CHUNK;
  void *zeroes = calloc(1, bufsz);
  if (!zeroes)
    return ENOMEM;
  int err = 0;
  while (count > 0 && !err) {
    uint32_t n = count < bufsz ? count : bufsz;
    err = call_pwrite(h, zeroes, n, off, fl);
    off += n;
    count -= n;
  }
  free(zeroes);
  return err;
}

static int
do_zero(struct ph_plugin *h, struct nbds_req *req, uint32_t fl)
{
  bool fast = req->flags & NBDS_F_FAST_ZERO;
  if (!(req->flags & NBDS_F_NO_HOLE))
    fl |= NBDKIT_FLAG_MAY_TRIM;
  if (fast)
    fl |= NBDKIT_FLAG_FAST_ZERO;
  if (h->zero_native && !(fast && h->api_version == 1)) {
    uint64_t off = req->offset, count = req->count;
    int err = 0;
    while (count > 0 && !err) {
      uint32_t n = count < CHUNK ? count : CHUNK;
      if (h->api_version == 1)
        err = CALL(h, h->p._zero_v1(h->handle, n, off,
                                    !!(fl & NBDKIT_FLAG_MAY_TRIM)));
      else
        err = CALL(h, h->p.zero(h->handle, n, off, fl));
      if (!err) {
        off += n;
        count -= n;
      }
    }
    if (!err || (err != ENOTSUP && err != EOPNOTSUPP) || fast)
      return err;
    /* What is left falls back to writing zeroes. */
    return write_zeroes(h, off, count, fl & NBDKIT_FLAG_FUA);
  }
  if (fast)
    return ENOTSUP;  /* writing zeroes is not faster than a write */
  return write_zeroes(h, req->offset, req->count, fl & NBDKIT_FLAG_FUA);
}

static int
do_trim(struct ph_plugin *h, struct nbds_req *req, uint32_t fl)
{
  uint64_t off = req->offset, count = req->count;
  int err = 0;
  while (count > 0 && !err) {
    uint32_t n = count < CHUNK ? count : CHUNK;
    err = h->api_version == 1 ? CALL(h, h->p._trim_v1(h->handle, n, off))
                              : CALL(h, h->p.trim(h->handle, n, off, fl));
    off += n;
    count -= n;
  }
  return err;
}

static int
do_extents(struct ph_plugin *h, struct nbds_req *req)
{
  if (!h->plugin_extents) {
    nbds_extents_add(req->extents, req->count, 0);
    return 0;
  }
  uint32_t n = req->count < UINT32_MAX ? req->count : CHUNK;
  struct nbdkit_extents ex = {
    .start = req->offset, .end = req->offset + n, .out = req->extents,
  };
  uint32_t fl = req->flags & NBDS_F_REQ_ONE ? NBDKIT_FLAG_REQ_ONE : 0;
  int err = CALL(h, h->p.extents(h->handle, n, req->offset, fl, &ex));
  if (!err && req->extents->covered == 0) {
    nbdkit_error("extents: the plugin returned no extent at %llu",
                 (unsigned long long) req->offset);
    err = EIO;
  }
  return err;
}

static int
do_cache(struct ph_plugin *h, struct nbds_req *req)
{
  uint64_t off = req->offset, count = req->count;
  if (h->cache == NBDKIT_CACHE_NATIVE) {
    int err = 0;
    while (h->p.cache && count > 0 && !err) {
      uint32_t n = count < CHUNK ? count : CHUNK;
      err = CALL(h, h->p.cache(h->handle, n, off, 0));
      off += n;
      count -= n;
    }
    return err;
  }
  if (h->cache != NBDKIT_CACHE_EMULATE)
    return EINVAL;
  /* Read and forget. */
  size_t bufsz = count < ZERO_CHUNK ? count : ZERO_CHUNK;
  void *buf = malloc(bufsz);
  if (!buf)
    return ENOMEM;
  int err = 0;
  while (count > 0 && !err) {
    uint32_t n = count < bufsz ? count : bufsz;
    err = call_pread(h, buf, n, off);
    off += n;
    count -= n;
  }
  free(buf);
  return err;
}

static int
run(struct ph_plugin *h, struct nbds_req *req)
{
  /* FUA: the plugin's own, or a flush after the operation. */
  bool fua = req->flags & NBDS_F_FUA;
  uint32_t fl = fua && h->fua == NBDKIT_FUA_NATIVE ? NBDKIT_FLAG_FUA : 0;
  bool flush_after = fua && h->fua != NBDKIT_FUA_NATIVE;
  int err;
  switch (req->op) {
  case NBDS_OP_READ:
    return do_rw(h, req, 0);
  case NBDS_OP_WRITE:
    err = do_rw(h, req, fl);
    break;
  case NBDS_OP_FLUSH:
    return call_flush(h);
  case NBDS_OP_TRIM:
    err = do_trim(h, req, fl);
    break;
  case NBDS_OP_ZERO:
    err = do_zero(h, req, fl);
    break;
  case NBDS_OP_BLOCK_STATUS:
    return do_extents(h, req);
  case NBDS_OP_CACHE:
    return do_cache(h, req);
  default:
    return EINVAL;
  }
  if (!err && flush_after)
    err = call_flush(h);
  return err;
}

static void
work_fn(struct nbds_work *w)
{
  struct ph_io *io = (struct ph_io *) w;
  struct ph_plugin *h = io->h;
  bool serial = h->thread_model != NBDKIT_THREAD_MODEL_PARALLEL;
  if (serial)
    pthread_mutex_lock(&h->lock);
  io->err = run(h, io->req);
  if (serial)
    pthread_mutex_unlock(&h->lock);
}

static void
work_done(struct nbds_work *w)
{
  struct ph_io *io = (struct ph_io *) w;
  struct nbds_req *req = io->req;
  int err = io->err;
  free(io);
  nbds_req_complete(req, err);
}

/* What nbdkit's core checks before a plugin sees a request. */
static int
check(struct ph_plugin *h, struct nbds_req *req)
{
  bool writes = req->op == NBDS_OP_WRITE || req->op == NBDS_OP_TRIM ||
                req->op == NBDS_OP_ZERO;
  if (writes && !h->caps.can_write)
    return EROFS;
  if (req->op == NBDS_OP_FLUSH)
    return 0;
  if (req->op == NBDS_OP_TRIM && !h->caps.can_trim)
    return EINVAL;
  if (req->op == NBDS_OP_CACHE && !h->caps.can_cache)
    return EINVAL;
  if (req->offset > h->size || req->count > h->size - req->offset)
    return writes ? ENOSPC : EINVAL;
  return 0;
}

void
ph_submit(struct ph_plugin *h, struct nbds_req *req)
{
  int err = check(h, req);
  if (err || (req->count == 0 && req->op != NBDS_OP_FLUSH)) {
    if (!err && req->op == NBDS_OP_BLOCK_STATUS)
      err = EINVAL;
    nbds_req_complete(req, err);
    return;
  }
  struct ph_io *io = calloc(1, sizeof *io);
  if (!io) {
    nbds_req_complete(req, ENOMEM);
    return;
  }
  io->h = h;
  io->req = req;
  io->work.fn = work_fn;
  io->work.done = work_done;
  nbds_work_submit(&io->work);
}
