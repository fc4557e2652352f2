/* Option values, spelt the same on the command line and in the
 * configuration file.  Each parser returns false on a value it does not
 * know; the caller says where the value came from. */
#ifndef NBDS_SERVER_VALUES_H
#define NBDS_SERVER_VALUES_H

#include <stdbool.h>
#include <stdint.h>

#include "export.h"
#include "tls.h"

/* Decimal, octal (0...) or hex (0x...); no sign. */
bool parse_u64(const char *s, uint64_t *out);
/* on/yes/true or off/no/false, as QEMU spells booleans. */
bool parse_bool(const char *s, bool *out);
/* A number of seconds, 0 to 86400: NULL, or what is wrong. */
const char *value_seconds(const char *value, uint64_t *secs);
/* parse_bool into *field: NULL, or what is wrong (value_error). */
const char *value_set_bool(bool *field, const char *value);
/* writeback, writethrough, none (or off), directsync, unsafe, auto: *mode
 * is the canonical name. */
bool parse_cache_mode(const char *s, const char **mode);
bool parse_discard(const char *s, enum discard_mode *out);
bool parse_detect_zeroes(const char *s, enum detect_zeroes *out);
bool parse_tls_mode(const char *s, enum tls_mode *out);
/* raw or qcow2. */
bool parse_format(const char *s);

/* A message about a bad value, formatted into one static buffer: read it
 * before the next call. */
const char *value_error(const char *fmt, ...)
  __attribute__((format(printf, 1, 2)));

#define CACHE_MODES "writeback, writethrough, none, directsync, unsafe, auto"

#endif
