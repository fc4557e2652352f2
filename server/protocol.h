/* The NBD wire protocol: constants, and the pure functions that parse and
 * validate what a client sends.  Nothing here does I/O, so the unit tests
 * drive it directly. */
#ifndef NBDS_SERVER_PROTOCOL_H
#define NBDS_SERVER_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NBD_MAGIC              UINT64_C(0x4e42444d41474943)  /* "NBDMAGIC" */
#define NBD_IHAVEOPT           UINT64_C(0x49484156454F5054)  /* "IHAVEOPT" */
#define NBD_REP_MAGIC          UINT64_C(0x3e889045565a9)
#define NBD_REQUEST_MAGIC      0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu

/* Handshake flags (server) and client flags. */
#define NBD_FLAG_FIXED_NEWSTYLE   (1u << 0)
#define NBD_FLAG_NO_ZEROES        (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES      (1u << 1)

/* Options. */
#define NBD_OPT_EXPORT_NAME       1
#define NBD_OPT_ABORT             2
#define NBD_OPT_LIST              3
#define NBD_OPT_STARTTLS          5
#define NBD_OPT_INFO              6
#define NBD_OPT_GO                7
#define NBD_OPT_STRUCTURED_REPLY  8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT  10

/* Option replies. */
#define NBD_REP_ACK          1u
#define NBD_REP_SERVER       2u
#define NBD_REP_INFO         3u
#define NBD_REP_META_CONTEXT 4u
#define NBD_REP_ERR(n)       ((1u << 31) | (n))
#define NBD_REP_ERR_UNSUP    NBD_REP_ERR(1)
#define NBD_REP_ERR_POLICY   NBD_REP_ERR(2)
#define NBD_REP_ERR_INVALID  NBD_REP_ERR(3)
#define NBD_REP_ERR_PLATFORM NBD_REP_ERR(4)
#define NBD_REP_ERR_TLS_REQD NBD_REP_ERR(5)
#define NBD_REP_ERR_UNKNOWN  NBD_REP_ERR(6)
#define NBD_REP_ERR_SHUTDOWN NBD_REP_ERR(7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD NBD_REP_ERR(8)
#define NBD_REP_ERR_TOO_BIG  NBD_REP_ERR(9)

/* NBD_REP_INFO types. */
#define NBD_INFO_EXPORT      0
#define NBD_INFO_NAME        1
#define NBD_INFO_DESCRIPTION 2
#define NBD_INFO_BLOCK_SIZE  3

/* Transmission flags. */
#define NBD_FLAG_HAS_FLAGS         (1u << 0)
#define NBD_FLAG_READ_ONLY         (1u << 1)
#define NBD_FLAG_SEND_FLUSH        (1u << 2)
#define NBD_FLAG_SEND_FUA          (1u << 3)
#define NBD_FLAG_ROTATIONAL        (1u << 4)
#define NBD_FLAG_SEND_TRIM         (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF           (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN    (1u << 8)
#define NBD_FLAG_SEND_CACHE        (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO    (1u << 11)

/* Commands and command flags. */
#define NBD_CMD_READ         0
#define NBD_CMD_WRITE        1
#define NBD_CMD_DISC         2
#define NBD_CMD_FLUSH        3
#define NBD_CMD_TRIM         4
#define NBD_CMD_CACHE        5
#define NBD_CMD_WRITE_ZEROES 6
#define NBD_CMD_BLOCK_STATUS 7

#define NBD_CMD_FLAG_FUA       (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE   (1u << 1)
#define NBD_CMD_FLAG_DF        (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE   (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1u << 4)

/* Structured reply chunks. */
#define NBD_REPLY_FLAG_DONE         (1u << 0)
#define NBD_REPLY_TYPE_NONE         0
#define NBD_REPLY_TYPE_OFFSET_DATA  1
#define NBD_REPLY_TYPE_OFFSET_HOLE  2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_ERROR        32769
#define NBD_REPLY_TYPE_ERROR_OFFSET 32770

