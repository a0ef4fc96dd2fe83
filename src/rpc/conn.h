/*
 * conn: one connection's RPC state (the "peer" of DESIGN.md), shared by the host (one
 * conn per client) and the client (one conn to its host): the calls it waits for
 * (pending, call.c), the requests it runs (request.c), the objects that crossed it
 * (object.c), and the endpoint it serves.
 *
 * A tether_conn embeds the link that does its I/O (conn/link.h) and installs the
 * link's hooks (conn.c), through which every frame comes up; the link never names a
 * function of this layer. The link's lock guards the fields below marked "conn lock".
 */
#ifndef TETHER_CONN_H
#define TETHER_CONN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "codec/frame.h"
#include "codec/handshake.h"
#include "conn/ioloop.h"
#include "conn/link.h"
#include "rpc/chain.h"
#include "rpc/endpoint.h"
#include "rpc/mainq.h"
#include "rpc/object.h"
#include "tether.h"
#include "util/buf.h"

/* An outgoing call waiting for its response; in the pending table while unanswered. */
typedef struct tether__pending {
    struct tether__pending *next;  /* hash chain, guarded by conn lock */
    tether__link_waiter role_wait; /* synchronous calls: queued for the reader role */
    uint64_t id;
    uint64_t last_heard_usec; /* request sent, or last PROGRESS */
    uint64_t timeout_usec;    /* silence bound, UINT64_MAX: none */
    uint64_t deadline_usec;   /* absolute, UINT64_MAX: none */
    tether_future *future;    /* async call; NULL for a synchronous one */
    /* Synchronous calls: the waiting thread sleeps on its wake fd (platform.h), raised
     * under the conn lock when the call completes or the reader role comes free. */
    int efd;
    struct tether__waiter *waiter;
    bool done;
    int status;
    tether_value *result;
    tether_error error;
    /* Synchronous calls: tether_call_options.interrupt, and when to call it next. */
    int (*interrupt)(void *userdata);
    void *interrupt_userdata;
    uint64_t interrupt_interval_usec, next_interrupt_usec;
} tether__pending;

struct tether_request {
    atomic_uint refs;
    tether_conn *conn;
    uint64_t id, chain, timeout_ms;
    bool notification;
    atomic_bool replied;
    atomic_bool cancelled;
    const char *method;
    const uint8_t *args_raw, *kwargs_raw;
    size_t args_len, kwargs_len;
    tether_value *args, *kwargs; /* made on first use */
    tether__objvec args_objs, kwargs_objs; /* bound at arrival, given to args, kwargs */
    tether_object *object;       /* a method call's target; NULL for a service */
    tether_error read_error;     /* from a failed tether_request_read */
    /* Running list (a reply is owed and the handler kept the request), conn lock. */
    struct tether_request *run_next, *run_prev;
    bool running;
    /* The service that runs it, and how it gets there for MAIN and POOL services. */
    tether_handler_fn handler;
    void *userdata;
    tether__work work; /* MAIN: queued on the endpoint's main-thread queue */
    uv_work_t pool_work; /* POOL: libuv's worker pool */
    /* method, args and kwargs bytes follow the struct */
};

struct tether_conn {
    tether__link link; /* I/O; its lock is the conn lock; its refs count the conn */
    tether__endpoint *ep;
    unsigned fork_generation;
    bool is_tcp;
    bool trusted; /* socket pair or same-uid Unix socket: no token needed */
    uint64_t connected_usec;
    int64_t connected_unix_usec; /* wall clock of the handshake, for people */

    /* I/O thread only. */
    uv_timer_t handshake_timer, sweep_timer, progress_timer;
    int open_timers;
    bool timers_live; /* started by on_attached, until on_closed closes them */
    bool sweep_running, progress_running;
    uint64_t progress_interval_usec;
    tether__task sweep_task;

    tether__pending **pending;    /* conn lock; hash table of size pending_mask + 1 */
    uint32_t pending_mask;
    uint32_t pending_count;       /* conn lock */
    uint32_t async_count;         /* conn lock: pending futures (the sweep runs) */
    tether_request *running;      /* conn lock */
    uint32_t running_count;       /* conn lock */
    tether__conn_objects objects; /* conn lock: references crossing (object.h) */
    bool sweep_posted;            /* conn lock */

    atomic_uint_fast64_t next_id;
    uint32_t peer_max_in_flight;

    /* Counters, relaxed atomics. */
    atomic_uint_fast64_t calls_out, calls_in;

    tether__lane lane; /* this connection's lane in the endpoint's main-thread queue */

    void *owner_data; /* host: registry bookkeeping */
    /* Host side: told (on the I/O thread) when the handshake completes; set before the
     * connection is attached (a spawned child's, see spawn.c). */
    void (*on_open)(void *arg);
    void *on_open_arg;
    struct tether_conn *owner_next, *owner_prev;
};

#define tether__conn_of(l) ((tether_conn *)((char *)(l) - offsetof(tether_conn, link)))

/* Make a connection around a connected, non-blocking socket (state: TETHER__LINK_*).
 * Takes the fd on success. */
int tether__conn_new(tether__endpoint *ep, int fd, bool is_tcp, int state, tether_conn **ret);
/* Start serving it on the I/O thread (posts; returns at once). */
void tether__conn_attach(tether_conn *conn);
/* Wait for a synchronous call's response (wait.c). */
void tether__conn_wait(tether_conn *conn, tether__pending *p);
/* Close with a status for pending calls (-ECONNRESET, -ECANCELED, -EPROTO ...). */
void tether__conn_fail(tether_conn *conn, int status, const char *reason);
/* Queue a frame (tether__link_send). */
int tether__conn_send(tether_conn *conn, tether__encode_fn encode, void *arg, bool flush_now);
/* The peer lets our output pile up past max_output_bytes: close it, with a log line. */
void tether__conn_drop_slow_reader(tether_conn *conn);
int tether__conn_set_peer(tether_conn *conn, const tether__hello *hello);

static inline int
tether__conn_state(const tether_conn *c)
{
    return atomic_load(&((tether_conn *)c)->link.state);
}

/* call.c */
void tether__pending_complete(tether_conn *conn, tether__pending *p, int status,
                              tether_value *result, const char *type, const char *message,
                              const char *traceback);
tether__pending *tether__pending_take(tether_conn *conn, uint64_t id); /* lock held */
void tether__conn_on_response(tether_conn *conn, const tether__frame *frame);
void tether__conn_on_progress(tether_conn *conn, const tether__frame *frame);
void tether__conn_fail_pending(tether_conn *conn, int status, const char *reason);
int tether__send_cancel(tether_conn *conn, uint64_t id);
void tether__future_complete(tether_future *f, int status, tether_value *result,
                             const char *type, const char *message, const char *traceback);

/* request.c */
void tether__conn_on_request(tether_conn *conn, const tether__frame *frame);
void tether__conn_on_cancel(tether_conn *conn, uint64_t id);
void tether__request_cancel_all(tether_conn *conn);

/* The calling thread's chain id while it runs a handler, 0 otherwise. */
uint64_t tether__current_chain(void);

#endif
