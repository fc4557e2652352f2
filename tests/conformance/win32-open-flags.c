/* The Win32 layer opens its file as each of the five cache modes asks:
 * FILE_FLAG_NO_BUFFERING for none and directsync only, and a second,
 * FILE_FLAG_WRITE_THROUGH handle for FUA writes in every mode.  The
 * handles are asked what they really are (NtQueryInformationFile,
 * FileModeInformation, which Wine answers from the flags the handle was
 * opened with), and a write, a FUA write and a flush go through the
 * cachepolicy layer in each mode.  Prints "N passed, N failed". */
#include <stdio.h>
#include <string.h>

#include "win32.h"
#include "conformance.h"

#include <winternl.h>

/* From ntifs.h, which mingw-w64 leaves out of winternl.h. */
#define MODE_INFORMATION_CLASS 16  /* FileModeInformation */
#ifndef FILE_WRITE_THROUGH
#define FILE_WRITE_THROUGH 0x00000002
#endif
#ifndef FILE_NO_INTERMEDIATE_BUFFERING
#define FILE_NO_INTERMEDIATE_BUFFERING 0x00000008
#endif
#define SYNCHRONOUS_IO 0x00000030  /* FILE_SYNCHRONOUS_IO_[NON]ALERT */

typedef NTSTATUS (NTAPI *query_fn)(HANDLE, IO_STATUS_BLOCK *, void *, ULONG,
                                   FILE_INFORMATION_CLASS);

static unsigned passed, failed;
static const char *current;
static bool test_failed;

