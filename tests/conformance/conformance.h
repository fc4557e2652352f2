/* The protocol-driver conformance tests: one table of tests that every
 * file protocol driver must pass (POSIX on Linux, Win32 under Wine).
 *
 * The tests (tests.c) only use the layer contract and the functions below;
 * each platform provides them (harness-posix.c, harness-win32.c).  A tiny
 * runner (runner.c) runs every test and prints "N passed, N failed", with
 * no test framework, so the same table builds with mingw-w64. */
#ifndef NBDS_CONFORMANCE_H
#define NBDS_CONFORMANCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nbdstack/layer.h"

/* ---- Provided by the platform harness ---- */

/* Called once before and after all tests: set up the calling thread as a
 * reactor (so layers can complete requests on it) and a worker pool. */
void conf_platform_init(void);
void conf_platform_fini(void);

/* A fresh scratch file path (the file does not exist yet), on a
 * filesystem with sparse files and direct I/O. */
const char *conf_scratch_path(const char *name);

/* Open the platform's file layer ("file" on POSIX, "win32file" on
 * Windows) on path with these extra keys, e.g. { "direct", "on" }.
 * Returns NULL with nbds_last_error() set. */
struct nbds_layer *conf_open(const char *path, const struct nbds_kv *kv,
                             size_t nkv);

/* Submit req to l and run this thread's reactor until it completes;
 * returns the request's error (0 or a positive errno value). */
int conf_run(struct nbds_layer *l, struct nbds_req *req);

/* Submit all n requests to l without waiting in between, then run this
 * thread's reactor until every one has completed: requests in flight
 * together, without threads.  Returns 0 when all succeeded, else the
 * error of one that failed. */
int conf_run_many(struct nbds_layer *l, struct nbds_req **reqs, size_t n);

/* Plain file access around the driver, to set up and check contents.
 * conf_file_write and conf_file_truncate create the file when missing. */
bool conf_file_write(const char *path, uint64_t offset, const void *buf,
                     size_t len);
bool conf_file_read(const char *path, uint64_t offset, void *buf,
                    size_t len);
bool conf_file_truncate(const char *path, uint64_t size);
uint64_t conf_file_size(const char *path);
/* Bytes of the file actually allocated on disk (st_blocks * 512, or the
 * allocated ranges on Windows). */
uint64_t conf_file_allocated(const char *path);
void conf_file_remove(const char *path);
/* The driver's direct-I/O alignment on this path's filesystem, as the
 * platform reports it (the tests use it to pick unaligned cases). */
uint32_t conf_direct_alignment(const char *path);

/* ---- Provided by runner.c, used by tests.c ---- */

/* Fail the current test with a message; the test function returns. */
#define CONF_CHECK(cond, ...)                                       \
  do {                                                              \
    if (!(cond)) {                                                  \
      conf_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);            \
      return;                                                       \
    }                                                               \
  } while (0)

void conf_fail(const char *file, int line, const char *cond,
               const char *fmt, ...)
  __attribute__((format(printf, 4, 5)));

struct conf_test {
  const char *name;
  void (*fn)(void);
};
/* The table, in tests.c, ending with { NULL, NULL }. */
extern const struct conf_test conf_tests[];

#endif
