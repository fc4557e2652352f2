/* The block cache, over an in-memory disk, on real reactors: reactor 0 on
 * the test's thread, and two more threads for the multi-reactor test.
 * The disk and the helpers are in blockcache-harness.c. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <criterion/redirect.h>
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdstack/blockcache.h"
#include "nbdstack/layer.h"
#include "reactor.h"
#include "blockcache-harness.h"

TestSuite(blockcache, .init = setup, .fini = teardown, .timeout = 120);

/* ---- The model test: every policy, every operation ---- */

struct combo {
  char rm[16], wh[16], wm[16];
  enum mode mode;
};

ParameterizedTestParameters(blockcache, model)
{
  static struct combo c[16];
  static const char *const rm[] = { "allocate", "bypass" };
  static const char *const wh[] = { "write-back", "write-through" };
  static const char *const wm[] = { "allocate", "no-allocate" };
  for (int i = 0; i < 16; i++) {
    strcpy(c[i].rm, rm[i & 1]);
    strcpy(c[i].wh, wh[(i >> 1) & 1]);
    strcpy(c[i].wm, wm[(i >> 2) & 1]);
    c[i].mode = i < 8 ? NOW : POSTED;
  }
  return cr_make_param_array(struct combo, c, 16, NULL);
}

enum { DISK = 48 * BS + 1536, STEPS = 1500 };

/* A range: inside a block, whole blocks, across blocks, or large. */
static void
pick(uint64_t *off, uint64_t *len)
{
  switch (rnd(5)) {
  case 0:
    *off = rnd(DISK - 1);
    *len = 1 + rnd(BS - *off % BS < DISK - *off ? BS - *off % BS
                                               : DISK - *off);
    return;
  case 1:
    *off = rnd(DISK / BS) * BS;
    *len = BS * (1 + rnd(3));
    break;
  case 2:
    *off = rnd(DISK - 1);
    *len = 1 + rnd(3 * BS);
    break;
  case 3:  /* more than the cache holds */
    *off = rnd(DISK / 2);
    *len = 1 + rnd(20 * BS);
    break;
  default:  /* the short last block */
    *off = DISK - 1 - rnd(2 * BS);
    *len = DISK - *off;
  }
  if (*off + *len > DISK)
    *len = DISK - *off;
}

static void
check_read(struct nbds_layer *l, const unsigned char *model, uint64_t off,
           uint64_t len)
{
  unsigned char *buf = malloc(len);
  cr_assert_eq(run(l, NBDS_OP_READ, 0, off, len, buf), 0);
  cr_assert_eq(memcmp(buf, model + off, len), 0, "read %llu+%llu is wrong",
               (unsigned long long) off, (unsigned long long) len);
  free(buf);
}

/* Up to n reads and writes at once, on ranges that do not overlap. */
static void
batch(struct nbds_layer *l, unsigned char *model, int want)
{
  enum { N = 4 };
  struct io io[N];
  unsigned char *buf[N];
  uint64_t off[N], len[N];
  bool write[N];
  uint32_t fua[N];
  int n = 0;
  for (int tries = 0; tries < 20 && n < want; tries++) {
    pick(&off[n], &len[n]);
    bool clash = false;
    for (int j = 0; j < n; j++)
      clash |= off[n] < off[j] + len[j] && off[j] < off[n] + len[n];
    if (clash)
      continue;
    write[n] = rnd(2);
    fua[n] = write[n] && rnd(6) == 0 ? NBDS_F_FUA : 0;
    buf[n] = malloc(len[n]);
    if (write[n]) {
      fill_random(buf[n], len[n]);
      memcpy(model + off[n], buf[n], len[n]);
    }
    n++;
  }
  for (int i = 0; i < n; i++)
    start(l, &io[i], write[i] ? NBDS_OP_WRITE : NBDS_OP_READ, fua[i], off[i],
          len[i], buf[i]);
  for (int i = 0; i < n; i++) {
    finish(&io[i]);
    cr_assert_eq(io[i].err, 0);
    cr_assert_eq(memcmp(buf[i], model + off[i], len[i]), 0,
                 "a read in a batch differs from the model");
    free(buf[i]);
  }
}

