/* TLS with GnuTLS.  The credentials are loaded once and shared by every
 * reactor (GnuTLS allows that); each connection that sends STARTTLS gets
 * its own non-blocking session.  The handshake is driven by an ev_io on
 * the connection's socket, following gnutls_record_get_direction(), and
 * bounded by a timer, so a client that stalls mid-handshake holds nothing
 * but its own socket, and only for TLS_HANDSHAKE_TIMEOUT. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <gnutls/gnutls.h>

#include "connection.h"
#include "log.h"
#include "tls.h"

#define TLS_HANDSHAKE_TIMEOUT 30.0  /* seconds */

/* Priorities as QEMU and libnbd use them: GnuTLS's defaults, plus the
 * PSK key exchanges, which NORMAL leaves out. */
#define PRIORITY_DEFAULT "NORMAL"
#define PRIORITY_PSK     ":+ECDHE-PSK:+DHE-PSK:+PSK"

struct tls_session {
  gnutls_session_t s;
  struct conn *c;
  ev_io io;                  /* the socket, while handshaking */
  ev_timer timer;            /* the handshake's time limit */
  bool established;
};

static enum tls_mode mode;
static bool verify_peer;
static gnutls_certificate_credentials_t x509_creds;
static gnutls_psk_server_credentials_t psk_creds;
static gnutls_priority_t priority;

enum tls_mode
tls_mode(void)
{
  return mode;
}

static bool
file_exists(const char *path)
{
  return access(path, F_OK) == 0;
}

static bool
gnutls_ok(int r, const char *what, const char *path)
{
  if (r >= 0)
    return true;
  nbds_log_error("TLS: %s '%s': %s", what, path, gnutls_strerror(r));
  return false;
}

static bool
load_dh_params(const char *path)
{
  gnutls_datum_t pem;
  static gnutls_dh_params_t dh;  /* the credentials may refer to it */
  int r = gnutls_load_file(path, &pem);
  if (!gnutls_ok(r, "cannot read", path))
    return false;
  r = gnutls_dh_params_init(&dh);
  if (r >= 0) {
    r = gnutls_dh_params_import_pkcs3(dh, &pem, GNUTLS_X509_FMT_PEM);
    if (r >= 0)
      gnutls_certificate_set_dh_params(x509_creds, dh);
    else
      gnutls_dh_params_deinit(dh);
  }
  gnutls_free(pem.data);
  return gnutls_ok(r, "bad Diffie-Hellman parameters in", path);
}

/* QEMU's tls-creds-x509 directory layout. */
static bool
load_x509(const char *dir)
{
  char ca[4096], crl[4096], cert[4096], key[4096], dh[4096];
  snprintf(ca, sizeof ca, "%s/ca-cert.pem", dir);
  snprintf(crl, sizeof crl, "%s/ca-crl.pem", dir);
  snprintf(cert, sizeof cert, "%s/server-cert.pem", dir);
  snprintf(key, sizeof key, "%s/server-key.pem", dir);
  snprintf(dh, sizeof dh, "%s/dh-params.pem", dir);

  int r = gnutls_certificate_allocate_credentials(&x509_creds);
  if (!gnutls_ok(r, "cannot set up certificates for", dir))
    return false;
  if (file_exists(ca)) {
    r = gnutls_certificate_set_x509_trust_file(x509_creds, ca,
                                               GNUTLS_X509_FMT_PEM);
    if (!gnutls_ok(r, "bad CA certificate", ca))
      return false;
  } else if (verify_peer) {
    nbds_log_error("TLS: verifying clients needs the CA certificate '%s'",
                   ca);
    return false;
  }
  if (file_exists(crl)) {
    r = gnutls_certificate_set_x509_crl_file(x509_creds, crl,
                                             GNUTLS_X509_FMT_PEM);
    if (!gnutls_ok(r, "bad certificate revocation list", crl))
      return false;
  }
  r = gnutls_certificate_set_x509_key_file(x509_creds, cert, key,
                                           GNUTLS_X509_FMT_PEM);
  if (!gnutls_ok(r, "cannot load the server certificate and key", cert))
    return false;
  if (file_exists(dh))
    return load_dh_params(dh);
  gnutls_certificate_set_known_dh_params(x509_creds, GNUTLS_SEC_PARAM_MEDIUM);
  return true;
}

