/* The nbdkit_* functions a plugin imports from its server, with the
 * semantics nbdkit-plugin(3) documents.  They are exported from the
 * nbdstack executable (export_dynamic), where the dlopen'ed plugin finds
 * them. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "host.h"
#include "log.h"

/* ---- errors ---- */

static _Thread_local int set_err;
static _Thread_local bool capture;
static _Thread_local bool have_msg;
static _Thread_local char last_msg[1024];

void
ph_error_reset(void)
{
  set_err = 0;
}

int
ph_error_get(const struct ph_plugin *h, int saved)
{
  if (set_err > 0)
    return set_err;
  if (h->p.errno_is_preserved && saved > 0)
    return saved;
  return EIO;
}

void
ph_error_capture(bool on)
{
  capture = on;
  have_msg = false;
}

const char *
ph_error_last(void)
{
  return have_msg ? last_msg : NULL;
}

NBDKIT_DLL_PUBLIC void
nbdkit_set_error(int err)
{
  set_err = err;
}

NBDKIT_DLL_PUBLIC void
nbdkit_verror(const char *fmt, va_list args)
{
  int saved = errno;
  errno = saved;  /* for %m */
  vsnprintf(last_msg, sizeof last_msg, fmt, args);
  size_t n = strlen(last_msg);
  while (n > 0 && last_msg[n - 1] == '\n')
    last_msg[--n] = '\0';
  have_msg = true;
  if (!capture)
    nbds_log_error("nbdkit plugin: %s", last_msg);
  errno = saved;
}

NBDKIT_DLL_PUBLIC void
nbdkit_error(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  nbdkit_verror(fmt, ap);
  va_end(ap);
}

NBDKIT_DLL_PUBLIC void
nbdkit_vdebug(const char *fmt, va_list args)
{
  int saved = errno;
  if (nbds_verbose) {
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, args);
    nbds_log_info("nbdkit plugin: debug: %s", msg);
  }
  errno = saved;
}

NBDKIT_DLL_PUBLIC void
nbdkit_debug(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  nbdkit_vdebug(fmt, ap);
  va_end(ap);
}

/* ---- parsing ---- */

NBDKIT_DLL_PUBLIC int64_t
nbdkit_parse_size(const char *str)
{
  char *end;
  errno = 0;
  intmax_t v = strtoimax(str, &end, 10);
  if (str == end) {
    nbdkit_error("could not parse size string (%s)", str);
    return -1;
  }
  if (v < 0) {
    nbdkit_error("size cannot be negative (%s)", str);
    return -1;
  }
  if (errno) {
    nbdkit_error("size (%s) exceeds maximum value", str);
    return -1;
  }
  int64_t scale = 1;
  switch (*end) {
  case '\0':
    return v;
  case 'e': case 'E': scale *= 1024; /* fall through */
  case 'p': case 'P': scale *= 1024; /* fall through */
  case 't': case 'T': scale *= 1024; /* fall through */
  case 'g': case 'G': scale *= 1024; /* fall through */
  case 'm': case 'M': scale *= 1024; /* fall through */
  case 'k': case 'K': scale *= 1024; /* fall through */
  case 'b': case 'B': break;
  case 's': case 'S': scale = 512; break;  /* sectors */
  default:
    nbdkit_error("could not parse size: unknown suffix '%s'", end);
    return -1;
  }
  if (end[1]) {
    nbdkit_error("could not parse size: unknown suffix '%s'", end);
    return -1;
  }
  if (INT64_MAX / scale < v) {
    nbdkit_error("overflow computing size (%s)", str);
    return -1;
  }
  return v * scale;
}

NBDKIT_DLL_PUBLIC int
nbdkit_parse_bool(const char *str)
{
  static const char *const yes[] = { "1", "true", "t", "yes", "y", "on" };
  static const char *const no[] = { "0", "false", "f", "no", "n", "off" };
  for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
    if (strcasecmp(str, yes[i]) == 0)
      return 1;
    if (strcasecmp(str, no[i]) == 0)
      return 0;
  }
  nbdkit_error("could not decipher boolean (%s)", str);
  return -1;
}

