/*
 * mainq: work queued for an application's main thread, behind one pollable fd.
 *
 * Producers on any thread push work; the main thread runs it inside dispatch(budget).
 * The fd (a wake object of platform.h: an eventfd on Linux, a pipe's read end on the
 * portable build) is readable exactly while work is queued: it is raised on the
 * empty-to-non-empty transition and lowered when dispatch empties the queue, both
 * under the queue lock, so it is level-triggered and never raised spuriously for long.
 *
 * Work is kept per lane (one lane per connection plus one for everything else) and
 * lanes are served round-robin, one item per turn, so a chatty client cannot starve
 * the others.
 */
#ifndef TETHER_MAINQ_H
#define TETHER_MAINQ_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "platform/platform.h"

typedef struct tether__work {
    struct tether__work *next;
    /* Runs on the main thread inside dispatch. */
    void (*run)(struct tether__work *work);
    /* Called instead of run when the queue is torn down with the work still queued. */
    void (*discard)(struct tether__work *work);
} tether__work;

typedef struct tether__lane {
    struct tether__lane *next_active;
    tether__work *head, *tail;
    bool active;
} tether__lane;

typedef struct tether__mainq tether__mainq;

int tether__mainq_new(tether__mainq **ret);
/* Discards what is still queued, then frees. */
void tether__mainq_free(tether__mainq *q);
/* Discard everything queued (for example when a host stops). */
void tether__mainq_discard_all(tether__mainq *q);

int tether__mainq_get_fd(const tether__mainq *q);
/* The wake object behind the fd, to poll beside other fds; never drain it. */
const tether__wake *tether__mainq_wake(const tether__mainq *q);
/* Queue work on a lane (NULL: the shared lane). Thread: any. */
void tether__mainq_push(tether__mainq *q, tether__lane *lane, tether__work *work);
/*
 * While quiet, work the calling thread queues itself does not raise the fd: a main
 * thread that reads its connection while it waits (rpc/main_wait.c) and dispatches
 * right after saves the write that raises the fd and the read that lowers it, per
 * request. Work queued by other threads raises it as always; ending the quiet raises it
 * for whatever is still queued. Thread: the main thread.
 */
void tether__mainq_quiet(tether__mainq *q, bool quiet);
/* Number of queued items. Thread: any. */
size_t tether__mainq_count(tether__mainq *q);

/*
 * Run queued work until the queue is empty or budget_usec has passed (checked after
 * each item; at least one item runs). Returns 0 when drained, 1 when work remains,
 * -EBUSY when called from inside a dispatched item.
 */
int tether__mainq_dispatch(tether__mainq *q, uint64_t budget_usec);

/* Wait until work is queued or timeout_usec passes. Returns 1 if work is queued, else 0. */
int tether__mainq_wait(tether__mainq *q, uint64_t timeout_usec);

#endif
