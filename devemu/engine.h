/* The objects behind the public handles, and the engine that executes
 * plans (engine.c) for the backend (backend.c) and devices (device.c). */
#ifndef DEVEMU_ENGINE_H
#define DEVEMU_ENGINE_H

#include "internal.h"

struct nbd_handle;

/* NBD requests in flight per connection; more wait in the backend. */
#define DV_MAX_NBD_INFLIGHT 64

/* One accepted guest command. */
struct dv_job {
  struct dv_job *next;         /* on exactly one list while queued */
  devemu_dev *dev;
  uint64_t tag;
  struct dv_plan plan;
  devemu_iov *iov;             /* copied from the command */
  unsigned niov;
  enum { PH_DRAIN, PH_ISSUE, PH_WAIT, PH_FLUSH } phase;
  bool queued;                 /* on the run, starved or drain list */
  bool internal;               /* no completion for the VMM */
  bool flush_issued;           /* DV_OP_FLUSH: the one request is out */
  unsigned ri;                 /* issue cursor: range index ... */
  uint64_t roff;               /* ... and offset in it */
  uint64_t doff;               /* guest data offset of the next chunk */
  unsigned inflight;           /* NBD requests sent, not yet replied */
  unsigned replies;            /* replies seen (to spot a sync callback) */
  int err;                     /* the first error wins */
  uint64_t fail_off;
  uint64_t wce_gen;            /* DV_WCE_OFF: the switch it is part of */
  struct dv_range ranges[];
};

struct dv_list {
  struct dv_job *head, *tail;
};

struct devemu_backend {
  struct nbd_handle *nbd;
  bool own;
  uint64_t size;
  uint32_t block_min, block_pref, block_max;
  bool read_only, can_flush, can_fua, can_trim, can_zero;
  struct dv_list run;          /* jobs with something to do */
  struct dv_list starved;      /* jobs waiting for an NBD request slot */
  unsigned nbd_inflight;
  unsigned pending;            /* guest commands not yet completed */
  bool running;                /* in dv_run: no re-entry */
};

struct devemu_dev {
  devemu_backend *b;
  struct dv_geom g;            /* g.wce is the effective write cache */
  bool wce;                    /* the guest-visible switch */
  unsigned switching_off;      /* WCE 1->0 switches in progress */
  uint64_t wce_gen;
  unsigned volatile_writes;    /* writes in flight that are not durable */
  struct dv_list drain;        /* jobs waiting for volatile_writes == 0 */
  unsigned pending;
  uint64_t virtio_acked;
  devemu_complete_fn complete;
  void *opaque;
  char *serial, *model, *firmware;
};

/* Accept a decoded plan: returns 0, or -1 (ENOMEM) with nothing done. */
int dv_engine_start(devemu_dev *d, const struct dv_plan *p,
                    const devemu_cmd *c, bool internal);
/* Run queued work and deliver completions (not re-entrant; a nested
 * call returns at once and the outer one picks the work up). */
void dv_run(devemu_backend *b);
/* The effective write cache changed: recompute g.wce. */
void dv_dev_update_wce(devemu_dev *d);

#endif
