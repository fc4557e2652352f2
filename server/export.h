/* An export: a name clients ask for, and the stack of layers behind it. */
#ifndef NBDS_SERVER_EXPORT_H
#define NBDS_SERVER_EXPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nbdstack/layer.h"

enum discard_mode { DISCARD_IGNORE, DISCARD_UNMAP };
enum detect_zeroes { DETECT_ZEROES_OFF, DETECT_ZEROES_ON, DETECT_ZEROES_UNMAP };

struct export {
  struct export *next;
  char *name;
  char *description;       /* NULL: none */
  struct nbds_layer *top;
  bool readonly;
  bool multi_conn;         /* advertise CAN_MULTI_CONN */
  bool write_cache;        /* false: every write is FUA (writethrough) */
  bool alloc_depth;        /* offer qemu:allocation-depth (-A) */
  enum discard_mode discard;
  enum detect_zeroes detect_zeroes;
  struct metrics *metrics; /* its counters, one block per reactor; NULL if
                            * they could not be allocated */
};

/* All exports, in the order they were added. */
extern struct export *exports;

/* Add an export (with its counters) to the list. */
void export_add(struct export *e);
struct export *export_find(const uint8_t *name, size_t len);

/* The transmission flags a client of this export sees. */
uint16_t export_flags(const struct export *e, bool structured);

/* Submit a request to the export's stack, after applying --discard,
 * --detect-zeroes (they hold for every format, as in qemu-nbd) and the
 * write cache setting of the cache mode. */
void export_submit(struct export *e, struct nbds_req *req);

/* Flush every export and wait for it; for a clean exit on reactor 0.
 * Returns false if any flush failed. */
bool exports_flush_all(void);
void exports_close_all(void);
/* Log the counters of every layer that keeps any (the block cache). */
void exports_log_stats(void);

#endif
