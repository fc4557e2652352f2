/* Durability per cache mode: the recorder plugin models a disk with a
 * volatile cache (a write reaches the medium with FUA or at a flush); the
 * server hosting it (nbdkit, or nbdstack's plugin host) is killed with
 * SIGKILL, which loses the cache, and the medium is read back. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "harness.h"

const char *const harness_tools[] = { "nbdkit", "nbdstack", "recorder",
                                      NULL };

enum host { NBDKIT, NBDSTACK };

static void
start(struct rig *r, enum host host, devemu_kind kind, devemu_cache cache,
      bool fua)
{
  char plugin[512];
  const char *fuaopt = fua ? "fua=native" : "fua=none";
  if (host == NBDKIT) {
    const char *args[] = { recorder_plugin(), "file=@IMAGE", "log=@LOG",
                           fuaopt, NULL };
    server_nbdkit(&r->srv, 1 << 20, args);
  }
  else {
    snprintf(plugin, sizeof plugin, "--plugin=%s", recorder_plugin());
    const char *args[] = { plugin, "file=@IMAGE", "log=@LOG", fuaopt, NULL };
    server_nbdstack(&r->srv, 1 << 20, args);
  }
  devemu_opts o = { .kind = kind, .cache = cache };
  rig_attach(r, &o);
}

/* Write 4 KiB at block n (4 KiB units) through the device. */
static void
write_block(struct rig *r, devemu_kind kind, unsigned n, const void *buf)
{
  devemu_iov v = { (void *) buf, 4096 };
  devemu_completion c;
  switch (kind) {
  case DEVEMU_VIRTIO_BLK:
    c = rig_run(r, virtio_cmd(1, n * 8, &v, 1));
    cr_assert_eq(c.u.virtio.status, 0);
    break;
  case DEVEMU_NVME:
    c = rig_run(r, nvme_cmd(0x01, 1, n * 8, 7, &v, 1));
    cr_assert_eq(c.u.nvme.status, 0);
    break;
  case DEVEMU_ATA:
    c = rig_run(r, ata_cmd(0xCA, n * 8, 8, &v, 1));
    cr_assert_eq(c.u.ata.status, 0x50);
    break;
  }
}

static void
flush(struct rig *r, devemu_kind kind)
{
  switch (kind) {
  case DEVEMU_VIRTIO_BLK:
    cr_assert_eq(rig_run(r, virtio_cmd(4, 0, NULL, 0)).u.virtio.status, 0);
    break;
  case DEVEMU_NVME:
    cr_assert_eq(rig_run(r, nvme_cmd(0, 1, 0, 0, NULL, 0)).u.nvme.status, 0);
    break;
  case DEVEMU_ATA:
    cr_assert_eq(rig_run(r, ata_cmd(0xE7, 0, 0, NULL, 0)).u.ata.status, 0x50);
    break;
  }
}

/* The guest turns the write cache off and waits for the switch. */
static void
cache_off(struct rig *r, devemu_kind kind)
{
  uint8_t zero = 0;
  devemu_cmd c;
  switch (kind) {
  case DEVEMU_VIRTIO_BLK:
    cr_assert_eq(devemu_virtio_config_write(r->d, 32, &zero, 1), 0);
    while (devemu_backend_pending(r->b) > 0)
      devemu_backend_poll(r->b, 1000);
    break;
  case DEVEMU_NVME:
    cr_assert_eq(rig_run(r, nvme_admin(0x09, 0, 6, 0, NULL, 0)).u.nvme.status, 0);
    break;
  case DEVEMU_ATA:
    c = ata_cmd(0xEF, 0, 0, NULL, 0);
    c.u.ata.feature = 0x82;
    cr_assert_eq(rig_run(r, c).u.ata.status, 0x50);
    break;
  }
}

