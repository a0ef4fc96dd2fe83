/*
 * conn: connection I/O, the reader-role hand-off, frame dispatch and closing.
 * The design and its invariants are described at the top of conn.h.
 */
#define _GNU_SOURCE
#include "rpc/conn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/alloc.h"
#include "rpc/value.h"

/* epoll user data of the two registrations in a connection's private set. */
enum { EV_READ = 1, EV_WRITE = 2 };

/* Bytes read per wake before giving other connections a turn. */
#define READ_BUDGET (256u * 1024)
#define READ_CHUNK (16u * 1024)
/* A thread keeps its read buffer up to this size: frames of a few MiB (bytes sent to a
 * script and back) then reuse it instead of faulting fresh pages in every time. */
#define READ_SCRATCH_KEEP (4u * 1024 * 1024)
/* A partial frame at least this big keeps the buffer it was read into. */
#define BIG_PARTIAL (64u * 1024)

static void on_poll(uv_poll_t *handle, int status, int events);
static void conn_free(tether_conn *c);

static void on_poll(uv_poll_t *handle, int status, int events);

static void
run_attach(tether__task *task)
{
    tether_conn *c = (tether_conn *)((char *)task - offsetof(tether_conn, attach_task));
    uv_loop_t *uv = tether__ioloop_uv(c->loop);
    if (atomic_load(&c->state) == TETHER__CONN_CLOSED) {
        tether_conn_unref(c); /* the attach reference */
        return;
    }
    uv_poll_init(uv, &c->poll, c->epfd);
    c->poll.data = c;
    uv_timer_init(uv, &c->handshake_timer);
    uv_timer_init(uv, &c->sweep_timer);
    uv_timer_init(uv, &c->progress_timer);
    c->handshake_timer.data = c->sweep_timer.data = c->progress_timer.data = c;
    c->open_handles = 4;
    atomic_store(&c->attached, true);
    uv_poll_start(&c->poll, UV_READABLE, on_poll);
    if (c->ep->hooks.attached) {
        c->ep->hooks.attached(c->ep, c);
    }
    /* Frames may have come with the handshake (a host may call at once) and nothing
     * more arrive to wake the poll for them: read as if woken, which takes the reader
     * role first (a caller holding it processes them itself). */
    on_poll(&c->poll, 0, UV_READABLE);
    /* The attach reference now belongs to the uv handles; dropped when they close. */
}

int
tether__conn_new(tether__endpoint *ep, int fd, bool is_tcp, tether__conn_state state,
                 tether_conn **ret)
{
    tether_conn *c = tether__calloc(1, sizeof(*c));
    if (!c) {
        return -ENOMEM;
    }
    /* Small to start with (an idle connection costs little); grows with use. */
    c->pending_mask = 15;
    c->pending = tether__calloc(c->pending_mask + 1, sizeof(*c->pending));
    c->epfd = epoll_create1(EPOLL_CLOEXEC);
    c->wfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    int r = -ENOMEM;
    if (!c->pending || c->epfd < 0 || c->wfd < 0) {
        r = c->epfd < 0 || c->wfd < 0 ? -errno : -ENOMEM;
        goto fail;
    }
    struct epoll_event rev = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = EV_READ};
    struct epoll_event wev = {.events = 0, .data.u32 = EV_WRITE};
    if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, fd, &rev) < 0 ||
        epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->wfd, &wev) < 0) {
        r = -errno;
        goto fail;
    }
    c->fd = fd;
    c->read_armed = true;
    atomic_init(&c->refs, 1);
    c->ep = tether__endpoint_ref(ep);
    c->loop = ep->loop;
    c->fork_generation = tether__fork_generation();
    c->is_tcp = is_tcp;
    atomic_init(&c->state, state);
    atomic_init(&c->next_id, 1);
    c->connected_usec = tether_now_usec();
    c->limits.max_frame_size = ep->max_frame_size;
    c->limits.max_depth = TETHER__DEFAULT_MAX_DEPTH;
    c->peer_max_in_flight = TETHER__DEFAULT_MAX_IN_FLIGHT;
    c->peer_max_frame_size = TETHER__DEFAULT_MAX_FRAME_SIZE;
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->wlock, NULL);
    *ret = c;
    return 0;
fail:
    if (c->epfd >= 0) {
        close(c->epfd);
    }
    if (c->wfd >= 0) {
        close(c->wfd);
    }
    tether__free(c->pending);
    tether__free(c);
    return r;
}

