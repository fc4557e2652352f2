/* The rbd protocol layer: a Ceph RBD image through librbd's asynchronous
 * API.  One open image serves every reactor; completions come back
 * through an eventfd watched by the reactor that opened the layer. */
#ifndef NBDS_PLUGIN_RBD_H
#define NBDS_PLUGIN_RBD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <ev.h>
#include <rados/librados.h>
#include <rbd/librbd.h>

#include "nbdstack/layer.h"
#include "nbdstack/reactor.h"

/* name.c: an image name in QEMU's spelling,
 *   rbd:POOL/[NAMESPACE/]IMAGE[@SNAP][:KEY=VALUE...]
 * taken apart.  conf= and id= are kept apart; every other KEY=VALUE is a
 * Ceph option, set in order. */
struct rbd_name {
  char *pool;
  char *nspace;   /* "" for the default namespace */
  char *image;
  char *snap;     /* NULL: the image itself */
  char *conf;     /* NULL: Ceph's default configuration files */
  char *user;     /* NULL: Ceph's default user (admin) */
  size_t nopts;
  char **keys, **values;
  char *buf;      /* the strings above point into it */
};

/* Returns -1 after nbds_error() on a malformed name. */
int rbd_name_parse(const char *name, struct rbd_name *n);
void rbd_name_free(struct rbd_name *n);

/* The layer's state, shared by every reactor. */
struct rbd_disk {
  char *label;              /* POOL/IMAGE[@SNAP], for messages */
  rados_t cluster;
  rados_ioctx_t io;
  rbd_image_t image;
  _Atomic uint64_t size;    /* grows when qcow2 above appends (rbd.c) */
  pthread_mutex_t grow_lock;
  uint64_t object_size;
  bool readonly;            /* a snapshot, or readonly=on */
  bool client_cache;        /* librbd's rbd_cache */
  unsigned timeout;         /* seconds, 0: Ceph's (none) */
  bool timeout_explicit;    /* given, rather than the default */

  /* Completions: librbd signals efd, the home reactor drains them. */
  int efd;
  struct nbds_reactor *home;
  struct ev_loop *home_loop;
  ev_io watcher;

  /* errors.c: one log line per kind of failure, not per request */
  pthread_mutex_t log_lock;
  int last_err;
  double last_logged;
  unsigned repeats;
};

/* connect.c: the cluster, the pool and the image (blocking; at open). */
int rbd_disk_connect(struct rbd_disk *d, const struct rbd_name *n);
void rbd_disk_disconnect(struct rbd_disk *d);

/* status.c: BLOCK_STATUS through rbd_diff_iterate2, on the worker pool. */
void rbd_block_status(struct rbd_disk *d, struct nbds_req *req);

/* errors.c: turn a librbd error into what the client gets, logging it
 * (rate-limited).  what: "write", "read", ... */
int rbd_error(struct rbd_disk *d, const char *what, const struct nbds_req *req,
              int err);

#endif
