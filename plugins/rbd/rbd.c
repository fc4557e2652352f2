/* The rbd protocol layer: an export of a Ceph RBD image.
 *
 *   image=rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=USER][:KEY=VALUE...]
 *                      the image, in QEMU's spelling (name.c; required)
 *   readonly=on|off    open the image read-only (a snapshot always is)
 *   cache=on|off       librbd's client cache, rbd_cache (default on; the
 *                      command line turns it off for cache=none and
 *                      directsync, as QEMU does)
 *   timeout=SECONDS    bound every wait for the cluster (default 60;
 *                      0: Ceph's defaults, which wait forever)
 *
 * open() connects and opens the image (blocking, before serving).  One
 * image handle serves every connection and reactor: an image's exclusive
 * lock would bounce between several handles, and one handle makes a flush
 * cover every connection's writes (CAN_MULTI_CONN).
 *
 * Requests go to librbd's asynchronous calls from the reactor that
 * received them.  librbd signals each completion on an eventfd
 * (rbd_set_image_notification); the reactor that opened the layer
 * watches it, collects completions with rbd_poll_io_events, and completes
 * each request on the reactor that submitted it.  No thread ever waits
 * for a request.  FUA is emulated above (write, then rbd_aio_flush).
 *
 * A write past the end grows the image first (rbd_resize, on the worker
 * pool), as QEMU's rbd driver does: the server never sends one, but a
 * qcow2 layer above appends clusters as it would to a file. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "rbd.h"

#define DEFAULT_TIMEOUT 60
#define MAX_PAYLOAD (32u * 1024 * 1024)
#define POLL_BATCH 32

static const char *const known_keys[] = {
  "image", "readonly", "cache", "timeout", NULL,
};

/* One request in librbd. */
struct rbd_io {
  struct rbd_disk *d;
  struct nbds_req *req;
  struct nbds_reactor *origin;
  int err;                  /* positive errno, once complete */
};

static int
parse_on_off(const char *key, const char *v, bool dflt, bool *out)
{
  if (!v)
    *out = dflt;
  else if (strcmp(v, "on") == 0)
    *out = true;
  else if (strcmp(v, "off") == 0)
    *out = false;
  else {
    nbds_error("rbd: %s must be on or off, not '%s'", key, v);
    return -1;
  }
  return 0;
}

static int
parse_options(struct rbd_disk *d, const struct nbds_kv *kv, size_t nkv)
{
  bool ro;
  if (parse_on_off("readonly", nbds_kv_get(kv, nkv, "readonly"), false,
                   &ro) == -1 ||
      parse_on_off("cache", nbds_kv_get(kv, nkv, "cache"), true,
                   &d->client_cache) == -1)
    return -1;
  d->readonly = ro;
  const char *t = nbds_kv_get(kv, nkv, "timeout");
  d->timeout = DEFAULT_TIMEOUT;
  if (t) {
    char *end;
    unsigned long v = strtoul(t, &end, 10);
    if (!*t || *end || *t == '-' || v > 86400) {
      nbds_error("rbd: timeout must be a number of seconds (0 to 86400), "
                 "not '%s'", t);
      return -1;
    }
    d->timeout = v;
    d->timeout_explicit = true;
  }
  return 0;
}

/* ---- completions ------------------------------------------------------- */

static void
io_finish(void *arg)
{
  struct rbd_io *io = arg;
  struct nbds_req *req = io->req;
  int err = io->err;
  free(io);
  nbds_req_complete(req, err);
}

static const char *
op_name(enum nbds_op op)
{
  switch (op) {
  case NBDS_OP_READ: return "read";
  case NBDS_OP_WRITE: return "write";
  case NBDS_OP_FLUSH: return "flush";
  case NBDS_OP_TRIM: return "discard";
  case NBDS_OP_ZERO: return "write zeroes";
  default: return "request";
  }
}

static void
io_complete(struct rbd_io *io, ssize_t r)
{
  struct nbds_req *req = io->req;
  if (r < 0)
    io->err = rbd_error(io->d, op_name(req->op), req, (int) -r);
  else if (req->op == NBDS_OP_READ && (uint64_t) r < req->count) {
    /* librbd reads short only past the end: zeroes, as QEMU pads. */
    uint64_t skip = r;
    for (int i = 0; i < req->iovcnt; i++) {
      struct iovec *v = &req->iov[i];
      if (skip >= v->iov_len) {
        skip -= v->iov_len;
        continue;
      }
      memset((char *) v->iov_base + skip, 0, v->iov_len - skip);
      skip = 0;
    }
  }
  if (io->origin == nbds_reactor_self())
    io_finish(io);
  else
    nbds_reactor_post(io->origin, io_finish, io);
}

