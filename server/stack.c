/* From command-line options to a stack of layers:
 *
 *   [qcow2 temporary overlay (-s)]
 *     →  raw (-o) or qcow2  →  blockcache (--block-cache, optional)
 *     →  cachepolicy (--cache)  →  file (direct I/O per --cache)
 *
 * The cache mode acts at three depths: direct I/O is how the protocol
 * layer opens the file, no-flush is the cachepolicy layer, and the write
 * cache setting is the export's (see cachepolicy/cachepolicy.c).
 *
 * An image that is an NBD URI (nbd://, nbd+unix://, ...) is exported
 * through the nbd layer instead of file, and --plugin through the nbdkit
 * plugin host; direct I/O does not apply there, so cache=none and auto
 * act as writeback and directsync as writethrough.  An image named
 * rbd:POOL/IMAGE... is a Ceph RBD image (the rbd layer): there direct
 * I/O means librbd's client cache off (QEMU's rule), which auto picks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmdline-export.h"
#include "log.h"

#define MAX_KV 10

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

/* With -s the image is only read: writes go to the overlay. */
static const char *
image_readonly(const struct options *o)
{
  return o->readonly || o->temp_overlay ? "on" : "off";
}

static struct nbds_layer *
open_file(const struct options *o, bool uring, bool direct)
{
  struct kvs k = { .n = 0 };
  kv_add(&k, "file", o->image);
  kv_add(&k, "readonly", image_readonly(o));
  kv_add(&k, "aio", uring ? "io_uring" : "threads");
  kv_add(&k, "direct", direct ? "on" : NULL);
  return nbds_layer_open("file", NULL, k.v, k.n);
}

bool
cmdline_image_is_uri(const char *image)
{
  static const char *const schemes[] = {
    "nbd:", "nbds:", "nbd+unix:", "nbds+unix:", "nbd+vsock:", "nbds+vsock:",
  };
  for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
    if (strncmp(image, schemes[i], strlen(schemes[i])) == 0)
      return true;
  return false;
}

bool
cmdline_image_is_rbd(const char *image)
{
  return strncmp(image, "rbd:", 4) == 0;
}

/* rbd:...: cache=none and directsync turn librbd's client cache off. */
static struct nbds_layer *
open_rbd(const struct options *o, const char **mode)
{
#ifdef NBDS_HAVE_RBD
  if (strcmp(*mode, "auto") == 0) {
    *mode = "none";
    nbds_log_info("cache=auto: using cache=none for '%s' (librbd's client "
                  "cache off)", o->image);
  }
  bool direct = strcmp(*mode, "none") == 0 || strcmp(*mode, "directsync") == 0;
  struct kvs k = { .n = 0 };
  kv_add(&k, "image", o->image);
  kv_add(&k, "readonly", image_readonly(o));
  kv_add(&k, "cache", direct ? "off" : "on");
  kv_add(&k, "timeout", o->rbd_timeout);
  struct nbds_layer *l = nbds_layer_open("rbd", NULL, k.v, k.n);
  if (!l) {
    nbds_log_error("%s", nbds_last_error());
    exit(EXIT_FAILURE);
  }
  return l;
#else
  (void) mode;
  nbds_log_error("'%s': this nbdstack was built without the RBD driver "
                 "(librbd)", o->image);
  exit(EXIT_FAILURE);
#endif
}

/* --plugin NAME KEY=VALUE...: the nbdkit plugin host, with the plugin's
 * parameters in command-line order (a bare word goes to the plugin's
 * magic config key, as on nbdkit's command line). */
static struct nbds_layer *
open_plugin(const struct options *o)
{
  size_t n = 2 + o->nplugin_args;
  struct nbds_kv *kv = calloc(n, sizeof *kv);
  char **copies = calloc(n, sizeof *copies);
  if (!kv || !copies) {
    nbds_log_error("out of memory");
    exit(EXIT_FAILURE);
  }
  kv[0] = (struct nbds_kv) { "plugin", o->plugin };
  kv[1] = (struct nbds_kv) { "readonly", image_readonly(o) };
  for (int i = 0; i < o->nplugin_args; i++) {
    const char *arg = o->plugin_args[i];
    const char *eq = strchr(arg, '=');
    if (eq && eq != arg) {
      copies[i] = strndup(arg, eq - arg);
      if (!copies[i]) {
        nbds_log_error("out of memory");
        exit(EXIT_FAILURE);
      }
      kv[2 + i] = (struct nbds_kv) { copies[i], eq + 1 };
    } else
      kv[2 + i] = (struct nbds_kv) { "", arg };
  }
  struct nbds_layer *l = nbds_layer_open("nbdkit", NULL, kv, n);
  for (size_t i = 0; i < n; i++)
    free(copies[i]);
  free(copies);
  free(kv);
  if (!l) {
    nbds_log_error("%s", nbds_last_error());
    exit(EXIT_FAILURE);
  }
  return l;
}

