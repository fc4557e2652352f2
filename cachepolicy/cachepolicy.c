/* Cache-mode semantics, for every protocol driver below.
 *
 * QEMU's five modes are three settings (bdrv_parse_cache_mode):
 *
 *   mode          direct  no-flush  write cache
 *   writeback     off     off       on
 *   writethrough  off     off       off
 *   none          on      off       on
 *   directsync    on      off       off
 *   unsafe        off     on        on
 *
 * They act at three depths, as in QEMU.  Direct I/O is how the protocol
 * layer opens the file (the file layer's direct=on).  Write cache off is
 * the export's (QEMU's BlockBackend): export_submit() adds FUA to every
 * write, trim and zero at the top, so that a block cache above this layer
 * writes them through too.  This layer, just above the protocol layer,
 * does the rest:
 *
 * - FUA: native below, or emulated here as write then flush, so that any
 *   protocol layer that can flush can honour FUA.
 * - No-flush (unsafe): FLUSH and FUA succeed at once and never reach the
 *   disk.  A block cache above still writes its dirty blocks back on
 *   FLUSH (to the OS, as QEMU's flush_to_os), so nothing is lost at exit.
 * - FLUSH is skipped when nothing was written since the last successful
 *   flush (QEMU's flush elision), and once a flush (or a native FUA write,
 *   with EIO) has failed every later one fails too: the kernel may have
 *   dropped the dirty pages, so success would be a lie.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdstack/layer.h"

struct cachepolicy {
  bool no_flush;
  /* Flush elision: writes completed (not already durable) and the
   * generation the last successful flush covered. */
  atomic_uint_fast64_t written_gen;
  atomic_uint_fast64_t flushed_gen;
  atomic_int flush_error;   /* sticky errno of a failed flush */
};

/* The one setting of each mode this layer enforces. */
static const struct {
  const char *name;
  bool no_flush;
} modes[] = {
  { "writeback",    false },
  { "writethrough", false },
  { "none",         false },
  { "directsync",   false },
  { "unsafe",       true },
};

static int
cp_open(struct nbds_layer *l, const struct nbds_kv *kv, size_t nkv)
{
  static const char *const known[] = { "mode", NULL };
  if (nbds_kv_check("cachepolicy", kv, nkv, known) == -1)
    return -1;
  if (!l->below) {
    nbds_error("cachepolicy: needs a layer below it");
    return -1;
  }
  const char *mode = nbds_kv_get(kv, nkv, "mode");
  if (!mode)
    mode = "writeback";
  struct cachepolicy *cp = calloc(1, sizeof *cp);
  if (!cp) {
    nbds_error("out of memory");
    return -1;
  }
  size_t i;
  for (i = 0; i < sizeof modes / sizeof modes[0]; i++)
    if (strcmp(modes[i].name, mode) == 0)
      break;
  if (i == sizeof modes / sizeof modes[0]) {
    free(cp);
    nbds_error("unknown cache mode '%s'", mode);
    return -1;
  }
  cp->no_flush = modes[i].no_flush;
  l->priv = cp;
  return 0;
}

static void
cp_close(struct nbds_layer *l)
{
  free(l->priv);
}

static void
cp_caps(struct nbds_layer *l, struct nbds_caps *caps)
{
  struct cachepolicy *cp = l->priv;
  if (cp->no_flush) {
    /* Flushes are answered here, whatever the layer below can do. */
    caps->can_flush = true;
    caps->fua = NBDS_FUA_NATIVE;
  } else if (caps->fua == NBDS_FUA_NONE && caps->can_flush)
    caps->fua = NBDS_FUA_EMULATE;
  /* multi-conn passes through: this layer keeps no per-connection state. */
}

static bool
is_write(enum nbds_op op)
{
  return op == NBDS_OP_WRITE || op == NBDS_OP_TRIM || op == NBDS_OP_ZERO;
}

/* Emulated FUA: the write has completed below; now flush, then complete
 * the parent.  scratch[0] marks which step a child is at. */
enum { STEP_WRITE, STEP_FLUSH };

static void submit_flush(struct nbds_layer *l, struct nbds_req *req);

