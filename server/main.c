/* nbdstack: export a disk image over NBD, with qemu-nbd's command line. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "allow.h"
#include "config.h"
#include "export.h"
#include "listen.h"
#include "log.h"
#include "metrics.h"
#include "options.h"
#include "reload.h"
#include "reactor.h"
#include "server.h"
#include "single.h"
#include "stack.h"
#include "systemd.h"
#include "tls.h"

/* With --fork the parent stays until the child is ready, copying the
 * child's start-up messages to its own stderr, and exits 0 only if the
 * child said it was ready. */
static int ready_fd = -1;
static int saved_stderr = -1;

static void
daemonize(void)
{
  int errpipe[2], readypipe[2];
  if (pipe2(errpipe, O_CLOEXEC) == -1 || pipe2(readypipe, O_CLOEXEC) == -1) {
    nbds_log_error("pipe: %s", strerror(errno));
    exit(EXIT_FAILURE);
  }
  pid_t pid = fork();
  if (pid == -1) {
    nbds_log_error("fork: %s", strerror(errno));
    exit(EXIT_FAILURE);
  }
  if (pid > 0) {
    close(errpipe[1]);
    close(readypipe[1]);
    char buf[4096];
    ssize_t n;
    while ((n = read(errpipe[0], buf, sizeof buf)) > 0 ||
           (n == -1 && errno == EINTR))
      if (n > 0 && write(STDERR_FILENO, buf, n) != n)
        break;
    char status = 0;
    while ((n = read(readypipe[0], &status, 1)) == -1 && errno == EINTR)
      ;
    if (n == 1 && status == 'R')
      _exit(EXIT_SUCCESS);
    waitpid(pid, NULL, WNOHANG);
    _exit(EXIT_FAILURE);
  }
  close(errpipe[0]);
  close(readypipe[0]);
  setsid();
  saved_stderr = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
  dup2(errpipe[1], STDERR_FILENO);
  close(errpipe[1]);
  ready_fd = readypipe[1];
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null >= 0) {
    dup2(null, STDIN_FILENO);
    dup2(null, STDOUT_FILENO);
    close(null);
  }
}

static void
announce_ready(void)
{
  if (ready_fd == -1)
    return;
  if (saved_stderr >= 0) {
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
  }
  if (write(ready_fd, "R", 1) != 1)
    nbds_log_error("cannot tell the parent we are ready");
  close(ready_fd);
  ready_fd = -1;
}

static void
write_pid_file(const char *path)
{
  FILE *f = fopen(path, "w");
  if (!f || fprintf(f, "%d\n", (int) getpid()) < 0 || fclose(f) != 0) {
    nbds_log_error("cannot write pid file '%s': %s", path, strerror(errno));
    exit(EXIT_FAILURE);
  }
}

int
main(int argc, char **argv)
{
  struct options o;
  options_parse(argc, argv, &o);
  nbds_verbose = o.verbose;
  if (o.log_syslog)
    nbds_log_to_syslog();

  /* Before --fork: LISTEN_PID names this process. */
  int activated = systemd_listen();
  if (activated == -1)
    exit(EXIT_FAILURE);
  if (activated > 0 && o.listener_from_config)
    o.socket_path = o.port = o.bind = NULL;  /* as -k/-p/-b would replace it */
  if (activated > 0 && (o.socket_path || o.port || o.bind || o.single)) {
    nbds_log_error("socket activation passed %d socket(s): -k, -p, -b and "
                   "--single do not apply", activated);
    exit(EXIT_FAILURE);
  }
  if (o.single) {
    server_config.single = true;
    server_config.single_fd = single_client_fd();
    if (server_config.single_fd == -1)
      exit(EXIT_FAILURE);
  }

  if (o.fork)
    daemonize();  /* before any thread exists */

  if (!tls_init(&o.tls))
    exit(EXIT_FAILURE);
  for (unsigned i = 0; i < o.nallow; i++) {
    const char *bad;
    allow_add(o.allow[i], &bad);  /* options_set checked it */
  }

  bool uring = o.aio != AIO_THREADS && reactor_uring_works();
  if (o.aio == AIO_IO_URING && !uring) {
    nbds_log_error("--aio=io_uring: the kernel refuses io_uring here; "
                   "use --aio=threads");
    exit(EXIT_FAILURE);
  }
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  server_config.threads = o.threads ? o.threads : (cpus > 0 ? cpus : 1);
  server_config.shared = o.shared;
  server_config.persistent = o.persistent;
  server_config.handshake_timeout = o.handshake_timeout;
  server_config.busy_poll = o.busy_poll;
  server_config.idle_timeout = o.idle_timeout;

  /* Reactor 0 first: opening layers may use the calling reactor. */
  if (!server_init(uring)) {
    nbds_log_error("cannot start the reactors");
    exit(EXIT_FAILURE);
  }
  workers_init(64);
  if (o.cfg) {
    if (!reload_open_all(o.cfg, uring))
      exit(EXIT_FAILURE);
    reload_start(o.config);
  } else {
    struct export *e = export_open(&o.ex, uring);
    if (!e)
      exit(EXIT_FAILURE);
    export_add(e);
  }

  if (!metrics_start(o.metrics, o.metrics_json))
    exit(EXIT_FAILURE);
  if (activated == 0 && !o.single &&
      (o.socket_path ? listen_unix(o.socket_path) == -1
                     : listen_tcp(o.bind, o.port) == -1))
    exit(EXIT_FAILURE);
  if (o.pid_file)
    write_pid_file(o.pid_file);
  nbds_log_debug("ready: %s", o.single ? "stdin" : activated ? "activated"
                 : o.socket_path ? o.socket_path : "TCP");
  announce_ready();
  systemd_notify_ready();

  bool ok = server_run();
  config_free(o.cfg);  /* the options pointed into it until now */
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
