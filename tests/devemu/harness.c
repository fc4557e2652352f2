/* Test harness: servers, their logs, and synchronous devemu wrappers. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "harness.h"

/* Each test program lists the external programs it needs; main() exits
 * 77 (skip) when one is missing. */
extern const char *const harness_tools[];

static bool
in_path(const char *prog)
{
  if (strchr(prog, '/'))
    return access(prog, X_OK) == 0;
  char cmd[256];
  snprintf(cmd, sizeof cmd, "command -v '%s' >/dev/null 2>&1", prog);
  return system(cmd) == 0;
}

static const char *
tool_path(const char *name)
{
  if (strcmp(name, "nbdstack") == 0)
    return getenv("NBDSTACK");
  if (strcmp(name, "recorder") == 0)
    return getenv("DEVEMU_RECORDER");
  return name;
}

int
main(int argc, char *argv[])
{
  for (const char *const *t = harness_tools; *t; t++) {
    const char *p = tool_path(*t);
    if (!p || !in_path(p)) {
      fprintf(stderr, "skipped: %s not found\n", *t);
      return 77;
    }
  }
  struct criterion_test_set *tests = criterion_initialize();
  int result = 0;
  if (criterion_handle_args(argc, argv, true))
    result = !criterion_run_all_tests(tests);
  criterion_finalize(tests);
  return result;
}

const char *
recorder_plugin(void)
{
  return getenv("DEVEMU_RECORDER");
}

/* Every server writes its pid file once it listens. */
static bool
listening(const struct server *s)
{
  return access(s->pidfile, F_OK) == 0;
}

/* The private directories go when the test's process exits (the image
 * is read after the server was killed, so not before). */
static char cleanup[16][64];
static int ncleanup;

static void
remove_dirs(void)
{
  static const char *const files[] = { "sock", "log", "disk.img", "pid" };
  for (int i = 0; i < ncleanup; i++) {
    for (size_t f = 0; f < sizeof files / sizeof *files; f++) {
      char path[128];
      snprintf(path, sizeof path, "%.64s/%s", cleanup[i], files[f]);
      unlink(path);
    }
    rmdir(cleanup[i]);
  }
}

static void
prepare(struct server *s, uint64_t size)
{
  memset(s, 0, sizeof *s);
  strcpy(s->dir, "/tmp/devemu-test-XXXXXX");
  cr_assert_not_null(mkdtemp(s->dir));
  if (ncleanup == 0)
    atexit(remove_dirs);
  if (ncleanup < 16)
    strcpy(cleanup[ncleanup++], s->dir);
  snprintf(s->sock, sizeof s->sock, "%s/sock", s->dir);
  snprintf(s->log, sizeof s->log, "%s/log", s->dir);
  snprintf(s->image, sizeof s->image, "%s/disk.img", s->dir);
  snprintf(s->pidfile, sizeof s->pidfile, "%s/pid", s->dir);
  snprintf(s->pidopt, sizeof s->pidopt, "--pid-file=%s", s->pidfile);
  snprintf(s->uri, sizeof s->uri, "nbd+unix:///?socket=%s", s->sock);
  if (size > 0) {
    int fd = open(s->image, O_RDWR | O_CREAT | O_TRUNC, 0644);
    cr_assert(fd >= 0 && ftruncate(fd, size) == 0);
    close(fd);
  }
}

static void
spawn(struct server *s, const char *const *head, const char *const *args,
      const char *const *tail)
{
  const char *argv[64];
  char *own[64];
  int n = 0, nown = 0;

  const char *const *lists[] = { head, args, tail };
  for (int l = 0; l < 3; l++)
    for (const char *const *a = lists[l]; a && *a; a++) {
      cr_assert_lt(n, 62);
      const char *v = *a;
      char *sub;
      if ((sub = strstr(v, "@LOG")) || (sub = strstr(v, "@IMAGE"))) {
        bool log = sub[1] == 'L';
        char *buf;
        cr_assert(asprintf(&buf, "%.*s%s%s", (int) (sub - v), v,
                           log ? s->log : s->image,
                           sub + (log ? 4 : 6)) > 0);
        own[nown++] = buf;
        v = buf;
      }
      argv[n++] = v;
    }
  argv[n] = NULL;

  pid_t parent = getpid();
  s->pid = fork();
  cr_assert_neq(s->pid, -1);
  if (s->pid == 0) {
    /* The server dies with the test, even when an assertion fails. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
      _exit(1);
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    execvp(argv[0], (char **) argv);
    _exit(127);
  }
  for (int i = 0; i < nown; i++)
    free(own[i]);
  for (int i = 0; i < 1000; i++) {   /* up to 10 s */
    if (listening(s))
      return;
    int st;
    cr_assert_eq(waitpid(s->pid, &st, WNOHANG), 0,
                 "%s exited before listening", argv[0]);
    usleep(10000);
  }
  cr_assert_fail("%s did not start listening", argv[0]);
}

