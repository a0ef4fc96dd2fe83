/*
 * link: one connected socket, as the layers above see it: frames in, frames out. It
 * knows framing, the reader role, write batching and closing; it knows nothing of
 * calls, requests or objects. Every decoded frame goes up through a table of hooks
 * that the owner (rpc/conn.c) installs when it makes the link, the way libuv's poller
 * calls a watcher's callback without knowing streams.
 *
 * Reading uses a leader/follower hand-off instead of a dedicated reader thread, because
 * on the machines we target one thread wake costs about half a socket round trip:
 * - Exactly one thread at a time holds the reader role (`role`, guarded by `lock`):
 *   the I/O thread, woken through the link's poll set, or a thread blocked in a
 *   synchronous call, which reads its own reply from the socket itself
 *   (tether__link_role_take, then tether__link_read_wait in a loop).
 * - The I/O thread watches the socket through a poll set (platform/platform.h) with one
 *   level-triggered uv_poll. On Linux the set is a private epoll set: a caller that
 *   takes the role pauses the socket's read interest there, so its reply does not also
 *   wake the I/O thread, and resumes it when it gives the role back (both under `lock`,
 *   so the I/O thread never strands data). On the portable build the uv_poll watches
 *   the socket itself, which only the I/O thread may re-arm: the I/O thread parks its
 *   read interest when it wakes and finds the role taken, and the caller that gives the
 *   role back has it resume through a task (`rewatch_task`). The reply may then wake
 *   both threads: correct, and slower.
 * - Whatever a caller reads that is not a response or progress (requests, control,
 *   log) is handed to the I/O thread in order through `handoff`; responses to any call
 *   are delivered by whoever reads them.
 * - Writes from any thread append to `out` under `wlock`. A synchronous caller flushes
 *   at once; everything else turns the poll set's write interest on, so the I/O thread
 *   flushes whole batches.
 * Fds are closed only when the last reference goes, so no thread can be polling a
 * closed or reused descriptor; closing a link first shuts the socket down, which wakes
 * every reader at once.
 *
 * A link is embedded in its owner's object and shares its reference count: when the
 * last reference goes, hooks->destroy runs, and the owner calls tether__link_done.
 * The link's lock also guards the state the owner keeps beside it (pending calls,
 * running requests, object tables), so that a role hand-off and a completion can be
 * ordered under one lock.
 */
#ifndef TETHER_LINK_H
#define TETHER_LINK_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "codec/frame.h"
#include "codec/handshake.h"
#include "conn/fdpass.h"
#include "conn/ioloop.h"
#include "platform/platform.h"
#include "util/buf.h"
#include "util/log.h"

typedef enum tether__link_state {
    TETHER__LINK_HANDSHAKE = 1, /* host side, before a valid hello */
    TETHER__LINK_OPEN = 2,
    TETHER__LINK_CLOSED = 3,
} tether__link_state;

/* IDLE: held by a thread that waits for work of its own by reading (a worker of the
 * pool, tether__link_serve_idle; a main thread's event loop, tether__link_idle_hold); a
 * caller that wants the role takes it from there. */
enum {
    TETHER__ROLE_FREE = 0,
    TETHER__ROLE_IO = 1,
    TETHER__ROLE_CALLER = 2,
    TETHER__ROLE_IDLE = 3
};

typedef struct tether__link tether__link;

/* What the owner says to a hello (host side, during the handshake). */
typedef struct tether__hello_result {
    const char *refuse_code; /* NULL: accepted (the owner sent its welcome) */
    char refuse_message[256];
} tether__hello_result;

/*
 * The owner's side of a link. Frame hooks get frames decoded and checked; their spans
 * point into the link's buffers and live until the hook returns. on_response,
 * on_progress and on_buffers_done run on whichever thread holds the reader role; every
 * other hook on the I/O thread. Every hook must be set.
 */