void
tether__conn_attach(tether_conn *c)
{
    tether_conn_ref(c);
    c->attach_task.run = run_attach;
    tether__ioloop_post(c->loop, &c->attach_task);
}

int
tether__conn_set_peer(tether_conn *c, const tether__hello *hello)
{
    c->peer_name = tether__strdup(hello->name ? hello->name : "");
    c->peer_language = tether__strdup(hello->language ? hello->language : "");
    c->peer_language_version =
        tether__strdup(hello->language_version ? hello->language_version : "");
    c->peer_pid = hello->pid;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    c->connected_unix_usec = (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000;
    if (!c->peer_name || !c->peer_language || !c->peer_language_version) {
        return -ENOMEM;
    }
    return 0;
}

tether_conn *
tether_conn_ref(tether_conn *c)
{
    if (c) {
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    }
    return c;
}

tether_conn *
tether_conn_unref(tether_conn *c)
{
    if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) {
        conn_free(c);
    }
    return NULL;
}

static void
conn_free(tether_conn *c)
{
    tether__conn_drop_objects(c);
    close(c->fd);
    close(c->wfd);
    close(c->epfd);
    tether__buf_done(&c->in);
    tether__buf_done(&c->out);
    tether__buf_done(&c->handoff);
    tether__free(c->pending);
    tether__free(c->peer_name);
    tether__free(c->peer_language);
    tether__free(c->peer_language_version);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->wlock);
    tether__endpoint *ep = c->ep;
    tether__free(c);
    tether__endpoint_unref(ep);
}

const char *
tether_conn_get_peer_name(const tether_conn *c)
{
    return c && c->peer_name ? c->peer_name : "";
}

int64_t
tether_conn_get_peer_pid(const tether_conn *c)
{
    return c ? c->peer_pid : 0;
}

const char *
tether_conn_get_peer_language(const tether_conn *c)
{
    return c && c->peer_language ? c->peer_language : "";
}

const char *
tether_conn_get_peer_language_version(const tether_conn *c)
{
    return c && c->peer_language_version ? c->peer_language_version : "";
}

int
tether_conn_is_connected(const tether_conn *c)
{
    return c && atomic_load(&((tether_conn *)c)->state) == TETHER__CONN_OPEN;
}

/* Bound on how long closing waits for queued frames (notifications, say) to go out. */
#define CLOSE_FLUSH_USEC 200000

static int flush_locked(tether_conn *c);

int
tether_conn_close(tether_conn *c)
{
    if (!c) {
        return -EINVAL;
    }
    if (atomic_load(&c->state) == TETHER__CONN_CLOSED) {
        return -EALREADY;
    }
    /* What was sent before closing should arrive: flush it, within a bound, first. */
    uint64_t deadline = tether_now_usec() + CLOSE_FLUSH_USEC;
    pthread_mutex_lock(&c->wlock);
    while (tether__buf_pending(&c->out) > 0 && flush_locked(c) == 0 &&
           tether__buf_pending(&c->out) > 0 && tether_now_usec() < deadline) {
        struct pollfd p = {.fd = c->fd, .events = POLLOUT};
        poll(&p, 1, 10);
    }
    pthread_mutex_unlock(&c->wlock);
    tether__conn_fail(c, -ECANCELED, "closed locally");
    return 0;
}

/* ---- output ---------------------------------------------------------------------- */

static void
arm_write_locked(tether_conn *c, bool on)
{
    if (atomic_load_explicit(&c->write_armed, memory_order_relaxed) == on) {
        return;
    }
    struct epoll_event ev = {.events = on ? EPOLLOUT : 0, .data.u32 = EV_WRITE};
    epoll_ctl(c->epfd, EPOLL_CTL_MOD, c->wfd, &ev);
    atomic_store_explicit(&c->write_armed, on, memory_order_relaxed);
}

