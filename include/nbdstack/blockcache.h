/* nbdstack — the in-server block cache, as the server sees it.
 *
 * The block cache is a layer ("blockcache") that keeps blocks of the
 * layer below in memory, shared by every connection and reactor.  The
 * server opens it like any layer; this header only adds what the server
 * prints about it (on SIGUSR1 and at exit).
 */
#ifndef NBDSTACK_BLOCKCACHE_H
#define NBDSTACK_BLOCKCACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "nbdstack/layer.h"

#ifdef __cplusplus
extern "C" {
#endif

extern const struct nbds_layer_ops nbds_blockcache_ops;

struct nbds_blockcache_stats {
  uint64_t hits;          /* READ and WRITE blocks found in the cache */
  uint64_t misses;        /* ... and not found */
  uint64_t dirty;         /* blocks newer than the layer below, now */
  uint64_t writebacks;    /* dirty blocks written back below */
  uint64_t evictions;     /* cached blocks dropped to make room */
  uint64_t bytes_cached;  /* bytes of blocks held now */
  uint64_t capacity;      /* bytes of blocks the cache can hold */
};

bool nbds_layer_is_blockcache(const struct nbds_layer *l);
/* A snapshot of the counters; safe from any thread at any time. */
void nbds_blockcache_stats(const struct nbds_layer *l,
                           struct nbds_blockcache_stats *out);

#ifdef __cplusplus
}
#endif

#endif
