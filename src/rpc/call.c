/*
 * call: the calling side of a connection. Outgoing calls (synchronous, future-based and
 * notifications), matching responses to them (the pending table, pending.c), futures,
 * and the timeouts: a silence bound refreshed by the callee's PROGRESS frames, and an optional
 * absolute deadline.
 *
 * A synchronous caller keeps its tether__pending on its own stack and waits in
 * tether__conn_wait(), usually reading its own reply. A future embeds its pending
 * record; the table holds a reference to the future while the call is pending.
 * Completion always happens outside the connection lock, exactly once per record:
 * whoever removes a record from the table (a response, a timeout, a cancel, a close)
 * completes it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "codec/msgpack.h"
#include "codec/validate.h"
#include "rpc/buffer.h"
#include "rpc/call.h"
#include "rpc/conn.h"
#include "rpc/request.h"
#include "rpc/value.h"
#include "util/alloc.h"
#include "util/condwait.h"
#include "util/error.h"
#include "util/utf8.h"

struct tether_future {
    atomic_uint refs;
    tether__pending pending;
    tether_conn *conn; /* reference while pending */
    pthread_mutex_t lock;
    pthread_cond_t cv;   /* CLOCK_MONOTONIC */
    bool done;           /* guarded by lock */
    int status;          /* guarded by lock, final once done */
    tether_value *result;
    tether_error error;
    tether_future_fn callback; /* guarded by lock */
    void *callback_userdata;
    tether_future_discard_fn callback_discard; /* instead of callback, if it never runs */
    bool callback_set;
    tether_context callback_context;
    tether__mainq *callback_queue; /* MAIN callbacks: the caller's endpoint queue */
    tether__endpoint *callback_ep;  /* holds the queue alive */
    tether__task callback_task;
    tether__work callback_work;
    /* A waiter reading the connection for this future (lead_until_done): whoever else
     * completes it (a timeout, a cancel, a close) raises the leader's wake. Guarded by
     * lock. */
    bool leading;
    bool lead_raised;
    pthread_t leader;
    tether__wake lead_wake;
};

#define SWEEP_INTERVAL_MS 10

/* Synchronous calls open on this thread, one inside the other through call-backs. */
static _Thread_local uint32_t sync_depth;

/* ---- completion ----------------------------------------------------------------- */

static int
set_error(tether_error *e, const char *type, const char *message, const char *traceback)
{
    tether_error_done(e);
    e->type = type ? tether__strdup(type) : NULL;
    e->message = message ? tether__strdup(message) : NULL;
    e->traceback = traceback ? tether__strdup(traceback) : NULL;
    return 0;
}

void
tether__pending_complete(tether_conn *c, tether__pending *p, int status, tether_value *result,
                         const char *type, const char *message, const char *traceback)
{
    /* p left the window: a call waiting for room goes out. */
    if (atomic_load_explicit(&c->backlog_records, memory_order_relaxed)) {
        tether__window_pump(c);
    }
    if (p->future) {
        tether__future_complete(p->future, status, result, type, message, traceback);
        return;
    }
    pthread_mutex_lock(&c->link.lock);
    p->status = status;
    p->result = result;
    if (status < 0) {
        set_error(&p->error, type, message, traceback);
    }
    p->done = true;
    /* The thread that reads the reply is mostly the one waiting for it, which looks at
     * done after each read: waking it would cost two system calls for nothing. */
    if (!p->waiter || !pthread_equal(p->waiter->thread, pthread_self())) {
        tether__wake_raise(&p->wake);
    }
    pthread_mutex_unlock(&c->link.lock);
}

/* The connection closed: complete every pending call with status. Take them all under
 * the lock, complete them outside it. */
void
tether__conn_fail_pending(tether_conn *c, int status, const char *reason)
{
    tether__pending *list = NULL;
    pthread_mutex_lock(&c->link.lock);
    for (uint32_t i = 0; i <= c->pending_mask; i++) {
        while (c->pending[i]) {
            tether__pending *p = c->pending[i];
            c->pending[i] = p->next;
            p->next = list;
            list = p;
        }
    }
    c->pending_count = 0;
    c->async_count = 0;
    tether__window_clear_locked(c);
    pthread_mutex_unlock(&c->link.lock);
    int code = status == -ECANCELED ? -ECANCELED : -ECONNRESET;
    const char *type = tether_err_type(code);
    char message[300];
    snprintf(message, sizeof(message), "%s: %s", tether_strerror(code), reason ? reason : "");
    while (list) {
        tether__pending *p = list;
        list = p->next;
        tether__pending_complete(c, p, code, NULL, type, message, NULL);
    }
}

