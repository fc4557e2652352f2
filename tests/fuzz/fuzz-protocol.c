/* libFuzzer target: the NBD parsers that see a client's bytes first.
 *
 * server/protocol.c holds them as pure functions: the transmission request
 * header (nbd_parse_request), its validation against what the connection
 * negotiated (nbd_validate_request), and the NBD_OPT_INFO/GO and
 * *_META_CONTEXT option payloads.  The option loop of server/handshake.c
 * around them has a target of its own, fuzz-handshake.c.
 *
 * Input: byte 0 picks the parser (% 3), the rest is its input:
 *   0  request: 8 control bytes make the negotiated state (eflags u16,
 *      bits: structured, base:allocation, allocation-depth; size, minimum
 *      and maximum block size, each from a small table or raw), then the
 *      28-byte request header;
 *   1  an NBD_OPT_INFO / NBD_OPT_GO payload;
 *   2  an NBD_OPT_*_META_CONTEXT payload.
 * Payloads are copied into a buffer of exactly their size, so a read past
 * the end is an ASan report.
 *
 * Oracles besides the sanitizers: a request that validates is one the
 * export can serve (advertised, in range without overflow, aligned, not a
 * write on a read-only export), and an error is one the spec allows; a
 * parsed header re-encodes to the same bytes; a parsed option payload
 * accounts for every byte, and every meta query lies inside it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"

#define REQUIRE(cond)                                                   \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf(stderr, "fuzz-protocol: %s:%d: %s\n", __FILE__, __LINE__, \
              #cond);                                                   \
      abort();                                                          \
    }                                                                   \
  } while (0)

/* Every byte the server would read is read into this, so a bad pointer
 * from a parser is an ASan report. */
static volatile uint32_t sink;

static const uint64_t sizes[] = {
  0, 1, 512, 4096, 1u << 20, UINT64_C(1) << 40, INT64_MAX, UINT64_MAX,
};
static const uint32_t block_sizes[] = { 1, 512, 4096, 65536 };
static const uint32_t block_maxes[] = {
  32u << 20, 65536, 4096, UINT32_MAX,
};

static void
fuzz_request(const uint8_t *d, size_t n)
{
  if (n < 8 + NBD_REQUEST_SIZE)
    return;
  struct nbd_tx_state st = {
    .eflags = get_be16(d),
    .structured = d[2] & 1,
    .base_allocation = d[2] & 2,
    .alloc_depth = d[2] & 4,
    .size = (d[3] & 0x80) ? get_be32(d + 4) : sizes[d[3] & 7],
    .block_min = block_sizes[(d[3] >> 3) & 3],
    .block_max = block_maxes[(d[3] >> 5) & 3],
  };
  const uint8_t *hdr = d + 8;
  struct nbd_request req;
  if (!nbd_parse_request(hdr, &req)) {
    REQUIRE(get_be32(hdr) != NBD_REQUEST_MAGIC);
    return;
  }
  uint8_t again[NBD_REQUEST_SIZE];
  put_be32(again, NBD_REQUEST_MAGIC);
  put_be16(again + 4, req.flags);
  put_be16(again + 6, req.type);
  put_be64(again + 8, req.cookie);
  put_be64(again + 16, req.offset);
  put_be32(again + 24, req.count);
  REQUIRE(memcmp(again, hdr, NBD_REQUEST_SIZE) == 0);

  uint32_t err = nbd_validate_request(&st, &req);
  REQUIRE(err == 0 || err == NBD_EINVAL || err == NBD_EPERM ||
          err == NBD_ENOSPC);
  (void) nbd_cmd_name(req.type);
  if (err)
    return;
  uint16_t t = req.type;
  REQUIRE(t <= NBD_CMD_BLOCK_STATUS && t != NBD_CMD_DISC);
  bool write = t == NBD_CMD_WRITE || t == NBD_CMD_TRIM ||
               t == NBD_CMD_WRITE_ZEROES;
  REQUIRE(!(write && (st.eflags & NBD_FLAG_READ_ONLY)));
  if (t == NBD_CMD_FLUSH)
    REQUIRE(st.eflags & NBD_FLAG_SEND_FLUSH);
  if (t == NBD_CMD_TRIM)
    REQUIRE(st.eflags & NBD_FLAG_SEND_TRIM);
  if (t == NBD_CMD_WRITE_ZEROES)
    REQUIRE(st.eflags & NBD_FLAG_SEND_WRITE_ZEROES);
  if (t == NBD_CMD_CACHE)
    REQUIRE(st.eflags & NBD_FLAG_SEND_CACHE);
  if (t == NBD_CMD_BLOCK_STATUS)
    REQUIRE(st.structured && (st.base_allocation || st.alloc_depth) &&
            req.count > 0);
  if ((req.flags & NBD_CMD_FLAG_FUA))
    REQUIRE(st.eflags & NBD_FLAG_SEND_FUA);
  if ((req.flags & NBD_CMD_FLAG_DF))
    REQUIRE(t == NBD_CMD_READ && (st.eflags & NBD_FLAG_SEND_DF));
  if ((req.flags & NBD_CMD_FLAG_FAST_ZERO))
    REQUIRE(t == NBD_CMD_WRITE_ZEROES &&
            (st.eflags & NBD_FLAG_SEND_FAST_ZERO));
  if ((req.flags & NBD_CMD_FLAG_NO_HOLE))
    REQUIRE(t == NBD_CMD_WRITE_ZEROES);
  if ((req.flags & NBD_CMD_FLAG_REQ_ONE))
    REQUIRE(t == NBD_CMD_BLOCK_STATUS);
  if (t == NBD_CMD_FLUSH)
    return;
  REQUIRE(req.offset <= st.size && req.count <= st.size - req.offset);
  if (t == NBD_CMD_READ || t == NBD_CMD_WRITE)
    REQUIRE(req.count <= st.block_max);
  REQUIRE(req.offset % st.block_min == 0 && req.count % st.block_min == 0);
}

