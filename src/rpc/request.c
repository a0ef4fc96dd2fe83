/*
 * request: the serving side of a connection. An incoming REQUEST or NOTIFY becomes a
 * tether_request handed to the service's handler; the handler replies at once or keeps
 * the request and replies later from any thread. While a kept request is unanswered it
 * is on the connection's running list, and a timer sends PROGRESS for it often enough
 * that the caller's silence timeout does not expire (a third of the caller's timeout,
 * at most a second apart).
 *
 * A request owns one allocation holding its method name, args and kwargs bytes, copied
 * out of the input buffer, since that buffer is reused as soon as the handler returns;
 * except big args or kwargs, whose value takes the buffer of their frame instead.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "codec/validate.h"
#include "conn/pool.h"
#include "rpc/buffer.h"
#include "rpc/chain.h"
#include "rpc/conn.h"
#include "rpc/request.h"
#include "rpc/value.h"
#include "util/alloc.h"
#include "util/error.h"

static _Thread_local uint64_t current_chain;

uint64_t
tether__current_chain(void)
{
    return current_chain;
}

static void send_progress_on_timer(uv_timer_t *t);

/* ---- replies ---------------------------------------------------------------------- */

typedef struct response_arg {
    uint64_t id;
    bool is_error;
    const uint8_t *value;
    size_t value_len;
    tether_value *result; /* the value behind value, if it may hold objects */
    const char *type, *message, *traceback;
    tether__lend *give; /* a big value's memory, given to the link rather than copied */
} response_arg;

static int
encode_response(tether__buf *out, void *argp)
{
    response_arg *a = argp;
    if (a->is_error) {
        return tether__encode_error_response(out, a->id, a->type, a->message, a->traceback);
    }
    if (a->give && a->give->ok) {
        return tether__encode_response_room(out, a->id, a->value_len, &a->give->at);
    }
    return tether__encode_response(out, a->id, false, a->value, a->value_len);
}

static void
running_remove_locked(tether_conn *c, tether_request *req)
{
    if (!req->running) {
        return;
    }
    if (req->run_prev) {
        req->run_prev->run_next = req->run_next;
    } else {
        c->running = req->run_next;
    }
    if (req->run_next) {
        req->run_next->run_prev = req->run_prev;
    }
    req->running = false;
    c->running_count--;
    if (req->cancel_counted) {
        req->cancel_counted = false;
        c->running_cancelled--;
    }
}

/* Claim the one reply of req; false if it was replied already. */
static bool
claim_reply(tether_request *req)
{
    if (atomic_exchange(&req->replied, true)) {
        return false;
    }
    tether_conn *c = req->conn;
    pthread_mutex_lock(&c->link.lock);
    running_remove_locked(c, req);
    pthread_mutex_unlock(&c->link.lock);
    return true;
}

/* The result is over the frame size or nesting limit: say so instead of leaving the
 * caller to time out. */
static void
reply_too_large(tether_request *req)
{
    if (req->notification || atomic_load(&req->cancelled)) {
        return;
    }
    response_arg err = {.id = req->id,
                        .is_error = true,
                        .type = TETHER__ERR_MESSAGE_TOO_LARGE,
                        .message = "the result is over the frame size or nesting limit"};
    tether__conn_send(req->conn, encode_response, &err, false);
}

static int
send_response(tether_request *req, response_arg *a)
{
    if (req->notification || atomic_load(&req->cancelled)) {
        return 0;
    }
    a->id = req->id;
    /* Bytes built from a format were built within the limit; a value knows its own. */
    tether__objlist objects = tether__objlist_of(a->result);
    int r = 0;
    if (a->result && !tether__value_sendable(a->result)) {
        r = -EMSGSIZE;
    } else if (a->result && (r = tether__conn_export_lists(req->conn, &objects, 1)) < 0) {
        response_arg err = {.id = req->id,
                            .is_error = true,
                            .type = "TypeError",
                            .message = "the result holds a proxy of another connection"};
        if (r == -EINVAL) {
            tether__conn_send(req->conn, encode_response, &err, false);
        }
    } else {
        /* A reply from the main thread or a worker goes out at once: waking the I/O
         * thread to write it would add a thread hop to every MAIN and POOL call. */
        int mode = !tether__ioloop_in_thread(req->conn->link.loop);
        /* Buffers go as descriptors beside the frame, or inline where they cannot. */
        tether__outbufs ob;
        ob.n = 0;
        bool buffers = tether__value_has_buffers(a->result);
        if (buffers) {
            const uint8_t **const bytes[1] = {&a->value};
            size_t *const lens[1] = {&a->value_len};
            r = tether__outbufs_prepare(&req->conn->link, &a->result, 1, bytes, lens, &ob);
        }
        if (r < 0) {
            /* over the descriptors a frame carries, or no memory */
        } else if (ob.n) {
            r = tether__link_send_fds(&req->conn->link, encode_response, a, mode, ob.fds, ob.n);
        } else {
            r = a->give ? tether__link_send_lent(&req->conn->link, encode_response, a, a->give)
                        : tether__conn_send(req->conn, encode_response, a, mode);
        }
        if (buffers) {
            tether__outbufs_done(&ob);
        }
        if (r < 0 && a->result) {
            tether__conn_unexport_lists(req->conn, &objects, 1);
        }
    }
    if (r == -ENOBUFS) {
        tether__conn_drop_slow_reader(req->conn);
        return 0;
    }
    if (r == -EMSGSIZE && !a->is_error) {
        reply_too_large(req);
    }
    return r == -ENOTCONN ? 0 : r;
}

