/* systemd integration: socket activation (the listening sockets come from
 * systemd, systemd-socket-activate or libnbd) and Type=notify readiness. */
#ifndef NBDS_SERVER_SYSTEMD_H
#define NBDS_SERVER_SYSTEMD_H

/* Adopt the listening sockets passed with LISTEN_PID/LISTEN_FDS (from fd
 * SD_LISTEN_FDS_START on) as listeners, TCP or Unix, and clear those
 * variables.  Returns how many: 0 when the server was not socket-activated,
 * -1 (after printing one line) when a passed fd is not a listening stream
 * socket. */
int systemd_listen(void);

/* Tell the service manager: every listener is listening and every export
 * is open (READY=1), or shutdown has begun (STOPPING=1).  Nothing happens
 * when NOTIFY_SOCKET is unset. */
void systemd_notify_ready(void);
void systemd_notify_stopping(void);

#endif