static void
emulated_done(struct nbds_req *child, int err)
{
  struct nbds_layer *l = child->opaque;
  struct nbds_req *parent = child->parent;
  if (err || child->scratch[0] == STEP_FLUSH) {
    nbds_req_free(child);
    nbds_req_complete(parent, err);
    return;
  }
  struct cachepolicy *cp = l->priv;
  atomic_fetch_add(&cp->written_gen, 1);
  child->scratch[0] = STEP_FLUSH;
  child->op = NBDS_OP_FLUSH;
  child->flags = 0;
  child->offset = child->count = 0;
  submit_flush(l, child);
}

static void
write_done(struct nbds_req *child, int err)
{
  struct nbds_layer *l = child->opaque;
  struct cachepolicy *cp = l->priv;
  struct nbds_req *parent = child->parent;
  /* A write made durable by native FUA leaves nothing to flush. */
  if (!err && !(child->flags & NBDS_F_FUA))
    atomic_fetch_add(&cp->written_gen, 1);
  /* Native FUA (RWF_DSYNC) that failed with EIO may have been the sync
   * that reported lost write-back of earlier writes: the kernel reports
   * that once per file, so the next fdatasync would succeed.  ENOSPC is
   * not made sticky: it is most often the allocation failing, and a full
   * disk must work again once space is freed. */
  if (err == EIO && (child->flags & NBDS_F_FUA)) {
    int none = 0;
    atomic_compare_exchange_strong(&cp->flush_error, &none, err);
  }
  nbds_req_free(child);
  nbds_req_complete(parent, err);
}

static void
flush_done(struct nbds_req *child, int err)
{
  struct nbds_layer *l = child->opaque;
  struct cachepolicy *cp = l->priv;
  struct nbds_req *parent = child->parent;
  uint64_t gen = child->scratch[1];
  if (err) {
    int none = 0;
    atomic_compare_exchange_strong(&cp->flush_error, &none, err);
  } else {
    uint_fast64_t seen = atomic_load(&cp->flushed_gen);
    while (seen < gen &&
           !atomic_compare_exchange_weak(&cp->flushed_gen, &seen, gen))
      ;
  }
  err = err ? err : atomic_load(&cp->flush_error);
  nbds_req_free(child);
  nbds_req_complete(parent, err);
}

/* Flush through a child request `child` whose parent is the request to
 * complete afterwards. */
static void
submit_flush(struct nbds_layer *l, struct nbds_req *child)
{
  struct cachepolicy *cp = l->priv;
  int sticky = atomic_load(&cp->flush_error);
  uint64_t gen = atomic_load(&cp->written_gen);
  if (sticky || gen == atomic_load(&cp->flushed_gen)) {
    struct nbds_req *parent = child->parent;
    nbds_req_free(child);
    nbds_req_complete(parent, sticky);
    return;
  }
  child->scratch[1] = gen;
  child->done = flush_done;
  child->opaque = l;
  nbds_layer_submit(l->below, child);
}

static void
cp_submit(struct nbds_layer *l, struct nbds_req *req)
{
  struct cachepolicy *cp = l->priv;

  if (cp->no_flush) {
    if (req->op == NBDS_OP_FLUSH) {
      nbds_req_complete(req, 0);
      return;
    }
    req->flags &= ~NBDS_F_FUA;
  }

  if (req->op == NBDS_OP_FLUSH) {
    struct nbds_req *child = nbds_req_child(req);
    child->scratch[0] = STEP_WRITE;  /* a plain flush, not a FUA step */
    submit_flush(l, child);
    return;
  }
  if (!is_write(req->op)) {
    nbds_layer_submit(l->below, req);
    return;
  }

  struct nbds_req *child = nbds_req_child(req);
  child->opaque = l;
  if ((req->flags & NBDS_F_FUA) && l->below->caps.fua != NBDS_FUA_NATIVE) {
    child->flags &= ~NBDS_F_FUA;
    child->scratch[0] = STEP_WRITE;
    child->done = emulated_done;
  } else
    child->done = write_done;
  nbds_layer_submit(l->below, child);
}

const struct nbds_layer_ops nbds_cachepolicy_ops = {
  .name = "cachepolicy",
  .open = cp_open,
  .close = cp_close,
  .caps = cp_caps,
  .submit = cp_submit,
};
