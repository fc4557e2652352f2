/* Command-line parsing, qemu-nbd compatible. */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allow.h"
#include "config.h"
#include "options.h"
#include "protocol.h"
#include "values.h"

enum {
  OPT_AIO = 256,
  OPT_CACHE,
  OPT_DISCARD,
  OPT_DETECT_ZEROES,
  OPT_FORK,
  OPT_PID_FILE,
  OPT_THREADS,
  OPT_BUSY_POLL,
  OPT_BLOCK_CACHE,
  OPT_BLOCK_CACHE_BLOCK,
  OPT_BLOCK_CACHE_READ_MISS,
  OPT_BLOCK_CACHE_WRITE_HIT,
  OPT_BLOCK_CACHE_WRITE_MISS,
  OPT_PLUGIN,
  OPT_L2_CACHE_SIZE,
  OPT_BITMAPS,
  OPT_SINGLE,
  OPT_LOG,
  OPT_TLS,
  OPT_TLS_CERTIFICATES,
  OPT_TLS_PSK,
  OPT_TLS_VERIFY_PEER,
  OPT_OBJECT,
  OPT_TLS_CREDS,
  OPT_UPSTREAM_TIMEOUT,
  OPT_METRICS,
  OPT_METRICS_JSON,
  OPT_HANDSHAKE_TIMEOUT,
  OPT_IDLE_TIMEOUT,
  OPT_ALLOW,
  OPT_RBD_TIMEOUT,
  OPT_CONFIG,
  OPT_INJECT_ERROR,
};

