/* Is a buffer all zero bytes? */
#ifndef NBDS_SERVER_ZERO_H
#define NBDS_SERVER_ZERO_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

/* The classic trick: if the first 16 bytes are zero, comparing the buffer
 * with itself shifted by 16 proves the rest is too, at memcmp speed. */
static inline bool
buffer_is_zero(const void *buf, size_t len)
{
  const unsigned char *p = buf;
  size_t head = len < 16 ? len : 16;
  for (size_t i = 0; i < head; i++)
    if (p[i])
      return false;
  return len <= 16 || memcmp(p, p + 16, len - 16) == 0;
}

#endif
