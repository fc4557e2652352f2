/* BLOCK_STATUS on a regular file: walk SEEK_DATA/SEEK_HOLE from the
 * request offset.  Runs on a worker, since lseek may wait for metadata. */
#include <errno.h>
#include <unistd.h>

#include "file.h"

#define HOLE (NBDS_EXTENT_HOLE | NBDS_EXTENT_ZERO)

static uint64_t
min_u64(uint64_t a, uint64_t b)
{
  return a < b ? a : b;
}

int
file_extents(struct file_disk *h, struct nbds_req *req)
{
  struct nbds_extents *ex = req->extents;
  bool one = req->flags & NBDS_F_REQ_ONE;
  uint64_t pos = req->offset;
  uint64_t end = req->offset + req->count;

  while (pos < end) {
    off_t data = lseek(h->fd, pos, SEEK_DATA);
    if (data == -1) {
      /* ENXIO: no data from here to end of file, and the export's padding
       * past it reads as zeroes too. */
      if (errno == ENXIO)
        nbds_extents_add(ex, end - pos, HOLE);
      /* No SEEK_DATA here: calling it all data is always true. */
      else if (errno == EINVAL || errno == EOPNOTSUPP)
        nbds_extents_add(ex, end - pos, 0);
      else
        return errno;
      return 0;
    }
    if ((uint64_t) data > pos) {
      uint64_t n = min_u64(data, end) - pos;
      if (!nbds_extents_add(ex, n, HOLE) || one)
        return 0;
      pos += n;
      continue;
    }

    /* There is always a hole at end of file, so this finds the end of
     * the data run. */
    off_t hole = lseek(h->fd, pos, SEEK_HOLE);
    if (hole == -1) {
      if (errno != ENXIO)  /* truncated under us: the rest is past EOF */
        return errno;
      nbds_extents_add(ex, end - pos, HOLE);
      return 0;
    }
    uint64_t n = min_u64(hole, end) - pos;
    if (!nbds_extents_add(ex, n, 0) || one)
      return 0;
    pos += n;
  }
  return 0;
}
