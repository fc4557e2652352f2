/* Exports and the request policy that sits above every stack: --discard
 * and --detect-zeroes, which qemu-nbd applies whatever the format, and the
 * cache mode's write cache setting, which must hold above any layer that
 * could keep a write (a block cache, a format's metadata cache), as QEMU
 * applies it in the BlockBackend above every node. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <ev.h>

#include "nbdstack/blockcache.h"
#include "allow.h"
#include "export.h"
#include "log.h"
#include "metrics.h"
#include "protocol.h"
#include "reactor.h"
#include "server.h"
#include "zero.h"

struct export *exports;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned closing;     /* withdrawn exports being flushed (reactor 0) */

void
exports_lock(void)
{
  pthread_mutex_lock(&lock);
}

void
exports_unlock(void)
{
  pthread_mutex_unlock(&lock);
}

void
export_add(struct export *e)
{
  e->metrics = metrics_new(server_config.threads);
  if (!e->metrics)
    nbds_log_error("export '%s': no memory for its counters: serving it "
                   "without", e->name);
  atomic_init(&e->refs, 1);  /* the list's */
  e->next = NULL;
  exports_lock();
  e->offered = true;
  struct export **p = &exports;
  while (*p)
    p = &(*p)->next;
  *p = e;
  exports_unlock();
}

struct export *
export_get(const uint8_t *name, size_t len)
{
  struct export *e;
  exports_lock();
  for (e = exports; e; e = e->next)
    if (e->offered && strlen(e->name) == len &&
        memcmp(e->name, name, len) == 0) {
      atomic_fetch_add(&e->refs, 1);
      break;
    }
  exports_unlock();
  return e;
}

void
export_free(struct export *e)
{
  if (e->top)
    nbds_layer_close_stack(e->top);
  metrics_free(e->metrics);
  allow_list_free(e->allow);
  free(e->name);
  free(e->description);
  free(e->section);
  free(e);
}

void (*export_closed_hook)(const char *name);

static void
close_withdrawn(void *arg)
{
  struct export *e = arg;
  nbds_log_info("export '%s': closed (withdrawn, its last client gone)",
                e->name);
  closing--;
  /* The hook may open the same image again: only once this stack is
   * closed. */
  char *name = e->name;
  e->name = NULL;
  export_free(e);
  if (export_closed_hook)
    export_closed_hook(name);
  free(name);
}

static void
closing_flushed(struct nbds_req *req, int err)
{
  struct export *e = req->opaque;
  if (err)
    nbds_log_error("export '%s': flush before closing failed: %s", e->name,
                   strerror(err));
  free(req);
  /* Not from inside the stack's own completion: close it from the loop. */
  nbds_reactor_post(server_main_reactor(), close_withdrawn, e);
}

/* On reactor 0: take withdrawn exports nobody holds off the list, flush
 * them and close them.  Nothing can take a new reference to them: only
 * offered exports are found. */
static void
reap(void *unused)
{
  (void) unused;
  struct export *dead = NULL;
  exports_lock();
  for (struct export **p = &exports; *p;) {
    struct export *e = *p;
    if (!e->offered && atomic_load(&e->refs) == 0) {
      *p = e->next;
      e->next = dead;
      dead = e;
    } else
      p = &e->next;
  }
  exports_unlock();
  while (dead) {
    struct export *e = dead;
    dead = e->next;
    struct nbds_req *req = calloc(1, sizeof *req);
    closing++;
    if (!req || e->readonly || !e->top->caps.can_flush) {
      free(req);
      close_withdrawn(e);
      continue;
    }
    *req = (struct nbds_req) { .op = NBDS_OP_FLUSH, .done = closing_flushed,
                               .opaque = e };
    nbds_layer_submit(e->top, req);
  }
}

void
export_put(struct export *e)
{
  if (atomic_fetch_sub(&e->refs, 1) == 1)
    nbds_reactor_post(server_main_reactor(), reap, NULL);
}

void
export_withdraw(struct export *e)
{
  exports_lock();
  e->offered = false;
  exports_unlock();
  export_put(e);
}

