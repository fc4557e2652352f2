/* From an export's settings to a stack of layers:
 *
 *   [qcow2 temporary overlay (-s)]
 *     →  raw (-o) or qcow2  →  blockcache (--block-cache, optional)
 *     →  cachepolicy (--cache)  →  faults (--inject-error, optional)
 *     →  file (direct I/O per --cache)
 *
 * The cache mode acts at three depths: direct I/O is how the protocol
 * layer opens the file, no-flush is the cachepolicy layer, and the write
 * cache setting is the export's (see cachepolicy/cachepolicy.c).
 *
 * An image that is an NBD URI (nbd://, nbd+unix://, ...) is exported
 * through the nbd layer instead of file, and a plugin through the nbdkit
 * plugin host; direct I/O does not apply there, so cache=none and auto
 * act as writeback and directsync as writethrough.  An image named
 * rbd:POOL/IMAGE... is a Ceph RBD image (the rbd layer): there direct
 * I/O means librbd's client cache off (QEMU's rule), which auto picks.
 *
 * Nothing here exits: a stack that fails to open at start-up ends the
 * server, but one a reload asks for must not. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "allow.h"
#include "log.h"
#include "server.h"
#include "stack.h"
#include "tls.h"

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

/* Push a layer over `below`; on failure close the whole stack. */
static struct nbds_layer *
push(const char *type, struct nbds_layer *below, const struct kvs *k)
{
  struct nbds_layer *l = nbds_layer_open(type, below, k->v, k->n);
  if (!l)
    nbds_layer_close_stack(below);
  return l;
}

/* With -s the image is only read: writes go to the overlay. */
static const char *
image_readonly(const struct export_settings *s)
{
  return s->readonly || s->temp_overlay ? "on" : "off";
}

static bool
is_direct(const char *mode)
{
  return strcmp(mode, "none") == 0 || strcmp(mode, "directsync") == 0;
}

static struct nbds_layer *
open_file(const struct export_settings *s, bool uring, bool direct)
{
  struct kvs k = { .n = 0 };
  kv_add(&k, "file", s->image);
  kv_add(&k, "readonly", image_readonly(s));
  kv_add(&k, "aio", uring ? "io_uring" : "threads");
  kv_add(&k, "direct", direct ? "on" : NULL);
  return nbds_layer_open("file", NULL, k.v, k.n);
}

bool
image_is_uri(const char *image)
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
image_is_rbd(const char *image)
{
  return strncmp(image, "rbd:", 4) == 0;
}

/* rbd:...: cache=none and directsync turn librbd's client cache off. */
static struct nbds_layer *
open_rbd(const struct export_settings *s, const char **mode)
{
#ifdef NBDS_HAVE_RBD
  if (strcmp(*mode, "auto") == 0) {
    *mode = "none";
    nbds_log_info("cache=auto: using cache=none for '%s' (librbd's client "
                  "cache off)", s->image);
  }
  struct kvs k = { .n = 0 };
  kv_add(&k, "image", s->image);
  kv_add(&k, "readonly", image_readonly(s));
  kv_add(&k, "cache", is_direct(*mode) ? "off" : "on");
  kv_add(&k, "timeout", s->rbd_timeout);
  return nbds_layer_open("rbd", NULL, k.v, k.n);
#else
  (void) mode;
  nbds_error("'%s': this nbdstack was built without the RBD driver "
             "(librbd)", s->image);
  return NULL;
#endif
}

/* An nbdkit plugin: the plugin host, with the plugin's parameters in
 * order (a bare word goes to the plugin's magic config key, as on
 * nbdkit's command line). */
