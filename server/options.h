/* The command line: qemu-nbd's options, with qemu-nbd's names and meanings,
 * plus nbdstack's own (--threads). */
#ifndef NBDS_SERVER_OPTIONS_H
#define NBDS_SERVER_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>

#include "export.h"
#include "tls.h"

enum aio_mode { AIO_DEFAULT, AIO_IO_URING, AIO_THREADS };

struct options {
  const char *image;         /* the FILE argument (with --plugin: its name) */
  const char *plugin;        /* --plugin: an nbdkit plugin name or path */
  const char *upstream_timeout;  /* --upstream-timeout: seconds, NULL: default */
  const char *const *plugin_args;  /* its KEY=VALUE parameters */
  int nplugin_args;
  const char *format;        /* NULL: raw, unless the image is another format */
  const char *snapshot_name; /* -l: a qcow2 internal snapshot */
  bool temp_overlay;         /* -s: writes go to a temporary overlay */
  bool allocation_depth;     /* -A: offer qemu:allocation-depth */
  const char *l2_cache_size; /* --l2-cache-size */
  bool bitmaps_in_use;       /* --bitmaps=in-use */
  const char *rbd_timeout;   /* --rbd-timeout=SECONDS, NULL: the default */
  const char *socket_path;   /* -k */
  const char *port;          /* -p */
  const char *bind;          /* -b */
  const char *export_name;   /* -x */
  const char *description;   /* -D */
  bool readonly;             /* -r */
  bool persistent;           /* -t */
  unsigned shared;           /* -e */
  uint64_t offset;           /* -o */
  enum aio_mode aio;
  enum discard_mode discard;
  enum detect_zeroes detect_zeroes;
  const char *cache;         /* --cache / -n: a mode name or "auto" */
  const char *block_cache;   /* --block-cache=SIZE, NULL: no block cache */
  const char *block_cache_block;
  const char *block_cache_read_miss;
  const char *block_cache_write_hit;
  const char *block_cache_write_miss;
  bool fork;
  const char *pid_file;
  bool verbose;
  bool single;               /* --single: one client on stdin/stdout */
  bool log_syslog;           /* --log=syslog */
  unsigned threads;          /* 0: one per CPU */
  unsigned handshake_timeout;  /* seconds, 0: none (default 10) */
  unsigned idle_timeout;     /* seconds, 0: none (the default) */
  struct tls_config tls;     /* --tls*, or --object tls-creds-* --tls-creds */
  const char *metrics;       /* --metrics: HOST:PORT, :PORT or socket path */
  const char *metrics_json;  /* --metrics-json: file SIGUSR1 writes */
  /* --inject-error: the faults layer's rules (a testing option). */
  const char *inject_errors[8];
  int ninject_errors;
};

/* Parse argv.  On a bad command line print one line to stderr and exit
 * 1; -h and -V print and exit 0. */
void options_parse(int argc, char **argv, struct options *o);

#endif