static void
unref_given_value(void *value, size_t size)
{
    (void)size;
    tether_value_unref(value);
}

int
tether_request_reply_value(tether_request *req, tether_value *result)
{
    if (!req) {
        return -EINVAL;
    }
    if (!claim_reply(req)) {
        return -EALREADY;
    }
    response_arg a = {.result = result};
    if (result) {
        const void *p;
        tether_value_get_msgpack(result, &p, &a.value_len);
        a.value = p;
    }
    /* A big value without objects goes out from where it is, the link holding a
     * reference until it is written (values are immutable). */
    tether__lend give;
    if (a.value_len >= TETHER__BIG_SPAN && tether__objlist_of(result).n == 0 &&
        !tether__value_has_buffers(result)) {
        give = (tether__lend){.src = a.value,
                              .len = a.value_len,
                              .release = unref_given_value,
                              .owner = tether_value_ref(result)};
        a.give = &give;
    }
    int r = send_response(req, &a);
    if (a.give && !give.ok) {
        tether_value_unref(result);
    }
    return r;
}

int
tether_request_reply(tether_request *req, const char *format, ...)
{
    if (!req) {
        return -EINVAL;
    }
    if (format && strpbrk(format, "ovB")) {
        /* It may hold objects or buffers, which travel with a value. */
        va_list ap;
        va_start(ap, format);
        tether_value *v;
        int r = tether_value_newv(&v, format, ap);
        va_end(ap);
        if (r < 0) {
            return r;
        }
        r = tether_request_reply_value(req, v);
        tether_value_unref(v);
        return r;
    }
    /* Built in a buffer of this thread, reused reply after reply: no allocation. Only
     * the frame's encoding reads it, before anything can run user code here. */
    tether__buf *value = format ? tether__thread_buf(TETHER__THREAD_BUF_FORMAT) : NULL;
    if (format && !value) {
        return -ENOMEM;
    }
    int r = 0;
    if (value) {
        tether__buf_reset(value);
        va_list ap;
        va_start(ap, format);
        r = tether__format_build(value, format, ap, false, NULL, NULL,
                                 TETHER__DEFAULT_MAX_DEPTH - 1);
        va_end(ap);
    }
    if (r < 0 && r != -EMSGSIZE) {
        return r;
    }
    if (!claim_reply(req)) {
        return -EALREADY;
    }
    if (r == -EMSGSIZE) {
        /* Tell the caller why instead of leaving it to time out. */
        reply_too_large(req);
        return r;
    }
    response_arg a = {0};
    if (value) {
        a.value = tether__buf_head(value);
        a.value_len = tether__buf_pending(value);
    }
    /* A big value's buffer goes to the link, which sends from it and keeps it for the
     * next big buffer (util/buf.h) once written: one copy of the value, by the format. */
    tether__lend give;
    if (a.value_len >= TETHER__BIG_SPAN) {
        give = (tether__lend){.src = a.value,
                              .len = a.value_len,
                              .release = tether__buf_keep,
                              .owner = value->data,
                              .owner_size = value->cap};
        a.give = &give;
    }
    r = send_response(req, &a);
    if (a.give && give.ok) {
        *value = TETHER__BUF_INIT; /* the link's now */
    }
    return r;
}

static int
reply_error_full(tether_request *req, const char *type, const char *message, const char *traceback)
{
    if (!claim_reply(req)) {
        return -EALREADY;
    }
    response_arg a = {.is_error = true, .type = type, .message = message, .traceback = traceback};
    return send_response(req, &a);
}

static int
reply_error_text(tether_request *req, const char *type, const char *message)
{
    return reply_error_full(req, type, message, NULL);
}

