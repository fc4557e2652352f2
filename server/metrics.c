/* Per-export statistics: the counting hooks on the reactors, and the
 * snapshot that sums every reactor's block, rendered as Prometheus text
 * or as JSON. */
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "export.h"
#include "metrics.h"
#include "protocol.h"

static const char *const op_names[MOP_COUNT] = {
  "read", "write", "flush", "trim", "zero", "block_status", "cache", "other",
};

static const char *const err_names[MERR_COUNT] = {
  "EPERM", "EIO", "ENOMEM", "EINVAL", "ENOSPC", "EOVERFLOW", "ENOTSUP",
  "ESHUTDOWN",
};

__thread struct metrics_clock metrics_clock;

struct metrics *
metrics_new(unsigned nreactors)
{
  struct metrics *m = malloc(sizeof *m);
  if (!m)
    return NULL;
  m->nblocks = nreactors;
  /* Zeroed and cache-line aligned: no two reactors share a line. */
  m->blocks = aligned_alloc(64, nreactors * sizeof *m->blocks);
  if (!m->blocks) {
    free(m);
    return NULL;
  }
  memset(m->blocks, 0, nreactors * sizeof *m->blocks);
  return m;
}

void
metrics_free(struct metrics *m)
{
  if (m)
    free(m->blocks);
  free(m);
}

struct metrics_block *
metrics_block(struct metrics *m, int reactor_index)
{
  if (!m || reactor_index < 0 || (unsigned) reactor_index >= m->nblocks)
    return NULL;
  return &m->blocks[reactor_index];
}

static enum metrics_op
op_of(uint16_t nbd_type)
{
  switch (nbd_type) {
  case NBD_CMD_READ:         return MOP_READ;
  case NBD_CMD_WRITE:        return MOP_WRITE;
  case NBD_CMD_FLUSH:        return MOP_FLUSH;
  case NBD_CMD_TRIM:         return MOP_TRIM;
  case NBD_CMD_WRITE_ZEROES: return MOP_ZERO;
  case NBD_CMD_BLOCK_STATUS: return MOP_BLOCK_STATUS;
  case NBD_CMD_CACHE:        return MOP_CACHE;
  default:                   return MOP_OTHER;
  }
}

static enum metrics_err
err_of(uint32_t wire_err)
{
  switch (wire_err) {
  case NBD_EPERM:     return MERR_EPERM;
  case NBD_ENOMEM:    return MERR_ENOMEM;
  case NBD_EINVAL:    return MERR_EINVAL;
  case NBD_ENOSPC:    return MERR_ENOSPC;
  case NBD_EOVERFLOW: return MERR_EOVERFLOW;
  case NBD_ENOTSUP:   return MERR_ENOTSUP;
  case NBD_ESHUTDOWN: return MERR_ESHUTDOWN;
  default:            return MERR_EIO;
  }
}

/* The bucket of a latency: the smallest k with ns <= 2^k us. */
static unsigned
bucket_of(uint64_t ns)
{
  uint64_t us = (ns + 999) / 1000;
  if (us <= 1)
    return 0;
  unsigned k = 64 - __builtin_clzll(us - 1);
  return k < METRICS_BUCKETS - 1 ? k : METRICS_BUCKETS - 1;
}

void
metrics_reply(struct metrics_block *b, uint16_t nbd_type, uint64_t count,
              uint32_t wire_err, uint64_t start_ns, uint64_t now_ns)
{
  struct metrics_op_ctrs *o = &b->op[op_of(nbd_type)];
  uint64_t ns = now_ns - start_ns;
  metrics_add(&o->requests, 1);
  if (wire_err) {
    metrics_add(&o->errors, 1);
    metrics_add(&b->errors_by_class[err_of(wire_err)], 1);
  } else
    metrics_add(&o->bytes, count);
  metrics_add(&o->latency_ns, ns);
  metrics_add(&o->buckets[bucket_of(ns)], 1);
}

/* A snapshot of one export: every reactor's block summed, and what its
 * layers report. */
#define MAX_LAYER_STATS 32

struct layer_stat {
  const char *layer;
  struct nbds_stat st;
};

