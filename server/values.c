/* Option values shared by the command line (options.c) and the
 * configuration file (config.c), so that both accept the same words. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "values.h"

const char *
value_error(const char *fmt, ...)
{
  static char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return msg;
}

bool
parse_u64(const char *s, uint64_t *out)
{
  char *end;
  errno = 0;
  if (!*s || *s == '-')
    return false;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || *end)
    return false;
  *out = v;
  return true;
}

bool
parse_bool(const char *s, bool *out)
{
  if (!strcmp(s, "on") || !strcmp(s, "yes") || !strcmp(s, "true"))
    *out = true;
  else if (!strcmp(s, "off") || !strcmp(s, "no") || !strcmp(s, "false"))
    *out = false;
  else
    return false;
  return true;
}

const char *
value_seconds(const char *value, uint64_t *secs)
{
  if (!parse_u64(value, secs) || *secs > 86400)
    return value_error("'%s' is not a number of seconds (0 to 86400)",
                       value);
  return NULL;
}

const char *
value_set_bool(bool *field, const char *value)
{
  return parse_bool(value, field) ? NULL
         : value_error("'%s' is not a boolean (true or false)", value);
}

bool
parse_cache_mode(const char *s, const char **mode)
{
  static const char *const modes[] = {
    "writeback", "writethrough", "none", "directsync", "unsafe", "auto",
  };
  if (strcmp(s, "off") == 0)
    s = "none";  /* qemu's alias */
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
    if (strcmp(s, modes[i]) == 0) {
      *mode = modes[i];
      return true;
    }
  return false;
}

bool
parse_discard(const char *s, enum discard_mode *out)
{
  if (strcmp(s, "ignore") == 0 || strcmp(s, "off") == 0)
    *out = DISCARD_IGNORE;
  else if (strcmp(s, "unmap") == 0 || strcmp(s, "on") == 0)
    *out = DISCARD_UNMAP;
  else
    return false;
  return true;
}

bool
parse_detect_zeroes(const char *s, enum detect_zeroes *out)
{
  if (strcmp(s, "off") == 0)
    *out = DETECT_ZEROES_OFF;
  else if (strcmp(s, "on") == 0)
    *out = DETECT_ZEROES_ON;
  else if (strcmp(s, "unmap") == 0)
    *out = DETECT_ZEROES_UNMAP;
  else
    return false;
  return true;
}

bool
parse_tls_mode(const char *s, enum tls_mode *out)
{
  if (strcmp(s, "off") == 0)
    *out = TLS_OFF;
  else if (strcmp(s, "on") == 0)
    *out = TLS_ON;
  else if (strcmp(s, "require") == 0)
    *out = TLS_REQUIRE;
  else
    return false;
  return true;
}

bool
parse_format(const char *s)
{
  return strcmp(s, "raw") == 0 || strcmp(s, "qcow2") == 0;
}