/* Write what is queued; wlock held. Returns 0 (maybe partially written) or -errno. */
static int
flush_locked(tether_conn *c)
{
    while (tether__buf_pending(&c->out) > 0) {
        ssize_t n = send(c->fd, tether__buf_head(&c->out), tether__buf_pending(&c->out),
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            atomic_fetch_add_explicit(&c->bytes_out, (uint64_t)n, memory_order_relaxed);
            tether__buf_consume(&c->out, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            arm_write_locked(c, true);
            return 0;
        }
        return n < 0 ? -errno : -EIO;
    }
    arm_write_locked(c, false);
    if (c->out.cap > 1024 * 1024) {
        /* Give back a buffer grown by a burst. */
        tether__buf_done(&c->out);
    }
    return 0;
}

int
tether__conn_send(tether_conn *c, tether__encode_fn encode, void *arg, bool flush_now)
{
    if (atomic_load(&c->state) == TETHER__CONN_CLOSED) {
        return -ENOTCONN;
    }
    pthread_mutex_lock(&c->wlock);
    size_t before = c->out.len;
    size_t backlog = tether__buf_pending(&c->out);
    int r = encode(&c->out, arg);
    if (r < 0) {
        pthread_mutex_unlock(&c->wlock);
        return r;
    }
    size_t frame_size = c->out.len - before - TETHER__FRAME_HEADER_SIZE;
    if (frame_size > c->peer_max_frame_size) {
        c->out.len = before;
        pthread_mutex_unlock(&c->wlock);
        return -EMSGSIZE;
    }
    if (backlog + frame_size > c->ep->max_output_bytes) {
        c->out.len = before;
        pthread_mutex_unlock(&c->wlock);
        return -ENOBUFS;
    }
    bool on_io_thread = tether__ioloop_in_thread(c->loop);
    if (!flush_now && on_io_thread && c->in_batch) {
        /* The I/O thread flushes at the end of the batch it is reading. */
        pthread_mutex_unlock(&c->wlock);
        return 0;
    }
    if (!flush_now && !on_io_thread) {
        /* Let the I/O thread write whole batches: arming write interest wakes it. */
        arm_write_locked(c, true);
        pthread_mutex_unlock(&c->wlock);
        return 0;
    }
    r = flush_locked(c);
    pthread_mutex_unlock(&c->wlock);
    if (r < 0) {
        tether__conn_fail(c, -ECONNRESET, "write failed");
        return -ECONNRESET;
    }
    return 0;
}

void
tether__conn_drop_slow_reader(tether_conn *c)
{
    char reason[128];
    snprintf(reason, sizeof(reason), "stopped reading: over %llu bytes queued for it",
             (unsigned long long)c->ep->max_output_bytes);
    tether__log(c->ep, TETHER_LOG_WARNING, "dropping %s (pid %lld): %s",
                c->peer_name ? c->peer_name : "?", (long long)c->peer_pid, reason);
    tether__conn_fail(c, -ECONNRESET, reason);
}

/* ---- input ----------------------------------------------------------------------- */

static void
protocol_error(tether_conn *c, int code, const char *what)
{
    tether__log(c->ep, TETHER_LOG_WARNING, "connection %s (pid %lld): %s (%s); closing it",
                c->peer_name ? c->peer_name : "(handshake)", (long long)c->peer_pid, what,
                tether_strerror(code));
    tether__conn_fail(c, -ECONNRESET, what);
}

typedef struct refuse_arg {
    const char *code;
    const char *message;
} refuse_arg;

static int
encode_refuse(tether__buf *out, void *arg)
{
    refuse_arg *ra = arg;
    return tether__encode_refuse(out, ra->code, ra->message);
}

static int
encode_welcome(tether__buf *out, void *arg)
{
    return tether__encode_welcome(out, arg);
}

int
tether__send_welcome(tether_conn *c, const tether__welcome *w)
{
    return tether__conn_send(c, encode_welcome, (void *)w, true);
}

static void
handle_hello(tether_conn *c, const tether__frame *f)
{
    tether__buf strings = TETHER__BUF_INIT;
    tether__hello hello;
    tether__hello_result result = {0};
    int r = f->kind == TETHER__HELLO ? tether__decode_hello(&f->value, &strings, &hello) : -EPROTO;
    if (r < 0) {
        result.refuse_code = "protocol";
        snprintf(result.refuse_message, sizeof(result.refuse_message),
                 "the first frame must be a well-formed hello");
    } else {
        tether__host_on_hello(c, &hello, &result);
    }
    tether__buf_done(&strings);
    if (result.refuse_code) {
        refuse_arg ra = {result.refuse_code, result.refuse_message};
        tether__conn_send(c, encode_refuse, &ra, true);
        tether__log(c->ep, TETHER_LOG_NOTICE, "refused a client: %s: %s", result.refuse_code,
                    result.refuse_message);
        tether__conn_fail(c, -ECONNREFUSED, result.refuse_message);
    }
}

static int
encode_pong(tether__buf *out, void *arg)
{
    return tether__encode_ping(out, TETHER__PONG, *(uint64_t *)arg);
}

/* Frames a caller thread reads but may not act on go to the I/O thread, in order. */
static void run_handoff(tether__task *task);

static void
hand_off(tether_conn *c, const uint8_t *frame, size_t len)
{
    pthread_mutex_lock(&c->lock);
    int r = tether__buf_append(&c->handoff, frame, len);
    bool post = r == 0 && !c->handoff_posted;
    if (post) {
        c->handoff_posted = true;
        tether_conn_ref(c);
    }
    pthread_mutex_unlock(&c->lock);
    if (r < 0) {
        tether__conn_fail(c, -ENOMEM, "out of memory");
        return;
    }
    if (post) {
        c->handoff_task.run = run_handoff;
        tether__ioloop_post(c->loop, &c->handoff_task);
    }
}

static void
dispatch_frame(tether_conn *c, const tether__frame *f, bool io_thread)
{
    switch (f->kind) {
    case TETHER__RESPONSE:
        tether__conn_on_response(c, f);
        return;
    case TETHER__PROGRESS:
        tether__conn_on_progress(c, f);
        return;
    case TETHER__REQUEST:
    case TETHER__NOTIFY:
        atomic_fetch_add_explicit(&c->calls_in, 1, memory_order_relaxed);
        tether__conn_on_request(c, f);
        return;
    case TETHER__CANCEL:
        tether__conn_on_cancel(c, f->id);
        return;
    case TETHER__PING: {
        uint64_t nonce = f->id;
        tether__conn_send(c, encode_pong, &nonce, false);
        return;
    }
    case TETHER__PONG:
        return;
    case TETHER__RELEASE:
        tether__conn_on_release(c, f);
        return;
    case TETHER__CONTROL:
        if (c->ep->hooks.control) {
            char action[32], reason[256];
            snprintf(action, sizeof(action), "%.*s", (int)f->method.len,
                     (const char *)f->method.ptr);
            snprintf(reason, sizeof(reason), "%.*s", (int)f->text.len, (const char *)f->text.ptr);
            c->ep->hooks.control(c->ep, c, action, reason);
        }
        return;
    case TETHER__LOG:
        tether__log(c->ep, f->level >= 3 && f->level <= 7 ? (int)f->level : TETHER_LOG_INFO,
                    "[%s pid %lld] %.*s: %.*s", c->peer_name, (long long)c->peer_pid,
                    (int)f->method.len, (const char *)f->method.ptr, (int)f->text.len,
                    (const char *)f->text.ptr);
        return;
    default:
        (void)io_thread;
        protocol_error(c, -EPROTO, "unexpected message kind after the handshake");
        return;
    }
}

/*
 * Decode and act on every complete frame in c->in. The caller holds the reader role.
 * On a caller thread, frames that must run on the I/O thread are handed off.
 * Returns 0, or a negative code after closing the connection.
 */
static int
process_input(tether_conn *c, bool io_thread)
{
    while (tether__buf_pending(&c->in) >= TETHER__FRAME_HEADER_SIZE) {
        const uint8_t *head = tether__buf_head(&c->in);
        uint32_t len = tether__frame_length(head);
        if (len > c->limits.max_frame_size) {
            char what[96];
            snprintf(what, sizeof(what), "frame of %u bytes over the limit of %u", len,
                     c->limits.max_frame_size);
            protocol_error(c, -EMSGSIZE, what);
            return -EMSGSIZE;
        }
        if (tether__buf_pending(&c->in) < TETHER__FRAME_HEADER_SIZE + (size_t)len) {
            /* Make room for the rest of a large frame in one go. */
            return tether__buf_reserve(&c->in, TETHER__FRAME_HEADER_SIZE + len -
                                                   tether__buf_pending(&c->in));
        }
        const uint8_t *body = head + TETHER__FRAME_HEADER_SIZE;
        tether__frame f;
        int r = tether__frame_decode(body, len, &c->limits, &f);
        if (r < 0) {
            protocol_error(c, r, r == -EMSGSIZE ? "frame over a limit" : "malformed frame");
            return r;
        }
        int state = atomic_load(&c->state);
        if (state == TETHER__CONN_CLOSED) {
            return -ECONNRESET;
        }
        if (state == TETHER__CONN_HANDSHAKE) {
            handle_hello(c, &f);
        } else if (!io_thread && f.kind != TETHER__RESPONSE && f.kind != TETHER__PROGRESS &&
                   f.kind != TETHER__PONG) {
            hand_off(c, head, TETHER__FRAME_HEADER_SIZE + len);
        } else {
            dispatch_frame(c, &f, io_thread);
        }
        tether__buf_consume(&c->in, TETHER__FRAME_HEADER_SIZE + len);
    }
    return 0;
}

/* Read what the socket has (up to budget). Returns bytes read, 0 on EOF, -EAGAIN, -errno. */
static ssize_t
read_socket(tether_conn *c, size_t budget)
{
    size_t total = 0;
    while (total < budget) {
        if (tether__buf_reserve(&c->in, READ_CHUNK) < 0) {
            return -ENOMEM;
        }
        size_t room = c->in.cap - c->in.len;
        ssize_t n = recv(c->fd, c->in.data + c->in.len, room, MSG_DONTWAIT);
        if (n > 0) {
            c->in.len += (size_t)n;
            total += (size_t)n;
            atomic_fetch_add_explicit(&c->bytes_in, (uint64_t)n, memory_order_relaxed);
            if ((size_t)n < room) {
                break;
            }
            continue;
        }
        if (n == 0) {
            return total ? (ssize_t)total : 0;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN) {
            return total ? (ssize_t)total : -EAGAIN;
        }
        return total ? (ssize_t)total : -errno;
    }
    return (ssize_t)total;
}

/*
 * Idle connections keep no input buffer: whoever reads (the I/O thread or a caller
 * holding the role) reads into a buffer of its own thread, and only a partial frame
 * left at the end is copied into the connection's. Thousands of idle clients then cost
 * no buffer memory, and busy ones no allocation per read.
 */
static bool
in_borrow_scratch(tether_conn *c)
{
    tether__buf *scratch;
    if (c->in.cap != 0 || !(scratch = tether__thread_buf(TETHER__THREAD_BUF_READ))) {
        return false;
    }
    c->in = *scratch;
    tether__buf_reset(&c->in);
    *scratch = TETHER__BUF_INIT;
    return true;
}

static void
in_return_scratch(tether_conn *c, bool borrowed)
{
    tether__buf *scratch = tether__thread_buf(TETHER__THREAD_BUF_READ);
    if (!borrowed) {
        if (tether__buf_pending(&c->in) == 0) {
            /* A big frame read in rounds had the thread's buffer: give it back, so that
             * the next one finds its pages mapped already. */
            if (scratch && scratch->cap == 0 && c->in.cap <= READ_SCRATCH_KEEP) {
                tether__buf_reset(&c->in);
                *scratch = c->in;
                c->in = TETHER__BUF_INIT;
            } else {
                tether__buf_done(&c->in);
            }
        }
        return;
    }
    tether__buf used = c->in;
    c->in = TETHER__BUF_INIT;
    size_t rest = tether__buf_pending(&used);
    if (rest >= BIG_PARTIAL) {
        /* Most of a big frame: the buffer goes with the connection until the frame is
         * whole (no copy); the thread makes a new one if it reads meanwhile. */
        c->in = used;
        *scratch = TETHER__BUF_INIT;
        return;
    }
    if (rest > 0 && tether__buf_append(&c->in, tether__buf_head(&used), rest) < 0) {
        tether__conn_fail(c, -ENOMEM, "out of memory");
    }
    if (used.cap > READ_SCRATCH_KEEP) {
        tether__buf_done(&used); /* do not keep a buffer grown by one huge frame */
    }
    tether__buf_reset(&used);
    /* Known to exist: it was borrowed from. */
    *scratch = used;
}

static void
role_release_locked(tether_conn *c)
{
    c->role = TETHER__ROLE_FREE;
    if (!c->read_armed && atomic_load(&c->state) != TETHER__CONN_CLOSED) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = EV_READ};
        epoll_ctl(c->epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->read_armed = true;
    }
    if (c->role_waiters) {
        tether__efd_raise(c->role_waiters->efd);
    }
}

