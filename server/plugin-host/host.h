/* The nbdkit plugin host: the state shared by its files.
 *
 * nbdkit.c loads a plugin and answers the layer contract, requests.c runs
 * the plugin's data callbacks on the worker pool, and api.c / extents.c
 * provide the nbdkit_* functions plugins import from the server. */
#ifndef NBDS_PLUGIN_HOST_H
#define NBDS_PLUGIN_HOST_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "nbdstack/layer.h"

struct ph_plugin {
  void *dl;
  char *path;
  struct nbdkit_plugin p;   /* a zero-padded copy of the plugin's struct */
  int api_version;
  int thread_model;
  pthread_mutex_t lock;     /* held around calls unless PARALLEL */
  void *handle;             /* the one .open handle */
  bool readonly;
  bool loaded;              /* .load ran: .cleanup/.unload must */
  uint64_t size;
  struct nbds_caps caps;
  /* How requests reach the plugin. */
  bool zero_native;         /* call .zero before falling back to .pwrite */
  bool plugin_extents;      /* call .extents (else everything is data) */
  int fua;                  /* NBDKIT_FUA_* */
  int cache;                /* NBDKIT_CACHE_* */
};

/* requests.c */
void ph_submit(struct ph_plugin *h, struct nbds_req *req);

/* api.c: the error the current thread's plugin call left. */
void ph_error_reset(void);
/* After a callback returned -1: nbdkit_set_error's value, else errno when
 * the plugin preserves it, else EIO.  `saved` is errno right after the
 * call. */
int ph_error_get(const struct ph_plugin *h, int saved);
/* While true on a thread, nbdkit_error() sets nbds_error() (open-time
 * callbacks) instead of logging. */
void ph_error_capture(bool on);
/* The last message nbdkit_error() recorded on this thread, or NULL. */
const char *ph_error_last(void);
/* Strings from nbdkit_strdup_intern() and friends, freed at unload. */
void ph_intern_free_all(void);

/* extents.c: an nbdkit_extents that fills `out` for [start, end). */
struct nbdkit_extents {
  uint64_t start, end;
  uint64_t next;            /* where the next extent must start */
  bool started;
  struct nbds_extents *out;
};

#endif
