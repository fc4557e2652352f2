/* A connection's input buffer: room for one whole message (an option and
 * its payload) up to a limit, and payloads read straight into place or
 * dropped.  Socket reads live in connection.c; this part touches no
 * socket, so tests/fuzz/fuzz-handshake.c runs it as it is. */
#include <stdlib.h>
#include <string.h>

#include "connection.h"

#define IN_BUF_MAX (64 * 1024 + 64)  /* largest option payload we parse */

size_t
conn_in_room(struct conn *c)
{
  if (c->in_start == c->in_end)
    c->in_start = c->in_end = 0;
  else if (c->in_cap - c->in_end < 512 && c->in_start > 0) {
    memmove(c->in, c->in + c->in_start, c->in_end - c->in_start);
    c->in_end -= c->in_start;
    c->in_start = 0;
  }
  return c->in_cap - c->in_end;
}

bool
conn_in_reserve(struct conn *c, size_t n)
{
  if (n > IN_BUF_MAX)
    return false;
  if (c->in_start > 0 && c->in_cap - c->in_start < n) {
    memmove(c->in, c->in + c->in_start, c->in_end - c->in_start);
    c->in_end -= c->in_start;
    c->in_start = 0;
  }
  if (c->in_cap < n) {
    uint8_t *in = realloc(c->in, n);
    if (!in)
      return false;
    c->in = in;
    c->in_cap = n;
  }
  return true;
}

void
conn_read_into(struct conn *c, void *dst, size_t n,
               void (*done)(struct conn *c))
{
  size_t have = conn_in_avail(c);
  size_t take = have < n ? have : n;
  if (dst && take)
    memcpy(dst, conn_in_ptr(c), take);
  conn_in_skip(c, take);
  if (take == n) {
    done(c);
    return;
  }
  c->sink = dst ? (uint8_t *) dst + take : NULL;
  c->sink_left = n - take;
  c->sink_done = done;
}