int
tether_request_reply_error_full(tether_request *req, const tether_error *error)
{
    if (!req || !error || !error->type || !*error->type) {
        return -EINVAL;
    }
    return reply_error_full(req, error->type, error->message ? error->message : "",
                            error->traceback);
}

int
tether_request_reply_error(tether_request *req, const char *type, const char *format, ...)
{
    if (!req || !type || !*type) {
        return -EINVAL;
    }
    char message[1024] = "";
    if (format) {
        va_list ap;
        va_start(ap, format);
        vsnprintf(message, sizeof(message), format, ap);
        va_end(ap);
    }
    return reply_error_text(req, type, message);
}

/* ---- accessors ---------------------------------------------------------------------- */

/* The value of args or kwargs: made on first use, or made already (big ones, in the
 * frame's buffer); either way it takes the objects bound in them on first use. */
static tether_value *
lazy_value(tether_value **slot, const uint8_t *raw, size_t len, const char *empty,
           tether__objvec *objs, tether__bufvec *bufs)
{
    if (!*slot) {
        if (raw) {
            tether__value_new_copy(raw, len, slot);
        } else {
            tether__value_new_copy((const uint8_t *)empty, 1, slot);
        }
    }
    if (*slot && objs->n && tether__value_adopt(*slot, objs) < 0) {
        *slot = tether_value_unref(*slot);
    }
    if (*slot && bufs->n && tether__value_adopt_buffers(*slot, bufs) < 0) {
        *slot = tether_value_unref(*slot);
    }
    return *slot;
}

tether_value *
tether_request_get_args(tether_request *req)
{
    return req ? lazy_value(&req->args, req->args_raw, req->args_len, "\x90", &req->args_objs,
                            &req->args_bufs)
               : NULL;
}

tether_value *
tether_request_get_kwargs(tether_request *req)
{
    return req ? lazy_value(&req->kwargs, req->kwargs_raw, req->kwargs_len, "\x80",
                            &req->kwargs_objs, &req->kwargs_bufs)
               : NULL;
}

int
tether_request_get_kwargs_count(const tether_request *req)
{
    if (!req) {
        return -EINVAL;
    }
    if (!req->kwargs_raw) {
        return 0;
    }
    /* The frame was validated as it arrived: a map. */
    tether__mp_reader r = {req->kwargs_raw, req->kwargs_raw + req->kwargs_len};
    uint32_t n = 0;
    int err = tether__mp_read_map(&r, &n);
    return err < 0 ? err : (int)n;
}

tether_object *
tether_request_get_object(const tether_request *req)
{
    return req ? req->object : NULL;
}

int
tether_request_read(tether_request *req, const char *format, ...)
{
    if (!req) {
        return -EINVAL;
    }
    tether_value *args = tether_request_get_args(req);
    if (!args) {
        return -ENOMEM;
    }
    va_list ap;
    va_start(ap, format);
    int r = tether__value_read_args(args, &req->read_error, format ? format : "", ap);
    va_end(ap);
    return r;
}

const char *
tether_request_get_method(const tether_request *req)
{
    return req ? req->method : NULL;
}

tether_conn *
tether_request_get_conn(const tether_request *req)
{
    return req ? req->conn : NULL;
}

int
tether_request_is_notification(const tether_request *req)
{
    return req && req->notification;
}

int
tether_request_is_cancelled(const tether_request *req)
{
    return req && atomic_load(&((tether_request *)req)->cancelled);
}

tether_request *
tether_request_ref(tether_request *req)
{
    if (req) {
        atomic_fetch_add_explicit(&req->refs, 1, memory_order_relaxed);
    }
    return req;
}

tether_request *
tether_request_unref(tether_request *req)
{
    if (!req || atomic_fetch_sub_explicit(&req->refs, 1, memory_order_acq_rel) != 1) {
        return NULL;
    }
    if (!atomic_load(&req->replied)) {
        reply_error_text(req, TETHER__ERR_GENERIC,
                         "the handler dropped the request without replying");
    }
    tether_value_unref(req->args);
    tether_value_unref(req->kwargs);
    tether__objvec_clear(&req->args_objs);
    tether__objvec_clear(&req->kwargs_objs);
    if (req->args_bufs.v || req->kwargs_bufs.v) {
        tether__bufvec_clear(&req->args_bufs);
        tether__bufvec_clear(&req->kwargs_bufs);
    }
    tether_object_unref(req->object);
    tether_error_done(&req->read_error);
    tether_conn_unref(req->conn);
    tether__free(req);
    return NULL;
}

/* ---- incoming requests (the I/O thread, or a main thread reading, see take_request) */

