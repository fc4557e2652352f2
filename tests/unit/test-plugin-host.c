/* The nbdkit plugin host ("nbdkit" layer) with Debian's own plugins:
 * memory, pattern, data, null, full and eval, loaded by dlopen.  The
 * test executable is linked with export_dynamic so the plugins find
 * the nbdkit_* functions in it, as they will in the server. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-plugin.h>

#include "nbdstack/layer.h"
#include "reactor.h"

#define KiB 1024
#define MiB (1024 * 1024)
#define HZ (NBDS_EXTENT_HOLE | NBDS_EXTENT_ZERO)

extern const struct nbds_layer_ops nbds_nbdkit_ops;

/* server/layers.c is not linked into unit tests. */
const struct nbds_layer_ops *
nbds_layer_type_find(const char *name)
{
  return strcmp(name, "nbdkit") == 0 ? &nbds_nbdkit_ops : NULL;
}

static struct nbds_reactor *reactor;

static void
setup(void)
{
  reactor = reactor_create(0, false);
  cr_assert_not_null(reactor);
  workers_init(4);
}

static void
teardown(void)
{
  workers_shutdown();
  reactor_destroy(reactor);
}

TestSuite(plugin_host, .init = setup, .fini = teardown, .timeout = 60);

static struct nbds_layer *
open_kv(const struct nbds_kv *kv, size_t nkv)
{
  struct nbds_layer *l = nbds_layer_open("nbdkit", NULL, kv, nkv);
  cr_assert_not_null(l, "open: %s", nbds_last_error());
  return l;
}

static const char *
open_error(const struct nbds_kv *kv, size_t nkv)
{
  cr_assert_null(nbds_layer_open("nbdkit", NULL, kv, nkv));
  return nbds_last_error();
}

struct result {
  bool fired;
  int err;
};

static void
on_done(struct nbds_req *req, int err)
{
  struct result *r = req->opaque;
  cr_assert(!r->fired, "completed twice");
  r->fired = true;
  r->err = err;
}

/* Submit and run the reactor until the request completes. */
static int
run(struct nbds_layer *l, struct nbds_req *req)
{
  struct result res = { false, 0 };
  struct ev_loop *loop = nbds_reactor_loop(reactor);
  req->done = on_done;
  req->opaque = &res;
  nbds_layer_submit(l, req);
  ev_ref(loop);
  while (!res.fired)
    ev_run(loop, EVRUN_ONCE);
  ev_unref(loop);
  return res.err;
}

static int
rwv(struct nbds_layer *l, enum nbds_op op, uint64_t offset,
    struct iovec *iov, int iovcnt, uint32_t flags)
{
  struct nbds_req req = {
    .op = op, .flags = flags, .offset = offset, .iov = iov, .iovcnt = iovcnt,
  };
  for (int i = 0; i < iovcnt; i++)
    req.count += iov[i].iov_len;
  return run(l, &req);
}

static int
rw(struct nbds_layer *l, enum nbds_op op, uint64_t offset, void *buf,
   size_t len, uint32_t flags)
{
  struct iovec iov = { buf, len };
  return rwv(l, op, offset, &iov, 1, flags);
}

static int
cmd(struct nbds_layer *l, enum nbds_op op, uint64_t offset, uint64_t count,
    uint32_t flags)
{
  struct nbds_req req = {
    .op = op, .flags = flags, .offset = offset, .count = count,
  };
  return run(l, &req);
}

static size_t
block_status(struct nbds_layer *l, uint64_t offset, uint64_t count,
             uint32_t flags, struct nbds_extent *v, size_t cap)
{
  struct nbds_extents ex = { .v = v, .cap = cap };
  struct nbds_req req = {
    .op = NBDS_OP_BLOCK_STATUS, .flags = flags, .offset = offset,
    .count = count, .extents = &ex,
  };
  cr_assert_eq(run(l, &req), 0);
  cr_assert_geq(ex.count, 1, "no extent");
  return ex.count;
}

static bool
all_bytes(const unsigned char *p, size_t len, int byte)
{
  for (size_t i = 0; i < len; i++)
    if (p[i] != byte)
      return false;
  return true;
}

static void
fill(unsigned char *p, size_t len, unsigned seed)
{
  for (size_t i = 0; i < len; i++)
    p[i] = (seed * 31 + i * 7 + 1) % 251 + 1;
}

static struct nbds_layer *
open_memory(void)
{
  struct nbds_kv kv[] = { { "plugin", "memory" }, { "size", "1M" } };
  return open_kv(kv, 2);
}