static void
flush_batch(tether_conn *c)
{
    pthread_mutex_lock(&c->wlock);
    int r = flush_locked(c);
    pthread_mutex_unlock(&c->wlock);
    if (r < 0) {
        tether__conn_fail(c, -ECONNRESET, "write failed");
    }
}

static void
drain_handoff(tether_conn *c)
{
    pthread_mutex_lock(&c->lock);
    if (tether__buf_pending(&c->handoff) == 0) {
        pthread_mutex_unlock(&c->lock);
        return;
    }
    tether__buf frames = c->handoff;
    c->handoff = TETHER__BUF_INIT;
    pthread_mutex_unlock(&c->lock);
    while (tether__buf_pending(&frames) >= TETHER__FRAME_HEADER_SIZE &&
           atomic_load(&c->state) != TETHER__CONN_CLOSED) {
        const uint8_t *head = tether__buf_head(&frames);
        uint32_t len = tether__frame_length(head);
        tether__frame f;
        if (tether__frame_decode(head + TETHER__FRAME_HEADER_SIZE, len, &c->limits, &f) == 0) {
            dispatch_frame(c, &f, true);
        }
        tether__buf_consume(&frames, TETHER__FRAME_HEADER_SIZE + len);
    }
    tether__buf_done(&frames);
}

