/* Helpers for test-qcow2-format.c. */
#ifndef NBDS_TEST_QCOW2_HARNESS_H
#define NBDS_TEST_QCOW2_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "nbdstack/layer.h"
#include "../../plugins/qcow2/format.h"

extern char dir[64];   /* this test's temp dir */
void setup(void);
void teardown(void);

/* Run a shell command in the temp dir; returns its exit status. */
int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#define SH_OK(...) cr_assert_eq(sh(__VA_ARGS__), 0, "command failed")

uint8_t *slurp(const char *name, size_t *len);
void spit(const char *name, const uint8_t *buf, size_t len);
char *capture(const char *cmd);

/* qemu-img's pretty-printed JSON: a value (quotes removed), a number, and
 * a whole line removed. */
void json_get(const char *json, const char *key, char *val, size_t size);
uint64_t json_u64(const char *json, const char *key);
void drop_line(char *json, const char *key);
char *info(const char *name);

/* Parse cluster 0 as the engine will; parse_image asserts success. */
int parse_bytes(const uint8_t *buf, size_t len, struct qcow2_header *h);
uint8_t *parse_image(const char *name, struct qcow2_header *h, size_t *len);
/* The L2 entry (and bitmap) of a guest offset, from the image bytes. */
void l2_entry(const uint8_t *img, size_t len, const struct qcow2_header *h,
              uint64_t guest, uint64_t *entry, uint64_t *bitmap);

#endif