/* Decimal, 0x hex or 0 octal; the whole string; in [min, max]. */
static int
parse_signed(const char *what, const char *str, intmax_t min, intmax_t max,
             intmax_t *r)
{
  char *end;
  errno = 0;
  intmax_t v = strtoimax(str, &end, 0);
  if (str == end || *end) {
    nbdkit_error("%s: could not parse number: \"%s\"", what, str);
    return -1;
  }
  if (errno == ERANGE || v < min || v > max) {
    nbdkit_error("%s: number out of range: \"%s\"", what, str);
    return -1;
  }
  *r = v;
  return 0;
}

static int
parse_unsigned(const char *what, const char *str, uintmax_t max,
               uintmax_t *r)
{
  /* strtoumax accepts "-1" as a huge number: refuse any sign. */
  const char *p = str;
  while (*p == ' ' || (*p >= '\t' && *p <= '\r'))
    p++;
  if (*p == '-') {
    nbdkit_error("%s: negative numbers are not allowed: \"%s\"", what, str);
    return -1;
  }
  char *end;
  errno = 0;
  uintmax_t v = strtoumax(str, &end, 0);
  if (str == end || *end) {
    nbdkit_error("%s: could not parse number: \"%s\"", what, str);
    return -1;
  }
  if (errno == ERANGE || v > max) {
    nbdkit_error("%s: number out of range: \"%s\"", what, str);
    return -1;
  }
  *r = v;
  return 0;
}

#define PARSE_S(name, type, min, max)                                   \
  NBDKIT_DLL_PUBLIC int                                                 \
  name(const char *what, const char *str, type *r)                      \
  {                                                                     \
    intmax_t v;                                                         \
    if (parse_signed(what, str, min, max, &v) == -1)                    \
      return -1;                                                        \
    if (r)                                                              \
      *r = v;                                                           \
    return 0;                                                           \
  }
#define PARSE_U(name, type, max)                                        \
  NBDKIT_DLL_PUBLIC int                                                 \
  name(const char *what, const char *str, type *r)                      \
  {                                                                     \
    uintmax_t v;                                                        \
    if (parse_unsigned(what, str, max, &v) == -1)                       \
      return -1;                                                        \
    if (r)                                                              \
      *r = v;                                                           \
    return 0;                                                           \
  }

PARSE_S(nbdkit_parse_int, int, INT_MIN, INT_MAX)
PARSE_U(nbdkit_parse_unsigned, unsigned, UINT_MAX)
PARSE_S(nbdkit_parse_int8_t, int8_t, INT8_MIN, INT8_MAX)
PARSE_U(nbdkit_parse_uint8_t, uint8_t, UINT8_MAX)
PARSE_S(nbdkit_parse_int16_t, int16_t, INT16_MIN, INT16_MAX)
PARSE_U(nbdkit_parse_uint16_t, uint16_t, UINT16_MAX)
PARSE_S(nbdkit_parse_int32_t, int32_t, INT32_MIN, INT32_MAX)
PARSE_U(nbdkit_parse_uint32_t, uint32_t, UINT32_MAX)
PARSE_S(nbdkit_parse_int64_t, int64_t, INT64_MIN, INT64_MAX)
PARSE_U(nbdkit_parse_uint64_t, uint64_t, UINT64_MAX)

/* ---- paths and passwords ---- */

NBDKIT_DLL_PUBLIC char *
nbdkit_absolute_path(const char *path)
{
  if (!path || !*path) {
    nbdkit_error("cannot convert an empty path to an absolute path");
    return NULL;
  }
  char *r;
  if (*path == '/')
    r = strdup(path);
  else {
    char *cwd = getcwd(NULL, 0);
    if (!cwd) {
      nbdkit_error("getcwd: %m");
      return NULL;
    }
    if (asprintf(&r, "%s/%s", cwd, path) == -1)
      r = NULL;
    free(cwd);
  }
  if (!r)
    nbdkit_error("out of memory");
  return r;
}