/* A request with its own copy of f's method, args and kwargs, but for those that held
 * (a value that took the frame's buffer, or NULL) has: its args if held_args, else its
 * kwargs. Inlined twice, so that a small request tests nothing about big ones. */
static inline tether_request *
request_alloc(tether_conn *c, const tether__frame *f, tether_value *held, bool held_args)
{
    size_t size = sizeof(tether_request) + f->method.len + 1 +
                  (held && held_args ? 0 : f->args.len) + (held && !held_args ? 0 : f->kwargs.len);
    tether_request *req = tether__malloc(size);
    if (!req) {
        tether_value_unref(held);
        return NULL;
    }
    memset(req, 0, sizeof(*req));
    uint8_t *p = (uint8_t *)(req + 1);
    memcpy(p, f->method.ptr, f->method.len);
    p[f->method.len] = '\0';
    req->method = (const char *)p;
    p += f->method.len + 1;
    if (held) {
        const void *data;
        size_t len;
        tether_value_get_msgpack(held, &data, &len);
        *(held_args ? &req->args : &req->kwargs) = held;
        *(held_args ? &req->args_raw : &req->kwargs_raw) = data;
        *(held_args ? &req->args_len : &req->kwargs_len) = len;
    }
    if (f->args.len && !(held && held_args)) {
        memcpy(p, f->args.ptr, f->args.len);
        req->args_raw = p;
        req->args_len = f->args.len;
        p += f->args.len;
    }
    if (f->kwargs.len && !(held && !held_args)) {
        memcpy(p, f->kwargs.ptr, f->kwargs.len);
        req->kwargs_raw = p;
        req->kwargs_len = f->kwargs.len;
    }
    atomic_init(&req->refs, 1);
    atomic_init(&req->replied, false);
    atomic_init(&req->cancelled, false);
    req->conn = tether_conn_ref(c);
    req->id = f->id;
    req->chain = f->chain ? f->chain : (f->kind == TETHER__REQUEST ? f->id : 0);
    req->timeout_ms = f->timeout_ms;
    req->notification = f->kind == TETHER__NOTIFY;
    return req;
}

static tether_request *
request_new(tether_conn *c, const tether__frame *f)
{
    if (f->args.len < TETHER__BIG_SPAN && f->kwargs.len < TETHER__BIG_SPAN) {
        return request_alloc(c, f, NULL, false);
    }
    /* Big args (or kwargs) stay in the buffer the frame was read into, which their value
     * takes, instead of being copied out of it; the rest is copied. */
    bool big_args = f->args.len >= f->kwargs.len;
    const tether__span *big = big_args ? &f->args : &f->kwargs;
    tether_value *held = NULL;
    size_t cap;
    void *block = tether__link_take_input(&c->link, f, &cap);
    if (block && tether__value_new_in_block(block, cap, big->ptr, big->len, &held) < 0) {
        tether__free(block);
        return NULL;
    }
    return request_alloc(c, f, held, big_args);
}

/* Resolve the REFs of received bytes (NULL: none; the request's own copy) into objs. */
static int
bind_received(tether_conn *c, const uint8_t *raw, size_t len, tether__objvec *objs, char *err,
              size_t errlen)
{
    return raw ? tether__conn_bind_refs(c, (uint8_t *)raw, len, objs, err, errlen) : 0;
}

/* Free a request that was answered without running (the answer went out already). */
static void
drop_unreplied(tether_request *req)
{
    atomic_store(&req->replied, true);
    tether_request_unref(req);
}

static void
error_reply(tether_conn *c, const tether__frame *f, const char *type, const char *message)
{
    if (f->kind != TETHER__REQUEST) {
        tether__log(c->ep, TETHER_LOG_NOTICE, "notification from %s dropped: %s: %s",
                    c->link.peer_name, type, message);
        return;
    }
    response_arg a = {.id = f->id, .is_error = true, .type = type, .message = message};
    tether__conn_send(c, encode_response, &a, !tether__ioloop_in_thread(c->link.loop));
}

static uint64_t
progress_interval_usec(const tether_request *req)
{
    uint64_t interval = 1000000;
    if (req->timeout_ms && req->timeout_ms * 1000 / 3 < interval) {
        interval = req->timeout_ms * 1000 / 3;
    }
    return interval < 1000 ? 1000 : interval;
}

static void start_progress_timer(tether_conn *c);
static void run_progress_start(tether__task *task);

/*
 * List req as running (a reply is owed and the handler kept it, or it waits for the main
 * thread), so that progress keeps its call alive. The progress timer lives on the I/O
 * thread: another thread that needs it started posts a task, which happens once per
 * idle-to-busy change, not per request (the timer stops only when a tick finds nothing
 * running).
 */
