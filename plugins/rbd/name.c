/* RBD image names in QEMU's spelling (block/rbd.c):
 *
 *   rbd:POOL/[NAMESPACE/]IMAGE[@SNAP][:KEY=VALUE[:KEY=VALUE...]]
 *
 * A backslash escapes the next character, so a value may hold ':', '@',
 * '=' or '/' (written "\:", ...).  conf=PATH names the Ceph configuration
 * file, id=USER the Ceph user (without "client."); every other KEY=VALUE
 * is a Ceph option (rados_conf_set), e.g. "rados_osd_op_timeout=10".
 *
 * As QEMU does, an unescaped '@' anywhere after the pool starts the
 * snapshot name, even inside an option: escape '@' in values. */
#include <stdlib.h>
#include <string.h>

#include "rbd.h"

/* The first unescaped delim in s, or NULL. */
static char *
find_unescaped(char *s, char delim)
{
  for (; *s; s++) {
    if (*s == delim)
      return s;
    if (*s == '\\' && s[1])
      s++;
  }
  return NULL;
}

/* Cut s at its first unescaped delim: *rest is what follows it, or NULL
 * when there was none.  Returns s. */
static char *
next_token(char *s, char delim, char **rest)
{
  char *end = find_unescaped(s, delim);
  *rest = NULL;
  if (end) {
    *end = '\0';
    *rest = end + 1;
  }
  return s;
}

static void
unescape(char *s)
{
  char *out = s;
  for (; *s; s++) {
    if (*s == '\\' && s[1])
      s++;
    *out++ = *s;
  }
  *out = '\0';
}

static int
add_option(struct rbd_name *n, char *key, char *value)
{
  char **keys = realloc(n->keys, (n->nopts + 1) * sizeof *keys);
  if (keys)
    n->keys = keys;
  char **values = realloc(n->values, (n->nopts + 1) * sizeof *values);
  if (values)
    n->values = values;
  if (!keys || !values) {
    nbds_error("out of memory");
    return -1;
  }
  n->keys[n->nopts] = key;
  n->values[n->nopts] = value;
  n->nopts++;
  return 0;
}

static int
parse_options(struct rbd_name *n, char *p)
{
  while (p) {
    char *key = next_token(p, '=', &p);
    if (!p) {
      unescape(key);
      nbds_error("rbd: option '%s' has no value (expected KEY=VALUE)", key);
      return -1;
    }
    char *value = next_token(p, ':', &p);
    unescape(key);
    unescape(value);
    if (!*key) {
      nbds_error("rbd: an option has an empty name (expected KEY=VALUE)");
      return -1;
    }
    if (strcmp(key, "conf") == 0)
      n->conf = value;
    else if (strcmp(key, "id") == 0)
      n->user = value;
    else if (add_option(n, key, value) == -1)
      return -1;
  }
  return 0;
}

int
rbd_name_parse(const char *name, struct rbd_name *n)
{
  memset(n, 0, sizeof *n);
  if (strncmp(name, "rbd:", 4) != 0) {
    nbds_error("rbd: '%s' does not start with 'rbd:'", name);
    return -1;
  }
  n->buf = strdup(name + 4);
  if (!n->buf) {
    nbds_error("out of memory");
    return -1;
  }
  char *p;
  n->pool = next_token(n->buf, '/', &p);
  if (!p) {
    nbds_error("rbd: '%s' names no pool (expected rbd:POOL/IMAGE)", name);
    goto fail;
  }
  unescape(n->pool);

  char *image;
  if (find_unescaped(p, '@')) {
    image = next_token(p, '@', &p);
    n->snap = next_token(p, ':', &p);
    unescape(n->snap);
  } else
    image = next_token(p, ':', &p);
  if (find_unescaped(image, '/'))
    n->nspace = next_token(image, '/', &image);
  else
    n->nspace = image + strlen(image);  /* "" */
  unescape(n->nspace);
  unescape(image);
  n->image = image;

  if (!*n->pool || !*n->image || (n->snap && !*n->snap)) {
    nbds_error("rbd: '%s' has an empty %s name", name,
               !*n->pool ? "pool" : !*n->image ? "image" : "snapshot");
    goto fail;
  }
  if (parse_options(n, p) == -1)
    goto fail;
  return 0;

fail:
  rbd_name_free(n);
  return -1;
}

void
rbd_name_free(struct rbd_name *n)
{
  free(n->keys);
  free(n->values);
  free(n->buf);
  memset(n, 0, sizeof *n);
}