NBDKIT_DLL_PUBLIC char *
nbdkit_realpath(const char *path)
{
  if (!path || !*path) {
    nbdkit_error("cannot resolve an empty path");
    return NULL;
  }
  char *r = realpath(path, NULL);
  if (!r)
    nbdkit_error("realpath: %s: %m", path);
  return r;
}

NBDKIT_DLL_PUBLIC int
nbdkit_stdio_safe(void)
{
  return 1;  /* nbdstack never serves a client over stdio */
}

/* The whole of fd, without a trailing newline. */
static int
read_fd(int fd, const char *what, char **password)
{
  char *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len + 1 >= cap) {
      cap = cap ? cap * 2 : 256;
      char *b = realloc(buf, cap);
      if (!b) {
        free(buf);
        nbdkit_error("out of memory");
        return -1;
      }
      buf = b;
    }
    ssize_t r = read(fd, buf + len, cap - len - 1);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1) {
      nbdkit_error("reading password from %s: %m", what);
      free(buf);
      return -1;
    }
    if (r == 0)
      break;
    len += r;
  }
  buf[len] = '\0';
  if (len > 0 && buf[len - 1] == '\n')
    buf[--len] = '\0';
  *password = buf;
  return 0;
}

NBDKIT_DLL_PUBLIC int
nbdkit_read_password(const char *value, char **password)
{
  *password = NULL;
  if (strcmp(value, "-") == 0) {
    /* Interactive, without echo. */
    if (!isatty(0)) {
      nbdkit_error("stdin is not a tty, cannot read password interactively");
      return -1;
    }
    struct termios old, quiet;
    bool restore = tcgetattr(0, &old) == 0;
    if (restore) {
      quiet = old;
      quiet.c_lflag &= ~ECHO;
      tcsetattr(0, TCSAFLUSH, &quiet);
    }
    fprintf(stderr, "password: ");
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);
    if (restore)
      tcsetattr(0, TCSAFLUSH, &old);
    fprintf(stderr, "\n");
    if (n == -1) {
      free(line);
      nbdkit_error("could not read password from stdin");
      return -1;
    }
    if (n > 0 && line[n - 1] == '\n')
      line[n - 1] = '\0';
    *password = line;
    return 0;
  }
  if (value[0] == '-') {
    int fd;
    if (nbdkit_parse_int("password file descriptor", value + 1, &fd) == -1)
      return -1;
    if (fd <= 2) {
      nbdkit_error("cannot read password from stdin, stdout or stderr");
      return -1;
    }
    int r = read_fd(fd, "file descriptor", password);
    close(fd);
    return r;
  }
  if (value[0] == '+') {
    int fd = open(value + 1, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
      nbdkit_error("open %s: %m", value + 1);
      return -1;
    }
    int r = read_fd(fd, value + 1, password);
    close(fd);
    return r;
  }
  *password = strdup(value);
  if (!*password) {
    nbdkit_error("out of memory");
    return -1;
  }
  return 0;
}

/* ---- interned strings ---- */

struct interned {
  struct interned *next;
  char s[];
};
static pthread_mutex_t intern_lock = PTHREAD_MUTEX_INITIALIZER;
static struct interned *interned;

NBDKIT_DLL_PUBLIC const char *
nbdkit_strndup_intern(const char *str, size_t n)
{
  size_t len = strnlen(str, n);
  struct interned *i = malloc(sizeof *i + len + 1);
  if (!i) {
    nbdkit_error("out of memory");
    return NULL;
  }
  memcpy(i->s, str, len);
  i->s[len] = '\0';
  pthread_mutex_lock(&intern_lock);
  i->next = interned;
  interned = i;
  pthread_mutex_unlock(&intern_lock);
  return i->s;
}

