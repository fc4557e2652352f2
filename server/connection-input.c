/* A connection's input buffer: one IN_BUF_SIZE buffer from the reactor's
 * pool while there are bytes to parse (an idle connection holds none),
 * room for one whole message (an option and its payload) up to a limit,
 * and payloads read straight into place or dropped.  Socket reads live in
 * connection.c; this part touches no socket, so
 * tests/fuzz/fuzz-handshake.c runs it as it is. */
#include <stdlib.h>
#include <string.h>

#include "bufpool.h"
#include "connection.h"

#define IN_BUF_MAX (64 * 1024 + 64)  /* largest option payload we parse */

/* Take an input buffer from the pool if the connection has none. */
static bool
in_acquire(struct conn *c)
{
  size_t cap;
  if (!c->in)
    c->in = bufpool_get(IN_BUF_SIZE, &cap);
  return c->in != NULL;
}

/* Move what is left to parse to the front of the buffer. */
static void
in_compact(struct conn *c)
{
  memmove(c->in, c->in + c->in_start, c->in_end - c->in_start);
  c->in_end -= c->in_start;
  c->in_start = 0;
}

bool
conn_in_room(struct conn *c, size_t *room)
{
  if (!in_acquire(c))
    return false;
  if (c->in_start > 0)
    in_compact(c);
  *room = IN_BUF_SIZE - c->in_end;
  return true;
}

void
conn_in_release(struct conn *c)
{
  if (c->in && c->in_start == c->in_end) {
    bufpool_put(c->in, IN_BUF_SIZE);
    c->in = NULL;
    c->in_start = c->in_end = 0;
  }
}

void
conn_in_free(struct conn *c)
{
  if (c->in)
    bufpool_put(c->in, IN_BUF_SIZE);
  c->in = NULL;
  c->in_start = c->in_end = 0;
}

bool
conn_in_reserve(struct conn *c, size_t n)
{
  if (n > IN_BUF_MAX || !in_acquire(c))
    return false;
  if (IN_BUF_SIZE - c->in_start < n)
    in_compact(c);
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
