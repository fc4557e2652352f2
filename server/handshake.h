/* Fixed newstyle negotiation: from the greeting to GO or EXPORT_NAME. */
#ifndef NBDS_SERVER_HANDSHAKE_H
#define NBDS_SERVER_HANDSHAKE_H

#include <stdbool.h>
#include <stdint.h>

struct conn;

struct handshake {
  bool got_client_flags;
  bool fixed_newstyle;
  bool no_zeroes;
  bool structured;
  /* The last SET_META_CONTEXT: which export it named, what it selected. */
  char *meta_export;
  bool meta_base_allocation;
  bool meta_alloc_depth;
  /* An option whose payload is too large to parse, being drained. */
  uint32_t draining_option;
};

void handshake_start(struct conn *c);
/* Parse whatever complete messages the input buffer holds. */
void handshake_consume(struct conn *c);
void handshake_cleanup(struct conn *c);
/* TLS is up: forget everything negotiated before it, as the spec says. */
void handshake_tls_started(struct conn *c);

#endif