/* Errors on the wire. */
#define NBD_EPERM      1
#define NBD_EIO        5
#define NBD_ENOMEM     12
#define NBD_EINVAL     22
#define NBD_ENOSPC     28
#define NBD_EOVERFLOW  75
#define NBD_ENOTSUP    95
#define NBD_ESHUTDOWN  108

#define NBD_REQUEST_SIZE 28
#define NBD_MAX_STRING   4096

/* The meta contexts we offer, and the ids they get on this server.
 * qemu:allocation-depth only with -A, as qemu-nbd. */
#define NBD_META_BASE_ALLOCATION "base:allocation"
#define NBD_META_ID_BASE_ALLOCATION 1u
#define NBD_META_ALLOCATION_DEPTH "qemu:allocation-depth"
#define NBD_META_ID_ALLOCATION_DEPTH 2u

/* Big-endian access. */
static inline uint16_t get_be16(const uint8_t *p)
{ return (uint16_t) (p[0] << 8 | p[1]); }
static inline uint32_t get_be32(const uint8_t *p)
{ return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3]; }
static inline uint64_t get_be64(const uint8_t *p)
{ return (uint64_t) get_be32(p) << 32 | get_be32(p + 4); }
static inline void put_be16(uint8_t *p, uint16_t v)
{ p[0] = v >> 8; p[1] = (uint8_t) v; }
static inline void put_be32(uint8_t *p, uint32_t v)
{ put_be16(p, v >> 16); put_be16(p + 2, (uint16_t) v); }
static inline void put_be64(uint8_t *p, uint64_t v)
{ put_be32(p, v >> 32); put_be32(p + 4, (uint32_t) v); }

/* A transmission request as it came off the wire. */
struct nbd_request {
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;
  uint32_t count;
};

/* Parse a 28-byte request header.  Returns false on a bad magic (the
 * connection must then be dropped: the stream cannot be trusted). */
bool nbd_parse_request(const uint8_t buf[NBD_REQUEST_SIZE],
                       struct nbd_request *req);

/* What a connection negotiated for its export, as validation needs it. */
struct nbd_tx_state {
  uint16_t eflags;         /* transmission flags sent to this client */
  bool structured;         /* structured replies negotiated */
  bool base_allocation;    /* base:allocation selected for this export */
  bool alloc_depth;        /* qemu:allocation-depth selected */
  uint64_t size;
  uint32_t block_min;
  uint32_t block_max;
};

/* Check a request before anything reaches a layer.  Returns 0 or the NBD
 * error to reply with.  A WRITE that fails here still has its payload
 * drained by the caller. */
uint32_t nbd_validate_request(const struct nbd_tx_state *st,
                              const struct nbd_request *req);

/* Host errno to an NBD error: never leak a raw errno value. */
uint32_t nbd_errno_to_wire(int err);
const char *nbd_cmd_name(uint16_t type);

/* NBD_OPT_INFO / NBD_OPT_GO payload. */
struct nbd_info_request {
  const uint8_t *name;     /* points into the payload; not terminated */
  uint32_t name_len;
  uint16_t nreqs;
  const uint8_t *reqs;     /* nreqs big-endian u16 */
};
bool nbd_parse_info_request(const uint8_t *p, uint32_t len,
                            struct nbd_info_request *out);

/* NBD_OPT_LIST_META_CONTEXT / SET_META_CONTEXT payload.  Calls query() for
 * each query string; returns false if the payload is malformed. */
struct nbd_meta_request {
  const uint8_t *name;
  uint32_t name_len;
  uint32_t nqueries;
};
bool nbd_parse_meta_request(const uint8_t *p, uint32_t len,
                            struct nbd_meta_request *out,
                            void (*query)(void *opaque, const uint8_t *q,
                                          uint32_t qlen),
                            void *opaque);

#endif
