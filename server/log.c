#include <stdarg.h>
#include <stdio.h>

#include "log.h"

bool nbds_verbose;

#ifdef _WIN32
/* The Win32 file driver's build (no server, no syslog): stderr only. */
enum { LOG_ERR = 3, LOG_INFO = 6, LOG_DEBUG = 7 };
static const bool use_syslog = false;
#define syslog(priority, ...) ((void) (priority))
#else
#include <syslog.h>

static bool use_syslog;

void
nbds_log_to_syslog(void)
{
  openlog("nbdstack", LOG_PID, LOG_DAEMON);
  use_syslog = true;
}
#endif

static void
vlog(int priority, const char *fmt, va_list ap)
{
  /* One call per line so lines from several threads do not mix. */
  char line[1024];
  vsnprintf(line, sizeof line, fmt, ap);
  if (use_syslog)
    syslog(priority, "%s", line);
  else
    fprintf(stderr, "nbdstack: %s\n", line);
}

void
nbds_log_error(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vlog(LOG_ERR, fmt, ap);
  va_end(ap);
}

void
nbds_log_info(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vlog(LOG_INFO, fmt, ap);
  va_end(ap);
}

void
nbds_log_debug_line(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vlog(LOG_DEBUG, fmt, ap);
  va_end(ap);
}
