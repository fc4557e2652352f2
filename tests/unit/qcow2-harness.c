/* Helpers for test-qcow2-format.c: a temp dir per test, shell commands,
 * files, qemu-img's JSON, and image bytes. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qcow2-harness.h"

/* libnbdscore's layer.c wants the registry that server/layers.c holds. */
const struct nbds_layer_ops *
nbds_layer_type_find(const char *name)
{
  (void) name;
  return NULL;
}

char dir[64];

void
setup(void)
{
  strcpy(dir, "/tmp/qcow2fmt.XXXXXX");
  cr_assert(mkdtemp(dir), "mkdtemp");
}

void
teardown(void)
{
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0)
    cr_log_warn("cannot remove %s", dir);
}


/* Run a shell command in the temp dir; returns its exit status. */
int
sh(const char *fmt, ...)
{
  char cmd[4096];
  int n = snprintf(cmd, sizeof cmd, "cd %s && ", dir);
  va_list ap;
  int st;

  va_start(ap, fmt);
  vsnprintf(cmd + n, sizeof cmd - n, fmt, ap);
  va_end(ap);
  st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

uint8_t *
slurp(const char *name, size_t *len)
{
  char path[256];
  FILE *f;
  uint8_t *buf;
  struct stat st;

  snprintf(path, sizeof path, "%s/%s", dir, name);
  f = fopen(path, "rb");
  cr_assert(f, "open %s", path);
  cr_assert_eq(fstat(fileno(f), &st), 0);
  *len = st.st_size;
  buf = malloc(*len ? *len : 1);
  cr_assert(buf);
  cr_assert_eq(fread(buf, 1, *len, f), *len);
  fclose(f);
  return buf;
}

void
spit(const char *name, const uint8_t *buf, size_t len)
{
  char path[256];
  FILE *f;

  snprintf(path, sizeof path, "%s/%s", dir, name);
  f = fopen(path, "wb");
  cr_assert(f);
  cr_assert_eq(fwrite(buf, 1, len, f), len);
  fclose(f);
}

/* The output of a command, NUL-terminated. */
char *
capture(const char *cmd)
{
  char out[64];
  size_t len;
  char *s;

  snprintf(out, sizeof out, "out.%d", getpid());
  cr_assert_eq(sh("%s > %s", cmd, out), 0, "%s", cmd);
  s = (char *) slurp(out, &len);
  s = realloc(s, len + 1);
  s[len] = '\0';
  return s;
}

/* The value of "key" in qemu-img's pretty-printed JSON, quotes removed. */
void
json_get(const char *json, const char *key, char *val, size_t size)
{
  char pat[64];
  const char *p;
  size_t n;

  snprintf(pat, sizeof pat, "\"%s\": ", key);
  p = strstr(json, pat);
  cr_assert(p, "no %s in qemu-img info", key);
  p += strlen(pat);
  if (*p == '"')
    p++;
  n = strcspn(p, "\",\n");
  cr_assert_lt(n, size);
  memcpy(val, p, n);
  val[n] = '\0';
}

uint64_t
json_u64(const char *json, const char *key)
{
  char v[64];
  json_get(json, key, v, sizeof v);
  return strtoull(v, NULL, 10);
}

/* Parse an image's cluster 0 as the engine will: the first cluster, or
 * the whole file when it is shorter. */
int
parse_bytes(const uint8_t *buf, size_t len, struct qcow2_header *h)
{
  size_t c0 = len;

  if (len >= 24) {
    uint32_t bits = qcow2_be32(buf + 20);
    if (bits >= 9 && bits <= 21 && ((size_t) 1 << bits) < len)
      c0 = (size_t) 1 << bits;
  }
  return qcow2_header_parse(buf, c0, len, h);
}

uint8_t *
parse_image(const char *name, struct qcow2_header *h, size_t *len)
{
  uint8_t *buf = slurp(name, len);
  cr_assert_eq(parse_bytes(buf, *len, h), 0, "%s: %s", name,
               nbds_last_error());
  return buf;
}

char *
info(const char *name)
{
  char cmd[256];
  snprintf(cmd, sizeof cmd, "qemu-img info --output=json %s", name);
  return capture(cmd);
}

/* The L2 entry of a guest offset, read from the image bytes. */
void
l2_entry(const uint8_t *img, size_t len, const struct qcow2_header *h,
         uint64_t guest, uint64_t *entry, uint64_t *bitmap)
{
  uint64_t gcl = guest >> h->cluster_bits, n = qcow2_l2_entries(h);
  uint64_t l1e = qcow2_be64(img + h->l1_offset + 8 * (gcl / n));
  uint64_t l2 = l1e & QCOW2_OFFSET_MASK;
  size_t esz = h->extended_l2 ? 16 : 8;

  *entry = *bitmap = 0;
  if (!l2)
    return;
  cr_assert_leq(l2 + (gcl % n + 1) * esz, len);
  *entry = qcow2_be64(img + l2 + (gcl % n) * esz);
  if (h->extended_l2)
    *bitmap = qcow2_be64(img + l2 + (gcl % n) * esz + 8);
}

/* Remove the line holding "key" from a JSON text. */
void
drop_line(char *json, const char *key)
{
  char *p = strstr(json, key), *start, *end;

  if (!p)
    return;
  for (start = p; start > json && start[-1] != '\n'; start--)
    ;
  end = strchr(p, '\n');
  end = end ? end + 1 : p + strlen(p);
  memmove(start, end, strlen(end) + 1);
}
