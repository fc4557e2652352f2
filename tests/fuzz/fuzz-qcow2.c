/* libFuzzer target: the qcow2 layer opening a hostile image and walking
 * its metadata.
 *
 * The input is the image file itself, held by an in-memory "file" layer
 * whose requests complete before submit() returns.  Outside a reactor
 * (nbds_reactor_self() is NULL) qcow2_io() then needs no loop and
 * qcow2_job_submit() runs jobs inline, so the whole layer, metadata
 * thread work included, runs on the fuzzing thread.
 *
 * Control bytes choose how the image is opened and what follows: if the
 * input ends with "NBDSFUZZ", the 56 bytes before it are the control
 * bytes and are not part of the image (make-corpus.sh writes such
 * trailers); otherwise the last 56 bytes of the image double as control
 * bytes (so every mutation of the tail also changes what is done).
 *
 *   c[0] mode: bits 0-1: 0, 1 read-write, 2 readonly=on, 3 snapshot=NAME
 *        (bits 2-3 pick NAME: "1", "snap1", "snap2", "no-such");
 *        0x10 l2-cache-size=1k (the minimum cache: evictions);
 *        0x20 bitmaps=in-use; 0x40 the file below cannot write;
 *        0x80 after closing, reopen the result read-only and walk it
 *   c[1] the read walk: chunk 512 << (c[1] & 15) % 12; 0x80 three iovecs
 *   c[2..55] 9 requests of 6 bytes: op, offset (24 bits, a fraction of
 *        the disk), length - 1 (16 bits).  op & 7: 0 WRITE, 1 WRITE+FUA,
 *        2 ZERO, 3 ZERO+NO_HOLE, 4 TRIM, 5 FLUSH, 6 READ, 7 ZERO+FAST_ZERO;
 *        0x08 align to 4 KiB; 0x10 length x 32; 0x20 three iovecs;
 *        0x40 BLOCK_STATUS of the range afterwards.
 *
 * Per input: open; on failure nbds_last_error() must say why.  Else read
 * the whole disk (at most READ_BUDGET bytes, spread over a large disk),
 * BLOCK_STATUS over it, the requests above (a WRITE or ZERO that succeeds
 * is read back and must read as written), close.
 *
 * Oracles besides the sanitizers: a request must complete exactly once
 * before submit() returns; a successful BLOCK_STATUS adds an extent; data
 * written (or zeroed) successfully reads back. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "nbdstack/layer.h"

#define CTL_LEN 56
#define MAGIC "NBDSFUZZ"
#define MAGIC_LEN 8
#define FILE_CAP (64u << 20)       /* the in-memory file grows to this */
#define READ_BUDGET (64u << 20)    /* bytes the read walk reads at most */
#define MAX_READS 256              /* requests the read walk makes at most */
#define MAX_CHUNK (1u << 20)
#define MAX_STATUS_CALLS 64
#define NOPS 9

extern const struct nbds_layer_ops nbds_qcow2_ops;

/* The target's own messages: a copy of stderr taken at start-up, so they
 * survive -close_fd_mask=2 (which silences the layer's log lines, as
 * run.sh does: a hostile image makes a lot of them). */
static FILE *out;

/* ---- the in-memory file ---- */

struct memfile {
  uint8_t *buf;
  uint64_t len;      /* the file's size */
  uint64_t alloc;
};

static int
mem_grow(struct memfile *m, uint64_t end)
{
  if (end > FILE_CAP)
    return ENOSPC;
  if (end <= m->len)
    return 0;
  if (end > m->alloc) {
    uint64_t a = m->alloc ? m->alloc : 4096;
    while (a < end)
      a *= 2;
    if (a > FILE_CAP)
      a = FILE_CAP;
    uint8_t *b = realloc(m->buf, a);
    if (!b)
      return ENOMEM;
    m->buf = b;
    m->alloc = a;
  }
  memset(m->buf + m->len, 0, end - m->len);
  m->len = end;
  return 0;
}

