/* The transmission phase.  Requests are parsed as they arrive, validated,
 * and dispatched to the export's stack at once; each is answered when its
 * stack completes it, so replies go out in completion order.  A READ reply
 * is sent from the very buffer the disk filled, a WRITE payload is read
 * from the socket straight into the buffer the disk write uses. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bufpool.h"
#include "connection.h"
#include "export.h"
#include "log.h"
#include "metrics.h"
#include "reactor.h"
#include "server.h"
#include "zero.h"

/* Structured READ replies describe zero ranges with OFFSET_HOLE chunks
 * instead of sending the zeroes: runs of zero blocks this long, or a
 * whole zero reply, become holes. */
#define HOLE_BLOCK    4096
#define HOLE_MIN_RUN  (32 * 1024)
/* Largest extent list one BLOCK_STATUS reply carries. */
#define MAX_EXTENTS   8192

struct treq {
  struct nbds_req req;        /* what the stack sees */
  struct outmsg out;          /* the reply */
  struct conn *c;
  struct treq *next_free;
  struct nbd_request nr;      /* as received */
  size_t held;                /* bytes counted in inflight_bytes */
  bool replying;              /* counted in tx.replying */
  uint64_t start_ns;          /* when its header arrived, for metrics */
  uint8_t *buf;               /* READ/WRITE data */
  size_t buf_cap;
  struct iovec data_iov;
  struct nbds_extents ext;    /* BLOCK_STATUS: base:allocation */
  struct nbds_extents depth;  /* BLOCK_STATUS: qemu:allocation-depth */
  struct iovec iov_inline[3];
  struct iovec *iov;          /* reply iovecs: iov_inline or heap */
  uint8_t hdr_inline[96];     /* fits any one header, or an error chunk */
  uint8_t *hdr;               /* reply headers: hdr_inline or heap */
};

static struct treq *
treq_get(struct conn *c)
{
  struct tx *tx = &c->tx;
  struct treq *t = tx->free_reqs;
  if (t)
    tx->free_reqs = t->next_free;
  else {
    t = calloc(1, sizeof *t);
    if (!t)
      return NULL;
    t->c = c;
  }
  t->iov = t->iov_inline;
  t->hdr = t->hdr_inline;
  t->ext.v = t->depth.v = NULL;
  tx->inflight++;
  if (tx->metrics) {
    t->start_ns = metrics_arrival(c->loop);
    metrics_add(&tx->metrics->received, 1);
  }
  return t;
}

static bool
treq_buffer(struct treq *t, size_t len)
{
  if (len == 0)
    return true;
  t->buf = bufpool_get(len, &t->buf_cap);
  return t->buf != NULL;
}

static void
treq_sent(struct outmsg *m)
{
  struct treq *t = (struct treq *) ((char *) m - offsetof(struct treq, out));
  struct tx *tx = &t->c->tx;
  tx->inflight--;
  tx->inflight_bytes -= t->held;
  if (t->replying)
    tx->replying--;
  t->replying = false;
  if (tx->metrics)
    metrics_add(&tx->metrics->released, 1);
  t->held = 0;
  if (t->iov != t->iov_inline)
    free(t->iov);
  if (t->hdr != t->hdr_inline)
    free(t->hdr);
  free(t->ext.v);
  free(t->depth.v);
  t->ext.v = t->depth.v = NULL;
  if (t->buf) {
    bufpool_put(t->buf, t->buf_cap);
    t->buf = NULL;
  }
  t->next_free = tx->free_reqs;
  tx->free_reqs = t;
}

static const char *
error_message(uint32_t err)
{
  switch (err) {
  case NBD_EPERM:     return "export is read-only";
  case NBD_EINVAL:    return "invalid request";
  case NBD_ENOSPC:    return "no space (or beyond the end of the export)";
  case NBD_EOVERFLOW: return "request too large";
  case NBD_ENOTSUP:   return "operation would not be fast";
  case NBD_ESHUTDOWN: return "server is shutting down";
  case NBD_ENOMEM:    return "out of memory";
  default:            return "input/output error";
  }
}

