/* Listeners.  TCP without -b listens on every address getaddrinfo gives
 * for a passive socket, IPv6 only on the IPv6 one so both coexist. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "allow.h"
#include "listen.h"
#include "log.h"

#define MAX_LISTENERS 16

static struct listener {
  int fd;
  bool tcp;
  ev_io watcher;
} listeners[MAX_LISTENERS];
static int nlisteners;
static char *unix_path;
static struct ev_loop *listen_loop;
static void (*accept_fn)(int fd, const char *peer);

static int
add_listener(int fd, bool tcp)
{
  if (nlisteners == MAX_LISTENERS) {
    close(fd);
    return 0;
  }
  listeners[nlisteners].fd = fd;
  listeners[nlisteners].tcp = tcp;
  nlisteners++;
  return 0;
}

int
listen_unix(const char *path)
{
  struct sockaddr_un sun = { .sun_family = AF_UNIX };
  if (strlen(path) >= sizeof sun.sun_path) {
    nbds_log_error("socket path too long: %s", path);
    return -1;
  }
  strcpy(sun.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd == -1) {
    nbds_log_error("socket: %s", strerror(errno));
    return -1;
  }
  unlink(path);  /* a stale socket from an earlier run, as qemu-nbd does */
  if (bind(fd, (struct sockaddr *) &sun, sizeof sun) == -1 ||
      listen(fd, SOMAXCONN) == -1) {
    nbds_log_error("cannot listen on %s: %s", path, strerror(errno));
    close(fd);
    return -1;
  }
  unix_path = strdup(path);
  return add_listener(fd, false);
}

int
listen_adopt(int fd)
{
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  int flags = fcntl(fd, F_GETFL);
  if (getsockname(fd, (struct sockaddr *) &ss, &len) == -1 || flags == -1 ||
      fcntl(fd, F_SETFL, flags | O_NONBLOCK) == -1 ||
      fcntl(fd, F_SETFD, FD_CLOEXEC) == -1) {
    nbds_log_error("inherited socket %d: %s", fd, strerror(errno));
    return -1;
  }
  if (nlisteners == MAX_LISTENERS) {
    nbds_log_error("more than %d listening sockets", MAX_LISTENERS);
    return -1;
  }
  return add_listener(fd, ss.ss_family == AF_INET || ss.ss_family == AF_INET6);
}

int
listen_tcp(const char *bind_addr, const char *port)
{
  struct addrinfo hints = {
    .ai_family = AF_UNSPEC,
    .ai_socktype = SOCK_STREAM,
    .ai_flags = AI_PASSIVE | AI_ADDRCONFIG,
  };
  struct addrinfo *res;
  int err = getaddrinfo(bind_addr, port ? port : "10809", &hints, &res);
  if (err) {
    nbds_log_error("cannot resolve %s: %s", bind_addr ? bind_addr : "*",
                   gai_strerror(err));
    return -1;
  }
  int made = 0;
  int last_errno = 0;
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    a->ai_protocol);
    if (fd == -1) {
      last_errno = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (a->ai_family == AF_INET6)
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, a->ai_addr, a->ai_addrlen) == -1 ||
        listen(fd, SOMAXCONN) == -1) {
      last_errno = errno;
      close(fd);
      continue;
    }
    add_listener(fd, true);
    made++;
  }
  freeaddrinfo(res);
  if (made == 0) {
    nbds_log_error("cannot listen on %s port %s: %s",
                   bind_addr ? bind_addr : "*", port ? port : "10809",
                   strerror(last_errno));
    return -1;
  }
  return 0;
}

static void
peer_name(const struct sockaddr_storage *ss, char *buf, size_t len)
{
  char host[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *in = (const void *) ss;
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    port = ntohs(in->sin_port);
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const void *) ss;
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    port = ntohs(in6->sin6_port);
  } else {
    snprintf(buf, len, "unix");
    return;
  }
  snprintf(buf, len, "%s:%u", host, port);
}

static void
accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
  (void) loop;
  (void) revents;
  struct listener *l = w->data;
  struct sockaddr_storage ss;
  socklen_t sslen = sizeof ss;
  int fd = accept4(l->fd, (struct sockaddr *) &ss, &sslen,
                   SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd == -1) {
    if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
      nbds_log_error("accept: %s", strerror(errno));
    return;
  }
  char peer[80];
  peer_name(&ss, peer, sizeof peer);
  if (!allow_permits((const struct sockaddr *) &ss)) {
    nbds_log_info("%s: connection refused: address not in --allow", peer);
    close(fd);
    return;
  }
  if (l->tcp) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  accept_fn(fd, peer);
}

void
listen_start(struct ev_loop *loop, void (*on_accept)(int fd, const char *peer))
{
  listen_loop = loop;
  accept_fn = on_accept;
  for (int i = 0; i < nlisteners; i++) {
    ev_io_init(&listeners[i].watcher, accept_cb, listeners[i].fd, EV_READ);
    listeners[i].watcher.data = &listeners[i];
  }
  listen_resume();
}

void
listen_pause(void)
{
  for (int i = 0; i < nlisteners; i++)
    ev_io_stop(listen_loop, &listeners[i].watcher);
}

void
listen_resume(void)
{
  for (int i = 0; i < nlisteners; i++)
    ev_io_start(listen_loop, &listeners[i].watcher);
}

void
listen_close(void)
{
  if (listen_loop)
    listen_pause();
  for (int i = 0; i < nlisteners; i++)
    close(listeners[i].fd);
  nlisteners = 0;
  if (unix_path) {
    unlink(unix_path);
    free(unix_path);
    unix_path = NULL;
  }
}
