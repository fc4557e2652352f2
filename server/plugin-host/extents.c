/* nbdkit's extent and export lists, as a plugin fills them. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"

/* nbdkit's rules: extents come in ascending, contiguous order; those
 * before the range start are dropped, the first kept one must cover the
 * start, and whatever lies past the range end is cut off. */
NBDKIT_DLL_PUBLIC int
nbdkit_add_extent(struct nbdkit_extents *ex, uint64_t offset,
                  uint64_t length, uint32_t type)
{
  if (ex->started && ex->next != offset) {
    nbdkit_error("nbdkit_add_extent: extents must be added in ascending "
                 "order and must be contiguous");
    errno = ERANGE;
    return -1;
  }
  if (offset + length < offset) {
    nbdkit_error("nbdkit_add_extent: extent overflows");
    errno = ERANGE;
    return -1;
  }
  ex->started = true;
  ex->next = offset + length;
  if (length == 0 || offset >= ex->end)
    return 0;
  if (offset + length > ex->end)
    length = ex->end - offset;
  if (ex->out->covered == 0) {
    if (offset + length <= ex->start)
      return 0;
    if (offset > ex->start) {
      nbdkit_error("nbdkit_add_extent: the first extent must not start "
                   "after %llu", (unsigned long long) ex->start);
      errno = ERANGE;
      return -1;
    }
    length -= ex->start - offset;
  }
  /* A full list is not an error: the client gets a shorter answer. */
  nbds_extents_add(ex->out, length,
                   type & (NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO));
  return 0;
}

NBDKIT_DLL_PUBLIC void
nbdkit_extents_free(struct nbdkit_extents *ex)
{
  /* Ours live on the caller's stack; a plugin never owns one. */
  (void) ex;
}

/* The host never asks for .list_exports, but plugins link these. */
struct nbdkit_exports {
  char **names;
  size_t n;
};

NBDKIT_DLL_PUBLIC int
nbdkit_add_export(struct nbdkit_exports *e, const char *name,
                  const char *description)
{
  (void) description;
  char **v = realloc(e->names, (e->n + 1) * sizeof *v);
  char *copy = v ? strdup(name) : NULL;
  if (v)
    e->names = v;
  if (!copy) {
    nbdkit_error("nbdkit_add_export: out of memory");
    errno = ENOMEM;
    return -1;
  }
  e->names[e->n++] = copy;
  return 0;
}

NBDKIT_DLL_PUBLIC int
nbdkit_use_default_export(struct nbdkit_exports *e)
{
  return nbdkit_add_export(e, "", NULL);
}

NBDKIT_DLL_PUBLIC void
nbdkit_exports_free(struct nbdkit_exports *e)
{
  if (!e)
    return;
  for (size_t i = 0; i < e->n; i++)
    free(e->names[i]);
  free(e->names);
  free(e);
}
