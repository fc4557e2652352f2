/* The backend: one libnbd handle, and the VMM's event loop hooks. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#include "engine.h"

static void
set_error(char **errmsg, const char *what)
{
  if (!errmsg)
    return;
  const char *e = nbd_get_error();
  if (asprintf(errmsg, "%s: %s", what, e ? e : strerror(errno)) == -1)
    *errmsg = NULL;
}

devemu_backend *
devemu_backend_wrap(struct nbd_handle *h, bool take_ownership, char **errmsg)
{
  if (!nbd_aio_is_ready(h)) {
    set_error(errmsg, "the NBD handle is not connected");
    return NULL;
  }
  int64_t size = nbd_get_size(h);
  int64_t min = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
  int64_t pref = nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED);
  int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
  if (size < 0 || min < 0 || pref < 0 || max < 0) {
    set_error(errmsg, "querying the export");
    return NULL;
  }
  devemu_backend *b = calloc(1, sizeof *b);
  if (!b) {
    set_error(errmsg, "calloc");
    return NULL;
  }
  b->nbd = h;
  b->own = take_ownership;
  b->size = size;
  b->block_min = min ? min : 1;
  b->block_pref = pref;
  b->block_max = max;
  b->read_only = nbd_is_read_only(h) == 1;
  b->can_flush = nbd_can_flush(h) == 1;
  b->can_fua = nbd_can_fua(h) == 1;
  b->can_trim = nbd_can_trim(h) == 1;
  b->can_zero = nbd_can_zero(h) == 1;
  return b;
}

devemu_backend *
devemu_backend_connect_uri(const char *uri, char **errmsg)
{
  struct nbd_handle *h = nbd_create();

  if (!h) {
    set_error(errmsg, "nbd_create");
    return NULL;
  }
  if (nbd_connect_uri(h, uri) == -1) {
    set_error(errmsg, uri);
    nbd_close(h);
    return NULL;
  }
  devemu_backend *b = devemu_backend_wrap(h, true, errmsg);
  if (!b)
    nbd_close(h);
  return b;
}

void
devemu_backend_close(devemu_backend *b)
{
  if (!b)
    return;
  if (b->own)
    nbd_close(b->nbd);
  free(b);
}

int
devemu_backend_fd(devemu_backend *b)
{
  return nbd_aio_get_fd(b->nbd);
}

short
devemu_backend_events(devemu_backend *b)
{
  unsigned dir = nbd_aio_get_direction(b->nbd);
  short ev = 0;

  if (dir & LIBNBD_AIO_DIRECTION_READ)
    ev |= POLLIN;
  if (dir & LIBNBD_AIO_DIRECTION_WRITE)
    ev |= POLLOUT;
  return ev;
}

int
devemu_backend_dispatch(devemu_backend *b, short revents)
{
  unsigned dir = nbd_aio_get_direction(b->nbd);

  /* On a hang-up or error, reading is how libnbd finds out. */
  if (revents & (POLLIN | POLLHUP | POLLERR) &&
      dir & LIBNBD_AIO_DIRECTION_READ)
    nbd_aio_notify_read(b->nbd);
  else if (revents & POLLOUT && dir & LIBNBD_AIO_DIRECTION_WRITE)
    nbd_aio_notify_write(b->nbd);
  dv_run(b);
  return nbd_aio_is_dead(b->nbd) || nbd_aio_is_closed(b->nbd) ? -1 : 0;
}

int
devemu_backend_poll(devemu_backend *b, int timeout_ms)
{
  struct pollfd pfd = {
    .fd = devemu_backend_fd(b),
    .events = devemu_backend_events(b),
  };

  if (pfd.fd == -1)
    return -1;
  if (poll(&pfd, 1, timeout_ms) == -1 && errno != EINTR)
    return -1;
  return devemu_backend_dispatch(b, pfd.revents);
}

unsigned
devemu_backend_pending(devemu_backend *b)
{
  return b->pending;
}

struct nbd_handle *
devemu_backend_nbd(devemu_backend *b)
{
  return b->nbd;
}
