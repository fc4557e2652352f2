#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "bufpool.h"

#define MIN_SHIFT   12                   /* 4 KiB */
#define MAX_SHIFT   26                   /* 64 MiB */
#define NCLASSES    (MAX_SHIFT - MIN_SHIFT + 1)
#define MAX_CACHED  (64u << 20)          /* bytes kept per thread */

struct freebuf {
  struct freebuf *next;
};

static __thread struct freebuf *classes[NCLASSES];
static __thread size_t cached;

/* A reactor thread that ends frees what it kept. */
static pthread_key_t exit_key;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;

static void
thread_exit(void *unused)
{
  (void) unused;
  for (int c = 0; c < NCLASSES; c++)
    while (classes[c]) {
      struct freebuf *b = classes[c];
      classes[c] = b->next;
      free(b);
    }
  cached = 0;
}

static void
make_key(void)
{
  pthread_key_create(&exit_key, thread_exit);
}

static int
class_of(size_t len)
{
  int shift = MIN_SHIFT;
  while (((size_t) 1 << shift) < len)
    shift++;
  return shift - MIN_SHIFT;
}

void *
bufpool_get(size_t len, size_t *cap)
{
  int c = class_of(len);
  if (c >= NCLASSES)
    return NULL;
  *cap = (size_t) 1 << (c + MIN_SHIFT);
  struct freebuf *b = classes[c];
  if (b) {
    classes[c] = b->next;
    cached -= *cap;
    return b;
  }
  void *p;
  return posix_memalign(&p, 4096, *cap) == 0 ? p : NULL;
}

void
bufpool_put(void *buf, size_t cap)
{
  if (cached + cap > MAX_CACHED) {
    free(buf);
    return;
  }
  if (cached == 0) {
    pthread_once(&exit_once, make_key);
    pthread_setspecific(exit_key, (void *) 1);
  }
  int c = class_of(cap);
  struct freebuf *b = buf;
  b->next = classes[c];
  classes[c] = b;
  cached += cap;
}
