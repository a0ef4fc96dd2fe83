/*
 * forkserver: the interpreters that warm spawns fork their children from.
 *
 * A host keeps one fork server per interpreter, package path and environment changes
 * (the key), started on the first warm spawn that needs it and kept until the host
 * stops. It is a Python process (python/tether/_forkserver.py) that imported tether once
 * and then forks a child for each request, so a warm spawn costs a fork instead of an
 * interpreter's start. spawn.c starts its process and follows each child; this file
 * holds the registry of servers and speaks their protocol over a control socket, the
 * server's fd 3.
 *
 * Messages. The control socket is a message socket of platform.h: it keeps the
 * boundaries of messages and carries descriptors (SOCK_SEQPACKET on Linux, where a
 * packet is a message; SOCK_STREAM with a 4-byte length before each message on the
 * portable build; the server tells which from the socket's type). A message holds
 * exactly one msgpack value, a map with str keys, and nothing after it; at most
 * FORKSERVER_MAX_MESSAGE bytes. Only nil, bool, int, str, array and
 * map are used: the Python side has its own small codec (a child must need nothing
 * installed), which refuses every other type. A message is known by its keys; a key the
 * receiver does not know is skipped, so a later version may add some.
 *   server -> host, once, when it is ready:           {"ready": pid}
 *   host -> server, for each warm spawn:              {"cwd": str or nil, "name": str}
 *       with three descriptors: the child's end of its socket pair, its stdout and its
 *       stderr
 *   server -> host, answering the requests in order:  {"pid": pid} or {"error": str}
 *   server -> host, when a child it forked exits:     {"exit": pid, "status": int}
 *       (the exit code, or -signal; a pid the host did not ask for, a spare's, is ignored)
 *
 * Invariants:
 * - Everything sent to or read from a server happens on the I/O thread, so queuing a
 *   request and sending it are never interleaved with another request or with reading
 *   an answer: answers come in request order, and `waiting` is in that order too.
 * - A child's slot is in `waiting` (asked for, no pid yet) or `running` (pid known, not
 *   exited), never both, and its ended() is called exactly once, when it leaves them.
 * - A reply is decoded with the codec's checked reader (tether__msgpack_check first), so
 *   no declared length or count is trusted. A server whose message cannot be decoded,
 *   or that answers no request, is not trusted further (its answers no longer match the
 *   requests): it is ended like one that exited, the spawns waiting on it fail with
 *   -EPROTO and the reason, and the next warm spawn starts a new server.
 * - `refs` counts the registry's entry, each warm child, and the poll while it is open.
 */
#define _GNU_SOURCE
#include "endpoints/forkserver.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "codec/msgpack.h"
#include "codec/validate.h"
#include "endpoints/host.h"
#include "platform/platform.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/condwait.h"

/* How long a fork server has to start and import tether. */
#define FORKSERVER_START_USEC (10ull * 1000 * 1000)
/* The largest message either side sends (python/tether/_forkserver.py agrees). */
#define FORKSERVER_MAX_MESSAGE 65536
/* Messages are flat maps: anything nested deeper is malformed. */
#define FORKSERVER_MAX_DEPTH 4

