/* The engine under real servers: splitting and alignment, partial
 * failure, FUA emulation, synchronous libnbd failures, back-pressure and
 * re-entrant submission from a completion callback. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "harness.h"

const char *const harness_tools[] = { "nbdkit", NULL };

#define T_IN 0
#define T_OUT 1
#define T_WRITE_ZEROES 13

/* blocksize-policy with the error policy: any request that is misaligned
 * or larger than the maximum fails with EINVAL at the server. */
static const char *const strict_filters[] = { "--filter=blocksize-policy",
                                              NULL };
static const char *const strict_params[] = {
  "blocksize-minimum=4096", "blocksize-preferred=4096",
  "blocksize-maximum=65536", "blocksize-error-policy=error", NULL };

Test(engine, split_at_server_maximum_and_raise_block_size)
{
  struct rig r;
  server_memory(&r.srv, strict_filters, strict_params);
  devemu_opts o = { .kind = DEVEMU_VIRTIO_BLK };
  rig_attach(&r, &o);
  cr_assert_eq(devemu_block_size(r.d), 4096, "raised to the server minimum");
  uint8_t cfg[24];
  devemu_virtio_config_read(r.d, 0, cfg, sizeof cfg);
  cr_assert_eq(cfg[20] | cfg[21] << 8, 4096, "blk_size");

  static uint8_t out[1 << 20], in[1 << 20];
  fill_pattern(out, sizeof out, 21);
  /* odd segment boundaries: chunks straddle them (bounce buffers) */
  devemu_iov w[] = { { out, 1000 }, { out + 1000, 300000 },
                     { out + 301000, sizeof out - 301000 } };
  devemu_completion c = rig_run(&r, virtio_cmd(T_OUT, 64, w, 3));
  cr_assert_eq(c.u.virtio.status, 0, "errno %d", c.nbd_errno);
  devemu_iov rd = { in, sizeof in };
  c = rig_run(&r, virtio_cmd(T_IN, 64, &rd, 1));
  cr_assert_eq(c.u.virtio.status, 0);
  cr_assert_arr_eq(in, out, sizeof out);
  static struct nbdop ops[64];
  size_t n = log_ops(&r.srv, r.mark, ops, 64);
  cr_assert_eq(n, 32, "16 writes and 16 reads of 64 KiB");
  for (size_t i = 0; i < n; i++)
    cr_assert(ops[i].len == 65536 && ops[i].off % 4096 == 0);
  /* a sector not aligned to blk_size: IOERR, nothing sent */
  rig_mark(&r);
  devemu_iov one = { in, 4096 };
  c = rig_run(&r, virtio_cmd(T_IN, 1, &one, 1));
  cr_assert_eq(c.u.virtio.status, 1);
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 64), 0);
  rig_close(&r);
}

/* A command split into 32 requests, about half of which fail: it
 * completes once, with the first error, after every request replied. */
Test(engine, partial_failure_completes_once)
{
  struct rig r;
  const char *filters[] = { "--filter=error", "--filter=blocksize-policy",
                            NULL };
  const char *params[] = { "error-pwrite=ENOSPC", "error-pwrite-rate=50%",
                           "blocksize-maximum=65536", NULL };
  server_memory(&r.srv, filters, params);
  devemu_opts o = { .kind = DEVEMU_ATA };
  rig_attach(&r, &o);
  static uint8_t buf[2 << 20];
  devemu_iov whole = { buf, sizeof buf };
  devemu_completion c = rig_run(&r, ata_cmd(0x35, 0, 4096, &whole, 1));
  cr_assert_eq(c.u.ata.status, 0x41);
  cr_assert_eq(c.nbd_errno, ENOSPC);
  /* nothing completes a second time, nothing is left in flight */
  for (int i = 0; i < 20; i++)
    devemu_backend_poll(r.b, 10);
  cr_assert_eq(r.ncomp, 1);
  cr_assert_eq(devemu_backend_pending(r.b), 0);
  rig_close(&r);
}

/* A server without FUA: writethrough writes become write, then flush, and
 * complete only after the flush. */
Test(engine, fua_emulated_with_flush)
{
  struct rig r;
  const char *filters[] = { "--filter=fua", NULL };
  server_memory(&r.srv, filters, NULL);
  devemu_opts o = { .kind = DEVEMU_VIRTIO_BLK,
                    .cache = DEVEMU_CACHE_WRITETHROUGH };
  rig_attach(&r, &o);
  uint8_t buf[4096] = { 1 };
  devemu_iov v = { buf, sizeof buf };
  for (int i = 0; i < 3; i++)
    cr_assert_eq(rig_run(&r, virtio_cmd(T_OUT, i * 8, &v, 1)).u.virtio.status, 0);
  struct nbdop ops[8];
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 8), 6);
  for (int i = 0; i < 3; i++) {
    cr_assert(ops[2 * i].op == 'W' && ops[2 * i].fua == 0);
    cr_assert_eq(ops[2 * i + 1].op, 'F');
  }
  rig_close(&r);
}

/* The server dies: commands in flight and new ones fail (libnbd's
 * synchronous failure path), each completes exactly once. */
