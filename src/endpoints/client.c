/*
 * client: the connecting side. Resolves the host's address (explicit, $TETHER_ADDRESS,
 * or the host named "default" in the runtime directory), connects, and runs the
 * handshake on the calling thread with a deadline, before the connection is handed to
 * the I/O thread: a refusal is thus a plain return code with the host's reason, and no
 * call can be made on a half-open connection.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codec/msgpack.h"
#include "conn/pool.h"
#include "conn/transport.h"
#include "rpc/conn.h"
#include "rpc/value.h"
#include "util/alloc.h"
#include "util/condwait.h"
#include "util/error.h"
#include "util/utf8.h"

#define DEFAULT_CONNECT_USEC (5ull * 1000 * 1000)

struct tether_client {
    atomic_uint refs;
    tether__endpoint *ep;
    char *address, *token, *runtime_dir, *language, *language_version;
    int fd;
    uint64_t connect_timeout_usec;
    bool auto_reconnect;
    tether_client_disconnect_fn on_disconnect;
    void *on_disconnect_userdata;

    pthread_mutex_t lock;
    pthread_cond_t changed;  /* a connection came or an attempt ended; CLOCK_MONOTONIC */
    tether_conn *conn;       /* guarded by lock: the current connection */
    tether_conn *retired;    /* guarded by lock: earlier ones, kept for borrowed pointers */
    char *host_name;         /* guarded by lock */
    char *registered_name;   /* guarded by lock: the client_name of the host's welcome */
    bool connecting;         /* guarded by lock */
    bool closing;            /* guarded by lock: the application closed or released it */
    bool shut_down;          /* guarded by lock: the host said disconnect */
    bool reset_pending;      /* guarded by lock: reconnect at once */
    bool attempt_running;    /* guarded by lock */
    bool ever_connected;     /* guarded by lock */
    tether_conn *loop_conn;  /* main thread only: what its event loop reads (read_begin) */

    /* I/O thread only. */
    uv_timer_t reconnect_timer;
    tether__task attempt_task; /* on a worker thread: connecting blocks */
    tether__task attempt_done; /* back on the I/O thread */
    int attempt_result;
    uint64_t backoff_usec;
};

#define BACKOFF_FIRST_USEC 50000ull
#define BACKOFF_MAX_USEC 5000000ull

static int connect_once(tether_client *cl, tether_error *reterr);
static void init_timer(void *arg);

/* ---- reconnecting (I/O thread) ------------------------------------------------------ */

static void attempt_work(tether__task *task);
static void attempt_after(tether__task *task);

static void
on_reconnect_timer(uv_timer_t *t)
{
    tether_client *cl = t->data;
    pthread_mutex_lock(&cl->lock);
    bool go = !cl->closing && !cl->shut_down && !cl->attempt_running;
    if (go) {
        cl->attempt_running = true;
    }
    pthread_mutex_unlock(&cl->lock);
    if (go) {
        cl->attempt_task.run = attempt_work;
        if (tether__pool_post(&cl->attempt_task) < 0) {
            cl->attempt_result = -EAGAIN;
            attempt_after(&cl->attempt_done); /* tries again after the backoff */
        }
    }
}

static void
schedule_reconnect(tether_client *cl, uint64_t delay_usec)
{
    uv_timer_start(&cl->reconnect_timer, on_reconnect_timer, (delay_usec + 999) / 1000, 0);
}

/* On a pool thread: connecting blocks (up to connect_timeout_usec). */
static void
attempt_work(tether__task *task)
{
    tether_client *cl = (tether_client *)((char *)task - offsetof(tether_client, attempt_task));
    cl->attempt_result = connect_once(cl, NULL);
    cl->attempt_done.run = attempt_after;
    tether__ioloop_post(cl->ep->loop, &cl->attempt_done);
}

