/* The layer contract's shared helpers: opening layers, computing caps
 * bottom-up, child requests, extents, key=value options, errors. */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdstack/layer.h"

static __thread char last_error[512];

void
nbds_error(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
}

const char *
nbds_last_error(void)
{
  return last_error[0] ? last_error : "unknown error";
}

int
nbds_parse_size(const char *s, uint64_t *out)
{
  if (!isdigit((unsigned char) *s))
    return -1;
  errno = 0;
  char *end;
  uint64_t v = strtoull(s, &end, 10);
  if (errno)
    return -1;
  unsigned shift = 0;
  switch (*end) {
  case 'k': case 'K': shift = 10; end++; break;
  case 'm': case 'M': shift = 20; end++; break;
  case 'g': case 'G': shift = 30; end++; break;
  }
  if (*end || v > UINT64_MAX >> shift)
    return -1;
  *out = v << shift;
  return 0;
}

const char *
nbds_kv_get(const struct nbds_kv *kv, size_t nkv, const char *key)
{
  const char *value = NULL;
  for (size_t i = 0; i < nkv; i++)
    if (strcmp(kv[i].key, key) == 0)
      value = kv[i].value;  /* the last one wins, as on a command line */
  return value;
}

int
nbds_kv_check(const char *layer, const struct nbds_kv *kv, size_t nkv,
              const char *const *known)
{
  for (size_t i = 0; i < nkv; i++) {
    bool ok = false;
    for (const char *const *k = known; *k; k++)
      if (strcmp(kv[i].key, *k) == 0)
        ok = true;
    if (!ok) {
      nbds_error("%s: unknown option '%s'", layer, kv[i].key);
      return -1;
    }
  }
  return 0;
}

bool
nbds_extents_add(struct nbds_extents *ex, uint64_t length, uint32_t flags)
{
  if (length == 0)
    return ex->count < ex->cap;
  if (ex->count > 0 && ex->v[ex->count - 1].flags == flags) {
    ex->v[ex->count - 1].length += length;
    ex->covered += length;
    return true;
  }
  if (ex->count >= ex->cap)
    return false;
  ex->v[ex->count].length = length;
  ex->v[ex->count].flags = flags;
  ex->count++;
  ex->covered += length;
  return true;
}

/* Child requests come from a per-thread free list: a reactor allocates and
 * frees its own, so no lock is needed, and the list stays as large as the
 * deepest burst the thread has seen. */
static __thread struct nbds_req *free_reqs;
static pthread_key_t exit_key;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;

static void
free_list(void *unused)
{
  (void) unused;
  while (free_reqs) {
    struct nbds_req *r = free_reqs;
    free_reqs = r->parent;
    free(r);
  }
}

static void
make_key(void)
{
  pthread_key_create(&exit_key, free_list);
}

struct nbds_req *
nbds_req_child(struct nbds_req *parent)
{
  struct nbds_req *r = free_reqs;
  if (r)
    free_reqs = r->parent;
  else {
    r = malloc(sizeof *r);
    if (!r)
      abort();  /* a few hundred bytes: treat as fatal, like nbdkit does */
    /* The thread's list is freed when the thread ends. */
    pthread_once(&exit_once, make_key);
    pthread_setspecific(exit_key, (void *) 1);
  }
  *r = *parent;
  r->parent = parent;
  r->done = NULL;
  r->opaque = NULL;
  memset(r->scratch, 0, sizeof r->scratch);
  return r;
}

void
nbds_req_free(struct nbds_req *req)
{
  req->parent = free_reqs;
  free_reqs = req;
}

static const struct nbds_caps caps_of_nothing = {
  .can_write = true,
  .can_flush = true,
  .fua = NBDS_FUA_EMULATE,
  .can_trim = true,
  .can_zero = true,
  .can_fast_zero = true,
  .can_extents = true,
  .can_cache = true,
  .can_multi_conn = true,
  .block_min = 1,
  .block_pref = 4096,
  .block_max = 32 * 1024 * 1024,
};

struct nbds_layer *
nbds_layer_open(const char *type, struct nbds_layer *below,
                const struct nbds_kv *kv, size_t nkv)
{
  const struct nbds_layer_ops *ops = nbds_layer_type_find(type);
  if (!ops) {
    nbds_error("unknown layer type '%s'", type);
    return NULL;
  }
  struct nbds_layer *l = calloc(1, sizeof *l);
  if (!l) {
    nbds_error("out of memory");
    return NULL;
  }
  l->ops = ops;
  l->below = below;
  if (ops->open(l, kv, nkv) == -1) {
    free(l);
    return NULL;
  }
  l->caps = below ? below->caps : caps_of_nothing;
  if (ops->caps)
    ops->caps(l, &l->caps);
  /* Keep the invariants the server relies on whatever a layer said. */
  if (!l->caps.can_write) {
    l->caps.can_trim = l->caps.can_zero = l->caps.can_fast_zero = false;
  }
  if (!l->caps.can_zero)
    l->caps.can_fast_zero = false;
  if (!l->caps.can_flush && l->caps.fua == NBDS_FUA_EMULATE)
    l->caps.fua = NBDS_FUA_NONE;
  l->size = ops->size ? ops->size(l) : (below ? below->size : 0);
  return l;
}

void
nbds_layer_close_stack(struct nbds_layer *top)
{
  while (top) {
    struct nbds_layer *below = top->below;
    if (top->ops->close)
      top->ops->close(top);
    free(top);
    top = below;
  }
}
