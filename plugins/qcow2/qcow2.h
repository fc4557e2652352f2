/* The qcow2 format layer: shared state and the functions its files share.
 *
 * Two paths serve requests (see docs/architecture.md):
 *
 *  - The fast path runs on the reactor that received the request: reads and
 *    in-place overwrites whose L2 tables are cached and whose clusters need
 *    no metadata change are translated and sent down as child requests.
 *
 *  - Everything else (cache misses, allocation, copy-on-write, compressed
 *    clusters, zeroing, discard, flush, block status) is a job for the
 *    image's metadata thread, which owns the metadata and does its I/O
 *    through the layer below synchronously — posting each request to a
 *    reactor and sleeping until it completes, so no reactor ever waits.
 *
 * q->lock guards what both paths touch: the L1 table, the L2 cache and the
 * fast path's in-flight count.  It is held only for memory operations,
 * never across I/O.  The refcount structures belong to the metadata thread
 * alone. */
#ifndef NBDS_QCOW2_H
#define NBDS_QCOW2_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "nbdstack/layer.h"
#include "nbdstack/reactor.h"

#include "format.h"

/* A cache of metadata tables (L2 tables, refcount blocks), each one
 * cluster, keyed by host offset, kept as the bytes on disk. */
struct qcow2_table {
  uint64_t offset;          /* 0: slot unused */
  uint8_t *data;            /* cluster_size bytes, big-endian as on disk */
  bool dirty;
  bool suspect;             /* an entry points at metadata: no fast path */
  uint64_t used;            /* LRU clock */
  struct qcow2_table *hnext;
};

struct qcow2_cache {
  struct qcow2_table *slots;
  size_t nslots;
  struct qcow2_table **hash;
  size_t nhash;             /* power of two */
  uint64_t clock;
  const char *what;         /* "L2 table", "refcount block" */
};

/* A job for the metadata thread. */
struct qcow2_job {
  struct nbds_req *req;        /* the request from above */
  struct nbds_reactor *reactor;/* where it came from and completes */
  int err;
  struct qcow2_alloc *alloc;   /* set: back for the link (alloc.c) */
  struct qcow2_job *next;
};

/* What a job returns when it completes later (an errno is positive). */
#define QCOW2_PENDING (-1)

/* A cluster whose refcount drops once the metadata that stopped using it
 * is on disk. */
struct qcow2_free {
  uint64_t offset;
  uint64_t bytes;
  bool discard;   /* freed by a guest discard: punch it out of the file */
};

struct qcow2 {
  struct nbds_layer *layer;    /* this layer */
  struct nbds_layer *file;     /* the image (the layer below) */
  struct nbds_layer *backing;  /* the backing stack, or NULL */
  bool overlay;                /* -s: file is a temporary image of ours,
                                * backing the layer below (overlay.c) */
  uint64_t backing_size;
  struct qcow2_header h;
  bool readonly;
  bool snapshot_view;          /* -l: serving an internal snapshot */
  uint64_t size;               /* virtual size served */
  bool allow_bitmaps;          /* writes mark persistent bitmaps in use */
  atomic_bool corrupt;         /* marked corrupt while open: no more writes */

  /* Geometry. */
  unsigned cluster_bits;
  uint64_t cluster_size;
  unsigned l2_bits;            /* log2 of entries per L2 table */
  unsigned l2_entry_size;      /* 8, or 16 with extended L2 */
  uint64_t subcluster_size;    /* cluster_size / 32 with extended L2 */
  uint64_t refblock_entries;   /* refcounts per refcount block */

  /* Under lock: the L1 table in use, its dirty 4 KiB pages, the L2
   * cache. */
  pthread_mutex_t lock;
  uint8_t *l1;                 /* l1_clusters whole clusters, big-endian */
  uint64_t l1_entries;         /* entries in use (l1_size) */
  uint64_t l1_offset;
  uint64_t l1_bytes;           /* allocated, whole clusters */
  uint8_t *l1_dirty;           /* one byte per 4 KiB page */
  uint8_t *l2_vetted;          /* one byte per L1 entry: QCOW2_L2_* */
  struct qcow2_cache l2;
  atomic_uint fast_inflight;   /* fast-path I/O not yet completed */