static void
attempt_after(tether__task *task)
{
    tether_client *cl = (tether_client *)((char *)task - offsetof(tether_client, attempt_done));
    pthread_mutex_lock(&cl->lock);
    cl->attempt_running = false;
    bool again = cl->attempt_result < 0 && !cl->closing && !cl->shut_down;
    pthread_cond_broadcast(&cl->changed);
    pthread_mutex_unlock(&cl->lock);
    if (cl->attempt_result == 0) {
        cl->backoff_usec = 0;
        tether__log(cl->ep, TETHER_LOG_INFO, "reconnected to the host");
    } else if (again) {
        cl->backoff_usec = cl->backoff_usec ? cl->backoff_usec * 2 : BACKOFF_FIRST_USEC;
        if (cl->backoff_usec > BACKOFF_MAX_USEC) {
            cl->backoff_usec = BACKOFF_MAX_USEC;
        }
        tether__log(cl->ep, TETHER_LOG_DEBUG, "reconnect failed (%s); next try in %llu ms",
                    tether_strerror(cl->attempt_result),
                    (unsigned long long)(cl->backoff_usec / 1000));
        schedule_reconnect(cl, cl->backoff_usec);
    }
}

static void
hook_conn_closed(tether__endpoint *ep, tether_conn *c)
{
    tether_client *cl = ep->owner;
    if (!cl) {
        return;
    }
    pthread_mutex_lock(&cl->lock);
    bool current = cl->conn == c;
    bool reconnect = current && cl->auto_reconnect && !cl->closing && !cl->shut_down;
    bool now = cl->reset_pending;
    cl->reset_pending = false;
    pthread_mutex_unlock(&cl->lock);
    if (reconnect) {
        uint64_t delay = now ? 0 : (cl->backoff_usec ? cl->backoff_usec : BACKOFF_FIRST_USEC);
        tether__log(ep, TETHER_LOG_INFO, "lost the host; reconnecting in %llu ms",
                    (unsigned long long)(delay / 1000));
        schedule_reconnect(cl, delay);
    }
}

typedef struct disconnect_work {
    tether__work work;
    tether_client_disconnect_fn fn;
    void *userdata;
    char reason[256];
} disconnect_work;

static void
run_disconnect_work(tether__work *w)
{
    disconnect_work *dw = (disconnect_work *)w;
    dw->fn(dw->userdata, dw->reason);
    tether__free(dw);
}

static void
discard_disconnect_work(tether__work *w)
{
    tether__free(w);
}

static void
hook_control(tether__endpoint *ep, tether_conn *c, const char *action, const char *reason)
{
    tether_client *cl = ep->owner;
    if (!cl) {
        return;
    }
    bool reset = strcmp(action, "reset") == 0;
    bool disconnect = strcmp(action, "disconnect") == 0;
    if (!reset && !disconnect) {
        tether__log(ep, TETHER_LOG_NOTICE, "ignored unknown control '%s' from the host", action);
        return;
    }
    tether__log(ep, TETHER_LOG_NOTICE, "the host asked to %s%s%s", action, *reason ? ": " : "",
                reason);
    pthread_mutex_lock(&cl->lock);
    if (reset) {
        cl->reset_pending = true;
    } else {
        cl->shut_down = true;
    }
    pthread_mutex_unlock(&cl->lock);
    tether__conn_fail(c, -ECONNRESET, reset ? "reset by the host" : "disconnected by the host");
    if (!disconnect) {
        return;
    }
    if (cl->on_disconnect) {
        disconnect_work *dw = tether__calloc(1, sizeof(*dw));
        if (dw) {
            dw->work.run = run_disconnect_work;
            dw->work.discard = discard_disconnect_work;
            dw->fn = cl->on_disconnect;
            dw->userdata = cl->on_disconnect_userdata;
            snprintf(dw->reason, sizeof(dw->reason), "%s", reason);
            tether__mainq_push(ep->mainq, NULL, &dw->work);
        }
    } else {
        /* The default: the script was told to go away, as a terminal would tell it. */
        kill(getpid(), SIGTERM);
    }
}