/* One reply iovec per header or data piece. */
static void
set_msg(struct treq *t, int niov)
{
  t->out.iov = t->iov;
  t->out.niov = niov;
  t->out.cur = 0;
  t->out.sent = treq_sent;
}

static void
put_chunk_header(uint8_t *h, uint16_t flags, uint16_t type, uint64_t cookie,
                 uint32_t len)
{
  put_be32(h, NBD_STRUCTURED_REPLY_MAGIC);
  put_be16(h + 4, flags);
  put_be16(h + 6, type);
  put_be64(h + 8, cookie);
  put_be32(h + 16, len);
}

static void
reply_simple(struct treq *t, uint32_t err, bool with_data)
{
  put_be32(t->hdr, NBD_SIMPLE_REPLY_MAGIC);
  put_be32(t->hdr + 4, err);
  put_be64(t->hdr + 8, t->nr.cookie);
  t->iov[0] = (struct iovec) { t->hdr, 16 };
  t->iov[1] = (struct iovec) { t->buf, with_data ? t->nr.count : 0 };
  set_msg(t, with_data ? 2 : 1);
}

static void
reply_error_chunk(struct treq *t, uint32_t err)
{
  const char *msg = error_message(err);
  size_t mlen = strlen(msg);
  if (mlen > sizeof t->hdr_inline - 26)
    mlen = sizeof t->hdr_inline - 26;
  put_chunk_header(t->hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR,
                   t->nr.cookie, 6 + mlen);
  put_be32(t->hdr + 20, err);
  put_be16(t->hdr + 24, mlen);
  memcpy(t->hdr + 26, msg, mlen);
  t->iov[0] = (struct iovec) { t->hdr, 26 + mlen };
  set_msg(t, 1);
}

static void
reply_error(struct treq *t, uint32_t err)
{
  if (t->c->tx.st.structured)
    reply_error_chunk(t, err);
  else
    reply_simple(t, err, false);
}

/* Find the runs of a read buffer to send as data and as holes, in units of
 * HOLE_BLOCK aligned to the export.  Returns the number of runs written to
 * starts/lens/holes (at most max). */
static size_t
read_runs(const struct treq *t, size_t max, uint32_t *starts,
          uint32_t *lens, bool *holes)
{
  uint32_t count = t->nr.count;
  size_t n = 0;
  uint32_t pos = 0;
  while (pos < count) {
    uint32_t end = ((t->nr.offset + pos) / HOLE_BLOCK + 1) * HOLE_BLOCK
                   - t->nr.offset;
    if (end > count)
      end = count;
    bool zero = buffer_is_zero(t->buf + pos, end - pos);
    if (n > 0 && holes[n - 1] == zero)
      lens[n - 1] += end - pos;
    else {
      if (n == max)
        return 0;
      starts[n] = pos;
      lens[n] = end - pos;
      holes[n] = zero;
      n++;
    }
    pos = end;
  }
  /* Short zero runs are not worth a chunk: fold them into data. */
  size_t out = 0;
  for (size_t i = 0; i < n; i++) {
    bool hole = holes[i] && (lens[i] >= HOLE_MIN_RUN || n == 1);
    if (out > 0 && !holes[out - 1] && !hole) {
      lens[out - 1] += lens[i];
      continue;
    }
    starts[out] = starts[i];
    lens[out] = lens[i];
    holes[out] = hole;
    out++;
  }
  return out;
}

