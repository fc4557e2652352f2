/* IDE/ATA through devemu against real servers: every command, the NBD
 * requests and flags it becomes, the data, the status/error registers. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "harness.h"

const char *const harness_tools[] = { "nbdkit", "nbdstack", "recorder",
                                      NULL };

#define DSM 0x06
#define READ 0x20
#define READ_EXT 0x24
#define READ_DMA_EXT 0x25
#define WRITE 0x30
#define WRITE_DMA_EXT 0x35
#define WRITE_FUA_EXT 0x3D
#define VERIFY 0x40
#define READ_DMA 0xC8
#define WRITE_DMA 0xCA
#define WRITE_MULTI 0xC5
#define SET_MULTI 0xC6
#define FLUSH 0xE7
#define FLUSH_EXT 0xEA
#define IDENTIFY 0xEC
#define SET_FEATURES 0xEF
#define READ_NATIVE_MAX_EXT 0x27

#define OK 0x50
#define ERR 0x41

static const uint64_t nsect = 16 * 1024 * 1024 / 512;

static void
rig(struct rig *r, devemu_cache cache, const char *const *filters,
    const char *const *params)
{
  server_memory(&r->srv, filters, params);
  devemu_opts o = { .kind = DEVEMU_ATA, .cache = cache,
                    .serial = "ATA-SERIAL", .model = "devemu disk" };
  rig_attach(r, &o);
}

/* status << 8 | error */
static unsigned
regs(struct rig *r, devemu_cmd c)
{
  devemu_completion x = rig_run(r, c);
  return x.u.ata.status << 8 | x.u.ata.error;
}

static devemu_cmd
set_features(uint8_t feature)
{
  devemu_cmd c = ata_cmd(SET_FEATURES, 0, 0, NULL, 0);
  c.u.ata.feature = feature;
  return c;
}

Test(ata, identify_words)
{
  struct rig r;
  rig(&r, DEVEMU_CACHE_WRITEBACK, NULL, NULL);
  uint8_t b[512];
  devemu_iov v = { b, sizeof b };
  cr_assert_eq(regs(&r, ata_cmd(IDENTIFY, 0, 1, &v, 1)), OK << 8);
  uint16_t w[256];
  for (int i = 0; i < 256; i++)
    w[i] = b[2 * i] | b[2 * i + 1] << 8;
  cr_assert_eq(w[0], 0x0040);
  cr_assert_eq(w[82] & 0xc020, 0x4020, "write cache supported");
  cr_assert_eq(w[83] & 0xc400, 0x4400, "LBA48");
  cr_assert_eq(w[84] & 0xc040, 0x4040, "FUA EXT");
  cr_assert_eq(w[85] & 0x0020, 0x0020, "write cache enabled");
  cr_assert_eq(w[87] & 0xc040, 0x4040);
  cr_assert_eq(w[100] | (uint32_t) w[101] << 16, nsect);
  cr_assert_eq(w[169] & 1, 1, "TRIM");
  cr_assert_eq(w[105], 8);
  cr_assert_eq(w[27], 'd' << 8 | 'e', "model, bytes swapped");
  cr_assert_eq(w[10], 'A' << 8 | 'T');
  uint8_t sum = 0;
  for (int i = 0; i < 512; i++)
    sum += b[i];
  cr_assert_eq(sum, 0, "integrity word");
  cr_assert_eq(b[510], 0xa5);
  rig_close(&r);
}

Test(ata, read_write_round_trip_all_forms)
{
  struct rig r;
  rig(&r, DEVEMU_CACHE_WRITEBACK, NULL, NULL);
  static uint8_t out[4 * 512], in[4 * 512];
  fill_pattern(out, sizeof out, 5);
  devemu_iov w[] = { { out, 700 }, { out + 700, sizeof out - 700 } };
  devemu_iov rd = { in, sizeof in };
  static const uint8_t writes[] = { WRITE, WRITE_DMA, WRITE_DMA_EXT,
                                    WRITE_MULTI };
  static const uint8_t reads[] = { READ, READ_DMA, READ_DMA_EXT, READ_EXT };
  for (int i = 0; i < 4; i++) {
    uint64_t lba = 1000 + 10 * i;
    cr_assert_eq(regs(&r, ata_cmd(writes[i], lba, 4, w, 2)), OK << 8);
    memset(in, 0, sizeof in);
    cr_assert_eq(regs(&r, ata_cmd(reads[i], lba, 4, &rd, 1)), OK << 8);
    cr_assert_arr_eq(in, out, sizeof out);
    export_read(&r.srv, in, sizeof in, lba * 512);
    cr_assert_arr_eq(in, out, sizeof out);
  }
  cr_assert_eq(rig_count(&r, 'W', 0), 4);
  /* 4 through the device, 4 by export_read's own connection */
  cr_assert_eq(rig_count(&r, 'R', -1), 8);
  rig_close(&r);
}

