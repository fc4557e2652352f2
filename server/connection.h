/* A client connection: a non-blocking socket on one reactor, an input
 * buffer the protocol phases parse from, and a queue of replies that are
 * written out together after each callback that queues them. */
#ifndef NBDS_SERVER_CONNECTION_H
#define NBDS_SERVER_CONNECTION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <ev.h>

#include "handshake.h"
#include "transmission.h"

struct conn;
struct tls_session;

/* Something to send: iov[cur..niov) is still to go.  sent() runs once the
 * last byte is written, or when the connection dies with it queued. */
struct outmsg {
  struct outmsg *next;
  struct iovec *iov;
  int niov;
  int cur;
  void (*sent)(struct outmsg *m);
};

enum conn_phase { PHASE_HANDSHAKE, PHASE_TRANSMISSION };

struct conn {
  int fd;
  struct nbds_reactor *reactor;
  struct ev_loop *loop;
  ev_io read_watcher;
  ev_io write_watcher;
  ev_prepare flush_watcher;   /* never started, only fed: see conn_send */
  /* The handshake deadline, then the idle timeout (connection-limits.c). */
  ev_timer limit_timer;
  ev_tstamp last_active;      /* the last callback: for the idle timeout */
  char peer[80];

  uint8_t *in;                /* bytes read, not yet parsed: in[start..end);
                                 NULL while there are none */
  size_t in_start, in_end;
  /* While set, socket bytes go straight to sink (a WRITE payload) or are
   * dropped (sink NULL), and sink_done runs when sink_left reaches 0. */
  uint8_t *sink;
  size_t sink_left;
  void (*sink_done)(struct conn *c);
  bool large_payloads;        /* the last payload was read straight in */

  struct outmsg *out_head, **out_tail;
  size_t out_bytes;

  enum conn_phase phase;
  bool reading_paused;
  bool eof;                   /* no more input: drain and close */
  bool dead;                  /* socket closed; waiting for requests */
  bool counted;               /* counted as a negotiated client */
  unsigned busy;              /* callbacks on the stack: do not free */
  const char *close_reason;   /* for the log line at close; first one wins */
  int close_errno;

  struct handshake hs;
  struct tx tx;

  /* TLS: set once STARTTLS is accepted; NULL means plain text.  While
   * starttls is set, input waits for the ACK to go out and the TLS
   * handshake to finish. */
  struct tls_session *tls;
  bool starttls;
};

/* Take over an accepted socket on the calling reactor. */
void conn_start(int fd, const char *peer);

/* Input.  The phase's consume function is called whenever new bytes are
 * in the buffer and not all of them have been parsed. */
static inline size_t conn_in_avail(const struct conn *c)
{ return c->in_end - c->in_start; }
static inline const uint8_t *conn_in_ptr(const struct conn *c)
{ return c->in + c->in_start; }
static inline void conn_in_skip(struct conn *c, size_t n)
{ c->in_start += n; }
#define IN_BUF_SIZE (128 * 1024)  /* the input buffer, from the pool */
/* Take the input buffer if the connection has none, move the unparsed
 * bytes to its front, and say how much the next read may add.  False when
 * out of memory. */
bool conn_in_room(struct conn *c, size_t *room);
/* Give the input buffer back to the pool once all of it is parsed. */
void conn_in_release(struct conn *c);
/* Give it back whatever it holds (the connection is closing). */
void conn_in_free(struct conn *c);
/* Make room for a message of n bytes in the input buffer.  False if n is
 * above the buffer's limit (or out of memory). */
bool conn_in_reserve(struct conn *c, size_t n);
/* Read n bytes into dst (or drop them if dst is NULL), first from the
 * buffer, then straight from the socket; done runs when they are all in. */
void conn_read_into(struct conn *c, void *dst, size_t n,
                    void (*done)(struct conn *c));
/* Back-pressure: stop reading requests; reading resumes in conn_leave()
 * once tx_can_read_more() says so. */
void conn_pause_reading(struct conn *c);

/* STARTTLS was accepted and its ACK queued: once the ACK is written, run
 * the TLS handshake; input stops until then. */
void conn_starttls(struct conn *c);
/* The TLS handshake succeeded: negotiation continues, encrypted. */
void conn_tls_ready(struct conn *c);

/* Output. */
void conn_send(struct conn *c, struct outmsg *m);
/* Queue a copy of bytes (handshake replies). */
void conn_send_copy(struct conn *c, const void *bytes, size_t len);

/* Every callback into a connection (socket ready, request complete) is
 * bracketed by enter/leave; the connection is freed, once closed, only
 * when the outermost leave finds nothing left in flight.  Leave is also
 * where reading resumes after back-pressure. */
static inline void conn_enter(struct conn *c) { c->busy++; }
void conn_leave(struct conn *c);

/* Stop reading; close once every queued reply is written and every
 * request has finished. */
void conn_shutdown(struct conn *c);
/* Drop the connection now (protocol violation); requests in flight still
 * finish before the connection is freed. */
void conn_kill(struct conn *c);

/* Say why the connection is ending, for the log line at close (the first
 * reason given is kept).  err: an errno value, or 0. */
static inline void conn_set_close_reason(struct conn *c, const char *why,
                                         int err)
{
  if (!c->close_reason) {
    c->close_reason = why;
    c->close_errno = err;
  }
}

/* Handshake and idle time limits (connection-limits.c). */
void conn_limits_start(struct conn *c);
/* Negotiation is over: the idle timeout, if any, starts now. */
void conn_limits_negotiated(struct conn *c);
void conn_limits_stop(struct conn *c);

/* Ask every connection on the calling reactor to finish and close. */
void conn_shutdown_all(void *unused);

#endif
