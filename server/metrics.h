/* Per-export statistics: requests, bytes, errors and latency by command,
 * requests in flight, connections, and the counters layers report through
 * their stats op.
 *
 * Counting costs no lock, no allocation and no shared cache line: each
 * export has one counter block per reactor, written only by that reactor
 * (a request is submitted and completed on the reactor of its connection)
 * with relaxed atomic loads and stores, which compile to plain moves.
 * Readers (the metrics thread) sum the blocks when they are scraped. */
#ifndef NBDS_SERVER_METRICS_H
#define NBDS_SERVER_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <ev.h>

struct export;

enum metrics_op {
  MOP_READ, MOP_WRITE, MOP_FLUSH, MOP_TRIM, MOP_ZERO, MOP_BLOCK_STATUS,
  MOP_CACHE,
  MOP_OTHER,      /* a command the server does not know (always an error) */
  MOP_COUNT,
};

/* The wire errors, by class. */
enum metrics_err {
  MERR_EPERM, MERR_EIO, MERR_ENOMEM, MERR_EINVAL, MERR_ENOSPC,
  MERR_EOVERFLOW, MERR_ENOTSUP, MERR_ESHUTDOWN, MERR_COUNT,
};

/* Latency buckets: bucket k holds latencies in (2^(k-1), 2^k]
 * microseconds, k = 0..24 (up to 16.8 s), and the last one the rest. */
#define METRICS_BUCKETS 26

typedef _Atomic uint64_t metrics_ctr;

struct metrics_op_ctrs {
  metrics_ctr requests;     /* replied to, errors included */
  metrics_ctr bytes;        /* the range of each successful request */
  metrics_ctr errors;
  metrics_ctr latency_ns;   /* sum, from the request header's arrival to
                             * its reply being queued */
  metrics_ctr buckets[METRICS_BUCKETS];  /* not cumulative */
};

/* One export's counters on one reactor. */
struct metrics_block {
  struct metrics_op_ctrs op[MOP_COUNT];
  metrics_ctr errors_by_class[MERR_COUNT];
  metrics_ctr received;     /* requests in; in flight = received - released */
  metrics_ctr released;     /* requests whose reply is written (or dropped) */
  metrics_ctr conns_opened; /* connections in transmission on the export */
  metrics_ctr conns_closed;
} __attribute__((aligned(64)));

/* One export's blocks, one per reactor. */
struct metrics {
  unsigned nblocks;
  struct metrics_block *blocks;
};

/* Only the owning reactor writes a counter, so a load and a store are
 * enough (no locked read-modify-write). */
static inline void
metrics_add(metrics_ctr *c, uint64_t n)
{
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                        memory_order_relaxed);
}

/* The monotonic clock.  A read costs 30-150 ns (more in a VM), so
 * arrivals share one: requests parsed in one iteration of the reactor's
 * loop were all in the socket when it woke, and take the latest time read
 * in that iteration (metrics_arrival).  A reply reads the clock afresh
 * (metrics_now), so a request served within one iteration still shows
 * its real latency. */
struct metrics_clock {
  unsigned iteration;
  bool valid;
  uint64_t ns;
};
extern __thread struct metrics_clock metrics_clock;

static inline uint64_t
metrics_now(struct ev_loop *loop)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  metrics_clock.ns = (uint64_t) ts.tv_sec * 1000000000u + ts.tv_nsec;
  metrics_clock.iteration = ev_iteration(loop);
  metrics_clock.valid = true;
  return metrics_clock.ns;
}

static inline uint64_t
metrics_arrival(struct ev_loop *loop)
{
  if (metrics_clock.valid && metrics_clock.iteration == ev_iteration(loop))
    return metrics_clock.ns;
  return metrics_now(loop);
}

/* For a new export: a block per reactor.  NULL when out of memory. */
struct metrics *metrics_new(unsigned nreactors);
void metrics_free(struct metrics *m);
/* The calling connection's block (reactor index), or NULL without. */
struct metrics_block *metrics_block(struct metrics *m, int reactor_index);

/* The hooks, all called on the connection's reactor.  nbd_type is the
 * command as received, wire_err the NBD error replied (0: success). */
void metrics_reply(struct metrics_block *b, uint16_t nbd_type,
                   uint64_t count, uint32_t wire_err, uint64_t start_ns,
                   uint64_t now_ns);

/* Rendering (metrics.c), from any thread: every export in the server's
 * list.  The Prometheus text exposition format 0.0.4, or JSON (json-c).
 * Return a malloc'd string, or NULL when out of memory. */
char *metrics_render_prometheus(void);
char *metrics_render_json(void);

/* The metrics thread (metrics-http.c): serve GET /metrics and
 * /metrics.json on addr (HOST:PORT, :PORT or a Unix socket path) and, on
 * metrics_dump(), write the JSON to json_path.  Either may be NULL.
 * Binds at once: false with an error logged if it cannot. */
bool metrics_start(const char *addr, const char *json_path);
/* Ask the metrics thread for a JSON dump (async-signal context is fine). */
void metrics_dump(void);
/* Stop the thread; before the exports are freed. */
void metrics_stop(void);

#endif