void
tether__conn_on_response(tether_conn *c, const tether__frame *f)
{
    pthread_mutex_lock(&c->link.lock);
    tether__pending *p = tether__pending_take(c, f->id);
    pthread_mutex_unlock(&c->link.lock);
    if (!p) {
        return; /* cancelled or timed out meanwhile */
    }
    tether_value *v = NULL;
    /* A big result keeps the buffer it was read into rather than a copy of it. */
    size_t cap;
    void *block =
        f->value.len >= TETHER__BIG_SPAN ? tether__link_take_input(&c->link, f, &cap) : NULL;
    int r = block ? tether__value_new_in_block(block, cap, f->value.ptr, f->value.len, &v)
                  : tether__value_new_copy(f->value.ptr, f->value.len, &v);
    if (r < 0) {
        tether__free(block);
        tether__pending_complete(c, p, r, NULL, TETHER__ERR_GENERIC, tether_strerror(r), NULL);
        return;
    }
    if (f->buffers) {
        /* Descriptors beside the frame become the buffers its BUFFER exts name. */
        tether__bufvec bufs = TETHER__BUFVEC_INIT;
        const char *why = NULL;
        r = tether__buffers_bind(&c->link, f, &f->value, 1, &bufs, &why);
        if (r == 0) {
            r = tether__value_adopt_buffers(v, &bufs);
        }
        tether__bufvec_clear(&bufs);
        if (r < 0) {
            tether_value_unref(v);
            if (r == -EPROTO) {
                tether__link_break(&c->link, why); /* fails p with the rest */
            }
            tether__pending_complete(c, p, r == -EPROTO ? -ECONNRESET : r, NULL,
                                     TETHER__ERR_GENERIC, why ? why : tether_strerror(r), NULL);
            return;
        }
    }
    if (f->refs && !f->is_error) {
        char message[128];
        tether__objvec objs = TETHER__OBJVEC_INIT;
        const void *data;
        size_t size;
        tether_value_get_msgpack(v, &data, &size); /* our copy, not shared yet */
        r = tether__conn_bind_refs(c, (uint8_t *)data, size, &objs, message, sizeof(message));
        if (r == 0) {
            r = tether__value_adopt(v, &objs);
        }
        if (r < 0) {
            tether_value_unref(v);
            tether__pending_complete(c, p, r == -ENOENT ? -ENOENT : r,
                                     NULL, r == -ENOENT ? TETHER__ERR_NO_SUCH_OBJECT : TETHER__ERR_GENERIC,
                                     r == -ENOENT ? message : tether_strerror(r), NULL);
            return;
        }
    }
    uint64_t now = tether_now_usec();
    if (now >= tether__pending_expiry(p)) {
        /* Read only after the call's bound had passed (the sweep had not come round,
         * its thread held up): the caller was promised a timeout by then. Its objects
         * were bound above and are released with the value. */
        tether_value_unref(v);
        tether__pending_complete(c, p, -ETIMEDOUT, NULL, TETHER__ERR_TIMEOUT,
                                 tether__expiry_reason(p, now >= p->deadline_usec), NULL);
        return;
    }
    if (!f->is_error) {
        tether__pending_complete(c, p, 0, v, NULL, NULL, NULL);
        return;
    }
    char *type = NULL, *message = NULL, *traceback = NULL;
    r = tether__value_error_fields(v, &type, &message, &traceback);
    tether_value_unref(v);
    tether__pending_complete(c, p, r < 0 ? r : tether_err_code(type), NULL,
                             type ? type : TETHER__ERR_GENERIC, message ? message : "",
                             traceback);
    tether__free(type);
    tether__free(message);
    tether__free(traceback);
}

void
tether__conn_on_progress(tether_conn *c, const tether__frame *f)
{
    tether__mp_reader rd = {f->value.ptr, f->value.ptr + f->value.len};
    uint32_t n;
    if (tether__mp_read_array(&rd, &n) < 0) {
        return;
    }
    uint64_t now = tether_now_usec();
    pthread_mutex_lock(&c->link.lock);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t id;
        if (tether__mp_read_uint(&rd, &id) < 0) {
            break;
        }
        tether__pending *p = tether__pending_find(c, id);
        if (p) {
            p->last_heard_usec = now;
        }
    }
    pthread_mutex_unlock(&c->link.lock);
}

const char *
tether__expiry_reason(const tether__pending *p, bool deadline)
{
    if (deadline) {
        return "the call's deadline passed";
    }
    return p->sent ? "the peer was silent for longer than the timeout"
                   : "no room came free in the peer's window of calls in flight within the "
                     "timeout";
}

/* ---- the timeout sweep of futures (I/O thread) ----------------------------------- */

/* Expire futures whose silence bound or deadline has passed (I/O thread, timer). */
static void
on_sweep(uv_timer_t *t)
{
    tether_conn *c = t->data;
    uint64_t now = tether_now_usec();
    tether__pending *expired = NULL;
    pthread_mutex_lock(&c->link.lock);
    for (uint32_t i = 0; i <= c->pending_mask && c->async_count > 0; i++) {
        tether__pending **pp = &c->pending[i];
        while (*pp) {
            tether__pending *p = *pp;
            if (p->future && now >= tether__pending_expiry(p)) {
                *pp = p->next;
                c->pending_count--;
                c->async_count--;
                c->sent_count -= p->sent;
                p->next = expired;
                expired = p;
                continue;
            }
            pp = &p->next;
        }
    }
    /* Kept running through a short lull: a script awaiting one call after another has
     * no future pending at some ticks, and starting the sweep again would wake this
     * thread for every call. */
    bool idle = c->async_count == 0 && !c->sweep_used;
    c->sweep_used = false;
    if (idle) {
        c->sweep_running = false; /* the next future posts the start again */
    }
    pthread_mutex_unlock(&c->link.lock);
    if (idle) {
        uv_timer_stop(&c->sweep_timer);
    }
    while (expired) {
        tether__pending *p = expired;
        expired = p->next;
        bool deadline = now >= p->deadline_usec;
        if (p->sent) {
            tether__send_cancel(c, p->id);
        }
        tether__pending_complete(c, p, -ETIMEDOUT, NULL, TETHER__ERR_TIMEOUT,
                                 tether__expiry_reason(p, deadline), NULL);
    }
}

static void
run_sweep_start(tether__task *task)
{
    tether_conn *c = (tether_conn *)((char *)task - offsetof(tether_conn, sweep_task));
    pthread_mutex_lock(&c->link.lock);
    c->sweep_posted = false;
    bool start = c->timers_live && !c->sweep_running;
    if (start) {
        c->sweep_running = true;
    }
    pthread_mutex_unlock(&c->link.lock);
    if (start) {
        uv_timer_start(&c->sweep_timer, on_sweep, SWEEP_INTERVAL_MS, SWEEP_INTERVAL_MS);
    }
    tether_conn_unref(c);
}

/* ---- sending calls ----------------------------------------------------------------- */

typedef struct request_arg {
    uint64_t id, chain, timeout_ms;
    uint64_t target; /* 0: a service; else the peer's object */
    const char *method;
    const uint8_t *args, *kwargs;
    size_t args_len, kwargs_len;
    tether__objlist objects[2]; /* the objects in args and kwargs, sent with them */
    tether_value *built;     /* args built from a format with objects, released after */
    tether_value *values[2]; /* args and kwargs as values, borrowed: their buffers go too */
    const char *format;
    va_list *ap;
    bool notify;
    tether__lend *lend; /* a synchronous call's big args, sent from where they are */
} request_arg;

/*
 * Encode a request or notification into out. Arguments from a format are built straight
 * into the frame, within the nesting a frame allows; raw ones were checked when the call
 * was made (a value knows whether it is sendable, bytes from a binding were checked then).
 */
