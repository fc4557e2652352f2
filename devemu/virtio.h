/* virtio-blk constants (virtio 1.2, section 5.2). */
#ifndef DEVEMU_VIRTIO_H
#define DEVEMU_VIRTIO_H

#define VIRTIO_BLK_T_IN           0
#define VIRTIO_BLK_T_OUT          1
#define VIRTIO_BLK_T_FLUSH        4
#define VIRTIO_BLK_T_FLUSH_OUT    5   /* legacy alias */
#define VIRTIO_BLK_T_GET_ID       8
#define VIRTIO_BLK_T_DISCARD      11
#define VIRTIO_BLK_T_WRITE_ZEROES 13
#define VIRTIO_BLK_T_BARRIER      0x80000000u

#define VIRTIO_BLK_WZ_UNMAP       1u
#define VIRTIO_BLK_ID_BYTES       20

#define VIRTIO_BLK_F_SEG_MAX      2
#define VIRTIO_BLK_F_RO           5
#define VIRTIO_BLK_F_BLK_SIZE     6
#define VIRTIO_BLK_F_FLUSH        9
#define VIRTIO_BLK_F_TOPOLOGY     10
#define VIRTIO_BLK_F_CONFIG_WCE   11
#define VIRTIO_BLK_F_DISCARD      13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

/* Offsets in config space */
#define VIRTIO_CFG_CAPACITY        0
#define VIRTIO_CFG_SEG_MAX         12
#define VIRTIO_CFG_BLK_SIZE        20
#define VIRTIO_CFG_PHYS_EXP        24
#define VIRTIO_CFG_MIN_IO          26
#define VIRTIO_CFG_OPT_IO          28
#define VIRTIO_CFG_WRITEBACK       32
#define VIRTIO_CFG_NUM_QUEUES      34
#define VIRTIO_CFG_MAX_DISCARD     36
#define VIRTIO_CFG_MAX_DISCARD_SEG 40
#define VIRTIO_CFG_DISCARD_ALIGN   44
#define VIRTIO_CFG_MAX_WZ          48
#define VIRTIO_CFG_MAX_WZ_SEG      52
#define VIRTIO_CFG_WZ_MAY_UNMAP    56
#define VIRTIO_CFG_SIZE            60  /* up to the write zeroes fields */

#define VIRTIO_SEG_MAX  254  /* data segments per request, as QEMU */
#define VIRTIO_MAX_SEGS 256  /* discard / write zeroes segments */

#endif