static void
mem_submit(struct nbds_layer *l, struct nbds_req *req)
{
  struct memfile *m = l->priv;
  uint64_t off = req->offset, end = req->offset + req->count;
  int err = 0;
  if (end < off) {
    nbds_req_complete(req, EINVAL);
    return;
  }
  switch (req->op) {
  case NBDS_OP_READ: {
    uint64_t pos = off;
    for (int i = 0; i < req->iovcnt; i++) {
      uint8_t *p = req->iov[i].iov_base;
      uint64_t n = req->iov[i].iov_len;
      uint64_t in = pos < m->len ? m->len - pos : 0;
      if (in > n)
        in = n;
      if (in)
        memcpy(p, m->buf + pos, in);
      memset(p + in, 0, n - in);
      pos += n;
    }
    break;
  }
  case NBDS_OP_WRITE: {
    if (!l->caps.can_write) {
      err = EROFS;
      break;
    }
    uint64_t total = 0;
    for (int i = 0; i < req->iovcnt; i++)
      total += req->iov[i].iov_len;
    if (total != req->count) {
      fprintf(out, "fuzz-qcow2: WRITE count %llu, iovecs hold %llu\n",
              (unsigned long long) req->count, (unsigned long long) total);
      abort();
    }
    if ((err = mem_grow(m, end)))
      break;
    uint64_t pos = off;
    for (int i = 0; i < req->iovcnt; i++) {
      if (req->iov[i].iov_len)
        memcpy(m->buf + pos, req->iov[i].iov_base, req->iov[i].iov_len);
      pos += req->iov[i].iov_len;
    }
    break;
  }
  case NBDS_OP_FLUSH:
  case NBDS_OP_CACHE:
    break;
  case NBDS_OP_ZERO:
    if (!l->caps.can_write) {
      err = EROFS;
      break;
    }
    if ((err = mem_grow(m, end)))
      break;
    memset(m->buf + off, 0, req->count);
    break;
  case NBDS_OP_TRIM:
    if (!l->caps.can_write) {
      err = EROFS;
      break;
    }
    if (off < m->len)
      memset(m->buf + off, 0, (end < m->len ? end : m->len) - off);
    break;
  case NBDS_OP_BLOCK_STATUS:
    nbds_extents_add(req->extents, req->count, 0);
    break;
  }
  nbds_req_complete(req, err);
}

static uint64_t
mem_size(struct nbds_layer *l)
{
  struct memfile *m = l->priv;
  return m->len;
}

static void
mem_close(struct nbds_layer *l)
{
  struct memfile *m = l->priv;
  free(m->buf);
  free(m);
}

static const struct nbds_layer_ops mem_ops = {
  .name = "memfile",
  .close = mem_close,
  .size = mem_size,
  .submit = mem_submit,
};

static struct nbds_layer *
mem_open(const uint8_t *data, size_t len, bool writable)
{
  struct nbds_layer *l = calloc(1, sizeof *l);
  struct memfile *m = calloc(1, sizeof *m);
  if (!l || !m || mem_grow(m, len)) {
    fprintf(out, "fuzz-qcow2: out of memory\n");
    abort();
  }
  if (len)
    memcpy(m->buf, data, len);
  l->ops = &mem_ops;
  l->priv = m;
  l->caps = (struct nbds_caps) {
    .can_write = writable, .can_flush = true, .fua = NBDS_FUA_EMULATE,
    .can_trim = writable, .can_zero = writable, .can_fast_zero = false,
    .can_extents = true, .can_cache = true, .can_multi_conn = true,
    .block_min = 1, .block_pref = 4096, .block_max = 32u << 20,
  };
  l->size = len;
  return l;
}

/* ---- the layer registry libnbdscore's nbds_layer_open() looks in ---- */

/* A backing file the image names must never reach the real filesystem:
 * "file" always fails (cleanly, with a message). */
static int
nofile_open(struct nbds_layer *l, const struct nbds_kv *kv, size_t nkv)
{
  (void) l;
  const char *path = nbds_kv_get(kv, nkv, "file");
  nbds_error("file: '%s': no files in the fuzz target", path ? path : "");
  return -1;
}

static const struct nbds_layer_ops nofile_ops = {
  .name = "file",
  .open = nofile_open,
};

const struct nbds_layer_ops *
nbds_layer_type_find(const char *name)
{
  if (strcmp(name, "qcow2") == 0)
    return &nbds_qcow2_ops;
  if (strcmp(name, "file") == 0)
    return &nofile_ops;
  return NULL;
}

/* ---- requests ---- */

struct done {
  int calls;
  int err;
};

static void
on_done(struct nbds_req *req, int err)
{
  struct done *d = req->opaque;
  d->calls++;
  d->err = err;
}

