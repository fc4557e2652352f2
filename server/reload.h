/* SIGHUP: read the configuration file again and change the exports to
 * match it, on reactor 0. */
#ifndef NBDS_SERVER_RELOAD_H
#define NBDS_SERVER_RELOAD_H

#include <stdbool.h>

struct config;

/* Open and offer every export cfg describes, with io_uring or not (as
 * later reloads will).  False (the failing one logged) if one cannot be
 * opened. */
bool reload_open_all(const struct config *cfg, bool uring);
/* Watch for SIGHUP on reactor 0's loop; re-read path then. */
void reload_start(const char *path);

#endif
