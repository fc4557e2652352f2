/* Every layer type the Windows build knows.  The server's registry
 * (server/layers.c) names layers that need io_uring. */
#include <string.h>

#include "nbdstack/layer.h"

extern const struct nbds_layer_ops nbds_win32file_ops;
extern const struct nbds_layer_ops nbds_cachepolicy_ops;

static const struct nbds_layer_type types[] = {
  { "win32file", &nbds_win32file_ops },
  { "cachepolicy", &nbds_cachepolicy_ops },
};

const struct nbds_layer_ops *
nbds_layer_type_find(const char *name)
{
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
    if (strcmp(types[i].name, name) == 0)
      return types[i].ops;
  return NULL;
}
