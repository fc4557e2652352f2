/* Server-wide settings and lifetime: how many clients, when to exit. */
#ifndef NBDS_SERVER_SERVER_H
#define NBDS_SERVER_SERVER_H

#include <stdbool.h>

struct export;

struct server_config {
  unsigned threads;        /* reactors */
  unsigned busy_poll;      /* microseconds a reactor polls before sleeping */
  unsigned shared;         /* -e: most clients at once, 0 = no limit */
  bool persistent;         /* -t */
  bool single;             /* --single: serve single_fd, exit after it */
  int single_fd;
  double handshake_timeout; /* seconds to finish negotiating, 0 = none */
  double idle_timeout;      /* seconds without a request, 0 = none */
};

extern struct server_config server_config;

/* A client finished negotiating: it now counts for -t. */
void server_client_negotiated(void);
/* A connection is gone (from any reactor).  `negotiated` says whether it
 * had counted; the last negotiated one ends a server without -t. */
void server_client_gone(bool negotiated);
/* True once shutdown has begun: new clients are refused. */
bool server_stopping(void);

/* Reactor 0: the main thread, owner of the listeners, the signals and
 * the export list's changes. */
struct nbds_reactor *server_main_reactor(void);

/* Create the reactors (server_config.threads of them). */
bool server_init(bool want_uring);
/* Serve until stopped, then flush and close every export.  Returns false
 * if a final flush failed. */
bool server_run(void);
/* Stop accepting, let every client finish, then return from server_run. */
void server_stop(void);

#endif
