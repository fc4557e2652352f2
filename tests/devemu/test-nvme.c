/* NVMe through devemu against real servers: I/O and admin commands, the
 * NBD requests and flags they become, the data, the completion status. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "harness.h"

const char *const harness_tools[] = { "nbdkit", "nbdstack", "recorder",
                                      NULL };

#define FLUSH 0x00
#define WRITE 0x01
#define READ 0x02
#define COMPARE 0x05
#define WRITE_ZEROES 0x08
#define DSM 0x09
#define IDENTIFY 0x06
#define SET_FEATURES 0x09
#define GET_FEATURES 0x0A
#define FUA (1u << 30)
#define DEAC (1u << 25)
#define DNR 0x4000

static void
rig(struct rig *r, devemu_cache cache, const char *const *filters,
    const char *const *params)
{
  server_memory(&r->srv, filters, params);
  devemu_opts o = { .kind = DEVEMU_NVME, .cache = cache,
                    .serial = "nvme-serial" };
  rig_attach(r, &o);
}

static uint16_t
status(struct rig *r, devemu_cmd c)
{
  return rig_run(r, c).u.nvme.status;
}

static uint32_t le32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t) p[3] << 24; }

Test(nvme, identify_controller_and_namespace)
{
  struct rig r;
  rig(&r, DEVEMU_CACHE_WRITEBACK, NULL, NULL);
  static uint8_t id[4096];
  devemu_iov v = { id, sizeof id };
  cr_assert_eq(status(&r, nvme_admin(IDENTIFY, 0, 1, 0, &v, 1)), 0);
  cr_assert_eq(id[525], 0x07, "VWC present, broadcast flush");
  cr_assert_eq(id[520] & 0x0c, 0x0c, "ONCS: DSM and Write Zeroes");
  cr_assert(memcmp(id + 4, "nvme-serial ", 12) == 0);
  cr_assert_eq(le32(id + 516), 1, "NN");
  cr_assert_geq(id[77], 1, "MDTS set");
  cr_assert_eq(status(&r, nvme_admin(IDENTIFY, 1, 0, 0, &v, 1)), 0);
  cr_assert_eq(le32(id), 16 * 1024 * 1024 / 512, "NSZE");
  cr_assert_eq(le32(id + 8), 16 * 1024 * 1024 / 512, "NCAP");
  cr_assert_eq(id[130], 9, "LBADS");
  cr_assert_eq(id[33], 0x09, "DLFEAT: zeroes, DEAC");
  cr_assert_eq(id[99], 0, "not write protected");
  /* wrong namespace, unknown CNS, not ours */
  cr_assert_eq(status(&r, nvme_admin(IDENTIFY, 2, 0, 0, &v, 1)), 0x0b | DNR);
  cr_assert_eq(status(&r, nvme_admin(IDENTIFY, 0, 0x1f, 0, &v, 1)), 0x02 | DNR);
  devemu_cmd c = nvme_admin(0x01 /* create SQ */, 0, 0, 0, NULL, 0);
  cr_assert_eq(devemu_submit(r.d, &c), -1);
  cr_assert_eq(errno, ENOSYS);
  rig_close(&r);
}

Test(nvme, read_write_round_trip_and_fua)
{
  struct rig r;
  rig(&r, DEVEMU_CACHE_WRITEBACK, NULL, NULL);
  static uint8_t out[8 * 512], in[8 * 512];
  fill_pattern(out, sizeof out, 3);
  devemu_iov w[] = { { out, 4096 }, { out + 4096, 512 * 8 - 4096 } };
  cr_assert_eq(status(&r, nvme_cmd(WRITE, 1, 100, 7, w, 2)), 0);
  cr_assert_eq(status(&r, nvme_cmd(WRITE, 1, 200, 7 | FUA, w, 2)), 0);
  devemu_iov rd[] = { { in, 1536 }, { in + 1536, sizeof in - 1536 } };
  cr_assert_eq(status(&r, nvme_cmd(READ, 1, 200, 7, rd, 2)), 0);
  cr_assert_arr_eq(in, out, sizeof out);
  cr_assert_eq(status(&r, nvme_cmd(FLUSH, 1, 0, 0, NULL, 0)), 0);
  cr_assert_eq(status(&r, nvme_cmd(FLUSH, 0xffffffff, 0, 0, NULL, 0)), 0);
  struct nbdop ops[8];
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 8), 5);
  cr_assert(ops[0].op == 'W' && ops[0].fua == 0 && ops[0].off == 100 * 512);
  cr_assert(ops[1].op == 'W' && ops[1].fua == 1, "FUA bit honoured");
  cr_assert(ops[2].op == 'R' && ops[2].len == 4096);
  cr_assert(ops[3].op == 'F' && ops[4].op == 'F');
  export_read(&r.srv, in, sizeof in, 100 * 512);
  cr_assert_arr_eq(in, out, sizeof out);
  rig_close(&r);
}