static void
check_status(struct nbds_layer *l, const unsigned char *model)
{
  uint64_t off, len;
  pick(&off, &len);
  struct io io;
  start(l, &io, NBDS_OP_BLOCK_STATUS, 0, off, len, NULL);
  finish(&io);
  cr_assert_eq(io.err, 0);
  cr_assert_geq(io.ex.count, 1);
  uint64_t pos = off;
  for (size_t i = 0; i < io.ex.count && pos < off + len; i++) {
    uint64_t end = pos + io.ext[i].length;
    for (uint64_t b = pos; (io.ext[i].flags & NBDS_EXTENT_ZERO) &&
         b < end && b < off + len; b++)
      cr_assert_eq(model[b], 0, "byte %llu is reported zero but is not",
                   (unsigned long long) b);
    pos = end;
  }
}

ParameterizedTest(struct combo *c, blockcache, model)
{
  struct nbds_kv kv[] = {
    { "read-miss", c->rm }, { "write-hit", c->wh }, { "write-miss", c->wm },
  };
  rng += c->mode * 16 + c->rm[0] + c->wh[6] * 3 + c->wm[0] * 5;
  struct nbds_layer *l = stack(DISK, c->mode, 40 * 1024, kv, 3);
  through = strcmp(c->wh, "write-through") == 0;
  unsigned char *model = malloc(DISK);
  memcpy(model, mem.disk, DISK);

  for (int step = 0; step < STEPS; step++) {
    uint64_t off, len;
    pick(&off, &len);
    unsigned what = rnd(100);
    if (what < 60)
      batch(l, model, what < 45 ? 1 : 4);
    else if (what < 65) {
      cr_assert_eq(run(l, NBDS_OP_FLUSH, 0, 0, 0, NULL), 0);
      cr_assert_eq(memcmp(mem.durable, model, DISK), 0,
                   "after FLUSH the disk below differs from the model");
      cr_assert_eq(stats(l).dirty, 0);
    } else if (what < 75) {
      enum nbds_op op = what < 70 ? NBDS_OP_TRIM : NBDS_OP_ZERO;
      uint32_t flags = rnd(4) == 0 ? NBDS_F_FUA : 0;
      cr_assert_eq(run(l, op, flags, off, len, NULL), 0);
      memset(model + off, 0, len);
    } else if (what < 80)
      check_status(l, model);
    else
      cr_assert_eq(run(l, NBDS_OP_CACHE, 0, off, len, NULL), 0);
    struct nbds_blockcache_stats st = stats(l);
    cr_assert_leq(st.bytes_cached, st.capacity);
    cr_assert_leq(st.capacity, 40 * 1024);
    cr_assert_eq(mem.over_limit, 0, "the cache grew past its size");
  }
  check_read(l, model, 0, DISK);
  cr_assert_eq(run(l, NBDS_OP_FLUSH, 0, 0, 0, NULL), 0);
  cr_assert_eq(memcmp(mem.durable, model, DISK), 0);
  free(model);
  nbds_layer_close_stack(l);
}

/* ---- Eviction ---- */

/* Twice the cache's size written without a FLUSH: every dirty block that
 * had to leave was written back first, so everything reads back. */
static void
twice_the_cache(enum mode mode)
{
  enum { SIZE = 16 * BS };
  struct nbds_layer *l = stack(SIZE * 3, mode, 32 * 1024, NULL, 0);
  uint64_t cap = stats(l).capacity;
  cr_assert_lt(cap, 32 * 1024);
  unsigned char *model = malloc(SIZE * 3);
  memcpy(model, mem.disk, SIZE * 3);
  unsigned char buf[BS + 100];
  for (uint64_t off = 0; off < 2 * cap; off += BS) {
    fill_random(buf, sizeof buf);
    /* Whole blocks, and partial ones that need a fill first. */
    uint64_t len = off / BS % 3 == 0 ? BS : BS - 300;
    cr_assert_eq(run(l, NBDS_OP_WRITE, 0, off + BS - len, len, buf), 0);
    memcpy(model + off + BS - len, buf, len);
    cr_assert_leq(stats(l).dirty * BS, cap);
  }
  struct nbds_blockcache_stats st = stats(l);
  cr_assert_geq(st.writebacks, 2 * cap / BS - cap / BS);
  cr_assert_gt(st.evictions, 0);
  check_read(l, model, 0, SIZE * 3);
  cr_assert_eq(run(l, NBDS_OP_FLUSH, 0, 0, 0, NULL), 0);
  cr_assert_eq(memcmp(mem.durable, model, SIZE * 3), 0);
  cr_assert_eq(mem.over_limit, 0);
  free(model);
  nbds_layer_close_stack(l);
}