struct snapshot {
  char name[NBD_MAX_STRING + 1];  /* a copy: a reload may free the export */
  uint64_t requests[MOP_COUNT], bytes[MOP_COUNT], errors[MOP_COUNT];
  uint64_t latency_ns[MOP_COUNT];
  uint64_t buckets[MOP_COUNT][METRICS_BUCKETS];  /* cumulative */
  uint64_t errors_by_class[MERR_COUNT];
  uint64_t in_flight, conns, conns_total;
  struct layer_stat layer[MAX_LAYER_STATS];
  size_t nlayer;
  const char *cur_layer;
};

static uint64_t
get(metrics_ctr *c)
{
  return atomic_load_explicit(c, memory_order_relaxed);
}

/* in - out of two counters read at slightly different times: never
 * below 0 for a moment. */
static uint64_t
level(uint64_t in, uint64_t out)
{
  return in > out ? in - out : 0;
}

static void
add_layer_stat(void *opaque, const struct nbds_stat *st)
{
  struct snapshot *s = opaque;
  if (s->nlayer < MAX_LAYER_STATS)
    s->layer[s->nlayer++] = (struct layer_stat) { s->cur_layer, *st };
}

static void
take_snapshot(struct export *e, struct snapshot *s)
{
  memset(s, 0, sizeof *s);
  snprintf(s->name, sizeof s->name, "%s", e->name);
  uint64_t received = 0, released = 0, opened = 0, closed = 0;
  for (unsigned r = 0; e->metrics && r < e->metrics->nblocks; r++) {
    struct metrics_block *b = &e->metrics->blocks[r];
    for (int i = 0; i < MOP_COUNT; i++) {
      s->requests[i] += get(&b->op[i].requests);
      s->bytes[i] += get(&b->op[i].bytes);
      s->errors[i] += get(&b->op[i].errors);
      s->latency_ns[i] += get(&b->op[i].latency_ns);
      for (int k = 0; k < METRICS_BUCKETS; k++)
        s->buckets[i][k] += get(&b->op[i].buckets[k]);
    }
    for (int i = 0; i < MERR_COUNT; i++)
      s->errors_by_class[i] += get(&b->errors_by_class[i]);
    received += get(&b->received);
    released += get(&b->released);
    opened += get(&b->conns_opened);
    closed += get(&b->conns_closed);
  }
  for (int i = 0; i < MOP_COUNT; i++)
    for (int k = 1; k < METRICS_BUCKETS; k++)
      s->buckets[i][k] += s->buckets[i][k - 1];
  s->in_flight = level(received, released);
  s->conns = level(opened, closed);
  s->conns_total = opened;
  for (struct nbds_layer *l = e->top; l; l = l->below)
    if (l->ops->stats) {
      s->cur_layer = l->ops->name;
      l->ops->stats(l, add_layer_stat, s);
    }
}

/* Every export's snapshot; *n of them.  NULL when out of memory or when
 * there is no export. */
static struct snapshot *
snapshot_all(size_t *n)
{
  *n = 0;
  /* A reload may change the list meanwhile.  Withdrawn exports are left
   * out: a changed one's successor has the same name, and one series per
   * name is what scrapers expect. */
  exports_lock();
  for (struct export *e = exports; e; e = e->next)
    *n += e->offered;
  struct snapshot *s = *n ? malloc(*n * sizeof *s) : NULL;
  size_t i = 0;
  for (struct export *e = exports; s && e; e = e->next)
    if (e->offered)
      take_snapshot(e, &s[i++]);
  exports_unlock();
  return s;
}

/* The le label of bucket k, in seconds; "+Inf" for the last. */
static void
bucket_label(int k, char *buf, size_t len)
{
  if (k == METRICS_BUCKETS - 1)
    snprintf(buf, len, "+Inf");
  else
    snprintf(buf, len, "%.10g", (double) (1ull << k) / 1e6);
}

/* Prometheus label values escape backslash, double quote and newline. */
static void
put_label(FILE *f, const char *v)
{
  for (; *v; v++) {
    if (*v == '\\' || *v == '"')
      fprintf(f, "\\%c", *v);
    else if (*v == '\n')
      fputs("\\n", f);
    else
      fputc(*v, f);
  }
}

