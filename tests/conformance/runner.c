/* Runs the conformance table (tests.c): every test, or those whose name
 * contains argv[1].  Plain C11 and the standard library only, so that it
 * builds with mingw-w64 as well (see conformance.h). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "conformance.h"

static const char *current;  /* the running test's name */
static bool failed;          /* it called conf_fail */

void
conf_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
  va_list ap;

  printf("FAIL %s: %s:%d: %s: ", current, file, line, cond);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  fflush(stdout);
  failed = true;
}

int
main(int argc, char *argv[])
{
  const char *filter = argc > 1 ? argv[1] : NULL;
  unsigned passed = 0, nfailed = 0;

  conf_platform_init();
  for (const struct conf_test *t = conf_tests; t->name; t++) {
    if (filter && !strstr(t->name, filter))
      continue;
    current = t->name;
    failed = false;
    t->fn();
    if (failed)
      nfailed++;
    else {
      passed++;
      printf("ok %s\n", t->name);
    }
    /* A crash in the next test must not lose what this one said. */
    fflush(stdout);
  }
  printf("%u passed, %u failed\n", passed, nfailed);
  fflush(stdout);
  conf_platform_fini();
  return nfailed == 0 ? 0 : 1;
}
