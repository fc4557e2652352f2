/* The command line: qemu-nbd's options, with qemu-nbd's names and meanings,
 * plus nbdstack's own (--threads, --config, ...). */
#ifndef NBDS_SERVER_OPTIONS_H
#define NBDS_SERVER_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>

#include "export-settings.h"
#include "tls.h"

enum aio_mode { AIO_DEFAULT, AIO_IO_URING, AIO_THREADS };

#define OPTIONS_MAX_ALLOW 16

struct config;

struct options {
  struct export_settings ex; /* the image's export, without --config */
  const char *config;        /* --config: the configuration file */
  struct config *cfg;        /* what it holds; its strings are used here */
  const char *socket_path;   /* -k */
  const char *port;          /* -p */
  const char *bind;          /* -b */
  bool listener_from_config; /* socket/port/bind came from [server] */
  bool persistent;           /* -t */
  unsigned shared;           /* -e */
  enum aio_mode aio;
  bool fork;
  const char *pid_file;
  bool verbose;
  bool single;               /* --single: one client on stdin/stdout */
  bool log_syslog;           /* --log=syslog */
  unsigned threads;          /* 0: one per CPU */
  unsigned busy_poll;        /* microseconds (default 100), 0: none */
  unsigned handshake_timeout;  /* seconds, 0: none (default 10) */
  unsigned idle_timeout;     /* seconds, 0: none (the default) */
  struct tls_config tls;     /* --tls*, or --object tls-creds-* --tls-creds */
  bool tls_mode_set;         /* --tls given (else credentials imply on) */
  const char *allow[OPTIONS_MAX_ALLOW];  /* --allow lists */
  unsigned nallow;
  const char *metrics;       /* --metrics: HOST:PORT, :PORT or socket path */
  const char *metrics_json;  /* --metrics-json: file SIGUSR1 writes */
};

/* Parse argv (and, with --config, the configuration file's [server]
 * section, which the command line overrides).  On a bad command line
 * print one line to stderr and exit 1; -h and -V print and exit 0. */
void options_parse(int argc, char **argv, struct options *o);

/* Set one server-wide option by its configuration-file key (its long
 * option name).  The value is kept, not copied.  NULL when taken; else
 * what is wrong ("unknown key" for a key that is not a server option). */
const char *options_set(struct options *o, const char *key,
                        const char *value);

#endif