/* A call on an old connection of this client goes to the current one. */
static tether_conn *
hook_current_conn(tether__endpoint *ep, uint64_t wait_deadline_usec)
{
    pthread_rwlock_rdlock(&ep->owner_lock);
    tether_client *cl = ep->owner;
    tether_conn *c = NULL;
    if (cl) {
        pthread_mutex_lock(&cl->lock);
        for (;;) {
            if (cl->conn && tether_conn_is_connected(cl->conn)) {
                c = tether_conn_ref(cl->conn);
                break;
            }
            /* Wait only for a connection that can come: one being made, or a reconnect. */
            if (cl->closing || cl->shut_down || !cl->ever_connected ||
                (!cl->auto_reconnect && !cl->connecting) ||
                tether_now_usec() >= wait_deadline_usec) {
                break;
            }
            tether__cond_wait_until(&cl->changed, &cl->lock, wait_deadline_usec);
        }
        pthread_mutex_unlock(&cl->lock);
    }
    pthread_rwlock_unlock(&ep->owner_lock);
    return c;
}

static char *
dup_or_null(const char *s, int *r)
{
    if (!s) {
        return NULL;
    }
    char *d = tether__strdup(s);
    if (!d) {
        *r = -ENOMEM;
    }
    return d;
}

int
tether_client_new(const tether_client_options *opts, tether_client **ret_client)
{
    tether_client_options zero = {0};
    if (!opts) {
        opts = &zero;
    }
    if (!ret_client || (opts->name && *opts->name && !tether__utf8_valid_name(opts->name))) {
        return -EINVAL;
    }
    tether_client *cl = tether__calloc(1, sizeof(*cl));
    if (!cl) {
        return -ENOMEM;
    }
    extern char *program_invocation_short_name;
    const char *name = opts->name && *opts->name ? opts->name : program_invocation_short_name;
    int r = tether__endpoint_new(name, false, &cl->ep);
    if (r < 0) {
        tether__free(cl);
        return r;
    }
    atomic_init(&cl->refs, 1);
    pthread_mutex_init(&cl->lock, NULL);
    tether__cond_init_monotonic(&cl->changed);
    cl->ep->owner = cl;
    cl->ep->hooks.control = hook_control;
    cl->ep->hooks.conn_closed = hook_conn_closed;
    cl->ep->hooks.current_conn = hook_current_conn;
    cl->auto_reconnect = !opts->no_reconnect;
    cl->on_disconnect = opts->on_disconnect;
    cl->on_disconnect_userdata = opts->on_disconnect_userdata;
    tether__ioloop_run_sync(cl->ep->loop, init_timer, cl);
    tether__endpoint_configure(cl->ep, opts->max_frame_size, opts->max_in_flight,
                               opts->default_timeout_usec, opts->max_output_bytes,
                               opts->max_call_depth, opts->log, opts->log_userdata,
                               opts->log_level);
    if (opts->max_buffer_bytes) {
        cl->ep->max_buffer_bytes = opts->max_buffer_bytes;
    }
    cl->fd = opts->fd >= 3 ? opts->fd : -1;
    cl->connect_timeout_usec =
        opts->connect_timeout_usec ? opts->connect_timeout_usec : DEFAULT_CONNECT_USEC;
    r = 0;
    cl->address = dup_or_null(opts->address, &r);
    cl->token = dup_or_null(opts->token, &r);
    cl->language = dup_or_null(opts->language ? opts->language : "c", &r);
    cl->language_version = dup_or_null(opts->language_version ? opts->language_version : "", &r);
    if (r == 0) {
        r = tether__runtime_dir(opts->runtime_dir, &cl->runtime_dir);
    }
    if (r < 0) {
        tether_client_unref(cl);
        return r;
    }
    *ret_client = cl;
    return 0;
}

tether_client *
tether_client_ref(tether_client *cl)
{
    if (cl) {
        atomic_fetch_add_explicit(&cl->refs, 1, memory_order_relaxed);
    }
    return cl;
}