Test(nvme, writethrough_write_without_fua_gets_fua)
{
  struct rig r;
  rig(&r, DEVEMU_CACHE_WRITETHROUGH, NULL, NULL);
  uint8_t buf[512] = { 1 };
  devemu_iov v = { buf, 512 };
  cr_assert_eq(status(&r, nvme_cmd(WRITE, 1, 0, 0, &v, 1)), 0);
  cr_assert_eq(status(&r, nvme_cmd(WRITE_ZEROES, 1, 8, 3, NULL, 0)), 0);
  cr_assert_eq(rig_count(&r, 'W', 1), 1);
  cr_assert_eq(rig_count(&r, 'W', 0), 0);
  cr_assert_eq(rig_count(&r, 'Z', 1), 1);
  devemu_completion c = rig_run(&r, nvme_admin(GET_FEATURES, 0, 6, 0, NULL, 0));
  cr_assert(c.u.nvme.status == 0 && c.u.nvme.dw0 == 0, "WCE reads 0");
  rig_close(&r);
}

/* Set Features VWC 0: the cached write is flushed before the command
 * completes; then writes carry FUA.  1 again: no FUA. */
Test(nvme, set_features_vwc_toggle)
{
  struct rig r;
  rig(&r, DEVEMU_CACHE_WRITEBACK, NULL, NULL);
  uint8_t buf[512] = { 1 };
  devemu_iov v = { buf, 512 };
  devemu_completion c = rig_run(&r, nvme_admin(GET_FEATURES, 0, 6, 0, NULL, 0));
  cr_assert_eq(c.u.nvme.dw0, 1);
  c = rig_run(&r, nvme_admin(GET_FEATURES, 0, 6 | 3 << 8, 0, NULL, 0));
  cr_assert_eq(c.u.nvme.dw0, 4, "changeable");
  cr_assert_eq(status(&r, nvme_cmd(WRITE, 1, 0, 0, &v, 1)), 0);
  cr_assert_eq(status(&r, nvme_admin(SET_FEATURES, 0, 6, 0, NULL, 0)), 0);
  c = rig_run(&r, nvme_admin(GET_FEATURES, 0, 6, 0, NULL, 0));
  cr_assert_eq(c.u.nvme.dw0, 0);
  c = rig_run(&r, nvme_admin(GET_FEATURES, 0, 6 | 1 << 8, 0, NULL, 0));
  cr_assert_eq(c.u.nvme.dw0, 1, "default stays on");
  cr_assert_eq(status(&r, nvme_cmd(WRITE, 1, 1, 0, &v, 1)), 0);
  cr_assert_eq(status(&r, nvme_admin(SET_FEATURES, 0, 6, 1, NULL, 0)), 0);
  cr_assert_eq(status(&r, nvme_cmd(WRITE, 1, 2, 0, &v, 1)), 0);
  /* SV=1: not saveable */
  cr_assert_eq(status(&r, nvme_admin(SET_FEATURES, 0, 6 | 1u << 31, 0, NULL, 0)),
               0x10d | DNR);
  struct nbdop ops[8];
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 8), 4);
  cr_assert(ops[0].op == 'W' && ops[0].fua == 0);
  cr_assert_eq(ops[1].op, 'F');
  cr_assert(ops[2].op == 'W' && ops[2].fua == 1);
  cr_assert(ops[3].op == 'W' && ops[3].fua == 0);
  rig_close(&r);
}

