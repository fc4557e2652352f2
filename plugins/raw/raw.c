/* The raw format: the image's bytes are the disk's, from -o OFFSET on.
 * The export size is rounded up to 512 bytes, as qemu-nbd's block layer
 * reports whole sectors (a 1000-byte file exports 1024 bytes; reads of
 * the tail past the file's end see zeroes) — unless round=off, for what
 * nbdkit users expect of a plugin: its exact size. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "nbdstack/layer.h"

struct raw {
  uint64_t offset;
  bool round;
};

static int
raw_open(struct nbds_layer *l, const struct nbds_kv *kv, size_t nkv)
{
  static const char *const known[] = { "offset", "round", NULL };
  if (nbds_kv_check("raw", kv, nkv, known) == -1)
    return -1;
  if (!l->below) {
    nbds_error("raw: needs a layer below it");
    return -1;
  }
  uint64_t offset = 0;
  const char *s = nbds_kv_get(kv, nkv, "offset");
  if (s) {
    char *end;
    offset = strtoull(s, &end, 0);
    if (*s == '-' || *end) {
      nbds_error("raw: invalid offset '%s'", s);
      return -1;
    }
  }
  if (offset > l->below->size) {
    nbds_error("offset %" PRIu64 " is beyond the end of the image "
               "(%" PRIu64 " bytes)", offset, l->below->size);
    return -1;
  }
  const char *round = nbds_kv_get(kv, nkv, "round");
  if (round && strcmp(round, "on") && strcmp(round, "off")) {
    nbds_error("raw: round must be on or off, not '%s'", round);
    return -1;
  }
  struct raw *r = malloc(sizeof *r);
  if (!r) {
    nbds_error("out of memory");
    return -1;
  }
  r->offset = offset;
  r->round = !round || strcmp(round, "on") == 0;
  l->priv = r;
  return 0;
}

static void
raw_close(struct nbds_layer *l)
{
  free(l->priv);
}

static uint64_t
raw_size(struct nbds_layer *l)
{
  struct raw *r = l->priv;
  uint64_t bytes = l->below->size - r->offset;
  return r->round ? (bytes + 511) & ~UINT64_C(511) : bytes;
}

static void
raw_submit(struct nbds_layer *l, struct nbds_req *req)
{
  struct raw *r = l->priv;
  if (req->op != NBDS_OP_FLUSH)
    req->offset += r->offset;
  nbds_layer_submit(l->below, req);
}

const struct nbds_layer_ops nbds_raw_ops = {
  .name = "raw",
  .open = raw_open,
  .close = raw_close,
  .size = raw_size,
  .submit = raw_submit,
};