static void
keep_running(tether_conn *c, tether_request *req)
{
    if (req->notification) {
        return;
    }
    uint64_t interval = progress_interval_usec(req);
    bool in_io_thread = tether__ioloop_in_thread(c->link.loop);
    bool start = false, post = false;
    pthread_mutex_lock(&c->link.lock);
    if (!atomic_load(&req->replied)) {
        req->running = true;
        req->run_prev = NULL;
        req->run_next = c->running;
        if (c->running) {
            c->running->run_prev = req;
        }
        c->running = req;
        c->running_count++;
        start =
            req->timeout_ms != 0 && (!c->progress_running || interval < c->progress_interval_usec);
        if (start) {
            c->progress_running = true;
            c->progress_interval_usec = interval;
        }
    }
    if (start && !in_io_thread && !c->progress_posted) {
        post = c->progress_posted = true;
        tether_conn_ref(c);
    }
    pthread_mutex_unlock(&c->link.lock);
    if (post) {
        c->progress_task.run = run_progress_start;
        tether__ioloop_post(c->link.loop, &c->progress_task);
    } else if (start && in_io_thread) {
        start_progress_timer(c);
    }
}

/*
 * Run the handler on this thread with the request's chain as the thread's chain, then
 * answer for a handler that returned without replying and without keeping it.
 */
static void
invoke(tether_request *req)
{
    tether__endpoint *ep = req->conn->ep;
    tether__handler_frame frame;
    /* Not once the host stopped or the client went: its owner may have freed what the
     * handler uses (rpc/endpoint.h). */
    if (!tether__endpoint_handler_enter(ep, &frame)) {
        return;
    }
    uint64_t outer_chain = current_chain;
    current_chain = req->chain;
    int r = req->handler(req, req->userdata);
    current_chain = outer_chain;
    tether__endpoint_handler_leave(ep, &frame);
    if (atomic_load(&req->replied) || atomic_load(&req->refs) > 1) {
        return;
    }
    if (r >= 0) {
        tether_request_reply(req, NULL);
    } else if (req->read_error.type) {
        reply_error_text(req, req->read_error.type, req->read_error.message);
    } else {
        reply_error_text(req, TETHER__ERR_GENERIC, tether_strerror(r));
    }
}

static void
run_queued_request(tether__work *work)
{
    tether_request *req = (tether_request *)((char *)work - offsetof(tether_request, work));
    if (!atomic_load(&req->cancelled)) {
        invoke(req);
    }
    tether_request_unref(req);
}

static void
discard_queued_request(tether__work *work)
{
    tether_request *req = (tether_request *)((char *)work - offsetof(tether_request, work));
    reply_error_text(req, TETHER__ERR_CANCELLED, "the host stopped before running the call");
    tether_request_unref(req);
}

static void
run_pool_request(tether__task *task)
{
    tether_request *req = (tether_request *)((char *)task - offsetof(tether_request, pool_task));
    if (!atomic_load(&req->cancelled)) {
        invoke(req);
    }
    tether_request_unref(req);
}

/*
 * What runs a request: its service, or the method of the exported object it targets
 * (a new reference in *ret_object). Returns NULL, or the error type refusing it with
 * the reason in message.
 */
static const char *
resolve_handler(tether_conn *c, const tether__frame *f, bool over, tether__service *svc,
                tether_object **ret_object, char *message, size_t size)
{
    int shown = (int)(f->method.len > 200 ? 200 : f->method.len);
    const char *method = (const char *)f->method.ptr;
    if (atomic_load(&c->draining)) {
        snprintf(message, size,
                 "the connection is closing (a reset or disconnect by the host): "
                 "the request was not run");
        return TETHER__ERR_CLOSING;
    }
    if (over && f->kind == TETHER__REQUEST) {
        snprintf(message, size, "more than %u requests in flight", c->ep->max_in_flight);
        return TETHER__ERR_TOO_MANY_REQUESTS;
    }
    if (f->target == 0) {
        if (tether__endpoint_find_service(c->ep, method, f->method.len, svc) < 0) {
            snprintf(message, size, "no service '%.*s' on %s '%s'", shown, method,
                     c->ep->is_host ? "host" : "client", c->ep->name);
            return TETHER__ERR_NO_SUCH_SERVICE;
        }
        return NULL;
    }
    tether_object *object = *ret_object = tether__conn_find_export(c, f->target);
    if (!object) {
        snprintf(message, size, "no object %llu here (it was released)",
                 (unsigned long long)f->target);
        return TETHER__ERR_NO_SUCH_OBJECT;
    }
    if (tether__object_method(object, method, f->method.len, &svc->handler, &svc->context) < 0) {
        snprintf(message, size, "'%s' object has no method '%.*s'", object->cls->name, shown,
                 method);
        return "AttributeError";
    }
    svc->userdata = object->userdata;
    return NULL;
}

