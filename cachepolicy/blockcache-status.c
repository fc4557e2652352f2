/* BLOCK_STATUS through the block cache: what below says, except that a
 * dirty block holds data whatever below reports for it.
 *
 * Dirty blocks are looked for twice: when the request arrives (a block
 * written back while below answers was dirty, and below may have answered
 * before the write-back landed) and when below has answered.  From the
 * first extent that is reported as a hole or zeroes but holds a dirty
 * block, the answer stops: the part before that block keeps its flags,
 * the rest of the extent is data.  A shorter answer is a correct one; the
 * client asks again from where it ends.
 */
#include <stdlib.h>

#include "blockcache.h"

/* The child's scratch: dirty blocks seen at submission, and where this
 * layer's extents start in the list. */
enum { SEEN, SEEN_LO, SEEN_HI, START };

/* The first block in [first, last] that is or was dirty. */
static bool
first_dirty(struct blockcache *bc, const struct nbds_req *child,
            uint64_t first, uint64_t last, uint64_t *b)
{
  uint64_t lo, hi;
  bool now = bc_dirty_between(bc, first, last, &lo, &hi);
  if (child->scratch[SEEN] && child->scratch[SEEN_LO] <= last &&
      child->scratch[SEEN_HI] >= first) {
    uint64_t seen = child->scratch[SEEN_LO] > first ?
      child->scratch[SEEN_LO] : first;
    if (!now || seen < lo)
      lo = seen;
    now = true;
  }
  *b = lo;
  return now;
}

static void
fix(struct blockcache *bc, struct nbds_req *child)
{
  struct nbds_extents *ex = child->extents;
  size_t i = child->scratch[START];
  uint64_t pos = child->parent->offset;
  uint64_t b = 0;
  pthread_mutex_lock(&bc->lock);
  for (; i < ex->count; pos += ex->v[i].length, i++) {
    uint64_t len = ex->v[i].length;
    if (ex->v[i].flags && len > 0 &&
        first_dirty(bc, child, pos >> bc->shift, (pos + len - 1) >> bc->shift,
                    &b))
      break;
  }
  pthread_mutex_unlock(&bc->lock);
  if (i == ex->count)
    return;

  uint64_t dropped = 0;
  for (size_t j = i + 1; j < ex->count; j++)
    dropped += ex->v[j].length;
  uint64_t data = b << bc->shift;
  if (data > pos && i + 1 < ex->cap) {
    ex->v[i + 1].length = pos + ex->v[i].length - data;
    ex->v[i + 1].flags = 0;
    ex->v[i].length = data - pos;
    ex->count = i + 2;
  } else {
    ex->v[i].flags = 0;
    ex->count = i + 1;
  }
  ex->covered -= dropped;
  /* Data after data is one extent. */
  if (i > child->scratch[START] && ex->v[i].flags == ex->v[i - 1].flags) {
    ex->v[i - 1].length += ex->v[i].length;
    if (ex->count == i + 2)
      ex->v[i] = ex->v[i + 1];
    ex->count--;
  }
}

static void
status_done(struct nbds_req *child, int err)
{
  struct blockcache *bc = child->opaque;
  struct nbds_req *req = child->parent;
  if (!err)
    fix(bc, child);
  nbds_req_free(child);
  nbds_req_complete(req, err);
}

void
bc_status_submit(struct blockcache *bc, struct nbds_req *req)
{
  if (req->count == 0) {
    nbds_layer_submit(bc->below, req);
    return;
  }
  struct nbds_req *child = nbds_req_child(req);
  uint64_t lo = 0, hi = 0;
  pthread_mutex_lock(&bc->lock);
  bool seen = bc_dirty_between(bc, req->offset >> bc->shift,
                               (req->offset + req->count - 1) >> bc->shift,
                               &lo, &hi);
  pthread_mutex_unlock(&bc->lock);
  child->scratch[SEEN] = seen;
  child->scratch[SEEN_LO] = lo;
  child->scratch[SEEN_HI] = hi;
  child->scratch[START] = req->extents->count;
  child->done = status_done;
  child->opaque = bc;
  nbds_layer_submit(bc->below, child);
}
