/*
 * ioloop: the process's one I/O thread, a libuv loop shared by every host and client
 * of the process and reference counted: the first acquire starts the thread, the last
 * release from outside it stops and joins it.
 *
 * libuv handles are not thread-safe, so other threads never touch them: they post a
 * task, which runs on the I/O thread in posting order (a mutex-guarded queue plus one
 * coalescing uv_async_t).
 */
#ifndef TETHER_IOLOOP_H
#define TETHER_IOLOOP_H

#include <stdbool.h>
#include <uv.h>

typedef struct tether__ioloop tether__ioloop;

/* A unit of work for the I/O thread. Embed it in the object it concerns. */
typedef struct tether__task {
    struct tether__task *next;
    void (*run)(struct tether__task *task);
} tether__task;

int tether__ioloop_acquire(tether__ioloop **ret);
void tether__ioloop_release(tether__ioloop *loop);

uv_loop_t *tether__ioloop_uv(tether__ioloop *loop);
bool tether__ioloop_in_thread(const tether__ioloop *loop);

/* Queue task to run on the I/O thread. The task must stay valid until it has run. */
void tether__ioloop_post(tether__ioloop *loop, tether__task *task);

/* Run fn(arg) on the I/O thread and wait for it; runs inline when already there. */
void tether__ioloop_run_sync(tether__ioloop *loop, void (*fn)(void *arg), void *arg);

/* Bumped in every child after fork(): objects compare it with the value they saw. */
unsigned tether__fork_generation(void);

#endif