static void
init_timer(void *arg)
{
    tether_client *cl = arg;
    uv_timer_init(tether__ioloop_uv(cl->ep->loop), &cl->reconnect_timer);
    cl->reconnect_timer.data = cl;
}

static void
stop_timer(void *arg)
{
    tether_client *cl = arg;
    uv_close((uv_handle_t *)&cl->reconnect_timer, NULL);
}

static void
barrier(void *arg)
{
    (void)arg;
}

tether_client *
tether_client_unref(tether_client *cl)
{
    if (!cl || atomic_fetch_sub_explicit(&cl->refs, 1, memory_order_acq_rel) != 1) {
        return NULL;
    }
    pthread_mutex_lock(&cl->lock);
    cl->closing = true;
    while (cl->attempt_running) {
        pthread_cond_wait(&cl->changed, &cl->lock);
    }
    pthread_mutex_unlock(&cl->lock);
    tether_client_close(cl);
    /* No handler starts now (no reconnecting either); those running on other threads
     * finish before the client goes, so the caller may free what they use. */
    tether__endpoint_close_handlers(cl->ep);
    tether__ioloop_run_sync(cl->ep->loop, stop_timer, cl);
    tether__ioloop_run_sync(cl->ep->loop, barrier, NULL);
    pthread_rwlock_wrlock(&cl->ep->owner_lock);
    cl->ep->owner = NULL;
    pthread_rwlock_unlock(&cl->ep->owner_lock);
    tether__mainq_discard_all(cl->ep->mainq);
    while (cl->retired) {
        tether_conn *old = cl->retired;
        cl->retired = old->owner_next;
        tether_conn_unref(old);
    }
    tether_conn_unref(cl->loop_conn);
    tether_conn_unref(cl->conn);
    if (cl->fd >= 0) {
        close(cl->fd);
    }
    tether__free(cl->address);
    tether__free(cl->token);
    tether__free(cl->runtime_dir);
    tether__free(cl->language);
    tether__free(cl->language_version);
    tether__free(cl->host_name);
    tether__free(cl->registered_name);
    pthread_mutex_destroy(&cl->lock);
    pthread_cond_destroy(&cl->changed);
    tether__endpoint *ep = cl->ep;
    tether__free(cl);
    tether__endpoint_unref(ep);
    return NULL;
}

/*
 * Tell the host of services: all of them as the client connects, each one registered
 * later on its own, so that a host waiting for one can call it. The host reads frames in
 * order: what the client sends after connecting reaches it after the announcement.
 */
static int
encode_announce(tether__buf *out, void *arg)
{
    tether__buf *args = arg;
    return tether__encode_notify(out, 0, 0, TETHER__ANNOUNCE, sizeof(TETHER__ANNOUNCE) - 1,
                                 tether__buf_head(args), tether__buf_pending(args), NULL, 0);
}

static int
announce(tether_client *cl, tether_conn *c, const char *const *names, size_t count)
{
    tether__buf b = TETHER__BUF_INIT;
    int r = tether__mp_array(&b, 1);
    r = r < 0 ? r : tether__mp_array(&b, (uint32_t)count);
    for (size_t i = 0; r == 0 && i < count; i++) {
        r = tether__mp_str(&b, names[i], strlen(names[i]));
    }
    if (r == 0) {
        /* Written at once, as a synchronous call's request is, rather than left to an
         * I/O thread that may not have taken the new connection over yet. */
        r = tether__conn_send(c, encode_announce, &b, true);
    }
    tether__buf_done(&b);
    if (r < 0) {
        /* The next connection announces them all again. */
        tether__log(cl->ep, TETHER_LOG_DEBUG, "could not announce %zu service(s) to the host: %s",
                    count, tether_strerror(r));
    }
    return r;
}

