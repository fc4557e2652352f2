/* Connecting to the cluster and opening the image, in QEMU's order
 * (qemu_rbd_connect): the configuration file, the options the name
 * carries, the client cache from the cache mode (last, so the mode wins,
 * as in QEMU), then connect, pool, namespace, image.
 *
 * These calls block (rados_connect waits for the monitors), so they run
 * when the export opens, before the server serves anyone.  The timeout
 * bounds them and every later operation: librados's own defaults wait for
 * the cluster forever. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rbd.h"

/* Ceph options that bound how long a client waits, with the value that
 * means "Ceph's default" (no bound, or the 5 minute mount timeout). */
static const struct {
  const char *key;
  double ceph_default;
} timeout_keys[] = {
  { "client_mount_timeout", 300 },
  { "rados_mon_op_timeout", 0 },
  { "rados_osd_op_timeout", 0 },
};

/* Bound the waits: an explicit timeout always; the default one only where
 * the configuration file left Ceph's default. */
static int
set_timeouts(struct rbd_disk *d, bool explicit)
{
  char value[32];
  snprintf(value, sizeof value, "%u", d->timeout);
  for (size_t i = 0; i < sizeof timeout_keys / sizeof timeout_keys[0]; i++) {
    const char *key = timeout_keys[i].key;
    char cur[64];
    if (!explicit && rados_conf_get(d->cluster, key, cur, sizeof cur) == 0 &&
        strtod(cur, NULL) != timeout_keys[i].ceph_default)
      continue;
    int r = rados_conf_set(d->cluster, key, value);
    if (r < 0) {
      nbds_error("rbd: cannot set the Ceph option %s: %s", key, strerror(-r));
      return -1;
    }
  }
  return 0;
}

static const char *
connect_hint(int err)
{
  switch (err) {
  case ETIMEDOUT:
    return " (no monitor answered: is the cluster up, and mon_host right?)";
  case ENOENT:
    return " (no monitor address or keyring found: give conf=PATH)";
  case EACCES:
  case EPERM:
    return " (authentication refused: check the user's key)";
  default:
    return "";
  }
}

static int
open_cluster(struct rbd_disk *d, const struct rbd_name *n)
{
  const char *user = n->user ? n->user : "admin";
  int r = rados_create(&d->cluster, n->user);
  if (r < 0) {
    nbds_error("rbd: cannot create a Ceph client for user '%s': %s", user,
               strerror(-r));
    d->cluster = NULL;
    return -1;
  }
  /* Without conf=, Ceph's default locations, which may not exist. */
  r = rados_conf_read_file(d->cluster, n->conf);
  if (r < 0 && n->conf) {
    nbds_error("rbd: cannot read the Ceph configuration file '%s': %s",
               n->conf, strerror(-r));
    return -1;
  }
  if (d->timeout && set_timeouts(d, d->timeout_explicit) == -1)
    return -1;
  for (size_t i = 0; i < n->nopts; i++) {
    r = rados_conf_set(d->cluster, n->keys[i], n->values[i]);
    if (r < 0) {
      nbds_error("rbd: invalid Ceph option %s=%s: %s", n->keys[i],
                 n->values[i], strerror(-r));
      return -1;
    }
  }
  rados_conf_set(d->cluster, "rbd_cache", d->client_cache ? "true" : "false");

  r = rados_connect(d->cluster);
  if (r < 0) {
    nbds_error("rbd: cannot connect to the Ceph cluster as client.%s: %s%s",
               user, strerror(-r), connect_hint(-r));
    return -1;
  }
  return 0;
}

static int
open_image(struct rbd_disk *d, const struct rbd_name *n)
{
  int r = rados_ioctx_create(d->cluster, n->pool, &d->io);
  if (r < 0) {
    d->io = NULL;
    nbds_error("rbd: cannot open pool '%s': %s%s", n->pool, strerror(-r),
               r == -ENOENT ? " (no such pool)" : "");
    return -1;
  }
  rados_ioctx_set_namespace(d->io, n->nspace);

  /* A snapshot, or a read-only export, takes no exclusive lock. */
  if (d->readonly)
    r = rbd_open_read_only(d->io, n->image, &d->image, n->snap);
  else
    r = rbd_open(d->io, n->image, &d->image, NULL);
  if (r < 0) {
    d->image = NULL;
    const char *hint = "";
    if (r == -ENOENT)
      hint = n->snap ? " (no such image or snapshot)" : " (no such image)";
    else if (r == -EPERM || r == -EACCES)
      hint = d->readonly ? " (the Ceph user may not read this pool)"
                         : " (the Ceph user may not write this pool: "
                           "try -r for a read-only export)";
    nbds_error("rbd: cannot open image %s: %s%s", d->label, strerror(-r),
               hint);
    return -1;
  }

  rbd_image_info_t info;
  r = rbd_stat(d->image, &info, sizeof info);
  if (r < 0) {
    nbds_error("rbd: %s: cannot read the image size: %s", d->label,
               strerror(-r));
    return -1;
  }
  d->size = info.size;
  d->object_size = info.obj_size;
  return 0;
}

int
rbd_disk_connect(struct rbd_disk *d, const struct rbd_name *n)
{
  if (open_cluster(d, n) == -1 ||
      open_image(d, n) == -1) {
    rbd_disk_disconnect(d);
    return -1;
  }
  return 0;
}

void
rbd_disk_disconnect(struct rbd_disk *d)
{
  if (d->image)
    rbd_close(d->image);  /* writes back the client cache */
  if (d->io)
    rados_ioctx_destroy(d->io);
  if (d->cluster)
    rados_shutdown(d->cluster);
  d->image = NULL;
  d->io = NULL;
  d->cluster = NULL;
}
