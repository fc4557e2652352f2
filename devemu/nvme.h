/* NVMe constants (NVM Express Base 2.0, NVM Command Set 1.0). */
#ifndef DEVEMU_NVME_H
#define DEVEMU_NVME_H

/* I/O opcodes */
#define NVME_CMD_FLUSH        0x00
#define NVME_CMD_WRITE        0x01
#define NVME_CMD_READ         0x02
#define NVME_CMD_WRITE_ZEROES 0x08
#define NVME_CMD_DSM          0x09

/* Admin opcodes */
#define NVME_ADM_IDENTIFY     0x06
#define NVME_ADM_SET_FEATURES 0x09
#define NVME_ADM_GET_FEATURES 0x0A

#define NVME_FEAT_VWC         0x06

/* CDW12 bits */
#define NVME_RW_FUA           (1u << 30)
#define NVME_WZ_DEAC          (1u << 25)
/* DSM CDW11 attributes */
#define NVME_DSM_AD           (1u << 2)

/* Status (SC | SCT << 8) */
#define NVME_SC_SUCCESS          0x000
#define NVME_SC_INVALID_OPCODE   0x001
#define NVME_SC_INVALID_FIELD    0x002
#define NVME_SC_INTERNAL         0x006
#define NVME_SC_INVALID_NS       0x00B
#define NVME_SC_SGL_LEN_INVALID  0x00F
#define NVME_SC_NS_WRITE_PROT    0x020
#define NVME_SC_LBA_RANGE        0x080
#define NVME_SC_CAP_EXCEEDED     0x081
#define NVME_SC_FEAT_NOT_SAVEABLE 0x10D
#define NVME_SC_WRITE_FAULT      0x280
#define NVME_SC_READ_ERROR       0x281
#define NVME_DNR                 0x4000

#define NVME_NSID               1u
#define NVME_NSID_ALL           0xffffffffu
#define NVME_PAGE               4096u   /* CAP.MPSMIN: MDTS and WZSL unit */
#define NVME_MAX_MDTS           10      /* 4 MiB */

/* The largest transfer, in bytes, Identify's MDTS advertises. */
static inline unsigned
nvme_mdts(uint32_t max_rw)
{
  unsigned n = 1;   /* MDTS 0 would mean "no limit" */
  while (n < NVME_MAX_MDTS && (uint64_t) NVME_PAGE << (n + 1) <= max_rw)
    n++;
  return n;
}

#endif
