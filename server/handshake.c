/* Fixed newstyle negotiation.  Options arrive one at a time (clients wait
 * for each reply), so this is a plain loop over complete messages in the
 * input buffer.  Every option's whole payload is consumed, whatever the
 * answer, so the stream never loses sync. */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "allow.h"
#include "connection.h"
#include "export.h"
#include "log.h"
#include "protocol.h"
#include "server.h"
#include "tls.h"

#define OPTION_HEADER 16

static void
send_reply(struct conn *c, uint32_t opt, uint32_t type, const void *data,
           uint32_t len)
{
  uint8_t hdr[20];
  put_be64(hdr, NBD_REP_MAGIC);
  put_be32(hdr + 8, opt);
  put_be32(hdr + 12, type);
  put_be32(hdr + 16, len);
  if (len == 0) {
    conn_send_copy(c, hdr, sizeof hdr);
    return;
  }
  uint8_t *buf = malloc(sizeof hdr + len);
  if (!buf) {
    conn_kill(c);
    return;
  }
  memcpy(buf, hdr, sizeof hdr);
  memcpy(buf + sizeof hdr, data, len);
  conn_send_copy(c, buf, sizeof hdr + len);
  free(buf);
}

static void
send_error(struct conn *c, uint32_t opt, uint32_t err, const char *msg)
{
  send_reply(c, opt, err, msg, msg ? strlen(msg) : 0);
}