static struct nbds_layer *
open_plugin(const struct export_settings *s)
{
  size_t n = 2 + s->nplugin_args;
  struct nbds_kv *kv = calloc(n, sizeof *kv);
  char **copies = calloc(n, sizeof *copies);
  struct nbds_layer *l = NULL;
  if (!kv || !copies)
    goto oom;
  kv[0] = (struct nbds_kv) { "plugin", s->plugin };
  kv[1] = (struct nbds_kv) { "readonly", image_readonly(s) };
  for (int i = 0; i < s->nplugin_args; i++) {
    const char *arg = s->plugin_args[i];
    const char *eq = strchr(arg, '=');
    if (eq && eq != arg) {
      copies[i] = strndup(arg, eq - arg);
      if (!copies[i])
        goto oom;
      kv[2 + i] = (struct nbds_kv) { copies[i], eq + 1 };
    } else
      kv[2 + i] = (struct nbds_kv) { "", arg };
  }
  l = nbds_layer_open("nbdkit", NULL, kv, n);
  goto out;
oom:
  nbds_error("out of memory");
out:
  for (size_t i = 0; copies && i < n; i++)
    free(copies[i]);
  free(copies);
  free(kv);
  return l;
}

/* An upstream NBD server or an nbdkit plugin: no direct I/O. */
static struct nbds_layer *
open_remote(const struct export_settings *s, const char **mode)
{
  if (is_direct(*mode) || strcmp(*mode, "auto") == 0) {
    const char *as = strcmp(*mode, "directsync") == 0 ? "writethrough"
                                                      : "writeback";
    if (is_direct(*mode))
      nbds_log_info("cache=%s: direct I/O does not apply to %s; "
                    "using cache=%s", *mode,
                    s->plugin ? "an nbdkit plugin" : "an NBD upstream", as);
    *mode = as;
  }
  if (s->plugin)
    return open_plugin(s);
  struct kvs k = { .n = 0 };
  kv_add(&k, "uri", s->image);
  kv_add(&k, "readonly", image_readonly(s));
  kv_add(&k, "timeout", s->upstream_timeout);
  return nbds_layer_open("nbd", NULL, k.v, k.n);
}

/* The protocol layer, and the cache mode the cachepolicy layer gets.
 * cache=auto (an nbdstack extension) uses direct I/O where the
 * filesystem has it and the page cache where it does not. */
static struct nbds_layer *
open_protocol(const struct export_settings *s, bool uring, const char **mode)
{
  *mode = s->cache ? s->cache : "writeback";
  if (!s->plugin && image_is_rbd(s->image))
    return open_rbd(s, mode);
  if (s->plugin || image_is_uri(s->image))
    return open_remote(s, mode);

  bool automatic = strcmp(*mode, "auto") == 0;
  struct nbds_layer *file = open_file(s, uring, is_direct(*mode) || automatic);
  if (automatic) {
    if (file)
      *mode = "none";
    else if (strstr(nbds_last_error(), "does not support direct I/O")) {
      file = open_file(s, uring, false);
      *mode = "writeback";
    }
    if (file)
      nbds_log_info("cache=auto: using cache=%s for '%s'%s", *mode, s->image,
                    strcmp(*mode, "none") == 0 ? " (direct I/O)"
                    : " (the filesystem has no direct I/O)");
  }
  return file;
}

/* qcow2 over the stack below; its backing files are opened as the image
 * is (the same aio and direct I/O settings). */
static struct nbds_layer *
push_qcow2(const struct export_settings *s, struct nbds_layer *below,
           bool uring, const char *mode)
{
  struct kvs q = { .n = 0 };
  if (!image_is_uri(s->image) && !image_is_rbd(s->image))
    kv_add(&q, "file", s->image);
  kv_add(&q, "readonly", image_readonly(s));
  kv_add(&q, "snapshot", s->snapshot_name);
  kv_add(&q, "l2-cache-size", s->l2_cache_size);
  kv_add(&q, "bitmaps", s->bitmaps_in_use ? "in-use" : NULL);
  kv_add(&q, "aio", uring ? "io_uring" : "threads");
  kv_add(&q, "direct", is_direct(mode) ? "on" : NULL);
  return push("qcow2", below, &q);
}

