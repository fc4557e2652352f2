/* The export for the one image named on a qemu-nbd style command line. */
#ifndef NBDS_SERVER_CMDLINE_EXPORT_H
#define NBDS_SERVER_CMDLINE_EXPORT_H

#include <stdbool.h>

#include "export.h"
#include "options.h"

/* Build raw over [blockcache over] cachepolicy over file, as the options
 * say.  On failure print one line and exit. */
struct export *cmdline_export_open(const struct options *o, bool uring);
/* True when the image argument is an NBD URI (the nbd layer serves it). */
bool cmdline_image_is_uri(const char *image);
/* True when the image argument names a Ceph RBD image (rbd:POOL/IMAGE). */
bool cmdline_image_is_rbd(const char *image);

#endif
