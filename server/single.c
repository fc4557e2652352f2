#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "single.h"

int
single_client_fd(void)
{
  struct stat in, out;
  if (fstat(STDIN_FILENO, &in) == -1 || fstat(STDOUT_FILENO, &out) == -1) {
    nbds_log_error("--single: stdin or stdout is closed");
    return -1;
  }
  /* The connection reads and writes one fd.  A socketpair end given as
   * both stdin and stdout (what libnbd does) is one socket; two pipes
   * would need a transport with separate read and write fds. */
  if (!S_ISSOCK(in.st_mode) || in.st_dev != out.st_dev ||
      in.st_ino != out.st_ino) {
    nbds_log_error("--single: stdin and stdout must be one connected socket "
                   "(as libnbd's nbd_connect_command gives); pipes or two "
                   "different files are not supported");
    return -1;
  }
  int fd = fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 3);
  int flags = fd == -1 ? -1 : fcntl(fd, F_GETFL);
  if (flags == -1 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) == -1) {
    nbds_log_error("--single: %s", strerror(errno));
    return -1;
  }
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null == -1 || dup2(null, STDIN_FILENO) == -1 ||
      dup2(null, STDOUT_FILENO) == -1) {
    nbds_log_error("--single: /dev/null: %s", strerror(errno));
    return -1;
  }
  close(null);
  return fd;
}