static const char short_opts[] = "hVf:k:p:b:x:D:rte:o:nvl:sA";
static const struct option long_opts[] = {
  { "help", no_argument, NULL, 'h' },
  { "version", no_argument, NULL, 'V' },
  { "format", required_argument, NULL, 'f' },
  { "socket", required_argument, NULL, 'k' },
  { "port", required_argument, NULL, 'p' },
  { "bind", required_argument, NULL, 'b' },
  { "export-name", required_argument, NULL, 'x' },
  { "description", required_argument, NULL, 'D' },
  { "read-only", no_argument, NULL, 'r' },
  { "persistent", no_argument, NULL, 't' },
  { "shared", required_argument, NULL, 'e' },
  { "offset", required_argument, NULL, 'o' },
  { "load-snapshot", required_argument, NULL, 'l' },
  { "snapshot", no_argument, NULL, 's' },
  { "allocation-depth", no_argument, NULL, 'A' },
  { "l2-cache-size", required_argument, NULL, OPT_L2_CACHE_SIZE },
  { "bitmaps", required_argument, NULL, OPT_BITMAPS },
  { "rbd-timeout", required_argument, NULL, OPT_RBD_TIMEOUT },
  { "nocache", no_argument, NULL, 'n' },
  { "verbose", no_argument, NULL, 'v' },
  { "aio", required_argument, NULL, OPT_AIO },
  { "cache", required_argument, NULL, OPT_CACHE },
  { "discard", required_argument, NULL, OPT_DISCARD },
  { "detect-zeroes", required_argument, NULL, OPT_DETECT_ZEROES },
  { "fork", no_argument, NULL, OPT_FORK },
  { "pid-file", required_argument, NULL, OPT_PID_FILE },
  { "threads", required_argument, NULL, OPT_THREADS },
  { "busy-poll", required_argument, NULL, OPT_BUSY_POLL },
  { "single", no_argument, NULL, OPT_SINGLE },
  { "log", required_argument, NULL, OPT_LOG },
  { "metrics", required_argument, NULL, OPT_METRICS },
  { "metrics-json", required_argument, NULL, OPT_METRICS_JSON },
  { "plugin", required_argument, NULL, OPT_PLUGIN },
  { "upstream-timeout", required_argument, NULL, OPT_UPSTREAM_TIMEOUT },
  { "block-cache", required_argument, NULL, OPT_BLOCK_CACHE },
  { "block-cache-block", required_argument, NULL, OPT_BLOCK_CACHE_BLOCK },
  { "block-cache-read-miss", required_argument, NULL,
    OPT_BLOCK_CACHE_READ_MISS },
  { "block-cache-write-hit", required_argument, NULL,
    OPT_BLOCK_CACHE_WRITE_HIT },
  { "block-cache-write-miss", required_argument, NULL,
    OPT_BLOCK_CACHE_WRITE_MISS },
  { "tls", required_argument, NULL, OPT_TLS },
  { "tls-certificates", required_argument, NULL, OPT_TLS_CERTIFICATES },
  { "tls-psk", required_argument, NULL, OPT_TLS_PSK },
  { "tls-verify-peer", no_argument, NULL, OPT_TLS_VERIFY_PEER },
  { "object", required_argument, NULL, OPT_OBJECT },
  { "tls-creds", required_argument, NULL, OPT_TLS_CREDS },
  { "handshake-timeout", required_argument, NULL, OPT_HANDSHAKE_TIMEOUT },
  { "handshake-limit", required_argument, NULL, OPT_HANDSHAKE_TIMEOUT },
  { "idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT },
  { "allow", required_argument, NULL, OPT_ALLOW },
  { "config", required_argument, NULL, OPT_CONFIG },
  { "inject-error", required_argument, NULL, OPT_INJECT_ERROR },
  { NULL, 0, NULL, 0 },
};

static void
usage(void)
{
  printf(
"Usage: nbdstack [OPTIONS] FILE\n"
"       nbdstack [OPTIONS] --plugin PLUGIN [KEY=VALUE ...]\n"
"       nbdstack [OPTIONS] --config FILE\n"
"Export a disk image over NBD (a drop-in for qemu-nbd).  FILE may also be\n"
"an NBD URI (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH;\n"
"TLS: nbds://, nbds+unix:// with tls-certificates=DIR or tls-psk-file=FILE,\n"
"tls-verify-peer=false): the export is then served from that upstream; or\n"
"a Ceph RBD image, rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=USER][:KEY=VALUE...]\n"
"(QEMU's spelling; a snapshot is served read-only).\n"
"\n"
"  -h, --help                display this help and exit\n"
"  -V, --version             output version information and exit\n"
"      --config=FILE         serve the exports FILE's sections describe (an\n"
"                            INI file; nbdstack(8), CONFIGURATION FILE); no\n"
"                            image argument nor image options then; the\n"
"                            command line overrides its [server] section;\n"
"                            SIGHUP reads it again\n"
"\n"
"Connection properties:\n"
"  -p, --port=PORT           TCP port to listen on (default 10809)\n"
"  -b, --bind=ADDR           address to bind to (default: all, IPv4 and IPv6)\n"
"  -k, --socket=PATH         listen on a Unix socket instead of TCP\n"
"  -e, --shared=NUM          serve at most NUM clients at once (default 1,\n"
"                            0 = no limit); other clients wait\n"
"  -t, --persistent          don't exit when the last client leaves\n"
"  -x, --export-name=NAME    export name (default: the empty string)\n"
"  -D, --description=TEXT    human-readable export description\n"
"  -A, --allocation-depth    offer the qemu:allocation-depth meta context\n"
"  -v, --verbose             also log every request (debug lines)\n"
"      --log=DEST            where log lines go: stderr (default) or syslog\n"
"      --fork                run in the background once ready to serve\n"
"      --pid-file=PATH       write the process ID to PATH once listening\n"
"      --threads=N           reactor threads (default: one per CPU)\n"
"      --busy-poll=USEC      after handling a request, poll for up to USEC\n"
"                            microseconds before sleeping (default 100,\n"
"                            0 = sleep at once): lower latency for clients\n"
"                            that send one request at a time, for CPU time\n"
"      --single              serve one client already connected on stdin/\n"
"                            stdout (one socket, as libnbd's\n"
"                            nbd_connect_command gives), then exit; nbdkit\n"
"                            spells it -s, but here -s is qemu-nbd's\n"
"                            --snapshot\n"
"  Socket activation: with LISTEN_PID/LISTEN_FDS set (systemd, libnbd's\n"
"  nbd_connect_systemd_socket_activation) the passed sockets are served\n"
"  instead of -p/-b/-k.  With NOTIFY_SOCKET set, READY=1 is sent once\n"
"  serving, STOPPING=1 at shutdown (systemd Type=notify).\n"
"      --metrics=ADDR        serve per-export statistics over HTTP on ADDR\n"
"                            (HOST:PORT, :PORT for every address, or a\n"
"                            Unix socket path containing a '/'):\n"
"                            GET /metrics (Prometheus text), /metrics.json\n"
"      --metrics-json=FILE   on SIGUSR1, write the statistics as JSON to\n"
"                            FILE (replaced whole each time)\n"
"\n"
"Image options:\n"
"      --plugin=PLUGIN       serve an nbdkit plugin (a name from nbdkit's\n"
"                            plugin directory, or a path to its .so); its\n"
"                            parameters follow as KEY=VALUE, as for nbdkit\n"
"      --upstream-timeout=SECONDS  with an NBD URI: fail a request the\n"
"                            upstream has not answered in SECONDS with EIO\n"
"                            and reconnect (default 30, 0 = wait forever)\n"
"  -f, --format=FORMAT       image format: raw or qcow2 (never guessed)\n"
"  -r, --read-only           export read-only\n"
"  -o, --offset=OFFSET       export the image from byte OFFSET on (raw)\n"
"  -s, --snapshot            write to a temporary qcow2 overlay over the\n"
"                            image (in $TMPDIR, default /var/tmp), which\n"
"                            is discarded at exit; the image is not written\n"
"  -l, --load-snapshot=NAME  serve the qcow2 internal snapshot NAME (or ID),\n"
"                            read-only\n"
"      --l2-cache-size=SIZE  qcow2 L2 cache (default: the whole image, at\n"
"                            most 32M)\n"
"      --bitmaps=in-use      write a qcow2 image that has persistent\n"
"                            bitmaps, marking them in use (they stop\n"
"                            tracking); without it such images are\n"
"                            refused read-write\n"
"      --rbd-timeout=SECS    rbd: images: fail a request (and the start)\n"
"                            when the cluster has not answered in SECS\n"
"                            seconds (default 60; 0: wait forever)\n"
"  -n, --nocache             same as --cache=none\n"
"      --cache=MODE          writeback (default), writethrough, none,\n"
"                            directsync, unsafe, or auto (none where the\n"
"                            filesystem has direct I/O, else writeback)\n"
"      --aio=MODE            io_uring (default where available) or threads\n"
"      --discard=MODE        ignore (default) or unmap: what TRIM does\n"
"      --detect-zeroes=MODE  off (default), on or unmap: turn all-zero\n"
"                            writes into zero writes\n"
"\n"
"Block cache (in server memory, shared by all clients; off by default):\n"
"      --block-cache=SIZE            cache up to SIZE bytes (K, M, G)\n"
"      --block-cache-block=SIZE      cache block size (default 64K)\n"
"      --block-cache-read-miss=P     allocate (default) or bypass\n"
"      --block-cache-write-hit=P     write-back (default) or write-through\n"
"      --block-cache-write-miss=P    allocate (default) or no-allocate\n"
"  A dirty block is always written back before it is evicted; FLUSH\n"
"  writes back every dirty block.  Send SIGUSR1 for the cache counters\n"
"  (logged, and written to --metrics-json's file).\n"
"\n"
"TLS (GnuTLS), as nbdkit spells it:\n"
"      --tls=MODE            off (default), on (STARTTLS offered, plain text\n"
"                            allowed) or require (every client must use TLS)\n"
"      --tls-certificates=DIR  X.509: DIR/server-cert.pem, server-key.pem,\n"
"                            ca-cert.pem (optional: ca-crl.pem, dh-params.pem)\n"
"      --tls-psk=FILE        pre-shared keys, as psktool writes them\n"
"      --tls-verify-peer     X.509: require a client certificate from the CA\n"
"  or as qemu-nbd spells it (TLS is then required):\n"
"      --object tls-creds-x509,id=ID,dir=DIR,endpoint=server[,verify-peer=on|off]\n"
"      --object tls-creds-psk,id=ID,dir=DIR,endpoint=server   (DIR/keys.psk)\n"
"      --tls-creds=ID        use the credentials object ID\n"
"\n"
"Access and limits:\n"
"      --allow=ADDR[/PREFIX][,...]  accept TCP clients only from these\n"
"                            IPv4/IPv6 networks (Unix sockets: always)\n"
"      --handshake-timeout=SECONDS  drop a client that has not finished\n"
"                            negotiating by then (default 10, 0: never;\n"
"                            qemu-nbd's --handshake-limit is the same)\n"
"      --idle-timeout=SECONDS  drop a client with no request being worked on\n"
"                            for that long, counting a client stalled in a\n"
"                            write's data or in reading replies (default 0:\n"
"                            never)\n"
"\n"
"Testing:\n"
"      --inject-error=OPS:ERRNO[,rate=P][,file=PATH][,offset=A-B]\n"
"                            fail OPS (read, write, flush, trim, zero,\n"
"                            block-status, cache joined by '+', or all)\n"
"                            with ERRNO (EIO, ENOSPC, EPERM, ENOMEM,\n"
"                            EINVAL, ESHUTDOWN) just above the disk: a\n"
"                            share P of them (default 1, or N%%), only\n"
"                            while PATH exists, only those touching bytes\n"
"                            A to B-1 of the image; a FUA write matches\n"
"                            flush too.  Repeatable (at most 8), the\n"
"                            first matching rule wins\n");
}

static void __attribute__((noreturn, format(printf, 1, 2)))
die(const char *fmt, ...)
{
  va_list ap;
  fputs("nbdstack: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputs("\n", stderr);
  exit(EXIT_FAILURE);
}

/* A qemu --object: "TYPE,key=value,..." (",," is a literal comma).  The
 * options point into them for the life of the process. */
#define OBJECT_MAX_PROPS 8
struct object {
  char *type;
  char *keys[OBJECT_MAX_PROPS], *values[OBJECT_MAX_PROPS];
  int nprops;
};
static struct object objs[8];
static int nobjs;
static char *psk_path;

static void
parse_object(const char *spec, struct object *obj)
{
  char *buf = strdup(spec);
  if (!buf)
    die("out of memory");
  /* Split on single commas, turning ",," into ",", in place. */
  char *fields[OBJECT_MAX_PROPS + 1];
  int n = 0;
  char *out = buf;
  fields[n++] = out;
  for (const char *in = spec; *in; in++) {
    if (*in == ',' && in[1] == ',')
      *out++ = *in++;
    else if (*in == ',') {
      *out++ = '\0';
      if (n == OBJECT_MAX_PROPS + 1)
        die("--object: too many properties in '%s'", spec);
      fields[n++] = out;
    } else
      *out++ = *in;
  }
  *out = '\0';
  obj->type = fields[0];
  obj->nprops = n - 1;
  for (int i = 1; i < n; i++) {
    char *eq = strchr(fields[i], '=');
    if (!eq)
      die("--object: property '%s' has no value", fields[i]);
    *eq = '\0';
    obj->keys[i - 1] = fields[i];
    obj->values[i - 1] = eq + 1;
  }
}

static const char *
object_prop(const struct object *obj, const char *key)
{
  for (int i = 0; i < obj->nprops; i++)
    if (strcmp(obj->keys[i], key) == 0)
      return obj->values[i];
  return NULL;
}

static bool
parse_qemu_bool(const char *opt, const char *s)
{
  bool b;
  if (!parse_bool(s, &b))
    die("%s: expected on or off, not '%s'", opt, s);
  return b;
}

/* --tls-creds ID: the --object named ID, with qemu-nbd's rules. */
static void
use_tls_creds(struct options *o, const char *id)
{
  const struct object *obj = NULL;
  for (int i = 0; i < nobjs; i++) {
    const char *oid = object_prop(&objs[i], "id");
    if (oid && strcmp(oid, id) == 0)
      obj = &objs[i];
  }
  if (!obj)
    die("--tls-creds: no --object with id '%s'", id);
  bool x509 = strcmp(obj->type, "tls-creds-x509") == 0;
  for (int i = 0; i < obj->nprops; i++) {
    const char *k = obj->keys[i];
    if (strcmp(k, "id") && strcmp(k, "dir") && strcmp(k, "endpoint") &&
        strcmp(k, "priority") && strcmp(k, "username") &&
        (!x509 || (strcmp(k, "verify-peer") && strcmp(k, "sanity-check"))))
      die("--object %s: property '%s' is not supported", obj->type, k);
  }
  const char *dir = object_prop(obj, "dir");
  const char *endpoint = object_prop(obj, "endpoint");
  if (!dir)
    die("--object %s,id=%s: the 'dir' property is needed", obj->type, id);
  if (!endpoint || strcmp(endpoint, "server") != 0)
    die("--tls-creds %s: expecting TLS credentials with a server endpoint",
        id);
  o->tls.mode = TLS_REQUIRE;
  o->tls.priority = object_prop(obj, "priority");
  if (x509) {
    const char *vp = object_prop(obj, "verify-peer");
    o->tls.x509_dir = dir;
    o->tls.verify_peer = vp ? parse_qemu_bool("verify-peer", vp) : true;
  } else {
    /* QEMU's tls-creds-psk reads DIR/keys.psk. */
    if (asprintf(&psk_path, "%s/keys.psk", dir) == -1)
      die("out of memory");
    o->tls.psk_file = psk_path;
  }
}

static const char *
set_seconds(unsigned *field, const char *value)
{
  uint64_t v;
  const char *err = value_seconds(value, &v);
  if (!err)
    *field = v;
  return err;
}

const char *
options_set(struct options *o, const char *key, const char *value)
{
  uint64_t v;
  if (strcmp(key, "socket") == 0) {
    if (value[0] != '/')
      return value_error("socket path must be absolute: '%s'", value);
    o->socket_path = value;
  } else if (strcmp(key, "port") == 0) {
    if (!parse_u64(value, &v) || v < 1 || v > 65535)
      return value_error("invalid port '%s'", value);
    o->port = value;
  } else if (strcmp(key, "bind") == 0)
    o->bind = value;
  else if (strcmp(key, "shared") == 0) {
    if (!parse_u64(value, &v) || v > 65535)
      return value_error("invalid shared client count '%s'", value);
    o->shared = v;
  } else if (strcmp(key, "persistent") == 0)
    return value_set_bool(&o->persistent, value);
  else if (strcmp(key, "threads") == 0) {
    if (!parse_u64(value, &v) || v < 1 || v > 1024)
      return value_error("invalid thread count '%s'", value);
    o->threads = v;
  } else if (strcmp(key, "busy-poll") == 0) {
    if (!parse_u64(value, &v) || v > 1000000)
      return value_error("invalid busy-poll time '%s' (microseconds, at "
                         "most 1000000)", value);
    o->busy_poll = (unsigned) v;
  } else if (strcmp(key, "aio") == 0) {
    if (strcmp(value, "io_uring") == 0)
      o->aio = AIO_IO_URING;
    else if (strcmp(value, "threads") == 0)
      o->aio = AIO_THREADS;
    else if (strcmp(value, "native") == 0)
      return "native (Linux AIO) is not supported: use io_uring, which "
             "does the same job without needing O_DIRECT";
    else
      return value_error("invalid aio mode '%s' (io_uring, threads)", value);
  } else if (strcmp(key, "log") == 0) {
    if (strcmp(value, "syslog") && strcmp(value, "stderr"))
      return value_error("invalid log destination '%s' (stderr, syslog)",
                         value);
    o->log_syslog = strcmp(value, "syslog") == 0;
  } else if (strcmp(key, "metrics") == 0) {
    if (!*value)
      return "needs HOST:PORT, :PORT or a socket path";
    o->metrics = value;
  } else if (strcmp(key, "metrics-json") == 0) {
    if (!*value)
      return "needs a file name";
    o->metrics_json = value;
  } else if (strcmp(key, "tls") == 0) {
    if (!parse_tls_mode(value, &o->tls.mode))
      return value_error("invalid tls mode '%s' (off, on, require)", value);
    o->tls_mode_set = true;
  } else if (strcmp(key, "tls-certificates") == 0)
    o->tls.x509_dir = value;
  else if (strcmp(key, "tls-psk") == 0)
    o->tls.psk_file = value;
  else if (strcmp(key, "tls-verify-peer") == 0)
    return value_set_bool(&o->tls.verify_peer, value);
  else if (strcmp(key, "handshake-timeout") == 0 ||
           strcmp(key, "handshake-limit") == 0)
    return set_seconds(&o->handshake_timeout, value);
  else if (strcmp(key, "idle-timeout") == 0)
    return set_seconds(&o->idle_timeout, value);
  else if (strcmp(key, "allow") == 0) {
    const char *bad = allow_list_check(value);
    if (bad)
      return value_error("invalid address or network '%s' (ADDR[/PREFIX])",
                         bad);
    if (o->nallow == OPTIONS_MAX_ALLOW)
      return "too many allow lists (join them with commas)";
    o->allow[o->nallow++] = value;
  } else
    return "unknown key";
  return NULL;
}

/* The long name of option c (short options have one too). */
static const char *
long_name(int c)
{
  for (const struct option *lo = long_opts; lo->name; lo++)
    if (lo->val == c)
      return lo->name;
  return "?";
}

/* --config, found before the other options so that they override its
 * [server] section whatever their order. */
static const char *
find_config(int argc, char **argv)
{
  const char *path = NULL;
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, short_opts, long_opts, NULL)) != -1)
    if (c == OPT_CONFIG)
      path = optarg;
  optind = 0;  /* glibc: start again from scratch */
  return path;
}

