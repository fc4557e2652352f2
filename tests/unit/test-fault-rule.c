/* Unit tests for the spelling of --inject-error rules (plugins/faults/rule.c). */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "../../plugins/faults/faults.h"

/* server/layers.c is not linked into unit tests. */
const struct nbds_layer_ops *
nbds_layer_type_find(const char *name)
{
  (void) name;
  return NULL;
}

Test(fault_rule, defaults)
{
  struct fault_rule r;
  cr_assert_eq(fault_rule_parse("write:EIO", &r), 0);
  cr_expect_eq(r.ops, 1u << NBDS_OP_WRITE);
  cr_expect_eq(r.err, EIO);
  cr_expect(r.rate == 1);
  cr_expect_null(r.file);
  cr_expect_eq(r.start, 0);
  cr_expect_eq(r.end, UINT64_MAX);
  fault_rule_free(&r);
}

Test(fault_rule, every_setting)
{
  struct fault_rule r;
  cr_assert_eq(fault_rule_parse("read+trim+zero:enospc,rate=25%,"
                                "file=/tmp/x,offset=0x10000-131072", &r), 0);
  cr_expect_eq(r.ops, (1u << NBDS_OP_READ) | (1u << NBDS_OP_TRIM) |
                      (1u << NBDS_OP_ZERO));
  cr_expect_eq(r.err, ENOSPC);
  cr_expect(r.rate == 0.25);
  cr_expect_str_eq(r.file, "/tmp/x");
  cr_expect_eq(r.start, 0x10000);
  cr_expect_eq(r.end, 131072);
  fault_rule_free(&r);

  cr_assert_eq(fault_rule_parse("all:ESHUTDOWN,rate=0.5", &r), 0);
  cr_expect_eq(r.ops, ~0u);
  cr_expect_eq(r.err, ESHUTDOWN);
  cr_expect(r.rate == 0.5);
  fault_rule_free(&r);
}

Test(fault_rule, refused)
{
  static const char *const bad[] = {
    "", "write", "write:", ":EIO", "write,rate=1:EIO", "wrote:EIO",
    "write+:EIO", "write:EBADF", "write:EIO,", "write:EIO,rate",
    "write:EIO,rate=0", "write:EIO,rate=1.5", "write:EIO,rate=101%",
    "write:EIO,rate=x", "write:EIO,file=", "write:EIO,file=a,file=b",
    "write:EIO,offset=5", "write:EIO,offset=5-5", "write:EIO,offset=9-5",
    "write:EIO,offset=-1-5", "write:EIO,offset=1--5", "write:EIO,offset=1-x",
    "write:EIO,seed=1",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    struct fault_rule r;
    cr_expect_eq(fault_rule_parse(bad[i], &r), -1, "'%s' accepted", bad[i]);
    cr_expect(strstr(nbds_last_error(), "--inject-error") != NULL,
              "'%s': message '%s' does not name the option", bad[i],
              nbds_last_error());
  }
}
