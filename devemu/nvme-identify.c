/* NVMe Identify data: controller, namespace and NVM command set limits. */
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "nvme.h"

static void
put_ascii(uint8_t *dst, const char *s, size_t n)
{
  size_t l = strlen(s);
  memset(dst, ' ', n);
  memcpy(dst, s, l < n ? l : n);
}

/* A stable 16-byte NGUID from the serial (FNV-1a, twice). */
static void
nguid(const struct dv_geom *g, uint8_t out[16])
{
  uint64_t h = 0xcbf29ce484222325ull;
  for (const char *s = g->serial; *s; s++)
    h = (h ^ (uint8_t) *s) * 0x100000001b3ull;
  dv_put64(out, h);
  dv_put64(out + 8, (h ^ 0x6465766d75ull) * 0x100000001b3ull);
}

static void
controller(const struct dv_geom *g, uint8_t *d)
{
  dv_put16(d + 0, 0x1b36);              /* VID */
  dv_put16(d + 2, 0x1af4);              /* SSVID */
  put_ascii(d + 4, g->serial, 20);
  put_ascii(d + 24, g->model, 40);
  put_ascii(d + 64, g->firmware, 8);
  d[72] = 6;                            /* RAB */
  d[77] = nvme_mdts(g->max_rw);
  dv_put32(d + 80, 0x00010400);         /* VER 1.4 */
  d[111] = 1;                           /* CNTRLTYPE: I/O controller */
  d[258] = 3;                           /* ACL */
  d[259] = 3;                           /* AERL */
  d[512] = 0x66;                        /* SQES */
  d[513] = 0x44;                        /* CQES */
  dv_put32(d + 516, 1);                 /* NN */
  dv_put16(d + 520, (g->discard ? 1u << 2 : 0) |      /* DSM */
                    (g->write_zeroes ? 1u << 3 : 0) | /* Write Zeroes */
                    1u << 4);                         /* SEL in features */
  /* VWC: present, and Flush with NSID FFFFFFFFh supported */
  d[525] = g->cache_present ? 0x07 : 0;
  char nqn[256];
  snprintf(nqn, sizeof nqn, "nqn.2024-01.org.nbdstack:devemu:%s",
           g->serial);
  memcpy(d + 768, nqn, strlen(nqn));
}

static void
namespace(const struct dv_geom *g, uint8_t *d)
{
  uint64_t nsze = g->size >> g->lbs_shift;
  uint32_t pref = g->pref / g->lbs;
  uint32_t ows = g->max_rw / g->lbs;

  dv_put64(d + 0, nsze);                /* NSZE */
  dv_put64(d + 8, nsze);                /* NCAP */
  dv_put64(d + 16, nsze);               /* NUSE */
  d[24] = 0x10;                         /* NSFEAT: OPTPERF (fields below) */
  d[25] = 0;                            /* NLBAF: one format */
  d[26] = 0;                            /* FLBAS: format 0, no metadata */
  /* DLFEAT: deallocated blocks read as zeroes only when deallocation is
   * done with NBD WRITE_ZEROES; bit 3: Write Zeroes honours DEAC. */
  d[33] = (g->discard && g->can_zero ? 1 : 0) | (g->write_zeroes ? 8 : 0);
  if (pref > 0x10000) pref = 0x10000;
  if (ows > 0x10000) ows = 0x10000;
  dv_put16(d + 64, pref - 1);           /* NPWG */
  dv_put16(d + 66, pref - 1);           /* NPWA */
  dv_put16(d + 68, pref - 1);           /* NPDG */
  dv_put16(d + 70, pref - 1);           /* NPDA */
  dv_put16(d + 72, ows - 1);            /* NOWS */
  d[99] = g->read_only;                 /* NSATTR: write protected */
  nguid(g, d + 104);
  d[128 + 2] = g->lbs_shift;            /* LBAF0: LBADS, MS 0, RP 0 */
}

uint16_t
dv_nvme_identify(const struct dv_geom *g, uint8_t cns, uint8_t csi,
                 uint32_t nsid, uint8_t out[4096])
{
  memset(out, 0, 4096);
  switch (cns) {
  case 0x00:                            /* namespace */
    if (nsid != NVME_NSID)
      return NVME_SC_INVALID_NS | NVME_DNR;
    namespace(g, out);
    return NVME_SC_SUCCESS;
  case 0x01:
    controller(g, out);
    return NVME_SC_SUCCESS;
  case 0x02:                            /* active NSIDs above nsid */
    if (nsid >= 0xfffffffeu)
      return NVME_SC_INVALID_NS | NVME_DNR;
    if (nsid < NVME_NSID)
      dv_put32(out, NVME_NSID);
    return NVME_SC_SUCCESS;
  case 0x03:                            /* descriptors: the NGUID */
    if (nsid != NVME_NSID)
      return NVME_SC_INVALID_NS | NVME_DNR;
    out[0] = 2;                         /* NIDT: NGUID */
    out[1] = 16;                        /* NIDL */
    nguid(g, out + 4);
    return NVME_SC_SUCCESS;
  case 0x06:                            /* I/O command set controller */
    if (csi != 0)
      return NVME_SC_INVALID_FIELD | NVME_DNR;
    out[1] = 0;                         /* WZSL: no limit below NLB */
    out[3] = 0;                         /* DMRL: up to 256 ranges */
    dv_put32(out + 4, g->max_zt >> g->lbs_shift);  /* DMRSL */
    return NVME_SC_SUCCESS;
  default:
    return NVME_SC_INVALID_FIELD | NVME_DNR;
  }
}