static void
defaults(struct options *o)
{
  memset(o, 0, sizeof *o);
  o->shared = 1;
  o->handshake_timeout = 10;  /* as qemu-nbd since CVE-2024-7409 */
  o->busy_poll = 100;
  o->ex.name = "";
}

/* The one image the command line names, and its settings' rules. */
static void
image_argument(int argc, char **argv, struct options *o)
{
  if (o->ex.plugin) {
    /* As on nbdkit's command line: the plugin's parameters. */
    o->ex.plugin_args = (const char *const *) argv + optind;
    o->ex.nplugin_args = argc - optind;
    o->ex.image = o->ex.plugin;
  } else if (optind != argc - 1)
    die("expected exactly one image file (try --help)");
  else
    o->ex.image = argv[optind];
  const char *key;
  const char *err = export_settings_check(&o->ex, &key);
  if (err)
    die("--%s: %s", key, err);
}

static void
check_tls(struct options *o, const char *tls_creds)
{
  if (tls_creds) {
    if (o->tls_mode_set || o->tls.x509_dir || o->tls.psk_file ||
        o->tls.verify_peer)
      die("--tls-creds cannot be combined with the --tls* options");
    use_tls_creds(o, tls_creds);
  } else if (!o->tls_mode_set && (o->tls.x509_dir || o->tls.psk_file))
    o->tls.mode = TLS_ON;  /* credentials given: offer TLS */
  if (o->tls.mode != TLS_OFF && !o->tls.x509_dir && !o->tls.psk_file)
    die("--tls=%s needs --tls-certificates=DIR or --tls-psk=FILE",
        o->tls.mode == TLS_ON ? "on" : "require");
  if (o->tls.x509_dir && o->tls.psk_file)
    die("--tls-certificates and --tls-psk cannot be combined");
  if (o->tls.verify_peer && !o->tls.x509_dir)
    die("--tls-verify-peer needs --tls-certificates");
}