/* The home reactor: librbd has completions for us. */
static void
events_cb(struct ev_loop *loop, ev_io *w, int revents)
{
  (void) loop;
  (void) revents;
  struct rbd_disk *d = w->data;
  uint64_t count;
  /* Read first: a completion queued after the poll below signals again. */
  if (read(d->efd, &count, sizeof count) < 0 && errno != EAGAIN)
    nbds_log_error("rbd: %s: reading the completion eventfd: %s", d->label,
                   strerror(errno));
  rbd_completion_t comps[POLL_BATCH];
  int n;
  do {
    n = rbd_poll_io_events(d->image, comps, POLL_BATCH);
    for (int i = 0; i < n; i++) {
      struct rbd_io *io = rbd_aio_get_arg(comps[i]);
      ssize_t r = rbd_aio_get_return_value(comps[i]);
      rbd_aio_release(comps[i]);
      io_complete(io, r);
    }
  } while (n == POLL_BATCH);
}

/* ---- requests ---------------------------------------------------------- */

/* Start req in librbd; returns a negative errno if librbd refused it. */
static int
start(struct rbd_disk *d, struct nbds_req *req, rbd_completion_t c)
{
  switch (req->op) {
  case NBDS_OP_READ:
    return rbd_aio_readv(d->image, req->iov, req->iovcnt, req->offset, c);
  case NBDS_OP_WRITE:
    return rbd_aio_writev(d->image, req->iov, req->iovcnt, req->offset, c);
  case NBDS_OP_FLUSH:
    return rbd_aio_flush(d->image, c);
  case NBDS_OP_TRIM:
    return rbd_aio_discard(d->image, req->offset, req->count, c);
  case NBDS_OP_ZERO: {
    /* Keep the zeroes allocated when asked to (QEMU: without MAY_UNMAP);
     * that writes them, so it is not a fast zero. */
    int zflags = 0;
    if (req->flags & NBDS_F_NO_HOLE) {
      if (req->flags & NBDS_F_FAST_ZERO)
        return -ENOTSUP;
      zflags = RBD_WRITE_ZEROES_FLAG_THICK_PROVISION;
    }
    return rbd_aio_write_zeroes(d->image, req->offset, req->count, c,
                                zflags, 0);
  }
  default:
    return -EINVAL;
  }
}

static void
submit_io(struct rbd_disk *d, struct nbds_req *req)
{
  struct rbd_io *io = malloc(sizeof *io);
  rbd_completion_t c;
  if (!io || rbd_aio_create_completion(io, NULL, &c) < 0) {
    free(io);
    nbds_req_complete(req, ENOMEM);
    return;
  }
  *io = (struct rbd_io) {
    .d = d, .req = req, .origin = nbds_reactor_self(),
  };
  int r = start(d, req, c);
  if (r < 0) {
    rbd_aio_release(c);
    free(io);
    nbds_req_complete(req, r == -ENOTSUP ? ENOTSUP
                           : rbd_error(d, op_name(req->op), req, -r));
  }
}

/* ---- growing ----------------------------------------------------------- */

struct grow_job {
  struct nbds_work work;    /* first: the job is its work item */
  struct rbd_disk *d;
  struct nbds_req *req;
  int err;
};

/* On a worker: rbd_resize blocks. */
static void
grow_run(struct nbds_work *w)
{
  struct grow_job *j = (struct grow_job *) w;
  struct rbd_disk *d = j->d;
  uint64_t end = j->req->offset + j->req->count;
  pthread_mutex_lock(&d->grow_lock);
  if (end > d->size) {
    int r = rbd_resize(d->image, end);
    if (r < 0)
      j->err = -r;
    else
      d->size = end;
  }
  pthread_mutex_unlock(&d->grow_lock);
}

static void
grow_done(struct nbds_work *w)
{
  struct grow_job *j = (struct grow_job *) w;
  struct rbd_disk *d = j->d;
  struct nbds_req *req = j->req;
  int err = j->err;
  free(j);
  if (err)
    nbds_req_complete(req, rbd_error(d, "growing the image for a write",
                                     req, err));
  else
    submit_io(d, req);
}

static void
grow_then_submit(struct rbd_disk *d, struct nbds_req *req)
{
  struct grow_job *j = calloc(1, sizeof *j);
  if (!j) {
    nbds_req_complete(req, ENOMEM);
    return;
  }
  j->work.fn = grow_run;
  j->work.done = grow_done;
  j->d = d;
  j->req = req;
  nbds_work_submit(&j->work);
}

static void
rbd_layer_submit(struct nbds_layer *l, struct nbds_req *req)
{
  struct rbd_disk *d = l->priv;
  switch (req->op) {
  case NBDS_OP_WRITE:
  case NBDS_OP_TRIM:
  case NBDS_OP_ZERO:
    if (d->readonly) {
      nbds_req_complete(req, EROFS);
      return;
    }
    break;
  case NBDS_OP_BLOCK_STATUS:
    rbd_block_status(d, req);
    return;
  case NBDS_OP_CACHE:
    nbds_req_complete(req, ENOTSUP);  /* not advertised */
    return;
  default:
    break;
  }
  if (req->count == 0 && req->op != NBDS_OP_FLUSH) {
    nbds_req_complete(req, 0);
    return;
  }
  if ((req->op == NBDS_OP_WRITE || req->op == NBDS_OP_ZERO) &&
      req->offset + req->count > d->size)
    grow_then_submit(d, req);
  else
    submit_io(d, req);
}