Test(ata, fua_and_flush)
{
  struct rig r;
  rig(&r, DEVEMU_CACHE_WRITEBACK, NULL, NULL);
  uint8_t buf[512] = { 1 };
  devemu_iov v = { buf, 512 };
  cr_assert_eq(regs(&r, ata_cmd(WRITE_DMA_EXT, 0, 1, &v, 1)), OK << 8);
  cr_assert_eq(regs(&r, ata_cmd(WRITE_FUA_EXT, 1, 1, &v, 1)), OK << 8);
  cr_assert_eq(regs(&r, ata_cmd(FLUSH, 0, 0, NULL, 0)), OK << 8);
  cr_assert_eq(regs(&r, ata_cmd(FLUSH_EXT, 0, 0, NULL, 0)), OK << 8);
  struct nbdop ops[8];
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 8), 4);
  cr_assert(ops[0].op == 'W' && ops[0].fua == 0);
  cr_assert(ops[1].op == 'W' && ops[1].fua == 1);
  cr_assert(ops[2].op == 'F' && ops[3].op == 'F');
  rig_close(&r);
}

/* SET FEATURES 0x82 flushes before it completes, then writes carry FUA
 * and word 85 bit 5 is clear; 0x02 turns it back on. */
Test(ata, set_features_write_cache_toggle)
{
  struct rig r;
  rig(&r, DEVEMU_CACHE_WRITEBACK, NULL, NULL);
  uint8_t buf[512] = { 1 };
  devemu_iov v = { buf, 512 };
  uint16_t w[256];
  cr_assert_eq(regs(&r, ata_cmd(WRITE_DMA, 0, 1, &v, 1)), OK << 8);
  cr_assert_eq(regs(&r, set_features(0x82)), OK << 8);
  devemu_ata_identify(r.d, w);
  cr_assert_eq(w[85] & 0x20, 0);
  cr_assert_eq(w[82] & 0x20, 0x20, "still supported");
  cr_assert_eq(regs(&r, ata_cmd(WRITE_DMA, 1, 1, &v, 1)), OK << 8);
  cr_assert_eq(regs(&r, set_features(0x02)), OK << 8);
  devemu_ata_identify(r.d, w);
  cr_assert_eq(w[85] & 0x20, 0x20);
  cr_assert_eq(regs(&r, ata_cmd(WRITE_DMA, 2, 1, &v, 1)), OK << 8);
  cr_assert_eq(regs(&r, set_features(0x03)), OK << 8, "transfer mode");
  cr_assert_eq(regs(&r, set_features(0x31)), ERR << 8 | 0x04);
  struct nbdop ops[8];
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 8), 4);
  cr_assert(ops[0].op == 'W' && ops[0].fua == 0);
  cr_assert_eq(ops[1].op, 'F', "0x82 flushes");
  cr_assert(ops[2].op == 'W' && ops[2].fua == 1);
  cr_assert(ops[3].op == 'W' && ops[3].fua == 0);
  rig_close(&r);
}

Test(ata, writethrough_mode_and_fixed)
{
  struct rig r;
  rig(&r, DEVEMU_CACHE_WRITETHROUGH, NULL, NULL);
  uint8_t buf[512] = { 1 };
  devemu_iov v = { buf, 512 };
  uint16_t w[256];
  devemu_ata_identify(r.d, w);
  cr_assert_eq(w[85] & 0x20, 0);
  cr_assert_eq(regs(&r, ata_cmd(WRITE_DMA, 0, 1, &v, 1)), OK << 8);
  cr_assert_eq(rig_count(&r, 'W', 1), 1);
  /* the guest may turn the cache on, as on QEMU */
  cr_assert_eq(regs(&r, set_features(0x02)), OK << 8);
  cr_assert_eq(regs(&r, ata_cmd(WRITE_DMA, 0, 1, &v, 1)), OK << 8);
  cr_assert_eq(rig_count(&r, 'W', 0), 1);
  devemu_dev_free(r.d);
  devemu_opts o = { .kind = DEVEMU_ATA, .cache = DEVEMU_CACHE_WRITETHROUGH,
                    .wce_fixed = true };
  r.d = devemu_dev_new(r.b, &o, NULL);
  devemu_set_completion(r.d, NULL, NULL);
  devemu_ata_identify(r.d, w);
  cr_assert_eq(w[82] & 0x20, 0, "no cache in strict writethrough");
  devemu_cmd c = set_features(0x02);
  cr_assert_eq(devemu_submit(r.d, &c), 1);
  rig_close(&r);
}

