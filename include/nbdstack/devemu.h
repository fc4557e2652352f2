/* libdevemu — virtio-blk, NVMe and IDE/ATA device frontends as in-process
 * NBD clients.
 *
 * A virtual machine monitor (VMM) hands devemu guest device commands in
 * the devices' own numeric layouts (a virtio-blk request header, a 64-byte
 * NVMe submission queue entry, an ATA taskfile) together with the guest
 * data buffers it has already mapped.  devemu turns each command into NBD
 * requests through libnbd's asynchronous API, with the FUA and flush flags
 * the device semantics and the cache mode require, and reports one
 * completion per command through a callback.
 *
 * Event loop.  devemu never blocks a thread per request.  The VMM polls
 * devemu_backend_fd() for devemu_backend_events() (re-read them after every
 * dispatch) and calls devemu_backend_dispatch() with what poll returned.
 * Completions are delivered from inside devemu_backend_dispatch() or
 * devemu_submit(), never from inside libnbd: the completion callback may
 * call devemu_submit() again.
 *
 * Guest memory.  The buffers a command names must stay mapped and must not
 * be reused by the guest until its completion has been delivered.  Only
 * devemu_dev_reset() and devemu_dev_free() wait (by polling the backend)
 * for the commands still in flight.
 *
 * Threads.  A backend and its devices belong to one thread (the VMM's I/O
 * thread); devemu does no locking of its own.
 *
 * Build: pkg-config --cflags --libs devemu
 */
#ifndef NBDSTACK_DEVEMU_H
#define NBDSTACK_DEVEMU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define DEVEMU_API __attribute__((visibility("default")))
#else
#define DEVEMU_API
#endif

struct nbd_handle;

/* ---- Backend: one libnbd handle, one NBD connection ---- */

typedef struct devemu_backend devemu_backend;

/* Connect (synchronously, before the guest starts) to an NBD URI such as
 * nbd+unix:///?socket=/run/disk.sock.  On failure returns NULL and, if
 * errmsg is not NULL, a malloc'ed message the caller frees. */
DEVEMU_API devemu_backend *devemu_backend_connect_uri(const char *uri,
                                                      char **errmsg);

/* Use a handle that is already connected (nbd_aio_is_ready).  With
 * take_ownership, devemu_backend_close() closes it. */
DEVEMU_API devemu_backend *devemu_backend_wrap(struct nbd_handle *h,
                                               bool take_ownership,
                                               char **errmsg);

/* Close the backend.  Every device on it must have been freed. */
DEVEMU_API void devemu_backend_close(devemu_backend *b);

/* The file descriptor to poll, and the poll(2) events (POLLIN, POLLOUT)
 * to poll it for right now. */
DEVEMU_API int devemu_backend_fd(devemu_backend *b);
DEVEMU_API short devemu_backend_events(devemu_backend *b);

/* Tell libnbd what poll returned for the fd (revents may be 0), then issue
 * follow-up NBD requests and deliver finished completions.  Returns 0, or
 * -1 when the connection is dead (every command in flight has then been
 * completed with an error). */
DEVEMU_API int devemu_backend_dispatch(devemu_backend *b, short revents);

/* A convenience loop: poll the fd once for up to timeout_ms (-1 = no
 * limit) and dispatch.  Returns what dispatch returns. */
DEVEMU_API int devemu_backend_poll(devemu_backend *b, int timeout_ms);

/* Guest commands accepted and not yet completed, on every device. */
DEVEMU_API unsigned devemu_backend_pending(devemu_backend *b);

/* The libnbd handle (for the VMM's own queries; do not issue commands). */
DEVEMU_API struct nbd_handle *devemu_backend_nbd(devemu_backend *b);

/* ---- Device frontends ---- */

typedef enum {
  DEVEMU_VIRTIO_BLK,
  DEVEMU_NVME,
  DEVEMU_ATA,
} devemu_kind;

/* QEMU's -drive cache= modes.  The mode sets the write cache's initial
 * state; "unsafe" also turns guest flushes into no-ops and drops FUA.
 * ("direct" has no meaning for an NBD client: none = writeback and
 * directsync = writethrough.) */
