/* Reads on the metadata thread: what the fast path cannot serve (L2
 * tables not cached, compressed clusters, subclusters from the backing
 * file), and the old contents that copy-on-write needs. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

/* Decompress the cluster a compressed L2 entry describes into out
 * (cluster_size bytes). */
int
qcow2_read_compressed(struct qcow2 *q, uint64_t entry, uint8_t *out)
{
  uint64_t host, bytes;
  qcow2_compressed_range(&q->h, entry, &host, &bytes);
  if (bytes > 2 * q->cluster_size + 512 || host < q->cluster_size)
    return qcow2_corrupt(q, "compressed cluster at %#" PRIx64 " is invalid",
                         host);
  uint8_t *in = malloc(bytes);
  if (!in)
    return ENOMEM;
  int err = qcow2_pread(q, in, bytes, host);
  if (!err && qcow2_decompress(&q->h, in, bytes, out) == -1)
    err = qcow2_corrupt(q, "%s", nbds_last_error());
  free(in);
  return err;
}

static int
read_host(struct qcow2 *q, struct iovec *part, int cnt, uint64_t host,
          uint64_t len)
{
  struct nbds_req r = { .op = NBDS_OP_READ, .offset = host, .count = len,
                        .iov = part, .iovcnt = cnt };
  return qcow2_io(q, q->file, &r);
}

static int
read_run(struct qcow2 *q, const struct qcow2_map *m, uint64_t guest,
         struct iovec *part, int cnt)
{
  switch (m->type) {
  case QCOW2_ZERO_PLAIN:
  case QCOW2_ZERO_ALLOC:
    qcow2_iov_zero(part, cnt, 0, m->bytes);
    return 0;
  case QCOW2_UNALLOCATED:
  case QCOW2_UNALLOCATED_ALLOC:
    return qcow2_backing_read(q, part, cnt, guest, m->bytes);
  case QCOW2_NORMAL:
    return read_host(q, part, cnt, m->host, m->bytes);
  case QCOW2_COMPRESSED_DATA: {
    uint8_t *c = malloc(q->cluster_size);
    if (!c)
      return ENOMEM;
    int err = qcow2_read_compressed(q, m->host, c);
    if (!err)
      qcow2_buf_to_iov(c + (guest & (q->cluster_size - 1)), m->bytes, part,
                       cnt, 0);
    free(c);
    return err;
  }
  }
  return EIO;
}

/* Read guest bytes [guest, guest+len) into iov, from byte iov_off of it. */
int
qcow2_read_range(struct qcow2 *q, struct iovec *iov, int iovcnt,
                 uint64_t iov_off, uint64_t guest, uint64_t len)
{
  struct iovec *part = malloc((iovcnt + 1) * sizeof *part);
  if (!part)
    return ENOMEM;
  int err = 0;
  uint64_t done = 0;
  while (done < len && !err) {
    struct qcow2_map m;
    err = qcow2_map(q, guest + done, len - done, &m);
    if (err)
      break;
    int cnt = qcow2_iov_slice(iov, iovcnt, iov_off + done, m.bytes, part,
                              iovcnt + 1);
    err = read_run(q, &m, guest + done, part, cnt);
    done += m.bytes;
  }
  free(part);
  return err;
}

int
qcow2_do_read(struct qcow2 *q, struct nbds_req *req)
{
  return qcow2_read_range(q, req->iov, req->iovcnt, 0, req->offset,
                          req->count);
}