/* Run an accepted request where its service's context says. */
static void
route_request(tether_conn *c, tether_request *req, tether_context context)
{
    switch (context) {
    case TETHER_CONTEXT_MAIN:
        /* Listed as running while it waits for dispatch, so progress keeps the call
         * alive however long the main thread takes to get to it. */
        keep_running(c, req);
        req->work.run = run_queued_request;
        req->work.discard = discard_queued_request;
        /* A call-back into a main thread that is waiting on this very chain runs in
         * that wait; anything else waits for dispatch. */
        if (!tether__chain_deliver(req->chain, &c->ep->main_thread, &req->work)) {
            tether__mainq_push(c->ep->mainq, &c->lane, &req->work);
        }
        return;
    case TETHER_CONTEXT_POOL:
        keep_running(c, req);
        /* A thread waiting on this chain runs it: the pool's few threads may all be
         * blocked in calls of this very conversation. */
        req->work.run = run_queued_request;
        req->work.discard = discard_queued_request;
        if (tether__chain_deliver(req->chain, NULL, &req->work)) {
            return;
        }
        req->pool_task.run = run_pool_request;
        if (tether__pool_post(&req->pool_task) < 0) {
            reply_error_text(req, TETHER__ERR_GENERIC, "cannot queue the request on the pool");
            tether_request_unref(req);
        }
        return;
    default:
        invoke(req);
        if (!atomic_load(&req->replied) && atomic_load(&req->refs) > 1) {
            keep_running(c, req);
        }
        tether_request_unref(req);
        return;
    }
}

/*
 * What the caller has running here, in one look under the lock: whether it is at its
 * limit of requests in flight (*over), and whether the REQUEST f reuses the id of one
 * of them that was not
 * cancelled (returned: a cancelled one gets no answer any more, so its id is the
 * caller's again). The walk costs nothing while nothing runs, the common case of calls
 * answered at once.
 */
static bool
id_in_flight(tether_conn *c, const tether__frame *f, bool *over)
{
    bool found = false;
    pthread_mutex_lock(&c->link.lock);
    *over = c->running_count - c->running_cancelled >= c->ep->max_in_flight;
    uint64_t id = f->id;
    for (tether_request *req = f->kind == TETHER__REQUEST ? c->running : NULL; req && !found;
         req = req->run_next) {
        found = req->id == id && !atomic_load(&req->cancelled);
    }
    pthread_mutex_unlock(&c->link.lock);
    return found;
}

/* Whether a thread other than the I/O thread may start a request served in context:
 * the endpoint's main thread its MAIN work, any thread POOL work (a worker runs it). */
static bool
starts_here(tether_conn *c, tether_context context)
{
    return context == TETHER_CONTEXT_POOL ||
           (context == TETHER_CONTEXT_MAIN && pthread_equal(c->ep->main_thread, pthread_self()));
}

/*
 * Check, resolve and run (or queue) request f. caller: f was read by a thread other
 * than the I/O thread; act only if this thread may start it (starts_here) and it is
 * accepted, and return false without a trace otherwise (the I/O thread then acts on
 * it). Returns true when f was acted on.
 */