/* Announce every registered service on c, a new connection. */
static void
announce_all(tether_client *cl, tether_conn *c)
{
    char **names = NULL;
    size_t count = 0;
    if (tether__endpoint_service_names(cl->ep, &names, &count) < 0) {
        return;
    }
    if (count > 0) {
        announce(cl, c, (const char *const *)names, count);
    }
    for (size_t i = 0; i < count; i++) {
        tether__free(names[i]);
    }
    tether__free(names);
}

int
tether_client_add_service(tether_client *cl, const char *name, tether_context context,
                          tether_handler_fn handler, void *userdata)
{
    if (!cl) {
        return -EINVAL;
    }
    int r = tether__endpoint_add_service(cl->ep, name, context, handler, userdata);
    if (r < 0) {
        return r;
    }
    /* Registered after connecting: the host learns of it now. A connection made after
     * this point announces it with the others (connect_once takes the names only once
     * it has published the connection). */
    pthread_mutex_lock(&cl->lock);
    tether_conn *c = cl->conn ? tether_conn_ref(cl->conn) : NULL;
    pthread_mutex_unlock(&cl->lock);
    if (c && tether_conn_is_connected(c)) {
        announce(cl, c, &name, 1);
    }
    tether_conn_unref(c);
    return 0;
}

int
tether_resolve_address(const char *address, const char *runtime_dir, char **ret_address)
{
    if (!ret_address) {
        return -EINVAL;
    }
    char *dir = NULL;
    int r = tether__runtime_dir(runtime_dir, &dir);
    if (r < 0) {
        return r;
    }
    if (!address || !*address) {
        address = getenv("TETHER_ADDRESS");
    }
    if (!address || !*address) {
        address = "default";
    }
    tether__addr addr;
    r = tether__addr_resolve(address, dir, &addr);
    tether__free(dir);
    if (r < 0) {
        return r;
    }
    char buf[200];
    tether__addr_format(&addr, buf, sizeof(buf));
    *ret_address = strdup(buf);
    return *ret_address ? 0 : -ENOMEM;
}

/* The host's refusal codes (docs/protocol.md) and what tether_client_connect returns. */
static const struct {
    const char *code;
    int error;
} refusals[] = {
    {"token", -EACCES},
    {"version", -EPROTONOSUPPORT},
    {"busy", -EUSERS},
    {"timeout", -ETIMEDOUT},
};

static int
refusal_code(const char *code)
{
    for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++) {
        if (strcmp(code, refusals[i].code) == 0) {
            return refusals[i].error;
        }
    }
    return -EPROTO;
}

/* Read exactly one frame into buf, and no byte after it: what follows the welcome is
 * the connection's to read, descriptors beside frames included (conn/fdpass.h). */
static int
read_frame(int fd, tether__buf *buf, uint32_t max_frame, uint64_t deadline, size_t *ret_len)
{
    for (;;) {
        size_t want = TETHER__FRAME_HEADER_SIZE;
        if (tether__buf_pending(buf) >= TETHER__FRAME_HEADER_SIZE) {
            uint32_t len = tether__frame_length(tether__buf_head(buf));
            if (len > max_frame) {
                return -EMSGSIZE;
            }
            if (tether__buf_pending(buf) >= TETHER__FRAME_HEADER_SIZE + (size_t)len) {
                *ret_len = len;
                return 0;
            }
            want += len;
        }
        want -= tether__buf_pending(buf);
        int r = tether__buf_reserve(buf, want);
        if (r < 0) {
            return r;
        }
        r = tether__read_some(fd, buf->data + buf->len, want, deadline);
        if (r < 0) {
            return r;
        }
        if (r == 0) {
            return -ECONNRESET;
        }
        buf->len += (size_t)r;
    }
}

