/* An in-server block cache, for slow or remote layers below (an upstream
 * NBD server).  The server stacks it between the format and the cache
 * policy: format -> blockcache -> cachepolicy -> protocol.
 *
 * Options (CPU-cache vocabulary):
 *   size=SIZE        memory for the cache, blocks and bookkeeping (required)
 *   block=SIZE       block size, a power of two from 4K to 4M (64K)
 *   read-miss=       allocate (fill the block, then serve) | bypass
 *   write-hit=       write-back (dirty until FLUSH or eviction) |
 *                    write-through (below before completing)
 *   write-miss=      allocate (fill the rest of a partial block, then as
 *                    a hit) | no-allocate (below only)
 * SIZE is bytes, or a number with K, M or G.
 *
 * One cache serves every connection and reactor, so a FLUSH (which
 * writes back every dirty block) covers all connections, and multi-conn
 * is whatever below says.  A dirty block is never dropped unwritten.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blockcache.h"

/* A key whose value is one of two words; *first tells which. */
static int
choice(const struct nbds_kv *kv, size_t nkv, const char *key,
       const char *a, const char *b, bool *first)
{
  const char *v = nbds_kv_get(kv, nkv, key);
  if (!v || strcmp(v, a) == 0)
    *first = true;
  else if (strcmp(v, b) == 0)
    *first = false;
  else {
    nbds_error("blockcache: %s must be %s or %s, not '%s'", key, a, b, v);
    return -1;
  }
  return 0;
}

static void
free_cache(struct blockcache *bc)
{
  free(bc->data);
  free(bc->buckets);
  free(bc->slots);
  free(bc);
}

static int
bc_open(struct nbds_layer *l, const struct nbds_kv *kv, size_t nkv)
{
  static const char *const known[] = {
    "size", "block", "read-miss", "write-hit", "write-miss", NULL,
  };
  if (nbds_kv_check("blockcache", kv, nkv, known) == -1)
    return -1;
  if (!l->below) {
    nbds_error("blockcache: needs a layer below it");
    return -1;
  }
  const char *size_s = nbds_kv_get(kv, nkv, "size");
  uint64_t size, bs = 64 * 1024;
  if (!size_s) {
    nbds_error("blockcache: size is required");
    return -1;
  }
  if (nbds_parse_size(size_s, &size) == -1) {
    nbds_error("blockcache: invalid size '%s'", size_s);
    return -1;
  }
  const char *bs_s = nbds_kv_get(kv, nkv, "block");
  if (bs_s && (nbds_parse_size(bs_s, &bs) == -1 || bs < 4096 ||
               bs > 4 * 1024 * 1024 || (bs & (bs - 1)))) {
    nbds_error("blockcache: block must be a power of two from 4K to 4M, "
               "not '%s'", bs_s);
    return -1;
  }
  if (bs < l->below->caps.block_min) {
    nbds_error("blockcache: block (%" PRIu64 ") is smaller than the "
               "layer below's minimum block (%" PRIu32 ")", bs,
               l->below->caps.block_min);
    return -1;
  }
  bool read_allocate, write_back, write_allocate;
  if (choice(kv, nkv, "read-miss", "allocate", "bypass", &read_allocate) ||
      choice(kv, nkv, "write-hit", "write-back", "write-through",
             &write_back) ||
      choice(kv, nkv, "write-miss", "allocate", "no-allocate",
             &write_allocate))
    return -1;

  /* size covers the blocks, their slots and hash buckets, and this. */
  uint64_t per = bs + sizeof(struct bc_slot) + sizeof(struct bc_slot *);
  if (size < sizeof(struct blockcache) + per) {
    nbds_error("blockcache: size %s cannot hold one block of %" PRIu64
               " bytes (it needs %" PRIu64 ")", size_s, bs,
               (uint64_t) sizeof(struct blockcache) + per);
    return -1;
  }
  struct blockcache *bc = calloc(1, sizeof *bc);
  if (!bc) {
    nbds_error("out of memory");
    return -1;
  }
  bc->below = l->below;
  bc->size = l->below->size;
  bc->bs = bs;
  while ((UINT64_C(1) << bc->shift) < bs)
    bc->shift++;
  bc->read_allocate = read_allocate;
  bc->write_back = write_back;
  bc->write_allocate = write_allocate;
  bc->nslots = (size - sizeof *bc) / per;
  size_t nbuckets = 1;
  while (nbuckets * 2 <= bc->nslots)
    nbuckets *= 2;
  bc->mask = nbuckets - 1;
  void *data = NULL;
  bc->slots = calloc(bc->nslots, sizeof *bc->slots);
  bc->buckets = calloc(nbuckets, sizeof *bc->buckets);
  /* Pages are touched only as blocks are first used. */
  if (!bc->slots || !bc->buckets ||
      posix_memalign(&data, 4096, bc->nslots * bs) != 0) {
    free_cache(bc);
    nbds_error("blockcache: cannot allocate %s of memory", size_s);
    return -1;
  }
  bc->data = data;
  for (size_t i = bc->nslots; i-- > 0;) {
    bc->slots[i].next = bc->free_slots;
    bc->free_slots = &bc->slots[i];
  }
  pthread_mutex_init(&bc->lock, NULL);
  l->priv = bc;
  return 0;
}