typedef struct tether__link_hooks {
    void (*on_hello)(tether__link *l, const tether__hello *hello, tether__hello_result *result);
    void (*on_request)(tether__link *l, const tether__frame *f); /* REQUEST and NOTIFY */
    /* A caller thread holding the reader role read a REQUEST or NOTIFY, with nothing
     * before it still waiting for the I/O thread: act on it on this thread and return
     * true, or return false to have the I/O thread act on it (on_request). */
    bool (*take_request)(tether__link *l, const tether__frame *f);
    void (*on_response)(tether__link *l, const tether__frame *f);
    void (*on_progress)(tether__link *l, const tether__frame *f);
    void (*on_cancel)(tether__link *l, uint64_t id);
    void (*on_release)(tether__link *l, const tether__frame *f);
    void (*on_buffers_done)(tether__link *l, const tether__frame *f);
    void (*on_control)(tether__link *l, const char *action, const char *reason);
    void (*on_log)(tether__link *l, int level, const tether__span *logger,
                   const tether__span *message);
    /* The I/O thread started serving the link (its handles exist now). */
    void (*on_attached)(tether__link *l);
    /* The link closed, on the thread that closed it, once: fail what waits on it. */
    void (*on_fail)(tether__link *l, int status, const char *reason);
    /* After on_fail, on the I/O thread: close handles of the owner's own. */
    void (*on_closed)(tether__link *l);
    /* The last reference went: the owner frees itself (and calls tether__link_done). */
    void (*destroy)(tether__link *l);
} tether__link_hooks;

/* A thread waiting for the reader role; lives on its stack. */
typedef struct tether__link_waiter {
    struct tether__link_waiter *next;
    const tether__wake *wake; /* raised when the role comes free */
} tether__link_waiter;

/* Limits and settings, fixed when the link is made (peer values after the handshake). */
typedef struct tether__link_config {
    uint32_t max_frame_size;      /* incoming */
    uint64_t max_output_bytes;    /* queued for the peer before it counts as not reading */
    const tether__logger *logger; /* must outlive the link */
} tether__link_config;

struct tether__link {
    atomic_uint refs;
    const tether__link_hooks *hooks;
    tether__ioloop *loop;
    const tether__logger *logger;
    int fd;
    tether__pollset ps; /* interests: read guarded by lock, write by wlock */
    atomic_int state;
    atomic_bool attached; /* uv handles initialised on the I/O thread */
    bool closing_handles; /* I/O thread only */

    /* I/O thread only. */
    uv_poll_t poll;
    uv_timer_t trim_timer; /* gives back a big output buffer once it has idled */
    int open_handles;
    bool trim_running;
    bool in_batch; /* reading a batch: replies are flushed at its end */
    /* A caller thread acting on input held frames for the end of it (reader_batch in
     * link.c); guarded by wlock, read without it. */
    atomic_bool reader_held;
    tether__task attach_task, handoff_task, close_task, rewatch_task;
    atomic_bool rewatch_posted; /* portable build: rewatch_task is queued */

    pthread_mutex_t lock;
    int role;                          /* guarded by lock */
    tether__link_waiter *role_waiters; /* guarded by lock */
    const tether__wake *idle_wake;     /* guarded by lock: the IDLE holder's, raised on a take */
    pthread_t idle_thread;             /* guarded by lock: the IDLE holder */
    /* guarded by lock: the IDLE holder's wake while that same thread reads as a caller
     * (its event loop made a blocking call): the role goes back to IDLE after it */
    const tether__wake *idle_return;
    atomic_bool loop_reads; /* an event loop's thread held it (IDLE without a wake) */
    tether__buf handoff;               /* guarded by lock: whole frames for the I/O thread */
    bool handoff_posted;               /* guarded by lock */
    bool handoff_busy;                 /* guarded by lock: the I/O thread is acting on some */
    /* guarded by lock: a caller read the end of input behind frames it handed off; the
     * role stays with the I/O thread, which acts on them before it closes the link */
    bool eof_pending;
    tether__fd_queue handoff_fds; /* guarded by lock: the batches of handed-off frames */

