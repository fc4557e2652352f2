/* The nbd protocol layer: an upstream NBD server through libnbd's
 * asynchronous API, driven by the reactors' libev loops. */
#ifndef NBDS_PLUGIN_NBD_H
#define NBDS_PLUGIN_NBD_H

#include <pthread.h>
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
  uint64_t size;
  struct nbds_caps caps;    /* what the upstream advertised at open */
  uint32_t max;             /* READ/WRITE/CACHE are split at this size */
  /* With CAN_MULTI_CONN every reactor gets its own handle; without it one
   * handle, owned by `home` (reactor 0), serves all of them. */
  bool per_reactor;
  struct nbds_reactor *home;
  pthread_mutex_t lock;     /* guards conns */
  struct nbd_conn *conns;
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
  bool aborted;             /* failed by us: ignore libnbd's callback */
  struct nbd_op *prev, *next;
};

/* One request as the layer received it, in one or more ops. */
struct nbd_job {
  struct nbd_upstream *u;
  struct nbds_req *req;
  struct nbds_reactor *origin;  /* where req must complete */
  unsigned pending;
  int err;
};

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
/* Close every connection (all reactors have stopped). */
void nbd_conns_close(struct nbd_upstream *u);

/* nbd.c: an op finished with err (0 or an errno value). */
void nbd_op_done(struct nbd_op *op, int err);

#endif