Test(blockcache, twice_the_cache_now) { twice_the_cache(NOW); }
Test(blockcache, twice_the_cache_posted) { twice_the_cache(POSTED); }

/* ---- Overlap: the waiter paths, with completions held in a queue ---- */

Test(blockcache, two_reads_share_one_fill)
{
  struct nbds_layer *l = stack(16 * BS, QUEUED, 64 * 1024, NULL, 0);
  unsigned char a[512], b[1024];
  struct io ia, ib;
  start(l, &ia, NBDS_OP_READ, 0, 0, sizeof a, a);
  start(l, &ib, NBDS_OP_READ, 0, 1024, sizeof b, b);
  cr_assert_eq(mem.nq, 1, "the second read waits for the first one's fill");
  cr_assert(!ia.done && !ib.done);
  drain();
  cr_assert(ia.done && ib.done);
  cr_assert_eq(memcmp(a, mem.disk, sizeof a), 0);
  cr_assert_eq(memcmp(b, mem.disk + 1024, sizeof b), 0);
  cr_assert_eq(mem.n[NBDS_OP_READ], 1);
  cr_assert_eq(stats(l).hits, 1);
  cr_assert_eq(stats(l).misses, 1);
  nbds_layer_close_stack(l);
}

Test(blockcache, read_waits_for_a_partial_write)
{
  struct nbds_layer *l = stack(16 * BS, QUEUED, 64 * 1024, NULL, 0);
  unsigned char w[100], r[BS];
  fill_random(w, sizeof w);
  struct io iw, ir;
  start(l, &iw, NBDS_OP_WRITE, 0, BS + 100, sizeof w, w);
  start(l, &ir, NBDS_OP_READ, 0, BS, BS, r);
  cr_assert_eq(mem.nq, 1, "only the write's fill went below");
  drain();
  cr_assert(iw.done && ir.done);
  cr_assert_eq(memcmp(r + 100, w, sizeof w), 0, "the read saw the write");
  cr_assert_eq(memcmp(r, mem.disk + BS, 100), 0);
  cr_assert_eq(stats(l).dirty, 1);
  start(l, &iw, NBDS_OP_FLUSH, 0, 0, 0, NULL);
  drain();
  cr_assert(iw.done);
  nbds_layer_close_stack(l);
}

/* Two slots, both dirty: two misses each write one back, wait for it,
 * and only then fill; a FLUSH meanwhile waits for those write-backs. */
Test(blockcache, misses_wait_for_write_backs)
{
  struct nbds_layer *l = stack(16 * BS, QUEUED, 10000, NULL, 0);
  cr_assert_eq(stats(l).capacity, 2 * BS);
  unsigned char w0[BS], w1[BS], r2[BS], r3[BS];
  fill_random(w0, BS);
  fill_random(w1, BS);
  cr_assert_eq(run(l, NBDS_OP_WRITE, 0, 0, BS, w0), 0);
  cr_assert_eq(run(l, NBDS_OP_WRITE, 0, BS, BS, w1), 0);
  cr_assert_eq(mem.nq, 0, "whole-block writes need nothing from below");
  struct io i2, i3, fl;
  start(l, &i2, NBDS_OP_READ, 0, 2 * BS, BS, r2);
  start(l, &i3, NBDS_OP_READ, 0, 3 * BS, BS, r3);
  start(l, &fl, NBDS_OP_FLUSH, 0, 0, 0, NULL);
  cr_assert_eq(mem.nq, 2, "two write-backs, and nothing else yet");
  cr_assert(mem.log[0] == NBDS_OP_WRITE && mem.log[1] == NBDS_OP_WRITE);
  drain();
  cr_assert(i2.done && i3.done && fl.done);
  cr_assert_eq(fl.err, 0);
  cr_assert_eq(mem.nlog, 5);
  cr_assert_eq(mem.n[NBDS_OP_READ], 2);
  cr_assert_eq(mem.n[NBDS_OP_FLUSH], 1);
  cr_assert_eq(memcmp(r2, mem.disk + 2 * BS, BS), 0);
  cr_assert_eq(memcmp(r3, mem.disk + 3 * BS, BS), 0);
  cr_assert_eq(memcmp(mem.durable, w0, BS), 0);
  cr_assert_eq(memcmp(mem.durable + BS, w1, BS), 0);
  struct nbds_blockcache_stats st = stats(l);
  cr_assert_eq(st.writebacks, 2);
  cr_assert_eq(st.evictions, 2);
  cr_assert_eq(st.dirty, 0);
  nbds_layer_close_stack(l);
}

