/* How the Win32 layer opens a file for each cache mode, and the alignment
 * direct I/O then needs.
 *
 * Of QEMU's three cache settings only direct I/O is an open flag, as on
 * POSIX: FILE_FLAG_NO_BUFFERING for none and directsync.  Write cache off
 * (writethrough, directsync) is the export's, which makes every write FUA,
 * and no-flush (unsafe) is the cachepolicy layer's; neither changes how
 * the file is opened.  FUA writes go through a second handle opened with
 * FILE_FLAG_WRITE_THROUGH, so they are durable when they complete
 * (native FUA, as RWF_DSYNC is on POSIX). */
#include <string.h>

#include "win32.h"

/* Every handle is overlapped: completions come through the port. */
DWORD
win32file_open_flags(bool direct)
{
  return FILE_ATTRIBUTE_NORMAL | FILE_FLAG_OVERLAPPED |
         (direct ? FILE_FLAG_NO_BUFFERING : 0);
}

DWORD
win32file_fua_flags(bool direct)
{
  return win32file_open_flags(direct) | FILE_FLAG_WRITE_THROUGH;
}

/* The direct setting of a cache mode, as qemu-nbd's --cache has it.
 * False for a name that is not a mode. */
bool
win32file_mode_direct(const char *mode, bool *direct)
{
  static const struct {
    const char *name;
    bool direct;
  } modes[] = {
    { "writeback", false },
    { "writethrough", false },
    { "none", true },
    { "directsync", true },
    { "unsafe", false },
  };
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
    if (strcmp(mode, modes[i].name) == 0) {
      *direct = modes[i].direct;
      return true;
    }
  return false;
}

/* Wine keeps FILE_FLAG_WRITE_THROUGH and FILE_FLAG_NO_BUFFERING on the
 * handle (FileModeInformation reports them) but opens the host file
 * without O_DSYNC or O_DIRECT. */
bool
w32_is_wine(void)
{
  HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
  return ntdll && GetProcAddress(ntdll, "wine_get_version");
}

static bool
power_of_two(uint32_t x)
{
  return x != 0 && (x & (x - 1)) == 0;
}

/* The logical sector size, which is what FILE_FLAG_NO_BUFFERING wants
 * offsets, lengths and buffer addresses aligned to.  FileStorageInfo
 * (Windows 8 and later) answers for the file itself; Wine 8 does not
 * implement it, and then the volume's bytes per sector from
 * GetDiskFreeSpaceW (Wine reports 512). */
static uint32_t
sector_size(const wchar_t *wpath, struct w32_file *f)
{
  FILE_STORAGE_INFO si;
  if (GetFileInformationByHandleEx(f->h, FileStorageInfo, &si, sizeof si) &&
      si.LogicalBytesPerSector > 0)
    return si.LogicalBytesPerSector;

  wchar_t root[MAX_PATH];
  DWORD spc, bps, free_clusters, clusters;
  if (GetVolumePathNameW(wpath, root, MAX_PATH) &&
      GetDiskFreeSpaceW(root, &spc, &bps, &free_clusters, &clusters))
    return bps;
  return 0;
}

/* Fill f->align for a handle opened with FILE_FLAG_NO_BUFFERING, then
 * check that one aligned read at offset 0 works.  -1 after nbds_error()
 * when direct I/O cannot be used. */
int
w32_direct_probe(const char *path, const wchar_t *wpath, struct w32_file *f)
{
  uint32_t align = sector_size(wpath, f);
  if (!power_of_two(align) || align > 65536) {
    nbds_error("'%s': the filesystem does not support direct I/O "
               "(no usable sector size: %u); use --cache=writeback or "
               "--cache=writethrough instead", path, align);
    return -1;
  }
  f->align = align;

  void *buf = w32_aligned_alloc(align, align);
  if (!buf) {
    nbds_error("out of memory");
    return -1;
  }
  DWORD n;
  bool ok = w32_sync_io(f->h, false, buf, align, 0, &n);
  DWORD error = GetLastError();
  w32_aligned_free(buf);
  if (!ok && error != ERROR_HANDLE_EOF) {
    char msg[300];
    nbds_error("'%s': the filesystem does not support direct I/O: %s; "
               "use --cache=writeback or --cache=writethrough instead",
               path, w32_strerror(error, msg, sizeof msg));
    return -1;
  }
  return 0;
}