Test(nvme, write_zeroes_deac_and_dsm)
{
  struct rig r;
  rig(&r, DEVEMU_CACHE_WRITEBACK, NULL, NULL);
  cr_assert_eq(status(&r, nvme_cmd(WRITE_ZEROES, 1, 16, 7 | DEAC, NULL, 0)), 0);
  cr_assert_eq(status(&r, nvme_cmd(WRITE_ZEROES, 1, 16, 7, NULL, 0)), 0);
  cr_assert_eq(status(&r, nvme_cmd(WRITE_ZEROES, 1, 16, 7 | FUA, NULL, 0)), 0);
  /* DSM deallocate: 3 ranges, one of them empty */
  uint8_t ranges[48] = { 0 };
  ranges[4] = 8; ranges[8] = 32;               /* 8 blocks at 32 */
  ranges[16 + 8] = 64;                         /* 0 blocks: skipped */
  ranges[32 + 4] = 1; ranges[32 + 8] = 100;    /* 1 block at 100 */
  devemu_iov v = { ranges, sizeof ranges };
  devemu_cmd c = nvme_cmd(DSM, 1, 0, 0, &v, 1);
  c.u.nvme_sqe[40] = 2;                        /* NR: 3 ranges */
  c.u.nvme_sqe[44] = 4;                        /* AD */
  cr_assert_eq(status(&r, c), 0);
  c.u.nvme_sqe[44] = 1;                        /* hints only: no I/O */
  cr_assert_eq(status(&r, c), 0);
  struct nbdop ops[8];
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 8), 5);
  ops_sort(ops, 3, 2);
  cr_assert(ops[0].op == 'Z' && ops[0].trim == 1 && ops[0].len == 4096);
  cr_assert(ops[1].op == 'Z' && ops[1].trim == 0);
  cr_assert(ops[2].op == 'Z' && ops[2].trim == 0 && ops[2].fua == 1);
  cr_assert(ops[3].op == 'Z' && ops[3].trim == 1 && ops[3].off == 32 * 512);
  cr_assert(ops[4].op == 'Z' && ops[4].off == 100 * 512 && ops[4].len == 512);
  rig_close(&r);
}

Test(nvme, validation_errors_send_nothing)
{
  struct rig r;
  rig(&r, DEVEMU_CACHE_WRITEBACK, NULL, NULL);
  uint64_t nsze = 16 * 1024 * 1024 / 512;
  uint8_t buf[1024] = { 0 };
  devemu_iov v = { buf, 512 };
  cr_assert_eq(status(&r, nvme_cmd(READ, 1, nsze - 1, 0, &v, 1)), 0);
  rig_mark(&r);
  cr_assert_eq(status(&r, nvme_cmd(READ, 1, nsze, 0, &v, 1)), 0x80 | DNR);
  cr_assert_eq(status(&r, nvme_cmd(WRITE_ZEROES, 1, UINT64_MAX, 1, NULL, 0)),
               0x80 | DNR, "slba + nlb overflows");
  cr_assert_eq(status(&r, nvme_cmd(READ, 2, 0, 0, &v, 1)), 0x0b | DNR);
  cr_assert_eq(status(&r, nvme_cmd(READ, 1, 0, 1, &v, 1)), 0x0f | DNR,
               "iov shorter than NLB");
  cr_assert_eq(status(&r, nvme_cmd(COMPARE, 1, 0, 0, &v, 1)), 0x01 | DNR);
  cr_assert_eq(status(&r, nvme_cmd(0x04, 1, 0, 0, NULL, 0)), 0x01 | DNR);
  devemu_cmd c = nvme_cmd(READ, 1, 0, 0, &v, 1);
  c.u.nvme_sqe[1] = 1;                         /* FUSE */
  cr_assert_eq(status(&r, c), 0x02 | DNR);
  c.u.nvme_sqe[1] = 0x40;                      /* PSDT: SGL */
  cr_assert_eq(status(&r, c), 0x02 | DNR);
  c = nvme_cmd(READ, 1, 0, 0xffff, &v, 1);     /* 65536 blocks > MDTS */
  cr_assert_eq(status(&r, c), 0x02 | DNR);
  struct nbdop ops[4];
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 4), 0);
  rig_close(&r);
}

Test(nvme, server_errors)
{
  struct rig r;
  const char *filters[] = { "--filter=error", NULL };
  const char *params[] = { "error-pwrite=ENOSPC", "error-pwrite-rate=100%",
                           "error-pread=EIO", "error-pread-rate=100%",
                           "error-zero=EIO", "error-zero-rate=100%", NULL };
  rig(&r, DEVEMU_CACHE_WRITEBACK, filters, params);
  uint8_t buf[512] = { 0 };
  devemu_iov v = { buf, 512 };
  devemu_completion c = rig_run(&r, nvme_cmd(WRITE, 1, 0, 0, &v, 1));
  cr_assert_eq(c.u.nvme.status, 0x81, "capacity exceeded, no DNR");
  cr_assert_eq(c.nbd_errno, ENOSPC);
  cr_assert_eq(status(&r, nvme_cmd(READ, 1, 0, 0, &v, 1)), 0x281);
  cr_assert_eq(status(&r, nvme_cmd(WRITE_ZEROES, 1, 0, 0, NULL, 0)), 0x280);
  rig_close(&r);
}

