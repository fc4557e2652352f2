/* The block cache's shared state, between its files:
 *
 *   blockcache.c           options, caps, dispatch, counters, close
 *   blockcache-slots.c     the slot table: lookup, LRU, eviction,
 *                          write-back, waiting
 *   blockcache-rw.c        READ, WRITE and CACHE, one block at a time
 *   blockcache-flush.c     FLUSH: every dirty block, then below
 *   blockcache-discard.c   TRIM and ZERO
 *   blockcache-status.c    BLOCK_STATUS
 *
 * One mutex guards the table.  It is held for bookkeeping only: nobody
 * copies block data or submits I/O while holding it.  Instead a slot has
 * holds, taken and dropped under the mutex: one writer (filling the block,
 * copying new data in, writing it through) or any number of readers
 * (copying data out, writing the block back).  Whoever cannot get what it
 * needs — a hold, a free slot, a block that a TRIM is changing below —
 * queues a waiter and returns; when the thing it waited for is released,
 * every waiter is posted back to the reactor it came from and starts its
 * step again from the lookup.
 */
#ifndef NBDS_BLOCKCACHE_INT_H
#define NBDS_BLOCKCACHE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

#include "nbdstack/blockcache.h"
#include "nbdstack/layer.h"
#include "nbdstack/reactor.h"

#define bc_container(ptr, type, member) \
  ((type *) ((char *) (ptr) - offsetof(type, member)))

/* Something that waits: it is posted back to its reactor to resume. */
struct bc_waiter {
  struct bc_waiter *next;
  struct nbds_reactor *reactor;
  void (*resume)(struct bc_waiter *w);
};

/* Told when a write-back it started has finished, on its reactor. */
struct bc_wb_owner {
  void (*done)(struct bc_wb_owner *o, int err);
};

enum bc_state {
  SLOT_FREE,
  SLOT_FILLING,  /* being read from below or written whole: not valid yet */
  SLOT_CLEAN,    /* the same as below */
  SLOT_DIRTY,    /* newer than below */
};

struct bc_slot {
  uint64_t blkno;
  struct bc_slot *hnext;         /* hash chain */
  struct bc_slot *prev, *next;   /* clean or dirty LRU list; free list */
  struct bc_waiter *waiters;     /* waiting for a hold on this block */
  struct bc_wb_owner *wb_owner;
  uint32_t readers;
  uint8_t state;                 /* enum bc_state */
  bool writer;
  bool writing_back;             /* holds one of the readers */
  /* The write-back request lives here, so writing a block back (which
   * eviction must be able to do) never needs memory. */
  struct nbds_req wb;
  struct iovec wb_iov;
};

struct bc_list {
  struct bc_slot *head, *tail;   /* most recently used first */
};

/* A range of blocks being changed below without the cache (a TRIM, a
 * ZERO, a write that does not allocate).  No block in it may be filled
 * from below meanwhile, or the cache would keep the old bytes. */
struct bc_range {
  uint64_t first, last;          /* block numbers, inclusive */
  struct bc_waiter *waiters;
  struct bc_range *prev, *next;
};

struct blockcache {
  struct nbds_layer *below;
  uint64_t size;                 /* of the export */
  uint32_t bs;                   /* block size, a power of two */
  unsigned shift;                /* log2(bs) */
  bool read_allocate, write_back, write_allocate;

  pthread_mutex_t lock;
  struct bc_slot *slots;
  size_t nslots;
  unsigned char *data;           /* nslots blocks */
  struct bc_slot **buckets;
  uint64_t mask;                 /* buckets - 1 */
  struct bc_slot *free_slots;
  struct bc_list clean, dirty;
  struct bc_waiter *slot_waiters;  /* waiting for any slot */
  struct bc_range *ranges;

  atomic_uint_fast64_t hits, misses, ndirty, writebacks, evictions,
    bytes_cached;
};

/* blockcache-slots.c: all but submit_writeback with the lock held. */
uint32_t bc_block_len(const struct blockcache *bc, uint64_t blkno);
unsigned char *bc_slot_data(const struct blockcache *bc,
                            const struct bc_slot *s);
struct bc_slot *bc_lookup(struct blockcache *bc, uint64_t blkno);
bool bc_idle(const struct bc_slot *s);
void bc_touch(struct blockcache *bc, struct bc_slot *s);
void bc_set_state(struct blockcache *bc, struct bc_slot *s,
                  enum bc_state state);
void bc_release(struct blockcache *bc, struct bc_slot *s);
void bc_drop(struct blockcache *bc, struct bc_slot *s);
struct bc_slot *bc_take_slot(struct blockcache *bc, uint64_t blkno,
                             struct bc_waiter *w, struct bc_wb_owner *owner,
                             struct bc_slot **wb);
void bc_start_writeback(struct blockcache *bc, struct bc_slot *s,
                        struct bc_wb_owner *owner);
void bc_submit_writeback(struct blockcache *bc, struct bc_slot *s);
bool bc_dirty_between(struct blockcache *bc, uint64_t first, uint64_t last,
                      uint64_t *lo, uint64_t *hi);
void bc_wait(struct bc_waiter **list, struct bc_waiter *w);
void bc_wake(struct bc_waiter **list);
void bc_post(struct bc_waiter *w);
void bc_range_add(struct blockcache *bc, struct bc_range *r, uint64_t first,
                  uint64_t last);
void bc_range_remove(struct blockcache *bc, struct bc_range *r);
struct bc_range *bc_range_find(struct blockcache *bc, uint64_t blkno);

/* One file per operation; each completes req on its reactor. */
void bc_rw_submit(struct blockcache *bc, struct nbds_req *req);
void bc_flush_submit(struct blockcache *bc, struct nbds_req *req);
void bc_discard_submit(struct blockcache *bc, struct nbds_req *req);
void bc_status_submit(struct blockcache *bc, struct nbds_req *req);

#endif
