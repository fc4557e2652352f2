/* nbdstack — the layer contract.
 *
 * An export is a stack of layers: a format (raw, qcow2) over the cache
 * policy over a protocol driver (file, nbd, ...).  Every layer implements
 * this one interface and talks to the layer below it only through it.
 *
 * Requests are asynchronous.  A layer receives a request through submit()
 * and completes it later by calling nbds_req_complete() exactly once, on
 * the reactor thread that submitted it.  A layer may complete a request
 * before submit() returns (for example a no-op flush); a submitter must
 * not touch the request after submit() except from its done callback.
 *
 * While a request is in the stack, a layer may rewrite its offset, count
 * and flags before passing it down (raw's offset does); the submitter keeps
 * its own copy of anything it needs afterwards.  Buffers are never copied
 * on the way down: the iovecs a WRITE carries are the ones the disk write
 * uses, and a READ is filled in place.
 */
#ifndef NBDSTACK_LAYER_H
#define NBDSTACK_LAYER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#ifdef _WIN32
/* mingw-w64 has no <sys/uio.h>: the same layout, for the Win32 build. */
struct iovec {
  void *iov_base;
  size_t iov_len;
};
#else
#include <sys/uio.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

enum nbds_op {
  NBDS_OP_READ,
  NBDS_OP_WRITE,
  NBDS_OP_FLUSH,
  NBDS_OP_TRIM,
  NBDS_OP_ZERO,
  NBDS_OP_BLOCK_STATUS,
  NBDS_OP_CACHE,
};

/* Request flags.  The server only passes a flag down when the top of the
 * stack advertised it. */
#define NBDS_F_FUA       (1u << 0)  /* durable before completion */
#define NBDS_F_NO_HOLE   (1u << 1)  /* ZERO: do not deallocate */
#define NBDS_F_FAST_ZERO (1u << 2)  /* ZERO: fail with ENOTSUP unless cheap */
#define NBDS_F_REQ_ONE   (1u << 3)  /* BLOCK_STATUS: one extent is enough */
/* BLOCK_STATUS: describe allocation depth (qemu:allocation-depth), not
 * base:allocation.  Only sent to a layer whose caps say can_alloc_depth. */
#define NBDS_F_DEPTH     (1u << 4)

/* How a layer provides FUA. */
enum nbds_fua {
  NBDS_FUA_NONE,     /* cannot: the server does not advertise FUA */
  NBDS_FUA_EMULATE,  /* write then flush */
  NBDS_FUA_NATIVE,   /* the write itself is durable (RWF_DSYNC, NBD FUA) */
};

/* What a layer can do.  Computed bottom-up when the stack opens: each
 * layer starts from the caps of the layer below and changes what it
 * changes.  The server advertises exactly the caps of the top layer. */
struct nbds_caps {
  bool can_write;
  bool can_flush;
  enum nbds_fua fua;
  bool can_trim;
  bool can_zero;
  bool can_fast_zero;
  bool can_extents;
  bool can_cache;
  bool can_multi_conn;  /* a flush covers writes from every connection */
  /* BLOCK_STATUS with NBDS_F_DEPTH: the layer keeps a backing chain
   * (qcow2).  A layer without it has everything at depth 1, as QEMU
   * reports images that have no backing file. */
  bool can_alloc_depth;
  uint32_t block_min;   /* power of two, 1..64 KiB */
  uint32_t block_pref;  /* power of two, >= max(block_min, 512) */
  uint32_t block_max;   /* largest READ/WRITE payload */
};

/* Extent flags for NBDS_OP_BLOCK_STATUS (base:allocation).  With
 * NBDS_F_DEPTH, an extent's flags hold its depth instead: 0 unallocated
 * in the whole chain, 1 this image, 2 its backing file, and so on. */
#define NBDS_EXTENT_HOLE (1u << 0)
#define NBDS_EXTENT_ZERO (1u << 1)

struct nbds_extent {
  uint64_t length;
  uint32_t flags;
};

/* Extents a BLOCK_STATUS fills, consecutively from the request offset.  A
 * layer adds at least one extent; the server trims the list to the
 * request. */
struct nbds_extents {
  struct nbds_extent *v;
  size_t count;
  size_t cap;        /* v holds at most this many; further adds are dropped */
  uint64_t covered;  /* total length added so far */
};

/* Add an extent, merging with the previous one when flags match.  Returns
 * false when the list is full (the caller stops walking). */
bool nbds_extents_add(struct nbds_extents *ex, uint64_t length,
                      uint32_t flags);

struct nbds_req;
typedef void (*nbds_done_fn)(struct nbds_req *req, int err);

struct nbds_req {
  enum nbds_op op;
  uint32_t flags;           /* NBDS_F_* */
  uint64_t offset;
  uint64_t count;           /* bytes; for READ/WRITE the total of iov */
  struct iovec *iov;        /* READ: filled; WRITE: source */
  int iovcnt;
  struct nbds_extents *extents;  /* BLOCK_STATUS only */

