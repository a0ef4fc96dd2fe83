/*
 * pool: the process's worker threads, which run TETHER_CONTEXT_POOL work (services and
 * object releases that may block) and a client's reconnect attempts.
 *
 * Any thread may post: a thread that reads a request (the I/O thread, or a caller
 * holding a connection's reader role) hands it to a worker directly, and the worker
 * that ran it wakes nobody afterwards. Threads start on demand, up to
 * $TETHER_POOL_SIZE (else $UV_THREADPOOL_SIZE, else 4; 1 to 128), and wait for work
 * until the process ends; a forked child starts its own again when it first posts.
 */
#ifndef TETHER_POOL_H
#define TETHER_POOL_H

#include "conn/ioloop.h"

/* Run task->run(task) on a worker thread, tasks in posting order. The task must stay
 * valid until it has run. Returns 0, or -EAGAIN when no worker thread could be started
 * (the task is not queued). Thread: any. */
int tether__pool_post(tether__task *task);

/* The most worker threads (read from the environment once). Thread: any. */
unsigned tether__pool_size(void);

#endif
