/* The metrics thread: its own libev loop, never a reactor, so a scrape
 * (or a slow scraper) cannot delay a request.  It answers GET /metrics
 * (Prometheus text) and GET /metrics.json over HTTP/1.0, one request per
 * connection, and writes the JSON to a file when metrics_dump() asks.
 *
 * The HTTP responder is written here by hand: a bounded GET of two fixed
 * paths is a few dozen lines, and no Debian-packaged library fits that
 * without bringing a whole web server (libmicrohttpd) and its threads. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <ev.h>

#include "log.h"
#include "metrics.h"

#define MAX_REQUEST   4096   /* request line and headers */
#define MAX_CLIENTS   16     /* scrapers at once; more are closed at once */
#define CLIENT_TIMEOUT 5.0   /* seconds for a whole exchange, not per read */

struct client {
  struct client *prev, *next;
  int fd;
  ev_io io;
  ev_timer deadline;
  size_t len;
  char req[MAX_REQUEST + 1];
  char *resp;
  size_t resp_len, resp_off;
};

static struct ev_loop *loop;
static pthread_t thread;
static bool running;
static int listen_fd = -1;
static char *unix_path;
static const char *json_path;
static struct client *clients;
static unsigned nclients;
static ev_io accept_watcher;
static ev_async dump_watcher, stop_watcher;

static void
client_close(struct client *cl)
{
  ev_io_stop(loop, &cl->io);
  ev_timer_stop(loop, &cl->deadline);
  close(cl->fd);
  free(cl->resp);
  if (cl->prev)
    cl->prev->next = cl->next;
  else
    clients = cl->next;
  if (cl->next)
    cl->next->prev = cl->prev;
  free(cl);
  nclients--;
}

/* After the response: read and drop whatever the client still sends
 * until it closes (or the deadline), so that closing with unread input
 * does not reset the connection before the client has read the answer. */
static void
client_drain_cb(struct ev_loop *l, ev_io *w, int revents)
{
  (void) l;
  (void) revents;
  struct client *cl = w->data;
  char buf[4096];
  ssize_t n = recv(cl->fd, buf, sizeof buf, 0);
  if (n == -1 && (errno == EAGAIN || errno == EINTR))
    return;
  if (n <= 0)
    client_close(cl);
}

static void
client_write_cb(struct ev_loop *l, ev_io *w, int revents)
{
  (void) l;
  (void) revents;
  struct client *cl = w->data;
  while (cl->resp_off < cl->resp_len) {
    ssize_t n = send(cl->fd, cl->resp + cl->resp_off,
                     cl->resp_len - cl->resp_off, MSG_NOSIGNAL);
    if (n == -1 && (errno == EAGAIN || errno == EINTR))
      return;
    if (n <= 0) {
      client_close(cl);
      return;
    }
    cl->resp_off += n;
  }
  shutdown(cl->fd, SHUT_WR);
  ev_io_stop(loop, &cl->io);
  ev_io_init(&cl->io, client_drain_cb, cl->fd, EV_READ);
  cl->io.data = cl;
  ev_io_start(loop, &cl->io);
}

/* Queue a response and switch to writing it. */
static void
respond(struct client *cl, const char *status, const char *type,
        const char *extra, const char *body)
{
  if (!body)
    body = "";
  size_t blen = strlen(body);
  char *r = NULL;
  int n = asprintf(&r, "HTTP/1.0 %s\r\nContent-Type: %s\r\n"
                   "Content-Length: %zu\r\n%sConnection: close\r\n\r\n%s",
                   status, type, blen, extra ? extra : "", body);
  if (n < 0) {
    client_close(cl);
    return;
  }
  cl->resp = r;
  cl->resp_len = n;
  ev_io_stop(loop, &cl->io);
  ev_io_init(&cl->io, client_write_cb, cl->fd, EV_WRITE);
  cl->io.data = cl;
  ev_io_start(loop, &cl->io);
}

