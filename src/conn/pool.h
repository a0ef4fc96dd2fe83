/*
 * pool: the process's worker threads, which run TETHER_CONTEXT_POOL work (services and
 * object releases that may block) and a client's reconnect attempts.
 *
 * Any thread may post: a thread that reads a request (the I/O thread, or a caller
 * holding a connection's reader role) hands it to a worker directly, and the worker
 * that ran it wakes nobody afterwards. While there is nothing to run, one worker waits
 * by reading a connection of a source (a client's connection, tether__pool_add_source)
 * instead of sleeping on the queue: a request for the pool then wakes that worker
 * alone, which runs it and writes the reply, as a raw ping-pong wakes one thread. A
 * caller that wants the connection's reader role takes it from that worker (conn/link.h,
 * TETHER__ROLE_IDLE), which then leaves the connection to callers for a while. Threads
 * start on demand, up to
 * $TETHER_POOL_SIZE (else $UV_THREADPOOL_SIZE, else 4; 1 to 128), and wait for work
 * until the process ends; a forked child starts its own again when it first posts.
 */
#ifndef TETHER_POOL_H
#define TETHER_POOL_H

#include "conn/ioloop.h"
#include "conn/link.h"

/* Run task->run(task) on a worker thread, tasks in posting order. The task must stay
 * valid until it has run. Returns 0, or -EAGAIN when no worker thread could be started
 * (the task is not queued). Thread: any. */
int tether__pool_post(tether__task *task);

/* The most worker threads (read from the environment once). Thread: any. */
unsigned tether__pool_size(void);

/* A connection an idle worker may read while it waits (embedded in its owner). */
typedef struct tether__pool_source {
    struct tether__pool_source *next; /* the pool's */
    tether__link *link;
    /* The owner's reference count: the pool holds one while it lists the source, and a
     * worker one while it reads it. */
    void (*hold)(struct tether__pool_source *src);
    void (*drop)(struct tether__pool_source *src);
} tether__pool_source;

/* List src for idle workers to read (holds it). Thread: any. */
void tether__pool_add_source(tether__pool_source *src);
/* Unlist src (drops it); a worker reading it stops soon (its link closing wakes it).
 * Thread: any. */
void tether__pool_remove_source(tether__pool_source *src);

#endif
