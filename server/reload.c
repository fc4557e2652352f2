/* Reloading the configuration file on SIGHUP.  It runs on reactor 0,
 * from an ev_signal watcher, never in a signal handler.
 *
 * The whole new file is read and checked first: a bad file changes
 * nothing.  Then, section by section against the exports the file made
 * before: an unchanged section keeps its export as it is (same stack,
 * its clients untouched); a new one is opened and offered; a removed one
 * is withdrawn (export_withdraw: no longer in LIST nor found by GO, its
 * connections go on until they leave, then it is flushed and closed); a
 * changed one is a removal and an addition, but its new stack is opened
 * first, so that one that fails to open keeps the old.  [server] is read
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

/* Reactor 0 is the only thread that adds to the list or takes exports
 * off it, so it may walk it without the lock; it takes the lock only
 * where it changes it (export_add, export_withdraw). */
static void
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
    if (!ce) {
      nbds_log_info("export '%s': removed (its clients keep it until "
                    "they leave)", e->name);
      export_withdraw(e);
    } else if (add(ce)) {
      nbds_log_info("export '%s': changed (new clients get the new "
                    "settings)", e->name);
      export_withdraw(e);
    } else
      nbds_log_error("export '%s': changed, but the new settings could "
                     "not be opened: keeping the old", e->name);
  }
  for (size_t i = 0; i < cfg->nexports; i++) {
    const struct config_export *ce = &cfg->exports[i];
    bool known = false;
    for (struct export *e = exports; e && !known; e = e->next)
      known = e->offered && strcmp(e->name, ce->s.name) == 0;
    if (!known && add(ce))
      nbds_log_info("export '%s': added", ce->s.name);
  }
  if (!same_text(cfg->server_text, server_text))
    nbds_log_info("%s: [server] changed: that takes a restart", config_path);
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
  apply(cfg);
  config_free(cfg);
}

void
reload_start(const char *path)
{
  struct ev_loop *loop = nbds_reactor_loop(server_main_reactor());
  config_path = path;
  ev_signal_init(&sighup_watcher, sighup_cb, SIGHUP);
  ev_signal_start(loop, &sighup_watcher);
  ev_unref(loop);  /* it alone does not keep the server running */
}
