/*
 * link: connection I/O, the reader-role hand-off, frame dispatch through the owner's
 * hooks, and closing. The design and its invariants are described at the top of
 * link.h.
 */
#define _GNU_SOURCE
#include "conn/link.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "platform/platform.h"
#include "util/alloc.h"

/* Bytes read per wake before giving other connections a turn. */
#define READ_BUDGET (256u * 1024)
#define READ_CHUNK (16u * 1024)
/* A thread keeps its read buffer up to this size: frames of a few MiB (bytes sent to a
 * script and back) then reuse it instead of faulting fresh pages in every time. */
#define READ_SCRATCH_KEEP (4u * 1024 * 1024)
/* A partial frame at least this big keeps the buffer it was read into. */
#define BIG_PARTIAL (64u * 1024)
/* An output buffer grown past OUT_KEEP_MIN by big frames is kept while frames keep
 * coming (a script sending megabytes call after call would otherwise fault fresh pages
 * in every time), and given back at once past OUT_KEEP_MAX, or once it has idled for
 * OUT_IDLE_USEC: the I/O thread times that whenever it flushed the link (so a host's
 * idle clients hold no big buffers; a client whose caller always flushed its own frames
 * keeps at most OUT_KEEP_MAX until it closes). */
#define OUT_KEEP_MIN (1024u * 1024)
#define OUT_KEEP_MAX (4u * 1024 * 1024)
#define OUT_IDLE_USEC 1000000u

static void on_poll(uv_poll_t *handle, int status, int events);
static void serve_poll(tether__link *l, bool attaching, int status, int events);

/* ---- the I/O thread's watcher ------------------------------------------------------ */

/* Have the uv_poll ask for what the poll set says (I/O thread). */
static void
rewatch(tether__link *l)
{
    if (!atomic_load(&l->attached) || l->closing_handles || tether__link_is_closed(l)) {
        return;
    }
    unsigned watch = tether__pollset_watch(&l->ps);
    int events = (watch & TETHER__POLL_READ ? UV_READABLE : 0) |
                 (watch & TETHER__POLL_WRITE ? UV_WRITABLE : 0);
    if (events) {
        uv_poll_start(&l->poll, events, on_poll);
    } else {
        uv_poll_stop(&l->poll);
    }
}

static void
run_rewatch(tether__task *task)
{
    tether__link *l = (tether__link *)((char *)task - offsetof(tether__link, rewatch_task));
    /* Cleared first: a change made after the watch is read posts the task again. */
    atomic_store(&l->rewatch_posted, false);
    rewatch(l);
    tether__link_unref(l);
}

/* The poll set's interests changed where its watcher cannot follow by itself (the
 * portable build; never on Linux). Called with lock or wlock held. */
static void
watch_changed(void *arg)
{
    tether__link *l = arg;
    if (tether__ioloop_in_thread(l->loop)) {
        rewatch(l);
        return;
    }
    if (!atomic_exchange(&l->rewatch_posted, true)) {
        tether__link_ref(l);
        l->rewatch_task.run = run_rewatch;
        tether__ioloop_post(l->loop, &l->rewatch_task);
    }
}

static void
run_attach(tether__task *task)
{
    tether__link *l = (tether__link *)((char *)task - offsetof(tether__link, attach_task));
    if (tether__link_is_closed(l)) {
        tether__link_unref(l); /* the attach reference */
        return;
    }
    uv_poll_init(tether__ioloop_uv(l->loop), &l->poll, tether__pollset_fd(&l->ps));
    uv_timer_init(tether__ioloop_uv(l->loop), &l->trim_timer);
    l->poll.data = l->trim_timer.data = l;
    l->open_handles = 2;
    atomic_store(&l->attached, true);
    rewatch(l);
    l->hooks->on_attached(l);
    /* Frames may have come with the handshake (a host may call at once) and nothing
     * more arrive to wake the poll for them: read as if woken, which takes the reader
     * role first (a caller holding it processes them itself). */
    serve_poll(l, true, 0, UV_READABLE);
    /* The attach reference now belongs to the handles; dropped when both closed. */
}

int
tether__link_init(tether__link *l, const tether__link_hooks *hooks, tether__ioloop *loop,
                  const tether__link_config *config, int fd, tether__link_state state)
{
    *l = (tether__link){.fd = -1};
    int r = tether__pollset_init(&l->ps, fd, watch_changed, l);
    if (r < 0) {
        return r;
    }
    l->fd = fd;
    atomic_init(&l->refs, 1);
    l->hooks = hooks;
    l->loop = loop;
    l->logger = config->logger;
    atomic_init(&l->state, state);
    l->limits.max_frame_size = config->max_frame_size;
    l->limits.max_depth = TETHER__DEFAULT_MAX_DEPTH;
    l->peer_max_frame_size = TETHER__DEFAULT_MAX_FRAME_SIZE;
    l->max_output_bytes = config->max_output_bytes;
    pthread_mutex_init(&l->lock, NULL);
    pthread_mutex_init(&l->wlock, NULL);
    return 0;
}

static void release_given(tether__link *l);

void
tether__link_done(tether__link *l)
{
    tether__pollset_done(&l->ps);
    close(l->fd);
    tether__buf_done(&l->in);
    release_given(l);
    tether__buf_done(&l->out);
    tether__buf_done(&l->handoff);
    tether__fd_queue_clear(&l->out_fds);
    tether__fd_queue_clear(&l->in_fds);
    tether__fd_queue_clear(&l->handoff_fds);
    tether__free(l->peer_name);
    tether__free(l->peer_language);
    tether__free(l->peer_language_version);
    pthread_mutex_destroy(&l->lock);
    pthread_mutex_destroy(&l->wlock);
}

void
tether__link_enable_fds(tether__link *l)
{
    struct sockaddr_storage sa;
    socklen_t len = sizeof(sa);
    if (getsockname(l->fd, (struct sockaddr *)&sa, &len) == 0 && sa.ss_family == AF_UNIX) {
        l->pass_fds = true;
        l->limits.buffer_exts = true;
    }
}

void
tether__link_ref(tether__link *l)
{
    atomic_fetch_add_explicit(&l->refs, 1, memory_order_relaxed);
}

void
tether__link_unref(tether__link *l)
{
    if (atomic_fetch_sub_explicit(&l->refs, 1, memory_order_acq_rel) == 1) {
        l->hooks->destroy(l);
    }
}

void
tether__link_attach(tether__link *l)
{
    tether__link_ref(l);
    l->attach_task.run = run_attach;
    tether__ioloop_post(l->loop, &l->attach_task);
}

