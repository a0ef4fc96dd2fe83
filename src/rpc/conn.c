/*
 * conn: the tether_conn object and the hooks through which its link hands frames up:
 * responses and progress to the calls (call.c), requests and cancels to the request
 * side (request.c), releases to the object tables (object.c), hello and control to the
 * endpoint's owner (host.c, client.c). See conn.h.
 */
#define _GNU_SOURCE
#include "rpc/conn.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "rpc/call.h"
#include "rpc/request.h"
#include "util/alloc.h"
#include "util/condwait.h"

/* ---- the link's hooks ------------------------------------------------------------ */

static void
hook_hello(tether__link *l, const tether__hello *hello, tether__hello_result *result)
{
    tether_conn *c = tether__conn_of(l);
    if (c->ep->hooks.hello) {
        c->ep->hooks.hello(c->ep, c, hello, result);
    } else {
        result->refuse_code = "protocol";
        snprintf(result->refuse_message, sizeof(result->refuse_message),
                 "this end takes no hello");
    }
}

/* Count a call that came in; the reserved announcement is not one. */
static void
count_call_in(tether_conn *c, const tether__frame *f)
{
    bool announce = f->kind == TETHER__NOTIFY && f->target == 0 &&
                    f->method.len == sizeof(TETHER__ANNOUNCE) - 1 &&
                    memcmp(f->method.ptr, TETHER__ANNOUNCE, f->method.len) == 0;
    if (!announce) {
        atomic_fetch_add_explicit(&c->calls_in, 1, memory_order_relaxed);
    }
}

static void
hook_request(tether__link *l, const tether__frame *f)
{
    tether_conn *c = tether__conn_of(l);
    count_call_in(c, f);
    tether__conn_on_request(c, f);
}

static bool
hook_take_request(tether__link *l, const tether__frame *f)
{
    tether_conn *c = tether__conn_of(l);
    if (!tether__conn_take_request(c, f)) {
        return false;
    }
    count_call_in(c, f);
    return true;
}

static void
hook_response(tether__link *l, const tether__frame *f)
{
    tether__conn_on_response(tether__conn_of(l), f);
}

static void
hook_progress(tether__link *l, const tether__frame *f)
{
    tether__conn_on_progress(tether__conn_of(l), f);
}

static void
hook_cancel(tether__link *l, uint64_t id)
{
    tether__conn_on_cancel(tether__conn_of(l), id);
}

static void
hook_buffers_done(tether__link *l, const tether__frame *f)
{
    tether__conn_buffers_on_done(tether__conn_of(l), f);
}

static void
hook_release(tether__link *l, const tether__frame *f)
{
    tether__conn_on_release(tether__conn_of(l), f);
}

static void
hook_control(tether__link *l, const char *action, const char *reason)
{
    tether_conn *c = tether__conn_of(l);
    if (c->ep->hooks.control) {
        c->ep->hooks.control(c->ep, c, action, reason);
    }
}

static void
hook_log(tether__link *l, int level, const tether__span *logger, const tether__span *message)
{
    tether__log(tether__conn_of(l)->ep, level, "[%s pid %lld] %.*s: %.*s", l->peer_name,
                (long long)l->peer_pid, (int)logger->len, (const char *)logger->ptr,
                (int)message->len, (const char *)message->ptr);
}

/* The pool's hold on a connection its idle worker may read. */
static void
pool_source_hold(tether__pool_source *src)
{
    tether_conn_ref((tether_conn *)((char *)src - offsetof(tether_conn, pool_source)));
}

static void
pool_source_drop(tether__pool_source *src)
{
    tether_conn_unref((tether_conn *)((char *)src - offsetof(tether_conn, pool_source)));
}

static void
hook_attached(tether__link *l)
{
    tether_conn *c = tether__conn_of(l);
    uv_loop_t *uv = tether__ioloop_uv(l->loop);
    uv_timer_init(uv, &c->handshake_timer);
    uv_timer_init(uv, &c->sweep_timer);
    uv_timer_init(uv, &c->progress_timer);
    c->handshake_timer.data = c->sweep_timer.data = c->progress_timer.data = c;
    c->open_timers = 3;
    c->timers_live = true;
    tether_conn_ref(c); /* the timers' reference, dropped when the last one closed */
    if (c->ep->hooks.attached) {
        c->ep->hooks.attached(c->ep, c);
    }
    if (!c->ep->is_host && atomic_load(&c->ep->pool_services)) {
        /* A client's one connection, with services for the pool: an idle pool worker
         * reads it, so that a request for one wakes that worker alone (conn/pool.h).
         * Unlisted when it fails; it may have failed already. */
        c->pool_source =
            (tether__pool_source){.link = l, .hold = pool_source_hold, .drop = pool_source_drop};
        tether__pool_add_source(&c->pool_source);
        if (tether__link_is_closed(l)) {
            tether__pool_remove_source(&c->pool_source);
        }
    }
}

static void
hook_fail(tether__link *l, int status, const char *reason)
{
    tether_conn *c = tether__conn_of(l);
    if (!c->ep->is_host) {
        tether__pool_remove_source(&c->pool_source); /* if listed: a no-op otherwise */
    }
    tether__conn_fail_pending(c, status, reason);
    tether__request_cancel_all(c);
    tether__conn_drop_objects(c);
    tether__conn_drop_buffers(c);
}

