/* Time limits on a connection, one ev_timer each: a client must finish
 * negotiating (TLS included) within --handshake-timeout of connecting, and
 * in transmission may do nothing for at most --idle-timeout.  A client that
 * connects and sends nothing would otherwise hold its -e slot forever.
 * Waiting on the client is not work: a client that stops in the middle of
 * a WRITE payload, or stops reading its replies, is idle, or it would pin
 * that request's buffer (up to 32 MiB) or its replies (up to the in-flight
 * bound) for as long as it likes.
 *
 * The timer is not touched per request: conn_leave() stamps last_active,
 * and when the timer fires it re-arms itself for whatever time is left. */
#include "connection.h"
#include "server.h"

static void
arm(struct conn *c, ev_tstamp after)
{
  ev_timer_set(&c->limit_timer, after, 0);
  ev_timer_start(c->loop, &c->limit_timer);
}

static void
limit_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
  (void) revents;
  struct conn *c = w->data;
  ev_tstamp now = ev_now(loop);
  double idle = server_config.idle_timeout;
  if (c->eof)
    return;  /* already closing */

  if (c->phase == PHASE_HANDSHAKE) {
    /* Armed once at connect: trickling bytes does not extend it. */
    conn_enter(c);
    conn_set_close_reason(c, "handshake timeout", 0);
    conn_kill(c);
    conn_leave(c);
    return;
  }

  if (idle <= 0)
    return;
  if (tx_working(c) > 0) {
    arm(c, idle);  /* the export is busy for it: not idle */
    return;
  }
  ev_tstamp left = c->last_active + idle - now;
  if (left > 0) {
    arm(c, left);
    return;
  }
  /* Killed, not shut down: replies it is not reading are dropped, and a
   * half-received WRITE with them. */
  conn_enter(c);
  conn_set_close_reason(c, "idle timeout", 0);
  conn_kill(c);
  conn_leave(c);
}

void
conn_limits_start(struct conn *c)
{
  double hs = server_config.handshake_timeout;
  c->last_active = ev_now(c->loop);
  ev_init(&c->limit_timer, limit_cb);
  c->limit_timer.data = c;
  if (hs > 0)
    arm(c, hs);
}

void
conn_limits_negotiated(struct conn *c)
{
  ev_timer_stop(c->loop, &c->limit_timer);
  c->last_active = ev_now(c->loop);
  if (server_config.idle_timeout > 0)
    arm(c, server_config.idle_timeout);
}

void
conn_limits_stop(struct conn *c)
{
  ev_timer_stop(c->loop, &c->limit_timer);
}