int
tether__link_set_peer(tether__link *l, const char *name, const char *language,
                      const char *language_version, int64_t pid)
{
    l->peer_name = tether__strdup(name ? name : "");
    l->peer_language = tether__strdup(language ? language : "");
    l->peer_language_version = tether__strdup(language_version ? language_version : "");
    l->peer_pid = pid;
    if (!l->peer_name || !l->peer_language || !l->peer_language_version) {
        return -ENOMEM;
    }
    return 0;
}

static int flush_locked(tether__link *l);

/* ---- output ---------------------------------------------------------------------- */

/* A given span is written, or the link is done: its memory goes back; wlock held. */
static void
release_given(tether__link *l)
{
    if (l->lent_release) {
        l->lent_release(l->lent_given, l->lent_given_size);
        l->lent_release = NULL;
        l->lent_given = NULL;
    }
}

/* Send what is pending in out, the lent span from where it is; wlock held. */
static ssize_t
send_lent(tether__link *l, size_t pending)
{
    uint8_t *head = tether__buf_head(&l->out);
    struct iovec iov[3];
    int n = 0;
    if (l->lent_at > 0) {
        iov[n++] = (struct iovec){head, l->lent_at};
    }
    iov[n++] =
        (struct iovec){(void *)l->lent_src,
                       pending < l->lent_at + l->lent_len ? pending - l->lent_at : l->lent_len};
    size_t after = l->lent_at + l->lent_len;
    if (pending > after) {
        iov[n++] = (struct iovec){head + after, pending - after};
    }
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    return sendmsg(l->fd, &m, TETHER__SEND_FLAGS);
}

/* n bytes of out were sent, some of them maybe from the lent span; wlock held. */
static void
consume_lent(tether__link *l, size_t n)
{
    tether__buf_consume(&l->out, n);
    if (n <= l->lent_at) {
        l->lent_at -= n;
        return;
    }
    size_t into = n - l->lent_at;
    l->lent_at = 0;
    if (into >= l->lent_len) {
        l->lent_len = 0;
        l->lent_src = NULL;
        l->lent_owner = NULL;
        release_given(l);
    } else {
        l->lent_src += into;
        l->lent_len -= into;
    }
}

/* Write what is queued; wlock held. Returns 0 (maybe partially written) or -errno. */
static int
flush_locked(tether__link *l)
{
    while (tether__buf_pending(&l->out) > 0) {
        /* A frame with descriptors goes alone, in a write that starts with it
         * (conn/fdpass.h); what comes before it, up to it. */
        size_t limit = tether__buf_pending(&l->out);
        tether__fd_batch *batch = tether__fd_queue_front(&l->out_fds);
        uint64_t written = atomic_load_explicit(&l->bytes_out, memory_order_relaxed);
        if (batch && batch->at > written && batch->at - written < limit) {
            limit = (size_t)(batch->at - written);
        }
        bool lent = l->lent_len > 0 && limit > l->lent_at;
        ssize_t n;
        if (batch && batch->at == written) {
            n = tether__fd_send(l->fd, tether__buf_head(&l->out), (size_t)batch->len, batch->fds,
                                batch->n, TETHER__SEND_FLAGS);
            if (n > 0) {
                /* In the socket now: our copies go. */
                tether__fd_batch_free(tether__fd_queue_pop(&l->out_fds));
            }
        } else {
            n = lent ? send_lent(l, limit)
                     : send(l->fd, tether__buf_head(&l->out), limit, TETHER__SEND_FLAGS);
        }
        if (n > 0) {
            atomic_fetch_add_explicit(&l->bytes_out, (uint64_t)n, memory_order_relaxed);
            if (l->lent_len > 0) {
                consume_lent(l, (size_t)n);
            } else {
                tether__buf_consume(&l->out, (size_t)n);
            }
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            tether__pollset_want_write(&l->ps, true);
            return 0;
        }
        return n < 0 ? -errno : -EIO;
    }
    tether__pollset_want_write(&l->ps, false);
    if (l->out.cap > OUT_KEEP_MAX) {
        tether__buf_done(&l->out);
    } else if (l->out.cap > OUT_KEEP_MIN) {
        l->out_used_usec = tether_now_usec();
        atomic_store_explicit(&l->trim_wanted, true, memory_order_relaxed);
    }
    return 0;
}

/* Give back a big output buffer that idled long enough; else look again when it will
 * have (I/O thread, timer). */
static void
on_trim_timer(uv_timer_t *t)
{
    tether__link *l = t->data;
    pthread_mutex_lock(&l->wlock);
    uint64_t idle = tether_now_usec() - l->out_used_usec;
    bool big = l->out.cap > OUT_KEEP_MIN && tether__buf_pending(&l->out) == 0;
    if (big && idle >= OUT_IDLE_USEC) {
        tether__buf_done(&l->out);
        big = false;
    }
    pthread_mutex_unlock(&l->wlock);
    l->trim_running = big;
    if (big) {
        uv_timer_start(&l->trim_timer, on_trim_timer, (OUT_IDLE_USEC - idle) / 1000 + 1, 0);
    }
}

/* A big output buffer drained: make sure the trim timer runs (I/O thread). */
static void
start_trim(tether__link *l)
{
    if (atomic_exchange_explicit(&l->trim_wanted, false, memory_order_relaxed) &&
        !l->trim_running && !l->closing_handles && atomic_load(&l->attached)) {
        l->trim_running = true;
        uv_timer_start(&l->trim_timer, on_trim_timer, OUT_IDLE_USEC / 1000, 0);
    }
}

/* Write what is queued from this thread; wlock held, and released. A failed write
 * closes the link. Returns 0 or -ECONNRESET. */
static int
write_out_unlock(tether__link *l)
{
    int r = tether__buf_pending(&l->out) > 0 ? flush_locked(l) : 0;
    pthread_mutex_unlock(&l->wlock);
    if (r < 0) {
        tether__link_fail(l, -ECONNRESET, "write failed");
        return -ECONNRESET;
    }
    return 0;
}

/* Bytes held for their sender's flush beyond which the I/O thread writes them anyway. */
#define HOLD_MAX (64u * 1024)

/* The link whose input this thread, not the I/O thread, acts on (process_as_caller):
 * what it sends meanwhile goes out in one write at the end. */
static _Thread_local tether__link *reader_batch;

/* Queue a frame that encode writes (wlock held, and released if it fails); its body's
 * size in *ret_size. */