static void
handle_request(struct client *cl)
{
  /* The request line: METHOD SP TARGET SP HTTP/x.y */
  char *line = cl->req;
  line[strcspn(line, "\r\n")] = '\0';
  char *method = strtok(line, " ");
  char *target = strtok(NULL, " ");
  char *version = strtok(NULL, " ");
  if (!method || !target || !version || strtok(NULL, " ") ||
      strncmp(version, "HTTP/", 5) != 0) {
    respond(cl, "400 Bad Request", "text/plain", NULL, "bad request\n");
    return;
  }
  if (strcmp(method, "GET") != 0) {
    respond(cl, "405 Method Not Allowed", "text/plain", "Allow: GET\r\n",
            "only GET\n");
    return;
  }
  target[strcspn(target, "?")] = '\0';  /* a query changes nothing */
  char *text;
  const char *type;
  if (strcmp(target, "/metrics") == 0) {
    text = metrics_render_prometheus();
    type = "text/plain; version=0.0.4; charset=utf-8";
  } else if (strcmp(target, "/metrics.json") == 0) {
    text = metrics_render_json();
    type = "application/json";
  } else {
    respond(cl, "404 Not Found", "text/plain", NULL,
            "try /metrics or /metrics.json\n");
    return;
  }
  if (text)
    respond(cl, "200 OK", type, NULL, text);
  else
    respond(cl, "500 Internal Server Error", "text/plain", NULL,
            "out of memory\n");
  free(text);
}

static void
client_read_cb(struct ev_loop *l, ev_io *w, int revents)
{
  (void) l;
  (void) revents;
  struct client *cl = w->data;
  ssize_t n = recv(cl->fd, cl->req + cl->len, MAX_REQUEST - cl->len, 0);
  if (n == -1 && (errno == EAGAIN || errno == EINTR))
    return;
  if (n <= 0) {
    client_close(cl);  /* gone before asking anything whole */
    return;
  }
  cl->len += n;
  cl->req[cl->len] = '\0';
  if (memchr(cl->req, '\0', cl->len))
    respond(cl, "400 Bad Request", "text/plain", NULL, "bad request\n");
  else if (strstr(cl->req, "\r\n\r\n") || strstr(cl->req, "\n\n"))
    handle_request(cl);
  else if (cl->len == MAX_REQUEST)
    respond(cl, "431 Request Header Fields Too Large", "text/plain", NULL,
            "request too large\n");
}

static void
client_deadline_cb(struct ev_loop *l, ev_timer *w, int revents)
{
  (void) l;
  (void) revents;
  client_close(w->data);  /* too slow to ask, or to read the answer */
}

static void
accept_cb(struct ev_loop *l, ev_io *w, int revents)
{
  (void) l;
  (void) revents;
  int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd == -1)
    return;
  struct client *cl = nclients < MAX_CLIENTS ? calloc(1, sizeof *cl) : NULL;
  if (!cl) {
    close(fd);
    return;
  }
  nclients++;
  cl->next = clients;
  if (clients)
    clients->prev = cl;
  clients = cl;
  cl->fd = fd;
  ev_io_init(&cl->io, client_read_cb, fd, EV_READ);
  ev_timer_init(&cl->deadline, client_deadline_cb, CLIENT_TIMEOUT, 0);
  cl->io.data = cl->deadline.data = cl;
  ev_io_start(loop, &cl->io);
  ev_timer_start(loop, &cl->deadline);
}

/* Write the JSON to json_path through a temporary file, so a reader
 * never sees half of it. */
static void
dump_cb(struct ev_loop *l, ev_async *w, int revents)
{
  (void) l;
  (void) w;
  (void) revents;
  if (!json_path)
    return;
  char *text = metrics_render_json();
  char *tmp = NULL;
  if (!text || asprintf(&tmp, "%s.tmp", json_path) < 0) {
    nbds_log_error("metrics: out of memory writing %s", json_path);
    free(text);
    return;
  }
  FILE *f = fopen(tmp, "w");
  if (!f || fputs(text, f) == EOF || fputc('\n', f) == EOF ||
      fclose(f) != 0 || rename(tmp, json_path) != 0) {
    nbds_log_error("metrics: cannot write %s: %s", json_path,
                   strerror(errno));
    unlink(tmp);
  }
  free(tmp);
  free(text);
}

static void
stop_cb(struct ev_loop *l, ev_async *w, int revents)
{
  (void) w;
  (void) revents;
  ev_break(l, EVBREAK_ALL);
}