/* The protocol layer, and the cache mode the cachepolicy layer gets.
 * --cache=auto (an nbdstack extension) uses direct I/O where the
 * filesystem has it and the page cache where it does not. */
static struct nbds_layer *
open_protocol(const struct options *o, bool uring, const char **mode)
{
  *mode = o->cache ? o->cache : "writeback";
  if (o->upstream_timeout && (o->plugin || !cmdline_image_is_uri(o->image))) {
    nbds_log_error("--upstream-timeout applies only to an NBD URI image");
    exit(EXIT_FAILURE);
  }
  if (!o->plugin && cmdline_image_is_rbd(o->image))
    return open_rbd(o, mode);
  if (o->plugin || cmdline_image_is_uri(o->image)) {
    bool direct = strcmp(*mode, "none") == 0 ||
                  strcmp(*mode, "directsync") == 0;
    if (direct || strcmp(*mode, "auto") == 0) {
      const char *as = strcmp(*mode, "directsync") == 0 ? "writethrough"
                                                         : "writeback";
      if (direct)
        nbds_log_info("cache=%s: direct I/O does not apply to %s; "
                      "using cache=%s", *mode,
                      o->plugin ? "an nbdkit plugin" : "an NBD upstream", as);
      *mode = as;
    }
    if (o->plugin)
      return open_plugin(o);
    struct kvs k = { .n = 0 };
    kv_add(&k, "uri", o->image);
    kv_add(&k, "readonly", image_readonly(o));
    if (o->upstream_timeout)
      kv_add(&k, "timeout", o->upstream_timeout);
    struct nbds_layer *nbd = nbds_layer_open("nbd", NULL, k.v, k.n);
    if (!nbd) {
      nbds_log_error("%s", nbds_last_error());
      exit(EXIT_FAILURE);
    }
    return nbd;
  }
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

/* qcow2 over the stack below; its backing files are opened as the image
 * is (the same aio and direct I/O settings). */
static struct nbds_layer *
push_qcow2(const struct options *o, struct nbds_layer *below, bool uring,
           const char *mode)
{
  bool direct = strcmp(mode, "none") == 0 || strcmp(mode, "directsync") == 0;
  struct kvs q = { .n = 0 };
  if (!cmdline_image_is_uri(o->image) && !cmdline_image_is_rbd(o->image))
    kv_add(&q, "file", o->image);
  kv_add(&q, "readonly", image_readonly(o));
  kv_add(&q, "snapshot", o->snapshot_name);
  kv_add(&q, "l2-cache-size", o->l2_cache_size);
  kv_add(&q, "bitmaps", o->bitmaps_in_use ? "in-use" : NULL);
  kv_add(&q, "aio", uring ? "io_uring" : "threads");
  kv_add(&q, "direct", direct ? "on" : NULL);
  return push("qcow2", below, &q);
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

  if (o->format && strcmp(o->format, "qcow2") == 0)
    top = push_qcow2(o, top, uring, mode);
  else {
    char offset[32];
    snprintf(offset, sizeof offset, "%llu", (unsigned long long) o->offset);
    struct kvs raw = { .n = 0 };
    kv_add(&raw, "offset", offset);
    kv_add(&raw, "round", o->plugin ? "off" : NULL);
    top = push("raw", top, &raw);
  }

  if (o->temp_overlay) {
    struct kvs ov = { .n = 0 };
    kv_add(&ov, "overlay", "on");
    kv_add(&ov, "readonly", o->readonly ? "on" : "off");
    kv_add(&ov, "aio", uring ? "io_uring" : "threads");
    top = push("qcow2", top, &ov);
  }

  struct export *e = calloc(1, sizeof *e);
  if (!e || !(e->name = strdup(o->export_name)) ||
      (o->description && !(e->description = strdup(o->description)))) {
    nbds_log_error("out of memory");
    exit(EXIT_FAILURE);
  }
  e->top = top;
  e->readonly = o->readonly;
  e->alloc_depth = o->allocation_depth;
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
