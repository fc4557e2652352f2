/* Reading the configuration file, with libinih.  libinih gives each
 * key = value of the file to on_pair(), but neither its line nor the
 * sections that have no key, so the lines pass through read_line(),
 * which counts them and notes each [section] where it starts: errors
 * name the line, and a section with no keys still makes an export (and
 * is refused for having no file).
 *
 * Values are checked by the functions the command line uses
 * (export_settings_set, options_set), so both accept the same words. */
#include <errno.h>
#include <ini.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "protocol.h"
#include "stack.h"

/* Where each key was set, for errors found once a section is whole. */
struct key_line {
  const char *key;
  unsigned line;
};

struct section_keys {
  unsigned line;             /* of the [section] */
  struct key_line *keys;
  size_t nkeys;
};

struct parse {
  const char *path;
  FILE *f;
  unsigned line;             /* the line being read */
  bool at_line_start;
  struct config *cfg;
  /* The section the pairs go to: -1 none yet, -2 [server], else an
   * index into cfg->exports and sections. */
  long cur;
  struct section_keys server, *sections;
  struct options scratch;    /* where [server]'s values are tried */
  char err[512];             /* the first error */
};

#define CUR_NONE (-1)
#define CUR_SERVER (-2)

static void __attribute__((format(printf, 3, 4)))
error_at(struct parse *p, unsigned line, const char *fmt, ...)
{
  if (p->err[0])
    return;  /* the first error is the one reported */
  int n = snprintf(p->err, sizeof p->err, "%s:%u: ", p->path, line);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(p->err + n, sizeof p->err - n, fmt, ap);
  va_end(ap);
}

/* A copy the config owns (freed by config_free). */
static char *
keep(struct parse *p, char *s)
{
  struct config *cfg = p->cfg;
  char **more = s ? realloc(cfg->copies, (cfg->ncopies + 1) * sizeof *more)
                  : NULL;
  if (!more) {
    free(s);
    error_at(p, p->line, "out of memory");
    return NULL;
  }
  cfg->copies = more;
  cfg->copies[cfg->ncopies++] = s;
  return s;
}

static bool
append_text(struct parse *p, char **text, const char *key, const char *value)
{
  char *t;
  if (asprintf(&t, "%s%s=%s\n", *text ? *text : "", key, value) == -1) {
    error_at(p, p->line, "out of memory");
    return false;
  }
  free(*text);
  *text = t;
  return true;
}

/* Remember where a key was set; false (with the error) if it was
 * already set in this section. */
static bool
note_key(struct parse *p, struct section_keys *sk, const char *key,
         bool repeatable)
{
  for (size_t i = 0; !repeatable && i < sk->nkeys; i++)
    if (strcmp(sk->keys[i].key, key) == 0) {
      error_at(p, p->line, "key '%s': given twice in this section (first "
               "at line %u)", key, sk->keys[i].line);
      return false;
    }
  char *copy = strdup(key);
  if (!copy || !keep(p, copy))
    return false;
  struct key_line *more = realloc(sk->keys, (sk->nkeys + 1) * sizeof *more);
  if (!more) {
    error_at(p, p->line, "out of memory");
    return false;
  }
  sk->keys = more;
  sk->keys[sk->nkeys++] = (struct key_line) { copy, p->line };
  return true;
}

static unsigned
key_line(const struct section_keys *sk, const char *key)
{
  for (size_t i = 0; i < sk->nkeys; i++)
    if (strcmp(sk->keys[i].key, key) == 0)
      return sk->keys[i].line;
  return sk->line;
}