void
server_nbdkit(struct server *s, uint64_t size, const char *const *args)
{
  prepare(s, size);
  const char *head[] = { "nbdkit", "-f", "-U", s->sock, "-P", s->pidfile,
                         NULL };
  spawn(s, head, args, NULL);
}

void
server_memory(struct server *s, const char *const *filters,
              const char *const *params)
{
  const char *args[32];
  int n = 0;
  args[n++] = "--filter=log";
  for (; filters && *filters; filters++)
    args[n++] = *filters;
  args[n++] = "memory";
  args[n++] = "16M";
  args[n++] = "logfile=@LOG";
  for (; params && *params; params++)
    args[n++] = *params;
  args[n] = NULL;
  server_nbdkit(s, 0, args);
}

void
server_nbdstack(struct server *s, uint64_t size, const char *const *args)
{
  prepare(s, size);
  const char *head[] = { getenv("NBDSTACK"), "-k", s->sock, "-e", "0",
                         "-t", "--threads=1", s->pidopt, NULL };
  spawn(s, head, args, NULL);
}

void
server_qemu_nbd(struct server *s, uint64_t size, const char *const *args)
{
  prepare(s, size);
  const char *head[] = { "qemu-nbd", "-k", s->sock, "-e", "4", "-t",
                         "-f", "raw", s->pidopt, NULL };
  const char *tail[] = { s->image, NULL };
  spawn(s, head, args, tail);
}

void
server_kill(struct server *s, int sig)
{
  if (s->pid > 0) {
    kill(s->pid, sig);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
  }
}

static bool
field(const char *line, const char *name, uint64_t *v)
{
  const char *p = strstr(line, name);
  if (!p)
    return false;
  *v = strtoull(p + strlen(name), NULL, 0);
  return true;
}

size_t
log_ops(const struct server *s, size_t from, struct nbdop *ops, size_t max)
{
  static const struct { const char *tag; char op; } kinds[] = {
    { " Read id=", 'R' }, { " Write id=", 'W' }, { " Flush id=", 'F' },
    { " Zero id=", 'Z' }, { " Trim id=", 'T' },
  };
  FILE *f = fopen(s->log, "r");
  char line[1024];
  size_t n = 0, seen = 0;

  if (!f)
    return 0;
  while (fgets(line, sizeof line, f)) {
    if (strstr(line, "return="))
      continue;
    for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++) {
      if (!strstr(line, kinds[k].tag))
        continue;
      if (seen++ < from)
        break;
      if (n < max) {
        uint64_t v;
        struct nbdop *o = &ops[n];
        memset(o, 0, sizeof *o);
        o->op = kinds[k].op;
        field(line, "offset=", &o->off);
        field(line, "count=", &o->len);
        o->fua = field(line, "fua=", &v) ? (int) v : 0;
        o->trim = field(line, "trim=", &v) ? (int) v : 0;
        o->fast = field(line, "fast=", &v) ? (int) v : 0;
      }
      n++;
      break;
    }
  }
  fclose(f);
  return n;
}

static int
by_offset(const void *a, const void *b)
{
  const struct nbdop *x = a, *y = b;
  return x->off < y->off ? -1 : x->off > y->off;
}

void
ops_sort(struct nbdop *ops, size_t from, size_t n)
{
  qsort(ops + from, n, sizeof *ops, by_offset);
}

size_t
log_count(const struct server *s, size_t from, char op, int fua)
{
  struct nbdop ops[4096];
  size_t n = log_ops(s, from, ops, 4096), c = 0;
  for (size_t i = 0; i < n && i < 4096; i++)
    if (ops[i].op == op && (fua == -1 || ops[i].fua == fua))
      c++;
  return c;
}

static void
record(void *opaque, const devemu_completion *c)
{
  struct rig *r = opaque;
  r->last = *c;
  r->ncomp++;
}

