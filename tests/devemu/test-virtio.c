/* virtio-blk through devemu against real servers: every request type, the
 * NBD requests and flags that reach the server, the data, the status. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "harness.h"

const char *const harness_tools[] = { "nbdkit", "nbdstack", "recorder",
                                      "qemu-nbd", NULL };

#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define T_GET_LIFETIME 10
#define T_DISCARD 11
#define T_WRITE_ZEROES 13
#define F_RO 5
#define F_FLUSH 9
#define F_CONFIG_WCE 11
#define F_DISCARD 13
#define F_WRITE_ZEROES 14

static void
memory_rig(struct rig *r, devemu_cache cache)
{
  server_memory(&r->srv, NULL, NULL);
  devemu_opts o = { .kind = DEVEMU_VIRTIO_BLK, .cache = cache,
                    .serial = "virtio-serial-1" };
  rig_attach(r, &o);
}

static uint8_t
run_status(struct rig *r, devemu_cmd c)
{
  return rig_run(r, c).u.virtio.status;
}

Test(virtio, data_round_trip_over_segments)
{
  struct rig r;
  memory_rig(&r, DEVEMU_CACHE_WRITEBACK);
  static uint8_t out[3 * 4096], in[3 * 4096], exp[3 * 4096];
  fill_pattern(out, sizeof out, 1);
  /* Segment boundaries that are not block-aligned: the bounce path. */
  devemu_iov w[] = { { out, 1000 }, { out + 1000, 7000 },
                     { out + 8000, sizeof out - 8000 } };
  devemu_completion c = rig_run(&r, virtio_cmd(T_OUT, 8, w, 3));
  cr_assert_eq(c.u.virtio.status, 0);
  cr_assert_eq(c.u.virtio.used_len, 1);
  devemu_iov rd[] = { { in, 5 * 512 }, { in + 5 * 512, sizeof in - 5 * 512 } };
  c = rig_run(&r, virtio_cmd(T_IN, 8, rd, 2));
  cr_assert_eq(c.u.virtio.status, 0);
  cr_assert_eq(c.u.virtio.used_len, sizeof in + 1);
  cr_assert_arr_eq(in, out, sizeof out);
  export_read(&r.srv, exp, sizeof exp, 8 * 512);
  cr_assert_arr_eq(exp, out, sizeof out);
  cr_assert_eq(rig_count(&r, 'W', 0), 1);
  cr_assert_eq(rig_count(&r, 'W', 1), 0);
  rig_close(&r);
}

Test(virtio, writeback_flush_reaches_server)
{
  struct rig r;
  memory_rig(&r, DEVEMU_CACHE_WRITEBACK);
  uint8_t buf[512] = { 1 };
  devemu_iov v = { buf, 512 };
  cr_assert_eq(run_status(&r, virtio_cmd(T_OUT, 0, &v, 1)), 0);
  cr_assert_eq(run_status(&r, virtio_cmd(T_FLUSH, 0, NULL, 0)), 0);
  struct nbdop ops[8];
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 8), 2);
  cr_assert(ops[0].op == 'W' && ops[0].fua == 0);
  cr_assert_eq(ops[1].op, 'F');
  rig_close(&r);
}

Test(virtio, writethrough_every_write_has_fua)
{
  struct rig r;
  memory_rig(&r, DEVEMU_CACHE_WRITETHROUGH);
  uint8_t wb = 1;
  cr_assert_eq(devemu_virtio_config_read(r.d, 32, &wb, 1), 1);
  cr_assert_eq(wb, 0, "writeback byte must start at 0");
  uint8_t buf[1024] = { 2 };
  devemu_iov v = { buf, sizeof buf };
  cr_assert_eq(run_status(&r, virtio_cmd(T_OUT, 2, &v, 1)), 0);
  uint8_t seg[16] = { 0 };
  seg[0] = 8; seg[8] = 2;                      /* sector 8, 2 sectors */
  devemu_iov s = { seg, 16 };
  cr_assert_eq(run_status(&r, virtio_cmd(T_WRITE_ZEROES, 0, &s, 1)), 0);
  struct nbdop ops[8];
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 8), 2);
  cr_assert(ops[0].op == 'W' && ops[0].fua == 1);
  cr_assert(ops[1].op == 'Z' && ops[1].fua == 1 && ops[1].trim == 0);
  rig_close(&r);
}