Test(plugin_host, memory_caps_and_size)
{
  struct nbds_layer *l = open_memory();
  cr_expect_eq(l->size, 1 * MiB);
  cr_expect(l->caps.can_write);
  cr_expect(l->caps.can_flush);
  cr_expect(l->caps.can_trim);
  cr_expect(l->caps.can_zero);
  cr_expect(l->caps.can_extents);
  cr_expect(l->caps.can_multi_conn);
  cr_expect_eq(l->caps.block_min, 1);
  cr_expect_eq(l->caps.block_pref, 4096);
  nbds_layer_close_stack(l);
}

Test(plugin_host, memory_round_trip)
{
  struct nbds_layer *l = open_memory();
  static unsigned char w[64 * KiB], r[64 * KiB];
  fill(w, sizeof w, 1);
  cr_assert_eq(rw(l, NBDS_OP_WRITE, 4096 + 3, w, sizeof w, 0), 0);
  cr_assert_eq(rw(l, NBDS_OP_WRITE, 512 * KiB, w, 512, NBDS_F_FUA), 0);
  cr_assert_eq(cmd(l, NBDS_OP_FLUSH, 0, 0, 0), 0);

  /* Read back through three iovecs. */
  struct iovec iov[3] = {
    { r, 100 }, { r + 100, 30000 }, { r + 30100, sizeof r - 30100 },
  };
  cr_assert_eq(rwv(l, NBDS_OP_READ, 4096 + 3, iov, 3, 0), 0);
  cr_expect_eq(memcmp(w, r, sizeof w), 0);
  cr_assert_eq(rw(l, NBDS_OP_READ, 0, r, 4096 + 3, 0), 0);
  cr_expect(all_bytes(r, 4096 + 3, 0), "untouched bytes are not zero");
  nbds_layer_close_stack(l);
}

Test(plugin_host, memory_trim_zero_extents)
{
  struct nbds_layer *l = open_memory();
  static unsigned char w[128 * KiB], r[128 * KiB];
  memset(w, 0x5a, sizeof w);
  cr_assert_eq(rw(l, NBDS_OP_WRITE, 0, w, sizeof w, 0), 0);

  struct nbds_extent e[16];
  size_t n = block_status(l, 0, 1 * MiB, 0, e, 16);
  cr_expect_eq(e[0].flags, 0, "written data reported as %u", e[0].flags);
  cr_expect_geq(e[0].length, 128 * KiB);
  cr_expect_leq(e[0].length, 1 * MiB);
  n = block_status(l, 512 * KiB, 4096, 0, e, 16);
  cr_expect_eq(e[0].flags, HZ, "never written: flags %u", e[0].flags);
  (void) n;

  /* Trim the first 64K, zero the next 32K (no hole allowed). */
  cr_assert_eq(cmd(l, NBDS_OP_TRIM, 0, 64 * KiB, 0), 0);
  cr_assert_eq(cmd(l, NBDS_OP_ZERO, 64 * KiB, 32 * KiB, NBDS_F_NO_HOLE), 0);
  cr_assert_eq(cmd(l, NBDS_OP_ZERO, 100 * KiB, 1, NBDS_F_FUA), 0);
  cr_assert_eq(rw(l, NBDS_OP_READ, 0, r, sizeof r, 0), 0);
  cr_expect(all_bytes(r, 96 * KiB, 0));
  cr_expect(all_bytes(r + 96 * KiB, 4 * KiB, 0x5a));
  cr_expect_eq(r[100 * KiB], 0);
  cr_expect(all_bytes(r + 100 * KiB + 1, 28 * KiB - 1, 0x5a));
  n = block_status(l, 0, 4096, NBDS_F_REQ_ONE, e, 16);
  cr_expect_eq(e[0].flags & NBDS_EXTENT_ZERO, NBDS_EXTENT_ZERO,
               "trimmed range: flags %u", e[0].flags);
  /* The first extent starts at the request even mid-page. */
  n = block_status(l, 96 * KiB + 5, 4096, 0, e, 16);
  cr_expect_eq(e[0].flags, 0);
  cr_expect_leq(e[0].length, 32 * KiB - 5);
  nbds_layer_close_stack(l);
}

Test(plugin_host, memory_magic_config_key)
{
  /* A bare word goes to the plugin's magic key: for memory, size. */
  struct nbds_kv kv[] = { { "plugin", "memory" }, { "", "64K" } };
  struct nbds_layer *l = open_kv(kv, 2);
  cr_expect_eq(l->size, 64 * KiB);
  nbds_layer_close_stack(l);
}

