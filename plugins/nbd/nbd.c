/* The nbd protocol layer: an export of an upstream NBD server.
 *
 *   uri=nbd://host:port/export | nbd+unix:///export?socket=PATH | ...
 *       (whatever libnbd's nbd_connect_uri accepts, nbds:// and
 *       nbds+unix:// with tls-certificates=DIR or tls-psk-file=FILE, plus
 *       tls-verify-peer=false; required)
 *   readonly=on|off    do not write even if the upstream allows it
 *   timeout=SECONDS    a command the upstream has not answered after this
 *                      long fails with EIO and the connection is remade
 *                      (default 30; 0: wait forever)
 *
 * open() connects synchronously (start-up may block) to learn the size and
 * what the upstream can do; the layer advertises only that.  Requests run
 * in the reactors' loops through libnbd's asynchronous API (conn.c).  When
 * the upstream has CAN_MULTI_CONN every reactor has its own handle;
 * otherwise one handle, owned by reactor 0, serves every reactor: requests
 * from the others are posted to it and complete back where they came from.
 *
 * READ/WRITE/CACHE larger than the upstream's maximum block size, and
 * vectored READ/WRITE, become several commands; TRIM/ZERO are split at
 * 1 GiB (the NBD length field is 32 bits).  Requests that do not fit the
 * upstream's minimum block size are aligned by align.c. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "nbd.h"

#define MAX_PAYLOAD (32u * 1024 * 1024)
#define MAX_EFFECT (1u << 30)

static const char *const known_keys[] = { "uri", "readonly", "timeout", NULL };

#define DEFAULT_TIMEOUT 30.0

static uint32_t
pow2_or(int64_t v, uint32_t lo, uint32_t hi, uint32_t dflt)
{
  if (v <= 0)
    return dflt;
  uint32_t p = lo;
  while (p < hi && p * 2 <= (uint64_t) v)
    p *= 2;
  return p;
}

/* Learn size and caps from a connected handle. */
static int
probe(struct nbd_upstream *u, struct nbd_handle *h, bool readonly)
{
  int64_t size = nbd_get_size(h);
  if (size < 0) {
    nbds_error("nbd: %s: %s", u->uri, nbd_get_error());
    return -1;
  }
  u->size = size;
  struct nbds_caps *c = &u->caps;
  c->can_write = !readonly && nbd_is_read_only(h) == 0;
  c->can_flush = nbd_can_flush(h) == 1;
  c->fua = nbd_can_fua(h) == 1 ? NBDS_FUA_NATIVE : NBDS_FUA_NONE;
  c->can_trim = nbd_can_trim(h) == 1;
  c->can_zero = nbd_can_zero(h) == 1;
  c->can_fast_zero = c->can_zero && nbd_can_fast_zero(h) == 1;
  c->can_extents =
    nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  c->can_cache = nbd_can_cache(h) == 1;
  c->can_multi_conn = nbd_can_multi_conn(h) == 1;
  c->block_min = pow2_or(nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM),
                         1, 64 * 1024, 1);
  uint32_t pref_floor = c->block_min > 512 ? c->block_min : 512;
  c->block_pref = pow2_or(nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED),
                          pref_floor, MAX_PAYLOAD,
                          pref_floor > 4096 ? pref_floor : 4096);
  int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
  u->max = max <= 0 || max > MAX_PAYLOAD ? MAX_PAYLOAD : (uint32_t) max;
  u->max &= ~(c->block_min - 1);
  if (u->max < c->block_min)
    u->max = c->block_min;
  /* Requests are split at the upstream's maximum and made to fit its
   * minimum (align.c), so the layer takes any request, as qemu-nbd
   * does.  Clients that follow the preferred size avoid the
   * read-modify-writes. */
  u->align = c->block_min;
  c->block_min = 1;
  c->block_max = MAX_PAYLOAD;
  return 0;
}

/* The URI's tls-verify-peer=BOOL query parameter, which libnbd 1.14
 * does not parse itself (later versions do, with the same meaning). */
static int
uri_tls_verify_peer(const char *uri, bool *verify)
{
  static const char key[] = "tls-verify-peer=";
  *verify = true;
  const char *q = strchr(uri, '?');
  while (q) {
    q++;
    if (strncmp(q, key, strlen(key)) == 0) {
      const char *v = q + strlen(key);
      size_t n = strcspn(v, "&#");
      static const char *const no[] = { "false", "off", "no", "0" };
      static const char *const yes[] = { "true", "on", "yes", "1" };
      bool known = false;
      for (size_t i = 0; i < 4; i++) {
        if (strlen(no[i]) == n && strncmp(v, no[i], n) == 0) {
          *verify = false;
          known = true;
        }
        if (strlen(yes[i]) == n && strncmp(v, yes[i], n) == 0) {
          *verify = true;
          known = true;
        }
      }
      if (!known) {
        nbds_error("nbd: tls-verify-peer must be true or false, not '%.*s'",
                   (int) n, v);
        return -1;
      }
    }
    q = strchr(q, '&');
  }
  return 0;
}