Test(ata, trim)
{
  struct rig r;
  rig(&r, DEVEMU_CACHE_WRITEBACK, NULL, NULL);
  uint8_t blk[512] = { 0 };
  blk[0] = 0x10; blk[6] = 8;                   /* 8 sectors at 16 */
  blk[8] = 0x40; blk[14] = 1;                  /* 1 sector at 64 */
  devemu_iov v = { blk, 512 };
  devemu_cmd c = ata_cmd(DSM, 0, 1, &v, 1);
  c.u.ata.feature = 1;
  cr_assert_eq(regs(&r, c), OK << 8);
  struct nbdop ops[4];
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 4), 2);
  ops_sort(ops, 0, 2);
  cr_assert(ops[0].op == 'T' && ops[0].off == 16 * 512 && ops[0].len == 4096);
  cr_assert(ops[1].op == 'T' && ops[1].off == 64 * 512 && ops[1].len == 512);
  /* an entry past the end aborts the command before any I/O */
  rig_mark(&r);
  blk[16] = 0xff; blk[17] = 0xff; blk[18] = 0xff; blk[22] = 1;
  cr_assert_eq(regs(&r, c), ERR << 8 | 0x04);
  c.u.ata.feature = 0;                         /* not TRIM */
  cr_assert_eq(regs(&r, c), ERR << 8 | 0x04);
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 4), 0);
  rig_close(&r);
}

Test(ata, errors_and_boundaries)
{
  struct rig r;
  rig(&r, DEVEMU_CACHE_WRITEBACK, NULL, NULL);
  static uint8_t big[65536 * 512];  /* 32 MiB */
  uint8_t buf[1024] = { 0 };
  devemu_iov v = { buf, 512 };
  cr_assert_eq(regs(&r, ata_cmd(READ_DMA_EXT, nsect - 1, 1, &v, 1)), OK << 8);
  rig_mark(&r);
  devemu_completion c = rig_run(&r, ata_cmd(READ_DMA_EXT, nsect, 1, &v, 1));
  cr_assert_eq(c.u.ata.status, ERR);
  cr_assert_eq(c.u.ata.error, 0x10, "IDNF");
  cr_assert_eq(regs(&r, ata_cmd(VERIFY, nsect, 1, NULL, 0)), ERR << 8 | 0x10);
  cr_assert_eq(regs(&r, ata_cmd(VERIFY, 0, 1, NULL, 0)), OK << 8);
  devemu_cmd chs = ata_cmd(READ, 0, 1, &v, 1);
  chs.u.ata.device = 0;                        /* CHS addressing */
  cr_assert_eq(regs(&r, chs), ERR << 8 | 0x04);
  cr_assert_eq(regs(&r, ata_cmd(0x50, 0, 0, NULL, 0)), ERR << 8 | 0x04);
  cr_assert_eq(regs(&r, ata_cmd(READ_DMA, 0, 2, &v, 1)), ERR << 8 | 0x04,
               "iov shorter than the count");
  cr_assert_eq(regs(&r, ata_cmd(SET_MULTI, 0, 3, NULL, 0)), ERR << 8 | 0x04);
  c = rig_run(&r, ata_cmd(READ_NATIVE_MAX_EXT, 0, 0, NULL, 0));
  cr_assert_eq(c.u.ata.lba, nsect - 1);
  struct nbdop ops[4];
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 4), 0);
  /* LBA48 count 0 = 65536 sectors: past the end of this 32768-sector
   * disk, so IDNF (were it read as 0 sectors it would succeed) */
  devemu_iov bv = { big, sizeof big };
  cr_assert_eq(regs(&r, ata_cmd(READ_DMA_EXT, 0, 0, &bv, 1)), ERR << 8 | 0x10);
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 4), 0);
  /* LBA28 count 0 = 256 */
  devemu_iov sv = { big, 256 * 512 };
  cr_assert_eq(regs(&r, ata_cmd(READ_DMA, 0, 0, &sv, 1)), OK << 8);
  struct nbdop rd[4];
  cr_assert_eq(log_ops(&r.srv, r.mark, rd, 4), 1);
  cr_assert_eq(rd[0].len, 256 * 512);
  rig_close(&r);
}

