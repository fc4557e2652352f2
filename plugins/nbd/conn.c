/* One libnbd handle in one reactor's libev loop.
 *
 * The handle's socket is watched with an ev_io whose events follow
 * nbd_aio_get_direction() after every libnbd call.  libnbd runs completion
 * callbacks with its handle lock held, where no nbd_* call on the handle is
 * allowed, so a callback only moves its op to the `done` list; the list is
 * drained (and the requests completed, which may issue new commands) once
 * the libnbd call has returned.
 *
 * When the upstream goes away every op in flight fails with EIO, new ops
 * fail at once, and a timer reconnects with back-off (0.1 s doubling to
 * 5 s).  A connect that has not finished after CONNECT_TIMEOUT counts as a
 * failure.
 *
 * An upstream that is alive but stops answering (stopped, wedged) is
 * caught by the request timeout (u->timeout, --upstream-timeout): while the
 * connection is up, the timer watches the oldest command in flight, and
 * when it has waited that long the connection is dropped as if the
 * upstream had died: everything in flight fails with EIO and the back-off
 * reconnect starts. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "nbdstack/reactor.h"
#include "log.h"
#include "nbd.h"

#define BACKOFF_MIN 0.1
#define BACKOFF_MAX 5.0
#define CONNECT_TIMEOUT 5.0

enum conn_state { C_CONNECTING, C_UP, C_DOWN };

struct connect_work;

struct nbd_conn {
  struct nbd_upstream *u;
  struct nbds_reactor *r;
  struct ev_loop *loop;
  struct nbd_handle *h;
  enum conn_state state;
  bool first;               /* first connect: queue ops rather than fail */
  bool was_up;              /* for the "reconnected" log line */
  bool draining;
  ev_io io;
  int io_events;
  struct connect_work *connecting;  /* on a worker */
  ev_timer timer;           /* retry (C_DOWN), connect timeout
                               (C_CONNECTING), request timeout (C_UP) */
  double backoff;
  struct nbd_op *inflight;  /* sent to libnbd, not yet completed */
  struct nbd_op *done_head, **done_tail;  /* completed in a callback */
  struct nbd_op *queue_head, **queue_tail;  /* waiting for the first connect */
  struct nbd_conn *next;
};

static __thread struct nbd_upstream *tls_u;
static __thread struct nbd_conn *tls_c;

static void conn_after(struct nbd_conn *c);

static void
list_add(struct nbd_op **head, struct nbd_op *op)
{
  op->prev = NULL;
  op->next = *head;
  if (*head)
    (*head)->prev = op;
  *head = op;
}

static void
list_del(struct nbd_op **head, struct nbd_op *op)
{
  if (op->prev)
    op->prev->next = op->next;
  else
    *head = op->next;
  if (op->next)
    op->next->prev = op->prev;
  op->prev = op->next = NULL;
}

static void
fifo_push(struct nbd_op ***tail, struct nbd_op *op)
{
  op->next = NULL;
  **tail = op;
  *tail = &op->next;
}

static void
watch_update(struct nbd_conn *c)
{
  int events = 0;
  int fd = -1;
  if (c->h && c->state != C_DOWN) {
    fd = nbd_aio_get_fd(c->h);
    unsigned dir = nbd_aio_get_direction(c->h);
    if (dir & LIBNBD_AIO_DIRECTION_READ)
      events |= EV_READ;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
      events |= EV_WRITE;
    if (fd < 0)
      events = 0;
  }
  if (events == c->io_events && (!events || fd == c->io.fd))
    return;
  if (c->io_events)
    ev_io_stop(c->loop, &c->io);
  c->io_events = events;
  if (events) {
    ev_io_set(&c->io, fd, events);
    ev_io_start(c->loop, &c->io);
  }
}

static void
timer_arm(struct nbd_conn *c, double after)
{
  ev_timer_stop(c->loop, &c->timer);
  ev_timer_set(&c->timer, after, 0.);
  ev_timer_start(c->loop, &c->timer);
}