/* ---- open and close ---------------------------------------------------- */

static void
disk_free(struct rbd_disk *d)
{
  if (d->efd >= 0)
    close(d->efd);
  pthread_mutex_destroy(&d->log_lock);
  pthread_mutex_destroy(&d->grow_lock);
  free(d->label);
  free(d);
}

/* POOL/[NAMESPACE/]IMAGE[@SNAP] */
static char *
make_label(const struct rbd_name *n)
{
  size_t len = strlen(n->pool) + strlen(n->nspace) + strlen(n->image) +
               (n->snap ? strlen(n->snap) : 0) + 4;
  char *s = malloc(len);
  if (s)
    snprintf(s, len, "%s/%s%s%s%s%s", n->pool, n->nspace,
             *n->nspace ? "/" : "", n->image, n->snap ? "@" : "",
             n->snap ? n->snap : "");
  return s;
}

static int
rbd_layer_open(struct nbds_layer *l, const struct nbds_kv *kv, size_t nkv)
{
  if (nbds_kv_check("rbd", kv, nkv, known_keys) == -1)
    return -1;
  const char *image = nbds_kv_get(kv, nkv, "image");
  if (!image || !*image) {
    nbds_error("rbd: the option 'image' (rbd:POOL/IMAGE...) is required");
    return -1;
  }
  struct nbds_reactor *self = nbds_reactor_self();
  if (!self) {
    nbds_error("rbd: the layer must be opened on a reactor");
    return -1;
  }
  struct rbd_disk *d = calloc(1, sizeof *d);
  if (!d) {
    nbds_error("out of memory");
    return -1;
  }
  d->efd = -1;
  pthread_mutex_init(&d->log_lock, NULL);
  pthread_mutex_init(&d->grow_lock, NULL);
  d->home = self;
  d->home_loop = nbds_reactor_loop(self);

  struct rbd_name n;
  if (parse_options(d, kv, nkv) == -1 || rbd_name_parse(image, &n) == -1) {
    disk_free(d);
    return -1;
  }
  d->readonly = d->readonly || n.snap;
  d->label = make_label(&n);
  int r = d->label ? rbd_disk_connect(d, &n) : -1;
  if (!d->label)
    nbds_error("out of memory");
  rbd_name_free(&n);
  if (r == -1) {
    disk_free(d);
    return -1;
  }

  d->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (d->efd == -1 ||
      (r = rbd_set_image_notification(d->image, d->efd,
                                      EVENT_TYPE_EVENTFD)) < 0) {
    nbds_error("rbd: %s: cannot set up completion notification: %s",
               d->label, strerror(d->efd == -1 ? errno : -r));
    rbd_disk_disconnect(d);
    disk_free(d);
    return -1;
  }
  ev_io_init(&d->watcher, events_cb, d->efd, EV_READ);
  d->watcher.data = d;
  ev_io_start(d->home_loop, &d->watcher);

  nbds_log_debug("rbd: %s: %llu bytes, %llu-byte objects, client cache %s%s",
                 d->label, (unsigned long long) d->size,
                 (unsigned long long) d->object_size,
                 d->client_cache ? "on" : "off",
                 d->readonly ? ", read-only" : "");
  l->priv = d;
  return 0;
}

static void
rbd_layer_close(struct nbds_layer *l)
{
  struct rbd_disk *d = l->priv;
  ev_io_stop(d->home_loop, &d->watcher);
  rbd_disk_disconnect(d);
  disk_free(d);
}

static uint64_t
rbd_layer_size(struct nbds_layer *l)
{
  struct rbd_disk *d = l->priv;
  return d->size;
}

static void
rbd_layer_caps(struct nbds_layer *l, struct nbds_caps *caps)
{
  struct rbd_disk *d = l->priv;
  *caps = (struct nbds_caps) {
    .can_write = !d->readonly,
    .can_flush = true,
    .fua = NBDS_FUA_NONE,     /* the cachepolicy layer emulates it */
    .can_trim = true,
    .can_zero = true,
    .can_fast_zero = true,    /* unless NO_HOLE: see start() */
    .can_extents = true,
    .can_cache = false,
    .can_multi_conn = true,   /* one image handle for every connection */
    .block_min = 1,
    .block_pref = 4096,
    .block_max = MAX_PAYLOAD,
  };
}

const struct nbds_layer_ops nbds_rbd_ops = {
  .name = "rbd",
  .open = rbd_layer_open,
  .close = rbd_layer_close,
  .size = rbd_layer_size,
  .caps = rbd_layer_caps,
  .submit = rbd_layer_submit,
};