static int
encode_request(tether__buf *out, void *argp)
{
    request_arg *a = argp;
    size_t mlen = strlen(a->method);
    int kind = a->notify ? TETHER__NOTIFY : TETHER__REQUEST;
    if (a->lend && a->lend->ok) {
        /* Room for the args, which the link sends from the caller's memory. */
        size_t start;
        int r = tether__encode_call_open(out, kind, a->id, a->chain, a->target, a->method, mlen,
                                         &start);
        if (r < 0) {
            return r;
        }
        if ((r = tether__buf_reserve(out, a->args_len)) < 0) {
            out->len = out->off + start;
            return r;
        }
        a->lend->at = tether__buf_pending(out);
        out->len += a->args_len;
        r = tether__encode_call_close(out, start, kind, a->kwargs, a->kwargs_len, a->timeout_ms);
        if (r < 0) {
            out->len = out->off + start;
        }
        return r;
    }
    if (!a->format) {
        return a->notify ? tether__encode_notify(out, a->chain, a->target, a->method, mlen,
                                                 a->args, a->args_len, a->kwargs, a->kwargs_len)
                         : tether__encode_request(out, a->id, a->chain, a->target, a->method,
                                                  mlen, a->args, a->args_len, a->kwargs,
                                                  a->kwargs_len, a->timeout_ms);
    }
    size_t start;
    int r = tether__encode_call_open(out, kind, a->id, a->chain, a->target, a->method, mlen,
                                     &start);
    if (r < 0) {
        return r;
    }
    va_list copy;
    va_copy(copy, *a->ap);
    r = tether__format_build(out, a->format, copy, true, NULL, NULL, TETHER__DEFAULT_MAX_DEPTH - 1);
    va_end(copy);
    if (r == 0) {
        r = tether__encode_call_close(out, start, kind, a->kwargs, a->kwargs_len, a->timeout_ms);
    }
    if (r < 0) {
        out->len = out->off + start;
    }
    return r;
}

static int
encode_cancel(tether__buf *out, void *arg)
{
    return tether__encode_cancel(out, *(uint64_t *)arg);
}

int
tether__send_cancel(tether_conn *c, uint64_t id)
{
    return tether__conn_send(c, encode_cancel, &id, false);
}

/*
 * The connection a call goes out on, as a new reference: c itself while it is open;
 * for a client's connection that was replaced by a reconnect, the client's current
 * one, waiting for it if the caller asked to.
 */
static int
acquire_conn(tether_conn *c, const char *method, bool for_object,
             const tether_call_options *opts, tether_conn **ret)
{
    if (!c || !method || !*method || !tether__utf8_valid((const uint8_t *)method, strlen(method))) {
        return -EINVAL;
    }
    if (c->fork_generation != tether__fork_generation()) {
        return -ECHILD;
    }
    if (tether__conn_state(c) == TETHER__LINK_OPEN) {
        *ret = tether_conn_ref(c);
        return 0;
    }
    if (!c->ep->hooks.current_conn || for_object) {
        return -ENOTCONN; /* an object lives on one connection and is gone with it */
    }
    uint64_t deadline = 0;
    if (opts && opts->wait_for_connection) {
        uint64_t timeout = opts->timeout_usec ? opts->timeout_usec : c->ep->default_timeout_usec;
        deadline = timeout == UINT64_MAX ? UINT64_MAX : tether_now_usec() + timeout;
        if (opts->deadline_usec && opts->deadline_usec < deadline) {
            deadline = opts->deadline_usec;
        }
    }
    *ret = c->ep->hooks.current_conn(c->ep, deadline);
    return *ret ? 0 : -ENOTCONN;
}

static void
fill_local_error(tether_error *reterr, int r, const char *method)
{
    if (!reterr) {
        return;
    }
    tether_error_set(reterr, tether_err_type(r), "%s: %s", method ? method : "call", tether_strerror(r));
}

/* A call that fails before it starts: no result, reterr filled. Returns r. */
static int
refuse_call(int r, const char *method, tether_value **ret_result, tether_error *reterr)
{
    if (ret_result) {
        *ret_result = NULL;
    }
    fill_local_error(reterr, r, method);
    return r;
}

static void
pending_init(tether_conn *c, tether__pending *p, const tether_call_options *opts)
{
    uint64_t timeout = opts && opts->timeout_usec ? opts->timeout_usec : c->ep->default_timeout_usec;
    p->id = atomic_fetch_add_explicit(&c->next_id, 1, memory_order_relaxed);
    p->timeout_usec = timeout;
    p->deadline_usec = opts && opts->deadline_usec ? opts->deadline_usec : UINT64_MAX;
    p->last_heard_usec = tether_now_usec();
    p->next_interrupt_usec = UINT64_MAX;
    if (opts && opts->interrupt && !p->future) {
        p->interrupt = opts->interrupt;
        p->interrupt_userdata = opts->interrupt_userdata;
        p->interrupt_interval_usec =
            opts->interrupt_interval_usec ? opts->interrupt_interval_usec : 50000;
        p->next_interrupt_usec = p->last_heard_usec + p->interrupt_interval_usec;
    }
}

static uint64_t
timeout_ms_of(const tether__pending *p)
{
    if (p->timeout_usec == UINT64_MAX) {
        return 0;
    }
    uint64_t ms = p->timeout_usec / 1000;
    return ms ? ms : 1;
}

/* Register p and send the request. On failure p is not registered. */
/*
 * The buffers of a's values made ready for c: their descriptors, to send beside the frame,
 * or args and kwargs written out with them inline where c takes no descriptors
 * (tether__outbufs_prepare). Returns whether there are any: then *r has the outcome and
 * ob is released with tether__outbufs_done. Calls without buffers pay one test.
 */
static bool
prepare_buffers(tether_conn *c, request_arg *a, tether__outbufs *ob, int *r)
{
    ob->n = 0;
    if (!tether__value_has_buffers(a->values[0]) && !tether__value_has_buffers(a->values[1])) {
        return false;
    }
    const uint8_t **const bytes[2] = {&a->args, &a->kwargs};
    size_t *const lens[2] = {&a->args_len, &a->kwargs_len};
    *r = tether__outbufs_prepare(&c->link, a->values, 2, bytes, lens, ob);
    return true;
}