/* The server flushes before it closes; whatever is still dirty now is
 * lost, and that must not pass silently. */
static void
bc_close(struct nbds_layer *l)
{
  struct blockcache *bc = l->priv;
  uint64_t blocks = 0, bytes = 0;
  for (size_t i = 0; i < bc->nslots; i++)
    if (bc->slots[i].state == SLOT_DIRTY) {
      blocks++;
      bytes += bc_block_len(bc, bc->slots[i].blkno);
    }
  if (blocks)
    fprintf(stderr, "nbdstack: blockcache: closing with %" PRIu64
            " dirty block%s (%" PRIu64 " bytes) never written back\n",
            blocks, blocks == 1 ? "" : "s", bytes);
  pthread_mutex_destroy(&bc->lock);
  free_cache(bc);
}

static void
bc_caps(struct nbds_layer *l, struct nbds_caps *caps)
{
  struct blockcache *bc = l->priv;
  /* Dirty blocks need a FLUSH to reach below, whatever below can do.
   * FUA passes down with the piece written through, so it is below's. */
  caps->can_flush = true;
  caps->can_cache = true;
  /* Whole blocks need no read before a write. */
  if (caps->block_pref < bc->bs && bc->bs <= caps->block_max)
    caps->block_pref = bc->bs;
}

static void
bc_submit(struct nbds_layer *l, struct nbds_req *req)
{
  struct blockcache *bc = l->priv;
  switch (req->op) {
  case NBDS_OP_READ:
  case NBDS_OP_WRITE:
    bc_rw_submit(bc, req);
    break;
  case NBDS_OP_CACHE:
    if (bc->read_allocate)
      bc_rw_submit(bc, req);
    else if (bc->below->caps.can_cache)
      nbds_layer_submit(bc->below, req);
    else
      nbds_req_complete(req, 0);
    break;
  case NBDS_OP_FLUSH:
    bc_flush_submit(bc, req);
    break;
  case NBDS_OP_TRIM:
  case NBDS_OP_ZERO:
    bc_discard_submit(bc, req);
    break;
  case NBDS_OP_BLOCK_STATUS:
    bc_status_submit(bc, req);
    break;
  default:
    nbds_req_complete(req, EINVAL);
  }
}

static void
bc_stats(struct nbds_layer *l, nbds_stat_fn emit, void *opaque)
{
  struct nbds_blockcache_stats st;
  nbds_blockcache_stats(l, &st);
  const struct nbds_stat v[] = {
    { "hits_total", "READ, WRITE and CACHE blocks found in the block cache",
      NBDS_STAT_COUNTER, st.hits },
    { "misses_total", "READ, WRITE and CACHE blocks not found in the cache",
      NBDS_STAT_COUNTER, st.misses },
    { "writebacks_total", "dirty blocks written back to the layer below",
      NBDS_STAT_COUNTER, st.writebacks },
    { "evictions_total", "cached blocks dropped to make room",
      NBDS_STAT_COUNTER, st.evictions },
    { "dirty_blocks", "blocks newer than the layer below",
      NBDS_STAT_GAUGE, st.dirty },
    { "cached_bytes", "bytes of blocks held in the cache",
      NBDS_STAT_GAUGE, st.bytes_cached },
    { "capacity_bytes", "bytes of blocks the cache can hold",
      NBDS_STAT_GAUGE, st.capacity },
  };
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
    emit(opaque, &v[i]);
}

const struct nbds_layer_ops nbds_blockcache_ops = {
  .name = "blockcache",
  .open = bc_open,
  .close = bc_close,
  .caps = bc_caps,
  .submit = bc_submit,
  .stats = bc_stats,
};

bool
nbds_layer_is_blockcache(const struct nbds_layer *l)
{
  return l->ops == &nbds_blockcache_ops;
}

void
nbds_blockcache_stats(const struct nbds_layer *l,
                      struct nbds_blockcache_stats *out)
{
  struct blockcache *bc = l->priv;
  out->hits = atomic_load(&bc->hits);
  out->misses = atomic_load(&bc->misses);
  out->dirty = atomic_load(&bc->ndirty);
  out->writebacks = atomic_load(&bc->writebacks);
  out->evictions = atomic_load(&bc->evictions);
  out->bytes_cached = atomic_load(&bc->bytes_cached);
  out->capacity = (uint64_t) bc->nslots * bc->bs;
}