static void
reply_read_structured(struct treq *t)
{
  uint32_t count = t->nr.count;
  if (count == 0) {
    put_chunk_header(t->hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE,
                     t->nr.cookie, 0);
    t->iov[0] = (struct iovec) { t->hdr, 20 };
    set_msg(t, 1);
    return;
  }

  size_t n = 0;
  enum { MAX_RUNS = 256 };
  uint32_t starts[MAX_RUNS], lens[MAX_RUNS];
  bool holes[MAX_RUNS];
  if (!(t->nr.flags & NBD_CMD_FLAG_DF))
    n = read_runs(t, MAX_RUNS, starts, lens, holes);
  if (n <= 1 && (n == 0 || !holes[0])) {
    /* One data chunk: the common case, with no allocation. */
    put_chunk_header(t->hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA,
                     t->nr.cookie, 8 + count);
    put_be64(t->hdr + 20, t->nr.offset);
    t->iov[0] = (struct iovec) { t->hdr, 28 };
    t->iov[1] = (struct iovec) { t->buf, count };
    set_msg(t, 2);
    return;
  }

  size_t hdr_len = n * 32;
  if (hdr_len > sizeof t->hdr_inline) {
    t->hdr = malloc(hdr_len);
    if (!t->hdr) {
      t->hdr = t->hdr_inline;
      reply_error_chunk(t, NBD_ENOMEM);
      return;
    }
  }
  if (2 * n > sizeof t->iov_inline / sizeof t->iov_inline[0]) {
    t->iov = malloc(2 * n * sizeof *t->iov);
    if (!t->iov) {
      t->iov = t->iov_inline;
      if (t->hdr != t->hdr_inline)
        free(t->hdr);
      t->hdr = t->hdr_inline;
      reply_error_chunk(t, NBD_ENOMEM);
      return;
    }
  }
  int niov = 0;
  uint8_t *h = t->hdr;
  for (size_t i = 0; i < n; i++) {
    uint16_t flags = i == n - 1 ? NBD_REPLY_FLAG_DONE : 0;
    uint64_t off = t->nr.offset + starts[i];
    if (holes[i]) {
      put_chunk_header(h, flags, NBD_REPLY_TYPE_OFFSET_HOLE, t->nr.cookie, 12);
      put_be64(h + 20, off);
      put_be32(h + 28, lens[i]);
      t->iov[niov++] = (struct iovec) { h, 32 };
    } else {
      put_chunk_header(h, flags, NBD_REPLY_TYPE_OFFSET_DATA, t->nr.cookie,
                       8 + lens[i]);
      put_be64(h + 20, off);
      t->iov[niov++] = (struct iovec) { h, 28 };
      t->iov[niov++] = (struct iovec) { t->buf + starts[i], lens[i] };
    }
    h += 32;
  }
  set_msg(t, niov);
}

/* Trim a context's extents to the request (to one with REQ_ONE).  A layer
 * that said nothing gets one extent of `fill`, which is always safe:
 * "allocated data" for base:allocation, depth 1 for allocation depth. */
static size_t
trim_extents(struct nbds_extents *ex, uint64_t want, bool one, uint32_t fill)
{
  size_t n = 0;
  uint64_t covered = 0;
  while (n < ex->count && covered < want) {
    uint64_t len = ex->v[n].length;
    if (len > want - covered)
      ex->v[n].length = len = want - covered;
    covered += len;
    n++;
    if (one)
      break;
  }
  if (n == 0) {
    ex->v[0] = (struct nbds_extent) { want, fill };
    n = 1;
  }
  return n;
}

/* One BLOCK_STATUS chunk for context `id`; returns its length. */
static size_t
put_status_chunk(uint8_t *p, uint16_t flags, uint64_t cookie, uint32_t id,
                 const struct nbds_extents *ex, size_t n, uint32_t mask)
{
  size_t plen = 4 + 8 * n;
  put_chunk_header(p, flags, NBD_REPLY_TYPE_BLOCK_STATUS, cookie, plen);
  put_be32(p + 20, id);
  for (size_t i = 0; i < n; i++) {
    put_be32(p + 24 + 8 * i, (uint32_t) ex->v[i].length);
    put_be32(p + 28 + 8 * i, ex->v[i].flags & mask);
  }
  return 20 + plen;
}

