/*
 * conn: one connection's RPC state and I/O (the "peer" of DESIGN.md). Shared by the
 * host (one conn per client) and the client (one conn to its host).
 *
 * Reading uses a leader/follower hand-off instead of a dedicated reader thread, because
 * on the machines we target one thread wake costs about half a socket round trip:
 * - Exactly one thread at a time holds the reader role (`role`, guarded by `lock`):
 *   the I/O thread, woken through a private epoll set, or a thread blocked in a
 *   synchronous call, which reads its own reply from the socket itself.
 * - The socket is in a private epoll set (level-triggered) that the I/O thread watches
 *   with one uv_poll. A caller that takes the role disarms the socket's read interest
 *   there, so its reply does not also wake the I/O thread, and re-arms it when it gives
 *   the role back (both under `lock`, so the I/O thread never strands data).
 * - Whatever a caller reads that is not a response (requests, control, log) is handed
 *   to the I/O thread in order through `handoff`; responses to other calls complete
 *   them directly.
 * - Writes from any thread append to `out` under `wlock`. A synchronous caller flushes
 *   at once; everything else arms write interest on a dup of the socket (`wfd`) in the
 *   same epoll set, so the I/O thread flushes whole batches.
 * Fds are closed only when the last reference goes, so no thread can be polling a
 * closed or reused descriptor; closing a connection first shuts the socket down, which
 * wakes every reader at once.
 */
#ifndef TETHER_CONN_H
#define TETHER_CONN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "util/buf.h"
#include "rpc/chain.h"
#include "rpc/endpoint.h"
#include "conn/ioloop.h"
#include "rpc/mainq.h"
#include "rpc/object.h"
#include "tether.h"
#include "codec/wire.h"

typedef enum tether__conn_state {
    TETHER__CONN_HANDSHAKE = 1, /* host side, before a valid hello */
    TETHER__CONN_OPEN = 2,
    TETHER__CONN_CLOSED = 3,
} tether__conn_state;

enum { TETHER__ROLE_FREE = 0, TETHER__ROLE_IO = 1, TETHER__ROLE_CALLER = 2 };

/* An outgoing call waiting for its response; in the pending table while unanswered. */
typedef struct tether__pending {
    struct tether__pending *next; /* hash chain, guarded by conn lock */
    uint64_t id;
    uint64_t last_heard_usec; /* request sent, or last PROGRESS */
    uint64_t timeout_usec;    /* silence bound, UINT64_MAX: none */
    uint64_t deadline_usec;   /* absolute, UINT64_MAX: none */
    tether_future *future;    /* async call; NULL for a synchronous one */
    /* Synchronous calls: the waiting thread sleeps on its eventfd (chain.h), raised
     * under the conn lock when the call completes or the reader role comes free. */
    int efd;
    struct tether__waiter *waiter;
    bool done;
    bool role_waiting;
    struct tether__pending *role_next;
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
    atomic_uint refs;
    tether__endpoint *ep;
    tether__ioloop *loop;
    unsigned fork_generation;
    bool is_tcp;
    bool trusted; /* socket pair or same-uid Unix socket: no token needed */
    int fd, wfd, epfd;
    atomic_int state;
    atomic_bool attached; /* uv handles initialised on the I/O thread */
    bool closing_handles; /* I/O thread only */
    uint64_t connected_usec;
    int64_t connected_unix_usec; /* wall clock of the handshake, for people */

    /* I/O thread only. */
    uv_poll_t poll;
    uv_timer_t handshake_timer, sweep_timer, progress_timer;
    int open_handles;
    bool in_batch; /* reading a batch: replies are flushed at its end */
    bool sweep_running, progress_running;
    uint64_t progress_interval_usec;
    tether__task attach_task, handoff_task, sweep_task, close_task;

    pthread_mutex_t lock;
    int role;                     /* guarded by lock */
    bool read_armed;              /* guarded by lock */
    tether__pending *role_waiters; /* guarded by lock; sync callers without the role */
    tether__pending **pending;    /* guarded by lock; hash table of size pending_mask + 1 */
    uint32_t pending_mask;
    uint32_t pending_count;       /* guarded by lock */
    uint32_t async_count;         /* guarded by lock: pending futures (the sweep runs) */
    tether_request *running;      /* guarded by lock */
    uint32_t running_count;       /* guarded by lock */
    tether__buf handoff;          /* guarded by lock: whole frames for the I/O thread */
    tether__conn_objects objects; /* guarded by lock: references crossing (object.h) */
    bool handoff_posted, sweep_posted; /* guarded by lock */

    pthread_mutex_t wlock;
    tether__buf out;  /* guarded by wlock */
    atomic_bool write_armed; /* written under wlock; read without it by on_poll */

    tether__buf in; /* owned by the reader-role holder */

    atomic_uint_fast64_t next_id;
    tether__wire_limits limits;
    uint32_t peer_max_in_flight;
    uint32_t peer_max_frame_size;

    /* Peer identity from the handshake; set before the connection opens. */
    char *peer_name, *peer_language, *peer_language_version;
    int64_t peer_pid;

    /* Counters, relaxed atomics. */
    atomic_uint_fast64_t calls_out, calls_in, bytes_out, bytes_in;

    tether__lane lane; /* this connection's lane in the endpoint's main-thread queue */

    void *owner_data; /* host: registry bookkeeping */
    /* Host side: told (on the I/O thread) when the handshake completes; set before the
     * connection is attached (a spawned child's, see spawn.c). */
    void (*on_open)(void *arg);
    void *on_open_arg;
    struct tether_conn *owner_next, *owner_prev;
};

