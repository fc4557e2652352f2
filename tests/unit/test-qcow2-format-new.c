/* qcow2_format_new against qemu-img create: the same bytes, a clean
 * `qemu-img check`, the same `qemu-img info`, and qemu-io can write into
 * it.  Part of the unit-qcow2-format executable. */
#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2-harness.h"

TestSuite(qcow2_new, .init = setup, .fini = teardown, .timeout = 300);

struct create_case {
  const char *size_arg;
  uint64_t size;
  uint32_t cluster_bits;
  bool backing;
};

static void
check_new_image(const struct create_case *c)
{
  char opts[64] = "", back[64] = "";
  uint8_t *ours, *theirs;
  size_t ours_len, theirs_len;
  struct qcow2_header h;
  char *info_ours, *info_theirs;

  snprintf(opts, sizeof opts, "-o cluster_size=%u", 1u << c->cluster_bits);
  if (c->backing)
    strcpy(back, "-b base.raw -F raw");
  SH_OK("rm -f ours.qcow2 qemu.qcow2 && qemu-img create -q -f raw base.raw 1M");
  SH_OK("qemu-img create -q -f qcow2 %s %s qemu.qcow2 %s", opts, back,
        c->size_arg);
  cr_assert_eq(qcow2_format_new(c->size, c->cluster_bits,
                                c->backing ? "base.raw" : NULL,
                                c->backing ? "raw" : NULL,
                                &ours, &ours_len), 0, "%s", nbds_last_error());
  spit("ours.qcow2", ours, ours_len);
  theirs = slurp("qemu.qcow2", &theirs_len);
  cr_assert_eq(ours_len, theirs_len, "%s/%u: length %zu vs qemu's %zu",
               c->size_arg, c->cluster_bits, ours_len, theirs_len);
  cr_assert_eq(memcmp(ours, theirs, ours_len), 0, "%s/%u: bytes differ",
               c->size_arg, c->cluster_bits);
  cr_assert_eq(parse_bytes(ours, ours_len, &h), 0, "%s", nbds_last_error());
  qcow2_header_free(&h);

  SH_OK("qemu-img check -q ours.qcow2");
  info_ours = info("ours.qcow2");
  info_theirs = info("qemu.qcow2");
  /* Identical but for the name (same length) and the allocated size. */
  for (char *p; (p = strstr(info_theirs, "qemu.qcow2")); )
    memcpy(p, "ours", 4);
  drop_line(info_ours, "actual-size");
  drop_line(info_theirs, "actual-size");
  cr_assert_str_eq(info_ours, info_theirs);
  if (c->size == 0)
    goto out;
  SH_OK("qemu-io -c 'write -P 7 0 %s' ours.qcow2 >/dev/null",
        c->size >= (1u << 20) ? "1M" : "4k");
  SH_OK("qemu-img check -q ours.qcow2");
  SH_OK("qemu-io -c 'read -P 7 0 4k' ours.qcow2 | grep -q 'read 4096'");
out:
  free(ours);
  free(theirs);
  free(info_ours);
  free(info_theirs);
}

Test(qcow2_new, format_new_matches_qemu_img)
{
  static const struct create_case cases[] = {
    { "1G", 1u << 30, 16, false },
    { "0", 0, 16, false },
    { "1000001", 1000001, 16, false },
    { "1M", 1u << 20, 9, false },
    { "1M", 1u << 20, 9, true },
    { "1G", 1u << 30, 9, false },   /* two more refcount blocks */
    { "16G", UINT64_C(16) << 30, 9, false },
    { "100G", UINT64_C(100) << 30, 12, false },
    { "1T", UINT64_C(1) << 40, 21, false },
    { "4T", UINT64_C(4) << 40, 16, true },
    { "64M", 64u << 20, 13, true },
  };

  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    check_new_image(&cases[i]);
}

Test(qcow2_new, format_new_refuses)
{
  uint8_t *out;
  size_t len;
  char name[1100];

  cr_assert_eq(qcow2_format_new(1 << 20, 8, NULL, NULL, &out, &len), -1);
  cr_assert_eq(qcow2_format_new(1 << 20, 22, NULL, NULL, &out, &len), -1);
  cr_assert_eq(qcow2_format_new(1 << 20, 16, "b", NULL, &out, &len), -1);
  cr_assert_eq(qcow2_format_new(1 << 20, 16, "b", "0123456789abcdef",
                                &out, &len), -1);
  memset(name, 'x', 1024);
  name[1024] = '\0';
  cr_assert_eq(qcow2_format_new(1 << 20, 16, name, "raw", &out, &len), -1);
  name[500] = '\0';
  cr_assert_eq(qcow2_format_new(1 << 20, 9, name, "raw", &out, &len), -1);
  cr_assert(strstr(nbds_last_error(), "too long for 512-byte clusters"));
  cr_assert_eq(qcow2_format_new(UINT64_C(40) << 30, 9, NULL, NULL, &out, &len), -1);
  cr_assert(strstr(nbds_last_error(), "refcount table larger"));
  cr_assert_eq(qcow2_format_new(UINT64_MAX, 16, NULL, NULL, &out, &len), -1);
  cr_assert_eq(qcow2_format_new(UINT64_C(1) << 62, 16, NULL, NULL, &out, &len), -1);
}