  /* The metadata thread's. */
  uint64_t *reftable;          /* host-endian copy */
  uint64_t reftable_entries;
  uint64_t reftable_offset;
  bool reftable_dirty;
  uint64_t *refblock_index;    /* sorted refcount block offsets, for */
  size_t nrefblock_index;      /* overlap checks; rebuilt when stale */
  bool refblock_index_stale;
  struct qcow2_cache refblocks;
  uint64_t free_hint;          /* first cluster that may be free */
  uint64_t end;                /* first cluster past everything in use */
  uint64_t open_end;           /* end once open: what tables as they were
                                  at open may point below */
  uint8_t *claimed;            /* writable: a bit per cluster below
                                  open_end in use by a vetted entry or
                                  handed out by the allocator (vet.c) */
  struct qcow2_free *frees;    /* deferred refcount decrements */
  size_t nfrees, frees_cap;
  bool unsynced;               /* written since the last flush below */
  int flush_err;               /* sticky: a failed flush lost metadata */
  bool marked_in_use;          /* bitmaps set in use */

  /* The metadata thread and its queue. */
  pthread_t thread;
  bool thread_started;
  pthread_mutex_t qlock;
  pthread_cond_t qcond;
  struct qcow2_job *jobs, **jobs_tail;
  bool stopping;
  struct nbds_reactor *io_reactor;  /* where the current job's I/O goes */
  struct qcow2_alloc *allocs;  /* allocating writes in flight (alloc.c) */
  struct qcow2_job *parked, **parked_tail;  /* waiting for their links */
};

/* ---- overlay.c: -s, a temporary image over the layer below ---- */
/* Create the temporary image and make it q->file, with the layer below as
 * q->backing.  Returns -1 with nbds_error() set. */
int qcow2_overlay_open(struct qcow2 *q, const struct nbds_kv *kv, size_t nkv);

/* ---- io.c: the metadata thread and synchronous I/O ---- */
int qcow2_thread_start(struct qcow2 *q);
/* Queue a job again, first in line (from any thread). */
void qcow2_job_requeue(struct qcow2 *q, struct qcow2_job *j);
/* Put the parked jobs back first in line, in their order. */
void qcow2_jobs_unpark(struct qcow2 *q);
void qcow2_thread_stop(struct qcow2 *q);
void qcow2_job_submit(struct qcow2 *q, struct nbds_req *req);
/* Run a request to layer l and wait for it.  On the metadata thread the
 * request goes through the job's reactor; elsewhere (open and close, on
 * a reactor thread) it is submitted directly and the reactor's loop runs
 * until it completes. */
int qcow2_io(struct qcow2 *q, struct nbds_layer *l, struct nbds_req *r);
int qcow2_pread(struct qcow2 *q, void *buf, uint64_t len, uint64_t off);
int qcow2_pwrite(struct qcow2 *q, const void *buf, uint64_t len,
                 uint64_t off);
int qcow2_pwritev(struct qcow2 *q, struct iovec *iov, int iovcnt,
                  uint64_t off, uint32_t flags);
int qcow2_sync(struct qcow2 *q);
/* Read from the backing stack; bytes past its end read as zeroes. */
int qcow2_backing_read(struct qcow2 *q, struct iovec *iov, int iovcnt,
                       uint64_t off, uint64_t len);

/* ---- cache.c ---- */
int qcow2_cache_init(struct qcow2_cache *c, size_t nslots, const char *what);
void qcow2_cache_destroy(struct qcow2_cache *c);
struct qcow2_table *qcow2_cache_find(struct qcow2_cache *c, uint64_t offset);
/* Get the table at offset, reading it on a miss (metadata thread). */
int qcow2_cache_get(struct qcow2 *q, struct qcow2_cache *c, uint64_t offset,
                    struct qcow2_table **out);
/* A slot for a new table at offset, zero-filled and dirty. */
int qcow2_cache_new(struct qcow2 *q, struct qcow2_cache *c, uint64_t offset,
                    struct qcow2_table **out);
/* Write one dirty table; the caller has put what it depends on on disk. */
int qcow2_cache_write(struct qcow2 *q, struct qcow2_cache *c,
                      struct qcow2_table *t);
int qcow2_cache_write_all(struct qcow2 *q, struct qcow2_cache *c,
                          bool *wrote);
void qcow2_cache_drop(struct qcow2_cache *c, uint64_t offset);

/* ---- refcount.c (metadata thread) ---- */
int qcow2_refcount_load(struct qcow2 *q);
int qcow2_refcount_get(struct qcow2 *q, uint64_t cluster, uint64_t *value);
/* The same for clusters looked up in ascending order: c remembers the
 * refcount block of the last one (start with {0}).  Valid only while no
 * other refcount call comes in between. */
struct qcow2_refcount_cursor {
  bool valid;
  uint64_t range;
  struct qcow2_table *t;
};
int qcow2_refcount_get_next(struct qcow2 *q, struct qcow2_refcount_cursor *c,
                            uint64_t cluster, uint64_t *value);