static int
nbd_open(struct nbds_layer *l, const struct nbds_kv *kv, size_t nkv)
{
  if (nbds_kv_check("nbd", kv, nkv, known_keys) == -1)
    return -1;
  const char *uri = nbds_kv_get(kv, nkv, "uri");
  if (!uri || !*uri) {
    nbds_error("nbd: the option 'uri' (the upstream NBD URI) is required");
    return -1;
  }
  const char *ro = nbds_kv_get(kv, nkv, "readonly");
  if (ro && strcmp(ro, "on") != 0 && strcmp(ro, "off") != 0) {
    nbds_error("nbd: readonly must be on or off, not '%s'", ro);
    return -1;
  }
  bool verify;
  if (uri_tls_verify_peer(uri, &verify) == -1)
    return -1;
  double timeout = DEFAULT_TIMEOUT;
  const char *to = nbds_kv_get(kv, nkv, "timeout");
  if (to) {
    char *end;
    errno = 0;
    timeout = strtod(to, &end);
    if (errno || end == to || *end || !(timeout >= 0 && timeout <= 86400)) {
      nbds_error("nbd: timeout must be seconds (0..86400), not '%s'", to);
      return -1;
    }
  }
  struct nbds_reactor *self = nbds_reactor_self();
  if (!self) {
    nbds_error("nbd: the layer must be opened on a reactor");
    return -1;
  }

  struct nbd_upstream *u = calloc(1, sizeof *u);
  if (!u || !(u->uri = strdup(uri))) {
    free(u);
    nbds_error("out of memory");
    return -1;
  }
  pthread_mutex_init(&u->lock, NULL);
  atomic_init(&u->refs, 1);
  u->home = self;
  u->rmw_tail = &u->rmw_head;
  u->timeout = timeout;
  u->tls_verify_peer = verify;

  /* At start-up a blocking connect (and name lookup) is fine. */
  struct nbd_handle *h = nbd_handle_new(u, true);
  if (h && nbd_supports_uri(h) != 1) {
    nbds_error("nbd: this libnbd cannot parse NBD URIs");
    goto fail;
  }
  if (!h || nbd_connect_uri(h, uri) == -1) {
    nbds_error("nbd: cannot connect to %s: %s", uri, nbd_get_error());
    goto fail;
  }
  if (probe(u, h, ro && strcmp(ro, "on") == 0) == -1)
    goto fail;
  u->per_reactor = u->caps.can_multi_conn;
  /* The handle that answered becomes reactor 0's. */
  if (!nbd_conn_adopt(u, self, h)) {
    nbds_error("out of memory");
    goto fail;
  }
  l->priv = u;
  return 0;

fail:
  if (h)
    nbd_close(h);
  pthread_mutex_destroy(&u->lock);
  free(u->uri);
  free(u);
  return -1;
}

void
nbd_upstream_put(struct nbd_upstream *u)
{
  if (atomic_fetch_sub(&u->refs, 1) != 1)
    return;
  pthread_mutex_destroy(&u->lock);
  free(u->uri);
  free(u);
}

static void
nbd_layer_close(struct nbds_layer *l)
{
  struct nbd_upstream *u = l->priv;
  nbd_conns_close(u);
  nbd_upstream_put(u);
}

static uint64_t
nbd_size(struct nbds_layer *l)
{
  struct nbd_upstream *u = l->priv;
  return u->size;
}

static void
nbd_caps(struct nbds_layer *l, struct nbds_caps *caps)
{
  struct nbd_upstream *u = l->priv;
  *caps = u->caps;
}

/* ---- jobs: a request in ops, completed on its own reactor ---------------- */

static void
complete_posted(void *arg)
{
  struct nbd_job *job = arg;
  struct nbds_req *req = job->req;
  int err = job->err;
  free(job);
  nbds_req_complete(req, err);
}

void
nbd_job_finish(struct nbd_job *job)
{
  if (job->origin != nbds_reactor_self()) {
    nbds_reactor_post(job->origin, complete_posted, job);
    return;
  }
  complete_posted(job);
}

static void
job_step(struct nbd_job *job)
{
  void (*after)(struct nbd_job *) = job->after;
  job->after = NULL;
  if (after)
    after(job);
  else
    nbd_job_finish(job);
}

void
nbd_op_done(struct nbd_op *op, int err)
{
  struct nbd_job *job = op->job;
  /* A server must describe at least part of the range. */
  if (!err && op->op == NBDS_OP_BLOCK_STATUS && job->req->extents->covered == 0)
    err = EIO;
  free(op);
  if (err && !job->err)
    job->err = err;
  if (--job->pending == 0)
    job_step(job);
}

uint32_t
nbd_cmd_flags(const struct nbds_req *req)
{
  uint32_t f = 0;
  if (req->flags & NBDS_F_FUA)
    f |= LIBNBD_CMD_FLAG_FUA;
  if (req->flags & NBDS_F_NO_HOLE)
    f |= LIBNBD_CMD_FLAG_NO_HOLE;
  if (req->flags & NBDS_F_FAST_ZERO)
    f |= LIBNBD_CMD_FLAG_FAST_ZERO;
  if (req->flags & NBDS_F_REQ_ONE)
    f |= LIBNBD_CMD_FLAG_REQ_ONE;
  return f;
}

