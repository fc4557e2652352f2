/* Test harness for the devemu integration tests: real NBD servers
 * (nbdkit, nbdstack, qemu-nbd) on Unix sockets in a private directory,
 * their request logs, and synchronous wrappers around devemu. */
#ifndef DEVEMU_TEST_HARNESS_H
#define DEVEMU_TEST_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <libnbd.h>

#include "nbdstack/devemu.h"

struct server {
  pid_t pid;
  char dir[64];
  char sock[128];
  char log[128];
  char image[128];
  char pidfile[128];
  char pidopt[160];
  char uri[256];
};

/* Start a server and wait until it listens.  args end with NULL; in them
 * "@LOG" and "@IMAGE" are replaced by the paths in the private dir.  The
 * image is created (size bytes, zero) when size > 0. */
void server_nbdkit(struct server *s, uint64_t size, const char *const *args);
void server_nbdstack(struct server *s, uint64_t size,
                     const char *const *args);
void server_qemu_nbd(struct server *s, uint64_t size,
                     const char *const *args);
/* nbdkit --filter=log [filters] memory 16M logfile=LOG [params]: the log
 * filter is outermost, so it sees exactly what devemu sends. */
void server_memory(struct server *s, const char *const *filters,
                   const char *const *params);
void server_kill(struct server *s, int sig);
/* The recorder plugin's path (built by meson). */
const char *recorder_plugin(void);

/* One request as the server logged it (nbdkit's log filter format). */
struct nbdop {
  char op;                 /* 'R', 'W', 'F', 'Z', 'T' */
  uint64_t off, len;
  int fua, trim, fast;
};
/* Requests logged so far, skipping the first `from`.  Returns the count. */
size_t log_ops(const struct server *s, size_t from, struct nbdop *ops,
               size_t max);
/* Requests sent concurrently reach the log in any order: sort ops[from,
 * from+n) by offset. */
void ops_sort(struct nbdop *ops, size_t from, size_t n);
/* Count logged requests of one kind since `from`, with fua == fua (-1 any). */
size_t log_count(const struct server *s, size_t from, char op, int fua);

/* A device on a backend connected to a server. */
struct rig {
  struct server srv;
  devemu_backend *b;
  devemu_dev *d;
  devemu_completion last;
  unsigned ncomp;
  size_t mark;             /* log position to count requests from */
};
void rig_attach(struct rig *r, const devemu_opts *o);
void rig_close(struct rig *r);
/* Submit and poll until the command completes; returns its completion. */
devemu_completion rig_run(struct rig *r, devemu_cmd c);
/* Remember the log position: later log checks see only new requests. */
void rig_mark(struct rig *r);
size_t rig_count(struct rig *r, char op, int fua);

/* Read the export through a second connection. */
void export_read(const struct server *s, void *buf, size_t len,
                 uint64_t off);

/* Command builders */
devemu_cmd virtio_cmd(uint32_t type, uint64_t sector, const devemu_iov *iov,
                      unsigned niov);
devemu_cmd nvme_cmd(uint8_t opcode, uint32_t nsid, uint64_t slba,
                    uint32_t cdw12, const devemu_iov *iov, unsigned niov);
devemu_cmd nvme_admin(uint8_t opcode, uint32_t nsid, uint32_t cdw10,
                      uint32_t cdw11, const devemu_iov *iov, unsigned niov);
devemu_cmd ata_cmd(uint8_t command, uint64_t lba, uint32_t count,
                   const devemu_iov *iov, unsigned niov);
void fill_pattern(void *buf, size_t len, unsigned seed);

#endif