/* addr: where fd leads (NULL for an inherited socket), for the token of a TCP host. */
static int
handshake(tether_client *cl, int fd, const tether__addr *addr, tether__buf *in,
          tether__welcome *ret_welcome, tether__buf *strings, tether_error *reterr)
{
    bool is_tcp = addr && addr->kind == TETHER__ADDR_TCP;
    uint64_t deadline = tether_now_usec() + cl->connect_timeout_usec;
    char token[TETHER__TOKEN_HEX_LEN + 1] = "";
    const char *tok = cl->token ? cl->token : getenv("TETHER_TOKEN");
    if (is_tcp && !tok) {
        /* The host file named the token file; else the runtime directory's for the port. */
        char *path = NULL;
        int r = addr->token_path[0] ? tether__token_read(addr->token_path, token)
                : tether__token_path(cl->runtime_dir, addr->port, &path) == 0
                    ? tether__token_read(path, token)
                    : -ENOMEM;
        if (r == 0) {
            tok = token;
        }
        tether__free(path);
    }
    tether__hello hello = {
        .min_version = TETHER__PROTOCOL_MIN_VERSION,
        .max_version = tether__protocol_version(),
        .name = cl->ep->name,
        .pid = getpid(),
        .language = cl->language,
        .language_version = cl->language_version,
        .token = is_tcp ? tok : NULL,
    };
    tether__buf out = TETHER__BUF_INIT;
    int r = tether__encode_hello(&out, &hello);
    if (r == 0) {
        r = tether__write_all(fd, out.data, out.len, deadline);
    }
    tether__buf_done(&out);
    if (r < 0) {
        tether_error_set(reterr, TETHER__ERR_CONNECTION_LOST, "sending hello: %s", tether_strerror(r));
        return r;
    }
    size_t len;
    r = read_frame(fd, in, cl->ep->max_frame_size, deadline, &len);
    if (r < 0) {
        tether_error_set(reterr, r == -ETIMEDOUT ? TETHER__ERR_TIMEOUT : TETHER__ERR_CONNECTION_LOST,
                         "waiting for the host's welcome: %s", tether_strerror(r));
        return r;
    }
    tether__frame f;
    tether__wire_limits limits = {.max_frame_size = cl->ep->max_frame_size};
    r = tether__frame_decode(tether__buf_head(in) + TETHER__FRAME_HEADER_SIZE, len, &limits, &f);
    if (r == 0 && f.kind == TETHER__REFUSE) {
        char code[32];
        snprintf(code, sizeof(code), "%.*s", (int)f.method.len, (const char *)f.method.ptr);
        tether_error_set(reterr, TETHER__ERR_REFUSED, "the host refused the connection (%s): %.*s",
                         code, (int)f.text.len, (const char *)f.text.ptr);
        return refusal_code(code);
    }
    if (r == 0 && f.kind != TETHER__WELCOME) {
        r = -EPROTO;
    }
    if (r == 0) {
        r = tether__decode_welcome(&f.value, strings, ret_welcome);
    }
    if (r == 0 && (ret_welcome->version < TETHER__PROTOCOL_MIN_VERSION ||
                   ret_welcome->version > tether__protocol_version())) {
        r = -EPROTONOSUPPORT;
    }
    if (r < 0) {
        tether_error_set(reterr, TETHER__ERR_PROTOCOL, "bad welcome from the host: %s",
                         tether_strerror(r));
        return r;
    }
    tether__buf_consume(in, TETHER__FRAME_HEADER_SIZE + len);
    return 0;
}