static bool
load_psk(const char *file)
{
  int r = gnutls_psk_allocate_server_credentials(&psk_creds);
  if (!gnutls_ok(r, "cannot set up PSK for", file))
    return false;
  /* GnuTLS reads the file at each handshake: check it now. */
  FILE *f = fopen(file, "r");
  if (!f) {
    nbds_log_error("TLS: cannot read PSK file '%s': %s", file,
                   strerror(errno));
    return false;
  }
  fclose(f);
  r = gnutls_psk_set_server_credentials_file(psk_creds, file);
  if (!gnutls_ok(r, "bad PSK file", file))
    return false;
  gnutls_psk_set_server_known_dh_params(psk_creds, GNUTLS_SEC_PARAM_MEDIUM);
  return true;
}

bool
tls_init(const struct tls_config *cfg)
{
  mode = cfg->mode;
  verify_peer = cfg->verify_peer;
  if (mode == TLS_OFF)
    return true;
  if (cfg->x509_dir ? !load_x509(cfg->x509_dir) : !load_psk(cfg->psk_file))
    return false;

  char prio[1024];
  snprintf(prio, sizeof prio, "%s%s",
           cfg->priority ? cfg->priority : PRIORITY_DEFAULT,
           cfg->psk_file ? PRIORITY_PSK : "");
  const char *err_pos;
  int r = gnutls_priority_init(&priority, prio, &err_pos);
  if (r < 0) {
    nbds_log_error("TLS: bad priority string '%s' at '%s': %s", prio,
                   r == GNUTLS_E_INVALID_REQUEST ? err_pos : "",
                   gnutls_strerror(r));
    return false;
  }
  return true;
}

void
tls_stop(struct conn *c)
{
  struct tls_session *t = c->tls;
  if (!t)
    return;
  ev_io_stop(c->loop, &t->io);
  ev_timer_stop(c->loop, &t->timer);
}

void
tls_free(struct conn *c)
{
  struct tls_session *t = c->tls;
  if (!t)
    return;
  tls_stop(c);
  if (t->established && !c->dead)
    gnutls_bye(t->s, GNUTLS_SHUT_WR);  /* non-blocking: best effort */
  gnutls_deinit(t->s);
  free(t);
  c->tls = NULL;
}

static void
handshake_step(struct tls_session *t)
{
  struct conn *c = t->c;
  int r = gnutls_handshake(t->s);
  /* Non-fatal results (a warning alert, EINTR) just mean "call again". */
  for (int i = 0; i < 16 && r < 0 && r != GNUTLS_E_AGAIN &&
                  !gnutls_error_is_fatal(r); i++)
    r = gnutls_handshake(t->s);

  if (r == GNUTLS_E_AGAIN) {
    /* Wait for the socket in whichever direction GnuTLS is stuck. */
    int events = gnutls_record_get_direction(t->s) ? EV_WRITE : EV_READ;
    if (!ev_is_active(&t->io) || t->io.events != events) {
      ev_io_stop(c->loop, &t->io);
      ev_io_set(&t->io, c->fd, events);
      ev_io_start(c->loop, &t->io);
    }
    return;
  }
  tls_stop(c);
  if (r < 0) {
    nbds_log_error("%s: TLS handshake failed: %s", c->peer,
                   gnutls_strerror(r));
    conn_kill(c);
    return;
  }
  t->established = true;
  char *desc = gnutls_session_get_desc(t->s);
  nbds_log_debug("%s: TLS established: %s", c->peer, desc ? desc : "");
  gnutls_free(desc);
  conn_tls_ready(c);
}