static int
start_call(tether_conn *c, tether__pending *p, request_arg *a, int mode)
{
    /* Objects in the arguments are counted before the peer can see them. */
    int r = tether__conn_export_lists(c, a->objects, 2);
    if (r < 0) {
        return r;
    }
    pthread_mutex_lock(&c->link.lock);
    if (tether__conn_state(c) != TETHER__LINK_OPEN) {
        pthread_mutex_unlock(&c->link.lock);
        tether__conn_unexport_lists(c, a->objects, 2);
        return -ENOTCONN;
    }
    tether__pending_insert(c, p);
    /* Beyond the peer's window the request waits here, in the backlog. */
    bool now = tether__window_claim_locked(c, p);
    /* Alone in flight, an async call is written at once: there is no batch to join, and
     * waking the I/O thread to write one frame costs a thread hop per awaited call. */
    if (c->pending_count == 1) {
        mode = TETHER__SEND_NOW;
    }
    bool start_sweep = false;
    if (p->future) {
        c->async_count++;
        c->sweep_used = true;
        if (!c->sweep_posted && !c->sweep_running) {
            c->sweep_posted = true;
            start_sweep = true;
        }
    }
    pthread_mutex_unlock(&c->link.lock);
    if (start_sweep) {
        /* Asked for before the request leaves: the I/O thread arms the timeouts before
         * it can act on anything the request brings about (its answer, or a peer in
         * this process that blocks the thread). If the send fails, the sweep finds
         * nothing and stops. */
        tether_conn_ref(c);
        c->sweep_task.run = run_sweep_start;
        tether__ioloop_post(c->link.loop, &c->sweep_task);
    }

    a->id = p->id;
    a->timeout_ms = timeout_ms_of(p);
    if (!a->chain) {
        a->chain = tether__current_chain() ? tether__current_chain() : tether__chain_new();
    }
    if (!now) {
        a->lend = NULL; /* the backlog keeps a copy */
    }
    tether__outbufs ob;
    bool buffers = prepare_buffers(c, a, &ob, &r);
    if (buffers) {
        a->lend = NULL; /* descriptors go with a frame alone; bytes written inline are ours */
    }
    if (r < 0) {
        /* over the descriptors a frame carries, or no memory */
    } else if (!now) {
        r = tether__window_queue(c, p->id, encode_request, a, ob.fds, ob.n);
    } else if (ob.n) {
        r = tether__link_send_fds(&c->link, encode_request, a, mode, ob.fds, ob.n);
    } else {
        r = a->lend ? tether__link_send_lent(&c->link, encode_request, a, a->lend)
                    : tether__conn_send(c, encode_request, a, mode);
    }
    if (buffers) {
        tether__outbufs_done(&ob);
    }
    if (r < 0) {
        tether__conn_unexport_lists(c, a->objects, 2);
        pthread_mutex_lock(&c->link.lock);
        tether__pending *taken = tether__pending_take(c, p->id);
        pthread_mutex_unlock(&c->link.lock);
        if (!taken) {
            /* A close took it first and completes it; report what the close says. */
            return 1;
        }
        return r;
    }
    atomic_fetch_add_explicit(&c->calls_out, 1, memory_order_relaxed);
    return 0;
}

static int
call_sync(tether_conn *c, const char *method, request_arg *a, const tether_call_options *opts,
          tether_value **ret_result, tether_error *reterr)
{
    if (ret_result) {
        *ret_result = NULL;
    }
    if (c && tether__ioloop_in_thread(c->link.loop)) {
        fill_local_error(reterr, -EDEADLK, method); /* the I/O thread would wait for itself */
        return -EDEADLK;
    }
    tether_conn *given = c;
    int r = acquire_conn(given, method, a->target != 0, opts, &c);
    if (r < 0) {
        fill_local_error(reterr, r, method);
        return r;
    }
    if (sync_depth >= c->ep->max_call_depth) {
        tether_error_set(reterr, TETHER__ERR_TOO_DEEP,
                         "%s: call-backs nested deeper than %u synchronous calls", method,
                         c->ep->max_call_depth);
        tether_conn_unref(c);
        return -ELOOP;
    }
    sync_depth++;
    /* Registered before the request leaves, so that a call-back of the chain can never
     * arrive before we are there to run it. */
    tether__waiter waiter;
    tether__pending p = {0};
    a->chain = tether__current_chain() ? tether__current_chain() : tether__chain_new();
    r = tether__waiter_push(&waiter, a->chain);
    if (r < 0) {
        fill_local_error(reterr, r, method);
        tether_conn_unref(c);
        sync_depth--;
        return r;
    }
    p.wake = waiter.wake;
    p.waiter = &waiter;
    pending_init(c, &p, opts);
    /* The reader role before the request leaves: a reply that comes back before this
     * thread waits (the peer on the same CPU, or just fast) must not find input watched
     * and wake the I/O thread as well. */
    pthread_mutex_lock(&c->link.lock);
    p.holds_role = tether__link_role_take_locked(&c->link);
    pthread_mutex_unlock(&c->link.lock);
    /* Big args go out from the caller's memory, which lives until this call returns:
     * what the socket did not take by then is copied (tether__link_take_back). */
    tether__lend lend = {.src = a->args, .len = a->args_len};
    if (a->args && !a->format && a->args_len >= TETHER__BIG_SPAN) {
        a->lend = &lend;
    }
    r = start_call(c, &p, a, true);
    if (r < 0) {
        if (p.holds_role) {
            pthread_mutex_lock(&c->link.lock);
            tether__link_role_release_locked(&c->link);
            pthread_mutex_unlock(&c->link.lock);
        }
        fill_local_error(reterr, r, method);
        goto out;
    }
    tether__conn_wait(c, &p);
    r = p.status;
    if (r == 0) {
        if (ret_result) {
            *ret_result = p.result;
        } else {
            tether_value_unref(p.result);
        }
    } else if (reterr) {
        tether_error_done(reterr);
        *reterr = p.error;
        p.error = (tether_error)TETHER_ERROR_INIT;
    }
    tether_error_done(&p.error);
out:
    if (lend.ok) {
        tether__link_take_back(&c->link, &lend);
    }
    tether__waiter_pop(&waiter);
    tether_conn_unref(c);
    sync_depth--;
    return r;
}

/*
 * A format with "o", "v" or "B" may put objects or buffers into the arguments: then they
 * are built into a value first (a->built, released by the caller), whose objects and
 * buffers the send accounts for.
 */