/* A TRIM waits for a fill in progress, and a read behind the TRIM does
 * not fill from below before the TRIM has landed. */
Test(blockcache, trim_and_fill)
{
  struct nbds_layer *l = stack(16 * BS, QUEUED, 64 * 1024, NULL, 0);
  unsigned char r1[BS], r2[BS], zero[BS] = { 0 }, old[BS];
  memcpy(old, mem.disk, BS);
  struct io i1, t, i2;
  start(l, &i1, NBDS_OP_READ, 0, 0, BS, r1);
  start(l, &t, NBDS_OP_TRIM, 0, 0, 2 * BS, NULL);
  cr_assert_eq(mem.nq, 1, "the TRIM waits for the fill");
  start(l, &i2, NBDS_OP_READ, 0, 0, BS, r2);
  drain();
  cr_assert(i1.done && t.done && i2.done);
  cr_assert_eq(memcmp(r1, old, BS), 0);
  cr_assert_eq(memcmp(r2, zero, BS), 0);
  nbds_layer_close_stack(l);
}

/* write-miss=no-allocate: a fill of the block waits for the write. */
Test(blockcache, fill_waits_for_a_write_around)
{
  struct nbds_kv kv[] = { { "write-miss", "no-allocate" } };
  struct nbds_layer *l = stack(16 * BS, QUEUED, 64 * 1024, kv, 1);
  unsigned char w[512], r[BS];
  fill_random(w, sizeof w);
  struct io iw, ir;
  start(l, &iw, NBDS_OP_WRITE, 0, 1000, sizeof w, w);
  start(l, &ir, NBDS_OP_READ, 0, 0, BS, r);
  cr_assert_eq(mem.nq, 1, "no fill while the write is on its way");
  drain();
  cr_assert(iw.done && ir.done);
  cr_assert_eq(memcmp(r + 1000, w, sizeof w), 0);
  cr_assert_eq(stats(l).dirty, 0);
  nbds_layer_close_stack(l);
}

/* ---- Counters, status, flags, options, close ---- */

Test(blockcache, counters)
{
  struct nbds_layer *l = stack(16 * BS, NOW, 64 * 1024, NULL, 0);
  unsigned char buf[BS];
  run(l, NBDS_OP_READ, 0, 0, 512, buf);          /* miss */
  run(l, NBDS_OP_READ, 0, 1024, 512, buf);       /* hit */
  run(l, NBDS_OP_WRITE, 0, BS, BS, buf);         /* miss */
  run(l, NBDS_OP_WRITE, 0, BS + 8, 16, buf);     /* hit */
  run(l, NBDS_OP_READ, 0, BS - 512, 1024, buf);  /* two hits */
  struct nbds_blockcache_stats st = stats(l);
  cr_assert_eq(st.hits, 4);
  cr_assert_eq(st.misses, 2);
  cr_assert_eq(st.dirty, 1);
  cr_assert_eq(st.bytes_cached, 2 * BS);
  cr_assert_eq(st.writebacks, 0);
  run(l, NBDS_OP_FLUSH, 0, 0, 0, NULL);
  st = stats(l);
  cr_assert_eq(st.writebacks, 1);
  cr_assert_eq(st.dirty, 0);
  cr_assert_eq(mem.n[NBDS_OP_FLUSH], 1);
  nbds_layer_close_stack(l);
}