static void
run_handoff(tether__task *task)
{
    tether_conn *c = (tether_conn *)((char *)task - offsetof(tether_conn, handoff_task));
    pthread_mutex_lock(&c->lock);
    c->handoff_posted = false;
    pthread_mutex_unlock(&c->lock);
    c->in_batch = true;
    drain_handoff(c);
    c->in_batch = false;
    flush_batch(c);
    tether_conn_unref(c);
}

static void
on_poll(uv_poll_t *handle, int status, int events)
{
    (void)events;
    tether_conn *c = handle->data;
    if (status < 0 || atomic_load(&c->state) == TETHER__CONN_CLOSED) {
        uv_poll_stop(handle);
        return;
    }
    /* With no write interest armed only the socket can have woken us: skip asking the
     * private set which one (a syscall per request on the serving side). */
    bool readable = true, writable = false;
    if (atomic_load_explicit(&c->write_armed, memory_order_relaxed)) {
        struct epoll_event evs[2];
        int n = epoll_wait(c->epfd, evs, 2, 0);
        readable = false;
        for (int i = 0; i < n; i++) {
            readable |= evs[i].data.u32 == EV_READ;
            writable |= evs[i].data.u32 == EV_WRITE;
        }
    }
    tether_conn_ref(c);
    if (writable) {
        flush_batch(c);
    }
    if (readable) {
        pthread_mutex_lock(&c->lock);
        if (c->role != TETHER__ROLE_FREE) {
            /* A caller is reading; it re-arms when it gives the role back. */
            if (c->read_armed) {
                struct epoll_event ev = {.events = 0, .data.u32 = EV_READ};
                epoll_ctl(c->epfd, EPOLL_CTL_MOD, c->fd, &ev);
                c->read_armed = false;
            }
            pthread_mutex_unlock(&c->lock);
            goto out;
        }
        c->role = TETHER__ROLE_IO;
        pthread_mutex_unlock(&c->lock);

        drain_handoff(c);
        c->in_batch = true;
        bool borrowed = in_borrow_scratch(c);
        ssize_t got = read_socket(c, READ_BUDGET);
        if (got > 0 || tether__buf_pending(&c->in) > 0) {
            process_input(c, true);
        }
        in_return_scratch(c, borrowed);
        c->in_batch = false;
        pthread_mutex_lock(&c->lock);
        role_release_locked(c);
        pthread_mutex_unlock(&c->lock);
        flush_batch(c);
        if (got == 0) {
            tether__conn_fail(c, -ECONNRESET, "the peer closed the connection");
        } else if (got < 0 && got != -EAGAIN) {
            tether__conn_fail(c, -ECONNRESET, "read failed");
        }
    }
out:
    tether_conn_unref(c);
}

