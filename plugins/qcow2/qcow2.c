/* The qcow2 layer: open (with the backing chain), caps, close, and where
 * each request goes — the fast path on the calling reactor, or the
 * metadata thread (qcow2.h explains the two).
 *
 * Settings:
 *   file=PATH          the image's path, for resolving a relative backing
 *                      file name (the bytes come from the layer below)
 *   readonly=on|off
 *   snapshot=NAME      serve internal snapshot NAME, read-only (-l)
 *   l2-cache-size=N    bytes of L2 tables to cache (default: the whole
 *                      image, at most 32 MiB)
 *   bitmaps=in-use     write an image with persistent bitmaps, marking
 *                      them in use (otherwise it is refused read-write)
 *   aio=, direct=      how backing files are opened (as the image)
 *   depth=N            position in a backing chain (internal)
 *   overlay=on         the layer below is not the image but its backing
 *                      file: the image is a new temporary one (-s, see
 *                      overlay.c) */
#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

#define MAX_CHAIN_DEPTH 16

/* The backing file name as a path: absolute, or relative to the image's
 * folder.  Names with a protocol or json: are refused (never follow an
 * image author's choice of what to open). */
static char *
backing_path(const char *image, const char *name)
{
  if (strncmp(name, "json:", 5) == 0 || strstr(name, "://")) {
    nbds_error("qcow2: backing file '%s': only local file names are "
               "supported", name);
    return NULL;
  }
  if (name[0] == '/' || !image)
    return strdup(name);
  char *copy = strdup(image);
  if (!copy)
    return NULL;
  const char *dir = dirname(copy);
  size_t len = strlen(dir) + strlen(name) + 2;
  char *path = malloc(len);
  if (path)
    snprintf(path, len, "%s/%s", dir, name);
  free(copy);
  return path;
}

static int
open_backing(struct qcow2 *q, const struct nbds_kv *kv, size_t nkv,
             unsigned depth)
{
  const char *fmt = q->h.backing_format;
  if (!fmt) {
    nbds_error("qcow2: the image does not record the format of its "
               "backing file '%s' (set it with qemu-img rebase -u -F FMT)",
               q->h.backing_file);
    return -1;
  }
  if (strcmp(fmt, "raw") && strcmp(fmt, "qcow2")) {
    nbds_error("qcow2: backing file format '%s' is not supported", fmt);
    return -1;
  }
  if (depth >= MAX_CHAIN_DEPTH) {
    nbds_error("qcow2: the backing chain is deeper than %d (a loop?)",
               MAX_CHAIN_DEPTH);
    return -1;
  }
  char *path = backing_path(nbds_kv_get(kv, nkv, "file"), q->h.backing_file);
  if (!path)
    return -1;
  char d[16];
  snprintf(d, sizeof d, "%u", depth + 1);
  struct nbds_kv fkv[] = {
    { "file", path }, { "readonly", "on" },
    { "aio", nbds_kv_get(kv, nkv, "aio") },
    { "direct", nbds_kv_get(kv, nkv, "direct") },
  };
  size_t nf = 2;
  for (size_t i = 2; i < 4; i++)
    if (fkv[i].value)
      fkv[nf++] = fkv[i];
  struct nbds_layer *file = nbds_layer_open("file", NULL, fkv, nf);
  struct nbds_layer *top = NULL;
  if (file) {
    struct nbds_kv qkv[] = {
      { "file", path }, { "readonly", "on" }, { "depth", d },
      { "aio", nbds_kv_get(kv, nkv, "aio") },
      { "direct", nbds_kv_get(kv, nkv, "direct") },
    };
    size_t nq = 3;
    for (size_t i = 3; i < 5; i++)
      if (qkv[i].value)
        qkv[nq++] = qkv[i];
    top = strcmp(fmt, "qcow2") == 0
            ? nbds_layer_open("qcow2", file, qkv, nq)
            : nbds_layer_open("raw", file, NULL, 0);
    if (!top)
      nbds_layer_close_stack(file);
  }
  if (!top) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", nbds_last_error());
    nbds_error("qcow2: backing file '%s': %s", path, msg);
    free(path);
    return -1;
  }
  free(path);
  q->backing = top;
  q->backing_size = top->size;
  return 0;
}

