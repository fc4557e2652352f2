/* ATA IDENTIFY DEVICE words (ACS-3 section 7.12.7). */
#include <string.h>

#include "internal.h"
#include "ata.h"

/* ASCII strings go two characters per word, first character in the high
 * byte, padded with spaces. */
static void
put_string(uint16_t *w, const char *s, unsigned nwords)
{
  size_t l = strlen(s);
  for (unsigned i = 0; i < nwords * 2; i++) {
    uint8_t ch = i < l ? (uint8_t) s[i] : ' ';
    if (i % 2 == 0)
      w[i / 2] = ch << 8;
    else
      w[i / 2] |= ch;
  }
}

void
dv_ata_identify(const struct dv_geom *g, uint16_t w[256])
{
  uint64_t nsect = g->size >> g->lbs_shift;
  uint32_t cyls = nsect / (16 * 63) > 16383 ? 16383 : nsect / (16 * 63);
  uint32_t lba28 = nsect > 0x0fffffff ? 0x0fffffff : nsect;
  unsigned phys_exp = 0;
  bool wc = g->cache_present;

  while (phys_exp < 15 && (uint64_t) g->lbs << (phys_exp + 1) <= g->pref)
    phys_exp++;

  memset(w, 0, 256 * sizeof *w);
  w[0] = 0x0040;                        /* fixed device */
  w[1] = cyls;                          /* legacy CHS geometry */
  w[3] = 16;
  w[6] = 63;
  put_string(w + 10, g->serial, 10);
  put_string(w + 23, g->firmware, 4);
  put_string(w + 27, g->model, 20);
  w[47] = 0x8000 | ATA_MAX_MULT;
  w[49] = 1u << 9 | 1u << 8;            /* LBA, DMA */
  w[53] = 1u << 1 | 1u << 2;            /* words 64-70 and 88 valid */
  w[54] = cyls;
  w[55] = 16;
  w[56] = 63;
  w[57] = (uint16_t) (cyls * 16 * 63);
  w[58] = (cyls * 16 * 63) >> 16;
  w[59] = 0x0100 | g->ata_mult;
  w[60] = (uint16_t) lba28;
  w[61] = lba28 >> 16;
  w[63] = 0x0007;                       /* multiword DMA 0-2 */
  w[64] = 0x0003;                       /* PIO 3-4 */
  w[65] = w[66] = w[67] = w[68] = 120;
  w[80] = 0x00f0;                       /* ATA/ATAPI-4 to -7 */
  /* 82-87: bits 15:14 = 01b make 83, 84 and 87 valid for Linux. */
  w[82] = 0x4000 | (wc ? 1u << 5 : 0);  /* volatile write cache */
  w[83] = 0x4000 | 1u << 13 | 1u << 12 | 1u << 10; /* FLUSH EXT, FLUSH, LBA48 */
  w[84] = 0x4000 | 1u << 6;             /* WRITE DMA/MULTIPLE FUA EXT */
  w[85] = 0x4000 | (wc && g->wce ? 1u << 5 : 0);
  w[86] = 1u << 13 | 1u << 12 | 1u << 10;
  w[87] = 0x4000 | 1u << 6;
  w[88] = 0x003f;                       /* UDMA 0-5 */
  w[93] = 1u << 14 | 1u << 13 | 1;      /* 80-wire cable */
  w[100] = (uint16_t) nsect;
  w[101] = nsect >> 16;
  w[102] = nsect >> 32;
  w[103] = nsect >> 48;
  if (g->discard)
    w[105] = ATA_DSM_MAX_BLOCKS;
  w[106] = 0x4000 | (phys_exp ? 1u << 13 | phys_exp : 0) |
           (g->lbs > 512 ? 1u << 12 : 0);
  if (g->lbs > 512) {                   /* logical sector size in words */
    w[117] = (uint16_t) (g->lbs / 2);
    w[118] = (g->lbs / 2) >> 16;
  }
  if (g->discard)
    w[169] = 1;                         /* TRIM (no DRAT/RZAT promise) */

  /* Integrity word: signature A5h, and a checksum making the 512 bytes
   * sum to zero. */
  uint8_t sum = 0xa5;
  for (unsigned i = 0; i < 255; i++)
    sum += (uint8_t) w[i] + (uint8_t) (w[i] >> 8);
  w[255] = (uint16_t) ((uint8_t) -sum) << 8 | 0xa5;
}