static const char *const op_names[] = {
  "READ", "WRITE", "FLUSH", "TRIM", "ZERO", "BLOCK_STATUS", "CACHE",
};

/* FUZZ_QCOW2_TRACE=1: print every request and its result (for reading a
 * crash input); FUZZ_QCOW2_DUMP=PATH: write the image as a session that
 * ran to the end left it. */
static bool trace;
/* FUZZ_QCOW2_NO_VERIFY=1: report data that does not read back as written
 * without crashing (to fuzz past a known bug of that kind). */
static bool no_verify;

/* Submit and check the request completed once, synchronously. */
static int
run(struct nbds_layer *top, struct nbds_req *req)
{
  struct done d = { 0, 0 };
  enum nbds_op op = req->op;
  uint64_t off = req->offset, count = req->count;
  req->done = on_done;
  req->opaque = &d;
  req->parent = NULL;
  nbds_layer_submit(top, req);
  if (d.calls != 1) {
    fprintf(out, "fuzz-qcow2: %s at %llu, %llu bytes completed %d times "
            "(want once, before submit returns)\n", op_names[op],
            (unsigned long long) off, (unsigned long long) count, d.calls);
    abort();
  }
  if (trace)
    fprintf(out, "fuzz-qcow2: %s flags %#x at %llu, %llu bytes: %s\n",
            op_names[op], req->flags, (unsigned long long) off,
            (unsigned long long) count, d.err ? strerror(d.err) : "ok");
  if (d.err < 0 || d.err > 4095) {
    fprintf(out, "fuzz-qcow2: %s completed with err %d\n", op_names[op],
            d.err);
    abort();
  }
  return d.err;
}

/* A buffer as one iovec, or three uneven ones. */
static int
make_iov(struct iovec *iov, uint8_t *buf, uint64_t len, bool split)
{
  if (!split || len < 3) {
    iov[0] = (struct iovec) { buf, len };
    return 1;
  }
  uint64_t a = len / 3 + 1, b = len / 4;
  iov[0] = (struct iovec) { buf, a };
  iov[1] = (struct iovec) { buf + a, b };
  iov[2] = (struct iovec) { buf + a + b, len - a - b };
  return 3;
}

static uint8_t *iobuf, *iobuf2;  /* MAX_CHUNK + slack each, kept */

static int
do_read(struct nbds_layer *top, uint64_t off, uint64_t len, bool split,
        uint8_t *buf)
{
  struct iovec iov[3];
  struct nbds_req r = { .op = NBDS_OP_READ, .offset = off, .count = len };
  r.iovcnt = make_iov(iov, buf, len, split);
  r.iov = iov;
  return run(top, &r);
}

static void
read_walk(struct nbds_layer *top, uint8_t c1)
{
  uint64_t size = top->size;
  if (!size)
    return;
  uint64_t chunk = UINT64_C(512) << ((c1 & 15) % 12);
  bool split = c1 & 0x80;
  uint64_t span = size < READ_BUDGET ? size : READ_BUDGET;
  while (chunk < MAX_CHUNK && span / chunk > MAX_READS)
    chunk *= 2;
  uint64_t n = (span + chunk - 1) / chunk;
  for (uint64_t i = 0; i < n; i++) {
    /* The whole disk when it fits the budget, else n chunks spread
     * evenly (the first and the last included). */
    uint64_t off = size <= READ_BUDGET
                     ? i * chunk
                     : (n > 1 ? (size - chunk) / (n - 1) * i : 0);
    uint64_t len = size - off < chunk ? size - off : chunk;
    do_read(top, off, len, split, iobuf);
  }
}

static void
status(struct nbds_layer *top, uint64_t off, uint64_t len, uint32_t flags,
       int max_calls)
{
  static struct nbds_extent v[1024];
  for (int calls = 0; len && calls < max_calls; calls++) {
    struct nbds_extents ex = { .v = v, .cap = 1024 };
    uint64_t count = len < 0xfffffe00u ? len : 0xfffffe00u;
    struct nbds_req r = { .op = NBDS_OP_BLOCK_STATUS, .flags = flags,
                          .offset = off, .count = count, .extents = &ex };
    if (run(top, &r))
      return;
    if (ex.count == 0 || ex.covered == 0) {
      fprintf(out, "fuzz-qcow2: BLOCK_STATUS at %llu, %llu bytes added "
              "no extent\n", (unsigned long long) off,
              (unsigned long long) count);
      abort();
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < ex.count; i++)
      sum += ex.v[i].length;
    if (sum != ex.covered || ex.count > ex.cap) {
      fprintf(out, "fuzz-qcow2: BLOCK_STATUS extents inconsistent\n");
      abort();
    }
    uint64_t adv = ex.covered < len ? ex.covered : len;
    off += adv;
    len -= adv;
  }
}

