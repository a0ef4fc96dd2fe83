/*
 * conn: one connection's RPC state (the "peer" of DESIGN.md), shared by the host (one
 * conn per client) and the client (one conn to its host): the calls it waits for
 * (pending, call.h), the requests it runs (request.h), the objects that crossed it
 * (object.h), and the endpoint it serves.
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
#include "conn/pool.h"
#include "rpc/buffer.h"
#include "rpc/endpoint.h"
#include "rpc/mainq.h"
#include "rpc/object.h"
#include "tether.h"

struct tether__pending;

struct tether_conn {
    tether__link link; /* I/O; its lock is the conn lock; its refs count the conn */
    tether__endpoint *ep;
    tether__pool_source pool_source; /* a client's: listed while open (conn/pool.h) */
    unsigned fork_generation;
    bool is_tcp;
    bool trusted; /* socket pair or same-uid Unix socket: no token needed */
    uint64_t connected_usec;
    int64_t connected_unix_usec; /* wall clock of the handshake, for people */

    /* I/O thread only. */
    uv_timer_t handshake_timer, sweep_timer, progress_timer;
    int open_timers;
    bool timers_live; /* started by on_attached, until on_closed closes them */
    tether__task sweep_task;
    /* The progress timer runs (or a posted progress_task will start it) at
     * progress_interval_usec: conn lock, since a main thread reading may ask for it. */
    bool progress_running, progress_posted;
    uint64_t progress_interval_usec;
    tether__task progress_task;

    struct tether__pending **pending; /* conn lock; hash table of size pending_mask + 1 */
    uint32_t pending_mask;
    uint32_t pending_count;       /* conn lock */
    uint32_t async_count;         /* conn lock: pending futures (the sweep runs) */
    tether_request *running;      /* conn lock */
    uint32_t running_count;       /* conn lock */
    uint32_t running_cancelled;   /* conn lock: of those, cancelled (out of the window) */
    tether__conn_objects objects; /* conn lock: references crossing (object.h) */
    tether__conn_buffers buffers; /* conn lock: shared memory crossing (buffer.h) */
    /* conn lock: the sweep timer runs (until a tick finds no future, and none started
     * since the tick before), a task to start it is posted, a future started since */
    bool sweep_running, sweep_posted, sweep_used;

    atomic_uint_fast64_t next_id;
    uint32_t peer_max_in_flight;
    /* The window (window.c), conn lock: requests on the wire awaiting an answer; the
     * frames waiting for room, in order; one thread sends from them at a time. */
    uint32_t sent_count;
    tether__buf backlog;
    bool pumping;
    atomic_uint backlog_records; /* relaxed: a look without the lock */
    /* Host side: a reset or disconnect is letting the client's requests in flight
     * finish before it closes (endpoints/host.c); new requests are refused meanwhile
     * with tether.Closing (request.c). */
    atomic_bool draining;

    /* Counters, relaxed atomics. */
    atomic_uint_fast64_t calls_out, calls_in;

    tether__lane lane; /* this connection's lane in the endpoint's main-thread queue */

    /* Host side, conn lock: the services the client announced (tether.announce, see
     * endpoints/host.c), each name ended by NUL, peer_services_len bytes in all;
     * peer_services_changed (CLOCK_MONOTONIC) is broadcast when the list grows and when
     * the connection closes. */
    char *peer_services;
    size_t peer_services_len;
    pthread_cond_t peer_services_changed;

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
/* Close with a status for pending calls (-ECONNRESET, -ECANCELED, -EPROTO ...). */
void tether__conn_fail(tether_conn *conn, int status, const char *reason);
/* Queue a frame (tether__link_send; mode: TETHER__SEND_*, or a bool flush_now). */
int tether__conn_send(tether_conn *conn, tether__encode_fn encode, void *arg, int mode);
/* The peer lets our output pile up past max_output_bytes: close it, with a log line. */
void tether__conn_drop_slow_reader(tether_conn *conn);
int tether__conn_set_peer(tether_conn *conn, const tether__hello *hello);
/* On the endpoint's main thread: wait until work is queued on q (returns 1) or
 * timeout_usec passes (0), reading conn meanwhile when no other thread does, so that
 * requests for this thread need no other (main_wait.c). -ENOTCONN once conn closed. */
int tether__conn_wait_main(tether_conn *conn, tether__mainq *q, uint64_t timeout_usec);

/*
 * The same for a main thread that waits in an event loop of its own (main_wait.c):
 * loop_hold makes it the connection's reader while the loop is idle and returns the
 * socket to watch (or -EBUSY while another thread reads, -ENOTCONN); loop_read, the
 * socket being readable, reads and runs the MAIN work that came, within budget_usec
 * (0: the thread still reads; 1: it does not, stop watching); loop_drop gives the
 * reading back. Thread: the main thread of q's endpoint.
 */
int tether__conn_loop_hold(tether_conn *conn);
int tether__conn_loop_read(tether_conn *conn, tether__mainq *q, uint64_t budget_usec);
void tether__conn_loop_drop(tether_conn *conn);

static inline int
tether__conn_state(const tether_conn *c)
{
    return atomic_load(&((tether_conn *)c)->link.state);
}

#endif