/* One chunk per selected context, the last one flagged DONE. */
static void
reply_block_status(struct treq *t)
{
  const struct nbd_tx_state *st = &t->c->tx.st;
  uint64_t want = t->nr.count;
  bool one = t->nr.flags & NBD_CMD_FLAG_REQ_ONE;
  size_t nb = st->base_allocation ? trim_extents(&t->ext, want, one, 0) : 0;
  size_t nd = st->alloc_depth ? trim_extents(&t->depth, want, one, 1) : 0;
  size_t len = (nb ? 24 + 8 * nb : 0) + (nd ? 24 + 8 * nd : 0);
  uint8_t *p = malloc(len);
  if (!p) {
    reply_error_chunk(t, NBD_ENOMEM);
    return;
  }
  t->hdr = p;
  if (nb)
    p += put_status_chunk(p, nd ? 0 : NBD_REPLY_FLAG_DONE, t->nr.cookie,
                          NBD_META_ID_BASE_ALLOCATION, &t->ext, nb,
                          NBDS_EXTENT_HOLE | NBDS_EXTENT_ZERO);
  if (nd)
    put_status_chunk(p, NBD_REPLY_FLAG_DONE, t->nr.cookie,
                     NBD_META_ID_ALLOCATION_DEPTH, &t->depth, nd, UINT32_MAX);
  t->iov[0] = (struct iovec) { t->hdr, len };
  set_msg(t, 1);
}

static void
send_reply(struct treq *t, uint32_t err)
{
  struct conn *c = t->c;
  bool structured = c->tx.st.structured;
  if (c->tx.metrics)
    metrics_reply(c->tx.metrics, t->nr.type, t->nr.count, err, t->start_ns,
                  metrics_now(c->loop));
  if (err) {
    nbds_log_debug("%s: %s offset=%llu count=%u: error %u", c->peer,
                   nbd_cmd_name(t->nr.type), (unsigned long long) t->nr.offset,
                   t->nr.count, err);
    reply_error(t, err);
  } else if (t->nr.type == NBD_CMD_READ)
    structured ? reply_read_structured(t) : reply_simple(t, 0, true);
  else if (t->nr.type == NBD_CMD_BLOCK_STATUS)
    reply_block_status(t);
  else
    reply_simple(t, 0, false);
  t->replying = true;
  c->tx.replying++;
  conn_send(c, &t->out);
}

static void submit_depth(struct treq *t);

static void
request_done(struct nbds_req *req, int err)
{
  struct treq *t = (struct treq *) req;
  struct conn *c = t->c;
  if (!err && t->depth.v && !(req->flags & NBDS_F_DEPTH) &&
      req->op == NBDS_OP_BLOCK_STATUS) {
    submit_depth(t);  /* base:allocation done: now the depth walk */
    return;
  }
  conn_enter(c);
  if (err && err != ENOTSUP && err != ENOSPC && err != EDQUOT)
    nbds_log_error("%s: export '%s': %s at %llu+%u failed: %s", c->peer,
                   c->tx.exp->name, nbd_cmd_name(t->nr.type),
                   (unsigned long long) t->nr.offset, t->nr.count,
                   strerror(err));
  send_reply(t, nbd_errno_to_wire(err));
  conn_leave(c);
}

/* The qemu:allocation-depth walk of a BLOCK_STATUS request.  A stack that
 * keeps no backing chain has everything at depth 1, the reply's fill. */
static void
submit_depth(struct treq *t)
{
  struct nbds_req *r = &t->req;
  struct export *e = t->c->tx.exp;
  if (!e->top->caps.can_alloc_depth) {
    conn_enter(t->c);
    send_reply(t, 0);
    conn_leave(t->c);
    return;
  }
  memset(r, 0, sizeof *r);
  r->op = NBDS_OP_BLOCK_STATUS;
  r->flags = NBDS_F_DEPTH;
  if (t->nr.flags & NBD_CMD_FLAG_REQ_ONE)
    r->flags |= NBDS_F_REQ_ONE;
  r->offset = t->nr.offset;
  r->count = t->nr.count;
  r->extents = &t->depth;
  r->done = request_done;
  export_submit(e, r);
}