/* Read [off, off+len) back: it must hold what buf holds (NULL: zeroes). */
static void
verify(struct nbds_layer *top, const char *what, uint64_t off, uint64_t len,
       const uint8_t *buf)
{
  if (do_read(top, off, len, false, iobuf2))
    return;  /* an error is an answer; wrong data is not */
  for (uint64_t i = 0; i < len; i++)
    if (iobuf2[i] != (buf ? buf[i] : 0)) {
      fprintf(out, "fuzz-qcow2: %s at %llu, %llu bytes succeeded, but "
              "byte %llu reads back 0x%02x, not 0x%02x\n", what,
              (unsigned long long) off, (unsigned long long) len,
              (unsigned long long) (off + i), iobuf2[i], buf ? buf[i] : 0);
      if (!no_verify)
        abort();
      return;
    }
}

static void
requests(struct nbds_layer *top, const uint8_t *c)
{
  uint64_t size = top->size;
  const struct nbds_caps *caps = &top->caps;
  for (int k = 0; k < NOPS; k++) {
    const uint8_t *p = c + 2 + 6 * k;
    uint8_t op = p[0];
    uint64_t frac = (uint64_t) p[1] << 16 | (uint64_t) p[2] << 8 | p[3];
    uint64_t len = ((uint64_t) p[4] << 8 | p[5]) + 1;
    if (op & 0x10)
      len <<= 5;  /* up to 2 MiB */
    if (!size)
      break;
    uint64_t off = (uint64_t) ((unsigned __int128) size * frac >> 24);
    if (op & 0x08) {
      off &= ~UINT64_C(4095);
      len = (len + 4095) & ~UINT64_C(4095);
    }
    if (off >= size)
      off = size - 1;
    if (len > size - off)
      len = size - off;
    if (len > MAX_CHUNK)
      len = MAX_CHUNK;
    bool split = op & 0x20;
    struct iovec iov[3];
    struct nbds_req r = { .offset = off, .count = len };
    const char *what = NULL;
    switch (op & 7) {
    case 0:
    case 1:
      if (!caps->can_write)
        continue;
      for (uint64_t i = 0; i < len; i++)
        iobuf[i] = (uint8_t) (op + k + i * 7 + (i >> 9));
      r.op = NBDS_OP_WRITE;
      if ((op & 7) == 1 && caps->fua != NBDS_FUA_NONE)
        r.flags = NBDS_F_FUA;
      r.iovcnt = make_iov(iov, iobuf, len, split);
      r.iov = iov;
      what = "WRITE";
      break;
    case 2:
    case 3:
    case 7:
      if (!caps->can_zero)
        continue;
      r.op = NBDS_OP_ZERO;
      if ((op & 7) == 3)
        r.flags = NBDS_F_NO_HOLE;
      if ((op & 7) == 7 && caps->can_fast_zero)
        r.flags = NBDS_F_FAST_ZERO;
      what = "ZERO";
      break;
    case 4:
      if (!caps->can_trim)
        continue;
      r.op = NBDS_OP_TRIM;
      break;
    case 5:
      if (!caps->can_flush)
        continue;
      r = (struct nbds_req) { .op = NBDS_OP_FLUSH };
      break;
    case 6:
      do_read(top, off, len, split, iobuf);
      break;
    }
    if ((op & 7) != 6 && run(top, &r) == 0 && what)
      verify(top, what, off, len, r.op == NBDS_OP_WRITE ? iobuf : NULL);
    if (op & 0x40)
      status(top, off, len, (op & 0x80) ? NBDS_F_REQ_ONE : 0, 4);
  }
}

static const char *const snapshot_names[] = {
  "1", "snap1", "snap2", "no-such",
};

/* Open data as an image, walk it, close it.  Returns whether it opened;
 * with kept, hands back the file's bytes as the session left them (for
 * the read-only reopen). */
