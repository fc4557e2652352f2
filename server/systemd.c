#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>

#include "listen.h"
#include "log.h"
#include "systemd.h"

int
systemd_listen(void)
{
  /* 1: unset LISTEN_*, so nothing we start (an nbdkit plugin's helper)
   * takes the sockets for its own. */
  int n = sd_listen_fds(1);
  if (n < 0) {
    nbds_log_error("socket activation: %s", strerror(-n));
    return -1;
  }
  for (int i = 0; i < n; i++) {
    int fd = SD_LISTEN_FDS_START + i;
    if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
      nbds_log_error("socket activation: fd %d is not a listening stream "
                     "socket (use ListenStream= with Accept=no)", fd);
      return -1;
    }
    if (listen_adopt(fd) == -1)
      return -1;
  }
  return n;
}

static void
notify(const char *state)
{
  int r = sd_notify(0, state);
  if (r < 0)
    nbds_log_error("sd_notify %s: %s", state, strerror(-r));
}

void
systemd_notify_ready(void)
{
  notify("READY=1");
}

void
systemd_notify_stopping(void)
{
  notify("STOPPING=1");
}
