/* The "nbdkit" protocol layer: an unmodified nbdkit plugin (a shared
 * object built against <nbdkit-plugin.h>) as the bottom of a stack.
 *
 * Keys: plugin=NAME (nbdkit-NAME-plugin.so in nbdkit's plugin directory)
 * or plugin=PATH (anything with a '/'), readonly=on|off, and every other
 * key=value goes to the plugin's .config in order; a bare word arrives as
 * key "" and goes to the plugin's magic_config_key, as on nbdkit's command
 * line.  The plugin runs through nbdkit's life cycle at open (plugin_init,
 * .load, .config..., .config_complete, .thread_model, .get_ready,
 * .after_fork, .preconnect, .open) and back at close (.close, .cleanup,
 * .unload).  nbdstack has no per-client plugin connection: one handle
 * serves every client on every reactor. */
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "host.h"

#ifndef NBDS_NBDKIT_PLUGINDIR
#define NBDS_NBDKIT_PLUGINDIR "/usr/lib/x86_64-linux-gnu/nbdkit/plugins"
#endif

/* Under AddressSanitizer a plugin stays mapped after close: what it keeps
 * in its globals without freeing at .unload (nbdkit never minds) would
 * otherwise be reported as a leak from an unknown module.  nbdkit skips
 * dlclose under valgrind for the same reason. */
#if defined(__SANITIZE_ADDRESS__)
#define KEEP_LOADED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KEEP_LOADED 1
#endif
#endif

/* A plugin's globals are per shared object: the same .so cannot serve two
 * layers at once, and once it ran .unload it is only safe to run again
 * from a fresh mapping (its globals may hold freed pointers).  A plugin
 * that stays mapped after close (KEEP_LOADED, or a .so the dynamic linker
 * will not unload) is "spent" for the rest of the process. */
enum slot_state { SLOT_FREE, SLOT_IN_USE, SLOT_SPENT };
static pthread_mutex_t loaded_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
  void *dl;
  enum slot_state state;
} slots[64];
#define NSLOTS (sizeof slots / sizeof slots[0])

/* Claim dl for a new layer: 0, or an errno-like reason. */
static int
claim(void *dl)
{
  int r = ENOSPC;
  pthread_mutex_lock(&loaded_lock);
  for (size_t i = 0; i < NSLOTS; i++)
    if (slots[i].state != SLOT_FREE && slots[i].dl == dl) {
      r = slots[i].state == SLOT_IN_USE ? EBUSY : ESTALE;
      goto out;
    }
  for (size_t i = 0; i < NSLOTS; i++)
    if (slots[i].state == SLOT_FREE) {
      slots[i].dl = dl;
      slots[i].state = SLOT_IN_USE;
      r = 0;
      break;
    }
out:
  pthread_mutex_unlock(&loaded_lock);
  return r;
}

static void
release(void *dl, bool spent)
{
  pthread_mutex_lock(&loaded_lock);
  for (size_t i = 0; i < NSLOTS; i++)
    if (slots[i].state == SLOT_IN_USE && slots[i].dl == dl)
      slots[i].state = spent ? SLOT_SPENT : SLOT_FREE;
  pthread_mutex_unlock(&loaded_lock);
}

/* Held from dlopen to claim() and from dlclose to release(), so that a
 * mapping is never shared between a closing layer and an opening one. */
static pthread_mutex_t dl_lock = PTHREAD_MUTEX_INITIALIZER;

static bool
any_in_use(void)
{
  bool r = false;
  pthread_mutex_lock(&loaded_lock);
  for (size_t i = 0; i < NSLOTS; i++)
    r |= slots[i].state == SLOT_IN_USE;
  pthread_mutex_unlock(&loaded_lock);
  return r;
}

/* Unmap the plugin if we may; true when it is still mapped after. */
static bool
unmap(const char *path, void *dl)
{
#ifdef KEEP_LOADED
  (void) path;
  (void) dl;
  return true;
#else
  dlclose(dl);
  void *again = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
  if (!again)
    return false;
  dlclose(again);
  return true;
#endif
}

