/* Errors from the cluster: what the client gets, and one clear log line.
 *
 * A cluster in trouble fails every request alike (an OSD down, a full
 * pool), so the layer logs the first failure of a kind with what it
 * probably means, then stays quiet about the same error for
 * LOG_INTERVAL seconds and says how many it did not log. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "rbd.h"

#define LOG_INTERVAL 10.0

static double
now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static const char *
meaning(int err)
{
  switch (err) {
  case EPERM:
  case EACCES:
    return "permission denied by the cluster: the Ceph user's caps do not "
           "allow this on the image's pools";
  case EDQUOT:
    return "the pool is over its quota";
  case ENOSPC:
    return "the cluster is full";
  case ETIMEDOUT:
    /* librados holds writes to a full pool until the timeout, too. */
    return "the cluster did not answer in time (an OSD or monitor down, "
           "or the pool or cluster full?)";
  case EROFS:
    return "the image is read-only";
  case ESHUTDOWN:  /* EBLOCKLISTED */
    return "the cluster blocklisted this client (another client broke "
           "its lock on the image)";
  default:
    return "error from librbd";
  }
}

/* The errno the client sees: NBD has EPERM, ENOSPC, EINVAL, ENOMEM and
 * ENOTSUP; everything else is an I/O error (ESHUTDOWN would tell the
 * client the server is going away). */
static int
client_errno(int err)
{
  switch (err) {
  case EPERM:
  case EROFS:
  case ENOSPC:
  case EDQUOT:
  case EINVAL:
  case ENOMEM:
  case ENOTSUP:
    return err;
  case EACCES:
    return EPERM;
  default:
    return EIO;
  }
}

int
rbd_error(struct rbd_disk *d, const char *what, const struct nbds_req *req,
          int err)
{
  double t = now();
  pthread_mutex_lock(&d->log_lock);
  bool log = err != d->last_err || t - d->last_logged >= LOG_INTERVAL;
  unsigned repeats = d->repeats;
  if (log) {
    d->last_err = err;
    d->last_logged = t;
    d->repeats = 0;
  } else
    d->repeats++;
  pthread_mutex_unlock(&d->log_lock);

  if (log) {
    char also[48] = "";
    if (repeats)
      snprintf(also, sizeof also, " (%u more failures not logged)", repeats);
    nbds_log_error("rbd: %s: %s at %llu+%llu failed: %s: %s%s", d->label,
                   what, (unsigned long long) req->offset,
                   (unsigned long long) req->count, strerror(err),
                   meaning(err), also);
  }
  return client_errno(err);
}
