/* An export's stack of layers, built from its settings: the one function
 * the command line's image and every configuration section go through. */
#ifndef NBDS_SERVER_STACK_H
#define NBDS_SERVER_STACK_H

#include <stdbool.h>

#include "export-settings.h"

/* Build [overlay over] raw or qcow2 over [blockcache over] cachepolicy
 * over the protocol layer, as the settings say, and the export around it
 * (not yet in the list).  On failure log one line naming the export and
 * return NULL. */
struct export *export_open(const struct export_settings *s, bool uring);
/* True when the image names an NBD URI (the nbd layer serves it). */
bool image_is_uri(const char *image);
/* True when the image names a Ceph RBD image (rbd:POOL/IMAGE). */
bool image_is_rbd(const char *image);

#endif
