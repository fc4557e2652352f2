/* Shared by the block cache's unit tests (blockcache-harness.c). */
#ifndef NBDS_TEST_BLOCKCACHE_HARNESS_H
#define NBDS_TEST_BLOCKCACHE_HARNESS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "nbdstack/blockcache.h"
#include "nbdstack/layer.h"

#define BS 4096
#define HZ (NBDS_EXTENT_HOLE | NBDS_EXTENT_ZERO)

/* ---- The disk below ---- */

enum mode { NOW, POSTED, QUEUED };

struct mem_disk {
  pthread_mutex_t lock;
  unsigned char *disk, *durable;
  uint64_t size;
  enum mode mode;
  struct nbds_req *queue[64];
  unsigned nq;
  enum nbds_op log[64];             /* the first requests, in order */
  unsigned nlog;
  unsigned n[NBDS_OP_CACHE + 1];   /* requests seen, by op */
  struct nbds_layer *cache;        /* watched on every request */
  uint64_t limit;                  /* its size= */
  unsigned over_limit;
  unsigned fail_reads, fail_writes;  /* fail so many with EIO */
};

extern struct mem_disk mem;

/* ---- Reactor 0, requests, the model ---- */

extern uint64_t rng;

/* write-hit=write-through: a write is below when it completes. */
extern bool through;

struct io {
  struct nbds_req req;
  struct iovec iov[3];
  unsigned char *buf;
  bool done;
  int err;
  struct nbds_extent ext[16];
  struct nbds_extents ex;
};

uint64_t rnd_from(uint64_t *state, uint64_t n);
uint64_t rnd(uint64_t n);
void fill_random(unsigned char *p, size_t len);
void setup(void);
void teardown(void);
struct nbds_layer *stack(uint64_t size, enum mode mode, uint64_t bytes,
                         const struct nbds_kv *more, size_t nmore);
struct nbds_blockcache_stats stats(struct nbds_layer *l);
void start(struct nbds_layer *l, struct io *io, enum nbds_op op,
           uint32_t flags, uint64_t offset, uint64_t count,
           unsigned char *buf);
void finish(struct io *io);
int run(struct nbds_layer *l, enum nbds_op op, uint32_t flags,
        uint64_t offset, uint64_t count, unsigned char *buf);
void settle(void);
void complete_at(unsigned i);
void drain(void);

#endif
