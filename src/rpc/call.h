/*
 * call: the calling side of a connection (call.c, wait.c): the pending table that
 * matches responses to outgoing calls, their completion, and futures.
 */
#ifndef TETHER_RPC_CALL_H
#define TETHER_RPC_CALL_H

#include <stdbool.h>
#include <stdint.h>

#include "codec/frame.h"
#include "conn/link.h"
#include "rpc/chain.h"
#include "rpc/conn.h"
#include "tether.h"

/* An outgoing call waiting for its response; in the pending table while unanswered. */
typedef struct tether__pending {
    struct tether__pending *next;  /* hash chain, guarded by conn lock */
    tether__link_waiter role_wait; /* synchronous calls: queued for the reader role */
    uint64_t id;
    uint64_t last_heard_usec; /* request sent, or last PROGRESS */
    uint64_t timeout_usec;    /* silence bound, UINT64_MAX: none */
    uint64_t deadline_usec;   /* absolute, UINT64_MAX: none */
    tether_future *future;    /* async call; NULL for a synchronous one */
    /* Synchronous calls: the waiting thread sleeps on its wake object (platform.h),
     * raised under the conn lock when the call completes or the reader role comes free. */
    tether__wake wake;
    struct tether__waiter *waiter;
    /* Synchronous calls: the reader role was taken before the request left (call.c),
     * so that its reply finds input paused and wakes no other thread. */
    bool holds_role;
    bool sent; /* conn lock: the request is on the wire (window.c), not in the backlog */
    bool done;
    int status;
    tether_value *result;
    tether_error error;
    /* Synchronous calls: tether_call_options.interrupt, and when to call it next. */
    int (*interrupt)(void *userdata);
    void *interrupt_userdata;
    uint64_t interrupt_interval_usec, next_interrupt_usec;
} tether__pending;

void tether__pending_complete(tether_conn *conn, tether__pending *p, int status,
                              tether_value *result, const char *type, const char *message,
                              const char *traceback);
/* The pending table (pending.c), conn lock held: insert p (its id set); take the call
 * of that id out of the table (NULL: none); find it without taking it. */
void tether__pending_insert(tether_conn *conn, tether__pending *p);
tether__pending *tether__pending_take(tether_conn *conn, uint64_t id);
tether__pending *tether__pending_find(tether_conn *conn, uint64_t id);
/* When p times out: its silence bound or its deadline, whichever comes first. */
static inline uint64_t
tether__pending_expiry(const tether__pending *p)
{
    uint64_t silence =
        p->timeout_usec == UINT64_MAX ? UINT64_MAX : p->last_heard_usec + p->timeout_usec;
    return silence < p->deadline_usec ? silence : p->deadline_usec;
}

/* Why p timed out: its deadline, silence, or no room in the peer's window (window.c). */
const char *tether__expiry_reason(const tether__pending *p, bool deadline);
void tether__conn_on_response(tether_conn *conn, const tether__frame *frame);
void tether__conn_on_progress(tether_conn *conn, const tether__frame *frame);
void tether__conn_fail_pending(tether_conn *conn, int status, const char *reason);
int tether__send_cancel(tether_conn *conn, uint64_t id);
void tether__future_complete(tether_future *f, int status, tether_value *result,
                             const char *type, const char *message, const char *traceback);
/* Wait for a synchronous call's response, reading it ourselves when nobody else holds
 * the reader role (wait.c). p is in the pending table; returns with p completed. */
void tether__conn_wait(tether_conn *conn, tether__pending *p);

/*
 * The peer's in-flight window (window.c). claim: p, just inserted, goes out now (true,
 * counted as sent) or waits in the backlog (false), under the conn lock; the table
 * gives the room back when p leaves it. queue: append what encode writes to the backlog as the
 * request id (0: a frame that takes no room, a notification or release), then send what
 * fits. send: send a frame that takes no room at once, or behind what waits. pump: send
 * what the window has room for (after a call completed). clear: drop the backlog (the
 * connection closed; conn lock held). Thread: any but where noted.
 */
bool tether__window_claim_locked(tether_conn *conn, tether__pending *p);
int tether__window_queue(tether_conn *conn, uint64_t id, tether__encode_fn encode, void *arg,
                         const int *fds, uint32_t nfds);
int tether__window_send(tether_conn *conn, tether__encode_fn encode, void *arg, bool flush_now,
                        const int *fds, uint32_t nfds);
void tether__window_pump(tether_conn *conn);
void tether__window_clear_locked(tether_conn *conn);

#endif