Test(nvme, read_only_namespace)
{
  struct rig r;
  const char *args[] = { "-r", "--filter=log", "memory", "16M",
                         "logfile=@LOG", NULL };
  server_nbdkit(&r.srv, 0, args);
  devemu_opts o = { .kind = DEVEMU_NVME };
  rig_attach(&r, &o);
  static uint8_t id[4096];
  devemu_iov idv = { id, sizeof id };
  cr_assert_eq(status(&r, nvme_admin(IDENTIFY, 1, 0, 0, &idv, 1)), 0);
  cr_assert_eq(id[99], 1, "NSATTR write protected");
  uint8_t buf[512] = { 0 };
  devemu_iov v = { buf, 512 };
  cr_assert_eq(status(&r, nvme_cmd(WRITE, 1, 0, 0, &v, 1)), 0x20 | DNR);
  cr_assert_eq(status(&r, nvme_cmd(WRITE_ZEROES, 1, 0, 0, NULL, 0)), 0x01 | DNR);
  cr_assert_eq(rig_count(&r, 'W', -1), 0);
  rig_close(&r);
}

/* Without WRITE_ZEROES on the server: no Write Zeroes, DSM uses TRIM and
 * DLFEAT promises nothing. */
Test(nvme, server_without_zero)
{
  struct rig r;
  const char *filters[] = { "--filter=nozero", NULL };
  const char *params[] = { "zeromode=none", NULL };
  rig(&r, DEVEMU_CACHE_WRITEBACK, filters, params);
  static uint8_t id[4096];
  devemu_iov idv = { id, sizeof id };
  cr_assert_eq(status(&r, nvme_admin(IDENTIFY, 1, 0, 0, &idv, 1)), 0);
  cr_assert_eq(id[33], 0, "DLFEAT");
  cr_assert_eq(status(&r, nvme_cmd(WRITE_ZEROES, 1, 0, 0, NULL, 0)), 0x01 | DNR);
  uint8_t range[16] = { 0 };
  range[4] = 8;
  devemu_iov v = { range, 16 };
  devemu_cmd c = nvme_cmd(DSM, 1, 0, 0, &v, 1);
  c.u.nvme_sqe[44] = 4;
  cr_assert_eq(status(&r, c), 0);
  cr_assert_eq(rig_count(&r, 'T', -1), 1);
  cr_assert_eq(rig_count(&r, 'Z', -1), 0);
  rig_close(&r);
}

Test(nvme, nbdstack_fua_reaches_the_plugin)
{
  struct rig r;
  char plugin[512];
  snprintf(plugin, sizeof plugin, "--plugin=%s", recorder_plugin());
  const char *args[] = { "--discard=unmap", plugin, "file=@IMAGE",
                         "log=@LOG", NULL };
  server_nbdstack(&r.srv, 4 << 20, args);
  devemu_opts o = { .kind = DEVEMU_NVME };
  rig_attach(&r, &o);
  uint8_t buf[4096], back[4096];
  fill_pattern(buf, sizeof buf, 11);
  devemu_iov v = { buf, sizeof buf }, b = { back, sizeof back };
  cr_assert_eq(status(&r, nvme_cmd(WRITE, 1, 8, 7, &v, 1)), 0);
  cr_assert_eq(status(&r, nvme_cmd(WRITE, 1, 16, 7 | FUA, &v, 1)), 0);
  cr_assert_eq(status(&r, nvme_cmd(FLUSH, 1, 0, 0, NULL, 0)), 0);
  cr_assert_eq(status(&r, nvme_admin(SET_FEATURES, 0, 6, 0, NULL, 0)), 0);
  cr_assert_eq(status(&r, nvme_cmd(WRITE, 1, 24, 7, &v, 1)), 0);
  cr_assert_eq(status(&r, nvme_cmd(WRITE_ZEROES, 1, 40, 7 | DEAC, NULL, 0)), 0);
  cr_assert_eq(status(&r, nvme_cmd(READ, 1, 24, 7, &b, 1)), 0);
  cr_assert_arr_eq(back, buf, sizeof buf);
  cr_assert_eq(rig_count(&r, 'W', 0), 1);
  cr_assert_eq(rig_count(&r, 'W', 1), 2);
  cr_assert_eq(rig_count(&r, 'Z', 1), 1);
  cr_assert_geq(rig_count(&r, 'F', -1), 1);
  rig_close(&r);
}
