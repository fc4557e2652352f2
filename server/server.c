/* Server lifetime: reactors, handing accepted clients to them, the -e
 * client limit, exiting after the last client without -t, and the clean
 * shutdown on SIGTERM/SIGINT.  The counters live on reactor 0 only; other
 * reactors report to it through its mailbox, so nothing here needs a lock. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "connection.h"
#include "export.h"
#include "listen.h"
#include "log.h"
#include "metrics.h"
#include "reactor.h"
#include "server.h"
#include "systemd.h"

struct server_config server_config;

static struct nbds_reactor **reactors;
static unsigned nreactors, next_reactor;
static unsigned clients;      /* connected, negotiating or not */
static unsigned negotiated;   /* in transmission */
static bool stopping;
static ev_signal sigterm_watcher, sigint_watcher, sigusr1_watcher;

bool
server_stopping(void)
{
  return stopping;
}

struct nbds_reactor *
server_main_reactor(void)
{
  return reactors[0];
}

static struct ev_loop *
main_loop(void)
{
  return nbds_reactor_loop(reactors[0]);
}

static void
maybe_finish(void)
{
  if (stopping && clients == 0)
    ev_break(main_loop(), EVBREAK_ALL);
}

void
server_stop(void)
{
  if (stopping)
    return;
  stopping = true;
  nbds_log_debug("shutting down");
  systemd_notify_stopping();
  listen_pause();
  for (unsigned i = 0; i < nreactors; i++)
    nbds_reactor_post(reactors[i], conn_shutdown_all, NULL);
  maybe_finish();
}

static void
negotiated_cb(void *arg)
{
  (void) arg;
  negotiated++;
}

void
server_client_negotiated(void)
{
  nbds_reactor_post(reactors[0], negotiated_cb, NULL);
}

static void
gone_cb(void *arg)
{
  bool was_negotiated = arg != NULL;
  clients--;
  if (was_negotiated)
    negotiated--;
  if (!stopping && server_config.shared && clients + 1 == server_config.shared)
    listen_resume();
  /* Like qemu-nbd: without -t, the last negotiated client leaving ends
   * the server; a client that never negotiated does not.  With --single
   * the one client leaving, negotiated or not, ends it. */
  if (server_config.single ||
      (was_negotiated && negotiated == 0 && !server_config.persistent))
    server_stop();
  maybe_finish();
}

void
server_client_gone(bool was_negotiated)
{
  nbds_reactor_post(reactors[0], gone_cb, was_negotiated ? (void *) 1 : NULL);
}

struct handoff {
  int fd;
  char peer[80];
};

static void
handoff_cb(void *arg)
{
  struct handoff *h = arg;
  conn_start(h->fd, h->peer);
  free(h);
}

static void
on_accept(int fd, const char *peer)
{
  struct handoff *h = malloc(sizeof *h);
  if (stopping || !h) {
    free(h);
    close(fd);
    return;
  }
  clients++;
  if (server_config.shared && clients >= server_config.shared)
    listen_pause();  /* later clients wait in the backlog, as in qemu-nbd */
  h->fd = fd;
  snprintf(h->peer, sizeof h->peer, "%s", peer);
  /* Round robin; a connection stays on its reactor for life. */
  nbds_reactor_post(reactors[next_reactor++ % nreactors], handoff_cb, h);
}

static void
signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
  (void) loop;
  (void) revents;
  nbds_log_debug("signal %d", w->signum);
  server_stop();
}

static void
stats_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
  (void) loop;
  (void) w;
  (void) revents;
  exports_log_stats();
  metrics_dump();  /* the JSON, to --metrics-json's file */
}

bool
server_init(bool want_uring)
{
  unsigned n = server_config.threads;
  reactors = calloc(n, sizeof *reactors);
  if (!reactors)
    return false;
  for (unsigned i = 0; i < n; i++) {
    reactors[i] = reactor_create(i, want_uring);
    if (!reactors[i])
      return false;
    reactor_set_poll(reactors[i], server_config.busy_poll);
    nreactors++;
  }
  return true;
}

bool
server_run(void)
{
  struct ev_loop *loop = main_loop();
  signal(SIGPIPE, SIG_IGN);
  ev_signal_init(&sigterm_watcher, signal_cb, SIGTERM);
  ev_signal_init(&sigint_watcher, signal_cb, SIGINT);
  ev_signal_start(loop, &sigterm_watcher);
  ev_signal_start(loop, &sigint_watcher);
  ev_signal_init(&sigusr1_watcher, stats_cb, SIGUSR1);
  ev_signal_start(loop, &sigusr1_watcher);
  ev_unref(loop);
  ev_unref(loop);
  ev_unref(loop);
  /* Reactor 0 runs until server_stop() has seen every client leave, not
   * until it happens to have no watchers. */
  ev_ref(loop);

  for (unsigned i = 1; i < nreactors; i++)
    reactor_start(reactors[i]);
  listen_start(loop, on_accept);
  if (server_config.single)
    on_accept(server_config.single_fd, "stdin");
  ev_run(loop, 0);

  for (unsigned i = 1; i < nreactors; i++)
    reactor_stop(reactors[i]);
  listen_close();
  /* A clean exit leaves the data on disk (the cache policy makes this a
   * no-op in unsafe mode). */
  bool ok = exports_flush_all();
  exports_log_stats();
  workers_shutdown();
  metrics_stop();  /* it reads the exports */
  exports_close_all();
  for (unsigned i = nreactors; i-- > 0;)
    reactor_destroy(reactors[i]);
  free(reactors);
  return ok;
}
