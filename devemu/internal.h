/* libdevemu internals shared by the decoders and the engine.
 *
 * A guest command is decoded by a pure function (virtio.c, nvme.c, ata.c)
 * into either an immediate completion or a *plan*: one NBD operation over
 * a list of byte ranges, with the flags every request carries and what to
 * do around it (drain volatile writes first, flush afterwards, switch the
 * write cache).  The engine (engine.c) executes plans against libnbd.
 * Keeping the decoders pure lets the unit tests, the fuzzer and the
 * benchmark check every translation without a server.
 */
#ifndef DEVEMU_INTERNAL_H
#define DEVEMU_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nbdstack/devemu.h"

/* NBD command flags, the values of LIBNBD_CMD_FLAG_* (the decoders do
 * not need libnbd.h; engine.c checks that they match). */
#define DV_NBD_FUA     0x01u
#define DV_NBD_NO_HOLE 0x02u

#define DV_MAX_RANGES 512u   /* trim/zero ranges one command may carry */

/* Everything a decoder may look at: the export as the device presents it,
 * the server's capabilities, the options and the current write cache. */
struct dv_geom {
  devemu_kind kind;
  uint64_t size;            /* bytes, a multiple of lbs */
  uint32_t lbs;             /* logical block size, power of two >= 512 */
  uint32_t lbs_shift;
  uint32_t pref;            /* preferred block size, >= lbs */
  uint32_t max_rw;          /* bytes per NBD read/write, multiple of lbs */
  uint64_t max_zt;          /* bytes per NBD trim/zero, multiple of lbs */
  bool read_only;
  bool can_flush, can_fua, can_trim, can_zero;
  bool no_flush;            /* cache=unsafe */
  bool cache_present;       /* the device reports a volatile write cache */
  bool wce_changeable;
  bool wce_initial;
  bool discard;             /* discard / DSM / TRIM offered */
  bool write_zeroes;        /* write zeroes offered */
  bool wce;                 /* write cache on, for new writes */
  uint8_t ata_mult;         /* ATA: current READ/WRITE MULTIPLE count */
  const char *serial, *model, *firmware;
};

enum dv_op { DV_OP_NONE, DV_OP_READ, DV_OP_WRITE, DV_OP_FLUSH,
             DV_OP_TRIM, DV_OP_ZERO };

/* Which way a failure is reported (NVMe Write Fault vs Unrecovered Read
 * Error, ATA ABRT vs UNC, ...). */
enum dv_errkind { DV_ERR_READ, DV_ERR_WRITE, DV_ERR_FLUSH, DV_ERR_SETWCE };

enum dv_wce_change { DV_WCE_KEEP, DV_WCE_ON, DV_WCE_OFF };

struct dv_range {
  uint64_t off, len;        /* bytes */
};

struct dv_plan {
  enum dv_op op;
  uint32_t flags;           /* DV_NBD_* on every request */
  bool flush_after;         /* FUA emulation: flush before completing */
  bool volatile_write;      /* completes before it is durable */
  bool drain_first;         /* wait until no volatile write is in flight */
  enum dv_wce_change wce;
  enum dv_errkind errkind;
  /* READ/WRITE: one range and its guest data (the command's iov);
   * TRIM/ZERO: ranges (none = nothing to send). */
  struct dv_range *ranges;  /* caller's array of DV_MAX_RANGES */
  unsigned nranges;
  uint64_t data_len;
  uint32_t used_extra;      /* virtio: bytes of used length besides data */
  bool set_ata_mult;        /* ATA SET MULTIPLE MODE: new count */
  uint8_t ata_mult;
};

/* What a decoder returns. */
enum dv_decoded {
  DV_REJECT = -1,           /* malformed: no completion */
  DV_DONE = 1,              /* completion filled in, nothing to send */
  DV_IO = 0,                /* execute the plan */
};

enum dv_decoded dv_virtio_decode(const struct dv_geom *g,
                                 const devemu_cmd *c, struct dv_plan *p,
                                 devemu_completion *out);
enum dv_decoded dv_nvme_decode(const struct dv_geom *g, const devemu_cmd *c,
                               struct dv_plan *p, devemu_completion *out);
enum dv_decoded dv_nvme_admin_decode(const struct dv_geom *g,
                                     const devemu_cmd *c, struct dv_plan *p,
                                     devemu_completion *out);
enum dv_decoded dv_ata_decode(const struct dv_geom *g, const devemu_cmd *c,
                              struct dv_plan *p, devemu_completion *out);

/* The completion of an executed plan: err is 0 or the first errno. */
void dv_virtio_finish(const struct dv_plan *p, int err, uint64_t fail_off,
                      devemu_completion *out);
void dv_nvme_finish(const struct dv_plan *p, int err, uint64_t fail_off,
                    devemu_completion *out);
void dv_ata_finish(const struct dv_geom *g, const struct dv_plan *p, int err,
                   uint64_t fail_off, devemu_completion *out);

/* Identity data (identify.c, virtio-config.c) */
uint16_t dv_nvme_identify(const struct dv_geom *g, uint8_t cns, uint8_t csi,
                          uint32_t nsid, uint8_t out[4096]);
void dv_ata_identify(const struct dv_geom *g, uint16_t w[256]);
uint64_t dv_virtio_features(const struct dv_geom *g);
size_t dv_virtio_config(const struct dv_geom *g, uint8_t cfg[64]);

/* Shared helpers (plan.c) */

/* Sum of the iov lengths; false if the array is invalid or overflows. */
bool dv_iov_total(const devemu_iov *iov, unsigned niov, uint64_t *total);
/* Copy between an iov and a flat buffer, from byte offset off. */
void dv_iov_to_buf(const devemu_iov *iov, unsigned niov, uint64_t off,
                   void *buf, size_t len);
void dv_iov_from_buf(const devemu_iov *iov, unsigned niov, uint64_t off,
                     const void *buf, size_t len);
/* Is [off, off+len) inside an export of size bytes?  Overflow-safe. */
static inline bool
dv_in_range(uint64_t off, uint64_t len, uint64_t size)
{
  return off <= size && len <= size - off;
}
/* Set the flags and follow-ups of a write (or write zeroes): FUA when the
 * guest asked for it or the write cache is off, native or emulated. */
void dv_plan_write_flags(const struct dv_geom *g, bool guest_fua,
                         struct dv_plan *p);
/* Start a plan of one range. */
void dv_plan_init(struct dv_plan *p, enum dv_op op, uint64_t off,
                  uint64_t len);

static inline uint16_t dv_le16(const uint8_t *p)
{ return (uint16_t) (p[0] | p[1] << 8); }
static inline uint32_t dv_le32(const uint8_t *p)
{ return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 |
         (uint32_t) p[3] << 24; }
static inline uint64_t dv_le64(const uint8_t *p)
{ return dv_le32(p) | (uint64_t) dv_le32(p + 4) << 32; }
static inline void dv_put16(uint8_t *p, uint16_t v)
{ p[0] = v; p[1] = v >> 8; }
static inline void dv_put32(uint8_t *p, uint32_t v)
{ dv_put16(p, v); dv_put16(p + 2, v >> 16); }
static inline void dv_put64(uint8_t *p, uint64_t v)
{ dv_put32(p, v); dv_put32(p + 4, v >> 32); }

#endif /* DEVEMU_INTERNAL_H */
