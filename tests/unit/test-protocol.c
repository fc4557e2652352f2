/* Unit tests for the wire parsers and request validation. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "protocol.h"

static const struct nbd_tx_state rw_state = {
  .eflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
            NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
            NBD_FLAG_SEND_DF | NBD_FLAG_SEND_CACHE | NBD_FLAG_SEND_FAST_ZERO,
  .structured = true,
  .base_allocation = true,
  .size = 1 << 20,
  .block_min = 1,
  .block_max = 32 << 20,
};

static const struct nbd_tx_state ro_state = {
  .eflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH |
            NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE,
  .structured = false,
  .size = 1 << 20,
  .block_min = 1,
  .block_max = 32 << 20,
};

static uint32_t
check(const struct nbd_tx_state *st, uint16_t type, uint16_t flags,
      uint64_t offset, uint32_t count)
{
  struct nbd_request r = { .type = type, .flags = flags, .offset = offset,
                           .count = count };
  return nbd_validate_request(st, &r);
}

Test(request, parse_header)
{
  uint8_t b[28];
  put_be32(b, NBD_REQUEST_MAGIC);
  put_be16(b + 4, NBD_CMD_FLAG_FUA);
  put_be16(b + 6, NBD_CMD_WRITE);
  put_be64(b + 8, 0x0102030405060708);
  put_be64(b + 16, 4096);
  put_be32(b + 24, 512);
  struct nbd_request r;
  cr_assert(nbd_parse_request(b, &r));
  cr_assert_eq(r.flags, NBD_CMD_FLAG_FUA);
  cr_assert_eq(r.type, NBD_CMD_WRITE);
  cr_assert_eq(r.cookie, 0x0102030405060708);
  cr_assert_eq(r.offset, 4096);
  cr_assert_eq(r.count, 512);
}

Test(request, bad_magic)
{
  uint8_t b[28] = { 0 };
  put_be32(b, 0x25609514);  /* one off: a historic magic, never valid */
  struct nbd_request r;
  cr_assert_not(nbd_parse_request(b, &r));
}

Test(request, valid_commands)
{
  cr_assert_eq(check(&rw_state, NBD_CMD_READ, 0, 0, 4096), 0);
  cr_assert_eq(check(&rw_state, NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 0, 4096), 0);
  cr_assert_eq(check(&rw_state, NBD_CMD_FLUSH, 0, 0, 0), 0);
  cr_assert_eq(check(&rw_state, NBD_CMD_TRIM, NBD_CMD_FLAG_FUA, 0, 1 << 20), 0);
  cr_assert_eq(check(&rw_state, NBD_CMD_WRITE_ZEROES,
                     NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO, 0, 4096), 0);
  cr_assert_eq(check(&rw_state, NBD_CMD_CACHE, 0, 0, 4096), 0);
  cr_assert_eq(check(&rw_state, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE,
                     0, 4096), 0);
  cr_assert_eq(check(&rw_state, NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 65536), 0);
  /* FUA is accepted on a read: some clients set it everywhere. */
  cr_assert_eq(check(&rw_state, NBD_CMD_READ, NBD_CMD_FLAG_FUA, 0, 512), 0);
  /* A request ending exactly at the end is fine. */
  cr_assert_eq(check(&rw_state, NBD_CMD_WRITE, 0, (1 << 20) - 512, 512), 0);
}

Test(request, unknown_command_and_flags)
{
  cr_assert_eq(check(&rw_state, 8, 0, 0, 0), NBD_EINVAL);
  cr_assert_eq(check(&rw_state, 0xffff, 0, 0, 0), NBD_EINVAL);
  cr_assert_eq(check(&rw_state, NBD_CMD_READ, 1u << 8, 0, 512), NBD_EINVAL);
  cr_assert_eq(check(&rw_state, NBD_CMD_WRITE, NBD_CMD_FLAG_NO_HOLE, 0, 512),
               NBD_EINVAL);
  cr_assert_eq(check(&rw_state, NBD_CMD_WRITE, NBD_CMD_FLAG_DF, 0, 512),
               NBD_EINVAL);
  cr_assert_eq(check(&rw_state, NBD_CMD_READ, NBD_CMD_FLAG_REQ_ONE, 0, 512),
               NBD_EINVAL);
  cr_assert_eq(check(&rw_state, NBD_CMD_TRIM, NBD_CMD_FLAG_FAST_ZERO, 0, 512),
               NBD_EINVAL);
}

