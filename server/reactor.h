/* Reactors: one thread each, with a libev loop, an io_uring ring and the
 * plumbing that brings io_uring and worker completions back to the loop. */
#ifndef NBDS_SERVER_REACTOR_H
#define NBDS_SERVER_REACTOR_H

#include <stdbool.h>
#include <ev.h>

#include "nbdstack/reactor.h"

struct nbds_reactor;

/* Create reactor `index`.  Reactor 0 runs on the main thread (it also owns
 * the listeners and signals); the others get their own threads from
 * reactor_start().  With want_uring the reactor sets up a ring, and fails
 * if the kernel refuses one. */
struct nbds_reactor *reactor_create(int index, bool want_uring);
void reactor_start(struct nbds_reactor *r);
/* Keep polling for up to usec microseconds after handling an event before
 * the loop sleeps (0: sleep at once, the default).  Before reactor_start. */
void reactor_set_poll(struct nbds_reactor *r, unsigned usec);
/* Ask a reactor's loop to return, then wait for its thread. */
void reactor_stop(struct nbds_reactor *r);
void reactor_destroy(struct nbds_reactor *r);

int reactor_index(struct nbds_reactor *r);
/* Try to set up an io_uring ring; false when the kernel does not allow it
 * (old kernel, seccomp). */
bool reactor_uring_works(void);

/* Worker pool (workers.c). */
void workers_init(unsigned max_threads);
void workers_shutdown(void);
/* Called by a worker: hand a finished work item back to its reactor. */
void reactor_work_done(struct nbds_work *w);

#endif