    pthread_mutex_t wlock;
    tether__buf out; /* guarded by wlock */
    /* guarded by wlock: pending bytes of out, [lent_at, lent_at + lent_len) counted from
     * its head, that go out from lent_src instead (tether__link_send_lent); one span at a
     * time, its owner's until written or taken back */
    const uint8_t *lent_src;
    size_t lent_at, lent_len;
    const void *lent_owner;
    /* guarded by wlock: for a given span (tether__lend.release), what to call with
     * lent_given and lent_given_size once it is written, or when the link is done */
    void (*lent_release)(void *owner, size_t size);
    void *lent_given;
    size_t lent_given_size;
    tether__fd_queue out_fds; /* guarded by wlock: descriptors of frames in out */
    uint64_t out_used_usec;  /* guarded by wlock: when a big out last drained */
    atomic_bool trim_wanted; /* a big out drained: the I/O thread starts the trim timer */

    tether__buf in; /* owned by the reader-role holder */
    tether__fd_queue in_fds; /* owned by the reader-role holder: batches no frame took yet */
    uint64_t in_at;          /* owned by the reader-role holder: stream offset of in's head */
    /* Descriptors travel beside frames (conn/fdpass.h): protocol version 2 on a Unix
     * socket. Set once, before the link opens (tether__link_enable_fds). */
    bool pass_fds;

    tether__wire_limits limits;
    uint32_t peer_max_frame_size;
    uint64_t max_output_bytes;

    /* Peer identity from the handshake; set before the link opens. */
    char *peer_name, *peer_language, *peer_language_version;
    int64_t peer_pid;

    atomic_uint_fast64_t bytes_out, bytes_in; /* relaxed */
};

/* The handshake chose protocol version 2: on a Unix socket, descriptors may travel beside
 * frames from now on, and BUFFER exts in values have their meaning (codec/validate.h).
 * Before the link opens, or on the I/O thread as it acts on the hello. */
void tether__link_enable_fds(tether__link *l);
/* Set up l around a connected, non-blocking socket; takes the fd on success. */
int tether__link_init(tether__link *l, const tether__link_hooks *hooks, tether__ioloop *loop,
                      const tether__link_config *config, int fd, tether__link_state state);
/* Free what tether__link_init made (from hooks->destroy). */
void tether__link_done(tether__link *l);
void tether__link_ref(tether__link *l);
void tether__link_unref(tether__link *l);
/* Start serving on the I/O thread (posts; returns at once). */
void tether__link_attach(tether__link *l);
/* Record the peer's identity (copies). Returns 0 or -ENOMEM. */
int tether__link_set_peer(tether__link *l, const char *name, const char *language,
                          const char *language_version, int64_t pid);
/* Close with a status for what waits on it (-ECONNRESET, -ECANCELED, -EPROTO ...). */
void tether__link_fail(tether__link *l, int status, const char *reason);
/* Refuse a peer during the handshake: send REFUSE code (a protocol word: "protocol",
 * "timeout", ...) with message, log it, and close with -ECONNREFUSED. */
void tether__link_refuse(tether__link *l, const char *code, const char *message);
/* Flush what is queued (bounded in time), then close with -ECANCELED. */
int tether__link_close(tether__link *l);
/* Queue a frame that encode writes into the output buffer, and then (mode):
 * TETHER__SEND_BATCH (false): the I/O thread writes batches (write interest wakes it;
 *   on the I/O thread, at the end of the batch it reads);
 * TETHER__SEND_NOW (true): write it from this thread at once, with what was queued;
 * TETHER__SEND_HOLD: leave it for this thread's tether__link_flush (or the next write
 *   from any thread), unless 64 KiB are held: then as BATCH. Not on the I/O thread.
 * A thread other than the I/O thread that acts on l's input (tether__link_process_input,
 * tether__link_idle_read) writes what it sends meanwhile with BATCH or HOLD, and what it
 * flushes, once at the end of that input, as the I/O thread does with its batches: a
 * reader that frees the window a frame at a time sends what waited in one write.
 * Returns 0, -ENOTCONN, -EMSGSIZE (over the peer's frame limit), -ENOBUFS (the peer
 * stopped reading), or the encoder's error. */
