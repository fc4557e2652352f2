/* libFuzzer target: the option loop of server/handshake.c, the whole
 * negotiation from the client flags to GO or EXPORT_NAME.
 *
 * The real handshake.c, protocol.c and connection-input.c (the input
 * buffer and payload draining) run on a real struct conn; this file stands
 * in for the socket side of connection.c: it appends the client's bytes to
 * the input buffer in chunks, as read_some() does, drains payloads through
 * sink_left, and after a STARTTLS ACK does what after_write() does (bytes
 * already buffered kill the connection, else TLS is "up" and negotiation
 * starts over).  Exports and the TLS mode are a fixed table and a control
 * byte.
 *
 * Input: byte 0 is the configuration (bits 0-1: --tls off/on/require,
 * or 3: on, with export "disk" TLS-only and "" for no client here, as a
 * configuration file's tls = require and allow make them; bit 2: -A, allocation depth offered; bits 4-7: the read size, from 1
 * byte to everything at once); the rest is what the client sends after
 * the greeting: its flags, then options.
 *
 * Oracles besides the sanitizers: the greeting comes first; every option
 * reply is well formed (magic, a known type, the option it answers, a
 * final ACK or error closing each option, no more finals than options);
 * nothing is sent once transmission starts; with --tls=require nothing
 * but STARTTLS, ABORT and errors is answered, and transmission never
 * starts, before TLS; nor on a TLS-only export; a meta context is only
 * ever selected with structured replies; every reference to an export
 * the handshake took is given back, but the one transmission keeps. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allow.h"
#include "connection.h"
#include "export.h"
#include "log.h"
#include "protocol.h"
#include "tls.h"

#define REQUIRE(cond)                                                    \
  do {                                                                   \
    if (!(cond)) {                                                       \
      fprintf(stderr, "fuzz-handshake: %s:%d: %s\n", __FILE__, __LINE__, \
              #cond);                                                    \
      abort();                                                           \
    }                                                                    \
  } while (0)

/* ---- what the server links against, here ------------------------------ */

struct export *exports;
static struct nbds_layer layers[2];
static struct export table[2];
static enum tls_mode mode;
static struct tls_session *tls_up = (struct tls_session *) &mode;
static struct allow_list *allow;

/* What the server said, for the oracles. */
static struct {
  bool greeted;
  bool transmission;
  uint64_t options_seen;      /* complete option headers fed */
  uint64_t finals;            /* ACK or error replies */
  bool open_option;           /* replies for it so far, no final yet */
  uint32_t option;
} seen;

enum tls_mode
tls_mode(void)
{
  return mode;
}

void
exports_lock(void)
{
}

void
exports_unlock(void)
{
}

/* As export.c's, counting the references the handshake takes, for the
 * oracle that it gives back every one but the one transmission keeps. */
struct export *
export_get(const uint8_t *name, size_t len)
{
  for (struct export *e = exports; e; e = e->next)
    if (e->offered && strlen(e->name) == len &&
        memcmp(e->name, name, len) == 0) {
      atomic_fetch_add(&e->refs, 1);
      return e;
    }
  return NULL;
}

void
export_put(struct export *e)
{
  REQUIRE(atomic_load(&e->refs) > 0);
  atomic_fetch_sub(&e->refs, 1);
}

uint16_t
export_flags(const struct export *e, bool structured)
{
  uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH;
  if (e->readonly)
    f |= NBD_FLAG_READ_ONLY;
  if (structured)
    f |= NBD_FLAG_SEND_DF;
  return f;
}

static bool
known_reply(uint32_t type)
{
  return (type >= NBD_REP_ACK && type <= NBD_REP_META_CONTEXT) ||
         (type >= NBD_REP_ERR_UNSUP && type <= NBD_REP_ERR_TOO_BIG);
}

void
conn_send_copy(struct conn *c, const void *bytes, size_t len)
{
  const uint8_t *p = bytes;
  REQUIRE(!seen.transmission);
  if (!seen.greeted) {
    REQUIRE(len == 18 && get_be64(p) == NBD_MAGIC);
    seen.greeted = true;
    return;
  }
  if (len == 10 || len == 134) {
    /* EXPORT_NAME's reply: transmission starts right after it. */
    REQUIRE(!seen.open_option);
    return;
  }
  REQUIRE(len >= 20 && get_be64(p) == NBD_REP_MAGIC);
  uint32_t opt = get_be32(p + 8), type = get_be32(p + 12);
  REQUIRE(get_be32(p + 16) == len - 20);
  REQUIRE(known_reply(type));
  if (seen.open_option)
    REQUIRE(opt == seen.option);
  seen.option = opt;
  if (type == NBD_REP_INFO)
    REQUIRE(len >= 22);
  if (mode == TLS_REQUIRE && !c->tls)
    REQUIRE((type & NBD_REP_ERR(0)) || opt == NBD_OPT_STARTTLS ||
            opt == NBD_OPT_ABORT);
  if (type == NBD_REP_ACK || (type & NBD_REP_ERR(0))) {
    seen.finals++;
    REQUIRE(seen.finals <= seen.options_seen);
    seen.open_option = false;
  } else
    seen.open_option = true;
}

void
conn_kill(struct conn *c)
{
  c->dead = c->eof = true;
  c->sink_left = 0;
}