Test(request, flags_not_advertised)
{
  struct nbd_tx_state st = rw_state;
  st.eflags &= ~(NBD_FLAG_SEND_FAST_ZERO | NBD_FLAG_SEND_DF |
                 NBD_FLAG_SEND_FUA);
  cr_assert_eq(check(&st, NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_FAST_ZERO, 0, 512),
               NBD_EINVAL);
  cr_assert_eq(check(&st, NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 512), NBD_EINVAL);
  cr_assert_eq(check(&st, NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 0, 512), NBD_EINVAL);
  st.eflags &= ~(NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_TRIM |
                 NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_CACHE);
  cr_assert_eq(check(&st, NBD_CMD_FLUSH, 0, 0, 0), NBD_EINVAL);
  cr_assert_eq(check(&st, NBD_CMD_TRIM, 0, 0, 512), NBD_EINVAL);
  cr_assert_eq(check(&st, NBD_CMD_WRITE_ZEROES, 0, 0, 512), NBD_EINVAL);
  cr_assert_eq(check(&st, NBD_CMD_CACHE, 0, 0, 512), NBD_EINVAL);
}

Test(request, block_status_needs_context)
{
  struct nbd_tx_state st = rw_state;
  st.base_allocation = false;
  cr_assert_eq(check(&st, NBD_CMD_BLOCK_STATUS, 0, 0, 512), NBD_EINVAL);
  st = rw_state;
  st.structured = false;
  cr_assert_eq(check(&st, NBD_CMD_BLOCK_STATUS, 0, 0, 512), NBD_EINVAL);
  cr_assert_eq(check(&rw_state, NBD_CMD_BLOCK_STATUS, 0, 0, 0), NBD_EINVAL);
}

Test(request, out_of_range)
{
  uint64_t size = rw_state.size;
  cr_assert_eq(check(&rw_state, NBD_CMD_READ, 0, size, 1), NBD_EINVAL);
  cr_assert_eq(check(&rw_state, NBD_CMD_TRIM, 0, size - 1, 2), NBD_EINVAL);
  cr_assert_eq(check(&rw_state, NBD_CMD_CACHE, 0, size, 512), NBD_EINVAL);
  cr_assert_eq(check(&rw_state, NBD_CMD_BLOCK_STATUS, 0, size, 512), NBD_EINVAL);
  cr_assert_eq(check(&rw_state, NBD_CMD_WRITE, 0, size, 1), NBD_ENOSPC);
  cr_assert_eq(check(&rw_state, NBD_CMD_WRITE_ZEROES, 0, size - 1, 2),
               NBD_ENOSPC);
  /* offset + count wrapping past 2^64 is out of range, not small. */
  cr_assert_eq(check(&rw_state, NBD_CMD_READ, 0, UINT64_MAX - 10, 512),
               NBD_EINVAL);
  cr_assert_eq(check(&rw_state, NBD_CMD_WRITE, 0, UINT64_MAX, 1), NBD_ENOSPC);
}

Test(request, too_large)
{
  uint32_t max = rw_state.block_max;
  struct nbd_tx_state st = rw_state;
  st.size = UINT64_C(1) << 40;
  cr_assert_eq(check(&st, NBD_CMD_READ, 0, 0, max + 1), NBD_EINVAL);
  cr_assert_eq(check(&st, NBD_CMD_WRITE, 0, 0, max + 1), NBD_EINVAL);
  cr_assert_eq(check(&st, NBD_CMD_READ, 0, 0, max), 0);
  /* Payload-free commands may be larger than the maximum payload. */
  cr_assert_eq(check(&st, NBD_CMD_TRIM, 0, 0, UINT32_MAX), 0);
  cr_assert_eq(check(&st, NBD_CMD_WRITE_ZEROES, 0, 0, UINT32_MAX), 0);
}

Test(request, read_only)
{
  cr_assert_eq(check(&ro_state, NBD_CMD_WRITE, 0, 0, 512), NBD_EPERM);
  cr_assert_eq(check(&ro_state, NBD_CMD_TRIM, 0, 0, 512), NBD_EPERM);
  cr_assert_eq(check(&ro_state, NBD_CMD_WRITE_ZEROES, 0, 0, 512), NBD_EPERM);
  cr_assert_eq(check(&ro_state, NBD_CMD_READ, 0, 0, 512), 0);
  cr_assert_eq(check(&ro_state, NBD_CMD_FLUSH, 0, 0, 0), 0);
  /* DF needs structured replies, which this connection did not get. */
  cr_assert_eq(check(&ro_state, NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 512),
               NBD_EINVAL);
}

