/* Every layer type this build knows, by the name a stack uses for it. */
#include <string.h>

#include "nbdstack/blockcache.h"
#include "nbdstack/layer.h"

extern const struct nbds_layer_ops nbds_file_ops;
extern const struct nbds_layer_ops nbds_raw_ops;
extern const struct nbds_layer_ops nbds_qcow2_ops;
extern const struct nbds_layer_ops nbds_nbd_ops;
extern const struct nbds_layer_ops nbds_cachepolicy_ops;
extern const struct nbds_layer_ops nbds_faults_ops;
extern const struct nbds_layer_ops nbds_nbdkit_ops;
#ifdef NBDS_HAVE_RBD
extern const struct nbds_layer_ops nbds_rbd_ops;
#endif

static const struct nbds_layer_type types[] = {
  { "file", &nbds_file_ops },
  { "raw", &nbds_raw_ops },
  { "qcow2", &nbds_qcow2_ops },
  { "nbd", &nbds_nbd_ops },
  { "cachepolicy", &nbds_cachepolicy_ops },
  { "faults", &nbds_faults_ops },
  { "blockcache", &nbds_blockcache_ops },
  { "nbdkit", &nbds_nbdkit_ops },
#ifdef NBDS_HAVE_RBD
  { "rbd", &nbds_rbd_ops },
#endif
};

const struct nbds_layer_ops *
nbds_layer_type_find(const char *name)
{
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
    if (strcmp(types[i].name, name) == 0)
      return types[i].ops;
  return NULL;
}
