/* Shared by the block cache's unit tests: the disk below, reactor 0 on
 * this thread, and helpers that start requests and run them to their end.
 *
 * The disk below ("mem") keeps two images: what reads see, and what FLUSH
 * and FUA have made durable.  It completes requests at once, later
 * through the submitting reactor's mailbox, or only when the test says
 * (a queue), so that requests can be made to overlap on purpose. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdstack/blockcache.h"
#include "nbdstack/layer.h"
#include "reactor.h"
#include "blockcache-harness.h"

/* ---- The disk below ---- */

struct mem_disk mem;

static uint64_t
mem_size(struct nbds_layer *l)
{
  (void) l;
  return mem.size;
}

static int
mem_open(struct nbds_layer *l, const struct nbds_kv *kv, size_t nkv)
{
  (void) l, (void) kv, (void) nkv;
  return 0;
}

static void
mem_status(struct nbds_req *req)
{
  uint64_t pos = req->offset, end = pos + req->count;
  while (pos < end) {
    uint64_t next = (pos / BS + 1) * BS;
    if (next > end)
      next = end;
    bool zero = true;
    for (uint64_t i = pos; i < next && zero; i++)
      zero = mem.disk[i] == 0;
    if (!nbds_extents_add(req->extents, next - pos, zero ? HZ : 0))
      break;
    pos = next;
  }
}

static void
mem_apply(struct nbds_req *req)
{
  pthread_mutex_lock(&mem.lock);
  unsigned *fail = req->op == NBDS_OP_READ ? &mem.fail_reads :
    req->op == NBDS_OP_WRITE ? &mem.fail_writes : NULL;
  if (fail && *fail > 0) {
    --*fail;
    pthread_mutex_unlock(&mem.lock);
    nbds_req_complete(req, EIO);
    return;
  }
  unsigned char *d = mem.disk + req->offset;
  switch (req->op) {
  case NBDS_OP_READ:
  case NBDS_OP_WRITE:
    for (int i = 0; i < req->iovcnt; d += req->iov[i].iov_len, i++)
      if (req->op == NBDS_OP_READ)
        memcpy(req->iov[i].iov_base, d, req->iov[i].iov_len);
      else
        memcpy(d, req->iov[i].iov_base, req->iov[i].iov_len);
    break;
  case NBDS_OP_TRIM:
  case NBDS_OP_ZERO:
    memset(d, 0, req->count);
    break;
  case NBDS_OP_FLUSH:
    memcpy(mem.durable, mem.disk, mem.size);
    break;
  case NBDS_OP_BLOCK_STATUS:  /* answered when it arrived */
  case NBDS_OP_CACHE:
    break;
  }
  if (req->flags & NBDS_F_FUA)
    memcpy(mem.durable + req->offset, mem.disk + req->offset, req->count);
  pthread_mutex_unlock(&mem.lock);
  nbds_req_complete(req, 0);
}

static void
mem_apply_cb(void *arg)
{
  mem_apply(arg);
}

static void
mem_submit(struct nbds_layer *l, struct nbds_req *req)
{
  (void) l;
  struct nbds_blockcache_stats st;
  nbds_blockcache_stats(mem.cache, &st);
  pthread_mutex_lock(&mem.lock);
  if (st.bytes_cached > mem.limit || st.capacity > mem.limit)
    mem.over_limit++;
  mem.n[req->op]++;
  if (req->op == NBDS_OP_BLOCK_STATUS)
    mem_status(req);
  if (mem.nlog < 64)
    mem.log[mem.nlog++] = req->op;
  if (mem.mode == QUEUED)
    mem.queue[mem.nq++] = req;
  pthread_mutex_unlock(&mem.lock);
  if (mem.mode == NOW)
    mem_apply(req);
  else if (mem.mode == POSTED)
    nbds_reactor_post(nbds_reactor_self(), mem_apply_cb, req);
}

static const struct nbds_layer_ops mem_ops = {
  .name = "mem", .open = mem_open, .size = mem_size, .submit = mem_submit,
};

const struct nbds_layer_ops *
nbds_layer_type_find(const char *name)
{
  if (strcmp(name, "mem") == 0)
    return &mem_ops;
  if (strcmp(name, "blockcache") == 0)
    return &nbds_blockcache_ops;
  return NULL;
}

/* ---- Reactor 0, requests, the model ---- */

static struct nbds_reactor *reactor;
static struct ev_loop *loop;
uint64_t rng = 88172645463325252ull;

uint64_t
rnd_from(uint64_t *state, uint64_t n)
{
  *state ^= *state << 13;
  *state ^= *state >> 7;
  *state ^= *state << 17;
  return *state % n;
}

uint64_t
rnd(uint64_t n)
{
  return rnd_from(&rng, n);
}

void
fill_random(unsigned char *p, size_t len)
{
  for (size_t i = 0; i < len; i++)
    p[i] = rnd(256);
}