Test(engine, dead_server_fails_cleanly)
{
  struct rig r;
  server_memory(&r.srv, NULL, NULL);
  devemu_opts o = { .kind = DEVEMU_ATA };
  rig_attach(&r, &o);
  uint8_t buf[512] = { 0 };
  devemu_iov v = { buf, 512 };
  cr_assert_eq(rig_run(&r, ata_cmd(0x35, 0, 1, &v, 1)).u.ata.status, 0x50);
  server_kill(&r.srv, SIGKILL);
  /* first command notices the hang-up; later ones fail synchronously */
  for (int i = 0; i < 3; i++) {
    devemu_completion c = rig_run(&r, ata_cmd(0x35, 0, 1, &v, 1));
    cr_assert_eq(c.u.ata.status, 0x41);
    cr_assert_neq(c.nbd_errno, 0);
  }
  /* SET FEATURES 0x82: the flush fails, the switch still happens */
  devemu_cmd sf = ata_cmd(0xEF, 0, 0, NULL, 0);
  sf.u.ata.feature = 0x82;
  devemu_completion c = rig_run(&r, sf);
  cr_assert_eq(c.u.ata.error, 0x04);
  cr_assert_not(devemu_dev_get_wce(r.d));
  cr_assert_eq(devemu_backend_dispatch(r.b, 0), -1);
  devemu_dev_free(r.d);
  devemu_backend_close(r.b);
}

struct chain {
  devemu_dev *d;
  devemu_iov v;
  unsigned done, submitted, target;
  bool twice;
  uint64_t seen[512];
};

/* Completion callback that submits the next command (allowed: devemu
 * never calls back from inside libnbd). */
static void
resubmit(void *opaque, const devemu_completion *c)
{
  struct chain *ch = opaque;
  cr_assert_eq(c->u.virtio.status, 0);
  if (ch->seen[c->tag % 512]++)
    ch->twice = true;
  ch->done++;
  if (ch->submitted < ch->target) {
    devemu_cmd n = virtio_cmd(T_OUT, (ch->submitted % 64) * 8, &ch->v, 1);
    n.tag = ch->submitted++;
    cr_assert_geq(devemu_submit(ch->d, &n), 0);
  }
}

Test(engine, backpressure_and_resubmit_from_callback)
{
  struct rig r;
  server_memory(&r.srv, NULL, NULL);
  devemu_opts o = { .kind = DEVEMU_VIRTIO_BLK };
  rig_attach(&r, &o);
  static uint8_t buf[4096];
  struct chain ch = { .d = r.d, .v = { buf, sizeof buf }, .target = 400 };
  devemu_set_completion(r.d, resubmit, &ch);
  /* 200 at once: more than the 64 NBD requests allowed in flight */
  for (; ch.submitted < 200; ch.submitted++) {
    devemu_cmd c = virtio_cmd(T_OUT, (ch.submitted % 64) * 8, &ch.v, 1);
    c.tag = ch.submitted;
    cr_assert_eq(devemu_submit(r.d, &c), 0);
  }
  for (int i = 0; ch.done < ch.target; i++) {
    cr_assert_lt(i, 100000);
    devemu_backend_poll(r.b, 1000);
  }
  cr_assert_eq(ch.done, 400);
  cr_assert_not(ch.twice);
  cr_assert_eq(devemu_backend_pending(r.b), 0);
  cr_assert_eq(rig_count(&r, 'W', -1), 400);
  rig_close(&r);
}

/* Reset waits for what is in flight and restores the initial WCE. */
Test(engine, reset_drains_and_restores_wce)
{
  struct rig r;
  const char *filters[] = { "--filter=delay", NULL };
  const char *params[] = { "wdelay=200ms", NULL };
  server_memory(&r.srv, filters, params);
  devemu_opts o = { .kind = DEVEMU_NVME };
  rig_attach(&r, &o);
  uint8_t buf[512];
  devemu_iov v = { buf, 512 };
  devemu_cmd sf = nvme_admin(0x09, 0, 6, 0, NULL, 0);
  cr_assert_eq(rig_run(&r, sf).u.nvme.status, 0);
  cr_assert_not(devemu_dev_get_wce(r.d));
  devemu_cmd w = nvme_cmd(0x01, 1, 0, 0, &v, 1);
  cr_assert_eq(devemu_submit(r.d, &w), 0);
  cr_assert_eq(devemu_backend_pending(r.b), 1);
  cr_assert_eq(devemu_dev_reset(r.d), 0);
  cr_assert_eq(devemu_backend_pending(r.b), 0, "reset waited");
  cr_assert(devemu_dev_get_wce(r.d));
  rig_close(&r);
}

/* With a 4096-byte LBA the device reports it everywhere. */
Test(engine, logical_block_size_4096)
{
  struct rig r;
  server_memory(&r.srv, NULL, NULL);
  devemu_opts o = { .kind = DEVEMU_ATA, .logical_block_size = 4096 };
  rig_attach(&r, &o);
  uint16_t w[256];
  devemu_ata_identify(r.d, w);
  cr_assert_eq(w[106] & 0x1000, 0x1000);
  cr_assert_eq(w[117], 2048, "logical sector size in words");
  cr_assert_eq(w[100], 16 * 1024 * 1024 / 4096);
  static uint8_t buf[8192];
  devemu_iov v = { buf, sizeof buf };
  cr_assert_eq(rig_run(&r, ata_cmd(0x35, 3, 2, &v, 1)).u.ata.status, 0x50);
  struct nbdop ops[2];
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 2), 1);
  cr_assert(ops[0].off == 3 * 4096 && ops[0].len == 8192);
  rig_close(&r);
}
