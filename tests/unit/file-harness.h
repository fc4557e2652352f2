/* Shared by the file layer's unit tests (file-harness.c). */
#ifndef NBDS_TEST_FILE_HARNESS_H
#define NBDS_TEST_FILE_HARNESS_H

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "nbdstack/layer.h"
#include "reactor.h"

#define KiB 1024
#define MiB (1024 * 1024)
#define HZ (NBDS_EXTENT_HOLE | NBDS_EXTENT_ZERO)

extern struct nbds_reactor *reactor;
extern char dir[64];
extern char path[128];
extern int loop_fd;
extern char ram[128];  /* a ramfs mount point, when a test made one */

struct result {
  bool fired;
  int err;
};

void setup_with(bool uring);
void setup(void);
void setup_no_ring(void);
void teardown(void);
void make_file(uint64_t size, int byte);
struct nbds_layer *open_layer(const char *file, const char *aio,
                              const char *readonly);
const char *open_error(const struct nbds_kv *kv, size_t nkv);
void on_done(struct nbds_req *req, int err);
int run(struct nbds_layer *l, struct nbds_req *req);
int rw(struct nbds_layer *l, enum nbds_op op, uint64_t offset,
       struct iovec *iov, int iovcnt, uint32_t flags);
int rw1(struct nbds_layer *l, enum nbds_op op, uint64_t offset, void *buf,
        size_t len, uint32_t flags);
int cmd(struct nbds_layer *l, enum nbds_op op, uint64_t offset, uint64_t count,
        uint32_t flags);
size_t block_status(struct nbds_layer *l, uint64_t offset, uint64_t count,
                    uint32_t flags, struct nbds_extent *v, size_t cap);
void expect_extent(const struct nbds_extent *e, uint64_t length,
                   uint32_t flags);
void expect_bytes(uint64_t offset, size_t len, int byte);
off_t seek(int whence, off_t offset);
long long blocks(void);
bool all_bytes(const unsigned char *p, size_t len, int byte);
/* Direct I/O (direct=on). */
struct nbds_layer *open_direct(const char *file, const char *aio);
bool has_o_direct(int fd);
void expect_file(const unsigned char *model, size_t size);
void expect_ranges_idle(struct nbds_layer *l);
void pattern(unsigned char *p, size_t len, unsigned seed);

/* Criterion copies a parameter into the test's own process by value, so
 * the name travels inside the struct, not as a pointer. */
struct aio {
  char name[16];
};
static struct aio aio_modes[] __attribute__((unused)) = {
  { "io_uring" }, { "threads" },
};

/* Define SUITE before including this header. */
#define AIO_TEST(test)                                                  \
  ParameterizedTestParameters(SUITE, test)                               \
  {                                                                     \
    return cr_make_param_array(struct aio, aio_modes, 2, NULL);         \
  }                                                                     \
  ParameterizedTest(struct aio *aio, SUITE, test)

#endif