/* The connection is gone (or never came): fail everything, retry later. */
static void
conn_down(struct nbd_conn *c, const char *why)
{
  struct nbd_op *failed = NULL;
  struct nbd_op *op;
  while ((op = c->inflight)) {
    list_del(&c->inflight, op);
    op->aborted = true;
    list_add(&failed, op);
  }
  while ((op = c->queue_head)) {
    c->queue_head = op->next;
    list_add(&failed, op);
  }
  c->queue_tail = &c->queue_head;

  if (c->was_up || c->first)
    nbds_log_error("nbd: upstream %s: %s; requests fail with EIO until it "
                   "is back", c->u->uri, why);
  else
    nbds_log_debug("nbd: upstream %s: %s", c->u->uri, why);
  c->state = C_DOWN;
  c->first = false;
  c->was_up = false;
  watch_update(c);
  if (c->h) {
    /* Callbacks nbd_close() may still run see `aborted`. */
    nbd_close(c->h);
    c->h = NULL;
  }
  c->backoff = c->backoff ? c->backoff * 2 : BACKOFF_MIN;
  if (c->backoff > BACKOFF_MAX)
    c->backoff = BACKOFF_MAX;
  timer_arm(c, c->backoff);

  while ((op = failed)) {
    list_del(&failed, op);
    op->prev = op->next = NULL;
    nbd_op_done(op, EIO);
  }
}

static int
completion_cb(void *user_data, int *error)
{
  struct nbd_op *op = user_data;
  if (op->aborted)
    return 1;
  struct nbd_conn *c = op->conn;
  list_del(&c->inflight, op);
  op->err = *error;
  /* libnbd fails what was in flight on a dead connection with ENOTCONN
   * (or the socket's error): to the client that is an I/O error. */
  if (op->err == ENOTCONN || op->err == ECONNRESET || op->err == EPIPE ||
      op->err == ESHUTDOWN)
    op->err = EIO;
  fifo_push(&c->done_tail, op);
  return 1;
}

struct nbd_handle *
nbd_handle_new(const struct nbd_upstream *u, bool extents)
{
  struct nbd_handle *h = nbd_create();
  if (!h)
    return NULL;
  /* The URI is the administrator's, from the command line: it may name
   * local files (tls-certificates=, tls-psk-file=). */
  if (nbd_set_uri_allow_local_file(h, true) == -1 ||
      nbd_set_tls_verify_peer(h, u->tls_verify_peer) == -1 ||
      (extents &&
       nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1)) {
    nbd_close(h);
    return NULL;
  }
  return h;
}

/* A connect started on a worker: libnbd resolves a host name with a
 * blocking getaddrinfo() inside nbd_aio_connect_uri(), which must not
 * stall the reactor (and every client on it) while DNS is slow or down.
 * The rest of the connect (TCP, TLS, handshake) is non-blocking and runs
 * in the reactor's loop. */
struct connect_work {
  struct nbds_work w;
  struct nbd_upstream *u;
  struct nbd_conn *c;       /* NULL: the layer closed meanwhile */
  struct nbd_handle *h;     /* connecting, or NULL */
  char why[256];            /* when h is NULL */
};

static void
connect_work_fn(struct nbds_work *w)
{
  struct connect_work *cw = (struct connect_work *) w;
  struct nbd_upstream *u = cw->u;
  cw->h = nbd_handle_new(u, u->caps.can_extents);
  if (!cw->h || nbd_aio_connect_uri(cw->h, u->uri) == -1) {
    /* libnbd's error is per thread: keep it for the reactor. */
    snprintf(cw->why, sizeof cw->why, "%s", nbd_get_error());
    if (cw->h)
      nbd_close(cw->h);
    cw->h = NULL;
  }
}

static void
connect_work_done(struct nbds_work *w)
{
  struct connect_work *cw = (struct connect_work *) w;
  struct nbd_conn *c = cw->c;
  nbd_upstream_put(cw->u);
  if (!c) {
    if (cw->h)
      nbd_close(cw->h);
    free(cw);
    return;
  }
  c->connecting = NULL;
  c->h = cw->h;
  if (!c->h) {
    conn_down(c, cw->why);
    free(cw);
    return;
  }
  free(cw);
  timer_arm(c, CONNECT_TIMEOUT);
  conn_after(c);
}

static void
start_connect(struct nbd_conn *c)
{
  c->state = C_CONNECTING;
  struct connect_work *cw = calloc(1, sizeof *cw);
  if (!cw) {
    conn_down(c, "out of memory");
    return;
  }
  cw->w.fn = connect_work_fn;
  cw->w.done = connect_work_done;
  cw->u = c->u;
  atomic_fetch_add(&cw->u->refs, 1);  /* the worker reads it */
  cw->c = c;
  c->connecting = cw;
  nbds_work_submit(&cw->w);
}

/* C_UP: fail the connection when its oldest command has waited
 * u->timeout, else look again when it would have. */
