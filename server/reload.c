/* Reloading the configuration file on SIGHUP.  It runs on reactor 0,
 * from an ev_signal watcher, never in a signal handler.
 *
 * The whole new file is read and checked first: a bad file changes
 * nothing.  Then, section by section against the exports the file made
 * before: an unchanged section keeps its export as it is (same stack,
 * its clients untouched); a new one is opened and offered; a removed one
 * is withdrawn (export_withdraw: no longer in LIST nor found by GO, its
 * connections go on until they leave, then it is flushed and closed); a
 * changed one is withdrawn the same way, and its new settings are opened
 * only once the old export is closed.  An image is never open in two
 * stacks at once: two qcow2 metadata caches (or two block caches, or a
 * dirty bit one side repairs while the other writes) over one file would
 * corrupt it.  Until then the export is not offered.  [server] is read
 * only at start. */
#include <stdlib.h>
#include <string.h>
#include <ev.h>

#include "config.h"
#include "export.h"
#include "log.h"
#include "reactor.h"
#include "reload.h"
#include "server.h"
#include "stack.h"

static const char *config_path;
static bool use_uring;
static char *server_text;     /* [server] as last read */
static ev_signal sighup_watcher;

/* Names of withdrawn exports not yet closed (one entry per export), and
 * the configuration whose sections of those names wait for them. */
struct open_name {
  struct open_name *next;
  char *name;
};
static struct open_name *still_open;
static struct config *waiting;

/* Open one section's export and offer it.  False if it cannot open. */
static bool
add(const struct config_export *ce)
{
  struct export *e = export_open(&ce->s, use_uring);
  if (!e || !(e->section = strdup(ce->text ? ce->text : ""))) {
    if (e) {
      nbds_log_error("export '%s': out of memory", e->name);
      export_free(e);
    }
    return false;
  }
  export_add(e);
  return true;
}

bool
reload_open_all(const struct config *cfg, bool uring)
{
  use_uring = uring;
  for (size_t i = 0; i < cfg->nexports; i++)
    if (!add(&cfg->exports[i]))
      return false;
  free(server_text);
  server_text = cfg->server_text ? strdup(cfg->server_text) : NULL;
  return true;
}

static const struct config_export *
section_for(const struct config *cfg, const char *name)
{
  for (size_t i = 0; i < cfg->nexports; i++)
    if (strcmp(cfg->exports[i].s.name, name) == 0)
      return &cfg->exports[i];
  return NULL;
}

static bool
same_text(const char *a, const char *b)
{
  return strcmp(a ? a : "", b ? b : "") == 0;
}

static bool
is_still_open(const char *name)
{
  for (struct open_name *o = still_open; o; o = o->next)
    if (strcmp(o->name, name) == 0)
      return true;
  return false;
}

static void
withdraw(struct export *e)
{
  struct open_name *o = malloc(sizeof *o);
  if (o && (o->name = strdup(e->name))) {
    o->next = still_open;
    still_open = o;
  } else {
    free(o);
    nbds_log_error("export '%s': out of memory: a new section of this "
                   "name will not wait for it to close", e->name);
  }
  export_withdraw(e);
}

static bool
offered(const char *name)
{
  bool found = false;
  for (struct export *e = exports; e && !found; e = e->next)
    found = e->offered && strcmp(e->name, name) == 0;
  return found;
}

/* Open cfg's sections that have no export offered, except those whose
 * old export is still open.  True if any waits for that. */
static bool
add_new(const struct config *cfg)
{
  bool any_waits = false;
  for (size_t i = 0; i < cfg->nexports; i++) {
    const struct config_export *ce = &cfg->exports[i];
    if (offered(ce->s.name))
      continue;
    if (is_still_open(ce->s.name))
      any_waits = true;
    else if (add(ce))
      nbds_log_info("export '%s': added", ce->s.name);
  }
  return any_waits;
}

/* export_closed_hook: a withdrawn export is closed; a section of its name
 * that waited for it opens now. */
static void
closed(const char *name)
{
  for (struct open_name **p = &still_open; *p; p = &(*p)->next)
    if (strcmp((*p)->name, name) == 0) {
      struct open_name *o = *p;
      *p = o->next;
      free(o->name);
      free(o);
      break;
    }
  if (!waiting || server_stopping() || is_still_open(name))
    return;
  const struct config_export *ce = section_for(waiting, name);
  if (ce && !offered(name) && add(ce))
    nbds_log_info("export '%s': open again, with its new settings", name);
  if (!still_open) {
    config_free(waiting);
    waiting = NULL;
  }
}

/* Reactor 0 is the only thread that adds to the list or takes exports
 * off it, so it may walk it without the lock; it takes the lock only
 * where it changes it (export_add, export_withdraw).  Returns true if a
 * section waits for its old export to close (then cfg is kept). */
static bool
apply(const struct config *cfg)
{
  struct export *next;
  for (struct export *e = exports; e; e = next) {
    next = e->next;
    if (!e->offered || !e->section)
      continue;
    const struct config_export *ce = section_for(cfg, e->name);
    if (ce && same_text(ce->text, e->section))
      continue;
    if (!ce)
      nbds_log_info("export '%s': removed (its clients keep it until "
                    "they leave)", e->name);
    else
      nbds_log_info("export '%s': changed (its new settings are opened "
                    "once its clients have left and it is closed)",
                    e->name);
    withdraw(e);
  }
  bool any_waits = add_new(cfg);
  if (!same_text(cfg->server_text, server_text))
    nbds_log_info("%s: [server] changed: that takes a restart", config_path);
  return any_waits;
}

static void
sighup_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
  (void) loop;
  (void) w;
  (void) revents;
  if (server_stopping())
    return;
  nbds_log_info("%s: reloading (SIGHUP)", config_path);
  struct config *cfg = config_load(config_path);
  if (!cfg) {
    nbds_log_error("%s: not reloaded: keeping the configuration as it "
                   "was", config_path);
    return;
  }
  if (waiting)
    config_free(waiting);
  waiting = apply(cfg) ? cfg : NULL;
  if (!waiting)
    config_free(cfg);
}

void
reload_start(const char *path)
{
  struct ev_loop *loop = nbds_reactor_loop(server_main_reactor());
  config_path = path;
  ev_signal_init(&sighup_watcher, sighup_cb, SIGHUP);
  ev_signal_start(loop, &sighup_watcher);
  export_closed_hook = closed;
  ev_unref(loop);  /* it alone does not keep the server running */
}