/* A dirty block is data, even when below answers while the block is
 * only in the cache and its write-back lands before the answer is back. */
Test(blockcache, dirty_blocks_are_data)
{
  struct nbds_layer *l = stack(16 * BS, QUEUED, 64 * 1024, NULL, 0);
  memset(mem.disk, 0, 16 * BS);
  unsigned char buf[BS];
  memset(buf, 'd', BS);
  struct io w, st, fl;
  start(l, &w, NBDS_OP_WRITE, 0, 3 * BS, BS, buf);
  cr_assert(w.done);
  start(l, &st, NBDS_OP_BLOCK_STATUS, 0, 0, 8 * BS, NULL);
  start(l, &fl, NBDS_OP_FLUSH, 0, 0, 0, NULL);
  cr_assert_eq(mem.nq, 2);
  complete_at(1);   /* the write-back */
  settle();
  drain();
  cr_assert(st.done && fl.done);
  cr_assert_eq(stats(l).dirty, 0);
  cr_assert_eq(st.ex.count, 2);
  cr_assert_eq(st.ext[0].length, 3 * BS);
  cr_assert_eq(st.ext[0].flags, HZ);
  cr_assert_eq(st.ext[1].flags, 0, "the block was dirty when asked");
  cr_assert_eq(st.ex.covered, 8 * BS);
  nbds_layer_close_stack(l);
}

/* A failed write-back keeps the block dirty: the FLUSH fails, the data
 * still reads back, and the next FLUSH writes it.  A miss that needed
 * the slot fails too; a failed fill leaves nothing behind. */
Test(blockcache, failures_below)
{
  struct nbds_layer *l = stack(16 * BS, NOW, 10000, NULL, 0);
  unsigned char w[BS], r[BS], old[BS];
  fill_random(w, BS);
  memcpy(old, mem.disk + 5 * BS, BS);
  cr_assert_eq(run(l, NBDS_OP_WRITE, 0, 0, BS, w), 0);
  mem.fail_writes = 1;
  cr_assert_eq(run(l, NBDS_OP_FLUSH, 0, 0, 0, NULL), EIO);
  cr_assert_eq(stats(l).dirty, 1);
  cr_assert_eq(run(l, NBDS_OP_WRITE, 0, BS, BS, w), 0);
  mem.fail_writes = 1;
  cr_assert_eq(run(l, NBDS_OP_READ, 0, 4 * BS, BS, r), EIO,
               "no room, and making room failed");
  cr_assert_eq(stats(l).dirty, 2);
  mem.fail_reads = 1;
  cr_assert_eq(run(l, NBDS_OP_READ, 0, 5 * BS + 7, 100, r), EIO);
  cr_assert_eq(run(l, NBDS_OP_READ, 0, 5 * BS, BS, r), 0);
  cr_assert_eq(memcmp(r, old, BS), 0);
  cr_assert_eq(run(l, NBDS_OP_READ, 0, 0, BS, r), 0);
  cr_assert_eq(memcmp(r, w, BS), 0);
  cr_assert_eq(run(l, NBDS_OP_FLUSH, 0, 0, 0, NULL), 0);
  cr_assert_eq(memcmp(mem.durable, w, BS), 0);
  cr_assert_eq(memcmp(mem.durable + BS, w, BS), 0);
  nbds_layer_close_stack(l);
}

Test(blockcache, fast_zero_over_dirty_changes_nothing)
{
  struct nbds_layer *l = stack(16 * BS, NOW, 64 * 1024, NULL, 0);
  unsigned char buf[BS], back[BS];
  fill_random(buf, BS);
  run(l, NBDS_OP_WRITE, 0, BS, BS, buf);
  cr_assert_eq(run(l, NBDS_OP_ZERO, NBDS_F_FAST_ZERO, 0, 4 * BS, NULL),
               ENOTSUP);
  cr_assert_eq(mem.n[NBDS_OP_ZERO], 0);
  run(l, NBDS_OP_READ, 0, BS, BS, back);
  cr_assert_eq(memcmp(back, buf, BS), 0);
  /* Without FAST_ZERO, a partly covered dirty block keeps its other
   * bytes, and a covered one is dropped. */
  cr_assert_eq(run(l, NBDS_OP_ZERO, 0, BS + 100, 200, NULL), 0);
  run(l, NBDS_OP_READ, 0, BS, BS, back);
  memset(buf + 100, 0, 200);
  cr_assert_eq(memcmp(back, buf, BS), 0);
  cr_assert_eq(stats(l).dirty, 1);
  cr_assert_eq(run(l, NBDS_OP_TRIM, 0, 0, 4 * BS, NULL), 0);
  cr_assert_eq(stats(l).dirty, 0);
  cr_assert_eq(stats(l).bytes_cached, 0);
  nbds_layer_close_stack(l);
}

