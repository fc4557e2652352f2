/* An export: a name clients ask for, and the stack of layers behind it.
 *
 * The list is read by every reactor's handshakes and by the metrics
 * thread, and changed by a reload on reactor 0, so it is guarded by a
 * mutex, and each export counts its references: the list holds one while
 * the export is offered, and each handshake looking at it and each
 * connection serving it one more.  A reload withdraws an export (no longer
 * offered, its reference dropped); once the last connection lets go,
 * reactor 0 takes it off the list, flushes it and closes it. */
#ifndef NBDS_SERVER_EXPORT_H
#define NBDS_SERVER_EXPORT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nbdstack/layer.h"

enum discard_mode { DISCARD_IGNORE, DISCARD_UNMAP };
enum detect_zeroes { DETECT_ZEROES_OFF, DETECT_ZEROES_ON, DETECT_ZEROES_UNMAP };

struct allow_list;

struct export {
  struct export *next;     /* guarded by exports_lock() */
  char *name;
  char *description;       /* NULL: none */
  char *section;           /* its configuration section as read, which a
                            * reload compares; NULL: the command line's */
  struct nbds_layer *top;
  bool readonly;
  bool multi_conn;         /* advertise CAN_MULTI_CONN */
  bool write_cache;        /* false: every write is FUA (writethrough) */
  bool alloc_depth;        /* offer qemu:allocation-depth (-A) */
  enum discard_mode discard;
  enum detect_zeroes detect_zeroes;
  bool tls_required;       /* only clients that did STARTTLS see it */
  struct allow_list *allow;  /* the clients that see it; NULL: all */
  struct metrics *metrics; /* its counters, one block per reactor; NULL if
                            * they could not be allocated */
  bool offered;            /* clients can find it (guarded by the lock) */
  atomic_uint refs;
};

/* Every open export, offered or withdrawn, in the order they were added.
 * Walk it only between exports_lock() and exports_unlock(). */
extern struct export *exports;
void exports_lock(void);
void exports_unlock(void);

/* Add an export (with its counters) to the list and offer it. */
void export_add(struct export *e);
/* The offered export of that name, with a reference; NULL if none. */
struct export *export_get(const uint8_t *name, size_t len);
/* Drop a reference (from any reactor). */
void export_put(struct export *e);
/* Stop offering an export (reactor 0); connections on it go on. */
void export_withdraw(struct export *e);
/* Free an export that is in no list (its stack, if open, is closed). */
void export_free(struct export *e);
/* Called on reactor 0 with a withdrawn export's name once it is flushed
 * and closed (reload.c reopens a changed section then). */
extern void (*export_closed_hook)(const char *name);

/* The transmission flags a client of this export sees. */
uint16_t export_flags(const struct export *e, bool structured);

/* Submit a request to the export's stack, after applying --discard,
 * --detect-zeroes (they hold for every format, as in qemu-nbd) and the
 * write cache setting of the cache mode. */
void export_submit(struct export *e, struct nbds_req *req);

/* Flush every export and wait for it, and for withdrawn exports being
 * closed; for a clean exit on reactor 0.  Returns false if any flush
 * failed. */
bool exports_flush_all(void);
void exports_close_all(void);
/* Log the counters of every layer that keeps any (the block cache). */
void exports_log_stats(void);

#endif