static int
build_args_with_objects(request_arg *a)
{
    if (!strpbrk(a->format, "ovB")) {
        return 0;
    }
    tether__buf b = TETHER__BUF_INIT;
    tether__objvec objs = TETHER__OBJVEC_INIT;
    tether__bufvec bufs = TETHER__BUFVEC_INIT;
    int r = tether__format_build(&b, a->format, *a->ap, true, &objs, &bufs,
                                 TETHER__DEFAULT_MAX_DEPTH - 1);
    if (r == 0) {
        r = tether__value_new_copy(tether__buf_head(&b), tether__buf_pending(&b), &a->built);
    }
    tether__buf_done(&b);
    if (r < 0) {
        tether__objvec_clear(&objs);
        tether__bufvec_clear(&bufs);
        return r;
    }
    r = tether__value_adopt(a->built, &objs);
    int rb = tether__value_adopt_buffers(a->built, &bufs);
    if (r < 0 || rb < 0) {
        a->built = tether_value_unref(a->built);
        return r < 0 ? r : rb;
    }
    a->values[0] = a->built;
    tether__value_mark_sendable(a->built); /* built within the limit */
    const void *data;
    tether_value_get_msgpack(a->built, &data, &a->args_len);
    a->args = data;
    a->format = NULL;
    a->objects[0] = tether__objlist_of(a->built);
    return 0;
}

static int
call_sync_format(tether_conn *c, uint64_t target, const char *method,
                 const tether_call_options *opts, tether_value **ret_result,
                 tether_error *reterr, const char *format, va_list *ap)
{
    request_arg a = {.target = target, .method = method, .format = format ? format : "", .ap = ap};
    int r = build_args_with_objects(&a);
    if (r < 0) {
        return refuse_call(r, method, ret_result, reterr);
    }
    r = call_sync(c, method, &a, opts, ret_result, reterr);
    tether_value_unref(a.built);
    return r;
}

int
tether_conn_call(tether_conn *c, const char *method, const tether_call_options *opts,
                 tether_value **ret_result, tether_error *reterr, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    int r = call_sync_format(c, 0, method, opts, ret_result, reterr, format, &ap);
    va_end(ap);
    return r;
}

static int
raw_of(tether_value *v, const uint8_t **p, size_t *len)
{
    if (!v) {
        *p = NULL;
        *len = 0;
        return 0;
    }
    const void *data;
    int r = tether_value_get_msgpack(v, &data, len);
    *p = data;
    return r;
}

static int
values_arg(request_arg *a, const char *method, tether_value *args, tether_value *kwargs)
{
    a->method = method;
    a->objects[0] = tether__objlist_of(args);
    a->objects[1] = tether__objlist_of(kwargs);
    a->values[0] = args;
    a->values[1] = kwargs;
    if ((args && !tether__value_sendable(args)) || (kwargs && !tether__value_sendable(kwargs))) {
        return -EMSGSIZE; /* the peer would drop a frame nested that deep */
    }
    int r = raw_of(args, &a->args, &a->args_len);
    if (r == 0) {
        r = raw_of(kwargs, &a->kwargs, &a->kwargs_len);
    }
    /* The wire wants an array and a map: check the first byte's family. */
    if (r == 0 && a->args && tether__mp_type_of(a->args[0]) != TETHER__MP_ARRAY) {
        r = -EINVAL;
    }
    if (r == 0 && a->kwargs && tether__mp_type_of(a->kwargs[0]) != TETHER__MP_MAP) {
        r = -EINVAL;
    }
    return r;
}

/* One of a binding's msgpack arguments: its bytes of the given type, checked once. */
static int
check_msgpack_part(const void *data, size_t size, int type, tether_object *const *objects,
                   size_t count, const uint8_t **ret, size_t *ret_len, tether__objlist *ret_list)
{
    *ret = NULL;
    *ret_len = 0;
    *ret_list = (tether__objlist){NULL, 0};
    if (!data) {
        return size || count ? -EINVAL : 0;
    }
    if (!size || (!objects && count) || tether__mp_type_of(*(const uint8_t *)data) != type) {
        return -EINVAL;
    }
    int r = tether__msgpack_objects_check(data, size, TETHER__DEFAULT_MAX_DEPTH - 1, objects,
                                          count, NULL);
    if (r < 0) {
        return r;
    }
    *ret = data;
    *ret_len = size;
    *ret_list = (tether__objlist){objects, count};
    return 0;
}

static int
msgpack_arg(request_arg *a, const char *method, const tether_msgpack_args *m)
{
    a->method = method;
    if (!m) {
        return 0;
    }
    int r = check_msgpack_part(m->args, m->args_size, TETHER__MP_ARRAY, m->args_objects,
                               m->args_object_count, &a->args, &a->args_len, &a->objects[0]);
    if (r == 0) {
        r = check_msgpack_part(m->kwargs, m->kwargs_size, TETHER__MP_MAP, m->kwargs_objects,
                               m->kwargs_object_count, &a->kwargs, &a->kwargs_len,
                               &a->objects[1]);
    }
    return r;
}

int
tether_conn_call_values(tether_conn *c, const char *method, tether_value *args,
                        tether_value *kwargs, const tether_call_options *opts,
                        tether_value **ret_result, tether_error *reterr)
{
    request_arg a = {0};
    int r = values_arg(&a, method, args, kwargs);
    if (r < 0) {
        fill_local_error(reterr, r, method);
        return r;
    }
    return call_sync(c, method, &a, opts, ret_result, reterr);
}

/* ---- futures ------------------------------------------------------------------------ */

static tether_future *
future_new(void)
{
    tether_future *f = tether__calloc(1, sizeof(*f));
    if (!f) {
        return NULL;
    }
    atomic_init(&f->refs, 1);
    pthread_mutex_init(&f->lock, NULL);
    tether__cond_init_monotonic(&f->cv);
    f->pending.future = f;
    return f;
}

static int
call_async(tether_conn *c, const char *method, request_arg *a, const tether_call_options *opts,
           tether_future **ret_future)
{
    if (!ret_future) {
        return -EINVAL;
    }
    *ret_future = NULL;
    tether_conn *given = c;
    int r = acquire_conn(given, method, a->target != 0, opts, &c);
    if (r < 0) {
        return r;
    }
    tether_future *f = future_new();
    if (!f) {
        tether_conn_unref(c);
        return -ENOMEM;
    }
    pending_init(c, &f->pending, opts);
    f->conn = c; /* the reference from acquire_conn */
    f->callback_ep = tether__endpoint_ref(c->ep);
    f->callback_queue = c->ep->mainq;
    tether_future_ref(f); /* the pending table's reference */
    /* Its answer must not wait for an event loop of another thread to come round (this
     * thread's own loop reads it when it does). */
    tether__link_idle_yield(&c->link, false);
    r = start_call(c, &f->pending, a, opts && opts->batch ? TETHER__SEND_HOLD : TETHER__SEND_BATCH);
    if (r > 0) {
        r = 0; /* completed by a concurrent close */
    }
    if (r < 0) {
        tether_conn_unref(f->conn);
        f->conn = NULL;
        tether_future_unref(f);
        tether_future_unref(f);
        return r;
    }
    *ret_future = f;
    return 0;
}