int qcow2_refcount_set(struct qcow2 *q, uint64_t cluster, uint64_t value);
/* Allocate n contiguous clusters with refcount 1; *offset is the host
 * offset of the first.  *zeroed (if not NULL) tells whether they were
 * appended past everything ever used, so they read as zeroes. */
int qcow2_alloc_clusters(struct qcow2 *q, uint64_t n, uint64_t *offset,
                         bool *zeroed);
/* Allocate `bytes` for a table that lives at its own place, as
 * alloc_clusters, rounded up to clusters. */
int qcow2_refcount_adjust(struct qcow2 *q, uint64_t offset, uint64_t bytes,
                          int delta);
/* Drop, later, what a replaced L2 entry held (write.c); discard: it was
 * replaced by a guest's TRIM or WRITE_ZEROES. */
int qcow2_release_entry(struct qcow2 *q, uint64_t entry, bool discard);
/* Drop a reference once the metadata no longer pointing at it is on disk
 * (see flush.c). */
int qcow2_free_later(struct qcow2 *q, uint64_t offset, uint64_t bytes,
                     bool discard);
int qcow2_apply_frees(struct qcow2 *q);
int qcow2_refcount_write_back(struct qcow2 *q, bool *wrote);
void qcow2_refcount_destroy(struct qcow2 *q);

/* ---- map.c: guest offset to host ---- */
struct qcow2_map {
  enum qcow2_type type;
  uint64_t host;        /* NORMAL: host offset of the guest offset;
                           COMPRESSED: the L2 entry */
  uint64_t bytes;       /* length of the run with this mapping, from the
                           guest offset, within one L2 table */
  bool copied;          /* NORMAL: refcount is 1, writable in place */
  bool clean;           /* the L2 table is not dirty */
};
/* Look up the mapping at guest offset `off` for at most `max` bytes
 * without I/O (reactor or metadata thread, q->lock held).  Returns 1 and
 * fills *m, 0 when the L2 table is not cached, -1 when an entry is
 * invalid. */
int qcow2_map_cached(struct qcow2 *q, uint64_t off, uint64_t max,
                     struct qcow2_map *m);
/* The same, reading the L2 table when needed (metadata thread). */
int qcow2_map(struct qcow2 *q, uint64_t off, uint64_t max,
              struct qcow2_map *m);
/* The L2 table for guest offset off, ready for modification: allocated
 * when missing and copied when shared, with the L1 entry updated
 * (metadata thread).  *index is the entry's index in the table. */
int qcow2_l2_for_write(struct qcow2 *q, uint64_t off,
                       struct qcow2_table **t, uint64_t *index);
uint64_t qcow2_l2_get(struct qcow2 *q, const struct qcow2_table *t,
                      uint64_t index, uint64_t *bitmap);
/* Set an entry (and bitmap with extended L2); q->lock is taken. */
void qcow2_l2_set(struct qcow2 *q, struct qcow2_table *t, uint64_t index,
                  uint64_t entry, uint64_t bitmap);
uint64_t qcow2_l1_get(struct qcow2 *q, uint64_t index);
/* Report an inconsistency found in the metadata: log it, and when the
 * image is writable mark it corrupt as QEMU does.  Returns EIO. */
int qcow2_corrupt(struct qcow2 *q, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));
/* Does [off, off+len) of the image file overlap the header or a table this
 * layer knows (refcount blocks included)?  Not the L2 tables: see below. */
bool qcow2_overlaps_metadata(struct qcow2 *q, uint64_t off, uint64_t len);
/* The same, and the cached L2 tables: where data may not be written. */
bool qcow2_overlaps_data_target(struct qcow2 *q, uint64_t off, uint64_t len);
/* The same for many clusters at once: does any of the sorted cluster
 * offsets hosts[0..n) overlap the metadata or a cached L2 table? */
bool qcow2_any_data_target(struct qcow2 *q, const uint64_t *hosts, size_t n);
/* qsort's comparison of uint64_t. */
int qcow2_cmp_u64(const void *a, const void *b);

/* ---- vet.c: a freshly read L2 table ---- */
#define QCOW2_L2_VETTED  1   /* q->l2_vetted: the table was vetted, */
#define QCOW2_L2_SUSPECT 2   /* and found suspect */
/* Mark t suspect when an entry points at metadata (no fast path), and on
 * a writable image check the entries against the refcounts: damage marks
 * the image corrupt, a COPIED flag on a shared cluster is dropped from
 * the cached copy.  An error means the table could not be vetted (a
 * refcount block could not be read): the caller drops it. */
