/* The configuration file (--config): an INI file with a [server] section
 * for the server-wide options and one section per export, named after
 * the export.  Read whole and checked before anything uses it, at start
 * and on every SIGHUP (reload.c). */
#ifndef NBDS_SERVER_CONFIG_H
#define NBDS_SERVER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "export-settings.h"
#include "options.h"

struct config_export {
  struct export_settings s;
  char *text;                /* its keys and values as read, in order: a
                              * reload compares them */
};

struct config {
  struct config_export *exports;  /* in the file's order */
  size_t nexports;
  char *server_text;         /* [server]'s keys and values as read */
  const char **server_kv;    /* [server]'s pairs: key, value, key, ... */
  size_t nserver_kv;
  char **copies;             /* every string the above point to */
  size_t ncopies;
};

/* Read and check the whole file.  On any error log one line, naming the
 * file, the line and the key ("FILE:LINE: key 'KEY': what is wrong"), and
 * return NULL. */
struct config *config_load(const char *path);
void config_free(struct config *cfg);

/* Set the options [server] gives (the command line is applied after, so
 * it overrides them). */
void config_apply_server(const struct config *cfg, struct options *o);

#endif
