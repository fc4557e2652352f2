/* Inflating one compressed cluster, as QEMU's qcow2-threads.c does.  Each
 * call has its own zlib/zstd context: this runs on several worker threads
 * at once and shares nothing. */
#include <inttypes.h>

#include <zlib.h>
#include <zstd.h>

#include "nbdstack/layer.h"
#include "format.h"

/* QEMU compresses with raw deflate and a 4 KiB window. */
#define ZLIB_WINDOW_BITS (-12)

static int
inflate_zlib(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len)
{
  z_stream s = { 0 };
  int ret;

  if (inflateInit2(&s, ZLIB_WINDOW_BITS) != Z_OK) {
    nbds_error("qcow2: zlib: cannot initialise the decompressor");
    return -1;
  }
  s.next_in = (Bytef *) in;
  s.avail_in = (uInt) in_len;
  s.next_out = out;
  s.avail_out = (uInt) out_len;
  ret = inflate(&s, Z_FINISH);
  inflateEnd(&s);
  /* The stored length is rounded to sectors, so the input may hold more
   * than the stream (Z_BUF_ERROR), but the cluster must be complete. */
  if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && s.avail_out == 0)
    return 0;
  if (ret == Z_STREAM_END || ret == Z_BUF_ERROR)
    nbds_error("qcow2: zlib: compressed cluster is short (%zu of %zu bytes)",
               out_len - s.avail_out, out_len);
  else
    nbds_error("qcow2: zlib: invalid compressed cluster (%s)",
               s.msg ? s.msg : zError(ret));
  return -1;
}

/* The loop of QEMU's qcow2_zstd_decompress: any number of frames, until
 * the cluster is full; no progress or an unfinished frame is an error. */
static int
zstd_stream(ZSTD_DCtx *dctx, const uint8_t *in, size_t in_len,
            uint8_t *out, size_t out_len)
{
  ZSTD_inBuffer input = { in, in_len, 0 };
  ZSTD_outBuffer output = { out, out_len, 0 };
  size_t ret = 0;

  while (output.pos < output.size) {
    size_t in_pos = input.pos, out_pos = output.pos;

    ret = ZSTD_decompressStream(dctx, &output, &input);
    if (ZSTD_isError(ret)) {
      nbds_error("qcow2: zstd: invalid compressed cluster (%s)",
                 ZSTD_getErrorName(ret));
      return -1;
    }
    if (input.pos == in_pos && output.pos == out_pos) {
      nbds_error("qcow2: zstd: compressed cluster is short (%zu of %zu "
                 "bytes)", output.pos, out_len);
      return -1;
    }
  }
  if (ret != 0) {
    nbds_error("qcow2: zstd: compressed cluster decodes to more than a "
               "cluster");
    return -1;
  }
  return 0;
}

static int
inflate_zstd(const struct qcow2_header *h, const uint8_t *in, size_t in_len,
             uint8_t *out, size_t out_len)
{
  ZSTD_DCtx *dctx = ZSTD_createDCtx();
  int r;

  if (!dctx) {
    nbds_error("qcow2: zstd: cannot create a decompression context");
    return -1;
  }
  /* A cluster never needs a window larger than itself (QEMU compresses a
   * cluster as one frame of known size); the limit keeps a hostile frame
   * from making us allocate zstd's default maximum of 128 MiB. */
  ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax, (int) h->cluster_bits + 1);
  r = zstd_stream(dctx, in, in_len, out, out_len);
  ZSTD_freeDCtx(dctx);
  return r;
}

int
qcow2_decompress(const struct qcow2_header *h, const uint8_t *in,
                 size_t in_len, uint8_t *out)
{
  /* A descriptor addresses at most two clusters of input. */
  if (in_len > 2 * h->cluster_size) {
    nbds_error("qcow2: compressed cluster too large (%zu bytes)", in_len);
    return -1;
  }
  switch (h->compression_type) {
  case 0:
    return inflate_zlib(in, in_len, out, h->cluster_size);
  case 1:
    return inflate_zstd(h, in, in_len, out, h->cluster_size);
  default:
    nbds_error("qcow2: unknown compression type %u", h->compression_type);
    return -1;
  }
}