enum {
    TETHER__SEND_BATCH = 0,
    TETHER__SEND_NOW = 1,
    TETHER__SEND_HOLD = 2
};
typedef int (*tether__encode_fn)(tether__buf *out, void *arg);
int tether__link_send(tether__link *l, tether__encode_fn encode, void *arg, int mode);
/*
 * Send a frame with n descriptors beside it (1 to TETHER__MAX_FRAME_FDS), as
 * tether__link_send does with mode; the link sends copies (the caller keeps its own) and
 * closes them once written. Returns what tether__link_send does, -EOPNOTSUPP when
 * descriptors cannot travel on l, or -errno when they cannot be copied.
 */
int tether__link_send_fds(tether__link *l, tether__encode_fn encode, void *arg, int mode,
                          const int *fds, uint32_t n);
/*
 * Inside a hook acting on a frame that names buffers: take its descriptors, in the order
 * of the frame's BUFFER exts (n of them, the frame's count). The caller owns them; those
 * not taken are closed when the hook returns. Returns 0, or -ENOENT (no such frame, or
 * taken already).
 */
int tether__link_take_fds(tether__link *l, const tether__frame *f, int *fds, size_t n);

/*
 * A synchronous caller's big span (its arguments), sent from where it is instead of copied
 * into the output buffer: the caller sets src and len, the link sets ok (no other span
 * is lent now), and the encoder, when ok, writes the frame with len bytes of room left
 * unwritten where the span goes and sets at (their offset from the buffer's head, before
 * the frame). Then the frame goes out as TETHER__SEND_NOW; what the socket does not take
 * at once the I/O thread writes from src later, so src must stay valid, unchanged, until
 * the caller calls tether__link_take_back, which it must before src goes away (after the
 * call, whatever its outcome): that copies what is still unwritten into the room left.
 *
 * A span can be given instead (a reply's big value, which nobody waits to take back):
 * with release set, ok says the link took it, and calls release(owner, owner_size) once
 * it is written or the link is done, on whichever thread that happens, with the link's
 * write lock held (release only frees). Without ok the encoder copied it: still the
 * sender's.
 */
typedef struct tether__lend {
    const uint8_t *src;
    size_t len;
    size_t at; /* set by the encoder */
    bool ok;   /* set by the link */
    void (*release)(void *owner, size_t size);
    void *owner;
    size_t owner_size;
} tether__lend;
/* Spans (args, kwargs, a value) from this size on are lent, given or taken instead of
 * copied; and a frame from this size on may have its input buffer taken. */
#define TETHER__BIG_SPAN (64u * 1024)
int tether__link_send_lent(tether__link *l, tether__encode_fn encode, void *arg,
                           tether__lend *lend);
void tether__link_take_back(tether__link *l, tether__lend *lend);
/* From a hook acting on a frame f of at least TETHER__BIG_SPAN bytes, on the thread that
 * read it: take the buffer f lies in (*ret_cap bytes; f's spans stay valid in it; give
 * it back with tether__buf_keep, util/buf.h) instead of copying what to keep out of f;
 * the link reads on into another one. NULL when f is not such a frame (a small one, one
 * handed off): copy then. */
void *tether__link_take_input(tether__link *l, const tether__frame *f, size_t *ret_cap);
/* Write what is queued now, from this thread (held frames, say). Returns 0, -ENOTCONN
 * or -ECONNRESET (the write failed: the link is closed). */
int tether__link_flush(tether__link *l);
/* The peer broke the protocol in a way only the layers above see (why, for the log):
 * close the connection, with a log line. Thread: any. */
void tether__link_break(tether__link *l, const char *why);
/* The peer lets our output pile up past max_output_bytes: close it, with a log line. */
void tether__link_drop_slow_reader(tether__link *l);

static inline bool
tether__link_is_closed(const tether__link *l)
{
    return atomic_load(&((tether__link *)l)->state) == TETHER__LINK_CLOSED;
}

/*
 * The reader role from a caller's side (rpc/wait.c). With the lock held:
 * role_take takes the role if it is free and the link open (true), pausing the I/O
 * thread's read interest where the platform can; role_release gives it back and wakes
 * the first waiter; waiter_add/remove queue a thread for the role.
 */
