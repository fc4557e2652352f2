/* Unit tests for the layer contract and the layers that need no disk: the
 * raw format and the cache policy, over a recording test layer. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "nbdstack/layer.h"

extern const struct nbds_layer_ops nbds_raw_ops;
extern const struct nbds_layer_ops nbds_cachepolicy_ops;

/* The recording layer: completes every request at once and remembers it. */
#define MAX_SEEN 16
static struct {
  enum nbds_op op;
  uint32_t flags;
  uint64_t offset;
} seen[MAX_SEEN];
static int nseen;
static int fail_flushes;       /* fail this many flushes with EIO */
static struct nbds_caps rec_caps;
static uint64_t rec_size;

static int
rec_open(struct nbds_layer *l, const struct nbds_kv *kv, size_t nkv)
{
  (void) l, (void) kv, (void) nkv;
  return 0;
}

static uint64_t
rec_size_fn(struct nbds_layer *l)
{
  (void) l;
  return rec_size;
}

static void
rec_caps_fn(struct nbds_layer *l, struct nbds_caps *caps)
{
  (void) l;
  *caps = rec_caps;
}

static void
rec_submit(struct nbds_layer *l, struct nbds_req *req)
{
  (void) l;
  cr_assert_lt(nseen, MAX_SEEN);
  seen[nseen].op = req->op;
  seen[nseen].flags = req->flags;
  seen[nseen].offset = req->offset;
  nseen++;
  int err = 0;
  if (req->op == NBDS_OP_FLUSH && fail_flushes > 0) {
    fail_flushes--;
    err = EIO;
  }
  nbds_req_complete(req, err);
}

static const struct nbds_layer_ops rec_ops = {
  .name = "rec", .open = rec_open, .size = rec_size_fn, .caps = rec_caps_fn,
  .submit = rec_submit,
};

const struct nbds_layer_ops *
nbds_layer_type_find(const char *name)
{
  if (strcmp(name, "rec") == 0) return &rec_ops;
  if (strcmp(name, "raw") == 0) return &nbds_raw_ops;
  if (strcmp(name, "cachepolicy") == 0) return &nbds_cachepolicy_ops;
  return NULL;
}

static void
setup(void)
{
  nseen = 0;
  fail_flushes = 0;
  rec_size = 1 << 20;
  rec_caps = (struct nbds_caps) {
    .can_write = true, .can_flush = true, .fua = NBDS_FUA_NATIVE,
    .can_trim = true, .can_zero = true, .can_fast_zero = true,
    .can_extents = true, .can_cache = true, .can_multi_conn = true,
    .block_min = 1, .block_pref = 4096, .block_max = 32 << 20,
  };
}

/* A stack rec <- cachepolicy(mode). */
static struct nbds_layer *
stack(const char *mode)
{
  struct nbds_layer *rec = nbds_layer_open("rec", NULL, NULL, 0);
  cr_assert_not_null(rec);
  struct nbds_kv kv[] = { { "mode", mode } };
  struct nbds_layer *cp = nbds_layer_open("cachepolicy", rec, kv, 1);
  cr_assert_not_null(cp, "%s", nbds_last_error());
  return cp;
}

struct result {
  bool done;
  int err;
};

static void
done_cb(struct nbds_req *req, int err)
{
  struct result *r = req->opaque;
  r->done = true;
  r->err = err;
}

static int
run(struct nbds_layer *l, enum nbds_op op, uint32_t flags, uint64_t offset)
{
  static char buf[512];
  struct iovec iov = { buf, sizeof buf };
  struct result res = { 0 };
  struct nbds_req req = {
    .op = op, .flags = flags, .offset = offset,
    .count = op == NBDS_OP_FLUSH ? 0 : sizeof buf,
    .iov = &iov, .iovcnt = 1, .done = done_cb, .opaque = &res,
  };
  nbds_layer_submit(l, &req);
  cr_assert(res.done, "the test layer completes synchronously");
  return res.err;
}

TestSuite(layer, .init = setup);