  nbds_done_fn done;        /* set by the submitter */
  void *opaque;             /* the submitter's */
  struct nbds_req *parent;  /* set by nbds_req_child() */
  uint64_t scratch[4];      /* for the layer that allocated this request */
};

/* Complete a request: err is 0 or a positive errno value. */
static inline void
nbds_req_complete(struct nbds_req *req, int err)
{
  req->done(req, err);
}

/* A layer that must act when the layer below completes (write-then-flush,
 * split requests, read-modify-write) submits child requests.  A child
 * starts as a copy of the parent's op, flags, range and buffers, with
 * parent set and done/opaque cleared; it comes from a per-thread free list,
 * so this costs no malloc on the hot path.  Free it in its done callback. */
struct nbds_req *nbds_req_child(struct nbds_req *parent);
void nbds_req_free(struct nbds_req *req);

/* A key=value setting for opening a layer (from the command line or a
 * configuration file). */
struct nbds_kv {
  const char *key;
  const char *value;
};

struct nbds_layer;

/* A counter or gauge a layer keeps (the block cache's hits and misses),
 * as its stats op reports it. */
enum nbds_stat_kind {
  NBDS_STAT_COUNTER,  /* only grows */
  NBDS_STAT_GAUGE,    /* a level, now */
};

struct nbds_stat {
  const char *name;   /* [a-z0-9_]+, unique in the layer; a counter's name
                       * ends in _total, a size's in _bytes */
  const char *help;   /* one line, for people reading the metrics */
  enum nbds_stat_kind kind;
  uint64_t value;
};

typedef void (*nbds_stat_fn)(void *opaque, const struct nbds_stat *st);

struct nbds_layer_ops {
  const char *name;
  /* Open the layer over `below` (NULL for a protocol layer).  On failure
   * return -1 after nbds_error() set a message. */
  int (*open)(struct nbds_layer *l, const struct nbds_kv *kv, size_t nkv);
  /* Release everything.  All requests have completed. */
  void (*close)(struct nbds_layer *l);
  /* The export size in bytes.  NULL: the size of the layer below. */
  uint64_t (*size)(struct nbds_layer *l);
  /* Adjust caps, which hold the caps of the layer below (or the default
   * caps of nothing for a protocol layer).  NULL: pass them on. */
  void (*caps)(struct nbds_layer *l, struct nbds_caps *caps);
  /* Start a request.  Never blocks the calling reactor. */
  void (*submit)(struct nbds_layer *l, struct nbds_req *req);
  /* Optional: report the layer's own counters by calling emit(opaque, st)
   * once per value, always the same names in the same order.  The server
   * calls it for each layer of the stack that has it, from its metrics
   * thread while requests run on the reactors, so it must only read what
   * is safe to read concurrently (atomics), never block, never allocate.
   * It does not recurse: each layer reports only itself. */
  void (*stats)(struct nbds_layer *l, nbds_stat_fn emit, void *opaque);
};

struct nbds_layer {
  const struct nbds_layer_ops *ops;
  struct nbds_layer *below;
  void *priv;               /* the layer's own state */
  struct nbds_caps caps;    /* filled by nbds_layer_open */
  uint64_t size;            /* filled by nbds_layer_open */
};

/* Open a layer of the named type over `below`, compute its caps and size.
 * Returns NULL with a message from nbds_last_error() on failure (`below`
 * is then left open for the caller). */
struct nbds_layer *nbds_layer_open(const char *type, struct nbds_layer *below,
                                   const struct nbds_kv *kv, size_t nkv);
/* Close a layer and every layer below it. */
void nbds_layer_close_stack(struct nbds_layer *top);

static inline void
nbds_layer_submit(struct nbds_layer *l, struct nbds_req *req)
{
  l->ops->submit(l, req);
}

/* Helpers for open(): look up a key, parse common values. */
const char *nbds_kv_get(const struct nbds_kv *kv, size_t nkv,
                        const char *key);
/* Every key must be in `known` (NULL-terminated), else an error names it. */
int nbds_kv_check(const char *layer, const struct nbds_kv *kv, size_t nkv,
                  const char *const *known);
/* A size: decimal digits with an optional K, M or G suffix (powers of
 * 1024).  0, or -1 when malformed or too large. */
int nbds_parse_size(const char *s, uint64_t *out);

/* A one-line error message for the current thread. */
void nbds_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *nbds_last_error(void);

/* Registration: every layer type the build knows.  */
struct nbds_layer_type {
  const char *name;
  const struct nbds_layer_ops *ops;
};
const struct nbds_layer_ops *nbds_layer_type_find(const char *name);

#ifdef __cplusplus
}
#endif

#endif
