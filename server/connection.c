/* Connection transport: buffered non-blocking reads, payloads read straight
 * into request buffers, and the replies each callback queues gathered into
 * one writev.
 *
 * One read takes as much as the socket holds, up to IN_BUF_SIZE: about
 * 30 pending 4 KiB WRITEs with their payloads, where a buffer the size of
 * one request needed three reads per WRITE.  Small payloads are then
 * copied out of the buffer (a memcpy costs less than a syscall); the rest
 * of a large one is read straight into place, and after a large payload
 * the next read takes only 4 KiB, so that a stream of 1 MiB WRITEs is not
 * copied twice.  The buffer comes from the reactor's pool and goes back
 * whenever all of it is parsed, so an idle connection holds none. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "connection.h"
#include "export.h"
#include "log.h"
#include "reactor.h"
#include "server.h"
#include "tls.h"

#define SINK_DIRECT_MIN (64 * 1024)  /* a payload rest read straight in */
#define AFTER_LARGE_READ 4096        /* the read after a large payload */
#define WRITEV_MAX      64

/* The connections on this reactor, for shutdown. */
struct conn_link {
  struct conn *c;
  struct conn_link *prev, *next;
};
static __thread struct conn_link *conns;

static void read_cb(struct ev_loop *loop, ev_io *w, int revents);
static void conn_maybe_free(struct conn *c);
static void conn_resume_reading(struct conn *c);
static void write_cb(struct ev_loop *loop, ev_io *w, int revents);
static void flush_cb(struct ev_loop *loop, ev_prepare *w, int revents);

void
conn_start(int fd, const char *peer)
{
  struct conn *c = calloc(1, sizeof *c + sizeof(struct conn_link));
  if (!c) {
    nbds_log_error("out of memory accepting a client");
    close(fd);
    server_client_gone(false);
    return;
  }
  c->fd = fd;
  c->reactor = nbds_reactor_self();
  c->loop = nbds_reactor_loop(c->reactor);
  snprintf(c->peer, sizeof c->peer, "%s", peer);
  c->out_tail = &c->out_head;

  struct conn_link *link = (struct conn_link *) (c + 1);
  link->c = c;
  link->next = conns;
  if (conns)
    conns->prev = link;
  conns = link;

  ev_io_init(&c->read_watcher, read_cb, fd, EV_READ);
  ev_io_init(&c->write_watcher, write_cb, fd, EV_WRITE);
  ev_prepare_init(&c->flush_watcher, flush_cb);
  c->read_watcher.data = c->write_watcher.data = c->flush_watcher.data = c;
  ev_io_start(c->loop, &c->read_watcher);
  conn_limits_start(c);
  nbds_log_debug("%s: connected", c->peer);
  conn_enter(c);
  handshake_start(c);
  conn_leave(c);
}

void
conn_leave(struct conn *c)
{
  c->last_active = ev_now(c->loop);  /* for the idle timeout */
  if (c->busy == 1 && c->reading_paused && tx_can_read_more(c))
    conn_resume_reading(c);
  if (--c->busy == 0)
    conn_maybe_free(c);
}

static void
consume(struct conn *c)
{
  if (c->phase == PHASE_HANDSHAKE)
    handshake_consume(c);
  else
    tx_consume(c);
}

void
conn_pause_reading(struct conn *c)
{
  if (!c->reading_paused) {
    c->reading_paused = true;
    ev_io_stop(c->loop, &c->read_watcher);
  }
}

/* Bytes GnuTLS has already decrypted do not make the socket readable:
 * wake the read watcher for them. */
static void
conn_read_tls_pending(struct conn *c)
{
  if (c->tls && !c->reading_paused && !c->eof && tls_pending(c))
    ev_feed_event(c->loop, &c->read_watcher, EV_READ);
}

static void
conn_resume_reading(struct conn *c)
{
  if (!c->reading_paused || c->eof || c->dead || c->starttls)
    return;
  c->reading_paused = false;
  ev_io_start(c->loop, &c->read_watcher);
  /* Requests already buffered were not parsed while paused. */
  if (!c->sink_left && conn_in_avail(c))
    consume(c);
  conn_read_tls_pending(c);
}

/* A payload is all in: hand over, then parse what follows it. */
static void
sink_finish(struct conn *c)
{
  c->sink = NULL;
  c->sink_done(c);
  if (!c->sink_left && conn_in_avail(c) && !c->reading_paused)
    consume(c);
}

/* Bytes just read into the buffer go first to the payload being received,
 * then to the phase's parser. */
static void
in_feed(struct conn *c)
{
  if (c->sink_left) {
    size_t have = conn_in_avail(c);
    size_t take = have < c->sink_left ? have : c->sink_left;
    if (c->sink) {
      memcpy(c->sink, conn_in_ptr(c), take);
      c->sink += take;
    }
    conn_in_skip(c, take);
    c->sink_left -= take;
    if (!c->sink_left)
      sink_finish(c);
  } else
    consume(c);
}