static void
fuzz_info(const uint8_t *p, uint32_t len)
{
  struct nbd_info_request ir;
  if (!nbd_parse_info_request(p, len, &ir))
    return;
  REQUIRE(ir.name == p + 4 && ir.name_len <= NBD_MAX_STRING);
  REQUIRE((uint64_t) len == 6 + (uint64_t) ir.name_len + 2u * ir.nreqs);
  REQUIRE(ir.reqs == p + 6 + ir.name_len);
  for (uint32_t i = 0; i < ir.name_len; i++)
    sink += ir.name[i];
  for (uint16_t i = 0; i < ir.nreqs; i++)
    sink += get_be16(ir.reqs + 2 * i);
}

struct meta_walk {
  const uint8_t *p;
  uint32_t len;
  uint32_t seen;
};

static void
meta_query(void *opaque, const uint8_t *q, uint32_t qlen)
{
  struct meta_walk *w = opaque;
  REQUIRE(q >= w->p && qlen <= NBD_MAX_STRING &&
          (size_t) (q - w->p) + qlen <= w->len);
  for (uint32_t i = 0; i < qlen; i++)
    sink += q[i];
  w->seen++;
}

static void
fuzz_meta(const uint8_t *p, uint32_t len)
{
  struct nbd_meta_request mr;
  struct meta_walk w = { .p = p, .len = len };
  if (!nbd_parse_meta_request(p, len, &mr, meta_query, &w)) {
    REQUIRE(w.seen == 0);  /* a malformed payload selects nothing */
    return;
  }
  REQUIRE(mr.name == p + 4 && mr.name_len <= NBD_MAX_STRING);
  REQUIRE(w.seen == mr.nqueries);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size < 1 || size - 1 > 1u << 20)
    return 0;
  size_t n = size - 1;
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf)
    return 0;
  memcpy(buf, data + 1, n);
  switch (data[0] % 3) {
  case 0:
    fuzz_request(buf, n);
    break;
  case 1:
    fuzz_info(buf, (uint32_t) n);
    break;
  case 2:
    fuzz_meta(buf, (uint32_t) n);
    break;
  }
  free(buf);
  return 0;
}