static bool
accept_request(tether_conn *c, const tether__frame *f, bool caller)
{
    char message[384];
    tether__service svc;
    tether_object *object = NULL;
    bool over = false;
    /* the error type refusing the request, if any */
    const char *error;
    if (caller) {
        error = resolve_handler(c, f, false, &svc, &object, message, sizeof(message));
        if (error || !starts_here(c, svc.context)) {
            tether_object_unref(object);
            return false;
        }
    }
    if (id_in_flight(c, f, &over)) {
        /* Two answers with one id could not be told apart: the caller broke the
         * protocol, and nothing sent back could say so unambiguously. */
        char what[96];
        snprintf(what, sizeof(what), "request id %llu is already in flight",
                 (unsigned long long)f->id);
        tether__log(c->ep, TETHER_LOG_WARNING, "connection %s (pid %lld): %s; closing it",
                    c->link.peer_name, (long long)c->link.peer_pid, what);
        tether__link_fail(&c->link, -ECONNRESET, what);
        tether_object_unref(object);
        return true;
    }
    if (!caller) {
        error = resolve_handler(c, f, over, &svc, &object, message, sizeof(message));
    } else if (over && f->kind == TETHER__REQUEST) {
        error = TETHER__ERR_TOO_MANY_REQUESTS;
        snprintf(message, sizeof(message), "more than %u requests in flight", c->ep->max_in_flight);
    }
    /* A refused request is not copied, unless it carries references: those are counted
     * as they arrive, whatever becomes of the request, so they are bound and released. */
    tether_request *req = !error || f->refs ? request_new(c, f) : NULL;
    if (!req && (!error || f->refs)) {
        error = TETHER__ERR_GENERIC;
        snprintf(message, sizeof(message), "out of memory");
    }
    char bind_error[128];
    if (req && f->refs &&
        (bind_received(c, req->args_raw, req->args_len, &req->args_objs, bind_error,
                       sizeof(bind_error)) < 0 ||
         bind_received(c, req->kwargs_raw, req->kwargs_len, &req->kwargs_objs, bind_error,
                       sizeof(bind_error)) < 0) &&
        !error) {
        error = TETHER__ERR_NO_SUCH_OBJECT;
        snprintf(message, sizeof(message), "%s", bind_error);
    }
    if (req && f->buffers && !error) {
        /* Descriptors beside the frame become the buffers its BUFFER exts name. */
        tether__span spans[2] = {{req->args_raw, req->args_len},
                                 {req->kwargs_raw, req->kwargs_len}};
        tether__bufvec vecs[2] = {TETHER__BUFVEC_INIT, TETHER__BUFVEC_INIT};
        const char *why = NULL;
        int r = tether__buffers_bind(&c->link, f, spans, 2, vecs, &why);
        req->args_bufs = vecs[0];
        req->kwargs_bufs = vecs[1];
        if (r == -EPROTO) {
            tether__link_break(&c->link, why);
            tether_object_unref(object);
            drop_unreplied(req);
            return true;
        }
        if (r < 0) {
            error = TETHER__ERR_GENERIC;
            snprintf(message, sizeof(message), "%s", why ? why : tether_strerror(r));
        }
    }
    if (error) {
        error_reply(c, f, error, message);
        tether_object_unref(object);
        if (req) {
            drop_unreplied(req);
        }
        return true;
    }
    req->object = object;
    req->handler = svc.handler;
    req->userdata = svc.userdata;
    route_request(c, req, svc.context);
    return true;
}

void
tether__conn_on_request(tether_conn *c, const tether__frame *f)
{
    accept_request(c, f, false);
}

bool
tether__conn_take_request(tether_conn *c, const tether__frame *f)
{
    /* Work for this thread's own main queue (or a call-back for its own wait), and work
     * for the pool, needs no other thread; IO services start from the I/O thread. */
    return accept_request(c, f, true);
}

int
tether__request_set_cancel_hook(tether_request *req, void (*hook)(void *arg), void *arg)
{
    tether_conn *c = req->conn;
    pthread_mutex_lock(&c->link.lock);
    bool cancelled = atomic_load(&req->cancelled);
    if (!cancelled) {
        req->cancel_hook = hook;
        req->cancel_arg = arg;
    }
    pthread_mutex_unlock(&c->link.lock);
    return cancelled ? -ECANCELED : 0;
}

void *
tether__request_take_cancel_hook(tether_request *req)
{
    tether_conn *c = req->conn;
    pthread_mutex_lock(&c->link.lock);
    void *arg = req->cancel_hook ? req->cancel_arg : NULL;
    req->cancel_hook = NULL;
    req->cancel_arg = NULL;
    pthread_mutex_unlock(&c->link.lock);
    return arg;
}

/* Mark req cancelled (conn lock held); true if a hook is now due, which the caller
 * runs with run_cancel_hook once the lock is released. */
static bool
cancel_locked(tether_request *req)
{
    atomic_store(&req->cancelled, true);
    if (req->running && !req->cancel_counted) {
        /* Out of the caller's window from now on (protocol.md, Limits). */
        req->cancel_counted = true;
        req->conn->running_cancelled++;
    }
    if (!req->cancel_hook) {
        return false;
    }
    tether_request_ref(req);
    return true;
}

static void
run_cancel_hook(tether_request *req)
{
    tether_conn *c = req->conn;
    pthread_mutex_lock(&c->link.lock);
    void (*hook)(void *) = req->cancel_hook;
    void *arg = req->cancel_arg;
    req->cancel_hook = NULL;
    req->cancel_arg = NULL;
    pthread_mutex_unlock(&c->link.lock);
    if (hook) {
        hook(arg);
    }
    tether_request_unref(req);
}