NBDKIT_DLL_PUBLIC const char *
nbdkit_strdup_intern(const char *str)
{
  return nbdkit_strndup_intern(str, SIZE_MAX);
}

NBDKIT_DLL_PUBLIC const char *
nbdkit_vprintf_intern(const char *fmt, va_list args)
{
  char *s;
  if (vasprintf(&s, fmt, args) == -1) {
    nbdkit_error("out of memory");
    return NULL;
  }
  const char *r = nbdkit_strdup_intern(s);
  free(s);
  return r;
}

NBDKIT_DLL_PUBLIC const char *
nbdkit_printf_intern(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  const char *r = nbdkit_vprintf_intern(fmt, ap);
  va_end(ap);
  return r;
}

/* Interned strings live until the last plugin is unloaded (nbdkit.c). */
void
ph_intern_free_all(void)
{
  pthread_mutex_lock(&intern_lock);
  struct interned *i = interned;
  interned = NULL;
  pthread_mutex_unlock(&intern_lock);
  while (i) {
    struct interned *next = i->next;
    free(i);
    i = next;
  }
}

/* ---- the server and the client ---- */

static pthread_mutex_t shutdown_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t shutdown_cond = PTHREAD_COND_INITIALIZER;
static bool shutting_down;

/* The server shuts down on SIGTERM, as it does from the outside. */
NBDKIT_DLL_PUBLIC void
nbdkit_shutdown(void)
{
  pthread_mutex_lock(&shutdown_lock);
  shutting_down = true;
  pthread_cond_broadcast(&shutdown_cond);
  pthread_mutex_unlock(&shutdown_lock);
  kill(getpid(), SIGTERM);
}

NBDKIT_DLL_PUBLIC int
nbdkit_nanosleep(unsigned sec, unsigned nsec)
{
  if (sec > INT_MAX) {
    nbdkit_error("sleep request is too long");
    errno = EINVAL;
    return -1;
  }
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += sec + nsec / 1000000000;
  until.tv_nsec += nsec % 1000000000;
  if (until.tv_nsec >= 1000000000) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000;
  }
  pthread_mutex_lock(&shutdown_lock);
  int r = 0;
  while (!shutting_down && r != ETIMEDOUT)
    r = pthread_cond_timedwait(&shutdown_cond, &shutdown_lock, &until);
  bool stop = shutting_down;
  pthread_mutex_unlock(&shutdown_lock);
  if (stop) {
    nbdkit_error("aborting sleep to shut down");
    errno = ESHUTDOWN;
    return -1;
  }
  return 0;
}

/* One plugin handle serves every client: there is no current client to
 * describe.  The export name is the default one. */
NBDKIT_DLL_PUBLIC const char *
nbdkit_export_name(void)
{
  return "";
}

NBDKIT_DLL_PUBLIC int
nbdkit_is_tls(void)
{
  return 0;
}

static int
no_client(const char *fn)
{
  nbdkit_error("%s: no client connection in this thread (nbdstack shares "
               "one plugin handle between clients)", fn);
  errno = ENOTSUP;
  return -1;
}

NBDKIT_DLL_PUBLIC int
nbdkit_peer_name(struct sockaddr *addr, socklen_t *addrlen)
{
  (void) addr;
  (void) addrlen;
  return no_client("nbdkit_peer_name");
}

NBDKIT_DLL_PUBLIC int64_t
nbdkit_peer_pid(void)
{
  return no_client("nbdkit_peer_pid");
}

NBDKIT_DLL_PUBLIC int64_t
nbdkit_peer_uid(void)
{
  return no_client("nbdkit_peer_uid");
}

NBDKIT_DLL_PUBLIC int64_t
nbdkit_peer_gid(void)
{
  return no_client("nbdkit_peer_gid");
}