bool tether__link_role_take_locked(tether__link *l);
void tether__link_role_release_locked(tether__link *l);
void tether__link_waiter_add_locked(tether__link *l, tether__link_waiter *w);
void tether__link_waiter_remove_locked(tether__link *l, tether__link_waiter *w);
/* With the role held, lock not held: lend the thread's read buffer to the link, and
 * take it back before giving the role up. */
bool tether__link_lead_begin(tether__link *l);
void tether__link_lead_end(tether__link *l, bool borrowed);
/* With the role held: act on the complete frames read so far. Returns 0, or a negative
 * code once the link closed. */
int tether__link_process_input(tether__link *l);
/* With the role held: wait up to wait_ms for the socket or wake, and read what came.
 * Returns TETHER__LINK_READ (maybe nothing), TETHER__LINK_WOKEN (wake raised; drained
 * unless keep_wake: a level-triggered wake that another owner lowers) or a negative
 * code once the link closed. */
enum { TETHER__LINK_READ = 0, TETHER__LINK_WOKEN = 1 };
int tether__link_read_wait(tether__link *l, const tether__wake *wake, bool keep_wake, int wait_ms);

/*
 * Wait for work by reading l, for a thread whose work comes from elsewhere too (a pool
 * worker: frames it reads queue their POOL requests on the pool, see conn/pool.h). It
 * holds the role as IDLE while blocked in poll, so a caller that wants the role takes
 * it at once and raises wake; it acts on what it reads as a caller does (handing off
 * what is not for it), and returns when has_work(arg), wake is raised, or wait_ms
 * passes. Returns TETHER__IDLE_WORK (has_work, or woken with the role still its),
 * TETHER__IDLE_TAKEN (a caller took the role, or one waits for it), TETHER__IDLE_BUSY
 * (the role was not free), TETHER__IDLE_TIMEOUT, or a negative code once the link
 * closed. The role is given back in every case. Thread: any but the I/O thread.
 */
enum {
    TETHER__IDLE_WORK = 0,
    TETHER__IDLE_TAKEN = 1,
    TETHER__IDLE_BUSY = 2,
    TETHER__IDLE_TIMEOUT = 3
};
int tether__link_serve_idle(tether__link *l, const tether__wake *wake, bool (*has_work)(void *arg),
                            void *arg, int wait_ms);

/*
 * The IDLE role for a thread that waits in an event loop of its own rather than in
 * poll (a Python asyncio loop of serve="loop"): the loop watches the socket while it
 * holds the role.
 * - idle_hold takes it, if it is free and no caller waits for it, pausing the I/O
 *   thread's read interest: 0, TETHER__IDLE_BUSY, or -ECONNRESET once the link closed.
 *   Holding it already is 0. A caller of another thread that takes the role raises
 *   wake, which may be NULL (the holder is not told: its next idle_read says
 *   TAKEN); the same thread's own blocking call gives it back as IDLE when it is done.
 *   The wake (NULL included) tells this holder from another.
 * - idle_read, the socket being readable: reads and acts on what came, as a caller
 *   does. 0 with the role still held; TETHER__IDLE_TAKEN when it is not (taken, or
 *   given up to a waiting caller); a negative code once the link closed.
 * - idle_drop gives it back if held.
 * Thread: the holder's (any but the I/O thread).
 */
int tether__link_idle_hold(tether__link *l, const tether__wake *wake);
/* An event loop's thread reads only when its loop comes round, which a busy loop may
 * not do for a while: a thread that starts an asynchronous call or waits for a future
 * gives the reading back to the I/O thread if a loop holds it (IDLE without a wake):
 * another thread's loop, or its own too when own (a thread blocked in a wait is not
 * running its loop). Thread: any. */
void tether__link_idle_yield(tether__link *l, bool own);
/* An event loop's thread has held the role on l (idle_hold without a wake). */
static inline bool
tether__link_loop_reads(tether__link *l)
{
    return atomic_load_explicit(&l->loop_reads, memory_order_relaxed);
}
int tether__link_idle_read(tether__link *l, const tether__wake *wake);
/* Returns whether wake's holder held it. */
bool tether__link_idle_drop(tether__link *l, const tether__wake *wake);

#endif