/* ---- the synchronous caller as reader -------------------------------------------- */

static uint64_t
pending_expiry(const tether__pending *p)
{
    uint64_t silence = p->timeout_usec == UINT64_MAX ? UINT64_MAX
                                                     : p->last_heard_usec + p->timeout_usec;
    return silence < p->deadline_usec ? silence : p->deadline_usec;
}

/* When the waiter must wake: the call's expiry, or its next interrupt check. */
static uint64_t
pending_wake(const tether__pending *p)
{
    uint64_t expiry = pending_expiry(p);
    return p->next_interrupt_usec < expiry ? p->next_interrupt_usec : expiry;
}

/* Give up on the call: forget it, tell the callee, complete it with status. Conn lock
 * held; drops and retakes it. */
static void
abandon_locked(tether_conn *c, tether__pending *p, int status, const char *type,
               const char *message)
{
    tether__pending *taken = tether__pending_take(c, p->id);
    pthread_mutex_unlock(&c->lock);
    if (taken) {
        tether__send_cancel(c, p->id);
        tether__pending_complete(c, p, status, NULL, type, message, NULL);
    }
    pthread_mutex_lock(&c->lock);
}

/* The call timed out. Conn lock held; drops and retakes it. */
static void
expire_locked(tether_conn *c, tether__pending *p)
{
    bool deadline = p->deadline_usec <= tether_now_usec();
    abandon_locked(c, p, -ETIMEDOUT, "tether.Timeout",
                   deadline ? "the call's deadline passed"
                            : "the peer was silent for longer than the timeout");
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
    pthread_mutex_lock(&c->lock);
    if (!p->done) {
        abandon_locked(c, p, -ECANCELED, "tether.Cancelled", "the call was interrupted");
    }
    pthread_mutex_unlock(&c->lock);
    return true;
}