/* A [section] starts on the current line. */
static void
new_section(struct parse *p, const char *name, size_t len)
{
  struct config *cfg = p->cfg;
  if (len == 6 && memcmp(name, "server", 6) == 0) {
    if (p->server.line)
      error_at(p, p->line, "section [server]: given twice (first at line "
               "%u)", p->server.line);
    p->server.line = p->line;
    p->cur = CUR_SERVER;
    return;
  }
  char *copy = strndup(name, len);
  if (!copy || !keep(p, copy))
    return;
  if (len > NBD_MAX_STRING) {
    error_at(p, p->line, "section [%.40s...]: an export name is at most %d "
             "bytes", copy, NBD_MAX_STRING);
    return;
  }
  for (size_t i = 0; i < cfg->nexports; i++)
    if (strcmp(cfg->exports[i].s.name, copy) == 0) {
      error_at(p, p->line, "section [%s]: given twice (first at line %u)",
               copy, p->sections[i].line);
      return;
    }
  struct config_export *ex =
    realloc(cfg->exports, (cfg->nexports + 1) * sizeof *ex);
  if (ex)
    cfg->exports = ex;
  struct section_keys *sk =
    realloc(p->sections, (cfg->nexports + 1) * sizeof *sk);
  if (sk)
    p->sections = sk;
  if (!ex || !sk) {
    error_at(p, p->line, "out of memory");
    return;
  }
  cfg->exports[cfg->nexports] = (struct config_export) { .s.name = copy };
  p->sections[cfg->nexports] = (struct section_keys) { .line = p->line };
  p->cur = cfg->nexports++;
}

/* libinih's reader: fgets, counting lines and noting where sections
 * start.  libinih may read one long line in several calls. */
static char *
read_line(char *buf, int size, void *opaque)
{
  struct parse *p = opaque;
  char *s = fgets(buf, size, p->f);
  if (!s || p->err[0])
    return NULL;  /* the end, or stop at the first error */
  if (p->at_line_start) {
    p->line++;
    const char *t = s;
    if (p->line == 1 && strncmp(t, "\xef\xbb\xbf", 3) == 0)
      t += 3;  /* a UTF-8 byte order mark, which libinih skips too */
    t += strspn(t, " \t");
    const char *end = *t == '[' ? strchr(t, ']') : NULL;
    if (end)
      new_section(p, t + 1, end - t - 1);
  }
  p->at_line_start = strchr(s, '\n') != NULL;
  return s;
}

/* A file path relative to the configuration file's directory. */
static char *
resolve(const char *path, const char *image)
{
  char *dirbuf = strdup(path), *joined;
  if (!dirbuf)
    return NULL;
  if (image[0] == '/' || image_is_uri(image) || image_is_rbd(image) ||
      asprintf(&joined, "%s/%s", dirname(dirbuf), image) == -1)
    joined = strdup(image);
  free(dirbuf);
  return joined;
}

static bool
export_pair(struct parse *p, struct config_export *ex, const char *key,
            char *value)
{
  struct export_settings *s = &ex->s;
  const char *err = NULL;
  if (strncmp(key, "plugin.", 7) == 0) {
    char *arg;
    const char **args = realloc((void *) s->plugin_args,
                                (s->nplugin_args + 1) * sizeof *args);
    if (args)
      s->plugin_args = args;
    if (!key[7])
      err = "a plugin parameter needs a name (plugin.NAME = VALUE)";
    else if (!args || asprintf(&arg, "%s=%s", key + 7, value) == -1)
      err = "out of memory";
    else if (!keep(p, arg))
      return false;  /* keep() said why */
    else {
      args[s->nplugin_args++] = arg;
      return true;
    }
  } else if (strcmp(key, "file") == 0 || strcmp(key, "plugin") == 0) {
    bool file = strcmp(key, "file") == 0;
    if (s->image)
      err = "file and plugin cannot both be given";
    else if (file && !(s->image = keep(p, resolve(p->path, value))))
      return false;
    else if (!file)
      s->image = s->plugin = value;
  } else
    err = export_settings_set(s, key, value);
  if (err) {
    error_at(p, p->line, "key '%s': %s", key, err);
    return false;
  }
  return true;
}

static int
on_pair(void *user, const char *section, const char *key, const char *value)
{
  struct parse *p = user;
  (void) section;  /* read_line tracked it, with empty ones and lines */
  char *v = strdup(value);
  if (!v || !keep(p, v))
    return 0;
  struct config *cfg = p->cfg;
  if (p->cur == CUR_NONE) {
    error_at(p, p->line, "key '%s': outside any section ([server] or "
             "[EXPORT])", key);
    return 0;
  }
  if (p->cur == CUR_SERVER) {
    const char *err = options_set(&p->scratch, key, v);
    const char **kv = realloc(cfg->server_kv,
                              (cfg->nserver_kv + 2) * sizeof *kv);
    if (kv)
      cfg->server_kv = kv;
    if (err || !kv) {
      error_at(p, p->line, "key '%s': %s%s", key, kv ? err : "out of memory",
               err && strcmp(err, "unknown key") == 0 ? " in [server]" : "");
      return 0;
    }
    if (!note_key(p, &p->server, key, strcmp(key, "allow") == 0))
      return 0;
    cfg->server_kv[cfg->nserver_kv++] = p->server.keys[p->server.nkeys - 1].key;
    cfg->server_kv[cfg->nserver_kv++] = v;
    return append_text(p, &cfg->server_text, key, v);
  }
  struct config_export *ex = &cfg->exports[p->cur];
  if (!note_key(p, &p->sections[p->cur], key, strncmp(key, "plugin.", 7) == 0)
      || !export_pair(p, ex, key, v))
    return 0;
  return append_text(p, &ex->text, key, v);
}

