/*
 * main_wait: a main thread waiting for its work reads the connection itself.
 *
 * A client's main thread that waits for MAIN work (tether_client_wait: a spawned
 * child's serving loop, a script in serve="manual") would otherwise sleep on the main
 * queue's fd while the I/O thread reads each request and queues it: two threads woken
 * per request. Holding the connection's reader role instead, it reads the request,
 * queues it from here (tether__conn_take_request) and runs it in the dispatch that
 * follows, writing the reply itself: one wake-up, like a raw ping-pong. Frames it may
 * not act on go to the I/O thread in order, as a synchronous caller's do (conn/link.h).
 *
 * A main thread that waits in an event loop instead (asyncio, GLib, Qt) cannot block
 * here: it holds the role as IDLE while its loop is idle, watching the socket from the
 * loop, and reads when the loop says the socket is readable (tether__conn_loop_*). A
 * caller of another thread takes the role from it at once; the loop finds out at its
 * next read and stops watching until it holds the role again.
 */
#define _GNU_SOURCE
#include <errno.h>

#include "rpc/conn.h"
#include "tether.h"

/* How long to wait on the queue alone while another thread holds the role, before
 * trying to take it again: the holder reads and queues our work meanwhile. */
#define FOLLOW_SLICE_USEC 20000ull

static int
wait_ms_until(uint64_t deadline, uint64_t now, uint64_t cap_usec)
{
    uint64_t left = deadline - now;
    if (left > cap_usec) {
        left = cap_usec;
    }
    return (int)((left + 999) / 1000);
}

int
tether__conn_wait_main(tether_conn *c, tether__mainq *q, uint64_t timeout_usec)
{
    tether__link *l = &c->link;
    const tether__wake *queued = tether__mainq_wake(q);
    uint64_t start = tether_now_usec();
    uint64_t deadline = timeout_usec > UINT64_MAX - start ? UINT64_MAX : start + timeout_usec;
    if (tether__mainq_count(q) > 0) {
        return 1;
    }
    for (;;) {
        pthread_mutex_lock(&l->lock);
        bool leading = tether__link_role_take_locked(l);
        pthread_mutex_unlock(&l->lock);
        uint64_t now = tether_now_usec();
        if (!leading) {
            if (tether__link_is_closed(l)) {
                return -ENOTCONN;
            }
            uint64_t left = now < deadline ? deadline - now : 0;
            if (tether__mainq_wait(q, left < FOLLOW_SLICE_USEC ? left : FOLLOW_SLICE_USEC) ||
                left <= FOLLOW_SLICE_USEC) {
                return tether__mainq_count(q) > 0;
            }
            continue;
        }
        bool borrowed = tether__link_lead_begin(l);
        int r = 0;
        while (r >= 0 && tether__link_process_input(l) >= 0 && tether__mainq_count(q) == 0 &&
               (now = tether_now_usec()) < deadline) {
            /* The queue's fd is level-triggered and lowered by dispatch: kept raised. */
            r = tether__link_read_wait(l, queued, true, wait_ms_until(deadline, now, 1000000));
        }
        tether__link_lead_end(l, borrowed);
        pthread_mutex_lock(&l->lock);
        tether__link_role_release_locked(l);
        pthread_mutex_unlock(&l->lock);
        if (tether__mainq_count(q) > 0) {
            return 1;
        }
        if (tether__link_is_closed(l)) {
            return -ENOTCONN;
        }
        if (tether_now_usec() >= deadline) {
            return 0;
        }
    }
}

int
tether__conn_loop_hold(tether_conn *c)
{
    int r = tether__link_idle_hold(&c->link, NULL);
    return r == 0 ? c->link.fd : r == TETHER__IDLE_BUSY ? -EBUSY : -ENOTCONN;
}

int
tether__conn_loop_read(tether_conn *c, tether__mainq *q, uint64_t budget_usec)
{
    /* What this thread reads and queues runs below: no need to raise the queue's fd. */
    tether__mainq_quiet(q, true);
    int r = tether__link_idle_read(&c->link, NULL);
    tether__mainq_dispatch(q, budget_usec); /* -EBUSY inside a dispatch: runs after it */
    tether__mainq_quiet(q, false);          /* raises the fd for work left over */
    return r == 0 ? 0 : 1;
}

void
tether__conn_loop_drop(tether_conn *c)
{
    tether__link_idle_drop(&c->link, NULL);
}
