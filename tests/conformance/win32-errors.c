/* Win32 error codes become the errno values the POSIX layer returns for
 * the same conditions, so a client sees the same NBD error from either
 * driver: a full disk is ENOSPC (NBD_ENOSPC), a refused write EPERM or
 * EROFS (NBD_EPERM), an impossible offset EINVAL (NBD_EINVAL).  And a
 * file system without an FSCTL is recognised as such, including Wine's
 * answer.  Prints "N passed, N failed". */
#include <errno.h>
#include <stdio.h>

#include "win32.h"

int
main(void)
{
  static const struct {
    const char *name;
    DWORD error;
    int want;
  } cases[] = {
    { "disk full", ERROR_DISK_FULL, ENOSPC },
    { "disk full (handle)", ERROR_HANDLE_DISK_FULL, ENOSPC },
    { "quota", 1295 /* ERROR_DISK_QUOTA_EXCEEDED */, ENOSPC },
    { "file too large", ERROR_FILE_TOO_LARGE, EFBIG },
    { "access denied", ERROR_ACCESS_DENIED, EPERM },
    { "sharing violation", ERROR_SHARING_VIOLATION, EPERM },
    { "write protected", ERROR_WRITE_PROTECT, EROFS },
    { "negative seek", ERROR_NEGATIVE_SEEK, EINVAL },
    { "invalid parameter", ERROR_INVALID_PARAMETER, EINVAL },
    { "out of memory", ERROR_NOT_ENOUGH_MEMORY, ENOMEM },
    { "not supported", ERROR_NOT_SUPPORTED, ENOTSUP },
    { "CRC error", ERROR_CRC, EIO },
    { "success", ERROR_SUCCESS, 0 },
  };
  unsigned passed = 0, failed = 0;

  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int got = w32_errno(cases[i].error);
    if (got == cases[i].want) {
      passed++;
      printf("ok errno %s\n", cases[i].name);
    }
    else {
      failed++;
      printf("FAIL errno %s: Windows error %lu gave %d, want %d\n",
             cases[i].name, (unsigned long) cases[i].error, got,
             cases[i].want);
    }
  }

  /* FAT says ERROR_INVALID_FUNCTION, Wine 8 ERROR_INVALID_PARAMETER; a
   * real failure is not "unsupported". */
  bool ok = w32_unsupported(ERROR_INVALID_FUNCTION) &&
            w32_unsupported(ERROR_NOT_SUPPORTED) &&
            w32_unsupported(ERROR_INVALID_PARAMETER) &&
            !w32_unsupported(ERROR_DISK_FULL) &&
            !w32_unsupported(ERROR_ACCESS_DENIED);
  if (ok) {
    passed++;
    printf("ok unsupported fsctl\n");
  }
  else {
    failed++;
    printf("FAIL unsupported fsctl\n");
  }

  printf("%u passed, %u failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