Test(plugin_host, past_the_end)
{
  struct nbds_layer *l = open_memory();
  char buf[4096] = { 1 };
  cr_expect_eq(rw(l, NBDS_OP_WRITE, 1 * MiB - 100, buf, sizeof buf, 0),
               ENOSPC);
  cr_expect_eq(rw(l, NBDS_OP_READ, 1 * MiB, buf, 1, 0), EINVAL);
  cr_expect_eq(cmd(l, NBDS_OP_ZERO, 1 * MiB - 1, 2, 0), ENOSPC);
  nbds_layer_close_stack(l);
}

Test(plugin_host, readonly)
{
  struct nbds_kv kv[] = {
    { "plugin", "memory" }, { "size", "1M" }, { "readonly", "on" },
  };
  struct nbds_layer *l = open_kv(kv, 3);
  cr_expect(!l->caps.can_write);
  cr_expect(!l->caps.can_zero);
  cr_expect_eq(l->caps.fua, NBDS_FUA_NONE);
  char buf[512] = { 0 };
  cr_expect_eq(rw(l, NBDS_OP_WRITE, 0, buf, sizeof buf, 0), EROFS);
  cr_expect_eq(rw(l, NBDS_OP_READ, 0, buf, sizeof buf, 0), 0);
  nbds_layer_close_stack(l);
}

Test(plugin_host, pattern)
{
  struct nbds_kv kv[] = { { "plugin", "pattern" }, { "size", "1M" } };
  struct nbds_layer *l = open_kv(kv, 2);
  cr_expect_eq(l->size, 1 * MiB);
  cr_expect(!l->caps.can_write);
  /* Each 8-byte big-endian word holds its own offset; read unaligned. */
  static unsigned char r[8 * KiB + 13];
  uint64_t off = 600 * KiB + 3;
  cr_assert_eq(rw(l, NBDS_OP_READ, off, r, sizeof r, 0), 0);
  for (size_t i = 0; i < sizeof r; i++) {
    uint64_t pos = off + i;
    uint64_t word = pos & ~7ull;
    unsigned char want = word >> (8 * (7 - (pos & 7)));
    cr_assert_eq(r[i], want, "byte at %llu is %d, want %d",
                 (unsigned long long) pos, r[i], want);
  }
  nbds_layer_close_stack(l);
}

Test(plugin_host, data)
{
  struct nbds_kv kv[] = { { "plugin", "data" }, { "data", "1 2 3 @510 0x55 0xaa" } };
  struct nbds_layer *l = open_kv(kv, 2);
  cr_expect_eq(l->size, 512);
  unsigned char r[512];
  cr_assert_eq(rw(l, NBDS_OP_READ, 0, r, sizeof r, 0), 0);
  cr_expect_eq(r[0], 1);
  cr_expect_eq(r[1], 2);
  cr_expect_eq(r[2], 3);
  cr_expect(all_bytes(r + 3, 507, 0));
  cr_expect_eq(r[510], 0x55);
  cr_expect_eq(r[511], 0xaa);
  nbds_layer_close_stack(l);
}

Test(plugin_host, data_raw)
{
  unsigned char r[8];
  struct nbds_kv raw[] = {
    { "plugin", "data" }, { "raw", "hello" }, { "size", "4096" },
  };
  struct nbds_layer *l = open_kv(raw, 3);
  cr_expect_eq(l->size, 4096);
  cr_assert_eq(rw(l, NBDS_OP_READ, 0, r, 8, 0), 0);
  cr_expect_eq(memcmp(r, "hello\0\0\0", 8), 0);
  /* data is writable: a write, then the bytes come back. */
  cr_assert_eq(rw(l, NBDS_OP_WRITE, 1, "ELL", 3, 0), 0);
  cr_assert_eq(rw(l, NBDS_OP_READ, 0, r, 5, 0), 0);
  cr_expect_eq(memcmp(r, "hELLo", 5), 0);
  nbds_layer_close_stack(l);
}