Test(blockcache, open_and_caps)
{
  static const struct { const char *key, *value, *want; } bad[] = {
    { "bogus", "1", "unknown option 'bogus'" },
    { "size", "lots", "invalid size 'lots'" },
    { "size", "-1M", "invalid size" },
    { "size", "4K", "cannot hold one block" },
    { "block", "3K", "power of two" },
    { "block", "2K", "power of two" },
    { "block", "8M", "power of two" },
    { "read-miss", "sometimes", "read-miss must be allocate or bypass" },
    { "write-hit", "writeback", "write-hit must be" },
    { "write-miss", "around", "write-miss must be" },
  };
  mem.size = 1 << 20;
  struct nbds_layer *below = nbds_layer_open("mem", NULL, NULL, 0);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    struct nbds_kv kv[] = { { "size", "1M" }, { bad[i].key, bad[i].value } };
    cr_assert_null(nbds_layer_open("blockcache", below, kv, 2));
    cr_assert(strstr(nbds_last_error(), bad[i].want), "'%s' lacks '%s'",
              nbds_last_error(), bad[i].want);
  }
  cr_assert_null(nbds_layer_open("blockcache", below, NULL, 0));
  cr_assert(strstr(nbds_last_error(), "size is required"));
  struct nbds_kv kv[] = { { "size", "1G" }, { "block", "4M" } };
  struct nbds_layer *l = nbds_layer_open("blockcache", below, kv, 2);
  cr_assert_not_null(l, "%s", nbds_last_error());
  struct nbds_blockcache_stats st;
  nbds_blockcache_stats(l, &st);
  cr_assert_eq(st.capacity, 255 * (4 << 20), "bookkeeping costs a block");
  cr_assert(l->caps.can_flush && l->caps.can_cache && l->caps.can_multi_conn);
  cr_assert_eq(l->caps.fua, NBDS_FUA_EMULATE, "FUA is below's");
  cr_assert_eq(l->caps.block_pref, 4 << 20);
  cr_assert_eq(l->size, 1 << 20);
  cr_assert(nbds_layer_is_blockcache(l));
  cr_assert(!nbds_layer_is_blockcache(l->below));
  nbds_layer_close_stack(l);
}

static void
redirect(void)
{
  setup();
  cr_redirect_stderr();
}

Test(blockcache_close, reports_dirty_blocks, .init = redirect,
     .fini = teardown)
{
  struct nbds_layer *l = stack(16 * BS, NOW, 64 * 1024, NULL, 0);
  unsigned char buf[BS] = { 0 };
  run(l, NBDS_OP_WRITE, 0, 15 * BS + 1, 10, buf);
  nbds_layer_close_stack(l);
  fflush(stderr);
  cr_assert_stderr_eq_str("nbdstack: blockcache: closing with 1 dirty block "
                          "(4096 bytes) never written back\n");
}

/* ---- Two reactors at once ---- */

/* Each thread owns every other 512-byte sector and writes, zeroes and
 * reads its own, so both work on the same blocks all the time; the cache
 * holds 6 blocks of 32, so blocks are evicted and written back by one
 * reactor while the other waits for them. */
enum { MT_DISK = 32 * BS, MT_STEPS = 1500 };

struct worker {
  int t;
  struct nbds_layer *l;
  struct nbds_reactor *r;
  pthread_t thread;
  sem_t *done;
  uint64_t rng;
  unsigned step;
  struct nbds_req req;
  struct iovec iov;
  unsigned char buf[3 * BS];
  unsigned char mine[MT_DISK];     /* this thread's sectors */
  unsigned errors, wrong_thread, mismatches;
};