void
setup(void)
{
  reactor = reactor_create(0, false);
  cr_assert_not_null(reactor);
  loop = nbds_reactor_loop(reactor);
  pthread_mutex_init(&mem.lock, NULL);
}

void
teardown(void)
{
  reactor_destroy(reactor);
  free(mem.disk);
  free(mem.durable);
}

/* A disk of random bytes, durable, and a cache of `bytes` over it. */
struct nbds_layer *
stack(uint64_t size, enum mode mode, uint64_t bytes,
      const struct nbds_kv *more, size_t nmore)
{
  mem.size = size;
  mem.mode = mode;
  mem.disk = malloc(size);
  mem.durable = malloc(size);
  fill_random(mem.disk, size);
  memcpy(mem.durable, mem.disk, size);
  struct nbds_layer *below = nbds_layer_open("mem", NULL, NULL, 0);
  cr_assert_not_null(below);
  char s[32];
  snprintf(s, sizeof s, "%llu", (unsigned long long) bytes);
  struct nbds_kv kv[5] = { { "size", s }, { "block", "4K" } };
  for (size_t i = 0; i < nmore; i++)
    kv[2 + i] = more[i];
  struct nbds_layer *l = nbds_layer_open("blockcache", below, kv, 2 + nmore);
  cr_assert_not_null(l, "%s", nbds_last_error());
  mem.cache = l;
  mem.limit = bytes;
  return l;
}

struct nbds_blockcache_stats
stats(struct nbds_layer *l)
{
  struct nbds_blockcache_stats st;
  nbds_blockcache_stats(l, &st);
  return st;
}

/* write-hit=write-through: a write is below when it completes. */
bool through;

static void
io_done(struct nbds_req *req, int err)
{
  struct io *io = req->opaque;
  cr_assert(!io->done, "completed twice");
  io->done = true;
  io->err = err;
  if (err || req->op != NBDS_OP_WRITE)
    return;
  pthread_mutex_lock(&mem.lock);
  if (through)
    cr_assert_eq(memcmp(mem.disk + req->offset, io->buf, req->count), 0,
                 "a write-through write completed before reaching below");
  if (req->flags & NBDS_F_FUA)
    cr_assert_eq(memcmp(mem.durable + req->offset, io->buf, req->count), 0,
                 "a FUA write completed before it was durable");
  pthread_mutex_unlock(&mem.lock);
}

/* Start a request; READ and WRITE buffers are cut into up to 3 iovecs. */
void
start(struct nbds_layer *l, struct io *io, enum nbds_op op, uint32_t flags,
      uint64_t offset, uint64_t count, unsigned char *buf)
{
  memset(io, 0, sizeof *io);
  io->buf = buf;
  io->req = (struct nbds_req) {
    .op = op, .flags = flags, .offset = offset, .count = count,
    .done = io_done, .opaque = io,
  };
  if (op == NBDS_OP_READ || op == NBDS_OP_WRITE) {
    uint64_t a = count > 2 ? rnd(count / 2) : 0;
    uint64_t b = count > 2 ? a + rnd(count - a) : 0;
    io->iov[0] = (struct iovec) { buf, a };
    io->iov[1] = (struct iovec) { buf + a, b - a };
    io->iov[2] = (struct iovec) { buf + b, count - b };
    io->req.iov = io->iov;
    io->req.iovcnt = 3;
  }
  if (op == NBDS_OP_BLOCK_STATUS) {
    io->ex = (struct nbds_extents) { .v = io->ext, .cap = 16 };
    io->req.extents = &io->ex;
  }
  nbds_layer_submit(l, &io->req);
}

void
finish(struct io *io)
{
  ev_ref(loop);  /* let the loop sleep until a post wakes it */
  while (!io->done)
    ev_run(loop, EVRUN_ONCE);
  ev_unref(loop);
}

int
run(struct nbds_layer *l, enum nbds_op op, uint32_t flags, uint64_t offset,
    uint64_t count, unsigned char *buf)
{
  struct io io;
  start(l, &io, op, flags, offset, count, buf);
  finish(&io);
  return io.err;
}

/* Let posted work run. */
void
settle(void)
{
  for (int i = 0; i < 20; i++)
    ev_run(loop, EVRUN_NOWAIT);
}

/* Complete queued request i below. */
void
complete_at(unsigned i)
{
  cr_assert_lt(i, mem.nq);
  struct nbds_req *req = mem.queue[i];
  memmove(mem.queue + i, mem.queue + i + 1,
          (--mem.nq - i) * sizeof mem.queue[0]);
  mem_apply(req);
}

/* Complete every queued request below, and what that sets off. */
void
drain(void)
{
  do {
    while (mem.nq > 0)
      complete_at(0);
    settle();
  } while (mem.nq > 0);
}
