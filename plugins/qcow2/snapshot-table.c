/* The internal snapshot table (QEMU's qcow2_read_snapshots), read-only:
 * entries of a 40-byte fixed part, extra data, id and name, each entry
 * 8-byte aligned. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdstack/layer.h"
#include "format.h"

#define ENTRY_FIXED 40
#define EXTRA_DISK_SIZE_END 16   /* extra: u64 vm_state_size, u64 disk_size */

void
qcow2_snapshots_free(struct qcow2_snapshot *s, size_t n)
{
  if (!s)
    return;
  for (size_t i = 0; i < n; i++) {
    free(s[i].id);
    free(s[i].name);
  }
  free(s);
}

/* Take `n` bytes at *pos as a string. */
static char *
take_string(const uint8_t *buf, size_t len, size_t *pos, size_t n,
            unsigned i, const char *what)
{
  char *s;

  if (n > len - *pos) {
    nbds_error("qcow2: snapshot table truncated in the %s of entry %u",
               what, i);
    return NULL;
  }
  if (memchr(buf + *pos, 0, n)) {
    nbds_error("qcow2: snapshot %u: %s contains a NUL byte", i, what);
    return NULL;
  }
  s = malloc(n + 1);
  if (!s) {
    nbds_error("qcow2: out of memory");
    return NULL;
  }
  memcpy(s, buf + *pos, n);
  s[n] = '\0';
  *pos += n;
  return s;
}

static int
parse_entry(const struct qcow2_header *h, const uint8_t *buf, size_t len,
            size_t *pos, uint64_t file_size, unsigned i,
            struct qcow2_snapshot *sn)
{
  const uint8_t *p;
  uint32_t extra_len;
  uint16_t id_len, name_len;
  char what[40];

  *pos = (*pos + 7) & ~(size_t) 7;
  if (*pos > len || len - *pos < ENTRY_FIXED) {
    nbds_error("qcow2: snapshot table truncated at entry %u", i);
    return -1;
  }
  p = buf + *pos;
  sn->l1_offset = qcow2_be64(p);
  sn->l1_size = qcow2_be32(p + 8);
  id_len = qcow2_be16(p + 12);
  name_len = qcow2_be16(p + 14);
  extra_len = qcow2_be32(p + 36);
  *pos += ENTRY_FIXED;

  if (extra_len > QCOW2_MAX_SNAPSHOT_EXTRA) {
    nbds_error("qcow2: too much extra data in snapshot table entry %u "
               "(%" PRIu32 " bytes)", i, extra_len);
    return -1;
  }
  if (h->version >= 3 && extra_len < EXTRA_DISK_SIZE_END) {
    nbds_error("qcow2: snapshot table entry %u lacks the disk size "
               "(extra data of %" PRIu32 " bytes)", i, extra_len);
    return -1;
  }
  if (extra_len > len - *pos) {
    nbds_error("qcow2: snapshot table truncated in the extra data of "
               "entry %u", i);
    return -1;
  }
  sn->disk_size = extra_len >= EXTRA_DISK_SIZE_END
                  ? qcow2_be64(buf + *pos + 8) : h->size;
  *pos += extra_len;

  sn->id = take_string(buf, len, pos, id_len, i, "id");
  if (!sn->id)
    return -1;
  sn->name = take_string(buf, len, pos, name_len, i, "name");
  if (!sn->name)
    return -1;

  snprintf(what, sizeof what, "snapshot %u L1 table", i);
  return qcow2_validate_table(h, sn->l1_offset, sn->l1_size, 8,
                              QCOW2_MAX_L1_BYTES, file_size, what);
}

int
qcow2_snapshots_parse(const struct qcow2_header *h, const uint8_t *buf,
                      size_t len, uint64_t file_size,
                      struct qcow2_snapshot **out)
{
  struct qcow2_snapshot *s;
  size_t pos = 0;

  *out = NULL;
  if (h->nb_snapshots == 0)
    return 0;
  if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
    nbds_error("qcow2: too many snapshots (%" PRIu32 ")", h->nb_snapshots);
    return -1;
  }
  if (len > QCOW2_MAX_SNAPSHOT_TABLE_BYTES)
    len = QCOW2_MAX_SNAPSHOT_TABLE_BYTES;  /* whatever lies beyond is "too big" */
  s = calloc(h->nb_snapshots, sizeof *s);
  if (!s) {
    nbds_error("qcow2: out of memory");
    return -1;
  }
  for (uint32_t i = 0; i < h->nb_snapshots; i++) {
    if (parse_entry(h, buf, len, &pos, file_size, i, &s[i]) == -1) {
      qcow2_snapshots_free(s, h->nb_snapshots);
      return -1;
    }
  }
  *out = s;
  return 0;
}

/* qemu-nbd -l NAME calls bdrv_snapshot_load_tmp_by_id_or_name, which looks
 * NAME up as an id first and only then as a name. */
const struct qcow2_snapshot *
qcow2_snapshot_find(const struct qcow2_snapshot *s, size_t n,
                    const char *name)
{
  for (size_t i = 0; i < n; i++)
    if (strcmp(s[i].id, name) == 0)
      return &s[i];
  for (size_t i = 0; i < n; i++)
    if (strcmp(s[i].name, name) == 0)
      return &s[i];
  return NULL;
}