/* writeback=0 at run time: a write still in the cache is flushed before
 * the switch completes; writes after it carry FUA; back to 1 they don't. */
Test(virtio, config_wce_toggle_flushes_then_switches)
{
  struct rig r;
  memory_rig(&r, DEVEMU_CACHE_WRITEBACK);
  cr_assert(devemu_virtio_host_features(r.d) & 1ull << F_CONFIG_WCE);
  uint8_t buf[512] = { 3 };
  devemu_iov v = { buf, 512 };
  cr_assert_eq(run_status(&r, virtio_cmd(T_OUT, 0, &v, 1)), 0);
  uint8_t zero = 0, one = 1;
  cr_assert_eq(devemu_virtio_config_write(r.d, 32, &zero, 1), 0);
  cr_assert_not(devemu_dev_get_wce(r.d));
  while (devemu_backend_pending(r.b) > 0)
    devemu_backend_poll(r.b, 1000);
  cr_assert_eq(run_status(&r, virtio_cmd(T_OUT, 1, &v, 1)), 0);
  cr_assert_eq(devemu_virtio_config_write(r.d, 32, &one, 1), 0);
  cr_assert_eq(run_status(&r, virtio_cmd(T_OUT, 2, &v, 1)), 0);
  struct nbdop ops[8];
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 8), 4);
  cr_assert(ops[0].op == 'W' && ops[0].fua == 0);
  cr_assert_eq(ops[1].op, 'F', "the switch must flush");
  cr_assert(ops[2].op == 'W' && ops[2].fua == 1);
  cr_assert(ops[3].op == 'W' && ops[3].fua == 0);
  rig_close(&r);
}

/* QEMU lets the guest turn the cache on in writethrough mode; with
 * wce_fixed it is not even offered. */
Test(virtio, writethrough_toggle_and_fixed)
{
  struct rig r;
  memory_rig(&r, DEVEMU_CACHE_WRITETHROUGH);
  uint8_t one = 1, buf[512] = { 0 };
  devemu_iov v = { buf, 512 };
  cr_assert_eq(devemu_virtio_config_write(r.d, 32, &one, 1), 0);
  cr_assert_eq(run_status(&r, virtio_cmd(T_OUT, 0, &v, 1)), 0);
  cr_assert_eq(rig_count(&r, 'W', 0), 1);
  devemu_dev_free(r.d);

  devemu_opts o = { .kind = DEVEMU_VIRTIO_BLK,
                    .cache = DEVEMU_CACHE_WRITETHROUGH, .wce_fixed = true };
  r.d = devemu_dev_new(r.b, &o, NULL);
  devemu_set_completion(r.d, NULL, NULL);
  uint64_t f = devemu_virtio_host_features(r.d);
  cr_assert_not(f & 1ull << F_CONFIG_WCE);
  cr_assert_not(f & 1ull << F_FLUSH);
  cr_assert_eq(devemu_virtio_config_write(r.d, 32, &one, 1), -1);
  rig_close(&r);
}