static int
bind_unix(const char *path)
{
  struct sockaddr_un sun = { .sun_family = AF_UNIX };
  if (strlen(path) >= sizeof sun.sun_path) {
    nbds_log_error("--metrics: socket path too long: %s", path);
    return -1;
  }
  strcpy(sun.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd != -1)
    unlink(path);  /* a stale socket from an earlier run */
  if (fd == -1 || bind(fd, (struct sockaddr *) &sun, sizeof sun) == -1 ||
      listen(fd, 16) == -1) {
    nbds_log_error("--metrics: cannot listen on %s: %s", path,
                   strerror(errno));
    if (fd != -1)
      close(fd);
    return -1;
  }
  unix_path = strdup(path);
  return fd;
}

/* HOST:PORT, [V6HOST]:PORT or :PORT (every address, IPv4 and IPv6). */
static int
bind_tcp(const char *addr)
{
  const char *colon = strrchr(addr, ':');
  if (!colon || !colon[1]) {
    nbds_log_error("--metrics: '%s' is not HOST:PORT, :PORT or a socket "
                   "path", addr);
    return -1;
  }
  char host[256];
  size_t hlen = colon - addr;
  if (hlen >= 2 && addr[0] == '[' && addr[hlen - 1] == ']') {
    addr++;
    hlen -= 2;
  }
  if (hlen >= sizeof host) {
    nbds_log_error("--metrics: host name too long");
    return -1;
  }
  memcpy(host, addr, hlen);
  host[hlen] = '\0';

  struct addrinfo hints = { .ai_family = AF_UNSPEC,
                            .ai_socktype = SOCK_STREAM,
                            .ai_flags = AI_PASSIVE };
  struct addrinfo *res;
  int err = getaddrinfo(hlen ? host : NULL, colon + 1, &hints, &res);
  if (err) {
    nbds_log_error("--metrics: cannot resolve '%s': %s", addr,
                   gai_strerror(err));
    return -1;
  }
  int fd = -1, last_errno = 0;
  for (struct addrinfo *a = res; a && fd == -1; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                a->ai_protocol);
    if (fd == -1) {
      last_errno = errno;
      continue;
    }
    int one = 1, zero = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (a->ai_family == AF_INET6)  /* :: takes IPv4 clients too */
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    if (bind(fd, a->ai_addr, a->ai_addrlen) == -1 || listen(fd, 16) == -1) {
      last_errno = errno;
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  if (fd == -1)
    nbds_log_error("--metrics: cannot listen on %s: %s", addr,
                   strerror(last_errno));
  return fd;
}

static void *
metrics_thread(void *arg)
{
  (void) arg;
  ev_run(loop, 0);
  return NULL;
}

bool
metrics_start(const char *addr, const char *path)
{
  if (!addr && !path)
    return true;
  json_path = path;
  if (addr) {
    listen_fd = strchr(addr, '/') ? bind_unix(addr) : bind_tcp(addr);
    if (listen_fd == -1)
      return false;
  }
  loop = ev_loop_new(EVFLAG_AUTO);
  if (!loop) {
    nbds_log_error("metrics: cannot create an event loop");
    return false;
  }
  if (listen_fd != -1) {
    ev_io_init(&accept_watcher, accept_cb, listen_fd, EV_READ);
    ev_io_start(loop, &accept_watcher);
  }
  ev_async_init(&dump_watcher, dump_cb);
  ev_async_start(loop, &dump_watcher);
  ev_async_init(&stop_watcher, stop_cb);
  ev_async_start(loop, &stop_watcher);
  if (pthread_create(&thread, NULL, metrics_thread, NULL) != 0) {
    nbds_log_error("metrics: cannot start its thread");
    return false;
  }
  running = true;
  return true;
}

void
metrics_dump(void)
{
  if (running)
    ev_async_send(loop, &dump_watcher);
}

void
metrics_stop(void)
{
  if (!running)
    return;
  ev_async_send(loop, &stop_watcher);
  pthread_join(thread, NULL);
  running = false;
  while (clients)
    client_close(clients);  /* scrapers still connected */
  if (listen_fd != -1)
    close(listen_fd);
  if (unix_path) {
    unlink(unix_path);
    free(unix_path);
  }
  ev_loop_destroy(loop);
}