void
conn_shutdown(struct conn *c)
{
  c->eof = true;
  c->sink_left = 0;
}

void
conn_starttls(struct conn *c)
{
  c->starttls = true;
}

void
tx_start(struct conn *c, struct export *e, bool structured,
         bool base_allocation, bool alloc_depth)
{
  REQUIRE(e == &table[0] || e == &table[1]);
  REQUIRE(!(mode == TLS_REQUIRE && !c->tls));
  REQUIRE(!(e->tls_required && !c->tls));
  REQUIRE(!e->allow);  /* the fuzzer's connection has no address */
  REQUIRE(structured || !(base_allocation || alloc_depth));
  REQUIRE(!alloc_depth || e->alloc_depth);
  c->phase = PHASE_TRANSMISSION;
  seen.transmission = true;
}

void
tx_consume(struct conn *c)
{
  (void) c;
}

/* ---- the socket side of connection.c ---------------------------------- */

/* Count the complete option headers the server is about to parse, so that
 * "no more finals than options" means something. */
static void
count_headers(const uint8_t *client, size_t n, size_t *at)
{
  while (*at + 16 <= n) {
    seen.options_seen++;
    *at += 16 + (size_t) get_be32(client + *at + 12);
  }
}

static void
consume(struct conn *c)
{
  if (c->phase == PHASE_HANDSHAKE)
    handshake_consume(c);
}

static void
feed(struct conn *c, const uint8_t *p, size_t n, size_t chunk)
{
  while (n > 0 && !c->eof && c->phase == PHASE_HANDSHAKE) {
    if (c->starttls) {
      /* The ACK is out: any byte already read was sent in clear after
       * STARTTLS; otherwise the TLS handshake succeeds. */
      c->starttls = false;
      if (conn_in_avail(c)) {
        conn_kill(c);
        return;
      }
      c->tls = tls_up;
      handshake_tls_started(c);
    }
    size_t take = n < chunk ? n : chunk;
    if (c->sink_left) {
      if (take > c->sink_left)
        take = c->sink_left;
      c->sink_left -= take;
      if (c->sink_left == 0) {
        c->sink_done(c);
        if (!c->sink_left && conn_in_avail(c))
          consume(c);
      }
    } else {
      size_t room;
      REQUIRE(conn_in_room(c, &room));
      if (take > room)
        take = room;
      memcpy(c->in + c->in_end, p, take);
      c->in_end += take;
      consume(c);
      conn_in_release(c);  /* as read_cb does after its reads */
    }
    p += take;
    n -= take;
  }
}

static const size_t chunks[16] = {
  1, 2, 3, 7, 16, 20, 64, 100, 512, 4096, 4097, 65536, 65600, 1 << 20,
  SIZE_MAX, SIZE_MAX,
};

static void
setup(uint8_t config)
{
  /* 3: TLS on, with a configuration file's per-export settings. */
  bool per_export = (config & 3) == 3;
  mode = per_export ? TLS_ON : (enum tls_mode) (config & 3);
  memset(layers, 0, sizeof layers);
  memset(table, 0, sizeof table);
  for (int i = 0; i < 2; i++) {
    layers[i].size = (uint64_t) 1 << (20 + 10 * i);
    layers[i].caps.can_extents = true;
    layers[i].caps.block_min = 1;
    layers[i].caps.block_pref = 4096;
    layers[i].caps.block_max = 32u << 20;
    table[i].top = &layers[i];
    table[i].alloc_depth = config & 4;
  }
  table[0].name = "";
  table[1].name = "disk";
  table[1].description = (config & 8) ? "a disk" : NULL;
  table[1].readonly = true;
  /* Per-export settings: "disk" TLS-only, "" only for some networks
   * (which a connection with no address never is in). */
  table[1].tls_required = per_export;
  table[0].allow = per_export ? allow : NULL;
  for (int i = 0; i < 2; i++) {
    table[i].offered = true;
    atomic_init(&table[i].refs, 0);
  }
  table[0].next = &table[1];
  exports = &table[0];
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size < 1 || size > (1u << 20))
    return 0;
  if (!allow) {
    const char *bad;
    allow = allow_list_new();
    REQUIRE(allow && allow_list_add(allow, "192.0.2.0/24", &bad));
  }
  setup(data[0]);
  memset(&seen, 0, sizeof seen);

  /* The client's bytes in a buffer of their own size, so that reading
   * past them is an ASan report. */
  size_t n = size - 1;
  uint8_t *client = malloc(n ? n : 1);
  struct conn *c = calloc(1, sizeof *c);
  REQUIRE(client && c);
  memcpy(client, data + 1, n);
  snprintf(c->peer, sizeof c->peer, "fuzz");

  handshake_start(c);
  REQUIRE(seen.greeted);
  size_t at = 4;  /* the client flags come first */
  count_headers(client, n, &at);
  feed(c, client, n, chunks[data[0] >> 4]);
  REQUIRE(!seen.transmission || c->phase == PHASE_TRANSMISSION);

  handshake_cleanup(c);
  unsigned held = atomic_load(&table[0].refs) + atomic_load(&table[1].refs);
  REQUIRE(held == (c->phase == PHASE_TRANSMISSION ? 1 : 0));
  conn_in_free(c);
  free(c);
  free(client);
  return 0;
}