Test(layer, caps_bottom_up_invariants)
{
  rec_caps.can_write = false;
  rec_caps.fua = NBDS_FUA_NONE;
  struct nbds_layer *l = stack("writeback");
  /* Nothing writable may advertise trim or zero. */
  cr_assert_not(l->caps.can_trim);
  cr_assert_not(l->caps.can_zero);
  cr_assert_not(l->caps.can_fast_zero);
  /* A layer that can flush but has no native FUA gets it emulated. */
  cr_assert_eq(l->caps.fua, NBDS_FUA_EMULATE);
  cr_assert_eq(l->size, 1 << 20);
  nbds_layer_close_stack(l);
}

Test(layer, unknown_type_and_options)
{
  cr_assert_null(nbds_layer_open("no-such-layer", NULL, NULL, 0));
  cr_assert(strstr(nbds_last_error(), "no-such-layer"));
  struct nbds_layer *rec = nbds_layer_open("rec", NULL, NULL, 0);
  struct nbds_kv kv[] = { { "bogus", "1" } };
  cr_assert_null(nbds_layer_open("raw", rec, kv, 1));
  cr_assert(strstr(nbds_last_error(), "bogus"));
  struct nbds_kv mode[] = { { "mode", "sometimes" } };
  cr_assert_null(nbds_layer_open("cachepolicy", rec, mode, 1));
  nbds_layer_close_stack(rec);
}

Test(layer, raw_offset_and_size)
{
  rec_size = 1000;
  struct nbds_layer *rec = nbds_layer_open("rec", NULL, NULL, 0);
  struct nbds_kv kv[] = { { "offset", "100" } };
  struct nbds_layer *raw = nbds_layer_open("raw", rec, kv, 1);
  cr_assert_not_null(raw);
  /* 900 bytes from the offset on, rounded up to a whole sector. */
  cr_assert_eq(raw->size, 1024);
  run(raw, NBDS_OP_WRITE, 0, 0);
  run(raw, NBDS_OP_FLUSH, 0, 0);
  cr_assert_eq(seen[0].offset, 100);
  cr_assert_eq(seen[1].op, NBDS_OP_FLUSH);
  cr_assert_eq(seen[1].offset, 0);
  nbds_layer_close_stack(raw);

  rec = nbds_layer_open("rec", NULL, NULL, 0);
  struct nbds_kv exact[] = { { "offset", "100" }, { "round", "off" } };
  raw = nbds_layer_open("raw", rec, exact, 2);
  cr_assert_not_null(raw);
  cr_assert_eq(raw->size, 900, "round=off keeps the exact size");
  nbds_layer_close_stack(raw);

  rec = nbds_layer_open("rec", NULL, NULL, 0);
  struct nbds_kv beyond[] = { { "offset", "1001" } };
  cr_assert_null(nbds_layer_open("raw", rec, beyond, 1));
  nbds_layer_close_stack(rec);
}

Test(layer, writeback_flush_elision)
{
  struct nbds_layer *l = stack("writeback");
  cr_assert_eq(run(l, NBDS_OP_FLUSH, 0, 0), 0);
  cr_assert_eq(nseen, 0, "a flush with nothing written is free");
  run(l, NBDS_OP_WRITE, 0, 0);
  cr_assert_eq(seen[0].flags & NBDS_F_FUA, 0, "writeback adds no FUA");
  cr_assert_eq(run(l, NBDS_OP_FLUSH, 0, 0), 0);
  cr_assert_eq(nseen, 2);
  cr_assert_eq(seen[1].op, NBDS_OP_FLUSH);
  run(l, NBDS_OP_FLUSH, 0, 0);
  cr_assert_eq(nseen, 2, "nothing written since the last flush");
  nbds_layer_close_stack(l);
}

Test(layer, fua_native)
{
  struct nbds_layer *l = stack("writethrough");
  run(l, NBDS_OP_WRITE, NBDS_F_FUA, 0);
  run(l, NBDS_OP_ZERO, NBDS_F_FUA, 0);
  run(l, NBDS_OP_TRIM, NBDS_F_FUA, 0);
  cr_assert_eq(nseen, 3);
  for (int i = 0; i < 3; i++)
    cr_assert(seen[i].flags & NBDS_F_FUA, "FUA goes down as it is");
  run(l, NBDS_OP_FLUSH, 0, 0);
  cr_assert_eq(nseen, 3, "FUA writes leave nothing to flush");
  run(l, NBDS_OP_READ, 0, 0);
  cr_assert_eq(seen[3].flags & NBDS_F_FUA, 0, "reads stay reads");
  nbds_layer_close_stack(l);
}