Test(plugin_host, null_plugin)
{
  struct nbds_kv kv[] = { { "plugin", "null" }, { "size", "1M" } };
  struct nbds_layer *l = open_kv(kv, 2);
  cr_expect_eq(l->size, 1 * MiB);
  static unsigned char r[64 * KiB];
  memset(r, 0xff, sizeof r);
  cr_assert_eq(rw(l, NBDS_OP_READ, 4096, r, sizeof r, 0), 0);
  cr_expect(all_bytes(r, sizeof r, 0));
  cr_expect_eq(rw(l, NBDS_OP_WRITE, 0, r, 512, 0), 0);  /* discarded */
  cr_expect_eq(cmd(l, NBDS_OP_ZERO, 0, 4096, NBDS_F_FAST_ZERO), 0);
  struct nbds_extent e[4];
  block_status(l, 0, 1 * MiB, 0, e, 4);
  cr_expect_eq(e[0].flags, HZ);
  cr_expect_eq(e[0].length, 1 * MiB);
  nbds_layer_close_stack(l);
}

Test(plugin_host, plugin_error_maps_to_errno)
{
  /* The full plugin fails every write with ENOSPC (nbdkit_set_error). */
  struct nbds_kv kv[] = { { "plugin", "full" }, { "size", "1M" } };
  struct nbds_layer *l = open_kv(kv, 2);
  char buf[4096] = { 1 };
  cr_expect_eq(rw(l, NBDS_OP_WRITE, 0, buf, sizeof buf, 0), ENOSPC);
  cr_expect_eq(rw(l, NBDS_OP_READ, 0, buf, sizeof buf, 0), 0);
  cr_expect(all_bytes((unsigned char *) buf, sizeof buf, 0));
  nbds_layer_close_stack(l);
}

Test(plugin_host, bad_plugin_name)
{
  struct nbds_kv kv[] = { { "plugin", "no-such-thing" } };
  const char *msg = open_error(kv, 1);
  cr_expect(strstr(msg, "no plugin 'no-such-thing'") &&
            strstr(msg, "nbdkit-no-such-thing-plugin.so"), "message: %s", msg);

  struct nbds_kv odd[] = { { "plugin", "../etc" } };
  msg = open_error(odd, 1);
  cr_expect(strstr(msg, "no plugin"), "message: %s", msg);

  struct nbds_kv none[] = { { "size", "1M" } };
  msg = open_error(none, 1);
  cr_expect(strstr(msg, "'plugin'"), "message: %s", msg);

  /* A shared object that is not a plugin. */
  struct nbds_kv notplugin[] = { { "plugin", "/lib/x86_64-linux-gnu/libz.so.1" } };
  if (access(notplugin[0].value, R_OK) == 0) {
    msg = open_error(notplugin, 1);
    cr_expect(strstr(msg, "not an nbdkit plugin"), "message: %s", msg);
  }
}

Test(plugin_host, bad_parameter_gives_plugin_message)
{
  struct nbds_kv kv[] = { { "plugin", "memory" }, { "size", "lots" } };
  const char *msg = open_error(kv, 2);
  cr_expect(strstr(msg, "nbdkit plugin 'memory'") &&
            strstr(msg, "could not parse size"), "message: %s", msg);

  struct nbds_kv unknown[] = { { "plugin", "memory" }, { "nosuchkey", "1" } };
  msg = open_error(unknown, 2);
  cr_expect(strstr(msg, "memory"), "message: %s", msg);

  /* After a failure the plugin loads again from a fresh mapping; where
   * it stays mapped (under AddressSanitizer) it is refused, clearly,
   * since its globals went through .unload. */
  struct nbds_kv again[] = { { "plugin", "memory" }, { "size", "1M" } };
  struct nbds_layer *l = nbds_layer_open("nbdkit", NULL, again, 2);
  if (l) {
    cr_expect_eq(l->size, 1 * MiB);
    nbds_layer_close_stack(l);
  } else
    cr_expect(strstr(nbds_last_error(), "cannot be loaded twice"),
              "message: %s", nbds_last_error());
}

Test(plugin_host, one_so_per_layer)
{
  struct nbds_layer *l = open_memory();
  struct nbds_kv kv[] = { { "plugin", "memory" }, { "size", "1M" } };
  const char *msg = open_error(kv, 2);
  cr_expect(strstr(msg, "already in use"), "message: %s", msg);
  nbds_layer_close_stack(l);
}

/* The eval plugin runs shell snippets: a plugin without .zero (so zero
 * becomes .pwrite of zeroes) and with errors named on stderr. */