struct tether__forkserver {
    tether__forkserver *next; /* in the registry, guarded by registry_lock */
    tether_host *host;        /* not a reference: the registry entry goes when the host stops */
    tether__endpoint *ep;     /* a reference: its loop and log */
    uint8_t *key;             /* executable, package path and environment, NUL-separated */
    size_t key_len;
    tether_child *proc; /* the server process */
    int ctl;            /* our end of its control socket */
    uv_poll_t poll;     /* I/O thread */
    bool polling;       /* I/O thread */
    pthread_mutex_t lock;
    pthread_cond_t changed;
    bool ready, gone;           /* guarded by lock */
    int error;                  /* guarded by lock: why it is gone */
    char why[256];              /* guarded by lock: the same in words */
    tether__fork_slot *waiting; /* guarded by lock: asked for, pid not answered yet, FIFO */
    tether__fork_slot *running; /* guarded by lock: answered, not exited */
    atomic_uint refs;
    tether__msgsock_rx rx;                  /* I/O thread */
    uint8_t rx_buf[FORKSERVER_MAX_MESSAGE]; /* I/O thread */
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static tether__forkserver *registry; /* guarded by registry_lock */

tether__forkserver *
tether__forkserver_ref(tether__forkserver *fs)
{
    atomic_fetch_add_explicit(&fs->refs, 1, memory_order_relaxed);
    return fs;
}

void
tether__forkserver_unref(tether__forkserver *fs)
{
    if (atomic_fetch_sub_explicit(&fs->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    /* The poll held a reference, so it is closed: the socket can go. */
    if (fs->ctl >= 0) {
        close(fs->ctl);
    }
    tether_child_unref(fs->proc);
    pthread_cond_destroy(&fs->changed);
    pthread_mutex_destroy(&fs->lock);
    tether__endpoint_unref(fs->ep);
    tether__free(fs->key);
    tether__free(fs);
}

/* Unlink slot from a list of fs. Lock held. */
static void
list_remove(tether__fork_slot **list, tether__fork_slot *slot)
{
    for (tether__fork_slot **pp = list; *pp; pp = &(*pp)->next) {
        if (*pp == slot) {
            *pp = slot->next;
            return;
        }
    }
}

/* ---- the I/O side ---------------------------------------------------------------------- */

static void
on_poll_closed(uv_handle_t *handle)
{
    tether__forkserver_unref(handle->data); /* the poll's reference */
}

/* The server ended, broke the protocol, or the host let it go (I/O thread): its children
 * cannot be told apart from the living any more; they exit with their sockets. r and why
 * go to the spawns still waiting; the first reason is kept for tether__forkserver_get. */
static void
forkserver_gone(tether__forkserver *fs, int r, const char *why)
{
    pthread_mutex_lock(&fs->lock);
    if (!fs->gone) {
        fs->gone = true;
        fs->error = r;
        snprintf(fs->why, sizeof(fs->why), "%s", why);
    }
    tether__fork_slot *waiting = fs->waiting, *running = fs->running;
    fs->waiting = fs->running = NULL;
    pthread_cond_broadcast(&fs->changed);
    pthread_mutex_unlock(&fs->lock);
    for (tether__fork_slot *s = waiting, *next; s; s = next) {
        next = s->next;
        s->ended(s, -SIGKILL, r, why);
    }
    for (tether__fork_slot *s = running, *next; s; s = next) {
        next = s->next;
        s->ended(s, -SIGKILL, r, why);
    }
    if (fs->polling) {
        fs->polling = false;
        uv_close((uv_handle_t *)&fs->poll, on_poll_closed);
    }
}

/* The server sent something that is not one of its messages (I/O thread). */
static void
forkserver_broken(tether__forkserver *fs, const char *detail)
{
    char why[256];
    snprintf(why, sizeof(why), "the fork server (pid %lld) sent a malformed message: %s",
             (long long)tether_child_get_pid(fs->proc), detail);
    tether__log(fs->ep, TETHER_LOG_ERROR, "%s; ending it", why);
    forkserver_gone(fs, -EPROTO, why);
    shutdown(fs->ctl, SHUT_RDWR); /* it exits at the end of its control socket */
    tether_child_terminate(fs->proc);
}

/* One decoded message of a server. */
typedef struct fs_message {
    unsigned keys;      /* KEY_* seen */
    int64_t pid;        /* "ready", "pid", "exit" */
    int64_t status;     /* "status" */
    tether__span error; /* "error" */
} fs_message;

enum {
    KEY_READY = 1,
    KEY_PID = 2,
    KEY_ERROR = 4,
    KEY_EXIT = 8,
    KEY_STATUS = 16,
};

static bool
span_is(tether__span s, const char *text)
{
    return s.len == strlen(text) && memcmp(s.ptr, text, s.len) == 0;
}

/* A pid: an int that a pid_t holds, above 0. */
static int
read_pid(tether__mp_reader *r, int64_t *ret)
{
    return tether__mp_read_int(r, ret) == 0 && *ret > 0 && *ret <= INT32_MAX ? 0 : -EPROTO;
}

/* The keys of the messages; a message is known by the set it has. */
static const struct {
    const char *name;
    unsigned bit;
} fields[] = {
    {"ready", KEY_READY}, {"pid", KEY_PID},       {"error", KEY_ERROR},
    {"exit", KEY_EXIT},   {"status", KEY_STATUS},
};

/* Read the value of key into m; on failure, detail says what was wrong. */
static int
read_field(tether__mp_reader *r, tether__span key, fs_message *m, const char **detail)
{
    unsigned bit = 0;
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (span_is(key, fields[i].name)) {
            bit = fields[i].bit;
        }
    }
    if (bit == 0) {
        *detail = "a value that cannot be read";
        return tether__mp_skip(r, NULL); /* a later version's addition */
    }
    if (m->keys & bit) {
        *detail = "a key given twice";
        return -EPROTO;
    }
    m->keys |= bit;
    if (bit == KEY_ERROR) {
        *detail = "an error that is not a str";
        return tether__mp_read_str(r, &m->error);
    }
    if (bit == KEY_STATUS) {
        *detail = "a status that is not an int";
        int rc = tether__mp_read_int(r, &m->status);
        return rc == 0 && (m->status < INT32_MIN || m->status > INT32_MAX) ? -EPROTO : rc;
    }
    *detail = "a pid that is not a positive int";
    return read_pid(r, &m->pid);
}

/* Decode the n bytes of one packet into m: one msgpack map and nothing after it. */
static int
decode_message(const uint8_t *p, size_t n, fs_message *m, const char **detail)
{
    size_t size = 0;
    *m = (fs_message){0};
    if (tether__msgpack_check(p, n, FORKSERVER_MAX_DEPTH, &size) < 0) {
        *detail = "not one well-formed msgpack value";
        return -EPROTO;
    }
    if (size != n) {
        *detail = "bytes after its msgpack value";
        return -EPROTO;
    }
    tether__mp_reader r = {p, p + n};
    uint32_t count = 0;
    if (tether__mp_read_map(&r, &count) < 0) {
        *detail = "not a map";
        return -EPROTO;
    }
    for (uint32_t i = 0; i < count; i++) {
        tether__span key;
        if (tether__mp_read_str(&r, &key) < 0) {
            *detail = "a key that is not a str";
            return -EPROTO;
        }
        int rc = read_field(&r, key, m, detail);
        if (rc < 0) {
            return rc;
        }
    }
    return 0;
}

/* A pid or error answer: it is for the oldest request (I/O thread). */
static void
forkserver_answer(tether__forkserver *fs, const fs_message *m)
{
    pthread_mutex_lock(&fs->lock);
    tether__fork_slot *slot = fs->waiting;
    if (slot) {
        fs->waiting = slot->next;
        if (m->keys == KEY_PID) {
            slot->pid = m->pid;
            slot->next = fs->running;
            fs->running = slot;
        }
    }
    pthread_mutex_unlock(&fs->lock);
    if (!slot) {
        forkserver_broken(fs, "an answer to no request");
    } else if (m->keys == KEY_PID) {
        slot->forked(slot);
    } else {
        char why[256];
        int len = m->error.len > 200 ? 200 : (int)m->error.len;
        snprintf(why, sizeof(why), "the fork server could not fork: %.*s", len,
                 (const char *)m->error.ptr);
        tether__log(fs->ep, TETHER_LOG_WARNING, "%s", why);
        slot->ended(slot, -SIGKILL, -EIO, why);
    }
}

/* An exit report (I/O thread). */
static void
forkserver_exit(tether__forkserver *fs, const fs_message *m)
{
    pthread_mutex_lock(&fs->lock);
    tether__fork_slot *slot = fs->running;
    while (slot && slot->pid != m->pid) {
        slot = slot->next;
    }
    if (slot) {
        list_remove(&fs->running, slot);
    }
    pthread_mutex_unlock(&fs->lock);
    if (slot) {
        slot->ended(slot, (int)m->status, 0, NULL);
    }
}

/* One packet of the server (I/O thread). */
static void
forkserver_message(tether__forkserver *fs, const uint8_t *p, size_t n)
{
    fs_message m;
    const char *detail = NULL;
    if (decode_message(p, n, &m, &detail) < 0) {
        forkserver_broken(fs, detail);
        return;
    }
    switch (m.keys) {
    case KEY_READY:
        pthread_mutex_lock(&fs->lock);
        fs->ready = true;
        pthread_cond_broadcast(&fs->changed);
        pthread_mutex_unlock(&fs->lock);
        break;
    case KEY_PID:
    case KEY_ERROR:
        forkserver_answer(fs, &m);
        break;
    case KEY_EXIT | KEY_STATUS:
        forkserver_exit(fs, &m);
        break;
    default:
        forkserver_broken(fs, "not a ready, pid, error or exit message");
        break;
    }
}

static void
on_readable(uv_poll_t *poll, int status, int events)
{
    (void)events;
    tether__forkserver *fs = poll->data;
    while (fs->polling) {
        ssize_t n = status < 0 ? 0 : tether__msgsock_recv(fs->ctl, &fs->rx);
        if (n == -EAGAIN) {
            return;
        }
        if (n == -EMSGSIZE) {
            forkserver_broken(fs, "a message over 64 KiB");
        } else if (n <= 0) {
            forkserver_gone(fs, -ECONNRESET, "the fork server exited");
        } else {
            forkserver_message(fs, fs->rx.buf, (size_t)n);
        }
    }
}

static void
start_poll(void *arg)
{
    tether__forkserver *fs = arg;
    if (uv_poll_init(tether__ioloop_uv(fs->ep->loop), &fs->poll, fs->ctl) == 0) {
        fs->poll.data = tether__forkserver_ref(fs);
        fs->polling = true;
        uv_poll_start(&fs->poll, UV_READABLE, on_readable);
    }
}

static void
stop_forkserver(void *arg)
{
    forkserver_gone(arg, -ECONNRESET, "the host stopped");
}

/* ---- requests ---------------------------------------------------------------------------- */

/* {"cwd": str or nil, "name": str} */
static int
encode_request(tether__buf *b, const char *cwd, const char *name)
{
    int r = tether__mp_map(b, 2);
    r = r < 0 ? r : tether__mp_str(b, "cwd", 3);
    r = r < 0 ? r : cwd ? tether__mp_str(b, cwd, strlen(cwd)) : tether__mp_nil(b);
    r = r < 0 ? r : tether__mp_str(b, "name", 4);
    r = r < 0 ? r : tether__mp_str(b, name, strlen(name));
    if (r == 0 && tether__buf_pending(b) > FORKSERVER_MAX_MESSAGE) {
        r = -ENAMETOOLONG; /* only the strings can make it so long */
    }
    return r;
}

int
tether__forkserver_fork(tether__forkserver *fs, tether__fork_slot *slot, const int fds[3],
                        const char *cwd, const char *name)
{
    tether__buf b = TETHER__BUF_INIT;
    int r = encode_request(&b, cwd, name);
    if (r < 0) {
        tether__buf_done(&b);
        return r;
    }
    slot->next = NULL;
    slot->pid = 0;
    pthread_mutex_lock(&fs->lock);
    bool gone = fs->gone;
    if (!gone) {
        tether__fork_slot **tail = &fs->waiting;
        while (*tail) {
            tail = &(*tail)->next;
        }
        *tail = slot;
    }
    pthread_mutex_unlock(&fs->lock);
    r = gone ? -ECONNRESET
             : tether__msgsock_send(fs->ctl, tether__buf_head(&b), tether__buf_pending(&b), fds, 3);
    if (r < 0 && !gone) {
        pthread_mutex_lock(&fs->lock);
        list_remove(&fs->waiting, slot);
        pthread_mutex_unlock(&fs->lock);
    }
    tether__buf_done(&b);
    return r;
}

/* ---- the registry ------------------------------------------------------------------------ */

/* The key of a fork server: what makes two warm spawns need different servers, as
 * NUL-terminated strings one after the other, compared by length and bytes. */
static int
make_key(const tether__forkserver_spec *spec, uint8_t **ret, size_t *ret_len)
{
    tether__buf b = TETHER__BUF_INIT;
    int r = tether__buf_append(&b, spec->executable, strlen(spec->executable) + 1);
    r = r < 0 ? r : tether__buf_append(&b, spec->python_path, strlen(spec->python_path) + 1);
    for (const char *const *p = spec->env; r == 0 && p && *p; p++) {
        r = tether__buf_append(&b, *p, strlen(*p) + 1);
    }
    if (r < 0) {
        tether__buf_done(&b);
        return r;
    }
    *ret = b.data; /* never consumed from: the whole buffer is the key */
    *ret_len = b.len;
    return 0;
}

/* The running server of host with that key, a new reference; NULL if none. Servers
 * that are gone leave the registry here. registry_lock held. */
static tether__forkserver *
registry_find(tether_host *host, const uint8_t *key, size_t key_len)
{
    for (tether__forkserver **pp = &registry; *pp;) {
        tether__forkserver *fs = *pp;
        pthread_mutex_lock(&fs->lock);
        bool gone = fs->gone;
        pthread_mutex_unlock(&fs->lock);
        if (gone) {
            *pp = fs->next;
            tether__forkserver_unref(fs);
        } else if (fs->host == host && fs->key_len == key_len &&
                   memcmp(fs->key, key, key_len) == 0) {
            return tether__forkserver_ref(fs);
        } else {
            pp = &fs->next;
        }
    }
    return NULL;
}

/* A server not started yet, with its control socket pair; owns key. */
static int
forkserver_new(const tether__forkserver_spec *spec, uint8_t *key, size_t key_len, int *ret_fd,
               tether__forkserver **ret)
{
    tether__forkserver *fs = tether__calloc(1, sizeof(*fs));
    int pair[2];
    if (!fs) {
        tether__free(key);
        return -ENOMEM;
    }
    int r = tether__msgsock_pair(pair);
    if (r < 0) {
        tether__free(key);
        tether__free(fs);
        return r;
    }
    fs->key = key;
    fs->key_len = key_len;
    fs->host = spec->host;
    fs->ep = tether__endpoint_ref(spec->ep);
    fs->ctl = pair[0];
    fs->rx = (tether__msgsock_rx){.buf = fs->rx_buf, .cap = sizeof(fs->rx_buf)};
    atomic_init(&fs->refs, 1);
    pthread_mutex_init(&fs->lock, NULL);
    tether__cond_init_monotonic(&fs->changed);
    *ret_fd = pair[1];
    *ret = fs;
    return 0;
}

/* Start fs's process and wait until it is ready; why says what went wrong. */
static int
forkserver_start(tether__forkserver *fs, const tether__forkserver_spec *spec, int fd, char *why,
                 size_t why_size)
{
    int r = spec->start(spec, fd, &fs->proc);
    close(fd);
    if (r < 0) {
        snprintf(why, why_size, "%s", tether_strerror(r));
        return r;
    }
    tether__ioloop_run_sync(fs->ep->loop, start_poll, fs);
    uint64_t deadline = tether_now_usec() + FORKSERVER_START_USEC;
    pthread_mutex_lock(&fs->lock);
    while (!fs->ready && !fs->gone && tether_now_usec() < deadline) {
        tether__cond_wait_until(&fs->changed, &fs->lock, deadline);
    }
    r = fs->ready ? 0 : fs->gone ? fs->error : -ETIMEDOUT;
    snprintf(why, why_size, "%s", fs->gone ? fs->why : tether_strerror(r));
    pthread_mutex_unlock(&fs->lock);
    if (r < 0) {
        tether__ioloop_run_sync(fs->ep->loop, stop_forkserver, fs);
    }
    return r;
}

int
tether__forkserver_get(const tether__forkserver_spec *spec, tether__forkserver **ret, char *why,
                       size_t why_size)
{
    uint8_t *key;
    size_t key_len;
    int r = make_key(spec, &key, &key_len);
    if (r < 0) {
        snprintf(why, why_size, "out of memory");
        return r;
    }
    /* Started under the registry lock: two first warm spawns make one server. */
    pthread_mutex_lock(&registry_lock);
    tether__forkserver *fs = registry_find(spec->host, key, key_len);
    if (fs) {
        pthread_mutex_unlock(&registry_lock);
        tether__free(key);
        *ret = fs;
        return 0;
    }
    int fd = -1;
    r = forkserver_new(spec, key, key_len, &fd, &fs);
    if (r < 0) {
        snprintf(why, why_size, "%s", tether_strerror(r));
    } else if ((r = forkserver_start(fs, spec, fd, why, why_size)) == 0) {
        fs->next = registry;
        registry = tether__forkserver_ref(fs);
        tether__log(spec->ep, TETHER_LOG_INFO, "fork server (pid %lld) ready: %s",
                    (long long)tether_child_get_pid(fs->proc), spec->executable);
    }
    pthread_mutex_unlock(&registry_lock);
    if (r < 0 && fs) {
        tether__forkserver_unref(fs);
        fs = NULL;
    }
    *ret = fs;
    return r;
}

void
tether__forkserver_host_stopped(tether_host *host)
{
    /* The host's fork servers end: their control sockets close, and they exit. */
    pthread_mutex_lock(&registry_lock);
    for (tether__forkserver **pp = &registry; *pp;) {
        tether__forkserver *fs = *pp;
        if (fs->host != host) {
            pp = &fs->next;
            continue;
        }
        *pp = fs->next;
        tether__ioloop_run_sync(fs->ep->loop, stop_forkserver, fs);
        shutdown(fs->ctl, SHUT_RDWR);
        tether_child_terminate(fs->proc);
        tether__forkserver_unref(fs);
    }
    pthread_mutex_unlock(&registry_lock);
}
