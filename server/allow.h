/* --allow: the client addresses that may connect over TCP. */
#ifndef NBDS_SERVER_ALLOW_H
#define NBDS_SERVER_ALLOW_H

#include <stdbool.h>
#include <sys/socket.h>

/* Add a comma-separated list of ADDR[/PREFIX] (IPv4 or IPv6).  False,
 * with *bad pointing into a static copy of the bad entry, on a syntax
 * error. */
bool allow_add(const char *list, const char **bad);
/* True if a client at this address may connect: no --allow given, a
 * Unix socket, or an address inside one of the networks. */
bool allow_permits(const struct sockaddr *sa);

#endif