/* One attempt: resolve, connect, handshake, and make the result the current conn. */
static int
connect_once(tether_client *cl, tether_error *reterr)
{
    int fd = -1;
    bool is_tcp = false;
    tether__addr addr;
    const tether__addr *where_to = NULL;
    int r = 0;
    if (cl->fd >= 0) {
        fd = cl->fd;
        cl->fd = -1;
    } else {
        const char *address = cl->address;
        if (!address || !*address) {
            address = getenv("TETHER_ADDRESS");
        }
        if (!address || !*address) {
            address = "default";
        }
        r = tether__addr_resolve(address, cl->runtime_dir, &addr);
        if (r < 0) {
            tether_error_set(reterr, TETHER__ERR_INVALID_ADDRESS, "cannot parse address '%s'",
                             address);
            goto out;
        }
        r = tether__connect(&addr, cl->connect_timeout_usec, &fd);
        if (r < 0) {
            char where[200];
            tether__addr_format(&addr, where, sizeof(where));
            tether_error_set(reterr, TETHER__ERR_CONNECTION_REFUSED, "no host at %s: %s", where,
                             r == -ENOENT ? "no socket file there" : tether_strerror(r));
            goto out;
        }
        is_tcp = addr.kind == TETHER__ADDR_TCP;
        where_to = &addr;
    }
    tether__buf in = TETHER__BUF_INIT, strings = TETHER__BUF_INIT;
    tether__welcome welcome = {0};
    r = handshake(cl, fd, where_to, &in, &welcome, &strings, reterr);
    tether_conn *c = NULL;
    if (r == 0) {
        r = tether__conn_new(cl->ep, fd, is_tcp, TETHER__LINK_OPEN, &c);
    }
    if (r == 0) {
        tether__hello peer = {.name = welcome.name, .pid = welcome.pid, .language = "host"};
        r = tether__conn_set_peer(c, &peer);
        if (welcome.max_in_flight) {
            c->peer_max_in_flight = welcome.max_in_flight;
        }
        if (welcome.max_frame_size) {
            c->link.peer_max_frame_size = welcome.max_frame_size;
        }
        if (welcome.version >= 2) {
            tether__link_enable_fds(&c->link);
        }
        /* Frames the host sent right after its welcome are already in our buffer;
         * without any, an idle connection keeps no input buffer. */
        if (tether__buf_pending(&in) > 0) {
            c->link.in = in;
            in = TETHER__BUF_INIT;
        }
        fd = -1;
    }
    if (r == 0) {
        char *host_name = tether__strdup(welcome.name ? welcome.name : "");
        /* A host that sends no client_name registered the name we asked for. */
        char *registered = tether__strdup(welcome.client_name ? welcome.client_name : cl->ep->name);
        pthread_mutex_lock(&cl->lock);
        tether_conn *old = cl->conn;
        if (old) {
            /* Applications may hold it borrowed: keep it until the client goes. */
            old->owner_next = cl->retired;
            cl->retired = old;
        }
        cl->conn = c;
        tether__free(cl->host_name);
        cl->host_name = host_name;
        tether__free(cl->registered_name);
        cl->registered_name = registered;
        cl->ever_connected = true;
        pthread_cond_broadcast(&cl->changed);
        pthread_mutex_unlock(&cl->lock);
        tether__conn_attach(c);
        tether__log(cl->ep, TETHER_LOG_INFO, "connected to host '%s'", host_name ? host_name : "");
        announce_all(cl, c);
    } else {
        tether_conn_unref(c);
    }
    tether__buf_done(&in);
    tether__buf_done(&strings);
    if (fd >= 0) {
        close(fd);
    }
out:
    return r;
}

int
tether_client_connect(tether_client *cl, tether_error *reterr)
{
    if (!cl) {
        return -EINVAL;
    }
    pthread_mutex_lock(&cl->lock);
    bool busy = cl->connecting || cl->attempt_running ||
                (cl->conn && tether_conn_is_connected(cl->conn));
    if (!busy) {
        cl->connecting = true;
        cl->shut_down = false;
    }
    pthread_mutex_unlock(&cl->lock);
    if (busy) {
        return -EALREADY;
    }
    int r = connect_once(cl, reterr);
    pthread_mutex_lock(&cl->lock);
    cl->connecting = false;
    pthread_mutex_unlock(&cl->lock);
    return r;
}

tether_conn *
tether_client_get_conn(tether_client *cl)
{
    if (!cl) {
        return NULL;
    }
    pthread_mutex_lock(&cl->lock);
    tether_conn *c = cl->conn;
    pthread_mutex_unlock(&cl->lock);
    return c;
}

const char *
tether_client_get_host_name(const tether_client *cl)
{
    return cl ? cl->host_name : NULL;
}

const char *
tether_client_get_registered_name(const tether_client *cl)
{
    return cl ? cl->registered_name : NULL;
}