int qcow2_vet_table(struct qcow2 *q, struct qcow2_table *t);
/* The allocator hands out cluster c: a table vetted later may not use it
 * unless its refcount says it is shared. */
void qcow2_claim(struct qcow2 *q, uint64_t c);
/* At a read-write open: L1 entries sharing an L2 table must be counted.
 * -1 with the error set when not. */
int qcow2_vet_l1(struct qcow2 *q);

/* ---- read.c ---- */
int qcow2_read_compressed(struct qcow2 *q, uint64_t entry, uint8_t *out);
/* Guest bytes [guest, guest+len) into iov from byte iov_off of it. */
int qcow2_read_range(struct qcow2 *q, struct iovec *iov, int iovcnt,
                     uint64_t iov_off, uint64_t guest, uint64_t len);

/* ---- the request kinds (metadata thread) ---- */
int qcow2_do_read(struct qcow2 *q, struct nbds_req *req);
int qcow2_do_write(struct qcow2 *q, struct nbds_req *req);

/* ---- write.c: a data write into new host clusters ---- */
/* The request's bytes for guest [guest, guest+len) and the old contents
 * for the rest of [rs, re), at the same place in the host run `target`
 * (which holds rs's cluster).  When the target reads as zeroes already (a
 * run appended to the image) and the old contents are zeroes, only the
 * request's bytes are written: a 4 KiB write into a new 64 KiB cluster
 * writes 4 KiB. */
struct qcow2_merge {
  struct iovec *iov;
  int iovcnt;
  uint8_t *buf;                /* the old contents */
  uint64_t host;               /* where iov goes */
};
int qcow2_merge_prepare(struct qcow2 *q, struct nbds_req *req,
                        uint64_t req_off, uint64_t guest, uint64_t len,
                        uint64_t rs, uint64_t re, uint64_t target,
                        bool zeroed, struct qcow2_merge *mw);
void qcow2_merge_free(struct qcow2_merge *mw);

/* ---- alloc.c: allocating writes without waiting for their data ---- */
/* Is any guest byte of [off, off+len) in a cluster being allocated? */
bool qcow2_alloc_busy(struct qcow2 *q, uint64_t off, uint64_t len);
/* Start j's write as an allocation when it falls wholly in clusters
 * without a host cluster.  Returns false when it does not (write it
 * synchronously); true when taken, with *err QCOW2_PENDING or the error
 * to complete the request with. */
bool qcow2_alloc_start(struct qcow2 *q, struct qcow2_job *j, int *err);
/* The link job: set the L2 entries, complete (FUA: flush).  Returns the
 * request's result. */
int qcow2_alloc_link(struct qcow2 *q, struct qcow2_job *j);
int qcow2_do_zero(struct qcow2 *q, struct nbds_req *req);
int qcow2_do_flush(struct qcow2 *q);
int qcow2_do_block_status(struct qcow2 *q, struct nbds_req *req);

/* ---- fastpath.c (reactor) ---- */
/* Serve req on the calling reactor when its clusters allow; false when it
 * must go to the metadata thread. */
bool qcow2_fast_submit(struct qcow2 *q, struct nbds_req *req);

/* ---- open.c, repair.c ---- */
int qcow2_open_image(struct qcow2 *q, const char *snapshot,
                     const char *l2_cache_size);
int qcow2_repair_refcounts(struct qcow2 *q);
int qcow2_write_header_u64(struct qcow2 *q, unsigned off, uint64_t v);

/* ---- iov.c ---- */
/* Describe bytes [off, off+len) of an iovec array in out (at most max
 * entries); returns the count, or -1 if max is too small. */
int qcow2_iov_slice(const struct iovec *iov, int iovcnt, uint64_t off,
                    uint64_t len, struct iovec *out, int max);
void qcow2_iov_zero(const struct iovec *iov, int iovcnt, uint64_t off,
                    uint64_t len);
void qcow2_iov_to_buf(const struct iovec *iov, int iovcnt, uint64_t off,
                      uint64_t len, uint8_t *buf);
void qcow2_buf_to_iov(const uint8_t *buf, uint64_t len,
                      const struct iovec *iov, int iovcnt, uint64_t off);

/* Extended L2: the allocation bits of subclusters first..last (the zero
 * bits are these shifted left by 32). */
static inline uint64_t
qcow2_subcluster_bits(unsigned first, unsigned last)
{
  return ((UINT64_C(1) << (last + 1)) - 1) & ~((UINT64_C(1) << first) - 1);
}

static inline uint64_t
qcow2_cluster_start(const struct qcow2 *q, uint64_t off)
{
  return off & ~(q->cluster_size - 1);
}

#endif
