/* The worker pool: blocking work (syscalls io_uring cannot do, the threads
 * fallback, nbdkit plugins) runs here and completes back on the reactor
 * that submitted it.  Threads start on demand up to a maximum and stay. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "reactor.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static struct nbds_work *queue, **queue_tail = &queue;
static unsigned max_threads = 16, threads, idle;
static bool stopping;
static pthread_t *tids;

static void *
worker(void *arg)
{
  (void) arg;
  pthread_mutex_lock(&lock);
  for (;;) {
    while (!queue && !stopping) {
      idle++;
      pthread_cond_wait(&cond, &lock);
      idle--;
    }
    if (!queue)
      break;
    struct nbds_work *w = queue;
    queue = w->next;
    if (!queue)
      queue_tail = &queue;
    pthread_mutex_unlock(&lock);
    w->fn(w);
    reactor_work_done(w);
    pthread_mutex_lock(&lock);
  }
  pthread_mutex_unlock(&lock);
  return NULL;
}

void
workers_init(unsigned max)
{
  max_threads = max ? max : 1;
  tids = calloc(max_threads, sizeof *tids);
  if (!tids)
    abort();
}

void
nbds_work_submit(struct nbds_work *w)
{
  w->reactor = nbds_reactor_self();
  w->next = NULL;
  pthread_mutex_lock(&lock);
  *queue_tail = w;
  queue_tail = &w->next;
  if (idle == 0 && threads < max_threads) {
    if (pthread_create(&tids[threads], NULL, worker, NULL) == 0)
      threads++;
    else if (threads == 0) {
      /* Without a single worker the request would never finish. */
      nbds_log_error("cannot start a worker thread: %s", strerror(errno));
      abort();
    }
  }
  pthread_cond_signal(&cond);
  pthread_mutex_unlock(&lock);
}

void
workers_shutdown(void)
{
  pthread_mutex_lock(&lock);
  stopping = true;
  pthread_cond_broadcast(&cond);
  unsigned n = threads;
  pthread_mutex_unlock(&lock);
  for (unsigned i = 0; i < n; i++)
    pthread_join(tids[i], NULL);
  free(tids);
  tids = NULL;
}