/* Lead: read the socket until p completes. Conn lock not held; role is ours. */
static void
lead(tether_conn *c, tether__pending *p)
{
    for (;;) {
        if (process_input(c, false) < 0) {
            return;
        }
        pthread_mutex_lock(&c->lock);
        bool done = p->done;
        uint64_t expiry = pending_expiry(p);
        pthread_mutex_unlock(&c->lock);
        if (done || atomic_load(&c->state) == TETHER__CONN_CLOSED || interrupted(c, p)) {
            return;
        }
        uint64_t now = tether_now_usec();
        if (now >= expiry) {
            pthread_mutex_lock(&c->lock);
            if (!p->done) {
                expire_locked(c, p);
            }
            pthread_mutex_unlock(&c->lock);
            return;
        }
        uint64_t wake = pending_wake(p);
        uint64_t wait_ms = wake <= now ? 0 : (wake - now + 999) / 1000;
        struct pollfd pfd[2] = {{.fd = c->fd, .events = POLLIN}, {.fd = p->efd, .events = POLLIN}};
        int n = poll(pfd, 2, wait_ms > 1000 ? 1000 : (int)wait_ms);
        if (n <= 0) {
            continue;
        }
        if (pfd[1].revents) {
            /* A call-back of our chain was delivered: give the role back and run it. */
            tether__efd_drain(p->efd);
            return;
        }
        if (!pfd[0].revents) {
            continue;
        }
        ssize_t got = read_socket(c, READ_BUDGET);
        if (got == 0) {
            tether__conn_fail(c, -ECONNRESET, "the peer closed the connection");
            return;
        }
        if (got < 0 && got != -EAGAIN) {
            tether__conn_fail(c, -ECONNRESET, "read failed");
            return;
        }
    }
}

/*
 * Wait for a synchronous call's response, reading it ourselves when nobody else holds
 * the reader role. p is in the pending table. Returns with p completed.
 */