static void
handshake_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
  (void) loop;
  (void) revents;
  struct tls_session *t = w->data;
  conn_enter(t->c);
  handshake_step(t);
  conn_leave(t->c);
}

static void
handshake_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
  (void) loop;
  (void) revents;
  struct tls_session *t = w->data;
  struct conn *c = t->c;
  conn_enter(c);
  nbds_log_error("%s: TLS handshake timed out", c->peer);
  conn_kill(c);
  conn_leave(c);
}

void
tls_handshake_start(struct conn *c)
{
  struct tls_session *t = calloc(1, sizeof *t);
  if (!t) {
    conn_kill(c);
    return;
  }
  int r = gnutls_init(&t->s, GNUTLS_SERVER | GNUTLS_NONBLOCK |
                             GNUTLS_NO_SIGNAL);
  if (r < 0) {
    nbds_log_error("%s: gnutls_init: %s", c->peer, gnutls_strerror(r));
    free(t);
    conn_kill(c);
    return;
  }
  t->c = c;
  c->tls = t;
  r = gnutls_priority_set(t->s, priority);
  if (r >= 0 && x509_creds) {
    r = gnutls_credentials_set(t->s, GNUTLS_CRD_CERTIFICATE, x509_creds);
    if (verify_peer) {
      /* No certificate, or one the CA did not sign: the handshake fails. */
      gnutls_certificate_server_set_request(t->s, GNUTLS_CERT_REQUIRE);
      gnutls_session_set_verify_cert(t->s, NULL, 0);
    }
  }
  if (r >= 0 && psk_creds)
    r = gnutls_credentials_set(t->s, GNUTLS_CRD_PSK, psk_creds);
  if (r < 0) {
    nbds_log_error("%s: TLS session setup: %s", c->peer, gnutls_strerror(r));
    conn_kill(c);
    return;
  }
  gnutls_transport_set_int(t->s, c->fd);

  ev_io_init(&t->io, handshake_io_cb, c->fd, EV_READ);
  ev_timer_init(&t->timer, handshake_timeout_cb, TLS_HANDSHAKE_TIMEOUT, 0);
  t->io.data = t->timer.data = t;
  ev_timer_start(c->loop, &t->timer);
  handshake_step(t);
}

ssize_t
tls_recv(struct conn *c, void *buf, size_t len)
{
  ssize_t r = gnutls_record_recv(c->tls->s, buf, len);
  if (r >= 0)
    return r;
  if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
    errno = EAGAIN;
  else if (r == GNUTLS_E_PREMATURE_TERMINATION)
    errno = ECONNRESET;  /* gone without a TLS goodbye: not worth a word */
  else {
    nbds_log_debug("%s: TLS receive: %s", c->peer, gnutls_strerror(r));
    errno = EIO;
  }
  return -1;
}

/* One gnutls_record_send per piece (GnuTLS splits large ones into
 * records), so data is encrypted straight from the buffer the reply
 * points at.  After GNUTLS_E_AGAIN GnuTLS wants the same piece again; the
 * caller's queue does exactly that, as it only advances past bytes we
 * report as sent. */
ssize_t
tls_writev(struct conn *c, const struct iovec *iov, int niov)
{
  ssize_t total = 0;
  for (int i = 0; i < niov; i++) {
    size_t off = 0;
    while (off < iov[i].iov_len) {
      ssize_t r = gnutls_record_send(c->tls->s,
                                     (const char *) iov[i].iov_base + off,
                                     iov[i].iov_len - off);
      if (r < 0) {
        if (total > 0)
          return total;
        if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
          errno = EAGAIN;
        else {
          nbds_log_debug("%s: TLS send: %s", c->peer, gnutls_strerror(r));
          errno = EIO;
        }
        return -1;
      }
      off += r;
      total += r;
    }
  }
  return total;
}

bool
tls_pending(struct conn *c)
{
  return gnutls_record_check_pending(c->tls->s) > 0;
}
