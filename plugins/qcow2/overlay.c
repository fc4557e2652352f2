/* A temporary overlay (qemu-nbd -s/--snapshot): a new qcow2 image in a
 * temporary file whose backing file is the stack below this layer.  Writes
 * land in the overlay, the image below is never written, and the overlay
 * is gone when the server exits.
 *
 * As QEMU does for its temporary snapshots (bdrv_append_temp_snapshot),
 * the file lives in $TMPDIR (default /var/tmp) and is written with
 * cache=unsafe semantics: flushes are no-ops, since nothing in it outlives
 * the process.  Unlike QEMU, the file is unlinked as soon as it is open,
 * so not even a crash leaves it behind. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qcow2.h"

#define OVERLAY_CLUSTER_BITS 16  /* 64 KiB, qemu-img's default */

/* Create the temporary file, holding a new empty image of `size` bytes.
 * Returns its path (malloc'ed) or NULL with nbds_error() set. */
static char *
create_file(uint64_t size)
{
  const char *dir = getenv("TMPDIR");
  if (!dir || !*dir)
    dir = "/var/tmp";
  size_t plen = strlen(dir) + sizeof "/nbdstack-snapshot-XXXXXX";
  char *path = malloc(plen);
  uint8_t *bytes = NULL;
  size_t len;
  if (!path) {
    nbds_error("out of memory");
    return NULL;
  }
  snprintf(path, plen, "%s/nbdstack-snapshot-XXXXXX", dir);
  if (qcow2_format_new(size, OVERLAY_CLUSTER_BITS, NULL, NULL, &bytes,
                       &len) == -1) {
    free(path);
    return NULL;
  }
  int fd = mkstemp(path);
  if (fd == -1) {
    nbds_error("qcow2: cannot create a temporary overlay in %s: %s", dir,
               strerror(errno));
    free(bytes);
    free(path);
    return NULL;
  }
  ssize_t n = pwrite(fd, bytes, len, 0);
  int err = n == -1 ? errno : 0;
  free(bytes);
  if (close(fd) == -1 && !err)
    err = errno;
  if (err || (size_t) n != len) {
    nbds_error("qcow2: cannot write the temporary overlay %s: %s", path,
               err ? strerror(err) : "short write");
    unlink(path);
    free(path);
    return NULL;
  }
  return path;
}

int
qcow2_overlay_open(struct qcow2 *q, const struct nbds_kv *kv, size_t nkv)
{
  struct nbds_layer *below = q->layer->below;
  char *path = create_file(below->size);
  if (!path)
    return -1;
  const char *aio = nbds_kv_get(kv, nkv, "aio");
  struct nbds_kv fkv[] = { { "file", path }, { "aio", aio } };
  struct nbds_layer *file = nbds_layer_open("file", NULL, fkv, aio ? 2 : 1);
  unlink(path);
  free(path);
  if (!file)
    return -1;
  struct nbds_kv ckv[] = { { "mode", "unsafe" } };
  struct nbds_layer *top = nbds_layer_open("cachepolicy", file, ckv, 1);
  if (!top) {
    nbds_layer_close_stack(file);
    return -1;
  }
  q->file = top;
  q->overlay = true;
  q->backing = below;
  q->backing_size = below->size;
  return 0;
}
