/*
 * mainq: see mainq.h.
 */
#define _GNU_SOURCE
#include "rpc/mainq.h"

#include <errno.h>
#include <poll.h>
#include <unistd.h>

#include "platform/platform.h"
#include "tether.h"
#include "util/alloc.h"

struct tether__mainq {
    pthread_mutex_t lock;
    tether__wake wake;
    tether__lane *active_head, *active_tail; /* guarded by lock */
    tether__lane shared_lane;                /* guarded by lock */
    size_t count;                            /* guarded by lock */
    bool raised;                             /* guarded by lock: the fd is readable */
    bool quiet;                              /* guarded by lock: see tether__mainq_quiet */
    pthread_t quiet_thread;                  /* guarded by lock */
    bool dispatching;                        /* main thread only */
};

int
tether__mainq_new(tether__mainq **ret)
{
    tether__mainq *q = tether__calloc(1, sizeof(*q));
    if (!q) {
        return -ENOMEM;
    }
    int r = tether__wake_init(&q->wake);
    if (r < 0) {
        tether__free(q);
        return r;
    }
    pthread_mutex_init(&q->lock, NULL);
    *ret = q;
    return 0;
}

/* Take the next item round-robin; lock held. */
static tether__work *
pop_locked(tether__mainq *q)
{
    tether__lane *lane = q->active_head;
    if (!lane) {
        return NULL;
    }
    tether__work *w = lane->head;
    lane->head = w->next;
    if (!lane->head) {
        lane->tail = NULL;
    }
    q->active_head = lane->next_active;
    if (!q->active_head) {
        q->active_tail = NULL;
    }
    lane->next_active = NULL;
    if (lane->head) {
        /* Back of the line for this lane's next item. */
        if (q->active_tail) {
            q->active_tail->next_active = lane;
        } else {
            q->active_head = lane;
        }
        q->active_tail = lane;
    } else {
        lane->active = false;
    }
    if (--q->count == 0 && q->raised) {
        tether__wake_drain(&q->wake);
        q->raised = false;
    }
    return w;
}

void
tether__mainq_discard_all(tether__mainq *q)
{
    for (;;) {
        pthread_mutex_lock(&q->lock);
        tether__work *w = pop_locked(q);
        pthread_mutex_unlock(&q->lock);
        if (!w) {
            return;
        }
        w->discard(w);
    }
}

void
tether__mainq_free(tether__mainq *q)
{
    if (!q) {
        return;
    }
    tether__mainq_discard_all(q);
    tether__wake_done(&q->wake);
    pthread_mutex_destroy(&q->lock);
    tether__free(q);
}

const tether__wake *
tether__mainq_wake(const tether__mainq *q)
{
    return &q->wake;
}

int
tether__mainq_get_fd(const tether__mainq *q)
{
    return q->wake.fd;
}

void
tether__mainq_push(tether__mainq *q, tether__lane *lane, tether__work *work)
{
    work->next = NULL;
    pthread_mutex_lock(&q->lock);
    if (!lane) {
        lane = &q->shared_lane;
    }
    if (lane->tail) {
        lane->tail->next = work;
    } else {
        lane->head = work;
    }
    lane->tail = work;
    if (!lane->active) {
        lane->active = true;
        lane->next_active = NULL;
        if (q->active_tail) {
            q->active_tail->next_active = lane;
        } else {
            q->active_head = lane;
        }
        q->active_tail = lane;
    }
    q->count++;
    if (!q->raised && !(q->quiet && pthread_equal(q->quiet_thread, pthread_self()))) {
        tether__wake_raise(&q->wake);
        q->raised = true;
    }
    pthread_mutex_unlock(&q->lock);
}

void
tether__mainq_quiet(tether__mainq *q, bool quiet)
{
    pthread_mutex_lock(&q->lock);
    q->quiet = quiet;
    q->quiet_thread = pthread_self();
    if (!quiet && q->count > 0 && !q->raised) {
        tether__wake_raise(&q->wake);
        q->raised = true;
    }
    pthread_mutex_unlock(&q->lock);
}

size_t
tether__mainq_count(tether__mainq *q)
{
    pthread_mutex_lock(&q->lock);
    size_t n = q->count;
    pthread_mutex_unlock(&q->lock);
    return n;
}

int
tether__mainq_dispatch(tether__mainq *q, uint64_t budget_usec)
{
    if (q->dispatching) {
        return -EBUSY;
    }
    q->dispatching = true;
    uint64_t start = 0;
    bool first = true;
    int more = 0;
    for (;;) {
        pthread_mutex_lock(&q->lock);
        if (q->count == 0) {
            more = 0;
            pthread_mutex_unlock(&q->lock);
            break;
        }
        if (!first && budget_usec != UINT64_MAX && tether_now_usec() - start >= budget_usec) {
            more = 1;
            pthread_mutex_unlock(&q->lock);
            break;
        }
        tether__work *w = pop_locked(q);
        pthread_mutex_unlock(&q->lock);
        if (first) {
            /* Only a non-empty queue reads the clock: an idle dispatch costs a lock. */
            start = tether_now_usec();
            first = false;
        }
        w->run(w);
    }
    q->dispatching = false;
    return more;
}

int
tether__mainq_wait(tether__mainq *q, uint64_t timeout_usec)
{
    uint64_t deadline = timeout_usec == UINT64_MAX ? UINT64_MAX : tether_now_usec() + timeout_usec;
    for (;;) {
        if (tether__mainq_count(q) > 0) {
            return 1;
        }
        uint64_t now = tether_now_usec();
        if (now >= deadline) {
            return 0;
        }
        uint64_t left_ms = deadline == UINT64_MAX ? 1000 : (deadline - now + 999) / 1000;
        struct pollfd p = {.fd = q->wake.fd, .events = POLLIN};
        poll(&p, 1, left_ms > 1000 ? 1000 : (int)left_ms);
    }
}
