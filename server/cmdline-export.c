/* From command-line options to a stack of layers:
 *
 *   raw (-o)  →  blockcache (--block-cache, optional)
 *             →  cachepolicy (--cache)  →  file (direct I/O per --cache)
 *
 * The cache mode acts at three depths: direct I/O is how the protocol
 * layer opens the file, no-flush is the cachepolicy layer, and the write
 * cache setting is the export's (see cachepolicy/cachepolicy.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmdline-export.h"
#include "log.h"

#define MAX_KV 8

struct kvs {
  struct nbds_kv v[MAX_KV];
  size_t n;
};

static void
kv_add(struct kvs *k, const char *key, const char *value)
{
  if (value && k->n < MAX_KV)
    k->v[k->n++] = (struct nbds_kv) { key, value };
}

static struct nbds_layer *
push(const char *type, struct nbds_layer *below, const struct kvs *k)
{
  struct nbds_layer *l = nbds_layer_open(type, below, k->v, k->n);
  if (!l) {
    nbds_log_error("%s", nbds_last_error());
    nbds_layer_close_stack(below);
    exit(EXIT_FAILURE);
  }
  return l;
}

static struct nbds_layer *
open_file(const struct options *o, bool uring, bool direct)
{
  struct kvs k = { .n = 0 };
  kv_add(&k, "file", o->image);
  kv_add(&k, "readonly", o->readonly ? "on" : "off");
  kv_add(&k, "aio", uring ? "io_uring" : "threads");
  kv_add(&k, "direct", direct ? "on" : NULL);
  return nbds_layer_open("file", NULL, k.v, k.n);
}

/* The protocol layer, and the cache mode the cachepolicy layer gets.
 * --cache=auto (an nbdstack extension) uses direct I/O where the
 * filesystem has it and the page cache where it does not. */
static struct nbds_layer *
open_protocol(const struct options *o, bool uring, const char **mode)
{
  *mode = o->cache ? o->cache : "writeback";
  bool direct = strcmp(*mode, "none") == 0 || strcmp(*mode, "directsync") == 0;
  bool automatic = strcmp(*mode, "auto") == 0;

  struct nbds_layer *file = open_file(o, uring, direct || automatic);
  if (automatic) {
    if (file)
      *mode = "none";
    else if (strstr(nbds_last_error(), "does not support direct I/O")) {
      file = open_file(o, uring, false);
      *mode = "writeback";
    }
    if (file)
      nbds_log_info("cache=auto: using cache=%s for '%s'%s", *mode, o->image,
                    strcmp(*mode, "none") == 0 ? " (direct I/O)"
                    : " (the filesystem has no direct I/O)");
  }
  if (!file) {
    nbds_log_error("%s", nbds_last_error());
    exit(EXIT_FAILURE);
  }
  return file;
}

struct export *
cmdline_export_open(const struct options *o, bool uring)
{
  const char *mode;
  struct nbds_layer *top = open_protocol(o, uring, &mode);

  struct kvs cache = { .n = 0 };
  kv_add(&cache, "mode", mode);
  top = push("cachepolicy", top, &cache);

  if (o->block_cache) {
    struct kvs bc = { .n = 0 };
    kv_add(&bc, "size", o->block_cache);
    kv_add(&bc, "block", o->block_cache_block);
    kv_add(&bc, "read-miss", o->block_cache_read_miss);
    kv_add(&bc, "write-hit", o->block_cache_write_hit);
    kv_add(&bc, "write-miss", o->block_cache_write_miss);
    top = push("blockcache", top, &bc);
  }

  char offset[32];
  snprintf(offset, sizeof offset, "%llu", (unsigned long long) o->offset);
  struct kvs raw = { .n = 0 };
  kv_add(&raw, "offset", offset);
  top = push("raw", top, &raw);

  struct export *e = calloc(1, sizeof *e);
  if (!e || !(e->name = strdup(o->export_name)) ||
      (o->description && !(e->description = strdup(o->description)))) {
    nbds_log_error("out of memory");
    exit(EXIT_FAILURE);
  }
  e->top = top;
  e->readonly = o->readonly;
  /* A flush covers every connection, but with -e 1 a second connection
   * would wait in the backlog: advertise multi-conn only when clients can
   * really open several, as qemu-nbd does. */
  e->multi_conn = o->shared != 1;
  e->write_cache = strcmp(mode, "writethrough") != 0 &&
                   strcmp(mode, "directsync") != 0;
  e->discard = o->discard;
  e->detect_zeroes = o->detect_zeroes;
  return e;
}