/* The rules that hold for a whole section. */
static void
check_export(struct parse *p, size_t i)
{
  const struct export_settings *s = &p->cfg->exports[i].s;
  const struct section_keys *sk = &p->sections[i];
  const char *key, *err;
  if (!s->image)
    error_at(p, sk->line, "key 'file': export '%s' needs a file or a "
             "plugin", s->name);
  else if (s->nplugin_args && !s->plugin)
    error_at(p, key_line(sk, "file"), "key 'file': plugin parameters "
             "(plugin.*) need a plugin, not a file");
  else if ((err = export_settings_check(s, &key)))
    error_at(p, key_line(sk, key), "key '%s': %s", key, err);
}

static void
parse_file(struct parse *p)
{
  /* libinih's settings, as this file format wants them: a line as long
   * as it needs, no continuation lines (an indented line is an error,
   * not part of the value above), the first error stops. */
  ini_use_stack = false;
  ini_allow_realloc = true;
  ini_max_line = 1 << 16;
  ini_allow_multiline = false;
  ini_stop_on_first_error = true;

  int r = ini_parse_stream(read_line, p, on_pair, p);
  if (ferror(p->f))
    error_at(p, p->line, "cannot read: %s", strerror(errno));
  else if (r > 0)
    error_at(p, r, "syntax error: expected [SECTION] or KEY = VALUE");
  else if (r < 0)
    error_at(p, p->line, "out of memory");
  for (size_t i = 0; !p->err[0] && i < p->cfg->nexports; i++)
    check_export(p, i);
  if (!p->err[0] && p->cfg->nexports == 0)
    error_at(p, p->line, "no export: add a section [NAME] with a file "
             "or a plugin");
}

struct config *
config_load(const char *path)
{
  struct parse p = {
    .path = path, .at_line_start = true, .cur = CUR_NONE,
    .cfg = calloc(1, sizeof *p.cfg),
  };
  if (!p.cfg) {
    nbds_log_error("%s: out of memory", path);
    return NULL;
  }
  p.f = fopen(path, "re");
  if (!p.f)
    snprintf(p.err, sizeof p.err, "%s: cannot read: %s", path,
             strerror(errno));
  else {
    parse_file(&p);
    fclose(p.f);
  }
  for (size_t i = 0; i < p.cfg->nexports; i++)
    free(p.sections[i].keys);
  free(p.sections);
  free(p.server.keys);
  if (p.err[0]) {
    nbds_log_error("%s", p.err);
    config_free(p.cfg);
    return NULL;
  }
  return p.cfg;
}

void
config_free(struct config *cfg)
{
  if (!cfg)
    return;
  for (size_t i = 0; i < cfg->nexports; i++) {
    free((void *) cfg->exports[i].s.plugin_args);
    free(cfg->exports[i].text);
  }
  free(cfg->exports);
  for (size_t i = 0; i < cfg->ncopies; i++)
    free(cfg->copies[i]);
  free(cfg->copies);
  free(cfg->server_kv);
  free(cfg->server_text);
  free(cfg);
}

void
config_apply_server(const struct config *cfg, struct options *o)
{
  /* A configuration file describes a standing server for many clients:
   * unlike qemu-nbd's one image, it stays up and takes any number of
   * clients unless [server] or the command line says otherwise. */
  o->persistent = true;
  o->shared = 0;
  for (size_t i = 0; i < cfg->nserver_kv; i += 2)
    options_set(o, cfg->server_kv[i], cfg->server_kv[i + 1]);
}
