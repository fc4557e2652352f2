/* The conformance tests' shared helpers (model.c): a model of each
 * scratch file, and requests run to completion through the layer. */
#ifndef NBDS_CONFORMANCE_MODEL_H
#define NBDS_CONFORMANCE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conformance.h"

#define KiB 1024
#define MiB (1024 * 1024)
#define HZ (NBDS_EXTENT_HOLE | NBDS_EXTENT_ZERO)
#define MODEL_SIZE (4 * MiB)

/* Why the last helper returned false, for the check's message. */
extern char why[256];
/* What the scratch file should hold: its bytes, then zeroes. */
extern unsigned char model[MODEL_SIZE];

struct iovec iov(void *p, size_t len);
void pattern(unsigned char *p, size_t len, unsigned seed);
unsigned char *got(size_t skew);
unsigned char *got_aligned(size_t at, uint32_t align);
bool bytes_are(const unsigned char *p, size_t len, int byte, uint64_t base);
bool bytes_match(const unsigned char *p, size_t len, uint64_t base);
bool file_matches(const char *path, size_t len);
int rw(struct nbds_layer *l, enum nbds_op op, uint64_t offset, struct iovec *v,
       int n, uint32_t flags);
int rw1(struct nbds_layer *l, enum nbds_op op, uint64_t offset, void *buf,
        size_t len, uint32_t flags);
int cmd(struct nbds_layer *l, enum nbds_op op, uint64_t offset, uint64_t count,
        uint32_t flags);
bool layer_read(struct nbds_layer *l, uint64_t offset, size_t len);
bool layer_matches(struct nbds_layer *l, uint64_t offset, size_t len);
const char *make_file(const char *name, size_t size, int byte);
struct nbds_layer *open_with(const char *path, const char *key,
                             const char *value);
struct nbds_layer *setup(const char *name, size_t size, int byte, bool direct,
                         const char **path);

/* The direct-I/O tests (tests-direct.c). */
void test_direct_small_writes(void);
void test_direct_unaligned_buffers(void);
void test_direct_alignment(void);
void test_direct_concurrent_rmw(void);
void test_direct_aligned_against_rmw(void);

#endif
