/* TLS with GnuTLS: the server's credentials (X.509 or PSK), the STARTTLS
 * handshake driven by the connection's reactor, and the encrypted
 * send/recv path a connection uses once TLS is up.  Plaintext connections
 * never come here. */
#ifndef NBDS_SERVER_TLS_H
#define NBDS_SERVER_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

struct conn;

/* --tls, as nbdkit spells it: off (STARTTLS refused), on (offered, plain
 * text allowed), require (the spec's FORCEDTLS). */
enum tls_mode { TLS_OFF, TLS_ON, TLS_REQUIRE };

struct tls_config {
  enum tls_mode mode;
  const char *x509_dir;      /* ca-cert.pem, server-cert.pem, server-key.pem */
  const char *psk_file;      /* psktool's "user:hexkey" lines */
  bool verify_peer;          /* require a client certificate from the CA */
  const char *priority;      /* GnuTLS priority string, NULL: default */
};

/* Load the credentials.  Logs and returns false on any error. */
bool tls_init(const struct tls_config *cfg);
enum tls_mode tls_mode(void);

/* Start the TLS handshake on a connection whose STARTTLS ACK is written.
 * On success conn_tls_ready() is called; on failure (or after the
 * handshake timeout) the connection is killed. */
void tls_handshake_start(struct conn *c);

/* The encrypted transport.  Like read(2)/writev(2): -1 with errno EAGAIN
 * when the socket has nothing or is full, another errno when the session
 * is broken; tls_recv returns 0 at the end of the stream. */
ssize_t tls_recv(struct conn *c, void *buf, size_t len);
ssize_t tls_writev(struct conn *c, const struct iovec *iov, int niov);
/* Decrypted bytes held inside GnuTLS (the socket may not be readable). */
bool tls_pending(struct conn *c);

/* Stop the handshake's watchers (the connection is being killed). */
void tls_stop(struct conn *c);
/* Say goodbye (best effort, never blocks) and free the session. */
void tls_free(struct conn *c);

#endif
