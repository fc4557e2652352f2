/* Logging: one line per message, to stderr (prefixed with the program) or
 * to syslog (--log=syslog). */
#ifndef NBDS_SERVER_LOG_H
#define NBDS_SERVER_LOG_H

#include <stdbool.h>

extern bool nbds_verbose;

/* Send every later message to syslog (facility daemon) instead of stderr. */
void nbds_log_to_syslog(void);

void nbds_log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void nbds_log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void nbds_log_debug_line(const char *fmt, ...)
  __attribute__((format(printf, 1, 2)));
/* Only with -v.  Without it the cost is one test of a global: the
 * arguments are not even evaluated. */
#define nbds_log_debug(...) \
  do { \
    if (__builtin_expect(nbds_verbose, 0)) \
      nbds_log_debug_line(__VA_ARGS__); \
  } while (0)

#endif