/* Kill the server and report whether block n holds the pattern. */
static bool
on_medium(const struct rig *r, unsigned n, const void *buf)
{
  uint8_t got[4096];
  FILE *f = fopen(r->srv.image, "rb");
  cr_assert_not_null(f);
  cr_assert_eq(fseek(f, n * 4096L, SEEK_SET), 0);
  cr_assert_eq(fread(got, 1, sizeof got, f), sizeof got);
  fclose(f);
  return memcmp(got, buf, sizeof got) == 0;
}

static void
crash(struct rig *r)
{
  server_kill(&r->srv, SIGKILL);
  devemu_dev_free(r->d);
  devemu_backend_close(r->b);
}

static uint8_t blk[8][4096];

static void
patterns(void)
{
  for (unsigned i = 0; i < 8; i++)
    fill_pattern(blk[i], 4096, 100 + i);
}

/* Write cache off: every acknowledged write survives. */
static void
writethrough(enum host host, devemu_cache cache, bool fua)
{
  patterns();
  for (devemu_kind k = DEVEMU_VIRTIO_BLK; k <= DEVEMU_ATA; k++) {
    struct rig r;
    start(&r, host, k, cache, fua);
    for (unsigned i = 0; i < 8; i++)
      write_block(&r, k, i, blk[i]);
    crash(&r);
    for (unsigned i = 0; i < 8; i++)
      cr_assert(on_medium(&r, i, blk[i]), "device %d block %u lost", k, i);
  }
}

/* Write cache on: writes before a completed flush survive; a write after
 * it is still volatile (which shows no needless FUA was sent); turning the
 * cache off makes the cached write durable and later writes too. */
static void
writeback(enum host host, devemu_cache cache)
{
  patterns();
  for (devemu_kind k = DEVEMU_VIRTIO_BLK; k <= DEVEMU_ATA; k++) {
    struct rig r;
    start(&r, host, k, cache, true);
    write_block(&r, k, 0, blk[0]);
    flush(&r, k);
    write_block(&r, k, 1, blk[1]);
    crash(&r);
    cr_assert(on_medium(&r, 0, blk[0]), "device %d: flushed write lost", k);
    cr_assert_not(on_medium(&r, 1, blk[1]), "device %d: write was not cached", k);

    start(&r, host, k, cache, true);
    write_block(&r, k, 2, blk[2]);
    cache_off(&r, k);
    write_block(&r, k, 3, blk[3]);
    crash(&r);
    cr_assert(on_medium(&r, 2, blk[2]), "device %d: switch did not flush", k);
    cr_assert(on_medium(&r, 3, blk[3]), "device %d: write after switch lost", k);
  }
}

Test(durability, writethrough_nbdkit) { writethrough(NBDKIT, DEVEMU_CACHE_WRITETHROUGH, true); }
Test(durability, directsync_nbdstack) { writethrough(NBDSTACK, DEVEMU_CACHE_DIRECTSYNC, true); }
Test(durability, writethrough_nbdstack) { writethrough(NBDSTACK, DEVEMU_CACHE_WRITETHROUGH, true); }
Test(durability, writethrough_without_server_fua) { writethrough(NBDKIT, DEVEMU_CACHE_WRITETHROUGH, false); }
Test(durability, writeback_nbdkit) { writeback(NBDKIT, DEVEMU_CACHE_WRITEBACK); }
Test(durability, writeback_nbdstack) { writeback(NBDSTACK, DEVEMU_CACHE_WRITEBACK); }
Test(durability, none_nbdkit) { writeback(NBDKIT, DEVEMU_CACHE_NONE); }

/* unsafe promises nothing, and sends no flush: the flushed write is not
 * on the medium. */
Test(durability, unsafe_sends_no_flush)
{
  patterns();
  for (devemu_kind k = DEVEMU_VIRTIO_BLK; k <= DEVEMU_ATA; k++) {
    struct rig r;
    start(&r, NBDSTACK, k, DEVEMU_CACHE_UNSAFE, true);
    write_block(&r, k, 0, blk[0]);
    flush(&r, k);
    crash(&r);
    cr_assert_not(on_medium(&r, 0, blk[0]), "device %d", k);
  }
}