Test(plugin_host, eval_zero_fallback_and_errno)
{
  /* The sh plugin waits for its own children, but libev's default loop
   * (reactor 0) reaps every child on SIGCHLD, and the plugin's waitpid
   * then fails with ECHILD.  Keep SIGCHLD blocked on this thread and on
   * the workers it starts, so libev never sees it. */
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &chld, NULL);

  char path[] = "/var/tmp/nbds-test-ph-XXXXXX";
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  static unsigned char w[64 * KiB], r[64 * KiB];
  memset(w, 0x77, sizeof w);
  cr_assert_eq(pwrite(fd, w, sizeof w, 0), (ssize_t) sizeof w);

  char pread_s[256], pwrite_s[256];
  snprintf(pread_s, sizeof pread_s,
           "dd if=%s skip=$4 count=$3 iflag=count_bytes,skip_bytes "
           "status=none", path);
  snprintf(pwrite_s, sizeof pwrite_s,
           "dd of=%s seek=$4 conv=notrunc oflag=seek_bytes status=none",
           path);
  struct nbds_kv kv[] = {
    { "plugin", "eval" }, { "get_size", "echo 65536" },
    { "pread", pread_s }, { "pwrite", pwrite_s },
    { "trim", "echo EPERM not today >&2; exit 1" },
    { "can_trim", "exit 0" }, { "can_fast_zero", "exit 3" },
  };
  struct nbds_layer *l = open_kv(kv, sizeof kv / sizeof kv[0]);
  cr_expect_eq(l->size, 64 * KiB);
  cr_expect(l->caps.can_zero);
  cr_expect(!l->caps.can_fast_zero);

  cr_assert_eq(cmd(l, NBDS_OP_ZERO, 1000, 20000, 0), 0);
  cr_assert_eq(pread(fd, r, sizeof r, 0), (ssize_t) sizeof r);
  cr_expect(all_bytes(r, 1000, 0x77));
  cr_expect(all_bytes(r + 1000, 20000, 0));
  cr_expect(all_bytes(r + 21000, sizeof r - 21000, 0x77));

  cr_expect_eq(cmd(l, NBDS_OP_TRIM, 0, 4096, 0), EPERM);
  /* Still usable after an error. */
  cr_assert_eq(rw(l, NBDS_OP_READ, 0, r, 4096, 0), 0);
  cr_expect(all_bytes(r, 1000, 0x77));
  nbds_layer_close_stack(l);
  close(fd);
  unlink(path);
}

/* Many requests in flight at once, as several clients would send them:
 * each completes once, with its own bytes. */
struct inflight {
  struct nbds_req req;
  struct iovec iov;
  unsigned char buf[4096];
  int done;
  int err;
};

static void
inflight_done(struct nbds_req *req, int err)
{
  struct inflight *f = req->opaque;
  f->done++;
  f->err = err;
}

Test(plugin_host, many_in_flight)
{
  static const char *const plugins[] = { "memory", "data" };
  for (int p = 0; p < 2; p++) {
    struct nbds_kv kv[] = {
      { "plugin", plugins[p] }, { "size", "1M" }, { "raw", "" },
    };
    struct nbds_layer *l = open_kv(kv, p == 0 ? 2 : 3);
    enum { N = 64 };
    static struct inflight f[N];
    struct ev_loop *loop = nbds_reactor_loop(reactor);
    for (int op = 0; op < 2; op++) {
      memset(f, 0, sizeof f);
      for (int i = 0; i < N; i++) {
        if (op == 0)
          fill(f[i].buf, sizeof f[i].buf, i + 1);
        f[i].iov = (struct iovec) { f[i].buf, sizeof f[i].buf };
        f[i].req = (struct nbds_req) {
          .op = op == 0 ? NBDS_OP_WRITE : NBDS_OP_READ,
          .offset = (uint64_t) i * 8192, .count = sizeof f[i].buf,
          .iov = &f[i].iov, .iovcnt = 1,
          .done = inflight_done, .opaque = &f[i],
        };
        nbds_layer_submit(l, &f[i].req);
      }
      ev_ref(loop);
      for (;;) {
        int done = 0;
        for (int i = 0; i < N; i++)
          done += f[i].done;
        if (done == N)
          break;
        ev_run(loop, EVRUN_ONCE);
      }
      ev_unref(loop);
      for (int i = 0; i < N; i++) {
        cr_assert_eq(f[i].done, 1);
        cr_assert_eq(f[i].err, 0, "%s request %d: %s", plugins[p], i,
                     strerror(f[i].err));
      }
    }
    unsigned char want[4096];
    for (int i = 0; i < N; i++) {
      fill(want, sizeof want, i + 1);
      cr_assert_eq(memcmp(f[i].buf, want, sizeof want), 0,
                   "%s: request %d read other bytes", plugins[p], i);
    }
    nbds_layer_close_stack(l);
  }
}