Test(request, alignment)
{
  struct nbd_tx_state st = rw_state;
  st.block_min = 512;
  cr_assert_eq(check(&st, NBD_CMD_READ, 0, 512, 512), 0);
  cr_assert_eq(check(&st, NBD_CMD_READ, 0, 1, 512), NBD_EINVAL);
  cr_assert_eq(check(&st, NBD_CMD_WRITE, 0, 0, 100), NBD_EINVAL);
}

Test(errno_map, never_leaks_raw_errno)
{
  cr_assert_eq(nbd_errno_to_wire(0), 0);
  cr_assert_eq(nbd_errno_to_wire(EROFS), NBD_EPERM);
  cr_assert_eq(nbd_errno_to_wire(EDQUOT), NBD_ENOSPC);
  cr_assert_eq(nbd_errno_to_wire(EFBIG), NBD_ENOSPC);
  cr_assert_eq(nbd_errno_to_wire(EOPNOTSUPP), NBD_ENOTSUP);
  cr_assert_eq(nbd_errno_to_wire(EBADF), NBD_EIO);
  cr_assert_eq(nbd_errno_to_wire(ENXIO), NBD_EIO);
}

static size_t
build_info(uint8_t *p, const char *name, uint16_t n, const uint16_t *reqs)
{
  size_t len = strlen(name);
  put_be32(p, len);
  memcpy(p + 4, name, len);
  put_be16(p + 4 + len, n);
  for (uint16_t i = 0; i < n; i++)
    put_be16(p + 6 + len + 2 * i, reqs[i]);
  return 6 + len + 2 * n;
}

Test(options, info_request)
{
  uint8_t p[64];
  uint16_t reqs[] = { NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE };
  size_t len = build_info(p, "disk", 2, reqs);
  struct nbd_info_request ir;
  cr_assert(nbd_parse_info_request(p, len, &ir));
  cr_assert_eq(ir.name_len, 4);
  cr_assert(memcmp(ir.name, "disk", 4) == 0);
  cr_assert_eq(ir.nreqs, 2);
  cr_assert_eq(get_be16(ir.reqs + 2), NBD_INFO_BLOCK_SIZE);
  /* Every length that disagrees with the payload is refused. */
  cr_assert_not(nbd_parse_info_request(p, len - 1, &ir));
  cr_assert_not(nbd_parse_info_request(p, len + 1, &ir));
  cr_assert_not(nbd_parse_info_request(p, 5, &ir));
  put_be32(p, 0xffffffff);
  cr_assert_not(nbd_parse_info_request(p, len, &ir));
}

struct seen {
  int n;
  char q[4][32];
};

static void
record(void *opaque, const uint8_t *q, uint32_t qlen)
{
  struct seen *s = opaque;
  snprintf(s->q[s->n++], 32, "%.*s", (int) qlen, q);
}

static size_t
build_meta(uint8_t *p, const char *name, int n, const char *const *qs)
{
  size_t pos = 0, len = strlen(name);
  put_be32(p, len);
  memcpy(p + 4, name, len);
  pos = 4 + len;
  put_be32(p + pos, n);
  pos += 4;
  for (int i = 0; i < n; i++) {
    put_be32(p + pos, strlen(qs[i]));
    memcpy(p + pos + 4, qs[i], strlen(qs[i]));
    pos += 4 + strlen(qs[i]);
  }
  return pos;
}

Test(options, meta_request)
{
  uint8_t p[128];
  const char *qs[] = { "base:allocation", "qemu:x" };
  size_t len = build_meta(p, "", 2, qs);
  struct nbd_meta_request mr;
  struct seen s = { 0 };
  cr_assert(nbd_parse_meta_request(p, len, &mr, record, &s));
  cr_assert_eq(mr.nqueries, 2);
  cr_assert_eq(s.n, 2);
  cr_assert_str_eq(s.q[0], "base:allocation");
  cr_assert_str_eq(s.q[1], "qemu:x");

  /* Truncated or padded payloads are refused and report nothing. */
  struct seen none = { 0 };
  cr_assert_not(nbd_parse_meta_request(p, len - 1, &mr, record, &none));
  cr_assert_not(nbd_parse_meta_request(p, len + 1, &mr, record, &none));
  put_be32(p + 4, 3);  /* claims a third query that is not there */
  cr_assert_not(nbd_parse_meta_request(p, len, &mr, record, &none));
  cr_assert_eq(none.n, 0);
}