static void
on_timer_closed(uv_handle_t *h)
{
    tether_conn *c = h->data;
    if (--c->open_timers == 0) {
        tether_conn_unref(c); /* the timers' reference */
    }
}

static void
hook_closed(tether__link *l)
{
    tether_conn *c = tether__conn_of(l);
    if (c->timers_live) {
        c->timers_live = false;
        uv_close((uv_handle_t *)&c->handshake_timer, on_timer_closed);
        uv_close((uv_handle_t *)&c->sweep_timer, on_timer_closed);
        uv_close((uv_handle_t *)&c->progress_timer, on_timer_closed);
    }
    if (c->ep->hooks.conn_closed) {
        c->ep->hooks.conn_closed(c->ep, c);
    }
}

static void
hook_destroy(tether__link *l)
{
    tether_conn *c = tether__conn_of(l);
    tether__conn_drop_objects(c);
    tether__conn_drop_buffers(c);
    tether__link_done(&c->link);
    tether__buf_done(&c->backlog);
    tether__free(c->pending);
    tether__free(c->peer_services);
    pthread_cond_destroy(&c->peer_services_changed);
    tether__endpoint *ep = c->ep;
    tether__free(c);
    tether__endpoint_unref(ep);
}

static const tether__link_hooks link_hooks = {
    .on_hello = hook_hello,
    .on_request = hook_request,
    .take_request = hook_take_request,
    .on_response = hook_response,
    .on_progress = hook_progress,
    .on_cancel = hook_cancel,
    .on_release = hook_release,
    .on_buffers_done = hook_buffers_done,
    .on_control = hook_control,
    .on_log = hook_log,
    .on_attached = hook_attached,
    .on_fail = hook_fail,
    .on_closed = hook_closed,
    .destroy = hook_destroy,
};

/* ---- the connection -------------------------------------------------------------- */

int
tether__conn_new(tether__endpoint *ep, int fd, bool is_tcp, int state, tether_conn **ret)
{
    tether_conn *c = tether__calloc(1, sizeof(*c));
    if (!c) {
        return -ENOMEM;
    }
    c->buffers.max_held = ep->max_buffer_bytes;
    /* Small to start with (an idle connection costs little); grows with use. */
    c->pending_mask = 15;
    c->pending = tether__calloc(c->pending_mask + 1, sizeof(*c->pending));
    if (!c->pending) {
        tether__free(c);
        return -ENOMEM;
    }
    tether__link_config config = {
        .max_frame_size = ep->max_frame_size,
        .max_output_bytes = ep->max_output_bytes,
        .logger = &ep->logger,
    };
    int r = tether__link_init(&c->link, &link_hooks, ep->loop, &config, fd, state);
    if (r < 0) {
        tether__free(c->pending);
        tether__free(c);
        return r;
    }
    c->ep = tether__endpoint_ref(ep);
    tether__cond_init_monotonic(&c->peer_services_changed);
    c->fork_generation = tether__fork_generation();
    c->is_tcp = is_tcp;
    atomic_init(&c->next_id, 1);
    c->connected_usec = tether_now_usec();
    c->peer_max_in_flight = TETHER__DEFAULT_MAX_IN_FLIGHT;
    *ret = c;
    return 0;
}

void
tether__conn_attach(tether_conn *c)
{
    tether__link_attach(&c->link);
}

int
tether__conn_set_peer(tether_conn *c, const tether__hello *hello)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    c->connected_unix_usec = (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000;
    return tether__link_set_peer(&c->link, hello->name, hello->language,
                                 hello->language_version, hello->pid);
}

void
tether__conn_fail(tether_conn *c, int status, const char *reason)
{
    tether__link_fail(&c->link, status, reason);
}

int
tether__conn_send(tether_conn *c, tether__encode_fn encode, void *arg, int mode)
{
    return tether__link_send(&c->link, encode, arg, mode);
}

void
tether__conn_drop_slow_reader(tether_conn *c)
{
    tether__link_drop_slow_reader(&c->link);
}

tether_conn *
tether_conn_ref(tether_conn *c)
{
    if (c) {
        tether__link_ref(&c->link);
    }
    return c;
}

tether_conn *
tether_conn_unref(tether_conn *c)
{
    if (c) {
        tether__link_unref(&c->link);
    }
    return NULL;
}

const char *
tether_conn_get_peer_name(const tether_conn *c)
{
    return c && c->link.peer_name ? c->link.peer_name : "";
}

int64_t
tether_conn_get_peer_pid(const tether_conn *c)
{
    return c ? c->link.peer_pid : 0;
}

const char *
tether_conn_get_peer_language(const tether_conn *c)
{
    return c && c->link.peer_language ? c->link.peer_language : "";
}

const char *
tether_conn_get_peer_language_version(const tether_conn *c)
{
    return c && c->link.peer_language_version ? c->link.peer_language_version : "";
}

int
tether_conn_is_connected(const tether_conn *c)
{
    return c && tether__conn_state(c) == TETHER__LINK_OPEN;
}

int
tether_conn_flush(tether_conn *c)
{
    if (!c) {
        return -EINVAL;
    }
    return tether__link_flush(&c->link);
}

int
tether_conn_close(tether_conn *c)
{
    if (!c) {
        return -EINVAL;
    }
    return tether__link_close(&c->link);
}
