/* Parsing and validation of what NBD clients send. */
#include <errno.h>

#include "protocol.h"

bool
nbd_parse_request(const uint8_t buf[NBD_REQUEST_SIZE], struct nbd_request *req)
{
  if (get_be32(buf) != NBD_REQUEST_MAGIC)
    return false;
  req->flags = get_be16(buf + 4);
  req->type = get_be16(buf + 6);
  req->cookie = get_be64(buf + 8);
  req->offset = get_be64(buf + 16);
  req->count = get_be32(buf + 24);
  return true;
}

static bool
is_write_type(uint16_t type)
{
  return type == NBD_CMD_WRITE || type == NBD_CMD_TRIM ||
         type == NBD_CMD_WRITE_ZEROES;
}

/* The command flags a command may carry on this connection. */
static uint16_t
allowed_flags(const struct nbd_tx_state *st, uint16_t type)
{
  /* FUA is accepted on every command once advertised: some clients set it
   * everywhere, and the spec says to accept it. */
  uint16_t fua = (st->eflags & NBD_FLAG_SEND_FUA) ? NBD_CMD_FLAG_FUA : 0;
  switch (type) {
  case NBD_CMD_READ:
    return fua | ((st->eflags & NBD_FLAG_SEND_DF) ? NBD_CMD_FLAG_DF : 0);
  case NBD_CMD_WRITE_ZEROES:
    return fua | NBD_CMD_FLAG_NO_HOLE |
           ((st->eflags & NBD_FLAG_SEND_FAST_ZERO) ? NBD_CMD_FLAG_FAST_ZERO : 0);
  case NBD_CMD_BLOCK_STATUS:
    return fua | NBD_CMD_FLAG_REQ_ONE;
  default:
    return fua;
  }
}

static bool
is_advertised(const struct nbd_tx_state *st, uint16_t type)
{
  switch (type) {
  case NBD_CMD_READ:
  case NBD_CMD_WRITE:
    return true;
  case NBD_CMD_FLUSH:
    return st->eflags & NBD_FLAG_SEND_FLUSH;
  case NBD_CMD_TRIM:
    return st->eflags & NBD_FLAG_SEND_TRIM;
  case NBD_CMD_WRITE_ZEROES:
    return st->eflags & NBD_FLAG_SEND_WRITE_ZEROES;
  case NBD_CMD_CACHE:
    return st->eflags & NBD_FLAG_SEND_CACHE;
  case NBD_CMD_BLOCK_STATUS:
    return st->structured && (st->base_allocation || st->alloc_depth);
  default:
    return false;
  }
}

uint32_t
nbd_validate_request(const struct nbd_tx_state *st,
                     const struct nbd_request *req)
{
  uint16_t type = req->type;

  if (type > NBD_CMD_BLOCK_STATUS || type == NBD_CMD_DISC)
    return NBD_EINVAL;
  if (is_write_type(type) && (st->eflags & NBD_FLAG_READ_ONLY))
    return NBD_EPERM;
  if (req->flags & ~allowed_flags(st, type))
    return NBD_EINVAL;
  if (!is_advertised(st, type))
    return NBD_EINVAL;

  if (type == NBD_CMD_FLUSH)
    return 0;  /* offset and length carry nothing */

  if ((type == NBD_CMD_READ || type == NBD_CMD_WRITE) &&
      req->count > st->block_max)
    return NBD_EINVAL;
  if (type == NBD_CMD_BLOCK_STATUS && req->count == 0)
    return NBD_EINVAL;

  if (req->offset > st->size || req->count > st->size - req->offset)
    return (type == NBD_CMD_WRITE || type == NBD_CMD_WRITE_ZEROES)
           ? NBD_ENOSPC : NBD_EINVAL;

  if (st->block_min > 1 &&
      (req->offset % st->block_min || req->count % st->block_min))
    return NBD_EINVAL;
  return 0;
}

uint32_t
nbd_errno_to_wire(int err)
{
  switch (err) {
  case 0:
    return 0;
  case EPERM:
  case EROFS:
    return NBD_EPERM;
  case ENOMEM:
    return NBD_ENOMEM;
  case EINVAL:
    return NBD_EINVAL;
  case ENOSPC:
  case EDQUOT:
  case EFBIG:
    return NBD_ENOSPC;
  case EOVERFLOW:
    return NBD_EOVERFLOW;
  case ENOTSUP:
    return NBD_ENOTSUP;
  case ESHUTDOWN:
    return NBD_ESHUTDOWN;
  default:
    return NBD_EIO;
  }
}

const char *
nbd_cmd_name(uint16_t type)
{
  static const char *const names[] = {
    "READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES",
    "BLOCK_STATUS",
  };
  return type < sizeof names / sizeof names[0] ? names[type] : "UNKNOWN";
}

bool
nbd_parse_info_request(const uint8_t *p, uint32_t len,
                       struct nbd_info_request *out)
{
  if (len < 6)
    return false;
  out->name_len = get_be32(p);
  if (out->name_len > len - 6 || out->name_len > NBD_MAX_STRING)
    return false;
  out->name = p + 4;
  out->nreqs = get_be16(p + 4 + out->name_len);
  if ((uint64_t) len != 6 + (uint64_t) out->name_len + 2 * (uint64_t) out->nreqs)
    return false;
  out->reqs = p + 6 + out->name_len;
  return true;
}

bool
nbd_parse_meta_request(const uint8_t *p, uint32_t len,
                       struct nbd_meta_request *out,
                       void (*query)(void *opaque, const uint8_t *q,
                                     uint32_t qlen),
                       void *opaque)
{
  if (len < 8)
    return false;
  out->name_len = get_be32(p);
  if (out->name_len > len - 8 || out->name_len > NBD_MAX_STRING)
    return false;
  out->name = p + 4;
  uint32_t pos = 4 + out->name_len;
  out->nqueries = get_be32(p + pos);
  pos += 4;
  /* Walk twice: first check the whole payload, so a malformed one selects
   * nothing, then report the queries. */
  for (int pass = 0; pass < 2; pass++) {
    uint32_t at = pos;
    for (uint32_t i = 0; i < out->nqueries; i++) {
      if (len - at < 4)
        return false;
      uint32_t qlen = get_be32(p + at);
      at += 4;
      if (qlen > len - at || qlen > NBD_MAX_STRING)
        return false;
      if (pass == 1 && query)
        query(opaque, p + at, qlen);
      at += qlen;
    }
    if (at != len)
      return false;
  }
  return true;
}