#define CHECK(cond, ...)                                                \
  do {                                                                  \
    if (!(cond)) {                                                      \
      printf("FAIL %s: %s:%d: %s: ", current, __FILE__, __LINE__, #cond); \
      printf(__VA_ARGS__);                                              \
      printf("\n");                                                     \
      test_failed = true;                                               \
      return;                                                           \
    }                                                                   \
  } while (0)

/* The handle's mode flags; false when the system does not say. */
static bool
handle_mode(HANDLE h, ULONG *mode)
{
  static query_fn query;
  if (!query)
    query = (query_fn) (void (*)(void))
      GetProcAddress(GetModuleHandleW(L"ntdll.dll"), "NtQueryInformationFile");
  IO_STATUS_BLOCK iosb;
  return query && query(h, &iosb, mode, sizeof *mode,
                        (FILE_INFORMATION_CLASS) MODE_INFORMATION_CLASS) >= 0;
}

static int
write_at(struct nbds_layer *l, uint64_t offset, void *buf, size_t len,
         enum nbds_op op, uint32_t flags)
{
  struct iovec v = { buf, len };
  struct nbds_req req = {
    .op = op, .flags = flags, .offset = offset, .count = len,
    .iov = &v, .iovcnt = 1,
  };
  return conf_run(l, &req);
}

/* The flags the layer asks CreateFileW for. */
static void
check_flags(const char *mode, bool want_direct)
{
  bool direct;
  CHECK(win32file_mode_direct(mode, &direct), "not a mode");
  CHECK(direct == want_direct, "direct %d, want %d", direct, want_direct);
  DWORD f = win32file_open_flags(direct);
  DWORD fua = win32file_fua_flags(direct);
  CHECK(!!(f & FILE_FLAG_NO_BUFFERING) == direct, "flags %#lx", f);
  CHECK(!!(fua & FILE_FLAG_NO_BUFFERING) == direct, "FUA flags %#lx", fua);
  CHECK((f & FILE_FLAG_OVERLAPPED) && (fua & FILE_FLAG_OVERLAPPED),
        "flags %#lx, FUA flags %#lx: not overlapped", f, fua);
  CHECK(!(f & FILE_FLAG_WRITE_THROUGH) && (fua & FILE_FLAG_WRITE_THROUGH),
        "flags %#lx, FUA flags %#lx: write-through", f, fua);
}

/* The handles of a real stack, cachepolicy over win32file. */
static void
check_handles(const char *mode, bool direct)
{
  const char *path = conf_scratch_path("flags.img");
  static unsigned char buf[8192];
  memset(buf, 'a', sizeof buf);
  CHECK(conf_file_write(path, 0, buf, sizeof buf), "cannot make the file");

  struct nbds_kv fkv[] = {
    { "file", path }, { "direct", direct ? "on" : "off" },
  };
  struct nbds_layer *file = nbds_layer_open("win32file", NULL, fkv, 2);
  CHECK(file, "open: %s", nbds_last_error());
  struct nbds_kv ckv[] = { { "mode", mode } };
  struct nbds_layer *top = nbds_layer_open("cachepolicy", file, ckv, 1);
  if (!top)
    nbds_layer_close_stack(file);
  CHECK(top, "cachepolicy: %s", nbds_last_error());

  ULONG m, m_fua;
  bool known = handle_mode(win32file_handle(file, false), &m) &&
               handle_mode(win32file_handle(file, true), &m_fua);
  if (!known)
    printf("note: %s: the system does not report FileModeInformation; "
           "only the open flags were checked\n", mode);
  else {
    bool ok = !!(m & FILE_NO_INTERMEDIATE_BUFFERING) == direct &&
              !(m & FILE_WRITE_THROUGH) && !(m & SYNCHRONOUS_IO) &&
              !!(m_fua & FILE_NO_INTERMEDIATE_BUFFERING) == direct &&
              (m_fua & FILE_WRITE_THROUGH) && !(m_fua & SYNCHRONOUS_IO);
    if (!ok)
      nbds_layer_close_stack(top);
    CHECK(ok, "handle mode %#lx, FUA handle mode %#lx", m, m_fua);
  }

  /* The stack works in this mode: a write, a FUA write, a flush. */
  memset(buf, 'w', sizeof buf);
  int e1 = write_at(top, 512, buf, 4096, NBDS_OP_WRITE, 0);
  int e2 = write_at(top, 5, buf, 100, NBDS_OP_WRITE, NBDS_F_FUA);
  struct nbds_req flush = { .op = NBDS_OP_FLUSH };
  int e3 = conf_run(top, &flush);
  nbds_layer_close_stack(top);
  CHECK(!e1 && !e2 && !e3, "write %d, FUA write %d, flush %d", e1, e2, e3);

  unsigned char back[8192];
  CHECK(conf_file_read(path, 0, back, sizeof back), "cannot read back");
  for (size_t i = 0; i < sizeof back; i++) {
    int want = (i >= 5 && i < 105) || (i >= 512 && i < 4608) ? 'w' : 'a';
    CHECK(back[i] == want, "byte %u is %d, want %d", (unsigned) i, back[i],
          want);
  }
  conf_file_remove(path);
}

static void
run(const char *name, void (*fn)(const char *, bool), const char *mode,
    bool direct)
{
  char label[64];
  snprintf(label, sizeof label, "%s %s", name, mode);
  current = label;
  test_failed = false;
  fn(mode, direct);
  if (test_failed)
    failed++;
  else {
    passed++;
    printf("ok %s\n", label);
  }
  fflush(stdout);
}

int
main(void)
{
  /* As qemu-nbd's --cache: direct I/O for none and directsync only. */
  static const struct {
    const char *mode;
    bool direct;
  } modes[] = {
    { "writeback", false },
    { "writethrough", false },
    { "none", true },
    { "directsync", true },
    { "unsafe", false },
  };

  conf_platform_init();
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
    run("open_flags", check_flags, modes[i].mode, modes[i].direct);
    run("handles", check_handles, modes[i].mode, modes[i].direct);
  }
  bool direct;
  current = "unknown_mode";
  if (win32file_mode_direct("auto", &direct)) {
    printf("FAIL unknown_mode: 'auto' is not a mode of the layer\n");
    failed++;
  }
  else {
    passed++;
    printf("ok unknown_mode\n");
  }
  printf("%u passed, %u failed\n", passed, failed);
  fflush(stdout);
  conf_platform_fini();
  return failed == 0 ? 0 : 1;
}
