/* Request data buffers, recycled per reactor thread.
 *
 * A fresh large buffer costs an mmap, page faults on first touch and an
 * munmap with TLB shootdowns when freed; at 1 MiB requests that is most of
 * the time a request takes.  Buffers come in power-of-two sizes, page
 * aligned (an O_DIRECT layer can use them as they are), and each thread
 * keeps a bounded amount of freed ones for reuse. */
#ifndef NBDS_SERVER_BUFPOOL_H
#define NBDS_SERVER_BUFPOOL_H

#include <stddef.h>

/* A buffer of at least len bytes (len > 0), or NULL; *cap is its size. */
void *bufpool_get(size_t len, size_t *cap);
void bufpool_put(void *buf, size_t cap);

#endif
