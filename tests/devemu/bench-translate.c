/* Benchmark: the translation cost per command (decode into a plan, no
 * I/O) for each device.  Prints ns per command. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"

static double
now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint8_t data[4096];

int
main(void)
{
  struct dv_geom g = {
    .size = 1ull << 34, .lbs = 512, .lbs_shift = 9, .pref = 4096,
    .max_rw = 1 << 20, .max_zt = UINT32_MAX & ~511u, .can_flush = true,
    .can_fua = true, .can_trim = true, .can_zero = true,
    .cache_present = true, .wce_changeable = true, .wce = true,
    .discard = true, .write_zeroes = true, .ata_mult = 16,
    .serial = "b", .model = "b", .firmware = "b",
  };
  devemu_iov iov[2] = { { data, 2048 }, { data + 2048, 2048 } };
  devemu_cmd v = { .iov = iov, .niov = 2 }, n = v, a = v;
  dv_put32(v.u.virtio_hdr, 1);                  /* OUT */
  n.u.nvme_sqe[0] = 1;                          /* Write, 8 blocks */
  dv_put32(n.u.nvme_sqe + 4, 1);
  dv_put32(n.u.nvme_sqe + 48, 7);
  a.u.ata = (devemu_ata_tf) { .command = 0x35, .count = 8, .device = 0x40 };
  static struct dv_range ranges[DV_MAX_RANGES];
  const long iters = 20000000;
  static const char *names[] = { "virtio-blk OUT 4K", "NVMe Write 4K",
                                 "ATA WRITE DMA EXT 4K" };
  const devemu_cmd *cmds[] = { &v, &n, &a };

  for (int k = 0; k < 3; k++) {
    g.kind = k;
    unsigned sink = 0;
    double t0 = now();
    for (long i = 0; i < iters; i++) {
      struct dv_plan p = { .ranges = ranges };
      devemu_completion out;
      dv_put64((uint8_t *) cmds[k]->u.virtio_hdr + (k == 1 ? 40 : 8),
               (i & 1023) * 8);
      sink += k == 0 ? dv_virtio_decode(&g, cmds[k], &p, &out)
            : k == 1 ? dv_nvme_decode(&g, cmds[k], &p, &out)
                     : dv_ata_decode(&g, cmds[k], &p, &out);
      sink += p.nranges;
    }
    double t = now() - t0;
    printf("%-22s %6.1f ns/command (%u)\n", names[k], t / iters * 1e9,
           sink & 1);
  }
  return 0;
}
