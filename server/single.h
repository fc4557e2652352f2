/* --single: serve exactly one client that is already connected on
 * stdin/stdout, as nbdkit -s does (libnbd's nbd_connect_command). */
#ifndef NBDS_SERVER_SINGLE_H
#define NBDS_SERVER_SINGLE_H

/* Check that stdin and stdout are one socket, take it as a non-blocking
 * fd of our own and point stdin and stdout at /dev/null, so nothing the
 * process prints can reach the client.  On failure print one line and
 * return -1. */
int single_client_fd(void);

#endif