static struct nbds_layer *
open_stack(const struct export_settings *s, bool uring, const char **mode)
{
  struct nbds_layer *top = open_protocol(s, uring, mode);
  if (!top)
    return NULL;

  if (s->ninject_errors) {
    struct kvs rules = { .n = 0 };
    for (int i = 0; i < s->ninject_errors; i++)
      kv_add(&rules, "rule", s->inject_errors[i]);
    if (!(top = push("faults", top, &rules)))
      return NULL;
  }

  struct kvs cache = { .n = 0 };
  kv_add(&cache, "mode", *mode);
  if (!(top = push("cachepolicy", top, &cache)))
    return NULL;

  if (s->block_cache) {
    struct kvs bc = { .n = 0 };
    kv_add(&bc, "size", s->block_cache);
    kv_add(&bc, "block", s->block_cache_block);
    kv_add(&bc, "read-miss", s->block_cache_read_miss);
    kv_add(&bc, "write-hit", s->block_cache_write_hit);
    kv_add(&bc, "write-miss", s->block_cache_write_miss);
    if (!(top = push("blockcache", top, &bc)))
      return NULL;
  }

  if (s->format && strcmp(s->format, "qcow2") == 0)
    top = push_qcow2(s, top, uring, *mode);
  else {
    char offset[32];
    snprintf(offset, sizeof offset, "%llu", (unsigned long long) s->offset);
    struct kvs raw = { .n = 0 };
    kv_add(&raw, "offset", offset);
    kv_add(&raw, "round", s->plugin ? "off" : NULL);
    top = push("raw", top, &raw);
  }

  if (top && s->temp_overlay) {
    struct kvs ov = { .n = 0 };
    kv_add(&ov, "overlay", "on");
    kv_add(&ov, "readonly", s->readonly ? "on" : "off");
    kv_add(&ov, "aio", uring ? "io_uring" : "threads");
    top = push("qcow2", top, &ov);
  }
  return top;
}

/* Without a format, refuse an image that is plainly another format
 * rather than exporting its metadata as data (qemu-nbd would probe it). */
static bool
other_format(const struct export_settings *s)
{
  unsigned char magic[4];
  if (s->format || s->plugin || image_is_uri(s->image) ||
      image_is_rbd(s->image))
    return false;  /* nothing to sniff */
  int fd = open(s->image, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return false;  /* the file layer reports the real error */
  bool qcow2 = read(fd, magic, 4) == 4 && memcmp(magic, "QFI\xfb", 4) == 0;
  close(fd);
  if (qcow2)
    nbds_error("'%s' is a qcow2 image: pass -f qcow2 to serve it, or -f raw "
               "to export its bytes as they are (nbdstack never guesses a "
               "format)", s->image);
  return qcow2;
}

struct export *
export_open(const struct export_settings *s, bool uring)
{
  struct export *e = calloc(1, sizeof *e);
  const char *bad;
  if (!e || !(e->name = strdup(s->name)) ||
      (s->description && !(e->description = strdup(s->description))) ||
      (s->allow && !(e->allow = allow_list_new()))) {
    nbds_error("out of memory");
    goto fail;
  }
  if (s->allow && !allow_list_add(e->allow, s->allow, &bad)) {
    nbds_error("invalid address or network '%s' (ADDR[/PREFIX])", bad);
    goto fail;
  }
  if (s->tls_required && tls_mode() == TLS_OFF) {
    nbds_error("tls = require, but the server has no TLS (tls-certificates "
               "or tls-psk in [server])");
    goto fail;
  }
  const char *mode;
  if (other_format(s) || !(e->top = open_stack(s, uring, &mode)))
    goto fail;
  e->readonly = s->readonly;
  e->alloc_depth = s->allocation_depth;
  e->tls_required = s->tls_required;
  /* A flush covers every connection, but with -e 1 a second connection
   * would wait in the backlog: advertise multi-conn only when clients can
   * really open several, as qemu-nbd does. */
  e->multi_conn = server_config.shared != 1;
  e->write_cache = strcmp(mode, "writethrough") != 0 &&
                   strcmp(mode, "directsync") != 0;
  e->discard = s->discard;
  e->detect_zeroes = s->detect_zeroes;
  return e;

fail:
  /* The command line's one export usually has no name to give. */
  if (*s->name)
    nbds_log_error("export '%s': %s", s->name, nbds_last_error());
  else
    nbds_log_error("%s", nbds_last_error());
  if (e)
    export_free(e);
  return NULL;
}