typedef enum {
  DEVEMU_CACHE_WRITEBACK,
  DEVEMU_CACHE_NONE,
  DEVEMU_CACHE_UNSAFE,
  DEVEMU_CACHE_WRITETHROUGH,
  DEVEMU_CACHE_DIRECTSYNC,
} devemu_cache;

/* Zero-initialised options give QEMU-like defaults. */
typedef struct devemu_opts {
  devemu_kind kind;
  devemu_cache cache;
  /* The guest may not switch the write cache; writethrough and
   * directsync then advertise no write cache at all. */
  bool wce_fixed;
  /* 512 (default) or 4096; raised to the server's minimum block size. */
  uint32_t logical_block_size;
  bool no_discard;             /* do not offer discard / DSM / TRIM */
  bool no_write_zeroes;        /* do not offer write zeroes */
  /* Largest NBD read/write request: 0 = the server's maximum (32 MiB if
   * it reports none), never above 64 MiB (libnbd's limit). */
  uint32_t max_transfer;
  const char *serial;          /* default "devemu0" */
  const char *model;           /* default "nbdstack devemu" */
  const char *firmware;        /* default the library version */
} devemu_opts;

typedef struct devemu_dev devemu_dev;

/* Create a device on a backend.  Returns NULL (and a malloc'ed errmsg)
 * when the export cannot back this device (size or block size). */
DEVEMU_API devemu_dev *devemu_dev_new(devemu_backend *b,
                                      const devemu_opts *o, char **errmsg);

/* Wait for the device's commands in flight (their completions are
 * delivered), then free it.  Blocks: call it only on teardown. */
DEVEMU_API void devemu_dev_free(devemu_dev *d);

/* Device reset: wait for the commands in flight as devemu_dev_free does,
 * then restore the initial write cache state (virtio writeback byte,
 * NVMe feature 06h, ATA IDENTIFY word 85) and the negotiated features.
 * Returns 0, or -1 if the connection died while draining. */
DEVEMU_API int devemu_dev_reset(devemu_dev *d);

/* The write cache state as the guest sees it right now. */
DEVEMU_API bool devemu_dev_get_wce(devemu_dev *d);

/* Export size as the device sees it (rounded down to whole blocks), and
 * the logical block size in bytes. */
DEVEMU_API uint64_t devemu_capacity_bytes(devemu_dev *d);
DEVEMU_API uint32_t devemu_block_size(devemu_dev *d);

/* ---- virtio-blk identity and configuration ---- */

/* Device feature bits devemu offers (VIRTIO_BLK_F_*; transport features
 * such as VERSION_1 are the VMM's to add). */
DEVEMU_API uint64_t devemu_virtio_host_features(devemu_dev *d);

/* The features the driver acknowledged.  Call at DRIVER_OK: without
 * CONFIG_WCE and FLUSH the device becomes writethrough (virtio spec
 * 5.2.6.1).  Returns 0, or -1 if acked holds bits not offered. */
DEVEMU_API int devemu_virtio_ack_features(devemu_dev *d, uint64_t acked);

/* Read config space (little-endian, VERSION_1 layout) from offset off.
 * Returns the number of bytes copied (0 past the visible size). */
DEVEMU_API size_t devemu_virtio_config_read(devemu_dev *d, uint32_t off,
                                            void *buf, size_t len);

/* Write config space: only the writeback byte (offset 32) is writable,
 * and only with CONFIG_WCE.  Writing 0 stops writes from being volatile
 * at once; the device then waits for volatile writes in flight, flushes,
 * and switches (devemu_dev_get_wce() reads 0 from the start).  Returns 0
 * or -1 (ignored write). */
DEVEMU_API int devemu_virtio_config_write(devemu_dev *d, uint32_t off,
                                          const void *buf, size_t len);

/* ---- NVMe identity ---- */

/* Fill a 4096-byte Identify data structure: CNS 00h (namespace nsid=1),
 * 01h (controller), 02h (active namespace list), 03h (namespace
 * identification descriptors), 06h with csi 0 (NVM controller limits).
 * Returns 0, or the NVMe status (SCT<<8 | SC, with DNR 0x4000) to
 * complete the Identify command with. */
