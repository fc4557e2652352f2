/* A tiny "VMM" for libdevemu: plays a scripted sequence of guest commands
 * on a virtio-blk, an NVMe and an IDE/ATA device bound to one NBD export,
 * and prints every completion.  Its event loop is a plain poll() loop,
 * the way a VMM wires devemu into its own loop.
 *
 *   cc scripted.c $(pkg-config --cflags --libs devemu) -o devemu-scripted
 *   nbdkit -U /tmp/s memory 64M
 *   ./devemu-scripted 'nbd+unix:///?socket=/tmp/s' [writeback|writethrough|unsafe]
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdstack/devemu.h>

static unsigned outstanding;

static void
put32(uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = v >> (8 * i);
}

static void
put64(uint8_t *p, uint64_t v)
{
  put32(p, v);
  put32(p + 4, v >> 32);
}

static void
completed(void *opaque, const devemu_completion *c)
{
  const char *dev = opaque;
  if (strcmp(dev, "virtio") == 0)
    printf("  %-6s tag %-3llu status %u used_len %u\n", dev,
           (unsigned long long) c->tag, c->u.virtio.status,
           c->u.virtio.used_len);
  else if (strcmp(dev, "nvme") == 0)
    printf("  %-6s tag %-3llu status 0x%04x dw0 %u\n", dev,
           (unsigned long long) c->tag, c->u.nvme.status, c->u.nvme.dw0);
  else
    printf("  %-6s tag %-3llu status 0x%02x error 0x%02x\n", dev,
           (unsigned long long) c->tag, c->u.ata.status, c->u.ata.error);
  if (c->nbd_errno)
    printf("         (NBD error: %s)\n", strerror(c->nbd_errno));
  outstanding--;
}

/* The VMM's loop: poll the backend's fd for the events it asks for and
 * hand back what poll returned, until every command has completed. */
static int
run_loop(devemu_backend *b)
{
  while (outstanding > 0) {
    struct pollfd pfd = { .fd = devemu_backend_fd(b),
                          .events = devemu_backend_events(b) };
    if (pfd.fd == -1 || poll(&pfd, 1, 5000) <= 0)
      return -1;
    if (devemu_backend_dispatch(b, pfd.revents) == -1)
      return -1;
  }
  return 0;
}

static void
submit(devemu_dev *d, devemu_cmd *c)
{
  outstanding++;
  int r = devemu_submit(d, c);
  if (r == -1) {                       /* not devemu's to answer */
    printf("  tag %llu: not accepted\n", (unsigned long long) c->tag);
    outstanding--;
  }
}

static devemu_dev *
device(devemu_backend *b, devemu_kind kind, devemu_cache cache,
       const char *name)
{
  devemu_opts o = { .kind = kind, .cache = cache, .serial = name };
  char *err = NULL;
  devemu_dev *d = devemu_dev_new(b, &o, &err);
  if (!d) {
    fprintf(stderr, "%s: %s\n", name, err);
    exit(1);
  }
  devemu_set_completion(d, completed, (void *) name);
  return d;
}