void
tether__conn_on_cancel(tether_conn *c, uint64_t id)
{
    tether_request *due = NULL;
    pthread_mutex_lock(&c->link.lock);
    for (tether_request *req = c->running; req; req = req->run_next) {
        if (req->id == id) {
            due = cancel_locked(req) ? req : NULL;
            break;
        }
    }
    pthread_mutex_unlock(&c->link.lock);
    if (due) {
        run_cancel_hook(due);
    }
}

void
tether__request_cancel_all(tether_conn *c)
{
    tether_request *due = NULL;
    pthread_mutex_lock(&c->link.lock);
    for (tether_request *req = c->running; req; req = req->run_next) {
        if (cancel_locked(req)) {
            req->cancel_next = due;
            due = req;
        }
    }
    pthread_mutex_unlock(&c->link.lock);
    while (due) {
        tether_request *next = due->cancel_next;
        run_cancel_hook(due);
        due = next;
    }
}

size_t
tether__request_fail_running(tether_conn *c, const char *type, const char *message)
{
    uint64_t stack_ids[64], *ids = stack_ids;
    size_t n = 0;
    pthread_mutex_lock(&c->link.lock);
    if (c->running_count > 64) {
        ids = tether__malloc(c->running_count * sizeof(uint64_t));
    }
    size_t cap = ids ? (c->running_count > 64 ? c->running_count : 64) : 0;
    tether_request *next;
    for (tether_request *req = c->running; req; req = next) {
        next = req->run_next;
        /* The one reply is this error: the handler's own, later, is dropped. */
        if (atomic_exchange(&req->replied, true)) {
            continue;
        }
        atomic_store(&req->cancelled, true);
        running_remove_locked(c, req);
        if (!req->notification && n < cap) {
            ids[n++] = req->id;
        }
    }
    pthread_mutex_unlock(&c->link.lock);
    for (size_t i = 0; i < n; i++) {
        response_arg a = {.id = ids[i], .is_error = true, .type = type, .message = message};
        tether__conn_send(c, encode_response, &a, false);
    }
    if (ids != stack_ids) {
        tether__free(ids);
    }
    return n;
}

/* ---- progress ------------------------------------------------------------------------ */

typedef struct progress_arg {
    uint64_t *ids;
    size_t n;
} progress_arg;

static int
encode_progress(tether__buf *out, void *argp)
{
    progress_arg *a = argp;
    return tether__encode_progress(out, a->ids, a->n);
}

static void
send_progress(tether_conn *c)
{
    uint64_t stack_ids[64];
    progress_arg a = {stack_ids, 0};
    pthread_mutex_lock(&c->link.lock);
    size_t n = c->running_count;
    if (n > 64) {
        a.ids = tether__malloc(n * sizeof(uint64_t));
        if (!a.ids) {
            pthread_mutex_unlock(&c->link.lock);
            return;
        }
    }
    for (tether_request *req = c->running; req && a.n < n; req = req->run_next) {
        if (req->timeout_ms) {
            a.ids[a.n++] = req->id;
        }
    }
    /* Decided under the lock: a request kept from now on finds the timer stopped and
     * has it started again (keep_running). */
    if (a.n == 0) {
        c->progress_running = false;
    }
    pthread_mutex_unlock(&c->link.lock);
    if (a.n > 0 && tether__conn_send(c, encode_progress, &a, true) == -ENOBUFS) {
        tether__conn_drop_slow_reader(c);
    }
    if (a.ids != stack_ids) {
        tether__free(a.ids);
    }
    if (a.n == 0 && c->timers_live) {
        uv_timer_stop(&c->progress_timer);
    }
}

static void
send_progress_on_timer(uv_timer_t *t)
{
    send_progress(t->data);
}

/* Start (or speed up) the progress timer as keep_running asked. I/O thread. */
static void
start_progress_timer(tether_conn *c)
{
    pthread_mutex_lock(&c->link.lock);
    bool wanted = c->progress_running && c->timers_live;
    uint64_t interval = c->progress_interval_usec;
    if (!c->timers_live) {
        c->progress_running = false;
    }
    pthread_mutex_unlock(&c->link.lock);
    if (wanted) {
        uint64_t ms = (interval + 999) / 1000;
        uv_timer_start(&c->progress_timer, send_progress_on_timer, ms, ms);
    }
}

static void
run_progress_start(tether__task *task)
{
    tether_conn *c = (tether_conn *)((char *)task - offsetof(tether_conn, progress_task));
    pthread_mutex_lock(&c->link.lock);
    c->progress_posted = false;
    pthread_mutex_unlock(&c->link.lock);
    start_progress_timer(c);
    tether_conn_unref(c);
}
