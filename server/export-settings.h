/* What one export is made of: the settings a qemu-nbd style command line
 * gives its one image, or a section of the configuration file gives each
 * of its exports.  stack.c builds the export from them, whichever it was. */
#ifndef NBDS_SERVER_EXPORT_SETTINGS_H
#define NBDS_SERVER_EXPORT_SETTINGS_H

#include <stdbool.h>
#include <stdint.h>

#include "export.h"

struct allow_list;

struct export_settings {
  const char *name;          /* -x, or the section's name */
  const char *description;   /* -D, NULL: none */
  const char *image;         /* a file, an NBD URI or rbd:...; with a plugin,
                              * the plugin's name */
  const char *plugin;        /* an nbdkit plugin name or path, or NULL */
  const char *const *plugin_args;  /* its KEY=VALUE parameters */
  int nplugin_args;
  const char *upstream_timeout;  /* seconds, NULL: the nbd layer's default */
  const char *format;        /* NULL: raw */
  const char *snapshot_name; /* -l: a qcow2 internal snapshot */
  bool temp_overlay;         /* -s: writes go to a temporary overlay */
  bool allocation_depth;     /* -A: offer qemu:allocation-depth */
  const char *l2_cache_size;
  bool bitmaps_in_use;       /* --bitmaps=in-use */
  const char *rbd_timeout;   /* seconds, NULL: the rbd layer's default */
  bool readonly;
  uint64_t offset;           /* -o (raw) */
  enum discard_mode discard;
  enum detect_zeroes detect_zeroes;
  const char *cache;         /* a cache mode name or "auto"; NULL: writeback */
  const char *block_cache;   /* SIZE, NULL: no block cache */
  const char *block_cache_block;
  const char *block_cache_read_miss;
  const char *block_cache_write_hit;
  const char *block_cache_write_miss;
  /* Only from the command line: --inject-error, the faults layer's rules
   * (a testing option; the layer checks them and their number). */
  const char *inject_errors[8];
  int ninject_errors;
  /* Only from a configuration section: */
  bool tls_required;         /* tls = require */
  const char *allow;         /* client networks, NULL: every client */
};

/* Set one setting by its configuration-file key (the command line's long
 * option name, but `readonly`).  The value is kept, not copied.  NULL when
 * it is taken; else what is wrong ("unknown key" for a key that is not an
 * export's). */
const char *export_settings_set(struct export_settings *s, const char *key,
                                const char *value);

/* The rules between settings (a qcow2 snapshot needs qcow2, ...).  NULL
 * when they hold; else what is wrong, with *key the setting at fault, as
 * the configuration file spells it. */
const char *export_settings_check(const struct export_settings *s,
                                  const char **key);

#endif