/* The nbdkit_* helpers plugins call, as nbdkit-plugin(3) documents them. */
Test(plugin_host, nbdkit_helpers)
{
  cr_expect_eq(nbdkit_parse_size("1M"), 1 * MiB);
  cr_expect_eq(nbdkit_parse_size("2k"), 2048);
  cr_expect_eq(nbdkit_parse_size("3s"), 1536);
  cr_expect_eq(nbdkit_parse_size("7b"), 7);
  cr_expect_eq(nbdkit_parse_size("1E"), 1ll << 60);
  cr_expect_eq(nbdkit_parse_size("8E"), -1);
  cr_expect_eq(nbdkit_parse_size("-1"), -1);
  cr_expect_eq(nbdkit_parse_size("1MB"), -1);
  cr_expect_eq(nbdkit_parse_size(""), -1);

  cr_expect_eq(nbdkit_parse_bool("on"), 1);
  cr_expect_eq(nbdkit_parse_bool("YES"), 1);
  cr_expect_eq(nbdkit_parse_bool("0"), 0);
  cr_expect_eq(nbdkit_parse_bool("off"), 0);
  cr_expect_eq(nbdkit_parse_bool("maybe"), -1);

  int i = 42;
  cr_expect_eq(nbdkit_parse_int("n", "0x10", &i), 0);
  cr_expect_eq(i, 16);
  cr_expect_eq(nbdkit_parse_int("n", "010", &i), 0);
  cr_expect_eq(i, 8);
  cr_expect_eq(nbdkit_parse_int("n", "12abc", &i), -1);
  cr_expect_eq(i, 8, "*r changed on error");
  cr_expect_eq(nbdkit_parse_int("n", "", &i), -1);
  cr_expect_eq(nbdkit_parse_int("n", "99999999999", &i), -1);
  cr_expect_eq(nbdkit_parse_int("n", "-5", NULL), 0);
  uint8_t u8;
  cr_expect_eq(nbdkit_parse_uint8_t("n", "255", &u8), 0);
  cr_expect_eq(u8, 255);
  cr_expect_eq(nbdkit_parse_uint8_t("n", "256", &u8), -1);
  unsigned u;
  cr_expect_eq(nbdkit_parse_unsigned("n", "-1", &u), -1);
  int8_t s8;
  cr_expect_eq(nbdkit_parse_int8_t("n", "-128", &s8), 0);
  cr_expect_eq(s8, -128);
  uint64_t u64;
  cr_expect_eq(nbdkit_parse_uint64_t("n", "18446744073709551615", &u64), 0);
  cr_expect_eq(u64, UINT64_MAX);

  char *s = nbdkit_absolute_path("/x/y");
  cr_expect_str_eq(s, "/x/y");
  free(s);
  s = nbdkit_absolute_path("rel");
  cr_expect(s && s[0] == '/' && strstr(s, "/rel"));
  free(s);
  cr_expect_null(nbdkit_realpath("/no/such/path/here"));
  s = nbdkit_realpath("/");
  cr_expect_str_eq(s, "/");
  free(s);

  char *pw;
  cr_expect_eq(nbdkit_read_password("secret", &pw), 0);
  cr_expect_str_eq(pw, "secret");
  free(pw);
  char file[] = "/var/tmp/nbds-test-pw-XXXXXX";
  int fd = mkstemp(file);
  cr_assert(fd >= 0);
  cr_assert_eq(write(fd, "hunter2\n", 8), 8);
  close(fd);
  char arg[64];
  snprintf(arg, sizeof arg, "+%s", file);
  cr_expect_eq(nbdkit_read_password(arg, &pw), 0);
  cr_expect_str_eq(pw, "hunter2");
  free(pw);
  fd = open(file, O_RDONLY);
  snprintf(arg, sizeof arg, "-%d", fd);
  cr_expect_eq(nbdkit_read_password(arg, &pw), 0);  /* closes fd */
  cr_expect_str_eq(pw, "hunter2");
  free(pw);
  cr_expect_eq(nbdkit_read_password("-1", &pw), -1);
  unlink(file);

  cr_expect_str_eq(nbdkit_strndup_intern("abcdef", 3), "abc");
  cr_expect_eq(nbdkit_nanosleep(0, 1000), 0);

  /* nbdkit_error keeps errno, and %m expands it. */
  errno = ENOSPC;
  nbdkit_error("test message: %m");
  cr_expect_eq(errno, ENOSPC);
}
