/* ATA constants (ACS-3; Linux include/linux/ata.h names). */
#ifndef DEVEMU_ATA_H
#define DEVEMU_ATA_H

#define ATA_CMD_DSM              0x06
#define ATA_CMD_READ             0x20   /* READ SECTORS */
#define ATA_CMD_READ_EXT         0x24
#define ATA_CMD_READ_DMA_EXT     0x25
#define ATA_CMD_READ_NATIVE_MAX_EXT 0x27
#define ATA_CMD_READ_MULTI_EXT   0x29
#define ATA_CMD_WRITE            0x30   /* WRITE SECTORS */
#define ATA_CMD_WRITE_EXT        0x34
#define ATA_CMD_WRITE_DMA_EXT    0x35
#define ATA_CMD_WRITE_MULTI_EXT  0x39
#define ATA_CMD_WRITE_FUA_EXT    0x3D   /* WRITE DMA FUA EXT */
#define ATA_CMD_VERIFY           0x40
#define ATA_CMD_VERIFY_EXT       0x42
#define ATA_CMD_READ_MULTI       0xC4
#define ATA_CMD_WRITE_MULTI      0xC5
#define ATA_CMD_SET_MULTI        0xC6
#define ATA_CMD_READ_DMA         0xC8
#define ATA_CMD_WRITE_DMA        0xCA
#define ATA_CMD_WRITE_MULTI_FUA_EXT 0xCE
#define ATA_CMD_FLUSH            0xE7
#define ATA_CMD_FLUSH_EXT        0xEA
#define ATA_CMD_IDENTIFY         0xEC
#define ATA_CMD_SET_FEATURES     0xEF
#define ATA_CMD_READ_NATIVE_MAX  0xF8

#define ATA_DSM_TRIM             0x01   /* FEATURE bit 0 */
#define ATA_DSM_MAX_BLOCKS       8      /* IDENTIFY word 105 */
#define ATA_MAX_MULT             16     /* IDENTIFY word 47 */

#define SETFEATURES_WC_ON        0x02
#define SETFEATURES_WC_OFF       0x82

#define ATA_DEV_LBA              0x40   /* DEVICE register: LBA mode */
#define ATA_STATUS_OK            (DEVEMU_ATA_DRDY | DEVEMU_ATA_DSC)
#define ATA_STATUS_ERR           (DEVEMU_ATA_DRDY | DEVEMU_ATA_ERR)

#endif
