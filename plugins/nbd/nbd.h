/* The nbd protocol layer: an upstream NBD server through libnbd's
 * asynchronous API, driven by the reactors' libev loops. */
#ifndef NBDS_PLUGIN_NBD_H
#define NBDS_PLUGIN_NBD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <ev.h>
#include <libnbd.h>

#include "nbdstack/layer.h"
#include "nbdstack/reactor.h"

struct nbd_conn;

/* The layer's state, shared by every reactor. */
struct nbd_upstream {
  char *uri;
  bool tls_verify_peer;     /* the URI's tls-verify-peer= (default true) */
  uint64_t size;
  struct nbds_caps caps;    /* what the upstream advertised at open */
  uint32_t max;             /* READ/WRITE/CACHE are split at this size */
  double timeout;           /* fail a command unanswered this long (s); 0:
                               never */
  /* With CAN_MULTI_CONN every reactor gets its own handle; without it one
   * handle, owned by `home` (reactor 0), serves all of them. */
  bool per_reactor;
  struct nbds_reactor *home;
  uint32_t align;           /* the upstream's minimum block size (align.c) */
  pthread_mutex_t lock;     /* guards conns and rmw_* */
  struct nbd_conn *conns;
  bool rmw_busy;            /* a read-modify-write is running (align.c) */
  struct nbd_job *rmw_head, **rmw_tail;  /* waiting for it */
  /* The layer's, one per conn and one per connect on a worker: a layer
   * closed while the server runs (a reload) has conns on other reactors,
   * torn down there later (nbd_conns_close). */
  atomic_uint refs;
};

/* A piece of a request: one libnbd command. */
struct nbd_job;
struct nbd_op {
  struct nbd_job *job;
  struct nbd_conn *conn;    /* set by nbd_conn_issue */
  enum nbds_op op;
  uint32_t flags;           /* LIBNBD_CMD_FLAG_* */
  uint64_t offset, count;
  void *buf;                /* READ / WRITE */
  int err;
  ev_tstamp sent;           /* when it went to libnbd */
  uint64_t skip;            /* BLOCK_STATUS: extent bytes before the
                               request's offset (align.c) */
  bool aborted;             /* failed by us: ignore libnbd's callback */
  struct nbd_op *prev, *next;
};

/* One request as the layer received it, in one or more ops. */
struct nbd_job {
  struct nbd_upstream *u;
  struct nbds_req *req;
  struct nbds_reactor *origin;  /* where req must complete */
  struct nbds_reactor *runner;  /* where its ops are issued */
  unsigned pending;
  int err;
  /* When pending drops to 0: the job's next step (align.c), else the
   * request completes. */
  void (*after)(struct nbd_job *job);
  /* align.c: the bounce buffer and the partial blocks at the ends. */
  char *bounce;
  uint64_t lo, hi;
  unsigned nedges;
  struct nbd_edge { uint64_t offset; char *buf; } edge[2];
  struct nbd_job *rmw_next;
};

/* nbd.c */

/* The request's flags as libnbd's. */
uint32_t nbd_cmd_flags(const struct nbds_req *req);
/* Append the ops for one command over [offset, offset + count), split at
 * the upstream's limits; false when out of memory. */
bool nbd_add_ops(struct nbd_op **list, struct nbd_job *job, enum nbds_op op,
                 uint32_t flags, uint64_t offset, uint64_t count, void *buf);
/* Issue ops (on the calling reactor, the job's runner); when all are done,
 * after(job) runs, or the request completes when after is NULL.  ok false
 * (building ops ran out of memory): the ops are dropped, the job fails
 * with ENOMEM. */
void nbd_job_run(struct nbd_job *job, struct nbd_op *ops, bool ok,
                 void (*after)(struct nbd_job *job));
/* Complete the request with job->err and free the job. */
void nbd_job_finish(struct nbd_job *job);

/* align.c: requests the upstream's minimum block size does not allow. */
bool nbd_align_needed(const struct nbd_job *job);
void nbd_align_start(struct nbd_job *job);

/* conn.c: a libnbd handle living in one reactor's loop. */

/* The connection of the calling reactor (per_reactor), created (and
 * connecting) on first use.  NULL when out of memory. */
struct nbd_conn *nbd_conn_get(struct nbd_upstream *u);
/* Adopt the handle open() connected synchronously as the connection of
 * reactor r. */
struct nbd_conn *nbd_conn_adopt(struct nbd_upstream *u, struct nbds_reactor *r,
                                struct nbd_handle *h);
/* Start an op on c (the calling thread is c's reactor).  The op ends in
 * nbd_op_done(), maybe before this returns. */
void nbd_conn_issue(struct nbd_conn *c, struct nbd_op *op);
/* A new handle, before connecting; NULL with libnbd's error set. */
struct nbd_handle *nbd_handle_new(const struct nbd_upstream *u, bool extents);
/* Close every connection: at once on the calling reactor, through its
 * reactor's mailbox elsewhere (its loop may be running: a reload). */
void nbd_conns_close(struct nbd_upstream *u);
/* Drop a reference; the last one frees the upstream's state. */
void nbd_upstream_put(struct nbd_upstream *u);

/* nbd.c: an op finished with err (0 or an errno value). */
void nbd_op_done(struct nbd_op *op, int err);

#endif