uint16_t
export_flags(const struct export *e, bool structured)
{
  const struct nbds_caps *caps = &e->top->caps;
  uint16_t f = NBD_FLAG_HAS_FLAGS;
  bool writable = caps->can_write && !e->readonly;

  if (!writable)
    f |= NBD_FLAG_READ_ONLY;
  if (caps->can_flush)
    f |= NBD_FLAG_SEND_FLUSH;
  if (caps->fua != NBDS_FUA_NONE)
    f |= NBD_FLAG_SEND_FUA;
  if (writable && caps->can_trim)
    f |= NBD_FLAG_SEND_TRIM;
  if (writable && caps->can_zero) {
    f |= NBD_FLAG_SEND_WRITE_ZEROES;
    if (caps->can_fast_zero)
      f |= NBD_FLAG_SEND_FAST_ZERO;
  }
  if (structured)
    f |= NBD_FLAG_SEND_DF;
  if (caps->can_cache)
    f |= NBD_FLAG_SEND_CACHE;
  if (caps->can_multi_conn && e->multi_conn)
    f |= NBD_FLAG_CAN_MULTI_CONN;
  return f;
}

static bool
iov_is_zero(const struct iovec *iov, int iovcnt)
{
  for (int i = 0; i < iovcnt; i++)
    if (!buffer_is_zero(iov[i].iov_base, iov[i].iov_len))
      return false;
  return true;
}

void
export_submit(struct export *e, struct nbds_req *req)
{
  switch (req->op) {
  case NBDS_OP_TRIM:
    if (e->discard == DISCARD_IGNORE) {
      nbds_req_complete(req, 0);  /* advisory: doing nothing is allowed */
      return;
    }
    break;
  case NBDS_OP_ZERO:
    if (e->discard == DISCARD_IGNORE)
      req->flags |= NBDS_F_NO_HOLE;
    break;
  case NBDS_OP_WRITE:
    if (e->detect_zeroes != DETECT_ZEROES_OFF && e->top->caps.can_zero &&
        iov_is_zero(req->iov, req->iovcnt)) {
      req->op = NBDS_OP_ZERO;
      if (e->detect_zeroes != DETECT_ZEROES_UNMAP)
        req->flags |= NBDS_F_NO_HOLE;
    }
    break;
  default:
    break;
  }
  if (!e->write_cache &&
      (req->op == NBDS_OP_WRITE || req->op == NBDS_OP_TRIM ||
       req->op == NBDS_OP_ZERO))
    req->flags |= NBDS_F_FUA;
  nbds_layer_submit(e->top, req);
}

struct sync_flush {
  struct nbds_req req;
  bool done;
  int err;
};

static void
sync_flush_done(struct nbds_req *req, int err)
{
  struct sync_flush *sf = req->opaque;
  sf->done = true;
  sf->err = err;
}

bool
exports_flush_all(void)
{
  bool ok = true;
  struct ev_loop *loop = nbds_reactor_loop(nbds_reactor_self());
  /* Every client is gone: close the withdrawn exports now, so that no
   * reap posted earlier unlinks one while the loop below walks the list. */
  reap(NULL);
  while (closing)
    ev_run(loop, EVRUN_ONCE);
  for (struct export *e = exports; e; e = e->next) {
    if (e->readonly || !e->top->caps.can_flush)
      continue;
    struct sync_flush sf = { .req = { .op = NBDS_OP_FLUSH,
                                      .done = sync_flush_done } };
    sf.req.opaque = &sf;
    nbds_layer_submit(e->top, &sf.req);
    while (!sf.done)
      ev_run(loop, EVRUN_ONCE);
    if (sf.err) {
      nbds_log_error("export '%s': flush at exit failed: %s", e->name,
                     strerror(sf.err));
      ok = false;
    }
  }
  return ok;
}

void
exports_log_stats(void)
{
  for (struct export *e = exports; e; e = e->next)
    for (struct nbds_layer *l = e->top; l; l = l->below)
      if (nbds_layer_is_blockcache(l)) {
        struct nbds_blockcache_stats st;
        nbds_blockcache_stats(l, &st);
        nbds_log_info("export '%s': block cache hits=%llu misses=%llu "
                      "dirty=%llu write-backs=%llu evictions=%llu "
                      "cached=%llu/%llu bytes", e->name,
                      (unsigned long long) st.hits,
                      (unsigned long long) st.misses,
                      (unsigned long long) st.dirty,
                      (unsigned long long) st.writebacks,
                      (unsigned long long) st.evictions,
                      (unsigned long long) st.bytes_cached,
                      (unsigned long long) st.capacity);
      }
}

void
exports_close_all(void)
{
  while (exports) {
    struct export *e = exports;
    exports = e->next;
    export_free(e);
  }
}