/* Make a connection around a connected, non-blocking socket. Takes the fd on success. */
int tether__conn_new(tether__endpoint *ep, int fd, bool is_tcp, tether__conn_state state,
                     tether_conn **ret);
/* Start serving it on the I/O thread (posts; returns at once). */
void tether__conn_attach(tether_conn *conn);
/* Wait for a synchronous call's response (see conn.c). */
void tether__conn_wait(tether_conn *conn, tether__pending *p);
/* Close with a status for pending calls (-ECONNRESET, -ECANCELED, -EPROTO ...). */
void tether__conn_fail(tether_conn *conn, int status, const char *reason);
/* Queue a frame that an encoder writes into out; see conn.c. */
typedef int (*tether__encode_fn)(tether__buf *out, void *arg);
int tether__conn_send(tether_conn *conn, tether__encode_fn encode, void *arg, bool flush_now);
/* The peer lets our output pile up past max_output_bytes: close it, with a log line. */
void tether__conn_drop_slow_reader(tether_conn *conn);
int tether__conn_set_peer(tether_conn *conn, const tether__hello *hello);

/* Hooks of the handshake, implemented by the host. */
typedef struct tether__hello_result {
    const char *refuse_code; /* NULL: accepted */
    char refuse_message[256];
} tether__hello_result;
int tether__send_welcome(tether_conn *conn, const tether__welcome *welcome);
void tether__host_on_hello(tether_conn *conn, const tether__hello *hello,
                           tether__hello_result *result);
/* host.c, for spawn.c: the host's endpoint, and serving a spawned child's end of a
 * socket pair (trusted) with on_open called once it completed its handshake; stores a
 * new reference to the connection. The host owns fd on success. */
tether__endpoint *tether__host_endpoint(tether_host *host);
int tether__host_adopt_child(tether_host *host, int fd, void (*on_open)(void *arg), void *arg,
                             tether_conn **ret_conn);
/* builtins.c: register the built-in services of flags (TETHER_BUILTIN_*). */
int tether__builtins_add(tether_host *host, uint32_t flags);
/* spawn.c: the host stopped; its fork servers end. */
void tether__spawn_host_stopped(tether_host *host);

/* call.c */
void tether__pending_complete(tether_conn *conn, tether__pending *p, int status,
                              tether_value *result, const char *type, const char *message,
                              const char *traceback);
tether__pending *tether__pending_take(tether_conn *conn, uint64_t id); /* lock held */
void tether__conn_on_response(tether_conn *conn, const tether__frame *frame);
void tether__conn_on_progress(tether_conn *conn, const tether__frame *frame);
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
