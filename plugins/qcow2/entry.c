/* Decoding L2 entries (QEMU's qcow2_get_cluster_type,
 * qcow2_get_subcluster_type and qcow2_parse_compressed_l2_entry), with
 * every invalid combination refused instead of trusted. */
#include <inttypes.h>

#include "nbdstack/layer.h"
#include "format.h"

#define SUBCLUSTERS 32
#define MAX_HOST_OFFSET (UINT64_C(1) << 56)

/* Bits 0..x-1 of a compressed descriptor are the host byte offset. */
static unsigned
compressed_offset_bits(const struct qcow2_header *h)
{
  return 62 - (h->cluster_bits - 8);
}

void
qcow2_compressed_range(const struct qcow2_header *h, uint64_t entry,
                       uint64_t *host, uint64_t *bytes)
{
  unsigned x = compressed_offset_bits(h);
  uint64_t coff = entry & ((UINT64_C(1) << x) - 1);
  uint64_t nsec = ((entry >> x) & ((UINT64_C(1) << (h->cluster_bits - 8)) - 1))
                  + 1;

  *host = coff;
  *bytes = nsec * 512 - (coff & 511);
}

static int
invalid(uint64_t entry, const char *why)
{
  nbds_error("qcow2: invalid L2 entry 0x%016" PRIx64 ": %s", entry, why);
  return -1;
}

static int
compressed_type(const struct qcow2_header *h, uint64_t entry,
                uint64_t bitmap, enum qcow2_type *type)
{
  uint64_t host, bytes;

  if (entry & QCOW2_COPIED)
    return invalid(entry, "compressed cluster with the COPIED bit");
  if (h->extended_l2 && bitmap != 0)
    return invalid(entry, "compressed cluster with a subcluster bitmap");
  qcow2_compressed_range(h, entry, &host, &bytes);
  if (host < h->cluster_size)
    return invalid(entry, "compressed data in the header cluster");
  if (host >= MAX_HOST_OFFSET)
    return invalid(entry, "compressed data beyond the 2^56 offset limit");
  *type = QCOW2_COMPRESSED_DATA;
  return 0;
}

static int
subcluster_type(uint64_t entry, uint64_t offset, uint64_t bitmap,
                unsigned sc, enum qcow2_type *type)
{
  uint32_t alloc = (uint32_t) bitmap, zero = (uint32_t) (bitmap >> 32);

  if (alloc & zero)
    return invalid(entry, "a subcluster is both allocated and zero");
  if (offset == 0) {
    if (alloc)
      return invalid(entry, "allocated subclusters without a host cluster");
    *type = zero & (1u << sc) ? QCOW2_ZERO_PLAIN : QCOW2_UNALLOCATED;
  }
  else if (zero & (1u << sc))
    *type = QCOW2_ZERO_ALLOC;
  else if (alloc & (1u << sc))
    *type = QCOW2_NORMAL;
  else
    *type = QCOW2_UNALLOCATED_ALLOC;
  return 0;
}

int
qcow2_entry_type(const struct qcow2_header *h, uint64_t entry,
                 uint64_t bitmap, unsigned sc, enum qcow2_type *type)
{
  uint64_t offset = entry & QCOW2_OFFSET_MASK;

  if (entry & QCOW2_COMPRESSED)
    return compressed_type(h, entry, bitmap, type);
  if (entry & QCOW2_L2_RESERVED)
    return invalid(entry, "reserved bits set");
  if ((entry & QCOW2_ZERO) && h->version < 3)
    return invalid(entry, "zero flag in a version 2 image");
  if ((entry & QCOW2_ZERO) && h->extended_l2)
    return invalid(entry, "zero flag (bit 0) with extended L2 entries");
  if (offset & (h->cluster_size - 1))
    return invalid(entry, "host offset not cluster-aligned");

  if (h->extended_l2) {
    if (sc >= SUBCLUSTERS)
      return invalid(entry, "subcluster index out of range");
    return subcluster_type(entry, offset, bitmap, sc, type);
  }
  if (entry & QCOW2_ZERO)
    *type = offset ? QCOW2_ZERO_ALLOC : QCOW2_ZERO_PLAIN;
  else
    *type = offset ? QCOW2_NORMAL : QCOW2_UNALLOCATED;
  return 0;
}