static bool
session(const uint8_t *data, size_t len, const uint8_t *c, bool reopen,
        uint8_t **kept, size_t *kept_len)
{
  uint8_t mode = c[0];
  bool writable_file = !(mode & 0x40) && !reopen;
  struct nbds_kv kv[4];
  size_t nkv = 0;
  kv[nkv++] = (struct nbds_kv) { "file", "/nonexistent/fuzz/image.qcow2" };
  if (reopen || (mode & 3) == 2)
    kv[nkv++] = (struct nbds_kv) { "readonly", "on" };
  else if ((mode & 3) == 3)
    kv[nkv++] = (struct nbds_kv) { "snapshot",
                                   snapshot_names[(mode >> 2) & 3] };
  if (mode & 0x10)
    kv[nkv++] = (struct nbds_kv) { "l2-cache-size", "1k" };
  if (mode & 0x20)
    kv[nkv++] = (struct nbds_kv) { "bitmaps", "in-use" };

  struct nbds_layer *file = mem_open(data, len, writable_file);
  nbds_error("%s", "");
  struct nbds_layer *top = nbds_layer_open("qcow2", file, kv, nkv);
  if (!top) {
    const char *msg = nbds_last_error();
    if (trace)
      fprintf(out, "fuzz-qcow2: open failed: %s\n", msg);
    if (!msg[0] || strcmp(msg, "unknown error") == 0) {
      fprintf(out, "fuzz-qcow2: open failed without a message\n");
      abort();
    }
    nbds_layer_close_stack(file);
    return false;
  }
  if (top->below != file || top->size > (UINT64_C(1) << 62)) {
    fprintf(out, "fuzz-qcow2: odd layer after open (size %llu)\n",
            (unsigned long long) top->size);
    abort();
  }
  if (trace)
    fprintf(out, "fuzz-qcow2: opened%s, %llu bytes virtual, file %zu "
            "bytes\n", reopen ? " again read-only" : "",
            (unsigned long long) top->size, len);
  read_walk(top, c[1]);
  status(top, 0, top->size, 0, MAX_STATUS_CALLS);
  if (!reopen)
    requests(top, c);
  /* Close the qcow2 layer alone, to keep the file's bytes. */
  top->below = NULL;
  nbds_layer_close_stack(top);
  const char *dump = reopen ? NULL : getenv("FUZZ_QCOW2_DUMP");
  if (dump) {  /* the image as the session left it, for qemu-img check */
    struct memfile *m = file->priv;
    FILE *f = fopen(dump, "wb");
    if (!f || fwrite(m->buf, 1, m->len, f) != m->len || fclose(f))
      fprintf(out, "fuzz-qcow2: cannot write %s\n", dump);
  }
  if (kept) {
    struct memfile *m = file->priv;
    *kept = m->buf;
    *kept_len = m->len;
    m->buf = NULL;
  }
  nbds_layer_close_stack(file);
  return true;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
  (void) argc;
  (void) argv;
  nbds_verbose = false;
  int fd = dup(2);
  out = fd >= 0 ? fdopen(fd, "w") : NULL;
  if (!out)
    out = stderr;
  setvbuf(out, NULL, _IONBF, 0);
  trace = getenv("FUZZ_QCOW2_TRACE") != NULL;
  no_verify = getenv("FUZZ_QCOW2_NO_VERIFY") != NULL;
  iobuf = malloc(MAX_CHUNK + 4096);
  iobuf2 = malloc(MAX_CHUNK + 4096);
  if (!iobuf || !iobuf2)
    abort();
  return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  uint8_t c[CTL_LEN] = { 0 };
  size_t image_len = size;
  if (size >= CTL_LEN + MAGIC_LEN &&
      memcmp(data + size - MAGIC_LEN, MAGIC, MAGIC_LEN) == 0) {
    image_len = size - CTL_LEN - MAGIC_LEN;
    memcpy(c, data + image_len, CTL_LEN);
  } else {
    size_t n = size < CTL_LEN ? size : CTL_LEN;
    memcpy(c, data + size - n, n);
  }

  uint8_t *after = NULL;
  size_t after_len = 0;
  bool reopen = c[0] & 0x80;
  if (session(data, image_len, c, false, reopen ? &after : NULL,
              &after_len) && reopen)
    session(after, after_len, c, true, NULL, NULL);
  free(after);
  return 0;
}
