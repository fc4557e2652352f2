/* Logging: one line per message, to stderr, prefixed with the program. */
#ifndef NBDS_SERVER_LOG_H
#define NBDS_SERVER_LOG_H

#include <stdbool.h>

extern bool nbds_verbose;

void nbds_log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void nbds_log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Only with -v. */
#define nbds_log_debug(...) \
  do { if (nbds_verbose) nbds_log_info(__VA_ARGS__); } while (0)

#endif