static int
queue_frame(tether__link *l, tether__encode_fn encode, void *arg, tether__lend *lend,
            size_t *ret_size)
{
    size_t backlog = tether__buf_pending(&l->out);
    if (lend) {
        lend->ok = l->lent_len == 0;
    }
    int r = encode(&l->out, arg);
    if (r < 0) {
        if (lend) {
            lend->ok = false;
        }
        pthread_mutex_unlock(&l->wlock);
        return r;
    }
    /* Offsets from the head survive the encoder's growing (and compacting) the buffer. */
    size_t frame_size = tether__buf_pending(&l->out) - backlog - TETHER__FRAME_HEADER_SIZE;
    r = frame_size > l->peer_max_frame_size          ? -EMSGSIZE
        : backlog + frame_size > l->max_output_bytes ? -ENOBUFS
                                                     : 0;
    if (r < 0) {
        l->out.len = l->out.off + backlog;
        if (lend) {
            lend->ok = false;
        }
        pthread_mutex_unlock(&l->wlock);
        return r;
    }
    if (lend && lend->ok) {
        l->lent_src = lend->src;
        l->lent_at = lend->at;
        l->lent_len = lend->len;
        l->lent_owner = lend->release ? NULL : lend; /* a given span is never taken back */
        l->lent_release = lend->release;
        l->lent_given = lend->owner;
        l->lent_given_size = lend->owner_size;
    }
    *ret_size = frame_size;
    return 0;
}

static inline int write_as_mode_unlock(tether__link *l, int mode, size_t backlog,
                                       size_t frame_size);

int
tether__link_send(tether__link *l, tether__encode_fn encode, void *arg, int mode)
{
    if (atomic_load(&l->state) == TETHER__LINK_CLOSED) {
        return -ENOTCONN;
    }
    pthread_mutex_lock(&l->wlock);
    size_t backlog = tether__buf_pending(&l->out), frame_size;
    int r = queue_frame(l, encode, arg, NULL, &frame_size);
    if (r < 0) {
        return r;
    }
    return write_as_mode_unlock(l, mode, backlog, frame_size);
}

/* A frame of frame_size bytes was queued behind backlog bytes: write it as mode says;
 * wlock held, released. */
static inline int
write_as_mode_unlock(tether__link *l, int mode, size_t backlog, size_t frame_size)
{
    bool flush_now = mode == TETHER__SEND_NOW;
    bool on_io_thread = tether__ioloop_in_thread(l->loop);
    if (!flush_now && reader_batch == l && backlog + frame_size < HOLD_MAX) {
        atomic_store_explicit(&l->reader_held, true, memory_order_relaxed);
        pthread_mutex_unlock(&l->wlock);
        return 0;
    }
    if (mode == TETHER__SEND_HOLD && !on_io_thread && backlog + frame_size < HOLD_MAX) {
        /* Its sender flushes (tether__link_flush), with what it queues next. */
        pthread_mutex_unlock(&l->wlock);
        return 0;
    }
    if (!flush_now && on_io_thread && l->in_batch) {
        /* The I/O thread flushes at the end of the batch it is reading. */
        pthread_mutex_unlock(&l->wlock);
        return 0;
    }
    if (!flush_now && !on_io_thread) {
        /* Let the I/O thread write whole batches: write interest wakes it. */
        tether__pollset_want_write(&l->ps, true);
        pthread_mutex_unlock(&l->wlock);
        return 0;
    }
    return write_out_unlock(l);
}

int
tether__link_send_fds(tether__link *l, tether__encode_fn encode, void *arg, int mode,
                      const int *fds, uint32_t n)
{
    if (!l->pass_fds) {
        return -EOPNOTSUPP;
    }
    if (n == 0 || n > TETHER__MAX_FRAME_FDS) {
        return -EINVAL;
    }
    if (atomic_load(&l->state) == TETHER__LINK_CLOSED) {
        return -ENOTCONN;
    }
    int copies[TETHER__MAX_FRAME_FDS];
    for (uint32_t i = 0; i < n; i++) {
        copies[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
        if (copies[i] < 0) {
            int r = -errno;
            while (i > 0) {
                close(copies[--i]);
            }
            return r;
        }
    }
    pthread_mutex_lock(&l->wlock);
    size_t backlog = tether__buf_pending(&l->out), frame_size;
    uint64_t at = atomic_load_explicit(&l->bytes_out, memory_order_relaxed) + backlog;
    int r = queue_frame(l, encode, arg, NULL, &frame_size);
    if (r < 0) {
        for (uint32_t i = 0; i < n; i++) {
            close(copies[i]);
        }
        return r;
    }
    r = tether__fd_queue_push(&l->out_fds, at, TETHER__FRAME_HEADER_SIZE + frame_size, copies, n);
    if (r < 0) {
        l->out.len = l->out.off + backlog; /* the frame goes with its descriptors or not at all */
        pthread_mutex_unlock(&l->wlock);
        return r;
    }
    return write_as_mode_unlock(l, mode, backlog, frame_size);
}

int
tether__link_send_lent(tether__link *l, tether__encode_fn encode, void *arg, tether__lend *lend)
{
    lend->ok = false;
    if (atomic_load(&l->state) == TETHER__LINK_CLOSED) {
        return -ENOTCONN;
    }
    pthread_mutex_lock(&l->wlock);
    size_t frame_size;
    int r = queue_frame(l, encode, arg, lend, &frame_size);
    return r < 0 ? r : write_out_unlock(l);
}

void
tether__link_take_back(tether__link *l, tether__lend *lend)
{
    if (!lend->ok) {
        return;
    }
    pthread_mutex_lock(&l->wlock);
    if (l->lent_owner == lend) {
        /* Not all written yet (a slow peer, a closed link): the rest goes into its room. */
        memcpy(tether__buf_head(&l->out) + l->lent_at, l->lent_src, l->lent_len);
        l->lent_src = NULL;
        l->lent_len = l->lent_at = 0;
        l->lent_owner = NULL;
    }
    pthread_mutex_unlock(&l->wlock);
    lend->ok = false;
}

int
tether__link_flush(tether__link *l)
{
    if (atomic_load(&l->state) == TETHER__LINK_CLOSED) {
        return -ENOTCONN;
    }
    if (reader_batch == l) {
        atomic_store_explicit(&l->reader_held, true, memory_order_relaxed);
        return 0; /* at the end of the input this thread acts on */
    }
    pthread_mutex_lock(&l->wlock);
    return write_out_unlock(l);
}

void
tether__link_drop_slow_reader(tether__link *l)
{
    char reason[128];
    snprintf(reason, sizeof(reason), "stopped reading: over %llu bytes queued for it",
             (unsigned long long)l->max_output_bytes);
    tether__logger_write(l->logger, TETHER_LOG_WARNING, "dropping %s (pid %lld): %s",
                         l->peer_name ? l->peer_name : "?", (long long)l->peer_pid, reason);
    tether__link_fail(l, -ECONNRESET, reason);
}

/* ---- input ----------------------------------------------------------------------- */

static void
protocol_error(tether__link *l, int code, const char *what)
{
    tether__logger_write(l->logger, TETHER_LOG_WARNING,
                         "connection %s (pid %lld): %s (%s); closing it",
                         l->peer_name ? l->peer_name : "(handshake)", (long long)l->peer_pid,
                         what, tether_strerror(code));
    tether__link_fail(l, -ECONNRESET, what);
}

void
tether__link_break(tether__link *l, const char *why)
{
    protocol_error(l, -EPROTO, why);
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

void
tether__link_refuse(tether__link *l, const char *code, const char *message)
{
    refuse_arg ra = {code, message};
    tether__link_send(l, encode_refuse, &ra, true);
    tether__logger_write(l->logger, TETHER_LOG_NOTICE, "refused a client: %s: %s", code,
                         message);
    tether__link_fail(l, -ECONNREFUSED, message);
}

static void
handle_hello(tether__link *l, const tether__frame *f)
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
        l->hooks->on_hello(l, &hello, &result);
    }
    tether__buf_done(&strings);
    if (result.refuse_code) {
        tether__link_refuse(l, result.refuse_code, result.refuse_message);
    }
}

