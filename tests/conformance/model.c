/* The conformance tests' shared helpers: see model.h. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"


char why[256];
unsigned char model[MODEL_SIZE];
/* What a test read back, around the driver or through it. */
static unsigned char got_space[MODEL_SIZE + 8 * KiB];

struct iovec
iov(void *p, size_t len)
{
  struct iovec v;
  v.iov_base = p;
  v.iov_len = len;
  return v;
}

/* A byte pattern; different seeds give different bytes, never 0. */
void
pattern(unsigned char *p, size_t len, unsigned seed)
{
  for (size_t i = 0; i < len; i++)
    p[i] = (seed * 31 + i * 7 + 1) % 251 + 1;
}

/* got_space at a page boundary plus skew. */
unsigned char *
got(size_t skew)
{
  uintptr_t p = (uintptr_t) got_space;
  return (unsigned char *) ((p + 4095) & ~(uintptr_t) 4095) + skew;
}

/* got(at), at a multiple of 4096, rounded up to a multiple of align. */
unsigned char *
got_aligned(size_t at, uint32_t align)
{
  unsigned char *p = got(at);
  return p + (align - (uintptr_t) p % align) % align;
}

/* p holds len bytes of byte; base is p's offset in the file, for why. */
bool
bytes_are(const unsigned char *p, size_t len, int byte, uint64_t base)
{
  for (size_t i = 0; i < len; i++) {
    if (p[i] != byte) {
      snprintf(why, sizeof why, "byte %" PRIu64 " is %d, want %d",
               base + i, p[i], byte);
      return false;
    }
  }
  return true;
}

/* p holds the model's bytes at base. */
bool
bytes_match(const unsigned char *p, size_t len, uint64_t base)
{
  for (size_t i = 0; i < len; i++) {
    if (p[i] != model[base + i]) {
      snprintf(why, sizeof why, "byte %" PRIu64 " is %d, want %d",
               base + i, p[i], model[base + i]);
      return false;
    }
  }
  return true;
}

/* The file's first len bytes are the model's, read around the driver. */
bool
file_matches(const char *path, size_t len)
{
  if (len > MODEL_SIZE || !conf_file_read(path, 0, got(0), len)) {
    snprintf(why, sizeof why, "cannot read %" PRIu64 " bytes of the file",
             (uint64_t) len);
    return false;
  }
  return bytes_match(got(0), len, 0);
}

int
rw(struct nbds_layer *l, enum nbds_op op, uint64_t offset,
   struct iovec *v, int n, uint32_t flags)
{
  struct nbds_req req = {
    .op = op, .flags = flags, .offset = offset, .iov = v, .iovcnt = n,
  };
  for (int i = 0; i < n; i++)
    req.count += v[i].iov_len;
  return conf_run(l, &req);
}

int
rw1(struct nbds_layer *l, enum nbds_op op, uint64_t offset, void *buf,
    size_t len, uint32_t flags)
{
  struct iovec v = iov(buf, len);
  return rw(l, op, offset, &v, 1, flags);
}

int
cmd(struct nbds_layer *l, enum nbds_op op, uint64_t offset, uint64_t count,
    uint32_t flags)
{
  struct nbds_req req = {
    .op = op, .flags = flags, .offset = offset, .count = count,
  };
  return conf_run(l, &req);
}

/* Read through the layer into got(1): 1 byte past a page boundary, so
 * that direct I/O has to bounce. */
bool
layer_read(struct nbds_layer *l, uint64_t offset, size_t len)
{
  memset(got(1), 0xAA, len);
  int err = rw1(l, NBDS_OP_READ, offset, got(1), len, 0);
  if (err)
    snprintf(why, sizeof why, "READ of %" PRIu64 " bytes at %" PRIu64
             " failed: %s", (uint64_t) len, offset, strerror(err));
  return err == 0;
}

/* Reading through the layer gives the model's bytes. */
bool
layer_matches(struct nbds_layer *l, uint64_t offset, size_t len)
{
  return layer_read(l, offset, len) && bytes_match(got(1), len, offset);
}

/* A fresh scratch file of size bytes of byte, and its model; NULL if it
 * cannot be made. */
const char *
make_file(const char *name, size_t size, int byte)
{
  const char *path = conf_scratch_path(name);
  memset(model, byte, size);
  memset(model + size, 0, MODEL_SIZE - size);
  return conf_file_write(path, 0, model, size) ? path : NULL;
}

/* Open with one extra key (none when key is NULL). */
struct nbds_layer *
open_with(const char *path, const char *key, const char *value)
{
  struct nbds_kv kv = { key, value };
  return conf_open(path, &kv, key ? 1 : 0);
}

/* make_file(), then open it buffered or with direct=on; NULL with why
 * set on failure. */
struct nbds_layer *
setup(const char *name, size_t size, int byte, bool direct,
      const char **path)
{
  *path = make_file(name, size, byte);
  if (!*path) {
    snprintf(why, sizeof why, "cannot make the file %s", name);
    return NULL;
  }
  struct nbds_layer *l = open_with(*path, direct ? "direct" : NULL, "on");
  if (!l)
    snprintf(why, sizeof why, "open: %s", nbds_last_error());
  return l;
}