int
main(int argc, char *argv[])
{
  if (argc < 2) {
    fprintf(stderr, "usage: %s NBD-URI [writeback|writethrough|unsafe]\n",
            argv[0]);
    return 2;
  }
  devemu_cache cache = DEVEMU_CACHE_WRITEBACK;
  if (argc > 2 && strcmp(argv[2], "writethrough") == 0)
    cache = DEVEMU_CACHE_WRITETHROUGH;
  else if (argc > 2 && strcmp(argv[2], "unsafe") == 0)
    cache = DEVEMU_CACHE_UNSAFE;

  char *err = NULL;
  devemu_backend *b = devemu_backend_connect_uri(argv[1], &err);
  if (!b) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  static uint8_t data[8192], back[8192];
  for (size_t i = 0; i < sizeof data; i++)
    data[i] = i * 7;
  devemu_iov wr = { data, sizeof data }, rd = { back, sizeof back };

  /* virtio-blk: OUT, FLUSH, IN, GET_ID, writeback off, OUT past the end */
  devemu_dev *v = device(b, DEVEMU_VIRTIO_BLK, cache, "virtio");
  printf("virtio-blk: %llu bytes, features 0x%llx, writeback %d\n",
         (unsigned long long) devemu_capacity_bytes(v),
         (unsigned long long) devemu_virtio_host_features(v),
         devemu_dev_get_wce(v));
  devemu_cmd c = { .tag = 1, .iov = &wr, .niov = 1 };
  put32(c.u.virtio_hdr, 1);                    /* OUT at sector 0 */
  submit(v, &c);
  c = (devemu_cmd) { .tag = 2 };
  put32(c.u.virtio_hdr, 4);                    /* FLUSH */
  submit(v, &c);
  run_loop(b);             /* overlapping commands in flight may race */
  c = (devemu_cmd) { .tag = 3, .iov = &rd, .niov = 1 };
  put32(c.u.virtio_hdr, 0);                    /* IN */
  submit(v, &c);
  run_loop(b);
  printf("  read back %s\n", memcmp(data, back, sizeof data) ? "DIFFERS"
                                                             : "matches");
  uint8_t zero = 0;
  devemu_virtio_config_write(v, 32, &zero, 1);  /* writeback = 0 */
  c = (devemu_cmd) { .tag = 4, .iov = &wr, .niov = 1 };
  put32(c.u.virtio_hdr, 1);
  put64(c.u.virtio_hdr + 8, devemu_capacity_bytes(v) / 512);
  submit(v, &c);                               /* past the end: IOERR */
  run_loop(b);

  /* NVMe: Identify, Write with FUA, Flush, Set Features VWC=0, Read */
  devemu_dev *n = device(b, DEVEMU_NVME, cache, "nvme");
  static uint8_t id[4096];
  devemu_iov idv = { id, sizeof id };
  printf("nvme:\n");
  c = (devemu_cmd) { .tag = 10, .nvme_admin = true, .iov = &idv, .niov = 1 };
  c.u.nvme_sqe[0] = 0x06;
  put32(c.u.nvme_sqe + 40, 1);                 /* CNS 1: controller */
  submit(n, &c);
  run_loop(b);
  printf("  VWC 0x%02x, model \"%.40s\"\n", id[525], (char *) id + 24);
  c = (devemu_cmd) { .tag = 11, .iov = &wr, .niov = 1 };
  c.u.nvme_sqe[0] = 0x01;
  put32(c.u.nvme_sqe + 4, 1);
  put32(c.u.nvme_sqe + 40, 64);                /* SLBA */
  put32(c.u.nvme_sqe + 48, 15 | 1u << 30);     /* 16 blocks, FUA */
  submit(n, &c);
  c = (devemu_cmd) { .tag = 12 };
  put32(c.u.nvme_sqe + 4, 1);                  /* Flush */
  submit(n, &c);
  c = (devemu_cmd) { .tag = 13, .nvme_admin = true };
  c.u.nvme_sqe[0] = 0x09;
  put32(c.u.nvme_sqe + 40, 6);                 /* Set Features VWC = 0 */
  submit(n, &c);
  run_loop(b);

  /* ATA: IDENTIFY, WRITE DMA EXT, SET FEATURES 0x82, FLUSH CACHE EXT */
  devemu_dev *a = device(b, DEVEMU_ATA, cache, "ata");
  uint16_t w[256];
  devemu_ata_identify(a, w);
  printf("ata: words 82/85 = 0x%04x/0x%04x\n", w[82], w[85]);
  c = (devemu_cmd) { .tag = 20, .iov = &wr, .niov = 1 };
  c.u.ata = (devemu_ata_tf) { .command = 0x35, .count = 16, .lba_lo = 128 };
  submit(a, &c);
  c = (devemu_cmd) { .tag = 21 };
  c.u.ata = (devemu_ata_tf) { .command = 0xEF, .feature = 0x82 };
  submit(a, &c);
  c = (devemu_cmd) { .tag = 22 };
  c.u.ata = (devemu_ata_tf) { .command = 0xEA };
  submit(a, &c);
  int r = run_loop(b);

  devemu_dev_free(v);
  devemu_dev_free(n);
  devemu_dev_free(a);
  devemu_backend_close(b);
  return r == 0 ? 0 : 1;
}