/* nbdkit-NAME-plugin.so for a bare name; a path as it is. */
static char *
plugin_path(const char *name)
{
  if (strchr(name, '/'))
    return strdup(name);
  for (const char *c = name; *c; c++)
    if (!(*c == '-' || *c == '_' || (*c >= '0' && *c <= '9') ||
          (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z'))) {
      nbds_error("nbdkit: bad plugin name '%s' (a name, or a path with "
                 "a '/')", name);
      errno = EINVAL;
      return NULL;
    }
  char *p;
  if (asprintf(&p, "%s/nbdkit-%s-plugin.so", NBDS_NBDKIT_PLUGINDIR,
               name) == -1)
    return NULL;
  return p;
}

/* Fail an open-time callback with the plugin's own message if it left
 * one. */
static int
failed(struct ph_plugin *h, const char *what)
{
  const char *msg = ph_error_last();
  if (msg)
    nbds_error("nbdkit plugin '%s': %s", h->p.name, msg);
  else
    nbds_error("nbdkit plugin '%s': %s failed", h->p.name, what);
  return -1;
}

/* dlopen the plugin and claim its mapping for this layer. */
static int
dlopen_claim(struct ph_plugin *h, const char *name)
{
  /* RTLD_GLOBAL as nbdkit does: language plugins load their runtime. */
  void *dl = dlopen(h->path, RTLD_NOW | RTLD_GLOBAL);
  if (!dl) {
    nbds_error("nbdkit: cannot load plugin '%s': %s", name, dlerror());
    return -1;
  }
  if (!dlsym(dl, "plugin_init")) {
    nbds_error("nbdkit: '%s' is not an nbdkit plugin (no plugin_init)",
               h->path);
    dlclose(dl);
    return -1;
  }
  int busy = claim(dl);
  if (busy) {
    if (busy == EBUSY)
      nbds_error("nbdkit: plugin '%s' is already in use by another export "
                 "(an nbdkit plugin's state is global to its .so)", name);
    else if (busy == ESTALE)
      nbds_error("nbdkit: plugin '%s' was loaded and unloaded before and "
                 "is still mapped: it cannot be loaded twice in one "
                 "process", name);
    else
      nbds_error("nbdkit: too many plugins loaded");
    dlclose(dl);
    return -1;
  }
  h->dl = dl;
  return 0;
}

static int
load(struct ph_plugin *h, const char *name)
{
  h->path = plugin_path(name);
  if (!h->path) {
    if (errno != EINVAL)
      nbds_error("out of memory");
    return -1;
  }
  if (access(h->path, R_OK) == -1) {
    nbds_error("nbdkit: no plugin '%s': %s: %s", name, h->path,
               strerror(errno));
    return -1;
  }
  pthread_mutex_lock(&dl_lock);
  int r = dlopen_claim(h, name);
  pthread_mutex_unlock(&dl_lock);
  if (r == -1)
    return -1;
  struct nbdkit_plugin *(*init)(void);
  *(void **) &init = dlsym(h->dl, "plugin_init");
  struct nbdkit_plugin *p = init();
  if (!p) {
    nbds_error("nbdkit: plugin '%s': plugin_init returned NULL", name);
    return -1;
  }
  if (p->_api_version != 1 && p->_api_version != 2) {
    nbds_error("nbdkit: plugin '%s' uses API version %d; this host "
               "supports 1 and 2", name, p->_api_version);
    return -1;
  }
  /* Older plugins have a shorter struct: the rest stays zero. */
  size_t n = p->_struct_size;
  if (n > sizeof h->p)
    n = sizeof h->p;
  if (n < offsetof(struct nbdkit_plugin, name) + sizeof p->name) {
    nbds_error("nbdkit: plugin '%s': struct is too small", name);
    return -1;
  }
  memcpy(&h->p, p, n);
  h->api_version = p->_api_version;
  if (!h->p.name || !h->p.open || !h->p.get_size ||
      !(h->api_version == 1 ? (void *) h->p._pread_v1
                            : (void *) h->p.pread)) {
    nbds_error("nbdkit: plugin '%s' lacks a name, .open, .get_size or "
               ".pread", name);
    return -1;
  }
  return 0;
}

static int
configure(struct ph_plugin *h, const struct nbds_kv *kv, size_t nkv)
{
  bool first = true;
  for (size_t i = 0; i < nkv; i++) {
    const char *key = kv[i].key;
    if (strcmp(key, "plugin") == 0 || strcmp(key, "readonly") == 0)
      continue;
    const char *value = kv[i].value ? kv[i].value : "";
    if (!*key) {
      /* A bare word, as nbdkit parses its command line. */
      if (h->p.magic_config_key)
        key = h->p.magic_config_key;
      else if (first)
        key = "script";
      else {
        nbds_error("nbdkit plugin '%s': '%s' needs a key (key=value): the "
                   "plugin has no magic config key", h->p.name, value);
        return -1;
      }
    }
    first = false;
    if (!h->p.config) {
      nbds_error("nbdkit plugin '%s' takes no parameters, but got '%s'",
                 h->p.name, key);
      return -1;
    }
    /* nbdkit passes strings from its argv, which live as long as the
     * process, and plugins keep them (eval keeps its method names): give
     * the plugin copies that live until the last plugin is gone. */
    key = nbdkit_strdup_intern(key);
    value = nbdkit_strdup_intern(value);
    if (!key || !value) {
      nbds_error("out of memory");
      return -1;
    }
    if (h->p.config(key, value) == -1)
      return failed(h, "config");
  }
  if (h->p.config_complete && h->p.config_complete() == -1)
    return failed(h, "config_complete");
  return 0;
}

/* A can_* callback, or the default when it is absent.  -1 on error. */
static int
can(struct ph_plugin *h, int (*fn)(void *), int dflt)
{
  return fn ? fn(h->handle) : dflt;
}

static bool
pow2(uint32_t v)
{
  return v && !(v & (v - 1));
}

static int
block_sizes(struct ph_plugin *h, struct nbds_caps *c)
{
  c->block_min = 1;
  c->block_pref = 4096;
  c->block_max = 32 * 1024 * 1024;
  if (!h->p.block_size)
    return 0;
  uint32_t min = 0, pref = 0, max = 0;
  if (h->p.block_size(h->handle, &min, &pref, &max) == -1)
    return failed(h, "block_size");
  if (min == 0 && pref == 0 && max == 0)
    return 0;  /* no constraint */
  if (!pow2(min) || min > 65536 || !pow2(pref) || pref < 512 ||
      pref > 32 * 1024 * 1024 || pref < min || max < min ||
      (max != UINT32_MAX && max % min)) {
    nbds_error("nbdkit plugin '%s': bad block sizes %u/%u/%u", h->p.name,
               min, pref, max);
    return -1;
  }
  c->block_min = min;
  c->block_pref = pref;
  c->block_max = max < c->block_max ? max : c->block_max;
  return 0;
}

/* Everything nbdkit asks a new connection, once. */
static int
probe(struct ph_plugin *h)
{
  struct nbdkit_plugin *p = &h->p;
  struct nbds_caps *c = &h->caps;
  int64_t size = p->get_size(h->handle);
  if (size == -1)
    return failed(h, "get_size");
  if (size < 0) {
    nbds_error("nbdkit plugin '%s': negative size", p->name);
    return -1;
  }
  h->size = size;

  bool v1 = h->api_version == 1;
  int r;
  if ((r = can(h, p->can_write, v1 ? !!p->_pwrite_v1 : !!p->pwrite)) == -1)
    return failed(h, "can_write");
  c->can_write = r && !h->readonly;
  bool has_flush = v1 ? !!p->_flush_v1 : !!p->flush;
  if ((r = can(h, p->can_flush, has_flush)) == -1)
    return failed(h, "can_flush");
  c->can_flush = r;
  if ((r = can(h, p->can_fua, has_flush ? NBDKIT_FUA_EMULATE
                                        : NBDKIT_FUA_NONE)) == -1)
    return failed(h, "can_fua");
  if (v1 && r > NBDKIT_FUA_EMULATE)
    r = NBDKIT_FUA_EMULATE;  /* v1 callbacks take no flags */
  h->fua = c->can_write ? r : NBDKIT_FUA_NONE;
  c->fua = h->fua == NBDKIT_FUA_NATIVE    ? NBDS_FUA_NATIVE
           : h->fua == NBDKIT_FUA_EMULATE ? NBDS_FUA_EMULATE
                                          : NBDS_FUA_NONE;
  if ((r = can(h, p->can_trim, v1 ? !!p->_trim_v1 : !!p->trim)) == -1)
    return failed(h, "can_trim");
  c->can_trim = c->can_write && r;
  /* Zero is always offered on a writable export: without .zero (or with
   * can_zero false) it becomes .pwrite of zeroes, as in nbdkit. */
  bool has_zero = v1 ? !!p->_zero_v1 : !!p->zero;
  if ((r = can(h, p->can_zero, has_zero)) == -1)
    return failed(h, "can_zero");
  h->zero_native = has_zero && r;
  c->can_zero = c->can_write;
  if ((r = can(h, p->can_fast_zero, !h->zero_native)) == -1)
    return failed(h, "can_fast_zero");
  c->can_fast_zero = c->can_zero && r;
  if ((r = can(h, p->can_extents, !!p->extents)) == -1)
    return failed(h, "can_extents");
  h->plugin_extents = r && p->extents;
  c->can_extents = true;  /* without .extents: everything is data */
  if ((r = can(h, p->can_cache, p->cache ? NBDKIT_CACHE_NATIVE
                                         : NBDKIT_CACHE_NONE)) == -1)
    return failed(h, "can_cache");
  h->cache = r;
  c->can_cache = r != NBDKIT_CACHE_NONE;
  if ((r = can(h, p->can_multi_conn, 0)) == -1)
    return failed(h, "can_multi_conn");
  c->can_multi_conn = r;
  return block_sizes(h, c);
}

/* The thread model: the plugin's compiled-in one, lowered by
 * .thread_model. */
static int
thread_model(struct ph_plugin *h)
{
  h->thread_model = h->p._thread_model;
  if (h->p.thread_model) {
    int r = h->p.thread_model();
    if (r == -1)
      return failed(h, "thread_model");
    if (r < h->thread_model)
      h->thread_model = r;
  }
  return 0;
}

static int
start(struct ph_plugin *h, const struct nbds_kv *kv, size_t nkv)
{
  if (h->p.load)
    h->p.load();
  h->loaded = true;
  if (configure(h, kv, nkv) == -1 || thread_model(h) == -1)
    return -1;
  if (h->p.get_ready && h->p.get_ready() == -1)
    return failed(h, "get_ready");
  if (h->p.after_fork && h->p.after_fork() == -1)
    return failed(h, "after_fork");
  if (h->p.preconnect && h->p.preconnect(h->readonly) == -1)
    return failed(h, "preconnect");
  h->handle = h->p.open(h->readonly);
  if (!h->handle)
    return failed(h, "open");
  return probe(h);
}

static void
stop(struct ph_plugin *h)
{
  if (h->handle && h->p.close)
    h->p.close(h->handle);
  h->handle = NULL;
  if (h->loaded) {
    if (h->p.cleanup)
      h->p.cleanup();
    if (h->p.unload)
      h->p.unload();
  }
  if (h->dl) {
    pthread_mutex_lock(&dl_lock);
    bool mapped = unmap(h->path, h->dl);
    release(h->dl, mapped && h->loaded);
    pthread_mutex_unlock(&dl_lock);
  }
  /* Interned strings outlive .unload; another plugin may still use its
   * own, so they go when the last plugin does. */
  if (!any_in_use())
    ph_intern_free_all();
  pthread_mutex_destroy(&h->lock);
  free(h->path);
  free(h);
}

static int
ph_open(struct nbds_layer *l, const struct nbds_kv *kv, size_t nkv)
{
  if (l->below) {
    nbds_error("nbdkit: a plugin is a protocol layer: nothing goes below it");
    return -1;
  }
  const char *name = nbds_kv_get(kv, nkv, "plugin");
  if (!name || !*name) {
    nbds_error("nbdkit: the option 'plugin' (a plugin name or path) is "
               "required");
    return -1;
  }
  const char *ro = nbds_kv_get(kv, nkv, "readonly");
  if (ro && strcmp(ro, "on") != 0 && strcmp(ro, "off") != 0) {
    nbds_error("nbdkit: readonly must be on or off, not '%s'", ro);
    return -1;
  }
  struct ph_plugin *h = calloc(1, sizeof *h);
  if (!h) {
    nbds_error("out of memory");
    return -1;
  }
  pthread_mutex_init(&h->lock, NULL);
  h->readonly = ro && strcmp(ro, "on") == 0;

  ph_error_capture(true);
  int r = load(h, name);
  if (r == 0)
    r = start(h, kv, nkv);
  ph_error_capture(false);
  if (r == -1) {
    /* Keep the message across the plugin's own cleanup. */
    char *msg = strdup(nbds_last_error());
    stop(h);
    if (msg) {
      nbds_error("%s", msg);
      free(msg);
    }
    return -1;
  }
  l->priv = h;
  return 0;
}

static void
ph_close(struct nbds_layer *l)
{
  stop(l->priv);
}

static uint64_t
ph_size(struct nbds_layer *l)
{
  struct ph_plugin *h = l->priv;
  return h->size;
}

static void
ph_caps(struct nbds_layer *l, struct nbds_caps *caps)
{
  struct ph_plugin *h = l->priv;
  *caps = h->caps;
}

static void
ph_layer_submit(struct nbds_layer *l, struct nbds_req *req)
{
  ph_submit(l->priv, req);
}

const struct nbds_layer_ops nbds_nbdkit_ops = {
  .name = "nbdkit",
  .open = ph_open,
  .close = ph_close,
  .size = ph_size,
  .caps = ph_caps,
  .submit = ph_layer_submit,
};