/* Driver did not negotiate FLUSH: writethrough (spec 5.2.6.1). */
Test(virtio, flush_not_negotiated_means_writethrough)
{
  struct rig r;
  memory_rig(&r, DEVEMU_CACHE_WRITEBACK);
  uint64_t f = devemu_virtio_host_features(r.d);
  cr_assert_eq(devemu_virtio_ack_features(r.d,
               f & ~(1ull << F_FLUSH | 1ull << F_CONFIG_WCE)), 0);
  uint8_t buf[512] = { 0 };
  devemu_iov v = { buf, 512 };
  cr_assert_eq(run_status(&r, virtio_cmd(T_OUT, 0, &v, 1)), 0);
  cr_assert_eq(rig_count(&r, 'W', 1), 1);
  cr_assert_eq(devemu_dev_reset(r.d), 0);
  cr_assert(devemu_dev_get_wce(r.d), "reset restores the initial WCE");
  rig_close(&r);
}

Test(virtio, unsafe_sends_no_flush_and_no_fua)
{
  struct rig r;
  memory_rig(&r, DEVEMU_CACHE_UNSAFE);
  uint8_t buf[512] = { 0 }, zero = 0;
  devemu_iov v = { buf, 512 };
  cr_assert_eq(run_status(&r, virtio_cmd(T_OUT, 0, &v, 1)), 0);
  cr_assert_eq(run_status(&r, virtio_cmd(T_FLUSH, 0, NULL, 0)), 0);
  cr_assert_eq(devemu_virtio_config_write(r.d, 32, &zero, 1), 0);
  while (devemu_backend_pending(r.b) > 0)
    devemu_backend_poll(r.b, 1000);
  cr_assert_eq(run_status(&r, virtio_cmd(T_OUT, 0, &v, 1)), 0);
  cr_assert_eq(rig_count(&r, 'F', -1), 0);
  cr_assert_eq(rig_count(&r, 'W', 1), 0);
  cr_assert_eq(rig_count(&r, 'W', 0), 2);
  rig_close(&r);
}

Test(virtio, discard_and_write_zeroes)
{
  struct rig r;
  memory_rig(&r, DEVEMU_CACHE_WRITEBACK);
  uint64_t f = devemu_virtio_host_features(r.d);
  cr_assert(f & 1ull << F_DISCARD && f & 1ull << F_WRITE_ZEROES);
  uint8_t cfg[60];
  cr_assert_eq(devemu_virtio_config_read(r.d, 0, cfg, 60), 60);
  cr_assert_eq(cfg[56], 1, "write_zeroes_may_unmap");
  cr_assert_eq(cfg[40] | cfg[41] << 8, 256, "max_discard_seg");

  uint8_t segs[32] = { 0 };
  segs[0] = 16; segs[8] = 8;                   /* sectors 16..23 */
  segs[16] = 64; segs[24] = 4;                 /* sectors 64..67 */
  devemu_iov s = { segs, 32 };
  cr_assert_eq(run_status(&r, virtio_cmd(T_DISCARD, 0, &s, 1)), 0);
  s.len = 16;
  segs[12] = 1;                                /* unmap */
  cr_assert_eq(run_status(&r, virtio_cmd(T_WRITE_ZEROES, 0, &s, 1)), 0);
  segs[12] = 0;
  cr_assert_eq(run_status(&r, virtio_cmd(T_WRITE_ZEROES, 0, &s, 1)), 0);
  struct nbdop ops[8];
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 8), 4);
  ops_sort(ops, 0, 2);
  cr_assert(ops[0].op == 'T' && ops[0].off == 16 * 512 && ops[0].len == 4096);
  cr_assert(ops[1].op == 'T' && ops[1].off == 64 * 512 && ops[1].len == 2048);
  cr_assert(ops[2].op == 'Z' && ops[2].trim == 1 && ops[2].fua == 0);
  cr_assert(ops[3].op == 'Z' && ops[3].trim == 0);

  /* unmap on DISCARD and unknown flags: UNSUPP, nothing sent */
  rig_mark(&r);
  segs[12] = 1;
  cr_assert_eq(run_status(&r, virtio_cmd(T_DISCARD, 0, &s, 1)), 2);
  segs[12] = 2;
  cr_assert_eq(run_status(&r, virtio_cmd(T_WRITE_ZEROES, 0, &s, 1)), 2);
  /* out of range segment, zero-sector segment */
  segs[12] = 0;
  segs[0] = 0xff; segs[1] = 0xff; segs[2] = 0xff; segs[3] = 0xff;
  cr_assert_eq(run_status(&r, virtio_cmd(T_DISCARD, 0, &s, 1)), 1);
  segs[0] = 0; segs[1] = 0; segs[2] = 0; segs[3] = 0; segs[8] = 0;
  cr_assert_eq(run_status(&r, virtio_cmd(T_DISCARD, 0, &s, 1)), 0);
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 8), 0);
  rig_close(&r);
}