void
rig_attach(struct rig *r, const devemu_opts *o)
{
  char *err = NULL;
  r->b = devemu_backend_connect_uri(r->srv.uri, &err);
  cr_assert_not_null(r->b, "connect: %s", err ? err : "?");
  r->d = devemu_dev_new(r->b, o, &err);
  cr_assert_not_null(r->d, "dev_new: %s", err ? err : "?");
  devemu_set_completion(r->d, record, r);
  rig_mark(r);
}

void
rig_close(struct rig *r)
{
  devemu_dev_free(r->d);
  devemu_backend_close(r->b);
  server_kill(&r->srv, SIGTERM);
}

devemu_completion
rig_run(struct rig *r, devemu_cmd c)
{
  unsigned before = r->ncomp;
  int rc = devemu_submit(r->d, &c);
  cr_assert_geq(rc, 0, "submit rejected the command");
  for (int i = 0; r->ncomp == before; i++) {
    cr_assert_lt(i, 20000, "no completion");
    devemu_backend_poll(r->b, 1000);
  }
  cr_assert_eq(r->ncomp, before + 1, "completed more than once");
  cr_assert_eq(r->last.tag, c.tag);
  return r->last;
}

void
rig_mark(struct rig *r)
{
  struct nbdop dummy;
  r->mark = log_ops(&r->srv, 0, &dummy, 0);
}

size_t
rig_count(struct rig *r, char op, int fua)
{
  return log_count(&r->srv, r->mark, op, fua);
}

void
export_read(const struct server *s, void *buf, size_t len, uint64_t off)
{
  struct nbd_handle *h = nbd_create();
  cr_assert_not_null(h);
  cr_assert_eq(nbd_connect_uri(h, s->uri), 0, "%s", nbd_get_error());
  cr_assert_eq(nbd_pread(h, buf, len, off, 0), 0, "%s", nbd_get_error());
  nbd_close(h);
}

static void
le32(uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = v >> (8 * i);
}

devemu_cmd
virtio_cmd(uint32_t type, uint64_t sector, const devemu_iov *iov,
           unsigned niov)
{
  static uint64_t tag;
  devemu_cmd c = { .tag = ++tag, .iov = iov, .niov = niov };
  le32(c.u.virtio_hdr, type);
  le32(c.u.virtio_hdr + 8, sector);
  le32(c.u.virtio_hdr + 12, sector >> 32);
  return c;
}

devemu_cmd
nvme_cmd(uint8_t opcode, uint32_t nsid, uint64_t slba, uint32_t cdw12,
         const devemu_iov *iov, unsigned niov)
{
  static uint64_t tag = 1000;
  devemu_cmd c = { .tag = ++tag, .iov = iov, .niov = niov };
  c.u.nvme_sqe[0] = opcode;
  le32(c.u.nvme_sqe + 4, nsid);
  le32(c.u.nvme_sqe + 40, slba);
  le32(c.u.nvme_sqe + 44, slba >> 32);
  le32(c.u.nvme_sqe + 48, cdw12);
  return c;
}

devemu_cmd
nvme_admin(uint8_t opcode, uint32_t nsid, uint32_t cdw10, uint32_t cdw11,
           const devemu_iov *iov, unsigned niov)
{
  static uint64_t tag = 5000;
  devemu_cmd c = { .tag = ++tag, .iov = iov, .niov = niov,
                   .nvme_admin = true };
  c.u.nvme_sqe[0] = opcode;
  le32(c.u.nvme_sqe + 4, nsid);
  le32(c.u.nvme_sqe + 40, cdw10);
  le32(c.u.nvme_sqe + 44, cdw11);
  return c;
}

/* Sets both the LBA28 and LBA48 forms: either decoding finds its own. */
devemu_cmd
ata_cmd(uint8_t command, uint64_t lba, uint32_t count, const devemu_iov *iov,
        unsigned niov)
{
  static uint64_t tag = 9000;
  devemu_cmd c = { .tag = ++tag, .iov = iov, .niov = niov };
  devemu_ata_tf *tf = &c.u.ata;
  tf->command = command;
  tf->count = count;
  tf->hob_count = count >> 8;
  tf->lba_lo = lba;
  tf->lba_mid = lba >> 8;
  tf->lba_hi = lba >> 16;
  tf->hob_lba_lo = lba >> 24;
  tf->hob_lba_mid = lba >> 32;
  tf->hob_lba_hi = lba >> 40;
  tf->device = 0x40 | ((lba >> 24) & 0x0f);
  return c;
}

void
fill_pattern(void *buf, size_t len, unsigned seed)
{
  uint8_t *b = buf;
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < len; i++) {
    x = x * 1103515245u + 12345u;
    b[i] = x >> 16;
  }
}