/* A frame that cannot be read: before the handshake is done the peer is told why
 * (REFUSE "protocol", as for any other HELLO that is not well formed); after, the
 * connection just closes. */
static void
bad_frame(tether__link *l, int code, const char *what)
{
    if (atomic_load(&l->state) == TETHER__LINK_HANDSHAKE) {
        char message[160];
        snprintf(message, sizeof(message), "the first frame must be a well-formed hello: %s", what);
        tether__link_refuse(l, "protocol", message);
        return;
    }
    protocol_error(l, code, what);
}

static int
encode_pong(tether__buf *out, void *arg)
{
    return tether__encode_ping(out, TETHER__PONG, *(uint64_t *)arg);
}

/* Frames a caller thread reads but may not act on go to the I/O thread, in order. */
static void run_handoff(tether__task *task);

static void
hand_off(tether__link *l, const uint8_t *frame, size_t len, tether__fd_batch *batch)
{
    pthread_mutex_lock(&l->lock);
    int r = tether__buf_append(&l->handoff, frame, len);
    if (r == 0 && batch) {
        r = tether__fd_queue_push(&l->handoff_fds, 0, 0, batch->fds, batch->n);
        batch->n = 0; /* the queue owns them now, whatever the outcome */
        if (r < 0) {
            l->handoff.len -= len;
        }
    }
    tether__fd_batch_free(batch);
    bool post = r == 0 && !l->handoff_posted;
    if (post) {
        l->handoff_posted = true;
        tether__link_ref(l);
    }
    pthread_mutex_unlock(&l->lock);
    if (r < 0) {
        tether__link_fail(l, -ENOMEM, "out of memory");
        return;
    }
    if (post) {
        l->handoff_task.run = run_handoff;
        tether__ioloop_post(l->loop, &l->handoff_task);
    }
}

/* Nothing handed off waits for the I/O thread or is being acted on there: a request
 * read now may start on the reading thread without overtaking an earlier frame. */
static bool
handoff_idle(tether__link *l)
{
    pthread_mutex_lock(&l->lock);
    bool idle = !l->handoff_busy && tether__buf_pending(&l->handoff) == 0;
    pthread_mutex_unlock(&l->lock);
    return idle;
}

static void
dispatch_frame(tether__link *l, const tether__frame *f)
{
    switch (f->kind) {
    case TETHER__RESPONSE:
        l->hooks->on_response(l, f);
        return;
    case TETHER__PROGRESS:
        l->hooks->on_progress(l, f);
        return;
    case TETHER__REQUEST:
    case TETHER__NOTIFY:
        l->hooks->on_request(l, f);
        return;
    case TETHER__CANCEL:
        l->hooks->on_cancel(l, f->id);
        return;
    case TETHER__PING: {
        uint64_t nonce = f->id;
        tether__link_send(l, encode_pong, &nonce, false);
        return;
    }
    case TETHER__PONG:
        return;
    case TETHER__RELEASE:
        l->hooks->on_release(l, f);
        return;
    case TETHER__BUFFERS_DONE:
        l->hooks->on_buffers_done(l, f);
        return;
    case TETHER__CONTROL: {
        char action[32], reason[256];
        snprintf(action, sizeof(action), "%.*s", (int)f->method.len, (const char *)f->method.ptr);
        snprintf(reason, sizeof(reason), "%.*s", (int)f->text.len, (const char *)f->text.ptr);
        l->hooks->on_control(l, action, reason);
        return;
    }
    case TETHER__LOG:
        l->hooks->on_log(l, f->level >= 3 && f->level <= 7 ? (int)f->level : TETHER_LOG_INFO,
                         &f->method, &f->text);
        return;
    default:
        protocol_error(l, -EPROTO, "unexpected message kind after the handshake");
        return;
    }
}

/* The big frame of l->in this thread acts on (process_input), whose buffer a hook may
 * take (tether__link_take_input); TAKEN once one did. */
static _Thread_local const uint8_t *acting_frame;
static _Thread_local tether__link *acting_link;
static const uint8_t taken_mark;
#define TAKEN (&taken_mark)

/* The descriptors of the frame this thread acts on (tether__link_take_fds). */
static _Thread_local tether__fd_batch *acting_batch;
static _Thread_local tether__link *acting_batch_link;

/* Act on frame f with its batch of descriptors (NULL: none), which is closed after, what
 * the hook did not take. */
static void
dispatch_with_fds(tether__link *l, const tether__frame *f, tether__fd_batch *batch)
{
    if (!batch) {
        dispatch_frame(l, f);
        return;
    }
    tether__fd_batch *outer = acting_batch;
    tether__link *outer_link = acting_batch_link;
    acting_batch = batch;
    acting_batch_link = l;
    dispatch_frame(l, f);
    acting_batch = outer;
    acting_batch_link = outer_link;
    tether__fd_batch_free(batch);
}

int
tether__link_take_fds(tether__link *l, const tether__frame *f, int *fds, size_t n)
{
    tether__fd_batch *b = acting_batch;
    if (acting_batch_link != l || !b || b->n != n || f->buffers != n || (n > 0 && b->fds[0] < 0)) {
        return -ENOENT;
    }
    for (size_t i = 0; i < n; i++) {
        fds[i] = b->fds[i];
        b->fds[i] = -1;
    }
    return 0;
}