static void
request_timeout_check(struct nbd_conn *c)
{
  if (!c->inflight || c->u->timeout <= 0)
    return;
  ev_tstamp oldest = c->inflight->sent;
  for (struct nbd_op *op = c->inflight->next; op; op = op->next)
    if (op->sent < oldest)
      oldest = op->sent;
  ev_tstamp left = oldest + c->u->timeout - ev_now(c->loop);
  if (left <= 0) {
    char why[80];
    snprintf(why, sizeof why, "no reply within %g s", c->u->timeout);
    conn_down(c, why);
    return;
  }
  timer_arm(c, left);
}

static void
timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
  (void) loop;
  (void) revents;
  struct nbd_conn *c = w->data;
  if (c->state == C_DOWN)
    start_connect(c);
  else if (c->state == C_CONNECTING)
    conn_down(c, "connect timed out");
  else
    request_timeout_check(c);
}

static void
io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
  (void) loop;
  struct nbd_conn *c = w->data;
  if (!c->h)
    return;
  int r = 0;
  if (revents & EV_READ)
    r = nbd_aio_notify_read(c->h);
  if (r == 0 && (revents & EV_WRITE) && c->h)
    r = nbd_aio_notify_write(c->h);
  conn_after(c);
}

/* After any libnbd call: finish what completed, notice state changes,
 * watch the direction libnbd wants. */
static void
conn_after(struct nbd_conn *c)
{
  /* Completions first: they happened before any death. */
  if (!c->draining) {
    c->draining = true;
    struct nbd_op *op;
    while ((op = c->done_head)) {
      c->done_head = op->next;
      if (!c->done_head)
        c->done_tail = &c->done_head;
      op->next = NULL;
      nbd_op_done(op, op->err);
    }
    c->draining = false;
  }
  if (!c->h || c->state == C_DOWN)
    return;
  if (nbd_aio_is_dead(c->h) || nbd_aio_is_closed(c->h)) {
    const char *e = nbd_get_error();
    conn_down(c, c->state == C_CONNECTING && e ? e : "connection lost");
    return;
  }
  if (c->state == C_CONNECTING &&
      (nbd_aio_is_ready(c->h) || nbd_aio_is_processing(c->h))) {
    ev_timer_stop(c->loop, &c->timer);
    if (!c->first)
      nbds_log_info("nbd: upstream %s is back", c->u->uri);
    if ((uint64_t) nbd_get_size(c->h) != c->u->size)
      nbds_log_error("nbd: upstream %s changed size (%lld, was %llu)",
                     c->u->uri, (long long) nbd_get_size(c->h),
                     (unsigned long long) c->u->size);
    c->state = C_UP;
    c->first = false;
    c->was_up = true;
    c->backoff = 0;
    struct nbd_op *q = c->queue_head;
    c->queue_head = NULL;
    c->queue_tail = &c->queue_head;
    while (q) {
      struct nbd_op *next = q->next;
      nbd_conn_issue(c, q);
      q = next;
    }
    if (c->state != C_UP || !c->h)
      return;
  }
  watch_update(c);
}