static void
family(FILE *f, const char *name, const char *type, const char *help)
{
  fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
sample(FILE *f, const char *name, const struct snapshot *s,
       const char *label, const char *value, uint64_t v)
{
  fprintf(f, "%s{export=\"", name);
  put_label(f, s->name);
  if (label)
    fprintf(f, "\",%s=\"%s", label, value);
  fprintf(f, "\"} %llu\n", (unsigned long long) v);
}

/* A counter by op: requests, bytes or errors. */
static void
by_op(FILE *f, const struct snapshot *s, size_t n, const char *name,
      const char *help, size_t field)
{
  family(f, name, "counter", help);
  for (size_t e = 0; e < n; e++)
    for (int i = 0; i < MOP_COUNT; i++) {
      const uint64_t *v = (const uint64_t *) ((const char *) &s[e] + field);
      sample(f, name, &s[e], "op", op_names[i], v[i]);
    }
}

static void
histograms(FILE *f, const struct snapshot *s, size_t n)
{
  const char *name = "nbdstack_request_duration_seconds";
  family(f, name, "histogram",
         "Time from a request's arrival to its reply, by command.");
  for (size_t e = 0; e < n; e++)
    for (int i = 0; i < MOP_COUNT; i++) {
      for (int k = 0; k < METRICS_BUCKETS; k++) {
        char le[32];
        bucket_label(k, le, sizeof le);
        fprintf(f, "%s_bucket{export=\"", name);
        put_label(f, s[e].name);
        fprintf(f, "\",op=\"%s\",le=\"%s\"} %llu\n", op_names[i], le,
                (unsigned long long) s[e].buckets[i][k]);
      }
      fprintf(f, "%s_sum{export=\"", name);
      put_label(f, s[e].name);
      fprintf(f, "\",op=\"%s\"} %.9f\n", op_names[i],
              s[e].latency_ns[i] / 1e9);
      sample(f, "nbdstack_request_duration_seconds_count", &s[e], "op",
             op_names[i], s[e].buckets[i][METRICS_BUCKETS - 1]);
    }
}

/* Layer counters: one family per layer and name, over every export that
 * has it, in the order first seen. */
static void
layer_families(FILE *f, const struct snapshot *s, size_t n)
{
  for (size_t e = 0; e < n; e++)
    for (size_t j = 0; j < s[e].nlayer; j++) {
      const struct layer_stat *ls = &s[e].layer[j];
      bool seen = false;
      for (size_t pe = 0; pe <= e && !seen; pe++)
        for (size_t pj = 0; pj < (pe == e ? j : s[pe].nlayer) && !seen; pj++)
          seen = strcmp(s[pe].layer[pj].layer, ls->layer) == 0 &&
                 strcmp(s[pe].layer[pj].st.name, ls->st.name) == 0;
      if (seen)
        continue;
      char name[256];
      snprintf(name, sizeof name, "nbdstack_%s_%s", ls->layer, ls->st.name);
      family(f, name, ls->st.kind == NBDS_STAT_COUNTER ? "counter" : "gauge",
             ls->st.help);
      for (size_t oe = e; oe < n; oe++)
        for (size_t oj = 0; oj < s[oe].nlayer; oj++)
          if (strcmp(s[oe].layer[oj].layer, ls->layer) == 0 &&
              strcmp(s[oe].layer[oj].st.name, ls->st.name) == 0)
            sample(f, name, &s[oe], NULL, NULL, s[oe].layer[oj].st.value);
    }
}

char *
metrics_render_prometheus(void)
{
  size_t n;
  struct snapshot *s = snapshot_all(&n);
  char *text = NULL;
  size_t len;
  FILE *f = open_memstream(&text, &len);
  if (!f) {
    free(s);
    return NULL;
  }
  by_op(f, s, n, "nbdstack_requests_total",
        "Requests replied to, by command (errors included).",
        offsetof(struct snapshot, requests));
  by_op(f, s, n, "nbdstack_bytes_total",
        "Bytes of the range of each successful request, by command.",
        offsetof(struct snapshot, bytes));
  by_op(f, s, n, "nbdstack_request_errors_total",
        "Requests answered with an error, by command.",
        offsetof(struct snapshot, errors));
  family(f, "nbdstack_errors_by_class_total", "counter",
         "Requests answered with an error, by NBD error.");
  for (size_t e = 0; e < n; e++)
    for (int i = 0; i < MERR_COUNT; i++)
      sample(f, "nbdstack_errors_by_class_total", &s[e], "error",
             err_names[i], s[e].errors_by_class[i]);
  family(f, "nbdstack_requests_in_flight", "gauge",
         "Requests received and not yet answered.");
  for (size_t e = 0; e < n; e++)
    sample(f, "nbdstack_requests_in_flight", &s[e], NULL, NULL,
           s[e].in_flight);
  family(f, "nbdstack_connections", "gauge",
         "Clients connected to the export now.");
  for (size_t e = 0; e < n; e++)
    sample(f, "nbdstack_connections", &s[e], NULL, NULL, s[e].conns);
  family(f, "nbdstack_connections_total", "counter",
         "Clients that have connected to the export.");
  for (size_t e = 0; e < n; e++)
    sample(f, "nbdstack_connections_total", &s[e], NULL, NULL,
           s[e].conns_total);
  histograms(f, s, n);
  layer_families(f, s, n);
  bool failed = ferror(f);
  fclose(f);
  free(s);
  if (failed) {
    free(text);
    return NULL;
  }
  return text;
}

static struct json_object *
json_export(const struct snapshot *s)
{
  struct json_object *o = json_object_new_object();
  json_object_object_add(o, "name", json_object_new_string(s->name));
  json_object_object_add(o, "requests_in_flight",
                         json_object_new_uint64(s->in_flight));
  json_object_object_add(o, "connections", json_object_new_uint64(s->conns));
  json_object_object_add(o, "connections_total",
                         json_object_new_uint64(s->conns_total));
  struct json_object *ops = json_object_new_object();
  for (int i = 0; i < MOP_COUNT; i++) {
    struct json_object *op = json_object_new_object();
    json_object_object_add(op, "requests",
                           json_object_new_uint64(s->requests[i]));
    json_object_object_add(op, "bytes", json_object_new_uint64(s->bytes[i]));
    json_object_object_add(op, "errors", json_object_new_uint64(s->errors[i]));
    json_object_object_add(op, "latency_sum_seconds",
                           json_object_new_double(s->latency_ns[i] / 1e9));
    struct json_object *b = json_object_new_object();
    for (int k = 0; k < METRICS_BUCKETS; k++) {
      char le[32];
      bucket_label(k, le, sizeof le);
      json_object_object_add(b, le, json_object_new_uint64(s->buckets[i][k]));
    }
    json_object_object_add(op, "latency_buckets", b);
    json_object_object_add(ops, op_names[i], op);
  }
  json_object_object_add(o, "ops", ops);
  struct json_object *errs = json_object_new_object();
  for (int i = 0; i < MERR_COUNT; i++)
    json_object_object_add(errs, err_names[i],
                           json_object_new_uint64(s->errors_by_class[i]));
  json_object_object_add(o, "errors_by_class", errs);
  struct json_object *layers = json_object_new_object();
  for (size_t j = 0; j < s->nlayer; j++) {
    struct json_object *l;
    if (!json_object_object_get_ex(layers, s->layer[j].layer, &l)) {
      l = json_object_new_object();
      json_object_object_add(layers, s->layer[j].layer, l);
    }
    json_object_object_add(l, s->layer[j].st.name,
                           json_object_new_uint64(s->layer[j].st.value));
  }
  json_object_object_add(o, "layers", layers);
  return o;
}

char *
metrics_render_json(void)
{
  size_t n;
  struct snapshot *s = snapshot_all(&n);
  struct json_object *root = json_object_new_object();
  struct json_object *list = json_object_new_array();
  for (size_t e = 0; e < n; e++)
    json_object_array_add(list, json_export(&s[e]));
  json_object_object_add(root, "exports", list);
  const char *str = json_object_to_json_string_ext(root,
                                                   JSON_C_TO_STRING_PRETTY);
  char *text = str ? strdup(str) : NULL;
  json_object_put(root);
  free(s);
  return text;
}
