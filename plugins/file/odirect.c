/* direct=on: the file is opened with O_DIRECT, and every transfer must
 * then be aligned, in the file and in memory, to what the file system or
 * device asks.  Learn that at open, in this order:
 *   - statx STATX_DIOALIGN: the file system's own answer (Linux 6.1+);
 *   - a block device's logical sector size;
 *   - else trial reads at offset 0.
 * Then one aligned read at offset 0 must work: some file systems accept
 * the open and refuse the I/O. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file.h"

/* The largest block size trials go up to, and the fallback. */
#define TRIAL_MAX 4096

/* The server looks for "does not support direct I/O" to fall back to
 * buffered I/O under --cache=auto. */
int
file_direct_unsupported(const char *path)
{
  nbds_error("'%s': the filesystem does not support direct I/O (O_DIRECT); "
             "use --cache=writeback or --cache=writethrough instead", path);
  return -1;
}

/* 0 when O_DIRECT takes this read, EINVAL when it refuses it, or another
 * errno value. */
static int
try_read(int fd, char *buf, size_t len)
{
  while (pread(fd, buf, len, 0) == -1) {
    if (errno != EINTR)
      return errno;
  }
  return 0;
}

/* Find the smallest read size, then buffer alignment, that O_DIRECT takes
 * at offset 0.  A 1-byte read that works proves nothing (a hole, an empty
 * file and a file system that ignores the rules all answer it), and then
 * the largest usual block is assumed.  Returns 0, EINVAL when nothing
 * works, or another errno value. */
int
file_direct_trial(int fd, uint32_t *align, uint32_t *mem_align)
{
  static const uint32_t sizes[] = { 1, 512, 1024, 2048, TRIAL_MAX };
  const int n = sizeof sizes / sizeof sizes[0];
  void *p;
  if (posix_memalign(&p, TRIAL_MAX, 2 * TRIAL_MAX) != 0)
    return ENOMEM;
  char *buf = p;

  int err = EINVAL;
  int i;
  for (i = 0; i < n && err == EINVAL; i++)
    err = try_read(fd, buf, sizes[i]);
  if (err)
    goto out;
  uint32_t found = sizes[i - 1];
  if (found == 1) {
    *align = *mem_align = TRIAL_MAX;
    goto out;
  }
  *align = found;

  /* buf + TRIAL_MAX is page-aligned, as the read above: the loop ends. */
  err = EINVAL;
  for (i = 0; i < n && err == EINVAL; i++)
    err = try_read(fd, buf + sizes[i], found);
  if (!err)
    *mem_align = sizes[i - 1] == 1 ? found : sizes[i - 1];
out:
  free(p);
  return err;
}

/* One aligned read at offset 0. */
static int
check(const struct file_disk *h)
{
  size_t mem = h->mem_align < TRIAL_MAX ? TRIAL_MAX : h->mem_align;
  void *buf;
  if (posix_memalign(&buf, mem, h->align) != 0)
    return ENOMEM;
  int err = try_read(h->fd, buf, h->align);
  free(buf);
  return err;
}

static bool
power_of_two(uint32_t x)
{
  return x != 0 && (x & (x - 1)) == 0;
}

/* The error for a probe that failed with err. */
static int
failed(const char *path, int err)
{
  if (err == EINVAL)
    return file_direct_unsupported(path);
  nbds_error("cannot read '%s': %s", path, strerror(err));
  return -1;
}

/* Fill h->align and h->mem_align for the O_DIRECT fd; -1 after
 * nbds_error() when direct I/O cannot be used. */
int
file_direct_probe(const char *path, struct file_disk *h)
{
  struct statx stx;
  if (statx(h->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
      (stx.stx_mask & STATX_DIOALIGN)) {
    if (stx.stx_dio_offset_align == 0)  /* the file system's "no" */
      return file_direct_unsupported(path);
    h->align = stx.stx_dio_offset_align;
    h->mem_align = stx.stx_dio_mem_align;
  }
  else if (h->is_bdev)
    h->align = h->mem_align = h->sector;
  else {
    int err = file_direct_trial(h->fd, &h->align, &h->mem_align);
    return err ? failed(path, err) : 0;
  }

  /* Bounce buffers and block_pref assume a power of two, at most 64 KiB. */
  if (!power_of_two(h->align) || !power_of_two(h->mem_align) ||
      h->align > 65536 || h->mem_align > 65536) {
    nbds_error("'%s': unusable direct I/O alignment (%u bytes, memory %u)",
               path, h->align, h->mem_align);
    return -1;
  }
  int err = check(h);
  return err ? failed(path, err) : 0;
}