void
handshake_start(struct conn *c)
{
  uint8_t greeting[18];
  put_be64(greeting, NBD_MAGIC);
  put_be64(greeting + 8, NBD_IHAVEOPT);
  put_be16(greeting + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  c->phase = PHASE_HANDSHAKE;
  conn_send_copy(c, greeting, sizeof greeting);
}

void
handshake_cleanup(struct conn *c)
{
  free(c->hs.meta_export);
  c->hs.meta_export = NULL;
}

void
handshake_tls_started(struct conn *c)
{
  struct handshake *hs = &c->hs;
  bool fixed_newstyle = hs->fixed_newstyle, no_zeroes = hs->no_zeroes;
  handshake_cleanup(c);
  memset(hs, 0, sizeof *hs);
  hs->got_client_flags = true;
  hs->fixed_newstyle = fixed_newstyle;
  hs->no_zeroes = no_zeroes;
}

/* FORCEDTLS, before STARTTLS: is this option refused? */
static bool
tls_needed(struct conn *c, uint32_t opt)
{
  return tls_mode() == TLS_REQUIRE && !c->tls &&
         opt != NBD_OPT_STARTTLS && opt != NBD_OPT_ABORT;
}

static void
opt_starttls(struct conn *c, uint32_t len)
{
  if (len)
    send_error(c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
               "STARTTLS takes no payload");
  else if (c->tls)
    send_error(c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
               "TLS is already active");
  else if (tls_mode() == TLS_OFF)
    send_error(c, NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY,
               "TLS is not configured");
  else {
    send_reply(c, NBD_OPT_STARTTLS, NBD_REP_ACK, NULL, 0);
    conn_starttls(c);
  }
}

static void
enter_transmission(struct conn *c, struct export *e)
{
  struct handshake *hs = &c->hs;
  /* By name: a reload may have changed the export since SET_META_CONTEXT,
   * so keep only what this one offers. */
  bool same = hs->meta_export && strcmp(hs->meta_export, e->name) == 0;
  tx_start(c, e, hs->structured,
           same && hs->meta_base_allocation && e->top->caps.can_extents,
           same && hs->meta_alloc_depth && e->alloc_depth);
}

/* May this client see the export?  Per export (a configuration
 * section's tls and allow): tls = require hides it from clients that did
 * not do STARTTLS, allow from clients outside its networks. */
static bool
tls_ok(const struct conn *c, const struct export *e)
{
  return !e->tls_required || c->tls;
}

static bool
peer_ok(const struct conn *c, const struct export *e)
{
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (!e->allow)
    return true;
  if (getpeername(c->fd, (struct sockaddr *) &ss, &len) == -1)
    return false;
  return allow_list_permits(e->allow, (struct sockaddr *) &ss);
}

/* The export a client names, with a reference, if it may have it.  Else
 * NULL and *err is the reply: NBD_REP_ERR_UNKNOWN for no such export,
 * NBD_REP_ERR_TLS_REQD when it needs TLS first (the spec's SELECTIVETLS),
 * NBD_REP_ERR_POLICY when this client is not allowed it. */
static struct export *
lookup(struct conn *c, const uint8_t *name, uint32_t len, uint32_t *err,
       const char **why)
{
  struct export *e = export_get(name, len);
  *err = NBD_REP_ERR_UNKNOWN;
  *why = "unknown export name";
  if (e && !tls_ok(c, e)) {
    *err = NBD_REP_ERR_TLS_REQD;
    *why = "this export requires TLS";
  } else if (e && !peer_ok(c, e)) {
    *err = NBD_REP_ERR_POLICY;
    *why = "this export is not available to this client";
  } else
    return e;
  if (e) {
    nbds_log_debug("%s: export '%s' refused: %s", c->peer, e->name, *why);
    export_put(e);
  }
  return NULL;
}

static void
opt_export_name(struct conn *c, const uint8_t *p, uint32_t len)
{
  uint32_t err;
  const char *why;
  struct export *e = lookup(c, p, len, &err, &why);
  if (!e) {
    /* EXPORT_NAME has no way to report an error but hanging up. */
    nbds_log_debug("%s: EXPORT_NAME '%.*s': %s", c->peer, (int) len, p,
                   why);
    conn_kill(c);
    return;
  }
  uint8_t reply[10 + 124] = { 0 };
  put_be64(reply, e->top->size);
  put_be16(reply + 8, export_flags(e, c->hs.structured));
  conn_send_copy(c, reply, c->hs.no_zeroes ? 10 : sizeof reply);
  enter_transmission(c, e);
}

static void
send_info(struct conn *c, uint32_t opt, uint16_t type, const void *data,
          uint32_t len)
{
  uint8_t buf[2 + NBD_MAX_STRING];
  put_be16(buf, type);
  memcpy(buf + 2, data, len);
  send_reply(c, opt, NBD_REP_INFO, buf, 2 + len);
}

static void
opt_info_go(struct conn *c, uint32_t opt, const uint8_t *p, uint32_t len)
{
  struct nbd_info_request ir;
  if (!nbd_parse_info_request(p, len, &ir)) {
    send_error(c, opt, NBD_REP_ERR_INVALID, "malformed INFO/GO request");
    return;
  }
  uint32_t err;
  const char *why;
  struct export *e = lookup(c, ir.name, ir.name_len, &err, &why);
  if (!e) {
    send_error(c, opt, err, why);
    return;
  }
  bool want_name = false;
  for (uint16_t i = 0; i < ir.nreqs; i++)
    if (get_be16(ir.reqs + 2 * i) == NBD_INFO_NAME)
      want_name = true;

  uint8_t info[12];
  put_be64(info, e->top->size);
  put_be16(info + 8, export_flags(e, c->hs.structured));
  send_info(c, opt, NBD_INFO_EXPORT, info, 10);
  if (want_name)
    send_info(c, opt, NBD_INFO_NAME, e->name, strlen(e->name));
  if (e->description)
    send_info(c, opt, NBD_INFO_DESCRIPTION, e->description,
              strlen(e->description));
  /* Always sent, as qemu-nbd does: it costs nothing and tells every
   * client the preferred and maximum sizes. */
  const struct nbds_caps *caps = &e->top->caps;
  put_be32(info, caps->block_min);
  put_be32(info + 4, caps->block_pref);
  put_be32(info + 8, caps->block_max);
  send_info(c, opt, NBD_INFO_BLOCK_SIZE, info, 12);
  send_reply(c, opt, NBD_REP_ACK, NULL, 0);
  if (opt == NBD_OPT_GO)
    enter_transmission(c, e);  /* the connection keeps the reference */
  else
    export_put(e);
}

static void
opt_list(struct conn *c, uint32_t len)
{
  if (len) {
    send_error(c, NBD_OPT_LIST, NBD_REP_ERR_INVALID, "LIST takes no payload");
    return;
  }
  exports_lock();
  for (struct export *e = exports; e; e = e->next) {
    if (!e->offered || !tls_ok(c, e) || !peer_ok(c, e))
      continue;
    uint8_t buf[4 + 2 * NBD_MAX_STRING];
    uint32_t nlen = strlen(e->name);
    uint32_t dlen = e->description ? strlen(e->description) : 0;
    put_be32(buf, nlen);
    memcpy(buf + 4, e->name, nlen);
    if (dlen)
      memcpy(buf + 4 + nlen, e->description, dlen);
    send_reply(c, NBD_OPT_LIST, NBD_REP_SERVER, buf, 4 + nlen + dlen);
  }
  exports_unlock();
  send_reply(c, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
}

/* Which of our contexts a query names: a context itself, or, when
 * listing, its namespace ("base:", "qemu:"). */
struct meta_walk {
  bool list;
  bool base;
  bool depth;
};

static bool
names(const uint8_t *q, uint32_t qlen, const char *ctx, bool list)
{
  size_t ns = strchr(ctx, ':') - ctx + 1;
  return (qlen == strlen(ctx) && memcmp(q, ctx, qlen) == 0) ||
         (list && qlen == ns && memcmp(q, ctx, ns) == 0);
}

static void
meta_query(void *opaque, const uint8_t *q, uint32_t qlen)
{
  struct meta_walk *w = opaque;
  w->base |= names(q, qlen, NBD_META_BASE_ALLOCATION, w->list);
  w->depth |= names(q, qlen, NBD_META_ALLOCATION_DEPTH, w->list);
}

/* NBD_REP_META_CONTEXT for one context: its id, or 0 when listing. */
static void
send_context(struct conn *c, uint32_t opt, uint32_t id, const char *name)
{
  uint8_t buf[4 + 64];
  size_t len = strlen(name);
  put_be32(buf, opt == NBD_OPT_LIST_META_CONTEXT ? 0 : id);
  memcpy(buf + 4, name, len);
  send_reply(c, opt, NBD_REP_META_CONTEXT, buf, 4 + len);
}

static void
opt_meta_context(struct conn *c, uint32_t opt, const uint8_t *p,
                 uint32_t len)
{
  struct handshake *hs = &c->hs;
  bool list = opt == NBD_OPT_LIST_META_CONTEXT;
  if (!list) {
    /* SET replaces the selection even when it fails. */
    hs->meta_base_allocation = hs->meta_alloc_depth = false;
    free(hs->meta_export);
    hs->meta_export = NULL;
  }
  if (!hs->structured) {
    send_error(c, opt, NBD_REP_ERR_INVALID,
               "negotiate structured replies first");
    return;
  }
  struct meta_walk w = { .list = list };
  struct nbd_meta_request mr;
  if (!nbd_parse_meta_request(p, len, &mr, meta_query, &w)) {
    send_error(c, opt, NBD_REP_ERR_INVALID, "malformed meta context request");
    return;
  }
  uint32_t err;
  const char *why;
  struct export *e = lookup(c, mr.name, mr.name_len, &err, &why);
  if (!e && err == NBD_REP_ERR_TLS_REQD) {
    /* The spec keeps TLS_REQD for INFO and GO (SELECTIVETLS); elsewhere
     * it would mean no option works before STARTTLS.  The export is
     * hidden from this client: unknown. */
    err = NBD_REP_ERR_UNKNOWN;
    why = "unknown export name";
  }
  if (!e) {
    send_error(c, opt, err, why);
    return;
  }
  if (list && mr.nqueries == 0)
    w.base = w.depth = true;  /* an empty LIST asks for everything */
  w.base &= e->top->caps.can_extents;
  w.depth &= e->alloc_depth;
  if (w.base)
    send_context(c, opt, NBD_META_ID_BASE_ALLOCATION,
                 NBD_META_BASE_ALLOCATION);
  if (w.depth)
    send_context(c, opt, NBD_META_ID_ALLOCATION_DEPTH,
                 NBD_META_ALLOCATION_DEPTH);
  if (!list && (w.base || w.depth)) {
    hs->meta_base_allocation = w.base;
    hs->meta_alloc_depth = w.depth;
    hs->meta_export = strdup(e->name);
    if (!hs->meta_export) {
      export_put(e);
      conn_kill(c);
      return;
    }
  }
  export_put(e);
  send_reply(c, opt, NBD_REP_ACK, NULL, 0);
}

/* Handle one complete option.  Returns false once negotiation is over. */
static bool
handle_option(struct conn *c, uint32_t opt, const uint8_t *p, uint32_t len)
{
  struct handshake *hs = &c->hs;

  if (!hs->fixed_newstyle && opt != NBD_OPT_EXPORT_NAME) {
    /* Plain newstyle knows no other option and no way to refuse one. */
    conn_kill(c);
    return false;
  }
  if (tls_needed(c, opt)) {
    if (opt == NBD_OPT_EXPORT_NAME) {
      /* No way to refuse it but hanging up. */
      nbds_log_debug("%s: EXPORT_NAME before STARTTLS", c->peer);
      conn_kill(c);
      return false;
    }
    send_error(c, opt, NBD_REP_ERR_TLS_REQD, "TLS is required");
    return !c->dead;
  }
  switch (opt) {
  case NBD_OPT_EXPORT_NAME:
    opt_export_name(c, p, len);
    return false;
  case NBD_OPT_ABORT:
    send_reply(c, opt, NBD_REP_ACK, NULL, 0);
    conn_shutdown(c);
    return false;
  case NBD_OPT_LIST:
    opt_list(c, len);
    break;
  case NBD_OPT_STARTTLS:
    opt_starttls(c, len);
    return !c->dead && !c->starttls;
  case NBD_OPT_INFO:
  case NBD_OPT_GO:
    opt_info_go(c, opt, p, len);
    return !(opt == NBD_OPT_GO && c->phase == PHASE_TRANSMISSION);
  case NBD_OPT_STRUCTURED_REPLY:
    if (len)
      send_error(c, opt, NBD_REP_ERR_INVALID, "no payload expected");
    else if (hs->structured)
      send_error(c, opt, NBD_REP_ERR_INVALID, "already negotiated");
    else {
      hs->structured = true;
      send_reply(c, opt, NBD_REP_ACK, NULL, 0);
    }
    break;
  case NBD_OPT_LIST_META_CONTEXT:
  case NBD_OPT_SET_META_CONTEXT:
    opt_meta_context(c, opt, p, len);
    break;
  default:
    send_error(c, opt, NBD_REP_ERR_UNSUP, "unsupported option");
    break;
  }
  return !c->dead;
}

static void
drained(struct conn *c)
{
  uint32_t opt = c->hs.draining_option;
  if (opt == NBD_OPT_EXPORT_NAME) {
    conn_kill(c);  /* a name longer than any string may be */
    return;
  }
  if (tls_needed(c, opt))
    send_error(c, opt, NBD_REP_ERR_TLS_REQD, "TLS is required");
  else
    send_error(c, opt, opt <= NBD_OPT_SET_META_CONTEXT ? NBD_REP_ERR_TOO_BIG
                                                       : NBD_REP_ERR_UNSUP,
               "option payload too large");
  handshake_consume(c);
}

void
handshake_consume(struct conn *c)
{
  struct handshake *hs = &c->hs;

  if (!hs->got_client_flags) {
    if (conn_in_avail(c) < 4)
      return;
    uint32_t flags = get_be32(conn_in_ptr(c));
    conn_in_skip(c, 4);
    if (flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
      nbds_log_debug("%s: unknown client flags 0x%x", c->peer, flags);
      conn_kill(c);
      return;
    }
    hs->got_client_flags = true;
    hs->fixed_newstyle = flags & NBD_FLAG_C_FIXED_NEWSTYLE;
    hs->no_zeroes = flags & NBD_FLAG_C_NO_ZEROES;
  }

  while (!c->dead && !c->eof && c->phase == PHASE_HANDSHAKE) {
    if (conn_in_avail(c) < OPTION_HEADER)
      return;
    const uint8_t *h = conn_in_ptr(c);
    if (get_be64(h) != NBD_IHAVEOPT) {
      nbds_log_debug("%s: bad option magic", c->peer);
      conn_kill(c);
      return;
    }
    uint32_t opt = get_be32(h + 8);
    uint32_t len = get_be32(h + 12);
    if (!conn_in_reserve(c, (size_t) OPTION_HEADER + len)) {
      /* Too large to parse: drop the payload, then refuse. */
      conn_in_skip(c, OPTION_HEADER);
      hs->draining_option = opt;
      conn_read_into(c, NULL, len, drained);
      return;
    }
    if (conn_in_avail(c) < OPTION_HEADER + (size_t) len)
      return;
    const uint8_t *payload = conn_in_ptr(c) + OPTION_HEADER;
    bool more = handle_option(c, opt, payload, len);
    conn_in_skip(c, OPTION_HEADER + (size_t) len);
    if (!more) {
      /* Requests may follow GO in the same read. */
      if (c->phase == PHASE_TRANSMISSION)
        tx_consume(c);
      return;
    }
  }
}