int
tether_conn_call_async(tether_conn *c, const char *method, const tether_call_options *opts,
                       tether_future **ret_future, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    request_arg a = {.method = method, .format = format ? format : "", .ap = &ap};
    int r = build_args_with_objects(&a);
    if (r == 0) {
        r = call_async(c, method, &a, opts, ret_future);
    }
    va_end(ap);
    tether_value_unref(a.built);
    return r;
}

int
tether_conn_call_async_values(tether_conn *c, const char *method, tether_value *args,
                              tether_value *kwargs, const tether_call_options *opts,
                              tether_future **ret_future)
{
    request_arg a = {0};
    int r = values_arg(&a, method, args, kwargs);
    return r < 0 ? r : call_async(c, method, &a, opts, ret_future);
}

static int
notify(tether_conn *given, const char *method, request_arg *a)
{
    tether_conn *c;
    int r = acquire_conn(given, method, a->target != 0, NULL, &c);
    if (r < 0) {
        return r;
    }
    a->notify = true;
    a->chain = tether__current_chain() ? tether__current_chain() : tether__chain_new();
    r = tether__conn_export_lists(c, a->objects, 2);
    if (r < 0) {
        tether_conn_unref(c);
        return r;
    }
    tether__outbufs ob;
    bool buffers = prepare_buffers(c, a, &ob, &r);
    if (r == 0) {
        r = tether__window_send(c, encode_request, a, false, ob.fds, ob.n);
    }
    if (r < 0) {
        tether__conn_unexport_lists(c, a->objects, 2);
    }
    if (buffers) {
        tether__outbufs_done(&ob);
    }
    tether_conn_unref(c);
    return r;
}

int
tether_conn_notify(tether_conn *c, const char *method, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    request_arg a = {.method = method, .format = format ? format : "", .ap = &ap};
    int r = build_args_with_objects(&a);
    if (r == 0) {
        r = notify(c, method, &a);
    }
    va_end(ap);
    tether_value_unref(a.built);
    return r;
}

typedef struct log_arg {
    int level;
    const char *logger, *message;
} log_arg;

static int
encode_log(tether__buf *out, void *arg)
{
    log_arg *a = arg;
    return tether__encode_log(out, a->level, a->logger, a->message);
}

int
tether_conn_log(tether_conn *given, int level, const char *logger, const char *message)
{
    if (level < TETHER_LOG_ERROR || level > TETHER_LOG_DEBUG || !message) {
        return -EINVAL;
    }
    tether_conn *c;
    int r = acquire_conn(given, "log", false, NULL, &c);
    if (r < 0) {
        return r;
    }
    log_arg a = {level, logger ? logger : "", message};
    r = tether__conn_send(c, encode_log, &a, false);
    tether_conn_unref(c);
    return r;
}

int
tether_conn_notify_values(tether_conn *c, const char *method, tether_value *args,
                          tether_value *kwargs)
{
    request_arg a = {0};
    int r = values_arg(&a, method, args, kwargs);
    return r < 0 ? r : notify(c, method, &a);
}

int
tether_conn_call_msgpack(tether_conn *c, const char *method, const tether_msgpack_args *args,
                         const tether_call_options *opts, tether_value **ret_result,
                         tether_error *reterr)
{
    request_arg a = {0};
    int r = msgpack_arg(&a, method, args);
    if (r < 0) {
        return refuse_call(r, method, ret_result, reterr);
    }
    return call_sync(c, method, &a, opts, ret_result, reterr);
}

int
tether_conn_call_async_msgpack(tether_conn *c, const char *method,
                               const tether_msgpack_args *args, const tether_call_options *opts,
                               tether_future **ret_future)
{
    request_arg a = {0};
    int r = msgpack_arg(&a, method, args);
    return r < 0 ? r : call_async(c, method, &a, opts, ret_future);
}

int
tether_conn_notify_msgpack(tether_conn *c, const char *method, const tether_msgpack_args *args)
{
    request_arg a = {0};
    int r = msgpack_arg(&a, method, args);
    return r < 0 ? r : notify(c, method, &a);
}

static void
run_future_callback(tether__task *task)
{
    tether_future *f = (tether_future *)((char *)task - offsetof(tether_future, callback_task));
    f->callback(f, f->callback_userdata);
    tether_future_unref(f);
}

static void
run_main_callback(tether__work *work)
{
    tether_future *f = (tether_future *)((char *)work - offsetof(tether_future, callback_work));
    f->callback(f, f->callback_userdata);
    tether_future_unref(f);
}

static void
discard_main_callback(tether__work *work)
{
    /* The owner is gone with the callback still queued: it will never run. */
    tether_future *f = (tether_future *)((char *)work - offsetof(tether_future, callback_work));
    if (f->callback_discard) {
        f->callback_discard(f->callback_userdata);
    }
    tether_future_unref(f);
}

/* Start the callback of a ready future where its context says. */
static void
fire_callback(tether_future *f, tether__ioloop *loop)
{
    tether_future_ref(f);
    if (f->callback_context == TETHER_CONTEXT_MAIN) {
        f->callback_work.run = run_main_callback;
        f->callback_work.discard = discard_main_callback;
        tether__mainq_push(f->callback_queue, NULL, &f->callback_work);
    } else if (f->callback_context == TETHER_CONTEXT_ANY || tether__ioloop_in_thread(loop)) {
        f->callback(f, f->callback_userdata);
        tether_future_unref(f);
    } else {
        f->callback_task.run = run_future_callback;
        tether__ioloop_post(loop, &f->callback_task);
    }
}