/* Room for an extent per 512 bytes, up to the reply's limit. */
static bool
alloc_extents(struct nbds_extents *ex, const struct nbd_request *nr)
{
  size_t cap = (nr->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : nr->count / 512 + 1;
  if (cap > MAX_EXTENTS)
    cap = MAX_EXTENTS;
  *ex = (struct nbds_extents) { .v = malloc(cap * sizeof *ex->v),
                                .cap = cap };
  return ex->v != NULL;
}

static void
dispatch(struct treq *t)
{
  struct conn *c = t->c;
  struct nbds_req *r = &t->req;
  uint16_t f = t->nr.flags;

  memset(r, 0, sizeof *r);
  r->offset = t->nr.offset;
  r->count = t->nr.count;
  r->done = request_done;
  if (f & NBD_CMD_FLAG_FUA)
    r->flags |= NBDS_F_FUA;

  switch (t->nr.type) {
  case NBD_CMD_READ:
    r->op = NBDS_OP_READ;
    r->flags &= ~NBDS_F_FUA;  /* FUA means nothing on a read */
    break;
  case NBD_CMD_WRITE:
    r->op = NBDS_OP_WRITE;
    break;
  case NBD_CMD_FLUSH:
    r->op = NBDS_OP_FLUSH;
    r->offset = r->count = 0;
    break;
  case NBD_CMD_TRIM:
    r->op = NBDS_OP_TRIM;
    break;
  case NBD_CMD_WRITE_ZEROES:
    r->op = NBDS_OP_ZERO;
    if (f & NBD_CMD_FLAG_NO_HOLE)
      r->flags |= NBDS_F_NO_HOLE;
    if (f & NBD_CMD_FLAG_FAST_ZERO)
      r->flags |= NBDS_F_FAST_ZERO;
    break;
  case NBD_CMD_CACHE:
    r->op = NBDS_OP_CACHE;
    break;
  case NBD_CMD_BLOCK_STATUS:
    r->op = NBDS_OP_BLOCK_STATUS;
    if (f & NBD_CMD_FLAG_REQ_ONE)
      r->flags |= NBDS_F_REQ_ONE;
    break;
  }

  if (r->op == NBDS_OP_READ || r->op == NBDS_OP_WRITE) {
    t->data_iov = (struct iovec) { t->buf, t->nr.count };
    r->iov = &t->data_iov;
    r->iovcnt = 1;
  }
  if (r->op == NBDS_OP_BLOCK_STATUS) {
    const struct nbd_tx_state *st = &c->tx.st;
    if ((st->base_allocation && !alloc_extents(&t->ext, &t->nr)) ||
        (st->alloc_depth && !alloc_extents(&t->depth, &t->nr))) {
      send_reply(t, NBD_ENOMEM);
      return;
    }
    r->extents = &t->ext;
  }
  /* Zero-length requests need nothing from the disk. */
  if (r->count == 0 && r->op != NBDS_OP_FLUSH) {
    send_reply(t, 0);
    return;
  }
  if (r->op == NBDS_OP_BLOCK_STATUS && !c->tx.st.base_allocation)
    submit_depth(t);
  else
    export_submit(c->tx.exp, r);
}

static void
write_received(struct conn *c)
{
  struct treq *t = c->tx.receiving;
  c->tx.receiving = NULL;
  dispatch(t);
}

static void
write_drained(struct conn *c)
{
  (void) c;
}

void
tx_start(struct conn *c, struct export *e, bool structured,
         bool base_allocation, bool alloc_depth)
{
  struct tx *tx = &c->tx;
  const struct nbds_caps *caps = &e->top->caps;
  tx->exp = e;
  tx->st = (struct nbd_tx_state) {
    .eflags = export_flags(e, structured),
    .structured = structured,
    .base_allocation = base_allocation,
    .alloc_depth = alloc_depth,
    .size = e->top->size,
    .block_min = caps->block_min,
    .block_max = caps->block_max,
  };
  c->phase = PHASE_TRANSMISSION;
  c->counted = true;
  tx->metrics = metrics_block(e->metrics, reactor_index(c->reactor));
  if (tx->metrics)
    metrics_add(&tx->metrics->conns_opened, 1);
  conn_limits_negotiated(c);
  server_client_negotiated();
  nbds_log_info("%s: connection opened: export '%s' (flags 0x%x)", c->peer,
                e->name, tx->st.eflags);
}

bool
tx_can_read_more(struct conn *c)
{
  return c->tx.inflight < TX_MAX_INFLIGHT &&
         c->tx.inflight_bytes < TX_MAX_INFLIGHT_BYTES;
}

unsigned
tx_working(const struct conn *c)
{
  return c->tx.inflight - c->tx.replying - (c->tx.receiving ? 1 : 0);
}

void
tx_consume(struct conn *c)
{
  struct tx *tx = &c->tx;
  while (!c->dead && !c->eof && !c->sink_left && !c->reading_paused) {
    if (!tx_can_read_more(c)) {
      conn_pause_reading(c);
      return;
    }
    if (conn_in_avail(c) < NBD_REQUEST_SIZE)
      return;
    struct nbd_request nr;
    if (!nbd_parse_request(conn_in_ptr(c), &nr)) {
      nbds_log_error("%s: bad request magic: closing the connection",
                     c->peer);
      conn_set_close_reason(c, "bad request magic", 0);
      conn_kill(c);
      return;
    }
    conn_in_skip(c, NBD_REQUEST_SIZE);

    if (nr.type == NBD_CMD_DISC) {
      conn_set_close_reason(c, "the client sent NBD_CMD_DISC", 0);
      conn_shutdown(c);  /* finish what is in flight, then close */
      return;
    }

    nbds_log_debug("%s: %s offset=%llu count=%u flags=0x%x", c->peer,
                   nbd_cmd_name(nr.type), (unsigned long long) nr.offset,
                   nr.count, nr.flags);
    uint32_t err = nbd_validate_request(&tx->st, &nr);
    struct treq *t = treq_get(c);
    if (!t) {
      conn_kill(c);
      return;
    }
    t->nr = nr;
    bool payload = nr.type == NBD_CMD_WRITE;
    if (!err && (payload || nr.type == NBD_CMD_READ)) {
      if (treq_buffer(t, nr.count)) {
        t->held = nr.count;
        tx->inflight_bytes += t->held;
      } else
        err = NBD_ENOMEM;
    }

    if (err) {
      send_reply(t, err);
      /* A refused WRITE's payload is still on the wire: drop it to keep
       * the stream in step. */
      if (payload && nr.count)
        conn_read_into(c, NULL, nr.count, write_drained);
      continue;
    }
    if (payload) {
      tx->receiving = t;
      conn_read_into(c, t->buf, nr.count, write_received);
    } else
      dispatch(t);
  }
}

void
tx_input_closed(struct conn *c)
{
  /* A WRITE cut off in its payload will never be dispatched. */
  struct treq *t = c->tx.receiving;
  if (t) {
    c->tx.receiving = NULL;
    treq_sent(&t->out);
  }
}

void
tx_cleanup(struct conn *c)
{
  struct tx *tx = &c->tx;
  if (tx->metrics)
    metrics_add(&tx->metrics->conns_closed, 1);
  if (tx->exp)
    export_put(tx->exp);  /* the reference GO or EXPORT_NAME took */
  while (tx->free_reqs) {
    struct treq *t = tx->free_reqs;
    tx->free_reqs = t->next_free;
    free(t);
  }
}
