/*
 * request: the serving side of a connection (request.c): a request from its arrival
 * to its one reply, run where its service's context says, with progress sent while it
 * runs.
 */
#ifndef TETHER_RPC_REQUEST_H
#define TETHER_RPC_REQUEST_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "codec/frame.h"
#include "rpc/buffer.h"
#include "rpc/conn.h"
#include "rpc/mainq.h"
#include "rpc/object.h"
#include "tether.h"

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
    tether_value *args, *kwargs;           /* made on first use */
    tether__objvec args_objs, kwargs_objs; /* bound at arrival, given to args, kwargs */
    tether__bufvec args_bufs, kwargs_bufs; /* likewise */
    tether_object *object;                 /* a method call's target; NULL for a service */
    tether_error read_error;               /* from a failed tether_request_read */
    /* Running list (a reply is owed and the handler kept the request), conn lock. */
    struct tether_request *run_next, *run_prev;
    bool running;
    bool cancel_counted; /* conn lock: cancelled while running, in running_cancelled */
    /* The service that runs it, and how it gets there for MAIN and POOL services. */
    tether_handler_fn handler;
    void *userdata;
    /* Called once, outside the conn lock, if the request is cancelled while running (a
     * CANCEL, or its connection lost); set and taken under the conn lock. */
    void (*cancel_hook)(void *arg);
    void *cancel_arg;
    struct tether_request *cancel_next; /* tether__request_cancel_all's list */
    tether__work work;                  /* MAIN: queued on the endpoint's main-thread queue */
    tether__task pool_task;             /* POOL: the worker pool (conn/pool.h) */
    /* method, args and kwargs bytes follow the struct */
};

/* Act on a REQUEST or NOTIFY frame (I/O thread). */
void tether__conn_on_request(tether_conn *conn, const tether__frame *frame);
/* The same, on a thread holding the reader role, for a request that thread can start
 * without the I/O thread (a MAIN one, read by the endpoint's main thread). Returns false,
 * having done nothing, for any other: the I/O thread then acts on it. */
bool tether__conn_take_request(tether_conn *conn, const tether__frame *frame);
void tether__conn_on_cancel(tether_conn *conn, uint64_t id);
void tether__request_cancel_all(tether_conn *conn);
/* Answer every request still running on conn with the error (type, message) now, and
 * mark them cancelled: the connection is about to close (a graceful CONTROL, host.c).
 * What their handlers reply later is dropped. Returns how many were answered. */
size_t tether__request_fail_running(tether_conn *conn, const char *type, const char *message);

/*
 * Have hook(arg) called once if req is cancelled while it runs: a handler that passes the
 * work on (a forwarded call) passes the cancel on too. hook owns arg once it is called.
 * Returns 0, or -ECANCELED if req was cancelled already (hook is not called; arg stays
 * the caller's). Thread: any.
 */
int tether__request_set_cancel_hook(tether_request *req, void (*hook)(void *arg), void *arg);
/* Remove the hook: its arg if it had not been called (the caller owns it again), else
 * NULL. Thread: any. */
void *tether__request_take_cancel_hook(tether_request *req);

/* The calling thread's chain id while it runs a handler, 0 otherwise. */
uint64_t tether__current_chain(void);

#endif