Test(virtio, validation_errors_send_nothing)
{
  struct rig r;
  memory_rig(&r, DEVEMU_CACHE_WRITEBACK);
  uint8_t buf[1024] = { 0 };
  devemu_iov v = { buf, 512 };
  uint64_t cap = 16 * 1024 * 1024 / 512;
  /* last sector is fine, one past it is not */
  cr_assert_eq(run_status(&r, virtio_cmd(T_IN, cap - 1, &v, 1)), 0);
  rig_mark(&r);
  cr_assert_eq(run_status(&r, virtio_cmd(T_IN, cap, &v, 1)), 1);
  v.len = 1024;
  cr_assert_eq(run_status(&r, virtio_cmd(T_OUT, cap - 1, &v, 1)), 1);
  /* sector * 512 overflows 64 bits */
  cr_assert_eq(run_status(&r, virtio_cmd(T_IN, UINT64_MAX / 256, &v, 1)), 1);
  v.len = 100;                                  /* not whole sectors */
  cr_assert_eq(run_status(&r, virtio_cmd(T_OUT, 0, &v, 1)), 1);
  v.len = 0;                                    /* 0 bytes: OK, no I/O */
  cr_assert_eq(run_status(&r, virtio_cmd(T_IN, 0, &v, 1)), 0);
  cr_assert_eq(run_status(&r, virtio_cmd(T_GET_LIFETIME, 0, NULL, 0)), 2);
  cr_assert_eq(run_status(&r, virtio_cmd(2, 0, NULL, 0)), 2);
  cr_assert_eq(run_status(&r, virtio_cmd(0x7f, 0, NULL, 0)), 2);
  struct nbdop ops[4];
  cr_assert_eq(log_ops(&r.srv, r.mark, ops, 4), 0);
  rig_close(&r);
}

Test(virtio, get_id)
{
  struct rig r;
  memory_rig(&r, DEVEMU_CACHE_WRITEBACK);
  char id[20];
  memset(id, 'x', sizeof id);
  devemu_iov v = { id, sizeof id };
  devemu_completion c = rig_run(&r, virtio_cmd(T_GET_ID, 0, &v, 1));
  cr_assert_eq(c.u.virtio.status, 0);
  cr_assert_eq(c.u.virtio.used_len, 21);
  cr_assert_str_eq(id, "virtio-serial-1");
  cr_assert_eq(id[19], 0, "padded with NULs");
  rig_close(&r);
}

Test(virtio, server_error_is_ioerr)
{
  struct rig r;
  const char *filters[] = { "--filter=error", NULL };
  const char *params[] = { "error-pwrite=EIO", "error-pwrite-rate=100%",
                           NULL };
  server_memory(&r.srv, filters, params);
  devemu_opts o = { .kind = DEVEMU_VIRTIO_BLK };
  rig_attach(&r, &o);
  uint8_t buf[512] = { 0 };
  devemu_iov v = { buf, 512 };
  devemu_completion c = rig_run(&r, virtio_cmd(T_OUT, 0, &v, 1));
  cr_assert_eq(c.u.virtio.status, 1);
  cr_assert_eq(c.nbd_errno, EIO);
  c = rig_run(&r, virtio_cmd(T_IN, 0, &v, 1));
  cr_assert_eq(c.u.virtio.status, 0);
  rig_close(&r);
}