int
tether_client_new_object(tether_client *cl, const tether_class *cls, void *userdata,
                         tether_object **ret_object)
{
    if (!cl) {
        return -EINVAL;
    }
    return tether__object_new(cl->ep, cls, userdata, ret_object);
}

int
tether_client_get_fd(const tether_client *cl)
{
    return cl ? tether__mainq_get_fd(cl->ep->mainq) : -EINVAL;
}

int
tether_client_dispatch(tether_client *cl, uint64_t budget_usec)
{
    return cl ? tether__endpoint_dispatch(cl->ep, budget_usec) : -EINVAL;
}

int
tether_client_wait(tether_client *cl, uint64_t timeout_usec)
{
    if (!cl) {
        return -EINVAL;
    }
    /* Read the connection while waiting: a request for this thread then wakes it alone
     * (rpc/main_wait.c). */
    pthread_mutex_lock(&cl->lock);
    tether_conn *c =
        cl->conn && tether_conn_is_connected(cl->conn) ? tether_conn_ref(cl->conn) : NULL;
    pthread_mutex_unlock(&cl->lock);
    int r = tether__endpoint_wait(cl->ep, c, timeout_usec);
    tether_conn_unref(c);
    return r;
}

/* The main thread's loop stops reading loop_conn. */
static void
loop_conn_drop(tether_client *cl)
{
    if (cl->loop_conn) {
        tether__conn_loop_drop(cl->loop_conn);
        tether_conn_unref(cl->loop_conn);
        cl->loop_conn = NULL;
    }
}

int
tether_client_read_begin(tether_client *cl)
{
    int r = cl ? tether__endpoint_check_main(cl->ep) : -EINVAL;
    if (r < 0) {
        return r;
    }
    pthread_mutex_lock(&cl->lock);
    tether_conn *c =
        cl->conn && tether_conn_is_connected(cl->conn) ? tether_conn_ref(cl->conn) : NULL;
    pthread_mutex_unlock(&cl->lock);
    if (cl->loop_conn != c) {
        loop_conn_drop(cl); /* a reconnect replaced it */
    }
    if (!c) {
        return -ENOTCONN;
    }
    r = tether__conn_loop_hold(c);
    if (r >= 0 && !cl->loop_conn) {
        cl->loop_conn = tether_conn_ref(c);
    }
    tether_conn_unref(c);
    return r;
}

int
tether_client_read_ready(tether_client *cl, uint64_t budget_usec)
{
    int r = cl ? tether__endpoint_check_main(cl->ep) : -EINVAL;
    if (r < 0) {
        return r;
    }
    if (!cl->loop_conn) {
        return 1;
    }
    r = tether__conn_loop_read(cl->loop_conn, cl->ep->mainq, budget_usec);
    if (r == 1) {
        loop_conn_drop(cl);
    }
    return r;
}

int
tether_client_read_end(tether_client *cl)
{
    int r = cl ? tether__endpoint_check_main(cl->ep) : -EINVAL;
    if (r == 0) {
        loop_conn_drop(cl);
    }
    return r;
}

int
tether_client_close(tether_client *cl)
{
    if (!cl) {
        return -EINVAL;
    }
    pthread_mutex_lock(&cl->lock);
    /* Closed on purpose: no reconnecting until tether_client_connect again. */
    cl->shut_down = true;
    tether_conn *c = cl->conn ? tether_conn_ref(cl->conn) : NULL;
    pthread_mutex_unlock(&cl->lock);
    int r = c ? tether_conn_close(c) : -EALREADY;
    tether_conn_unref(c);
    return r;
}

int
tether_client_is_connected(const tether_client *cl)
{
    if (!cl) {
        return 0;
    }
    pthread_mutex_lock(&((tether_client *)cl)->lock);
    int r = cl->conn && tether_conn_is_connected(cl->conn);
    pthread_mutex_unlock(&((tether_client *)cl)->lock);
    return r;
}
