/* The spelling of a fault rule, as --inject-error takes it:
 *
 *   OPS:ERRNO[,rate=P][,file=PATH][,offset=A-B]
 *
 * OPS is one or more of read, write, flush, trim, zero, block-status,
 * cache, joined by '+', or all; ERRNO one of the errors an NBD reply can
 * carry (nbdkit's error filter takes the same set).  rate is a fraction
 * (0.25) or a percentage (25%), default 1; file makes the rule apply only
 * while PATH exists, so a test can switch it on and off at chosen
 * moments; offset limits it to requests that touch bytes A to B-1 (as
 * the layer below sees them: host offsets under qcow2). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "faults.h"

static const struct {
  const char *name;
  uint32_t ops;
} op_names[] = {
  { "read", 1u << NBDS_OP_READ },
  { "write", 1u << NBDS_OP_WRITE },
  { "flush", 1u << NBDS_OP_FLUSH },
  { "trim", 1u << NBDS_OP_TRIM },
  { "zero", 1u << NBDS_OP_ZERO },
  { "block-status", 1u << NBDS_OP_BLOCK_STATUS },
  { "cache", 1u << NBDS_OP_CACHE },
  { "all", ~0u },
};

static const struct {
  const char *name;
  int err;
} errno_names[] = {
  { "EPERM", EPERM },
  { "EIO", EIO },
  { "ENOMEM", ENOMEM },
  { "EINVAL", EINVAL },
  { "ENOSPC", ENOSPC },
  { "ESHUTDOWN", ESHUTDOWN },
};

/* OPS: names joined by '+', none of them empty. */
static int
parse_ops(const char *s, size_t len, uint32_t *ops)
{
  *ops = 0;
  for (;;) {
    const char *plus = memchr(s, '+', len);
    size_t n = plus ? (size_t) (plus - s) : len;
    size_t i;
    for (i = 0; i < sizeof op_names / sizeof op_names[0]; i++)
      if (strlen(op_names[i].name) == n && strncmp(op_names[i].name, s, n) == 0)
        break;
    if (i == sizeof op_names / sizeof op_names[0]) {
      nbds_error("--inject-error: unknown operation '%.*s' (read, write, "
                 "flush, trim, zero, block-status, cache, all)", (int) n, s);
      return -1;
    }
    *ops |= op_names[i].ops;
    if (!plus)
      return 0;
    len -= n + 1;
    s = plus + 1;
  }
}

static int
parse_errno(const char *s, size_t len, int *err)
{
  for (size_t i = 0; i < sizeof errno_names / sizeof errno_names[0]; i++)
    if (strlen(errno_names[i].name) == len &&
        strncasecmp(errno_names[i].name, s, len) == 0) {
      *err = errno_names[i].err;
      return 0;
    }
  nbds_error("--inject-error: unknown error '%.*s' (EIO, ENOSPC, EPERM, "
             "ENOMEM, EINVAL, ESHUTDOWN)", (int) len, s);
  return -1;
}

static int
parse_rate(const char *s, double *rate)
{
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end != s && *end == '%' && end[1] == '\0') {
    v /= 100;
    end++;
  }
  if (errno || end == s || *end || !(v > 0 && v <= 1)) {
    nbds_error("--inject-error: rate must be in (0, 1] or (0%%, 100%%], "
               "not '%s'", s);
    return -1;
  }
  *rate = v;
  return 0;
}

static int
parse_offset(const char *s, uint64_t *start, uint64_t *end)
{
  char *dash, *stop;
  errno = 0;
  if (*s == '-')
    goto bad;
  *start = strtoull(s, &dash, 0);
  if (errno || dash == s || *dash != '-' || dash[1] == '-' || dash[1] == '\0')
    goto bad;
  *end = strtoull(dash + 1, &stop, 0);
  if (errno || *stop || *end <= *start)
    goto bad;
  return 0;
bad:
  nbds_error("--inject-error: offset must be A-B with A < B (bytes), "
             "not '%s'", s);
  return -1;
}

int
fault_rule_parse(const char *spec, struct fault_rule *r)
{
  *r = (struct fault_rule) { .rate = 1, .start = 0, .end = UINT64_MAX };
  const char *colon = strchr(spec, ':');
  const char *comma = strchr(spec, ',');
  if (!colon || (comma && comma < colon)) {
    nbds_error("--inject-error: expected OPS:ERRNO[,rate=P][,file=PATH]"
               "[,offset=A-B], not '%s'", spec);
    return -1;
  }
  const char *errs = colon + 1;
  size_t errlen = comma ? (size_t) (comma - errs) : strlen(errs);
  if (parse_ops(spec, colon - spec, &r->ops) == -1 ||
      parse_errno(errs, errlen, &r->err) == -1)
    return -1;

  char *opts = comma ? strdup(comma + 1) : NULL;
  if (comma && !opts) {
    nbds_error("out of memory");
    return -1;
  }
  char *rest = opts, *kv;
  while ((kv = strsep(&rest, ","))) {
    char *eq = strchr(kv, '=');
    int bad = 0;
    if (eq)
      *eq++ = '\0';
    if (!eq) {
      nbds_error("--inject-error: '%s' in '%s' needs a value", kv, spec);
      bad = -1;
    } else if (strcmp(kv, "rate") == 0)
      bad = parse_rate(eq, &r->rate);
    else if (strcmp(kv, "offset") == 0)
      bad = parse_offset(eq, &r->start, &r->end);
    else if (strcmp(kv, "file") == 0 && *eq && !r->file) {
      if (!(r->file = strdup(eq))) {
        nbds_error("out of memory");
        bad = -1;
      }
    } else {
      nbds_error("--inject-error: unknown, repeated or empty setting '%s' "
                 "(rate, file, offset)", kv);
      bad = -1;
    }
    if (bad) {
      free(opts);
      fault_rule_free(r);
      return -1;
    }
  }
  free(opts);
  return 0;
}

void
fault_rule_free(struct fault_rule *r)
{
  free(r->file);
  r->file = NULL;
}