Test(virtio, read_only_export)
{
  struct rig r;
  const char *args[] = { "-r", "--filter=log", "memory", "16M",
                         "logfile=@LOG", NULL };
  server_nbdkit(&r.srv, 0, args);
  devemu_opts o = { .kind = DEVEMU_VIRTIO_BLK };
  rig_attach(&r, &o);
  uint64_t f = devemu_virtio_host_features(r.d);
  cr_assert(f & 1ull << F_RO);
  cr_assert_not(f & 1ull << F_DISCARD);
  uint8_t buf[512] = { 0 };
  devemu_iov v = { buf, 512 };
  cr_assert_eq(run_status(&r, virtio_cmd(T_OUT, 0, &v, 1)), 1);
  cr_assert_eq(run_status(&r, virtio_cmd(T_IN, 0, &v, 1)), 0);
  cr_assert_eq(rig_count(&r, 'W', -1), 0);
  rig_close(&r);
}

/* nbdstack hosting the recorder plugin: the flags reach the plugin. */
Test(virtio, nbdstack_flags_reach_the_plugin)
{
  struct rig r;
  char plugin[512];
  snprintf(plugin, sizeof plugin, "--plugin=%s", recorder_plugin());
  const char *args[] = { "--discard=unmap", plugin, "file=@IMAGE",
                         "log=@LOG", NULL };
  server_nbdstack(&r.srv, 4 << 20, args);
  devemu_opts o = { .kind = DEVEMU_VIRTIO_BLK };
  rig_attach(&r, &o);
  uint8_t buf[4096], back[4096], zero = 0;
  fill_pattern(buf, sizeof buf, 7);
  devemu_iov v = { buf, sizeof buf }, b = { back, sizeof back };
  cr_assert_eq(run_status(&r, virtio_cmd(T_OUT, 8, &v, 1)), 0);
  cr_assert_eq(run_status(&r, virtio_cmd(T_FLUSH, 0, NULL, 0)), 0);
  cr_assert_eq(devemu_virtio_config_write(r.d, 32, &zero, 1), 0);
  while (devemu_backend_pending(r.b) > 0)
    devemu_backend_poll(r.b, 1000);
  cr_assert_eq(run_status(&r, virtio_cmd(T_OUT, 16, &v, 1)), 0);
  cr_assert_eq(run_status(&r, virtio_cmd(T_IN, 16, &b, 1)), 0);
  cr_assert_arr_eq(back, buf, sizeof buf);
  cr_assert_eq(rig_count(&r, 'W', 0), 1);
  cr_assert_eq(rig_count(&r, 'W', 1), 1);
  cr_assert_geq(rig_count(&r, 'F', -1), 1);
  rig_close(&r);
}

/* qemu-nbd as the peer: the data is in the image file. */
Test(virtio, qemu_nbd_round_trip)
{
  struct rig r;
  const char *args[] = { "--cache=writeback", NULL };
  server_qemu_nbd(&r.srv, 4 << 20, args);
  devemu_opts o = { .kind = DEVEMU_VIRTIO_BLK };
  rig_attach(&r, &o);
  uint8_t buf[8192], file[8192];
  fill_pattern(buf, sizeof buf, 9);
  devemu_iov v = { buf, sizeof buf };
  cr_assert_eq(run_status(&r, virtio_cmd(T_OUT, 32, &v, 1)), 0);
  cr_assert_eq(run_status(&r, virtio_cmd(T_FLUSH, 0, NULL, 0)), 0);
  FILE *f = fopen(r.srv.image, "rb");
  cr_assert_not_null(f);
  cr_assert_eq(fseek(f, 32 * 512, SEEK_SET), 0);
  cr_assert_eq(fread(file, 1, sizeof file, f), sizeof file);
  fclose(f);
  cr_assert_arr_eq(file, buf, sizeof buf);
  rig_close(&r);
}
