/* Client networks: --allow for the whole server, and `allow` in a
 * configuration file section for one export. */
#ifndef NBDS_SERVER_ALLOW_H
#define NBDS_SERVER_ALLOW_H

#include <stdbool.h>
#include <sys/socket.h>

struct allow_list;

/* A new, empty list (it permits every client until something is added);
 * NULL when out of memory. */
struct allow_list *allow_list_new(void);
void allow_list_free(struct allow_list *l);
/* Add a comma-separated list of ADDR[/PREFIX] (IPv4 or IPv6).  False,
 * with *bad pointing into a static copy of the bad entry, on a syntax
 * error. */
bool allow_list_add(struct allow_list *l, const char *list, const char **bad);
/* NULL when the comma-separated list is valid; else the bad entry (a
 * static copy), or "" when out of memory. */
const char *allow_list_check(const char *list);
/* True if a client at this address may connect: an empty list, a Unix
 * socket, or an address inside one of the networks. */
bool allow_list_permits(const struct allow_list *l, const struct sockaddr *sa);

/* The server's own list (--allow, [server] allow), checked at accept. */
bool allow_add(const char *list, const char **bad);
/* Forget what was added (the command line's --allow replaces [server]'s). */
void allow_clear(void);
bool allow_permits(const struct sockaddr *sa);

#endif