/* base:allocation extents into the request's list. */
static int
extent_cb(void *user_data, const char *metacontext, uint64_t offset,
          uint32_t *entries, size_t nr_entries, int *error)
{
  (void) offset;
  (void) error;
  struct nbd_op *op = user_data;
  if (op->aborted || strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  struct nbds_extents *ex = op->job->req->extents;
  for (size_t i = 0; i + 1 < nr_entries; i += 2) {
    if (ex->covered >= op->count - op->skip)
      break;
    uint64_t length = entries[i];
    if (op->skip) {
      /* Aligned below the request's offset: drop what lies before it. */
      uint64_t n = length < op->skip ? length : op->skip;
      op->skip -= n;
      op->count -= n;
      length -= n;
      if (!length)
        continue;
    }
    uint32_t flags = 0;
    if (entries[i + 1] & LIBNBD_STATE_HOLE)
      flags |= NBDS_EXTENT_HOLE;
    if (entries[i + 1] & LIBNBD_STATE_ZERO)
      flags |= NBDS_EXTENT_ZERO;
    if (!nbds_extents_add(ex, length, flags))
      break;
  }
  return 0;
}

void
nbd_conn_issue(struct nbd_conn *c, struct nbd_op *op)
{
  op->conn = c;
  op->aborted = false;
  op->err = 0;
  if (c->state == C_CONNECTING && c->first) {
    fifo_push(&c->queue_tail, op);
    return;
  }
  if (c->state != C_UP || !c->h) {
    nbd_op_done(op, EIO);
    return;
  }
  nbd_completion_callback done = { .callback = completion_cb,
                                   .user_data = op };
  int64_t cookie;
  /* In flight before the call: the callback may run inside it. */
  list_add(&c->inflight, op);
  op->sent = ev_now(c->loop);
  if (c->u->timeout > 0 && !ev_is_active(&c->timer))
    timer_arm(c, c->u->timeout);
  switch (op->op) {
  case NBDS_OP_READ:
    cookie = nbd_aio_pread(c->h, op->buf, op->count, op->offset, done, 0);
    break;
  case NBDS_OP_WRITE:
    cookie = nbd_aio_pwrite(c->h, op->buf, op->count, op->offset, done,
                            op->flags);
    break;
  case NBDS_OP_FLUSH:
    cookie = nbd_aio_flush(c->h, done, 0);
    break;
  case NBDS_OP_TRIM:
    cookie = nbd_aio_trim(c->h, op->count, op->offset, done, op->flags);
    break;
  case NBDS_OP_ZERO:
    cookie = nbd_aio_zero(c->h, op->count, op->offset, done, op->flags);
    break;
  case NBDS_OP_CACHE:
    cookie = nbd_aio_cache(c->h, op->count, op->offset, done, 0);
    break;
  case NBDS_OP_BLOCK_STATUS: {
    nbd_extent_callback ext = { .callback = extent_cb, .user_data = op };
    cookie = nbd_aio_block_status(c->h, op->count, op->offset, ext, done,
                                  op->flags);
    break;
  }
  default:
    cookie = -1;
    break;
  }
  if (cookie == -1) {
    /* Not sent, and its callback will not run. */
    int err = nbd_get_errno();
    bool dead = nbd_aio_is_dead(c->h) || nbd_aio_is_closed(c->h);
    list_del(&c->inflight, op);
    nbds_log_debug("nbd: command failed to start: %s", nbd_get_error());
    conn_after(c);
    nbd_op_done(op, dead || err <= 0 ? EIO : err);
    return;
  }
  conn_after(c);
}

static struct nbd_conn *
conn_new(struct nbd_upstream *u, struct nbds_reactor *r)
{
  struct nbd_conn *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->u = u;
  atomic_fetch_add(&u->refs, 1);
  c->r = r;
  c->loop = nbds_reactor_loop(r);
  c->done_tail = &c->done_head;
  c->queue_tail = &c->queue_head;
  ev_io_init(&c->io, io_cb, 0, 0);
  c->io.data = c;
  ev_timer_init(&c->timer, timer_cb, 0., 0.);
  c->timer.data = c;
  pthread_mutex_lock(&u->lock);
  c->next = u->conns;
  u->conns = c;
  pthread_mutex_unlock(&u->lock);
  return c;
}

struct nbd_conn *
nbd_conn_adopt(struct nbd_upstream *u, struct nbds_reactor *r,
               struct nbd_handle *h)
{
  struct nbd_conn *c = conn_new(u, r);
  if (!c)
    return NULL;
  c->h = h;
  c->state = C_UP;
  c->was_up = true;
  watch_update(c);
  return c;
}

struct nbd_conn *
nbd_conn_get(struct nbd_upstream *u)
{
  if (tls_u == u && tls_c)
    return tls_c;
  struct nbds_reactor *self = nbds_reactor_self();
  struct nbd_conn *c;
  pthread_mutex_lock(&u->lock);
  for (c = u->conns; c; c = c->next)
    if (c->r == self)
      break;
  pthread_mutex_unlock(&u->lock);
  if (!c) {
    c = conn_new(u, self);
    if (!c)
      return NULL;
    c->first = true;
    start_connect(c);
  }
  tls_u = u;
  tls_c = c;
  return c;
}

/* On c's reactor. */
static void
conn_teardown(void *arg)
{
  struct nbd_conn *c = arg;
  if (c->io_events)
    ev_io_stop(c->loop, &c->io);
  ev_timer_stop(c->loop, &c->timer);
  if (c->h)
    nbd_close(c->h);
  /* Its completion still runs, and sees the conn gone. */
  if (c->connecting)
    c->connecting->c = NULL;
  if (tls_c == c) {
    tls_u = NULL;
    tls_c = NULL;
  }
  nbd_upstream_put(c->u);
  free(c);
}

void
nbd_conns_close(struct nbd_upstream *u)
{
  struct nbds_reactor *self = nbds_reactor_self();
  struct nbd_conn *c;
  while ((c = u->conns)) {
    u->conns = c->next;
    if (c->r == self)
      conn_teardown(c);
    else
      nbds_reactor_post(c->r, conn_teardown, c);
  }
}