/*
 * Decode and act on every complete frame in l->in. The caller holds the reader role.
 * On a caller thread, frames that must run on the I/O thread are handed off.
 * Returns 0, or a negative code after closing the connection.
 */
static int
process_input(tether__link *l, bool io_thread)
{
    while (tether__buf_pending(&l->in) >= TETHER__FRAME_HEADER_SIZE) {
        const uint8_t *head = tether__buf_head(&l->in);
        uint32_t len = tether__frame_length(head);
        if (len > l->limits.max_frame_size) {
            char what[96];
            snprintf(what, sizeof(what), "frame of %u bytes over the limit of %u", len,
                     l->limits.max_frame_size);
            bad_frame(l, -EMSGSIZE, what);
            return -EMSGSIZE;
        }
        if (tether__buf_pending(&l->in) < TETHER__FRAME_HEADER_SIZE + (size_t)len) {
            /* Make room for the rest of a large frame in one go (in a kept buffer, for
             * a big one: util/buf.h). */
            return tether__buf_reserve(&l->in, TETHER__FRAME_HEADER_SIZE + len -
                                                   tether__buf_pending(&l->in));
        }
        const uint8_t *body = head + TETHER__FRAME_HEADER_SIZE;
        tether__frame f;
        int r = tether__frame_decode(body, len, &l->limits, &f);
        if (r < 0) {
            bad_frame(l, r, r == -EMSGSIZE ? "frame over a limit" : "malformed frame");
            return r;
        }
        int state = atomic_load(&l->state);
        if (state == TETHER__LINK_CLOSED) {
            return -ECONNRESET;
        }
        tether__fd_batch *batch = NULL;
        const char *why;
        /* Descriptors in waiting, or a frame that names buffers: whose they are. */
        if (l->pass_fds && (l->in_fds.n || f.buffers) &&
            tether__fd_claim(&l->in_fds, l->in_at, TETHER__FRAME_HEADER_SIZE + len, f.buffers,
                             &batch, &why) < 0) {
            bad_frame(l, -EPROTO, why);
            return -EPROTO;
        }
        l->in_at += TETHER__FRAME_HEADER_SIZE + len;
        /* A big frame's buffer may be taken by the hook acting on it: marked per thread
         * (the I/O thread acts on handed-off frames while a caller reads), and only for
         * big frames, so that small ones pay a comparison. */
        bool big = len >= TETHER__BIG_SPAN;
        const uint8_t *outer_frame = NULL;
        tether__link *outer_link = NULL;
        if (big) {
            outer_frame = acting_frame;
            outer_link = acting_link;
            acting_frame = head;
            acting_link = l;
        }
        if (state == TETHER__LINK_HANDSHAKE) {
            handle_hello(l, &f);
        } else if (!io_thread && f.kind != TETHER__RESPONSE && f.kind != TETHER__PROGRESS &&
                   f.kind != TETHER__BUFFERS_DONE && f.kind != TETHER__PONG) {
            /* Requests with descriptors go to the I/O thread with them. */
            if (!(!batch && (f.kind == TETHER__REQUEST || f.kind == TETHER__NOTIFY) &&
                  handoff_idle(l) && l->hooks->take_request(l, &f)) &&
                !(big && acting_frame == TAKEN)) {
                hand_off(l, head, TETHER__FRAME_HEADER_SIZE + len, batch);
                batch = NULL;
            }
            tether__fd_batch_free(batch);
        } else {
            dispatch_with_fds(l, &f, batch);
        }
        if (big) {
            bool taken = acting_frame == TAKEN;
            acting_frame = outer_frame;
            acting_link = outer_link;
            if (taken) {
                continue; /* in holds what followed the frame already */
            }
        }
        tether__buf_consume(&l->in, TETHER__FRAME_HEADER_SIZE + len);
    }
    return 0;
}

void *
tether__link_take_input(tether__link *l, const tether__frame *f, size_t *ret_cap)
{
    const uint8_t *frame = acting_frame;
    if (acting_link != l || !frame || frame == TAKEN) {
        return NULL;
    }
    /* Only the frame being acted on, not one a hook decoded from elsewhere. */
    size_t size = TETHER__FRAME_HEADER_SIZE + tether__frame_length(frame);
    const tether__span *spans[] = {&f->value, &f->args, &f->kwargs, &f->method};
    for (size_t i = 0; i < sizeof(spans) / sizeof(spans[0]); i++) {
        if (spans[i]->len && (spans[i]->ptr < frame || spans[i]->ptr >= frame + size)) {
            return NULL;
        }
    }
    /* What was read after the frame moves to a buffer of its own: one read's worth at
     * most, where keeping the frame would have cost a copy of all of it. */
    size_t rest = (size_t)(l->in.data + l->in.len - (frame + size));
    tether__buf next = TETHER__BUF_INIT;
    if (rest > 0 && tether__buf_append(&next, frame + size, rest) < 0) {
        return NULL;
    }
    void *block = l->in.data;
    *ret_cap = l->in.cap;
    l->in = next;
    acting_frame = TAKEN;
    return block;
}

/* Room for the next read: for all of a big frame whose start heads the input (in a kept
 * buffer: util/buf.h), else a chunk. Only the first frame is looked at, so that a read of
 * thousands of small frames costs nothing more; a big one behind them gets its room when
 * it comes first (process_input). */
static int
reserve_read(tether__link *l)
{
    size_t pending = tether__buf_pending(&l->in);
    if (pending >= TETHER__FRAME_HEADER_SIZE) {
        uint32_t len = tether__frame_length(tether__buf_head(&l->in));
        size_t need = TETHER__FRAME_HEADER_SIZE + (size_t)len;
        if (len >= TETHER__BIG_SPAN && len <= l->limits.max_frame_size && pending < need) {
            return tether__buf_reserve(&l->in, need - pending);
        }
    }
    return tether__buf_reserve(&l->in, READ_CHUNK);
}