/* Append one op; false when out of memory. */
static bool
add_op(struct nbd_op **list, struct nbd_job *job, enum nbds_op type,
       uint32_t flags, uint64_t offset, uint64_t count, void *buf)
{
  struct nbd_op *op = calloc(1, sizeof *op);
  if (!op)
    return false;
  op->job = job;
  op->op = type;
  op->flags = flags;
  op->offset = offset;
  op->count = count;
  op->buf = buf;
  op->next = *list;
  *list = op;
  job->pending++;
  return true;
}

bool
nbd_add_ops(struct nbd_op **list, struct nbd_job *job, enum nbds_op type,
            uint32_t flags, uint64_t offset, uint64_t count, void *buf)
{
  if (type == NBDS_OP_FLUSH || type == NBDS_OP_BLOCK_STATUS)
    return add_op(list, job, type, flags, offset, count, buf);
  bool payload = type == NBDS_OP_READ || type == NBDS_OP_WRITE ||
                 type == NBDS_OP_CACHE;
  uint64_t chunk = payload ? job->u->max : MAX_EFFECT;
  char *p = buf;
  while (count) {
    uint64_t n = count < chunk ? count : chunk;
    if (!add_op(list, job, type, flags, offset, n, p))
      return false;
    if (p)
      p += n;
    offset += n;
    count -= n;
  }
  return true;
}

/* Cut the request into ops (reversed; order does not matter). */
static bool
split(struct nbd_job *job, struct nbd_op **list)
{
  struct nbds_req *req = job->req;
  uint32_t flags = nbd_cmd_flags(req);
  uint64_t off = req->offset;
  switch (req->op) {
  case NBDS_OP_READ:
  case NBDS_OP_WRITE:
    for (int i = 0; i < req->iovcnt; i++) {
      if (!nbd_add_ops(list, job, req->op, flags, off, req->iov[i].iov_len,
                       req->iov[i].iov_base))
        return false;
      off += req->iov[i].iov_len;
    }
    return true;
  case NBDS_OP_BLOCK_STATUS:
    return nbd_add_ops(list, job, req->op, flags, off,
                       req->count > UINT32_MAX ? UINT32_MAX : req->count,
                       NULL);
  default:
    return nbd_add_ops(list, job, req->op, flags, off, req->count, NULL);
  }
}

void
nbd_job_run(struct nbd_job *job, struct nbd_op *ops, bool ok,
            void (*after)(struct nbd_job *job))
{
  job->after = after;
  /* Hold one count while issuing, so the job cannot move on early. */
  job->pending++;
  struct nbd_conn *c = ok ? nbd_conn_get(job->u) : NULL;
  if (!c) {
    if (!job->err)
      job->err = ENOMEM;
    while (ops) {
      struct nbd_op *next = ops->next;
      free(ops);
      job->pending--;
      ops = next;
    }
  }
  while (ops) {
    struct nbd_op *next = ops->next;
    nbd_conn_issue(c, ops);
    ops = next;
  }
  if (--job->pending == 0)
    job_step(job);
}

/* Run a job on the calling reactor. */
static void
job_start(struct nbd_job *job)
{
  job->runner = nbds_reactor_self();
  if (job->u->align > 1 && nbd_align_needed(job)) {
    nbd_align_start(job);
    return;
  }
  struct nbd_op *ops = NULL;
  bool ok = split(job, &ops);
  nbd_job_run(job, ops, ok, NULL);
}

static void
job_start_posted(void *arg)
{
  job_start(arg);
}

static void
nbd_submit(struct nbds_layer *l, struct nbds_req *req)
{
  struct nbd_upstream *u = l->priv;
  switch (req->op) {
  case NBDS_OP_WRITE:
  case NBDS_OP_TRIM:
  case NBDS_OP_ZERO:
    if (!u->caps.can_write) {
      nbds_req_complete(req, EROFS);
      return;
    }
    break;
  default:
    break;
  }
  /* libnbd refuses zero-length commands; there is nothing to do. */
  if (req->count == 0 && req->op != NBDS_OP_FLUSH) {
    nbds_req_complete(req, 0);
    return;
  }
  struct nbd_job *job = calloc(1, sizeof *job);
  if (!job) {
    nbds_req_complete(req, ENOMEM);
    return;
  }
  job->u = u;
  job->req = req;
  job->origin = nbds_reactor_self();
  if (!u->per_reactor && job->origin != u->home)
    nbds_reactor_post(u->home, job_start_posted, job);
  else
    job_start(job);
}

const struct nbds_layer_ops nbds_nbd_ops = {
  .name = "nbd",
  .open = nbd_open,
  .close = nbd_layer_close,
  .size = nbd_size,
  .caps = nbd_caps,
  .submit = nbd_submit,
};
