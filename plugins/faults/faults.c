/* The faults layer: fails chosen requests with chosen errors, for testing
 * what the layers above and the clients do with a failing disk.
 *
 * It sits directly on the protocol layer (--inject-error), below the
 * cache policy, so that the policy's handling of failed writes and
 * flushes is what the tests see.  A request that matches a rule (rule.c)
 * completes at once with the rule's errno and never reaches the layer
 * below, as nbdkit's error filter does; every other request passes down
 * untouched.  Without --inject-error the layer is not in the stack. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "faults.h"
#include "log.h"

struct faults {
  struct fault_rule rules[FAULTS_MAX_RULES];
  size_t n;
  atomic_uint_fast64_t injected;
};

static const char *const op_names[] = {
  [NBDS_OP_READ] = "read", [NBDS_OP_WRITE] = "write",
  [NBDS_OP_FLUSH] = "flush", [NBDS_OP_TRIM] = "trim",
  [NBDS_OP_ZERO] = "zero", [NBDS_OP_BLOCK_STATUS] = "block-status",
  [NBDS_OP_CACHE] = "cache",
};

static void
faults_close(struct nbds_layer *l)
{
  struct faults *f = l->priv;
  for (size_t i = 0; i < f->n; i++)
    fault_rule_free(&f->rules[i]);
  free(f);
}

static int
faults_open(struct nbds_layer *l, const struct nbds_kv *kv, size_t nkv)
{
  static const char *const known[] = { "rule", NULL };
  if (nbds_kv_check("faults", kv, nkv, known) == -1)
    return -1;
  if (!l->below) {
    nbds_error("faults: needs a layer below it");
    return -1;
  }
  struct faults *f = calloc(1, sizeof *f);
  if (!f) {
    nbds_error("out of memory");
    return -1;
  }
  l->priv = f;
  for (size_t i = 0; i < nkv; i++) {
    if (f->n == FAULTS_MAX_RULES) {
      nbds_error("--inject-error: at most %d rules", FAULTS_MAX_RULES);
      faults_close(l);
      return -1;
    }
    if (fault_rule_parse(kv[i].value, &f->rules[f->n]) == -1) {
      faults_close(l);
      return -1;
    }
    f->n++;
  }
  return 0;
}

/* A uniform double in [0, 1): xorshift64* per thread, as no two reactors
 * should share (or lock) one generator. */
static double
random_unit(void)
{
  static __thread uint64_t s;
  if (!s)
    s = ((uint64_t) time(NULL) << 20) ^ (uintptr_t) &s ^ (uint64_t) getpid();
  s ^= s >> 12;
  s ^= s << 25;
  s ^= s >> 27;
  return ((s * UINT64_C(2685821657736338717)) >> 11) * 0x1.0p-53;
}

static bool
matches(const struct fault_rule *r, const struct nbds_req *req)
{
  uint32_t op = 1u << req->op;
  /* A FUA write is a write and a flush of its range: where flushes fail,
   * it cannot be made durable either. */
  if (req->flags & NBDS_F_FUA)
    op |= 1u << NBDS_OP_FLUSH;
  if (!(r->ops & op))
    return false;
  if (req->op != NBDS_OP_FLUSH &&
      (req->offset >= r->end || req->offset + req->count <= r->start))
    return false;
  /* A stat per matching request: this layer exists only for tests. */
  if (r->file && access(r->file, F_OK) != 0)
    return false;
  return r->rate >= 1 || random_unit() < r->rate;
}

static void
faults_submit(struct nbds_layer *l, struct nbds_req *req)
{
  struct faults *f = l->priv;
  for (size_t i = 0; i < f->n; i++)
    if (matches(&f->rules[i], req)) {
      atomic_fetch_add_explicit(&f->injected, 1, memory_order_relaxed);
      nbds_log_debug("faults: %s at %llu+%llu fails with %s (injected)",
                     op_names[req->op], (unsigned long long) req->offset,
                     (unsigned long long) req->count,
                     strerror(f->rules[i].err));
      nbds_req_complete(req, f->rules[i].err);
      return;
    }
  nbds_layer_submit(l->below, req);
}

static void
faults_stats(struct nbds_layer *l, nbds_stat_fn emit, void *opaque)
{
  struct faults *f = l->priv;
  struct nbds_stat st = {
    .name = "injected_errors_total",
    .help = "Requests failed on purpose by --inject-error",
    .kind = NBDS_STAT_COUNTER,
    .value = atomic_load_explicit(&f->injected, memory_order_relaxed),
  };
  emit(opaque, &st);
}

const struct nbds_layer_ops nbds_faults_ops = {
  .name = "faults",
  .open = faults_open,
  .close = faults_close,
  .submit = faults_submit,
  .stats = faults_stats,
};
