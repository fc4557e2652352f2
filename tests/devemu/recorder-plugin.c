/* A test nbdkit plugin that models a disk with a volatile write cache and
 * logs every request with its flags.  It runs unchanged under nbdkit and
 * under nbdstack's nbdkit plugin host.
 *
 *   file=PATH   the durable medium (an existing file; its size is the
 *               export's); what is on it survives kill -9
 *   log=PATH    one line per request, in the format of nbdkit's log
 *               filter: "Write id=N offset=0x.. count=0x.. fua=N ..."
 *   fua=native|none   whether FUA is advertised (default native)
 *
 * A write lands in the cache (memory) and, with FUA, on the medium too; a
 * flush writes every dirty block to the medium.  A crash loses the cache.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#define THREAD_MODEL NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS
#define SECTOR 512

static const char *file, *logpath;
static int fd = -1;
static FILE *logf;
static int fua_native = 1;
static uint64_t size;
static uint8_t *cache;          /* the whole disk as the host sees it */
static uint8_t *dirty;          /* one byte per sector */
static unsigned long id;

static int
rec_config(const char *key, const char *value)
{
  if (strcmp(key, "file") == 0)
    file = value;
  else if (strcmp(key, "log") == 0)
    logpath = value;
  else if (strcmp(key, "fua") == 0)
    fua_native = strcmp(value, "none") != 0;
  else {
    nbdkit_error("unknown parameter %s", key);
    return -1;
  }
  return 0;
}

static int
rec_get_ready(void)
{
  struct stat st;

  if (!file || !logpath) {
    nbdkit_error("file= and log= are required");
    return -1;
  }
  fd = open(file, O_RDWR);
  if (fd == -1 || fstat(fd, &st) == -1) {
    nbdkit_error("%s: %m", file);
    return -1;
  }
  size = st.st_size / SECTOR * SECTOR;
  cache = malloc(size);
  dirty = calloc(size / SECTOR, 1);
  logf = fopen(logpath, "a");
  if (!cache || !dirty || !logf ||
      pread(fd, cache, size, 0) != (ssize_t) size) {
    nbdkit_error("setting up: %m");
    return -1;
  }
  return 0;
}

static void *
rec_open(int readonly)
{
  (void) readonly;
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t rec_get_size(void *h) { (void) h; return size; }
static int rec_can_write(void *h) { (void) h; return 1; }
static int rec_can_flush(void *h) { (void) h; return 1; }
static int rec_can_trim(void *h) { (void) h; return 1; }
static int rec_can_zero(void *h) { (void) h; return 1; }
static int rec_can_multi_conn(void *h) { (void) h; return 1; }
static int
rec_can_fua(void *h)
{
  (void) h;
  return fua_native ? NBDKIT_FUA_NATIVE : NBDKIT_FUA_NONE;
}

static void
logline(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vfprintf(logf, fmt, ap);
  va_end(ap);
  fflush(logf);
}

/* Write the dirty sectors of [off, off+len) to the medium. */
static int
persist(uint64_t off, uint64_t len)
{
  for (uint64_t s = off / SECTOR; s < (off + len + SECTOR - 1) / SECTOR;
       s++) {
    if (!dirty[s])
      continue;
    if (pwrite(fd, cache + s * SECTOR, SECTOR, s * SECTOR) != SECTOR) {
      nbdkit_error("pwrite: %m");
      return -1;
    }
    dirty[s] = 0;
  }
  return 0;
}

static void
store(const void *buf, uint32_t count, uint64_t offset)
{
  if (buf)
    memcpy(cache + offset, buf, count);
  else
    memset(cache + offset, 0, count);
  memset(dirty + offset / SECTOR, 1, (count + SECTOR - 1) / SECTOR);
}

static int
rec_pread(void *h, void *buf, uint32_t count, uint64_t offset,
          uint32_t flags)
{
  (void) h; (void) flags;
  logline("connection=1 Read id=%lu offset=0x%" PRIx64 " count=0x%x ...\n",
          ++id, offset, count);
  memcpy(buf, cache + offset, count);
  return 0;
}

static int
rec_pwrite(void *h, const void *buf, uint32_t count, uint64_t offset,
           uint32_t flags)
{
  bool fua = flags & NBDKIT_FLAG_FUA;
  (void) h;
  logline("connection=1 Write id=%lu offset=0x%" PRIx64 " count=0x%x "
          "fua=%d ...\n", ++id, offset, count, fua);
  store(buf, count, offset);
  return fua ? persist(offset, count) : 0;
}

static int
rec_zero(void *h, uint32_t count, uint64_t offset, uint32_t flags)
{
  bool fua = flags & NBDKIT_FLAG_FUA;
  (void) h;
  logline("connection=1 Zero id=%lu offset=0x%" PRIx64 " count=0x%x "
          "trim=%d fua=%d fast=%d ...\n", ++id, offset, count,
          !!(flags & NBDKIT_FLAG_MAY_TRIM), fua,
          !!(flags & NBDKIT_FLAG_FAST_ZERO));
  store(NULL, count, offset);
  return fua ? persist(offset, count) : 0;
}

static int
rec_trim(void *h, uint32_t count, uint64_t offset, uint32_t flags)
{
  bool fua = flags & NBDKIT_FLAG_FUA;
  (void) h;
  logline("connection=1 Trim id=%lu offset=0x%" PRIx64 " count=0x%x "
          "fua=%d ...\n", ++id, offset, count, fua);
  store(NULL, count, offset);
  return fua ? persist(offset, count) : 0;
}

static int
rec_flush(void *h, uint32_t flags)
{
  (void) h; (void) flags;
  logline("connection=1 Flush id=%lu ...\n", ++id);
  return persist(0, size);
}

static struct nbdkit_plugin plugin = {
  .name = "devemu-recorder",
  .config = rec_config,
  .get_ready = rec_get_ready,
  .open = rec_open,
  .get_size = rec_get_size,
  .can_write = rec_can_write,
  .can_flush = rec_can_flush,
  .can_trim = rec_can_trim,
  .can_zero = rec_can_zero,
  .can_fua = rec_can_fua,
  .can_multi_conn = rec_can_multi_conn,
  .pread = rec_pread,
  .pwrite = rec_pwrite,
  .zero = rec_zero,
  .trim = rec_trim,
  .flush = rec_flush,
};

NBDKIT_REGISTER_PLUGIN(plugin)
