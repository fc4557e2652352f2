/* Byte ranges of a request's iovecs: a request that spans several host
 * runs sends each run its own slice of the caller's buffers. */
#include <string.h>

#include "qcow2.h"

int
qcow2_iov_slice(const struct iovec *iov, int iovcnt, uint64_t off,
                uint64_t len, struct iovec *out, int max)
{
  int n = 0;
  for (int i = 0; i < iovcnt && len > 0; i++) {
    if (off >= iov[i].iov_len) {
      off -= iov[i].iov_len;
      continue;
    }
    if (n == max)
      return -1;
    uint64_t take = iov[i].iov_len - off;
    if (take > len)
      take = len;
    out[n].iov_base = (char *) iov[i].iov_base + off;
    out[n].iov_len = take;
    n++;
    len -= take;
    off = 0;
  }
  return n;
}

/* Walk [off, off+len) of the iovecs, calling fn on each piece with the
 * position of the piece in the range. */
static void
walk(const struct iovec *iov, int iovcnt, uint64_t off, uint64_t len,
     void (*fn)(void *base, uint64_t n, uint64_t pos, void *arg), void *arg)
{
  uint64_t pos = 0;
  for (int i = 0; i < iovcnt && len > 0; i++) {
    if (off >= iov[i].iov_len) {
      off -= iov[i].iov_len;
      continue;
    }
    uint64_t take = iov[i].iov_len - off;
    if (take > len)
      take = len;
    fn((char *) iov[i].iov_base + off, take, pos, arg);
    pos += take;
    len -= take;
    off = 0;
  }
}

static void
zero_piece(void *base, uint64_t n, uint64_t pos, void *arg)
{
  (void) pos;
  (void) arg;
  memset(base, 0, n);
}

static void
to_buf_piece(void *base, uint64_t n, uint64_t pos, void *arg)
{
  memcpy((uint8_t *) arg + pos, base, n);
}

static void
from_buf_piece(void *base, uint64_t n, uint64_t pos, void *arg)
{
  memcpy(base, (const uint8_t *) arg + pos, n);
}

void
qcow2_iov_zero(const struct iovec *iov, int iovcnt, uint64_t off,
               uint64_t len)
{
  walk(iov, iovcnt, off, len, zero_piece, NULL);
}

void
qcow2_iov_to_buf(const struct iovec *iov, int iovcnt, uint64_t off,
                 uint64_t len, uint8_t *buf)
{
  walk(iov, iovcnt, off, len, to_buf_piece, buf);
}

void
qcow2_buf_to_iov(const uint8_t *buf, uint64_t len, const struct iovec *iov,
                 int iovcnt, uint64_t off)
{
  walk(iov, iovcnt, off, len, from_buf_piece, (void *) buf);
}