Test(layer, fua_emulated)
{
  rec_caps.fua = NBDS_FUA_NONE;
  struct nbds_layer *l = stack("writeback");
  run(l, NBDS_OP_WRITE, NBDS_F_FUA, 0);
  cr_assert_eq(nseen, 2);
  cr_assert_eq(seen[0].op, NBDS_OP_WRITE);
  cr_assert_eq(seen[0].flags & NBDS_F_FUA, 0);
  cr_assert_eq(seen[1].op, NBDS_OP_FLUSH, "the write is followed by a flush");
  run(l, NBDS_OP_WRITE, 0, 0);
  cr_assert_eq(nseen, 3, "a plain write is not flushed");
  nbds_layer_close_stack(l);
}

Test(layer, unsafe_never_flushes)
{
  struct nbds_layer *l = stack("unsafe");
  cr_assert_eq(l->caps.fua, NBDS_FUA_NATIVE);
  run(l, NBDS_OP_WRITE, NBDS_F_FUA, 0);
  cr_assert_eq(seen[0].flags & NBDS_F_FUA, 0, "FUA is dropped");
  cr_assert_eq(run(l, NBDS_OP_FLUSH, 0, 0), 0);
  cr_assert_eq(nseen, 1, "FLUSH never reaches the disk");
  nbds_layer_close_stack(l);
}

Test(layer, failed_flush_is_sticky)
{
  struct nbds_layer *l = stack("writeback");
  run(l, NBDS_OP_WRITE, 0, 0);
  fail_flushes = 1;
  cr_assert_eq(run(l, NBDS_OP_FLUSH, 0, 0), EIO);
  /* The disk now succeeds, but the dirty pages may be gone. */
  cr_assert_eq(run(l, NBDS_OP_FLUSH, 0, 0), EIO);
  run(l, NBDS_OP_WRITE, 0, 0);
  cr_assert_eq(run(l, NBDS_OP_FLUSH, 0, 0), EIO);
  nbds_layer_close_stack(l);
}

Test(layer, fua_write_with_emulation_sees_flush_error)
{
  rec_caps.fua = NBDS_FUA_NONE;
  struct nbds_layer *l = stack("writeback");
  fail_flushes = 1;
  cr_assert_eq(run(l, NBDS_OP_WRITE, NBDS_F_FUA, 0), EIO,
               "a FUA write is not acknowledged when its flush failed");
  nbds_layer_close_stack(l);
}

Test(contract, extents_merge_and_cap)
{
  struct nbds_extent v[2];
  struct nbds_extents ex = { .v = v, .cap = 2 };
  cr_assert(nbds_extents_add(&ex, 4096, NBDS_EXTENT_HOLE));
  cr_assert(nbds_extents_add(&ex, 4096, NBDS_EXTENT_HOLE));
  cr_assert_eq(ex.count, 1, "equal neighbours merge");
  cr_assert_eq(v[0].length, 8192);
  cr_assert(nbds_extents_add(&ex, 512, 0));
  cr_assert_not(nbds_extents_add(&ex, 512, NBDS_EXTENT_ZERO));
  cr_assert_eq(ex.count, 2);
  cr_assert_eq(ex.covered, 8192 + 512);
}

Test(contract, child_requests)
{
  struct nbds_req parent = { .op = NBDS_OP_WRITE, .flags = NBDS_F_FUA,
                             .offset = 7, .count = 9 };
  struct nbds_req *c1 = nbds_req_child(&parent);
  cr_assert_eq(c1->parent, &parent);
  cr_assert_eq(c1->op, NBDS_OP_WRITE);
  cr_assert_eq(c1->offset, 7);
  cr_assert_null(c1->done);
  nbds_req_free(c1);
  struct nbds_req *c2 = nbds_req_child(&parent);
  cr_assert_eq(c2, c1, "freed children are reused");
  nbds_req_free(c2);
}
