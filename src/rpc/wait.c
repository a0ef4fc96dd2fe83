/*
 * wait: a synchronous call waits for its response here, reading it itself when no
 * other thread holds the connection's reader role (conn/link.h), and otherwise
 * sleeping on its wake object until the role holder completes the call or gives the role
 * up. Meanwhile it runs call-backs of its own chain (chain.h), which the peer may be
 * waiting for, asks the caller's interrupt callback whether to go on, and gives up when
 * the call's silence bound or deadline passes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>

#include "rpc/call.h"
#include "util/error.h"

/* When the waiter must wake: the call's expiry, or its next interrupt check. */
static uint64_t
pending_wake(const tether__pending *p)
{
    uint64_t expiry = tether__pending_expiry(p);
    return p->next_interrupt_usec < expiry ? p->next_interrupt_usec : expiry;
}

/* Give up on the call: forget it, tell the callee, complete it with status. Conn lock
 * held; drops and retakes it. */
static void
abandon_locked(tether_conn *c, tether__pending *p, int status, const char *type,
               const char *message)
{
    tether__pending *taken = tether__pending_take(c, p->id);
    pthread_mutex_unlock(&c->link.lock);
    if (taken) {
        if (p->sent) {
            tether__send_cancel(c, p->id); /* the peer never saw one still in the backlog */
        }
        tether__pending_complete(c, p, status, NULL, type, message, NULL);
    }
    pthread_mutex_lock(&c->link.lock);
}

/* The call timed out. Conn lock held; drops and retakes it. */
static void
expire_locked(tether_conn *c, tether__pending *p)
{
    bool deadline = p->deadline_usec <= tether_now_usec();
    abandon_locked(c, p, -ETIMEDOUT, TETHER__ERR_TIMEOUT, tether__expiry_reason(p, deadline));
}

/*
 * Ask the caller's interrupt callback, if its time has come, whether to go on. Conn
 * lock not held. Returns true when the call was given up (p is complete).
 */
static bool
interrupted(tether_conn *c, tether__pending *p)
{
    uint64_t now = tether_now_usec();
    if (!p->interrupt || now < p->next_interrupt_usec) {
        return false;
    }
    p->next_interrupt_usec = now + p->interrupt_interval_usec;
    if (!p->interrupt(p->interrupt_userdata)) {
        return false;
    }
    pthread_mutex_lock(&c->link.lock);
    if (!p->done) {
        abandon_locked(c, p, -ECANCELED, TETHER__ERR_CANCELLED, "the call was interrupted");
    }
    pthread_mutex_unlock(&c->link.lock);
    return true;
}

/* Lead: read the socket until p completes. Conn lock not held; the role is ours. */
static void
lead(tether_conn *c, tether__pending *p)
{
    for (;;) {
        if (tether__link_process_input(&c->link) < 0) {
            return;
        }
        pthread_mutex_lock(&c->link.lock);
        bool done = p->done;
        uint64_t expiry = tether__pending_expiry(p);
        pthread_mutex_unlock(&c->link.lock);
        if (done || tether__link_is_closed(&c->link) || interrupted(c, p)) {
            return;
        }
        uint64_t now = tether_now_usec();
        if (now >= expiry) {
            pthread_mutex_lock(&c->link.lock);
            if (!p->done) {
                expire_locked(c, p);
            }
            pthread_mutex_unlock(&c->link.lock);
            return;
        }
        uint64_t wake = pending_wake(p);
        uint64_t wait_ms = wake <= now ? 0 : (wake - now + 999) / 1000;
        int r =
            tether__link_read_wait(&c->link, &p->wake, false, wait_ms > 1000 ? 1000 : (int)wait_ms);
        if (r != TETHER__LINK_READ) {
            /* Closed, or a call-back of our chain was delivered: give the role back and
             * run it. */
            return;
        }
    }
}

/* Milliseconds from now until wake, at most a second (the interrupt and close checks). */
static int
wait_ms_until(uint64_t wake)
{
    uint64_t now = tether_now_usec();
    if (wake == UINT64_MAX) {
        return 1000;
    }
    if (wake <= now) {
        return 0;
    }
    uint64_t ms = (wake - now + 999) / 1000;
    return ms > 1000 ? 1000 : (int)ms;
}

/*
 * Wait for a synchronous call's response, reading it ourselves when nobody else holds
 * the reader role. p is in the pending table. Returns with p completed.
 */
void
tether__conn_wait(tether_conn *c, tether__pending *p)
{
    tether__link *l = &c->link;
    pthread_mutex_lock(&l->lock);
    for (;;) {
        if (p->done) {
            break;
        }
        /* The role taken before the request left (call_sync) is used first: a call-back
         * must never run while this thread holds it, or a nested call would wait for it. */
        bool leading = p->holds_role;
        p->holds_role = false;
        if (!leading) {
            /* Call-backs of our own chain first: the peer may be waiting for them. */
            tether__work *work = p->waiter ? tether__waiter_take(p->waiter) : NULL;
            if (work) {
                pthread_mutex_unlock(&l->lock);
                work->run(work);
                pthread_mutex_lock(&l->lock);
                continue;
            }
            leading = tether__link_role_take_locked(l);
        }
        if (leading) {
            pthread_mutex_unlock(&l->lock);
            bool borrowed = tether__link_lead_begin(l);
            lead(c, p);
            tether__link_lead_end(l, borrowed);
            pthread_mutex_lock(&l->lock);
            tether__link_role_release_locked(l);
            continue;
        }
        /* Follow: the role holder completes us, or raises our wake object when the role
         * comes free; a delivered call-back raises it too. */
        p->role_wait.wake = &p->wake;
        tether__link_waiter_add_locked(l, &p->role_wait);
        int wait_ms = wait_ms_until(pending_wake(p));
        pthread_mutex_unlock(&l->lock);
        struct pollfd pfd = {.fd = p->wake.fd, .events = POLLIN};
        if (poll(&pfd, 1, wait_ms) > 0) {
            tether__wake_drain(&p->wake);
        }
        pthread_mutex_lock(&l->lock);
        tether__link_waiter_remove_locked(l, &p->role_wait);
        if (!p->done && tether_now_usec() >= tether__pending_expiry(p)) {
            expire_locked(c, p);
        }
        if (!p->done && p->interrupt) {
            pthread_mutex_unlock(&l->lock);
            interrupted(c, p);
            pthread_mutex_lock(&l->lock);
        }
    }
    if (p->holds_role) { /* done before this thread ever read: a close completed it */
        p->holds_role = false;
        tether__link_role_release_locked(l);
    }
    /* Pass the role on to another waiter if it is free. */
    if (l->role == TETHER__ROLE_FREE && l->role_waiters) {
        tether__wake_raise(l->role_waiters->wake);
    }
    pthread_mutex_unlock(&l->lock);
}