/* READ_DRAINED: fewer bytes than asked for, so the socket is empty and
 * another read would only say EAGAIN. */
enum read_result { READ_MORE, READ_DRAINED, READ_AGAIN, READ_CLOSED };

static enum read_result
read_some(struct conn *c)
{
  ssize_t n;
  size_t want;
  if (c->sink && c->sink_left >= SINK_DIRECT_MIN) {
    c->large_payloads = true;
    want = c->sink_left;
    n = c->tls ? tls_recv(c, c->sink, want) : read(c->fd, c->sink, want);
    if (n > 0) {
      c->sink_left -= n;
      c->sink += n;
      if (c->sink_left == 0)
        sink_finish(c);
    }
  } else {
    if (!conn_in_room(c, &want)) {
      conn_set_close_reason(c, "out of memory", ENOMEM);
      return READ_CLOSED;
    }
    /* After a large payload another one is likely: read little, so that
     * its payload is not read into the buffer only to be copied out. */
    if (c->large_payloads && want > AFTER_LARGE_READ)
      want = AFTER_LARGE_READ;
    n = c->tls ? tls_recv(c, c->in + c->in_end, want)
               : read(c->fd, c->in + c->in_end, want);
    if (n > 0) {
      c->in_end += n;
      in_feed(c);
      c->large_payloads = c->sink && c->sink_left >= SINK_DIRECT_MIN;
    }
  }
  if (n > 0)
    return (size_t) n < want && !c->tls ? READ_DRAINED : READ_MORE;
  if (n == -1 && (errno == EAGAIN || errno == EINTR))
    return READ_AGAIN;
  if (n == 0 || errno == ECONNRESET)
    conn_set_close_reason(c, "the client closed the connection", 0);
  else
    conn_set_close_reason(c, "read error", errno);
  return READ_CLOSED;
}

static void
read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
  (void) loop;
  (void) revents;
  struct conn *c = w->data;
  conn_enter(c);
  /* A bounded number of reads per wake-up keeps one busy client from
   * starving the others on this reactor. */
  for (int i = 0; i < 16 && !c->reading_paused && !c->eof; i++) {
    enum read_result r = read_some(c);
    if (r == READ_AGAIN || r == READ_DRAINED)
      break;
    if (r == READ_CLOSED) {
      conn_shutdown(c);  /* the client is gone: finish what it sent */
      break;
    }
  }
  conn_read_tls_pending(c);
  conn_in_release(c);
  conn_leave(c);
}

static void
outmsg_done(struct conn *c, struct outmsg *m)
{
  c->out_head = m->next;
  if (!c->out_head)
    c->out_tail = &c->out_head;
  m->sent(m);
}

/* Write as much of the queue as the socket takes.  Returns false if the
 * socket is broken. */
static bool
write_out(struct conn *c)
{
  while (c->out_head) {
    struct iovec iov[WRITEV_MAX];
    int n = 0;
    for (struct outmsg *m = c->out_head; m && n < WRITEV_MAX; m = m->next)
      for (int i = m->cur; i < m->niov && n < WRITEV_MAX; i++)
        if (m->iov[i].iov_len)
          iov[n++] = m->iov[i];
    if (n == 0) {
      /* Messages of nothing but empty iovecs. */
      outmsg_done(c, c->out_head);
      continue;
    }
    ssize_t w = c->tls ? tls_writev(c, iov, n) : writev(c->fd, iov, n);
    if (w == -1) {
      if (errno == EAGAIN || errno == EINTR)
        return true;
      if (errno == EPIPE || errno == ECONNRESET)
        conn_set_close_reason(c, "the client closed the connection", 0);
      else
        conn_set_close_reason(c, "write error", errno);
      return false;
    }
    size_t left = w;
    while (c->out_head) {
      struct outmsg *m = c->out_head;
      while (m->cur < m->niov && m->iov[m->cur].iov_len <= left) {
        left -= m->iov[m->cur].iov_len;
        m->iov[m->cur].iov_len = 0;
        m->cur++;
      }
      if (m->cur < m->niov) {
        m->iov[m->cur].iov_base = (uint8_t *) m->iov[m->cur].iov_base + left;
        m->iov[m->cur].iov_len -= left;
        left = 0;
        break;
      }
      outmsg_done(c, m);
    }
  }
  return true;
}

static void
drop_output(struct conn *c)
{
  while (c->out_head)
    outmsg_done(c, c->out_head);
}

static void
after_write(struct conn *c, bool ok)
{
  if (!ok)
    conn_kill(c);
  else if (c->out_head) {
    if (!ev_is_active(&c->write_watcher))
      ev_io_start(c->loop, &c->write_watcher);
  } else {
    ev_io_stop(c->loop, &c->write_watcher);
    if (c->starttls && !c->tls) {
      /* The STARTTLS ACK is out.  The client must wait for it before its
       * ClientHello, so any byte already read is a protocol violation. */
      if (conn_in_avail(c)) {
        nbds_log_debug("%s: data after STARTTLS", c->peer);
        conn_kill(c);
      } else
        tls_handshake_start(c);
    }
  }
}