DEVEMU_API int devemu_nvme_identify(devemu_dev *d, uint8_t cns, uint8_t csi,
                                    uint32_t nsid, uint8_t out[4096]);

/* ---- ATA identity ---- */

/* The 256 IDENTIFY DEVICE words (host byte order) as they are now. */
DEVEMU_API void devemu_ata_identify(devemu_dev *d, uint16_t words[256]);

/* ---- Commands ---- */

/* A guest buffer the VMM has mapped. */
typedef struct devemu_iov {
  void *base;
  size_t len;
} devemu_iov;

/* An ATA taskfile as the guest wrote it: the current and the previous
 * ("HOB") contents of the shadow registers. */
typedef struct devemu_ata_tf {
  uint8_t command, feature, count, lba_lo, lba_mid, lba_hi, device;
  uint8_t hob_feature, hob_count, hob_lba_lo, hob_lba_mid, hob_lba_hi;
} devemu_ata_tf;

#define DEVEMU_MAX_IOV 1024     /* longest iov array devemu accepts */

typedef struct devemu_cmd {
  uint64_t tag;                 /* the VMM's cookie, echoed back */
  union {
    /* virtio: the 16-byte request header (le32 type, le32 reserved,
     * le64 sector), gathered by the VMM. */
    uint8_t virtio_hdr[16];
    uint8_t nvme_sqe[64];       /* NVMe: the submission queue entry */
    devemu_ata_tf ata;
  } u;
  bool nvme_admin;              /* NVMe: from the admin queue */
  /* The data buffers only (not the virtio header or status byte), as
   * the VMM resolved them: device-writable for reads, device-readable
   * for writes and for the virtio / DSM range lists.  ATA PIO: the whole
   * transfer (the VMM runs the DRQ blocks). */
  const devemu_iov *iov;
  unsigned niov;
} devemu_cmd;

/* virtio status byte values */
#define DEVEMU_VIRTIO_S_OK     0
#define DEVEMU_VIRTIO_S_IOERR  1
#define DEVEMU_VIRTIO_S_UNSUPP 2

/* NVMe status (without the phase bit): SC | SCT << 8 | DNR */
#define DEVEMU_NVME_DNR 0x4000

/* ATA status and error register bits */
#define DEVEMU_ATA_DRDY 0x40
#define DEVEMU_ATA_DSC  0x10
#define DEVEMU_ATA_ERR  0x01
#define DEVEMU_ATA_UNC  0x40
#define DEVEMU_ATA_IDNF 0x10
#define DEVEMU_ATA_ABRT 0x04

typedef struct devemu_completion {
  uint64_t tag;
  int nbd_errno;                /* 0, or the first NBD error seen */
  union {
    struct {
      uint8_t status;           /* DEVEMU_VIRTIO_S_* */
      uint32_t used_len;        /* bytes written to the guest, +1 status */
    } virtio;
    struct {
      uint32_t dw0;             /* command-specific result */
      uint16_t status;          /* SC | SCT << 8 | DNR; shift left 1 and
                                   add the phase tag to post it */
    } nvme;
    struct {
      uint8_t status, error;    /* the status and error registers */
      /* For the LBA registers: the first failing LBA on a read/write
       * error, or the READ NATIVE MAX ADDRESS result. */
      uint64_t lba;
    } ata;
  } u;
} devemu_completion;

typedef void (*devemu_complete_fn)(void *opaque, const devemu_completion *c);

DEVEMU_API void devemu_set_completion(devemu_dev *d, devemu_complete_fn fn,
                                      void *opaque);

/* Submit a guest command.  Every accepted command is completed exactly
 * once through the completion callback.  Returns:
 *   1  completed before submit returned (validation, identify, no-ops);
 *   0  accepted; completes from a later dispatch (or already has);
 *  -1  not accepted, no completion: a malformed request the device must
 *      treat as a device error (a virtio chain without its header), or
 *      an NVMe admin opcode devemu leaves to the VMM (queue management,
 *      logs, ...; errno ENOSYS). */
DEVEMU_API int devemu_submit(devemu_dev *d, const devemu_cmd *c);

#ifdef __cplusplus
}
#endif

#endif /* NBDSTACK_DEVEMU_H */
