/* An export's settings, for the command line and the configuration file
 * alike: their values and the rules between them.  The messages name the
 * settings as the configuration file does; the command line's options
 * have the same names with two dashes. */
#include <string.h>

#include "nbdstack/layer.h"
#include "allow.h"
#include "export-settings.h"
#include "protocol.h"
#include "stack.h"
#include "values.h"

static const char *
set_string(const char **field, const char *value)
{
  if (strlen(value) > NBD_MAX_STRING)
    return value_error("longer than %d bytes", NBD_MAX_STRING);
  *field = value;
  return NULL;
}

static const char *
set_seconds(const char **field, const char *value)
{
  uint64_t v;
  const char *err = value_seconds(value, &v);
  if (!err)
    *field = value;
  return err;
}

static const char *
set_size(const char **field, const char *value)
{
  uint64_t v;
  if (nbds_parse_size(value, &v) == -1)
    return value_error("'%s' is not a size (a number, with K, M or G)", value);
  *field = value;
  return NULL;
}

static const char *
set_choice(const char **field, const char *value, const char *a,
           const char *b)
{
  if (strcmp(value, a) && strcmp(value, b))
    return value_error("'%s' is neither %s nor %s", value, a, b);
  *field = value;
  return NULL;
}

const char *
export_settings_set(struct export_settings *s, const char *key,
                    const char *value)
{
  uint64_t v;
  if (strcmp(key, "description") == 0)
    return set_string(&s->description, value);
  if (strcmp(key, "format") == 0) {
    if (!parse_format(value))
      return value_error("unknown image format '%s' (raw, qcow2)", value);
    s->format = value;
    return NULL;
  }
  if (strcmp(key, "readonly") == 0)
    return value_set_bool(&s->readonly, value);
  if (strcmp(key, "offset") == 0) {
    if (!parse_u64(value, &v) || v > INT64_MAX)
      return value_error("'%s' is not an offset", value);
    s->offset = v;
    return NULL;
  }
  if (strcmp(key, "load-snapshot") == 0) {
    s->readonly = true;  /* as qemu-nbd: a snapshot is served read-only */
    return set_string(&s->snapshot_name, value);
  }
  if (strcmp(key, "allocation-depth") == 0)
    return value_set_bool(&s->allocation_depth, value);
  if (strcmp(key, "l2-cache-size") == 0)
    return set_size(&s->l2_cache_size, value);
  if (strcmp(key, "bitmaps") == 0) {
    if (strcmp(value, "in-use") != 0)
      return value_error("the only value is in-use, not '%s'", value);
    s->bitmaps_in_use = true;
    return NULL;
  }
  if (strcmp(key, "rbd-timeout") == 0)
    return set_seconds(&s->rbd_timeout, value);
  if (strcmp(key, "upstream-timeout") == 0)
    return set_seconds(&s->upstream_timeout, value);
  if (strcmp(key, "cache") == 0)
    return parse_cache_mode(value, &s->cache) ? NULL
           : value_error("invalid cache mode '%s' (%s)", value, CACHE_MODES);
  if (strcmp(key, "discard") == 0)
    return parse_discard(value, &s->discard) ? NULL
           : value_error("invalid discard mode '%s' (ignore, unmap)", value);
  if (strcmp(key, "detect-zeroes") == 0)
    return parse_detect_zeroes(value, &s->detect_zeroes) ? NULL
           : value_error("invalid detect-zeroes mode '%s' (off, on, unmap)", value);
  if (strcmp(key, "block-cache") == 0)
    return set_size(&s->block_cache, value);
  if (strcmp(key, "block-cache-block") == 0)
    return set_size(&s->block_cache_block, value);
  if (strcmp(key, "block-cache-read-miss") == 0)
    return set_choice(&s->block_cache_read_miss, value, "allocate", "bypass");
  if (strcmp(key, "block-cache-write-hit") == 0)
    return set_choice(&s->block_cache_write_hit, value, "write-back",
                      "write-through");
  if (strcmp(key, "block-cache-write-miss") == 0)
    return set_choice(&s->block_cache_write_miss, value, "allocate",
                      "no-allocate");
  if (strcmp(key, "tls") == 0) {
    enum tls_mode m;
    if (!parse_tls_mode(value, &m))
      return value_error("invalid tls mode '%s' (off, on, require)", value);
    s->tls_required = m == TLS_REQUIRE;
    return NULL;
  }
  if (strcmp(key, "allow") == 0) {
    const char *entry = allow_list_check(value);
    if (entry)
      return value_error("invalid address or network '%s' (ADDR[/PREFIX])", entry);
    s->allow = value;
    return NULL;
  }
  return "unknown key";
}

static const char *
fault(const char **key, const char *k, const char *msg)
{
  *key = k;
  return msg;
}

const char *
export_settings_check(const struct export_settings *s, const char **key)
{
  bool qcow2 = s->format && strcmp(s->format, "qcow2") == 0;
  if (qcow2 && s->offset)
    return fault(key, "offset", "offset applies to raw images only");
  if (qcow2 && s->plugin)
    return fault(key, "format",
                 "format qcow2 over an nbdkit plugin is not supported");
  if (!qcow2 && s->snapshot_name)
    return fault(key, "load-snapshot", "a snapshot needs format qcow2");
  if (!qcow2 && s->l2_cache_size)
    return fault(key, "l2-cache-size", "l2-cache-size needs format qcow2");
  if (!qcow2 && s->bitmaps_in_use)
    return fault(key, "bitmaps", "bitmaps needs format qcow2");
  if (s->rbd_timeout && (s->plugin || !image_is_rbd(s->image)))
    return fault(key, "rbd-timeout", "rbd-timeout applies to rbd: images "
                 "only");
  if (s->upstream_timeout && (s->plugin || !image_is_uri(s->image)))
    return fault(key, "upstream-timeout", "upstream-timeout applies only to "
                 "an NBD URI image");
  if (s->detect_zeroes == DETECT_ZEROES_UNMAP && s->discard != DISCARD_UNMAP)
    return fault(key, "detect-zeroes", "detect-zeroes unmap needs discard "
                 "unmap");
  if (!s->block_cache && (s->block_cache_block || s->block_cache_read_miss ||
                          s->block_cache_write_hit ||
                          s->block_cache_write_miss))
    return fault(key, "block-cache", "the block-cache-* settings need "
                 "block-cache SIZE");
  return NULL;
}