static void w_step(void *arg);

static void
w_done(struct nbds_req *req, int err)
{
  struct worker *w = req->opaque;
  if (!pthread_equal(pthread_self(), w->thread))
    w->wrong_thread++;
  if (err)
    w->errors++;
  if (req->op == NBDS_OP_READ)
    for (uint64_t s = req->offset / 512; s < (req->offset + req->count) / 512;
         s++)
      if (s % 2 == (uint64_t) w->t &&
          memcmp(w->buf + (s * 512 - req->offset), w->mine + s * 512, 512))
        w->mismatches++;
  /* Through the mailbox: a hit completes inline, and 1500 of them would
   * nest. */
  nbds_reactor_post(w->r, w_step, w);
}

static void
w_step(void *arg)
{
  struct worker *w = arg;
  if (w->step == 0)
    w->thread = pthread_self();
  if (w->step++ == MT_STEPS) {
    sem_post(w->done);
    return;
  }
  uint64_t sector = rnd_from(&w->rng, MT_DISK / 1024) * 2 + w->t;
  unsigned what = rnd_from(&w->rng, 100);
  w->req = (struct nbds_req) {
    .op = NBDS_OP_WRITE, .offset = sector * 512, .count = 512,
    .iov = &w->iov, .iovcnt = 1, .done = w_done, .opaque = w,
  };
  w->iov = (struct iovec) { w->buf, 512 };
  if (what < 45) {
    for (int i = 0; i < 512; i++)
      w->buf[i] = rnd_from(&w->rng, 256);
    memcpy(w->mine + sector * 512, w->buf, 512);
    w->req.flags = what < 5 ? NBDS_F_FUA : 0;
  } else if (what < 55) {
    w->req.op = NBDS_OP_ZERO;
    memset(w->mine + sector * 512, 0, 512);
  } else if (what < 60) {
    w->req.op = NBDS_OP_FLUSH;
    w->req.offset = w->req.count = 0;
  } else {
    w->req.op = NBDS_OP_READ;
    w->req.offset = rnd_from(&w->rng, MT_DISK / 512 - 24) * 512;
    w->req.count = (1 + rnd_from(&w->rng, 24)) * 512;
    w->iov.iov_len = w->req.count;
  }
  nbds_layer_submit(w->l, &w->req);
}

Test(blockcache, two_reactors)
{
  struct nbds_layer *l = stack(MT_DISK, POSTED, 27 * 1024, NULL, 0);
  cr_assert_eq(stats(l).capacity, 6 * BS);
  static struct worker w[2];
  sem_t done;
  sem_init(&done, 0, 0);
  for (int t = 0; t < 2; t++) {
    w[t] = (struct worker) { .t = t, .l = l, .done = &done, .rng = 7 + t };
    memcpy(w[t].mine, mem.disk, MT_DISK);
    w[t].r = reactor_create(1 + t, false);
    cr_assert_not_null(w[t].r);
    reactor_start(w[t].r);
  }
  for (int t = 0; t < 2; t++)
    nbds_reactor_post(w[t].r, w_step, &w[t]);
  sem_wait(&done);
  sem_wait(&done);
  for (int t = 0; t < 2; t++) {
    reactor_stop(w[t].r);
    reactor_destroy(w[t].r);
    cr_expect_eq(w[t].errors, 0);
    cr_expect_eq(w[t].wrong_thread, 0, "completed on another reactor");
    cr_expect_eq(w[t].mismatches, 0, "read back what it did not write");
  }
  struct nbds_blockcache_stats st = stats(l);
  cr_expect_gt(st.writebacks, 0);
  cr_expect_gt(st.evictions, 0);
  cr_assert_eq(run(l, NBDS_OP_FLUSH, 0, 0, 0, NULL), 0);
  for (uint64_t s = 0; s < MT_DISK / 512; s++)
    cr_assert_eq(memcmp(mem.durable + s * 512, w[s % 2].mine + s * 512, 512),
                 0, "sector %llu is wrong after the final FLUSH",
                 (unsigned long long) s);
  cr_assert_eq(mem.over_limit, 0);
  sem_destroy(&done);
  nbds_layer_close_stack(l);
}