static void
write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
  (void) loop;
  (void) revents;
  struct conn *c = w->data;
  conn_enter(c);
  after_write(c, write_out(c));
  conn_leave(c);
}

static void
flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
  (void) loop;
  (void) revents;
  struct conn *c = w->data;
  if (ev_is_active(&c->write_watcher))
    return;  /* the socket was full: wait for it */
  conn_enter(c);
  after_write(c, write_out(c));
  conn_leave(c);
}

void
conn_starttls(struct conn *c)
{
  c->starttls = true;
  conn_pause_reading(c);
}

void
conn_tls_ready(struct conn *c)
{
  c->starttls = false;
  handshake_tls_started(c);
  conn_resume_reading(c);
}

void
conn_send(struct conn *c, struct outmsg *m)
{
  if (c->dead) {
    m->sent(m);
    return;
  }
  m->next = NULL;
  *c->out_tail = m;
  c->out_tail = &m->next;
  /* Fed, not started: libev runs it right after the callback that is
   * queueing replies (a completion reaped while the reactor submits, too),
   * once however many it queues, and before the loop sleeps. */
  if (!ev_is_pending(&c->flush_watcher) && !ev_is_active(&c->write_watcher))
    ev_feed_event(c->loop, &c->flush_watcher, EV_CUSTOM);
}

struct copymsg {
  struct outmsg m;
  struct iovec iov;
  uint8_t bytes[];
};

static void
copymsg_sent(struct outmsg *m)
{
  free(m);
}

void
conn_send_copy(struct conn *c, const void *bytes, size_t len)
{
  struct copymsg *cm = malloc(sizeof *cm + len);
  if (!cm) {
    conn_kill(c);
    return;
  }
  memcpy(cm->bytes, bytes, len);
  cm->iov.iov_base = cm->bytes;
  cm->iov.iov_len = len;
  cm->m.iov = &cm->iov;
  cm->m.niov = 1;
  cm->m.cur = 0;
  cm->m.sent = copymsg_sent;
  conn_send(c, &cm->m);
}

void
conn_shutdown(struct conn *c)
{
  c->eof = true;
  c->sink_left = 0;
  ev_io_stop(c->loop, &c->read_watcher);
  tx_input_closed(c);
}

void
conn_kill(struct conn *c)
{
  if (c->dead)
    return;
  c->dead = true;
  c->eof = true;
  ev_io_stop(c->loop, &c->read_watcher);
  ev_io_stop(c->loop, &c->write_watcher);
  ev_prepare_stop(c->loop, &c->flush_watcher);
  conn_limits_stop(c);
  tls_stop(c);
  drop_output(c);
  c->sink_left = 0;
  tx_input_closed(c);
  shutdown(c->fd, SHUT_RDWR);
}

/* The connection's one log line at close (its open line is at the start
 * of the transmission phase, once the export is known). */
static void
log_close(struct conn *c)
{
  const char *why = c->close_reason ? c->close_reason : "ended";
  const char *when = c->phase == PHASE_HANDSHAKE ? " during the handshake"
                                                 : "";
  char export[NBD_MAX_STRING + 16] = "";
  if (c->tx.exp)
    snprintf(export, sizeof export, " (export '%s')", c->tx.exp->name);
  nbds_log_info("%s: connection closed%s: %s%s%s%s", c->peer, export, why,
                when, c->close_errno ? ": " : "",
                c->close_errno ? strerror(c->close_errno) : "");
}

static void
conn_maybe_free(struct conn *c)
{
  if (!c->eof || c->busy)
    return;
  if (c->tx.inflight > 0)
    return;  /* replies still to come; they free it */
  if (c->out_head && !c->dead)
    return;  /* replies still being written */

  ev_io_stop(c->loop, &c->read_watcher);
  ev_io_stop(c->loop, &c->write_watcher);
  ev_prepare_stop(c->loop, &c->flush_watcher);
  conn_limits_stop(c);
  drop_output(c);
  tls_free(c);
  close(c->fd);
  log_close(c);
  handshake_cleanup(c);
  tx_cleanup(c);

  struct conn_link *link = (struct conn_link *) (c + 1);
  if (link->prev)
    link->prev->next = link->next;
  else
    conns = link->next;
  if (link->next)
    link->next->prev = link->prev;

  bool counted = c->counted;
  conn_in_free(c);
  free(c);
  server_client_gone(counted);
}

void
conn_shutdown_all(void *unused)
{
  (void) unused;
  struct conn_link *l = conns;
  while (l) {
    struct conn_link *next = l->next;
    struct conn *c = l->c;
    conn_enter(c);
    conn_set_close_reason(c, "the server is shutting down", 0);
    if (c->phase == PHASE_HANDSHAKE)
      conn_kill(c);    /* nothing of value in flight */
    else
      conn_shutdown(c);
    conn_leave(c);
    l = next;
  }
}