void
options_parse(int argc, char **argv, struct options *o)
{
  defaults(o);
  bool have_cache = false, have_aio = false;
  bool cli_listener = false, cli_allow = false;
  const char *export_opt = NULL;  /* an image option given, for --config */
  const char *tls_creds = NULL;
  const char *err;
  int c;

  o->config = find_config(argc, argv);
  if (o->config) {
    o->cfg = config_load(o->config);
    if (!o->cfg)
      exit(EXIT_FAILURE);
    config_apply_server(o->cfg, o);
  }

  opterr = 0;
  while ((c = getopt_long(argc, argv, short_opts, long_opts, NULL)) != -1) {
    const char *name = long_name(c);
    switch (c) {
    case 'h':
      usage();
      exit(EXIT_SUCCESS);
    case 'V':
      printf("nbdstack %s\n", NBDS_VERSION);
      exit(EXIT_SUCCESS);
    case OPT_CONFIG:
      break;  /* read first */
    case 'x':
      if (strlen(optarg) > NBD_MAX_STRING)
        die("export name is longer than %d bytes", NBD_MAX_STRING);
      o->ex.name = optarg;
      export_opt = name;
      break;
    case 'r':
      o->ex.readonly = true;
      export_opt = name;
      break;
    case 's':
      o->ex.temp_overlay = true;
      export_opt = name;
      break;
    case 'A':
      o->ex.allocation_depth = true;
      export_opt = name;
      break;
    case OPT_PLUGIN:
      o->ex.plugin = optarg;
      export_opt = name;
      break;
    case OPT_INJECT_ERROR:
      if (o->ex.ninject_errors == (int) (sizeof o->ex.inject_errors /
                                         sizeof o->ex.inject_errors[0]))
        die("--inject-error: at most %zu rules",
            sizeof o->ex.inject_errors / sizeof o->ex.inject_errors[0]);
      o->ex.inject_errors[o->ex.ninject_errors++] = optarg;
      export_opt = name;
      break;
    case 'n':
    case OPT_CACHE:
      if (have_cache)
        die("-n and --cache can only be given once");
      have_cache = true;
      if ((err = export_settings_set(&o->ex, "cache",
                                     c == 'n' ? "none" : optarg)))
        die("--cache: %s", err);
      export_opt = name;
      break;
    case 't':
      o->persistent = true;
      break;
    case OPT_TLS_VERIFY_PEER:
      o->tls.verify_peer = true;
      break;
    case 'v':
      o->verbose = true;
      break;
    case OPT_FORK:
      o->fork = true;
      break;
    case OPT_PID_FILE:
      o->pid_file = optarg;
      break;
    case OPT_SINGLE:
      o->single = true;
      break;
    case OPT_OBJECT:
      if (nobjs == (int) (sizeof objs / sizeof objs[0]))
        die("too many --object options");
      parse_object(optarg, &objs[nobjs]);
      if (strcmp(objs[nobjs].type, "tls-creds-x509") != 0 &&
          strcmp(objs[nobjs].type, "tls-creds-psk") != 0)
        die("--object %s: only tls-creds-x509 and tls-creds-psk are "
            "supported", objs[nobjs].type);
      nobjs++;
      break;
    case OPT_TLS_CREDS:
      tls_creds = optarg;
      break;
    case '?':
      if (optopt)
        die("option '-%c' %s (try --help)", optopt,
            strchr(short_opts, optopt) ? "needs an argument" : "is unknown");
      die("unknown or incomplete option '%s' (try --help)", argv[optind - 1]);
    default:
      if (c == OPT_AIO && have_aio)
        die("--aio can only be given once");
      have_aio |= c == OPT_AIO;
      /* The command line's listeners and --allow replace [server]'s. */
      if ((c == 'k' || c == 'p' || c == 'b') && !cli_listener) {
        cli_listener = true;
        o->socket_path = o->port = o->bind = NULL;
      }
      if (c == OPT_ALLOW && !cli_allow) {
        cli_allow = true;
        o->nallow = 0;
      }
      /* Server options first: --tls and --allow are the server's here. */
      err = options_set(o, name, optarg);
      if (err && strcmp(err, "unknown key") == 0) {
        err = export_settings_set(&o->ex, name, optarg);
        export_opt = name;
      }
      if (err)
        die("--%s: %s", name, err);
      break;
    }
  }

  if (o->config) {
    o->listener_from_config = !cli_listener &&
                              (o->socket_path || o->port || o->bind);
    if (o->single) {
      /* The one client on stdin is the listener and ends the server,
       * whatever [server] says. */
      o->persistent = false;
      if (o->listener_from_config)
        o->socket_path = o->port = o->bind = NULL;
    }
    if (optind != argc)
      die("--config: no image argument (the configuration file names the "
          "exports)");
    if (export_opt)
      die("--config: --%s is an image option: set it in the export's "
          "section of the configuration file", export_opt);
  } else
    image_argument(argc, argv, o);
  if (o->socket_path && (o->port || o->bind))
    die("-k cannot be combined with -p or -b");
  if (o->single && (o->socket_path || o->port || o->bind || o->fork ||
                    o->persistent))
    die("--single serves the client on stdin/stdout: it cannot be combined "
        "with -k, -p, -b, -t or --fork");
  check_tls(o, tls_creds);
}