void
tether__future_complete(tether_future *f, int status, tether_value *result, const char *type,
                        const char *message, const char *traceback)
{
    pthread_mutex_lock(&f->lock);
    f->status = status;
    f->result = result;
    if (status < 0) {
        set_error(&f->error, type, message, traceback);
    }
    f->done = true;
    pthread_cond_broadcast(&f->cv);
    if (f->leading && !f->lead_raised && !pthread_equal(f->leader, pthread_self())) {
        f->lead_raised = true;
        tether__wake_raise(&f->lead_wake);
    }
    tether_future_fn cb = f->callback;
    tether_conn *c = f->conn;
    f->conn = NULL;
    pthread_mutex_unlock(&f->lock);
    if (cb) {
        fire_callback(f, c->link.loop);
    }
    tether_conn_unref(c);
    tether_future_unref(f); /* the pending table's reference */
}

int
tether_future_is_ready(tether_future *f)
{
    if (!f) {
        return -EINVAL;
    }
    pthread_mutex_lock(&f->lock);
    int done = f->done;
    pthread_mutex_unlock(&f->lock);
    return done;
}

/*
 * Read the connection on this thread until f is done or the deadline passes, if nobody
 * else reads it: a caller that pipelines calls and waits for their futures then has
 * their answers without waking the I/O thread, which would read them and wake us. The
 * answers of other calls are delivered as they come, the way a synchronous caller
 * delivers them; requests go where they would have gone from the I/O thread.
 */
static void
lead_until_done(tether_conn *c, tether_future *f, uint64_t deadline)
{
    tether__link *l = &c->link;
    tether__wake wake = tether__thread_wake();
    if (wake.fd < 0) {
        return; /* the condition variable below waits instead */
    }
    pthread_mutex_lock(&l->lock);
    bool leading = tether__link_role_take_locked(l);
    pthread_mutex_unlock(&l->lock);
    if (!leading) {
        return;
    }
    pthread_mutex_lock(&f->lock);
    f->leading = true;
    f->leader = pthread_self();
    f->lead_wake = wake;
    bool done = f->done;
    pthread_mutex_unlock(&f->lock);
    bool borrowed = tether__link_lead_begin(l);
    while (!done && tether__link_process_input(l) == 0) {
        pthread_mutex_lock(&f->lock);
        done = f->done;
        pthread_mutex_unlock(&f->lock);
        uint64_t now = tether_now_usec();
        if (done || tether__link_is_closed(l) || now >= deadline) {
            break;
        }
        uint64_t wait_ms = (deadline - now + 999) / 1000;
        if (tether__link_read_wait(l, &wake, false, wait_ms > 1000 ? 1000 : (int)wait_ms) < 0) {
            break;
        }
    }
    pthread_mutex_lock(&f->lock);
    f->leading = false;
    bool raised = f->lead_raised;
    f->lead_raised = false;
    pthread_mutex_unlock(&f->lock);
    if (raised) {
        tether__wake_drain(&wake); /* not left raised for the thread's next wait */
    }
    tether__link_lead_end(l, borrowed);
    pthread_mutex_lock(&l->lock);
    tether__link_role_release_locked(l);
    pthread_mutex_unlock(&l->lock);
}

/* How often a future's waiter hands the reading back from an event loop's thread. */
#define YIELD_SLICE_USEC 10000ull

int
tether_future_wait(tether_future *f, uint64_t timeout_usec)
{
    if (!f) {
        return -EINVAL;
    }
    uint64_t deadline =
        timeout_usec == TETHER_TIMEOUT_INFINITE ? UINT64_MAX : tether_now_usec() + timeout_usec;
    pthread_mutex_lock(&f->lock);
    tether_conn *c = f->done ? NULL : tether_conn_ref(f->conn);
    pthread_mutex_unlock(&f->lock);
    /* Requests held by batch calls go out before anyone waits for their answers, and the
     * answers are read by the I/O thread, not by an event loop's thread that may be busy,
     * this one's included: blocked here, it does not run its loop (and a loop may take the
     * reading back after a while: asked again each slice). */
    bool yield = c && tether__link_loop_reads(&c->link);
    if (c) {
        (void)tether__link_flush(&c->link);
        tether__link_idle_yield(&c->link, true);
        if (!yield) {
            lead_until_done(c, f, deadline);
        }
    }
    pthread_mutex_lock(&f->lock);
    uint64_t now;
    while (!f->done && (now = tether_now_usec()) < deadline) {
        uint64_t until = deadline;
        if (yield && deadline - now > YIELD_SLICE_USEC) {
            until = now + YIELD_SLICE_USEC;
        }
        tether__cond_wait_until(&f->cv, &f->lock, until);
        if (yield && !f->done) {
            pthread_mutex_unlock(&f->lock);
            tether__link_idle_yield(&c->link, true);
            pthread_mutex_lock(&f->lock);
        }
    }
    int r = f->done ? 0 : -ETIMEDOUT;
    pthread_mutex_unlock(&f->lock);
    tether_conn_unref(c);
    return r;
}

int
tether_future_get_result(tether_future *f, tether_value **ret_result, tether_error *reterr)
{
    if (ret_result) {
        *ret_result = NULL;
    }
    if (!f) {
        return -EINVAL;
    }
    pthread_mutex_lock(&f->lock);
    if (!f->done) {
        pthread_mutex_unlock(&f->lock);
        return -EINPROGRESS;
    }
    int r = f->status;
    if (r == 0 && ret_result) {
        *ret_result = tether_value_ref(f->result);
    } else if (r < 0 && reterr) {
        set_error(reterr, f->error.type, f->error.message, f->error.traceback);
    }
    pthread_mutex_unlock(&f->lock);
    return r;
}

int
tether_future_cancel(tether_future *f)
{
    if (!f) {
        return -EINVAL;
    }
    pthread_mutex_lock(&f->lock);
    tether_conn *c = f->done ? NULL : tether_conn_ref(f->conn);
    pthread_mutex_unlock(&f->lock);
    if (!c) {
        return -EALREADY;
    }
    pthread_mutex_lock(&c->link.lock);
    tether__pending *p = tether__pending_take(c, f->pending.id);
    pthread_mutex_unlock(&c->link.lock);
    int r = -EALREADY;
    if (p) {
        if (p->sent) {
            tether__send_cancel(c, p->id);
        }
        tether__pending_complete(c, p, -ECANCELED, NULL, TETHER__ERR_CANCELLED,
                                 "the call was cancelled", NULL);
        r = 0;
    }
    tether_conn_unref(c);
    return r;
}

int
tether_future_set_callback(tether_future *f, tether_context context, tether_future_fn fn,
                           void *userdata)
{
    return tether_future_set_callback_full(f, context, fn, userdata, NULL);
}