Test(ata, server_errors)
{
  struct rig r;
  const char *filters[] = { "--filter=error", NULL };
  const char *params[] = { "error-pwrite=EIO", "error-pwrite-rate=100%",
                           "error-pread=EIO", "error-pread-rate=100%", NULL };
  rig(&r, DEVEMU_CACHE_WRITEBACK, filters, params);
  uint8_t buf[1024] = { 0 };
  devemu_iov v = { buf, 1024 };
  devemu_completion c = rig_run(&r, ata_cmd(READ_DMA_EXT, 40, 2, &v, 1));
  cr_assert_eq(c.u.ata.status, ERR);
  cr_assert_eq(c.u.ata.error, 0x40, "UNC");
  cr_assert_eq(c.u.ata.lba, 40, "first failing LBA");
  cr_assert_eq(regs(&r, ata_cmd(WRITE_DMA_EXT, 0, 2, &v, 1)), ERR << 8 | 0x04);
  rig_close(&r);
}

Test(ata, read_only_and_no_trim)
{
  struct rig r;
  const char *args[] = { "-r", "--filter=log", "memory", "16M",
                         "logfile=@LOG", NULL };
  server_nbdkit(&r.srv, 0, args);
  devemu_opts o = { .kind = DEVEMU_ATA };
  rig_attach(&r, &o);
  uint8_t buf[512] = { 0 };
  devemu_iov v = { buf, 512 };
  uint16_t w[256];
  devemu_ata_identify(r.d, w);
  cr_assert_eq(w[169] & 1, 0);
  cr_assert_eq(regs(&r, ata_cmd(WRITE_DMA, 0, 1, &v, 1)), ERR << 8 | 0x04);
  devemu_cmd c = ata_cmd(DSM, 0, 1, &v, 1);
  c.u.ata.feature = 1;
  cr_assert_eq(regs(&r, c), ERR << 8 | 0x04);
  cr_assert_eq(regs(&r, ata_cmd(READ_DMA, 0, 1, &v, 1)), OK << 8);
  cr_assert_eq(rig_count(&r, 'W', -1) + rig_count(&r, 'T', -1), 0);
  rig_close(&r);
}

Test(ata, nbdstack_flags_reach_the_plugin)
{
  struct rig r;
  char plugin[512];
  snprintf(plugin, sizeof plugin, "--plugin=%s", recorder_plugin());
  const char *args[] = { "--discard=unmap", plugin, "file=@IMAGE",
                         "log=@LOG", NULL };
  server_nbdstack(&r.srv, 4 << 20, args);
  devemu_opts o = { .kind = DEVEMU_ATA };
  rig_attach(&r, &o);
  uint8_t buf[4096], back[4096];
  fill_pattern(buf, sizeof buf, 13);
  devemu_iov v = { buf, sizeof buf }, b = { back, sizeof back };
  cr_assert_eq(regs(&r, ata_cmd(WRITE_DMA_EXT, 8, 8, &v, 1)), OK << 8);
  cr_assert_eq(regs(&r, ata_cmd(WRITE_FUA_EXT, 16, 8, &v, 1)), OK << 8);
  cr_assert_eq(regs(&r, set_features(0x82)), OK << 8);
  cr_assert_eq(regs(&r, ata_cmd(WRITE_DMA_EXT, 24, 8, &v, 1)), OK << 8);
  cr_assert_eq(regs(&r, ata_cmd(READ_DMA_EXT, 24, 8, &b, 1)), OK << 8);
  cr_assert_arr_eq(back, buf, sizeof buf);
  cr_assert_eq(rig_count(&r, 'W', 0), 1);
  cr_assert_eq(rig_count(&r, 'W', 1), 2);
  cr_assert_geq(rig_count(&r, 'F', -1), 1);
  rig_close(&r);
}
