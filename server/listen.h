/* Listening sockets: a Unix socket or TCP on IPv4 and IPv6. */
#ifndef NBDS_SERVER_LISTEN_H
#define NBDS_SERVER_LISTEN_H

#include <ev.h>

/* Create listeners.  On failure print one line and return -1. */
int listen_unix(const char *path);
int listen_tcp(const char *bind, const char *port);
/* Listen on an inherited listening socket (socket activation); it is not
 * unlinked at exit, its owner made it. */
int listen_adopt(int fd);

/* Watch the listeners on loop; accepted sockets go to on_accept. */
void listen_start(struct ev_loop *loop,
                  void (*on_accept)(int fd, const char *peer));
/* Stop or resume accepting (-e limit; shutdown). */
void listen_pause(void);
void listen_resume(void);
/* Close every listener and remove the Unix socket. */
void listen_close(void);

#endif