static void
release(struct qcow2 *q)
{
  qcow2_thread_stop(q);
  qcow2_cache_destroy(&q->l2);
  qcow2_refcount_destroy(q);
  /* An overlay owns its file, and its backing file is the layer below;
   * otherwise the file is the layer below and the backing chain ours. */
  if (q->overlay)
    nbds_layer_close_stack(q->file);
  else if (q->backing)
    nbds_layer_close_stack(q->backing);
  qcow2_header_free(&q->h);
  free(q->l1);
  free(q->l1_dirty);
  free(q->l2_vetted);
  free(q->claimed);
  pthread_mutex_destroy(&q->lock);
  pthread_mutex_destroy(&q->qlock);
  pthread_cond_destroy(&q->qcond);
  free(q);
}

static int
qcow2_open(struct nbds_layer *l, const struct nbds_kv *kv, size_t nkv)
{
  static const char *const known[] = {
    "file", "readonly", "snapshot", "l2-cache-size", "bitmaps", "aio",
    "direct", "depth", "overlay", NULL,
  };
  if (nbds_kv_check("qcow2", kv, nkv, known) == -1)
    return -1;
  if (!l->below) {
    nbds_error("qcow2: needs a layer below it");
    return -1;
  }
  struct qcow2 *q = calloc(1, sizeof *q);
  if (!q) {
    nbds_error("out of memory");
    return -1;
  }
  pthread_mutex_init(&q->lock, NULL);
  pthread_mutex_init(&q->qlock, NULL);
  pthread_cond_init(&q->qcond, NULL);
  q->layer = l;
  q->file = l->below;
  const char *overlay = nbds_kv_get(kv, nkv, "overlay");
  if (overlay && strcmp(overlay, "on") == 0 &&
      qcow2_overlay_open(q, kv, nkv) == -1) {
    release(q);
    return -1;
  }
  const char *ro = nbds_kv_get(kv, nkv, "readonly");
  q->readonly = (ro && strcmp(ro, "on") == 0) || !q->file->caps.can_write;
  const char *bm = nbds_kv_get(kv, nkv, "bitmaps");
  q->allow_bitmaps = bm && strcmp(bm, "in-use") == 0;
  const char *depth = nbds_kv_get(kv, nkv, "depth");

  if (qcow2_open_image(q, nbds_kv_get(kv, nkv, "snapshot"),
                       nbds_kv_get(kv, nkv, "l2-cache-size")) == -1 ||
      (q->h.backing_file &&
       open_backing(q, kv, nkv, depth ? (unsigned) atoi(depth) : 0) == -1) ||
      qcow2_thread_start(q) == -1) {
    release(q);
    return -1;
  }
  l->priv = q;
  return 0;
}

static void
qcow2_close(struct nbds_layer *l)
{
  struct qcow2 *q = l->priv;
  qcow2_thread_stop(q);
  /* Whatever the last flush did not write (in cache=unsafe the flush
   * below is a no-op, but the metadata must still reach the file). */
  if (!q->readonly && qcow2_do_flush(q))
    nbds_error("qcow2: writing metadata at close failed");
  release(q);
}

static uint64_t
qcow2_size(struct nbds_layer *l)
{
  struct qcow2 *q = l->priv;
  return q->size;
}

static void
qcow2_caps(struct nbds_layer *l, struct nbds_caps *caps)
{
  struct qcow2 *q = l->priv;
  caps->can_write = !q->readonly;
  /* The metadata is this layer's: zeroing, trimming and extents are
   * answered here whatever the file below can do. */
  caps->can_trim = caps->can_zero = caps->can_fast_zero = !q->readonly;
  caps->can_extents = true;
  caps->can_alloc_depth = true;
  caps->can_cache = true;
  caps->block_min = 1;
  caps->block_pref = 4096;
  caps->block_max = 32 * 1024 * 1024;
}

static void
qcow2_submit(struct nbds_layer *l, struct nbds_req *req)
{
  struct qcow2 *q = l->priv;
  if (req->op == NBDS_OP_CACHE) {
    nbds_req_complete(req, 0);
    return;
  }
  if (!qcow2_fast_submit(q, req))
    qcow2_job_submit(q, req);
}

const struct nbds_layer_ops nbds_qcow2_ops = {
  .name = "qcow2",
  .open = qcow2_open,
  .close = qcow2_close,
  .size = qcow2_size,
  .caps = qcow2_caps,
  .submit = qcow2_submit,
};
