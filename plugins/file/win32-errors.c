/* Win32 error codes as errno values.  The server turns errno values into
 * NBD errors (nbd_errno_to_wire), so each condition maps to the value the
 * POSIX layer returns for it: a full disk is ENOSPC, a refused write is
 * EPERM (the POSIX layer's EROFS and EPERM are both NBD_EPERM), an offset
 * the file system cannot take is EINVAL. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "win32.h"

/* Missing from mingw-w64's winerror.h. */
#ifndef ERROR_DISK_QUOTA_EXCEEDED
#define ERROR_DISK_QUOTA_EXCEEDED 1295
#endif

int
w32_errno(DWORD error)
{
  switch (error) {
  case ERROR_SUCCESS:
    return 0;
  case ERROR_DISK_FULL:
  case ERROR_HANDLE_DISK_FULL:
  case ERROR_DISK_QUOTA_EXCEEDED:
    return ENOSPC;
  case ERROR_FILE_TOO_LARGE:
    return EFBIG;
  case ERROR_ACCESS_DENIED:
  case ERROR_SHARING_VIOLATION:
  case ERROR_LOCK_VIOLATION:
    return EPERM;
  case ERROR_WRITE_PROTECT:
    return EROFS;
  case ERROR_NEGATIVE_SEEK:
  case ERROR_INVALID_PARAMETER:
  case ERROR_SEEK:
    return EINVAL;
  case ERROR_NOT_ENOUGH_MEMORY:
  case ERROR_OUTOFMEMORY:
  case ERROR_NO_SYSTEM_RESOURCES:
  case ERROR_WORKING_SET_QUOTA:
    return ENOMEM;
  case ERROR_NOT_SUPPORTED:
  case ERROR_INVALID_FUNCTION:
    return ENOTSUP;
  case ERROR_FILE_NOT_FOUND:
  case ERROR_PATH_NOT_FOUND:
    return ENOENT;
  default:
    return EIO;
  }
}

/* Did an FSCTL fail because this file system (or Wine) lacks it?  NTFS
 * answers ERROR_INVALID_FUNCTION on FAT; Wine 8 answers
 * ERROR_INVALID_PARAMETER for FSCTLs it does not implement.  Our
 * arguments are always valid, so that can only mean "not here". */
bool
w32_unsupported(DWORD error)
{
  return error == ERROR_INVALID_FUNCTION || error == ERROR_NOT_SUPPORTED ||
         error == ERROR_INVALID_PARAMETER;
}

/* A message for open-time errors: the system's text and the number. */
const char *
w32_strerror(DWORD error, char *buf, size_t len)
{
  char text[256];
  DWORD n = FormatMessageA(FORMAT_MESSAGE_FROM_SYSTEM |
                           FORMAT_MESSAGE_IGNORE_INSERTS,
                           NULL, error, 0, text, sizeof text, NULL);
  while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r' ||
                   text[n - 1] == '.'))
    n--;
  text[n] = '\0';
  snprintf(buf, len, "%s (Windows error %lu)",
           n > 0 ? text : strerror(w32_errno(error)), (unsigned long) error);
  return buf;
}