int
tether_future_set_callback_full(tether_future *f, tether_context context, tether_future_fn fn,
                                void *userdata, tether_future_discard_fn discard)
{
    if (!f || !fn) {
        return -EINVAL;
    }
    if (context != TETHER_CONTEXT_IO && context != TETHER_CONTEXT_MAIN &&
        context != TETHER_CONTEXT_ANY) {
        return -EINVAL;
    }
    pthread_mutex_lock(&f->lock);
    if (f->callback_set) {
        pthread_mutex_unlock(&f->lock);
        return -EALREADY;
    }
    f->callback_set = true;
    f->callback_userdata = userdata;
    f->callback_discard = discard;
    f->callback_context = context;
    if (f->done) {
        f->callback = fn;
        pthread_mutex_unlock(&f->lock);
        if (context != TETHER_CONTEXT_MAIN) {
            fn(f, userdata);
        } else {
            fire_callback(f, f->callback_ep->loop);
        }
        return 0;
    }
    f->callback = fn;
    pthread_mutex_unlock(&f->lock);
    return 0;
}

tether_future *
tether_future_ref(tether_future *f)
{
    if (f) {
        atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
    }
    return f;
}

tether_future *
tether_future_unref(tether_future *f)
{
    if (f && atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) == 1) {
        tether_value_unref(f->result);
        tether_error_done(&f->error);
        tether_conn_unref(f->conn);
        tether__endpoint_unref(f->callback_ep);
        pthread_cond_destroy(&f->cv);
        pthread_mutex_destroy(&f->lock);
        tether__free(f);
    }
    return NULL;
}

/* ---- calls on proxies ------------------------------------------------------------------ */

/* The target of a call on a proxy: its id, and the method (NULL: the object itself,
 * "__call__"). Returns 0 or -EINVAL for anything but a proxy. */
static int
object_target(tether_object *obj, const char **method, request_arg *a)
{
    if (!obj || !obj->remote) {
        return -EINVAL;
    }
    if (!*method) {
        *method = "__call__";
    }
    a->target = obj->id;
    return 0;
}

static int
object_request(tether_object *obj, const char **method, tether_value *args,
               tether_value *kwargs, request_arg *a)
{
    int r = object_target(obj, method, a);
    return r < 0 ? r : values_arg(a, *method, args, kwargs);
}

int
tether_object_call(tether_object *obj, const char *method, const tether_call_options *opts,
                   tether_value **ret_result, tether_error *reterr, const char *format, ...)
{
    request_arg a = {0};
    int r = object_request(obj, &method, NULL, NULL, &a);
    if (r < 0) {
        return refuse_call(r, method, ret_result, reterr);
    }
    va_list ap;
    va_start(ap, format);
    r = call_sync_format(obj->conn, obj->id, method, opts, ret_result, reterr, format, &ap);
    va_end(ap);
    return r;
}

/* The request of a call on a proxy whose arguments come from a format. */
static int
object_format_request(tether_object *obj, const char **method, const char *format, va_list *ap,
                      request_arg *a)
{
    int r = object_target(obj, method, a);
    if (r < 0) {
        return r;
    }
    a->method = *method;
    a->format = format ? format : "";
    a->ap = ap;
    return build_args_with_objects(a);
}

int
tether_object_call_async(tether_object *obj, const char *method, const tether_call_options *opts,
                         tether_future **ret_future, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    request_arg a = {0};
    int r = object_format_request(obj, &method, format, &ap, &a);
    if (r == 0) {
        r = call_async(obj->conn, method, &a, opts, ret_future);
    }
    va_end(ap);
    tether_value_unref(a.built);
    return r;
}

int
tether_object_notify(tether_object *obj, const char *method, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    request_arg a = {0};
    int r = object_format_request(obj, &method, format, &ap, &a);
    if (r == 0) {
        r = notify(obj->conn, method, &a);
    }
    va_end(ap);
    tether_value_unref(a.built);
    return r;
}

int
tether_object_call_values(tether_object *obj, const char *method, tether_value *args,
                          tether_value *kwargs, const tether_call_options *opts,
                          tether_value **ret_result, tether_error *reterr)
{
    request_arg a = {0};
    int r = object_request(obj, &method, args, kwargs, &a);
    if (r < 0) {
        return refuse_call(r, method, ret_result, reterr);
    }
    return call_sync(obj->conn, method, &a, opts, ret_result, reterr);
}

int
tether_object_call_async_values(tether_object *obj, const char *method, tether_value *args,
                                tether_value *kwargs, const tether_call_options *opts,
                                tether_future **ret_future)
{
    request_arg a = {0};
    int r = object_request(obj, &method, args, kwargs, &a);
    return r < 0 ? r : call_async(obj->conn, method, &a, opts, ret_future);
}

int
tether_object_notify_values(tether_object *obj, const char *method, tether_value *args,
                            tether_value *kwargs)
{
    request_arg a = {0};
    int r = object_request(obj, &method, args, kwargs, &a);
    return r < 0 ? r : notify(obj->conn, method, &a);
}

/* The request of a call on a proxy with a binding's msgpack arguments. */
static int
object_msgpack_request(tether_object *obj, const char **method, const tether_msgpack_args *args,
                       request_arg *a)
{
    int r = object_target(obj, method, a);
    return r < 0 ? r : msgpack_arg(a, *method, args);
}

int
tether_object_call_msgpack(tether_object *obj, const char *method,
                           const tether_msgpack_args *args, const tether_call_options *opts,
                           tether_value **ret_result, tether_error *reterr)
{
    request_arg a = {0};
    int r = object_msgpack_request(obj, &method, args, &a);
    if (r < 0) {
        return refuse_call(r, method, ret_result, reterr);
    }
    return call_sync(obj->conn, method, &a, opts, ret_result, reterr);
}

int
tether_object_call_async_msgpack(tether_object *obj, const char *method,
                                 const tether_msgpack_args *args,
                                 const tether_call_options *opts, tether_future **ret_future)
{
    request_arg a = {0};
    int r = object_msgpack_request(obj, &method, args, &a);
    return r < 0 ? r : call_async(obj->conn, method, &a, opts, ret_future);
}

int
tether_object_notify_msgpack(tether_object *obj, const char *method,
                             const tether_msgpack_args *args)
{
    request_arg a = {0};
    int r = object_msgpack_request(obj, &method, args, &a);
    return r < 0 ? r : notify(obj->conn, method, &a);
}