/* Read what the socket has (up to budget). Returns bytes read, 0 on EOF, -EAGAIN, -errno. */
static ssize_t
read_socket(tether__link *l, size_t budget)
{
    size_t total = 0;
    while (total < budget) {
        if (reserve_read(l) < 0) {
            return -ENOMEM;
        }
        size_t room = l->in.cap - l->in.len;
        ssize_t n = l->pass_fds ? tether__fd_recv(l->fd, l->in.data + l->in.len, room, &l->in_fds,
                                                  l->in_at + tether__buf_pending(&l->in))
                                : recv(l->fd, l->in.data + l->in.len, room, MSG_DONTWAIT);
        if (n > 0) {
            l->in.len += (size_t)n;
            total += (size_t)n;
            atomic_fetch_add_explicit(&l->bytes_in, (uint64_t)n, memory_order_relaxed);
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
        if (errno == EPROTO) {
            protocol_error(l, -EPROTO,
                           "more descriptors than a frame may carry or a connection hold");
            return -ECONNRESET;
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
in_borrow_scratch(tether__link *l)
{
    tether__buf *scratch;
    if (l->in.cap != 0 || !(scratch = tether__thread_buf(TETHER__THREAD_BUF_READ))) {
        return false;
    }
    l->in = *scratch;
    tether__buf_reset(&l->in);
    *scratch = TETHER__BUF_INIT;
    return true;
}

static void
in_return_scratch(tether__link *l, bool borrowed)
{
    tether__buf *scratch = tether__thread_buf(TETHER__THREAD_BUF_READ);
    if (!borrowed) {
        if (tether__buf_pending(&l->in) == 0) {
            /* A big frame read in rounds had the thread's buffer: give it back, so that
             * the next one finds its pages mapped already. */
            if (scratch && scratch->cap == 0 && l->in.cap <= READ_SCRATCH_KEEP) {
                tether__buf_reset(&l->in);
                *scratch = l->in;
                l->in = TETHER__BUF_INIT;
            } else {
                tether__buf_done(&l->in);
            }
        }
        return;
    }
    tether__buf used = l->in;
    l->in = TETHER__BUF_INIT;
    size_t rest = tether__buf_pending(&used);
    if (rest >= BIG_PARTIAL) {
        /* Most of a big frame: the buffer goes with the connection until the frame is
         * whole (no copy); the thread makes a new one if it reads meanwhile. */
        l->in = used;
        *scratch = TETHER__BUF_INIT;
        return;
    }
    if (rest > 0 && tether__buf_append(&l->in, tether__buf_head(&used), rest) < 0) {
        tether__link_fail(l, -ENOMEM, "out of memory");
    }
    if (used.cap > READ_SCRATCH_KEEP) {
        tether__buf_done(&used); /* do not keep a buffer grown by one huge frame */
    }
    tether__buf_reset(&used);
    /* Known to exist: it was borrowed from. */
    *scratch = used;
}

/* idle_return's value for an IDLE holder without a wake (an event loop's thread). */
static const tether__wake no_wake = {.fd = -1, .wfd = -1};

/* On the path of every call and every batch: inline. */
static inline void
role_release_locked(tether__link *l)
{
    if (l->idle_return) {
        /* The IDLE holder's own blocking call is over: the role is its again (reads
         * still paused), unless a caller waits for it, or the link closed. */
        const tether__wake *wake = l->idle_return == &no_wake ? NULL : l->idle_return;
        l->idle_return = NULL;
        if (!l->role_waiters && atomic_load(&l->state) != TETHER__LINK_CLOSED) {
            l->role = TETHER__ROLE_IDLE;
            l->idle_wake = wake;
            return;
        }
        if (wake) {
            tether__wake_raise(wake); /* it lost the role: tell it */
        }
    }
    l->role = TETHER__ROLE_FREE;
    if (tether__pollset_read_paused(&l->ps) && atomic_load(&l->state) != TETHER__LINK_CLOSED) {
        tether__pollset_resume_read(&l->ps);
    }
    if (l->role_waiters) {
        tether__wake_raise(l->role_waiters->wake);
    }
}

/* Flush on the I/O thread, which also starts the trim of a big drained buffer. */
static void
flush_batch(tether__link *l)
{
    pthread_mutex_lock(&l->wlock);
    int r = flush_locked(l);
    pthread_mutex_unlock(&l->wlock);
    if (r < 0) {
        tether__link_fail(l, -ECONNRESET, "write failed");
        return;
    }
    start_trim(l);
}

static void
drain_handoff(tether__link *l)
{
    pthread_mutex_lock(&l->lock);
    if (tether__buf_pending(&l->handoff) == 0) {
        pthread_mutex_unlock(&l->lock);
        return;
    }
    tether__buf frames = l->handoff;
    l->handoff = TETHER__BUF_INIT;
    l->handoff_busy = true;
    pthread_mutex_unlock(&l->lock);
    while (tether__buf_pending(&frames) >= TETHER__FRAME_HEADER_SIZE &&
           atomic_load(&l->state) != TETHER__LINK_CLOSED) {
        const uint8_t *head = tether__buf_head(&frames);
        uint32_t len = tether__frame_length(head);
        tether__frame f;
        if (tether__frame_decode(head + TETHER__FRAME_HEADER_SIZE, len, &l->limits, &f) == 0) {
            tether__fd_batch *batch = NULL;
            if (f.buffers > 0) {
                pthread_mutex_lock(&l->lock);
                batch = tether__fd_queue_pop(&l->handoff_fds);
                pthread_mutex_unlock(&l->lock);
            }
            dispatch_with_fds(l, &f, batch);
        }
        tether__buf_consume(&frames, TETHER__FRAME_HEADER_SIZE + len);
    }
    tether__buf_done(&frames);
    pthread_mutex_lock(&l->lock);
    l->handoff_busy = false;
    pthread_mutex_unlock(&l->lock);
}

static void
run_handoff(tether__task *task)
{
    tether__link *l = (tether__link *)((char *)task - offsetof(tether__link, handoff_task));
    pthread_mutex_lock(&l->lock);
    l->handoff_posted = false;
    pthread_mutex_unlock(&l->lock);
    l->in_batch = true;
    drain_handoff(l);
    l->in_batch = false;
    flush_batch(l);
    tether__link_unref(l);
}

/* The poll woke (or run_attach acts as if it had: attaching). */
static void
serve_poll(tether__link *l, bool attaching, int status, int events)
{
    if (status < 0 || atomic_load(&l->state) == TETHER__LINK_CLOSED) {
        /* libuv stopped the watcher on a socket error (the portable build watches the
         * socket itself): the connection is over. */
        uv_poll_stop(&l->poll);
        if (status < 0) {
            tether__link_fail(l, -ECONNRESET, "polling the socket failed");
        }
        return;
    }
    /* With no write interest on only input can have woken us: skip asking the set which
     * (a syscall per request on the serving side, on Linux). */
    unsigned ready = TETHER__POLL_READ;
    if (tether__pollset_wants_write(&l->ps)) {
        unsigned reported = (events & (UV_READABLE | UV_DISCONNECT) ? TETHER__POLL_READ : 0) |
                            (events & UV_WRITABLE ? TETHER__POLL_WRITE : 0);
        ready = tether__pollset_query(&l->ps, reported);
    }
    if (attaching) {
        /* Frames that came with the handshake wait in the input buffer, which no poll
         * event tells of: output queued before the attach (a notification sent right
         * after connecting) made the set report only that, and they were left unread. */
        ready |= TETHER__POLL_READ;
    }
    tether__link_ref(l);
    if (ready & TETHER__POLL_WRITE) {
        flush_batch(l);
    }
    if (ready & TETHER__POLL_READ) {
        pthread_mutex_lock(&l->lock);
        if (l->role != TETHER__ROLE_FREE) {
            /* A caller is reading; its reply woke us (the portable build) or we woke
             * just before it paused us. It resumes us when it gives the role back. */
            tether__pollset_park_read(&l->ps);
            pthread_mutex_unlock(&l->lock);
            goto out;
        }
        l->role = TETHER__ROLE_IO;
        pthread_mutex_unlock(&l->lock);

        drain_handoff(l);
        l->in_batch = true;
        bool borrowed = in_borrow_scratch(l);
        ssize_t got = read_socket(l, READ_BUDGET);
        if (got > 0 || tether__buf_pending(&l->in) > 0) {
            process_input(l, true);
        }
        in_return_scratch(l, borrowed);
        l->in_batch = false;
        pthread_mutex_lock(&l->lock);
        role_release_locked(l);
        pthread_mutex_unlock(&l->lock);
        flush_batch(l);
        if (got == 0) {
            tether__link_fail(l, -ECONNRESET, "the peer closed the connection");
        } else if (got < 0 && got != -EAGAIN) {
            tether__link_fail(l, -ECONNRESET, "read failed");
        }
    }
out:
    tether__link_unref(l);
}

static void
on_poll(uv_poll_t *handle, int status, int events)
{
    serve_poll(handle->data, false, status, events);
}

/* ---- closing ----------------------------------------------------------------------- */

static void
on_handle_closed(uv_handle_t *h)
{
    tether__link *l = h->data;
    if (--l->open_handles == 0) {
        tether__link_unref(l); /* the attach reference */
    }
}

static void
run_close(tether__task *task)
{
    tether__link *l = (tether__link *)((char *)task - offsetof(tether__link, close_task));
    if (atomic_load(&l->attached) && !l->closing_handles) {
        l->closing_handles = true;
        uv_close((uv_handle_t *)&l->poll, on_handle_closed);
        uv_close((uv_handle_t *)&l->trim_timer, on_handle_closed);
    }
    l->hooks->on_closed(l);
    tether__link_unref(l); /* the close task's reference */
}

void
tether__link_fail(tether__link *l, int status, const char *reason)
{
    int old = atomic_exchange(&l->state, TETHER__LINK_CLOSED);
    if (old == TETHER__LINK_CLOSED) {
        return;
    }
    tether__link_ref(l);
    shutdown(l->fd, SHUT_RDWR);
    if (old == TETHER__LINK_OPEN) {
        tether__logger_write(l->logger, TETHER_LOG_INFO, "connection to %s (pid %lld) closed: %s",
                             l->peer_name ? l->peer_name : "?", (long long)l->peer_pid,
                             reason ? reason : "");
    }
    l->hooks->on_fail(l, status, reason);
    /* Wake followers so they notice. */
    pthread_mutex_lock(&l->lock);
    for (tether__link_waiter *w = l->role_waiters; w; w = w->next) {
        tether__wake_raise(w->wake);
    }
    pthread_mutex_unlock(&l->lock);
    l->close_task.run = run_close;
    tether__ioloop_post(l->loop, &l->close_task); /* takes over the reference above */
}

/* Bound on how long closing waits for queued frames (notifications, say) to go out. */
#define CLOSE_FLUSH_USEC 200000

int
tether__link_close(tether__link *l)
{
    if (tether__link_is_closed(l)) {
        return -EALREADY;
    }
    /* What was sent before closing should arrive: flush it, within a bound, first. */
    uint64_t deadline = tether_now_usec() + CLOSE_FLUSH_USEC;
    pthread_mutex_lock(&l->wlock);
    while (tether__buf_pending(&l->out) > 0 && flush_locked(l) == 0 &&
           tether__buf_pending(&l->out) > 0 && tether_now_usec() < deadline) {
        struct pollfd p = {.fd = l->fd, .events = POLLOUT};
        poll(&p, 1, 10);
    }
    pthread_mutex_unlock(&l->wlock);
    tether__link_fail(l, -ECANCELED, "closed locally");
    return 0;
}

/* ---- the reader role from a caller's side ---------------------------------------- */

bool
tether__link_role_take_locked(tether__link *l)
{
    if (l->role == TETHER__ROLE_IDLE) {
        /* A waiting worker holds it only while it sleeps: ours, reads already paused.
         * An event loop's thread may call from inside its loop: it gets the role back
         * after (role_release_locked), without being woken for it. */
        if (pthread_equal(l->idle_thread, pthread_self())) {
            l->idle_return = l->idle_wake ? l->idle_wake : &no_wake;
        } else if (l->idle_wake) {
            tether__wake_raise(l->idle_wake);
        }
        l->idle_wake = NULL;
        l->role = TETHER__ROLE_CALLER;
        return true;
    }
    if (l->role != TETHER__ROLE_FREE || tether__link_is_closed(l) || l->eof_pending) {
        return false;
    }
    l->role = TETHER__ROLE_CALLER;
    tether__pollset_pause_read(&l->ps);
    return true;
}

void
tether__link_role_release_locked(tether__link *l)
{
    role_release_locked(l);
}

void
tether__link_waiter_add_locked(tether__link *l, tether__link_waiter *w)
{
    w->next = NULL;
    tether__link_waiter **tail = &l->role_waiters;
    while (*tail) {
        tail = &(*tail)->next;
    }
    *tail = w;
}

void
tether__link_waiter_remove_locked(tether__link *l, tether__link_waiter *w)
{
    for (tether__link_waiter **p = &l->role_waiters; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            return;
        }
    }
}

bool
tether__link_lead_begin(tether__link *l)
{
    return in_borrow_scratch(l);
}

void
tether__link_lead_end(tether__link *l, bool borrowed)
{
    in_return_scratch(l, borrowed);
}

/* process_input on a caller thread, its sends written once at the end. */
static int
process_as_caller(tether__link *l)
{
    tether__link *outer = reader_batch;
    reader_batch = l;
    int r = process_input(l, false);
    reader_batch = outer;
    if (atomic_load_explicit(&l->reader_held, memory_order_relaxed)) {
        pthread_mutex_lock(&l->wlock);
        atomic_store_explicit(&l->reader_held, false, memory_order_relaxed);
        (void)write_out_unlock(l);
    }
    return r;
}

int
tether__link_process_input(tether__link *l)
{
    return process_as_caller(l);
}

static int read_as_caller(tether__link *l);

int
tether__link_read_wait(tether__link *l, const tether__wake *wake, bool keep_wake, int wait_ms)
{
    struct pollfd pfd[2] = {{.fd = l->fd, .events = POLLIN}, {.fd = wake->fd, .events = POLLIN}};
    int n = poll(pfd, 2, wait_ms);
    if (n <= 0) {
        return TETHER__LINK_READ;
    }
    if (pfd[1].revents) {
        if (!keep_wake) {
            tether__wake_drain(wake);
        }
        return TETHER__LINK_WOKEN;
    }
    if (!pfd[0].revents) {
        return TETHER__LINK_READ;
    }
    return read_as_caller(l);
}

/* Read what the socket has, with the role held by a thread other than the I/O thread.
 * Returns TETHER__LINK_READ, or -ECONNRESET at the end of input. */
static int
read_as_caller(tether__link *l)
{
    ssize_t got = read_socket(l, READ_BUDGET);
    if (got == 0 || (got < 0 && got != -EAGAIN)) {
        /* Frames handed off before the end (a CONTROL, say) must still be acted on:
         * then the I/O thread, which drains them before it reads, sees the end itself. */
        pthread_mutex_lock(&l->lock);
        bool behind = l->handoff_busy || tether__buf_pending(&l->handoff) > 0;
        l->eof_pending = l->eof_pending || behind;
        pthread_mutex_unlock(&l->lock);
        if (!behind) {
            tether__link_fail(l, -ECONNRESET,
                              got == 0 ? "the peer closed the connection" : "read failed");
        }
        return -ECONNRESET;
    }
    return TETHER__LINK_READ;
}

/* ---- waiting for work by reading --------------------------------------------------- */

int
tether__link_idle_hold(tether__link *l, const tether__wake *wake)
{
    pthread_mutex_lock(&l->lock);
    int r = 0;
    if (l->role == TETHER__ROLE_IDLE && l->idle_wake == wake) {
        r = 0; /* held already */
    } else if (tether__link_is_closed(l)) {
        r = -ECONNRESET;
    } else if (l->role != TETHER__ROLE_FREE || l->role_waiters || l->eof_pending) {
        r = TETHER__IDLE_BUSY;
    } else {
        l->role = TETHER__ROLE_IDLE;
        l->idle_wake = wake;
        l->idle_thread = pthread_self();
        tether__pollset_pause_read(&l->ps);
        if (!wake) {
            atomic_store_explicit(&l->loop_reads, true, memory_order_relaxed);
        }
    }
    pthread_mutex_unlock(&l->lock);
    return r;
}

int
tether__link_idle_read(tether__link *l, const tether__wake *wake)
{
    /* Read as a caller would, the role made ours for that (no take now). */
    pthread_mutex_lock(&l->lock);
    bool ours = l->role == TETHER__ROLE_IDLE && l->idle_wake == wake;
    if (ours) {
        l->role = TETHER__ROLE_CALLER;
        l->idle_wake = NULL;
    }
    pthread_mutex_unlock(&l->lock);
    if (!ours) {
        return tether__link_is_closed(l) ? -ECONNRESET : TETHER__IDLE_TAKEN;
    }
    bool borrowed = in_borrow_scratch(l);
    int r = read_as_caller(l);
    if (r >= 0) {
        r = process_as_caller(l);
    }
    in_return_scratch(l, borrowed);
    pthread_mutex_lock(&l->lock);
    if (r < 0 || l->role_waiters) {
        /* Closed, or a caller waits for the role: give it up now. */
        role_release_locked(l);
        pthread_mutex_unlock(&l->lock);
        return r < 0 ? r : TETHER__IDLE_TAKEN;
    }
    l->role = TETHER__ROLE_IDLE;
    l->idle_wake = wake;
    pthread_mutex_unlock(&l->lock);
    return 0;
}

void
tether__link_idle_yield(tether__link *l, bool own)
{
    if (!tether__link_loop_reads(l)) {
        return; /* no loop ever read l: the common case, without the lock */
    }
    pthread_mutex_lock(&l->lock);
    if (l->role == TETHER__ROLE_IDLE && !l->idle_wake &&
        (own || !pthread_equal(l->idle_thread, pthread_self()))) {
        role_release_locked(l); /* the loop learns at its next read (TAKEN) */
    }
    pthread_mutex_unlock(&l->lock);
}

bool
tether__link_idle_drop(tether__link *l, const tether__wake *wake)
{
    pthread_mutex_lock(&l->lock);
    bool ours = l->role == TETHER__ROLE_IDLE && l->idle_wake == wake;
    if (ours) {
        l->idle_wake = NULL;
        role_release_locked(l);
    }
    pthread_mutex_unlock(&l->lock);
    return ours;
}

int
tether__link_serve_idle(tether__link *l, const tether__wake *wake, bool (*has_work)(void *arg),
                        void *arg, int wait_ms)
{
    int r = tether__link_idle_hold(l, wake);
    if (r != 0) {
        return r;
    }
    uint64_t deadline = tether_now_usec() + (uint64_t)wait_ms * 1000;
    int result = TETHER__IDLE_TIMEOUT;
    for (;;) {
        if (has_work(arg)) {
            result = TETHER__IDLE_WORK;
            break;
        }
        uint64_t now = tether_now_usec();
        if (now >= deadline) {
            break;
        }
        struct pollfd pfd[2] = {{.fd = l->fd, .events = POLLIN},
                                {.fd = wake->fd, .events = POLLIN}};
        int n = poll(pfd, 2, (int)((deadline - now + 999) / 1000));
        if (n < 0 && errno != EINTR) {
            break;
        }
        if (n > 0 && pfd[1].revents) {
            tether__wake_drain(wake);
            result = TETHER__IDLE_WORK; /* or taken: looked at below */
            break;
        }
        if (n > 0 && pfd[0].revents && (r = tether__link_idle_read(l, wake)) != 0) {
            return r;
        }
    }
    return tether__link_idle_drop(l, wake) ? result : TETHER__IDLE_TAKEN;
}
