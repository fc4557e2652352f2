/* nbdstack — what a layer may ask of the reactor it runs on.
 *
 * Each reactor is one thread with a libev loop, an io_uring ring and an
 * eventfd that wakes the loop when the ring has completions.  A layer
 * submits its I/O on the ring of the reactor that called it, and blocking
 * work (syscalls io_uring cannot do, the threads fallback, nbdkit plugins)
 * goes to the worker pool and completes back on the same reactor.
 */
#ifndef NBDSTACK_REACTOR_H
#define NBDSTACK_REACTOR_H

#include <stdbool.h>
#ifndef _WIN32
#include <liburing.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

struct nbds_reactor;

/* The reactor of the calling thread, or NULL outside reactors. */
struct nbds_reactor *nbds_reactor_self(void);

#ifndef _WIN32
/* The reactor's libev loop, for a layer that watches descriptors of its
 * own (the upstream NBD layer's libnbd sockets). */
struct ev_loop;
struct ev_loop *nbds_reactor_loop(struct nbds_reactor *r);
#endif

/* Run fn(arg) on reactor r's thread, soon.  Safe from any thread: this is
 * how work finished on one reactor (or a worker) completes a request that
 * another reactor submitted. */
void nbds_reactor_post(struct nbds_reactor *r, void (*fn)(void *), void *arg);

/* An io_uring operation: its completion callback gets the CQE's res. */
struct nbds_uring_op {
  void (*complete)(struct nbds_uring_op *op, int res);
};

#ifndef _WIN32
/* True when the calling reactor has an io_uring ring. */
bool nbds_uring_available(void);

/* An SQE on the calling reactor's ring, tied to op.  Submission is batched:
 * the reactor submits everything once per loop iteration.  Never NULL (the
 * ring is submitted to make room when it is full). */
struct io_uring_sqe *nbds_uring_sqe(struct nbds_uring_op *op);
#endif

/* Work for the worker pool: fn runs on a worker thread, then done runs on
 * the reactor that called nbds_work_submit(). */
struct nbds_work {
  void (*fn)(struct nbds_work *w);
  void (*done)(struct nbds_work *w);
  /* Internal. */
  struct nbds_reactor *reactor;
  struct nbds_work *next;
};

void nbds_work_submit(struct nbds_work *w);

#ifdef __cplusplus
}
#endif

#endif