void
tether__conn_wait(tether_conn *c, tether__pending *p)
{
    pthread_mutex_lock(&c->lock);
    for (;;) {
        if (p->done) {
            break;
        }
        /* Call-backs of our own chain first: the peer may be waiting for them. */
        tether__work *work = p->waiter ? tether__waiter_take(p->waiter) : NULL;
        if (work) {
            pthread_mutex_unlock(&c->lock);
            work->run(work);
            pthread_mutex_lock(&c->lock);
            continue;
        }
        if (c->role == TETHER__ROLE_FREE && atomic_load(&c->state) != TETHER__CONN_CLOSED) {
            c->role = TETHER__ROLE_CALLER;
            if (c->read_armed) {
                struct epoll_event ev = {.events = 0, .data.u32 = EV_READ};
                epoll_ctl(c->epfd, EPOLL_CTL_MOD, c->fd, &ev);
                c->read_armed = false;
            }
            pthread_mutex_unlock(&c->lock);
            bool borrowed = in_borrow_scratch(c);
            lead(c, p);
            in_return_scratch(c, borrowed);
            pthread_mutex_lock(&c->lock);
            role_release_locked(c);
            continue;
        }
        /* Follow: the role holder completes us, or raises our eventfd when the role
         * comes free; a delivered call-back raises it too. */
        p->role_next = NULL;
        tether__pending **tail = &c->role_waiters;
        while (*tail) {
            tail = &(*tail)->role_next;
        }
        *tail = p;
        uint64_t expiry = pending_wake(p);
        pthread_mutex_unlock(&c->lock);
        uint64_t now = tether_now_usec();
        int wait_ms = expiry == UINT64_MAX ? 1000
                      : expiry <= now      ? 0
                                           : (int)((expiry - now + 999) / 1000 > 1000
                                                       ? 1000
                                                       : (expiry - now + 999) / 1000);
        struct pollfd pfd = {.fd = p->efd, .events = POLLIN};
        if (poll(&pfd, 1, wait_ms) > 0) {
            tether__efd_drain(p->efd);
        }
        pthread_mutex_lock(&c->lock);
        for (tether__pending **w = &c->role_waiters; *w; w = &(*w)->role_next) {
            if (*w == p) {
                *w = p->role_next;
                break;
            }
        }
        if (!p->done && tether_now_usec() >= pending_expiry(p)) {
            expire_locked(c, p);
        }
        if (!p->done && p->interrupt) {
            pthread_mutex_unlock(&c->lock);
            interrupted(c, p);
            pthread_mutex_lock(&c->lock);
        }
    }
    /* Pass the role on to another waiter if it is free. */
    if (c->role == TETHER__ROLE_FREE && c->role_waiters) {
        tether__efd_raise(c->role_waiters->efd);
    }
    pthread_mutex_unlock(&c->lock);
}

/* ---- closing ----------------------------------------------------------------------- */

static void
on_handle_closed(uv_handle_t *h)
{
    tether_conn *c = h->data;
    if (--c->open_handles == 0) {
        tether_conn_unref(c); /* the attach reference */
    }
}

static void
run_close(tether__task *task)
{
    tether_conn *c = (tether_conn *)((char *)task - offsetof(tether_conn, close_task));
    if (atomic_load(&c->attached) && !c->closing_handles) {
        c->closing_handles = true;
        uv_close((uv_handle_t *)&c->poll, on_handle_closed);
        uv_close((uv_handle_t *)&c->handshake_timer, on_handle_closed);
        uv_close((uv_handle_t *)&c->sweep_timer, on_handle_closed);
        uv_close((uv_handle_t *)&c->progress_timer, on_handle_closed);
    }
    if (c->ep->hooks.conn_closed) {
        c->ep->hooks.conn_closed(c->ep, c);
    }
    tether_conn_unref(c); /* the close task's reference */
}

void
tether__conn_fail(tether_conn *c, int status, const char *reason)
{
    int old = atomic_exchange(&c->state, TETHER__CONN_CLOSED);
    if (old == TETHER__CONN_CLOSED) {
        return;
    }
    tether_conn_ref(c);
    shutdown(c->fd, SHUT_RDWR);
    if (old == TETHER__CONN_OPEN) {
        tether__log(c->ep, TETHER_LOG_INFO, "connection to %s (pid %lld) closed: %s",
                    c->peer_name ? c->peer_name : "?", (long long)c->peer_pid,
                    reason ? reason : "");
    }
    /* Fail every pending call. Take them all under the lock, complete outside it. */
    tether__pending *list = NULL;
    pthread_mutex_lock(&c->lock);
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
    pthread_mutex_unlock(&c->lock);
    const char *type = status == -ECANCELED ? "tether.Cancelled" : "tether.ConnectionLost";
    char message[300];
    snprintf(message, sizeof(message), "%s: %s", tether_strerror(status == -ECANCELED ? status
                                                                                    : -ECONNRESET),
             reason ? reason : "");
    while (list) {
        tether__pending *p = list;
        list = p->next;
        tether__pending_complete(c, p, status == -ECANCELED ? -ECANCELED : -ECONNRESET, NULL,
                                 type, message, NULL);
    }
    tether__request_cancel_all(c);
    tether__conn_drop_objects(c);
    /* Wake followers so they notice. */
    pthread_mutex_lock(&c->lock);
    for (tether__pending *w = c->role_waiters; w; w = w->role_next) {
        tether__efd_raise(w->efd);
    }
    pthread_mutex_unlock(&c->lock);
    c->close_task.run = run_close;
    tether__ioloop_post(c->loop, &c->close_task); /* takes over the reference above */
}
