#include <stdarg.h>
#include <stdio.h>

#include "log.h"

bool nbds_verbose;

static void
vlog(const char *fmt, va_list ap)
{
  /* One fprintf per line so lines from several threads do not mix. */
  char line[1024];
  vsnprintf(line, sizeof line, fmt, ap);
  fprintf(stderr, "nbdstack: %s\n", line);
}

void
nbds_log_error(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vlog(fmt, ap);
  va_end(ap);
}

void
nbds_log_info(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vlog(fmt, ap);
  va_end(ap);
}
