/* The transmission phase: requests in, dispatch to the export's stack,
 * replies out as requests complete, in any order. */
#ifndef NBDS_SERVER_TRANSMISSION_H
#define NBDS_SERVER_TRANSMISSION_H

#include <stdbool.h>
#include <stdint.h>

#include "protocol.h"

struct conn;
struct export;
struct treq;
struct metrics_block;

/* Per-connection bounds: past either, the connection stops reading new
 * requests until replies drain (back-pressure, not memory growth). */
#define TX_MAX_INFLIGHT       64
#define TX_MAX_INFLIGHT_BYTES (64u << 20)

struct tx {
  struct export *exp;
  struct nbd_tx_state st;
  unsigned inflight;          /* requests not yet fully replied */
  unsigned replying;          /* of those, answered: reply being written */
  uint64_t inflight_bytes;    /* their data buffers */
  struct treq *free_reqs;
  struct treq *receiving;     /* a WRITE whose payload is coming in */
  uint32_t receiving_err;     /* its validation error, if any */
  struct metrics_block *metrics;  /* the export's counters on this reactor */
};

void tx_start(struct conn *c, struct export *exp, bool structured,
              bool base_allocation, bool alloc_depth);
void tx_consume(struct conn *c);
void tx_cleanup(struct conn *c);
/* The socket will give no more input. */
void tx_input_closed(struct conn *c);
/* Below the in-flight bounds again? */
bool tx_can_read_more(struct conn *c);
/* Requests the export is still working on: in flight, neither waiting for
 * the client's payload nor for the client to read their reply. */
unsigned tx_working(const struct conn *c);

#endif
