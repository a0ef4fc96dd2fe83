/*
 * platform, portable: the implementation of platform.h for any POSIX.1-2008 system
 * (macOS and the BSDs; CI builds and tests it on Linux with -DTETHER_PLATFORM=posix).
 * Where linux.c uses a Linux facility, this file uses the POSIX way, and where the
 * behaviour differs it says so:
 *
 * - Wake objects are pipes: raising writes a byte, draining reads until empty.
 * - A connection's poll set is the socket itself: the I/O thread's uv_poll watches it
 *   for the interests on, and each change of interest has the I/O thread re-arm its
 *   watcher (platform.h, "poll sets"). A caller holding the reader role cannot stop
 *   the I/O thread from waking for its reply; the I/O thread parks when it finds the
 *   role taken and is re-armed, through a task, when the role comes back. Correct, and
 *   slower: a synchronous call can cost the I/O thread a wake or two.
 * - Descriptors are made with socket(), accept() and pipe(), then made close-on-exec
 *   (and non-blocking) with fcntl(): a fork() and exec() by another thread in between
 *   could leak one into that child. The library's own children are started through
 *   libuv, which closes what they must not inherit.
 * - A fork server's control channel is SOCK_STREAM, each message prefixed with its
 *   length, since AF_UNIX SOCK_SEQPACKET is not everywhere (macOS lacks it).
 * - The peer's uid comes from getpeereid() (BSD, macOS), or SO_PEERCRED where the C
 *   library has no getpeereid (glibc); random bytes from /dev/urandom.
 * - There is no parent-death signal: a spawned child exits at the end of its socket
 *   only. The process name is set with pthread_setname_np where it exists.
 */
#define _GNU_SOURCE /* glibc: struct ucred, pthread_setname_np; others show them anyway */
#include "platform/platform.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "platform/unix.h"
#include "util/alloc.h"

/* ---- descriptors and sockets ------------------------------------------------------ */

/* Close-on-exec, non-blocking if asked, no SIGPIPE where that is a socket option. */
static int
set_flags(int fd, bool nonblock)
{
    int r = tether__fd_set_flags(fd, nonblock);
    if (r < 0) {
        return r;
    }
#ifdef SO_NOSIGPIPE
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one)); /* not a socket: no harm */
#endif
    return 0;
}

/* fd with its flags set, or a negative errno (fd closed). */
static int
prepared(int fd, bool nonblock)
{
    if (fd < 0) {
        return -errno;
    }
    int r = set_flags(fd, nonblock);
    if (r < 0) {
        close(fd);
        return r;
    }
    return fd;
}

int
tether__socket_open(int domain, int type)
{
    return prepared(socket(domain, type, 0), true);
}

int
tether__socket_accept(int listen_fd)
{
    return prepared(accept(listen_fd, NULL, NULL), true);
}

/* Both of fds with their flags set, or a negative errno (both closed). */
static int
prepared_pair(int made, int fds[2], bool nonblock)
{
    if (made < 0) {
        return -errno;
    }
    int r = set_flags(fds[0], nonblock);
    r = r < 0 ? r : set_flags(fds[1], nonblock);
    if (r < 0) {
        close(fds[0]);
        close(fds[1]);
    }
    return r;
}

int
tether__socket_pair(int type, int fds[2])
{
    return prepared_pair(socketpair(AF_UNIX, type, 0, fds), fds, false);
}

int
tether__socket_adopt(int fd)
{
    return set_flags(fd, true);
}

int
tether__pipe_open(int fds[2])
{
    return prepared_pair(pipe(fds), fds, false);
}

int
tether__socket_peer_uid(int fd, uid_t *ret)
{
#if defined(TETHER_HAVE_GETPEEREID)
    gid_t gid;
    return getpeereid(fd, ret, &gid) < 0 ? -errno : 0;
#elif defined(SO_PEERCRED)
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        return -errno;
    }
    *ret = cred.uid;
    return 0;
#else
    (void)fd;
    (void)ret;
    return -ENOTSUP;
#endif
}

/* read() until len bytes came; -EIO at an early end. */
static int
read_full(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, (uint8_t *)buf + got, len - got);
        if (n < 0 && errno != EINTR) {
            return -errno;
        }
        if (n == 0) {
            return -EIO;
        }
        got += n > 0 ? (size_t)n : 0;
    }
    return 0;
}

/* No sealable anonymous files here: buffers travel inline (protocol version 1). */
const bool tether__shm_supported = false;

int
tether__shm_create(size_t size, int *ret_fd)
{
    (void)size;
    *ret_fd = -1;
    return -ENOTSUP;
}

int
tether__shm_check(int fd, uint64_t size, const char **why)
{
    (void)fd;
    (void)size;
    *why = "buffers do not travel as descriptors on this platform";
    return -EPROTO;
}

int
tether__random_bytes(void *buf, size_t len)
{
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    int r = read_full(fd, buf, len);
    close(fd);
    return r;
}

/* ---- wake-ups --------------------------------------------------------------------- */

int
tether__wake_init(tether__wake *w)
{
    int fds[2];
    int r = prepared_pair(pipe(fds), fds, true);
    if (r < 0) {
        return r;
    }
    *w = (tether__wake){.fd = fds[0], .wfd = fds[1]};
    return 0;
}

void
tether__wake_done(tether__wake *w)
{
    if (w->fd >= 0) {
        close(w->fd);
        close(w->wfd);
    }
    *w = (tether__wake){.fd = -1, .wfd = -1};
}

void
tether__wake_raise(const tether__wake *w)
{
    /* A full pipe is readable already: losing this byte loses no wake-up. */
    char one = 1;
    ssize_t n = write(w->wfd, &one, 1);
    (void)n;
}

void
tether__wake_drain(const tether__wake *w)
{
    char bytes[64];
    while (read(w->fd, bytes, sizeof(bytes)) == (ssize_t)sizeof(bytes)) {
    }
}

static _Thread_local tether__wake *thread_wake;
static pthread_key_t wake_key;
static pthread_once_t wake_key_once = PTHREAD_ONCE_INIT;

static void
free_thread_wake(void *arg)
{
    tether__wake_done(arg);
    tether__free(arg);
    thread_wake = NULL; /* a later destructor of this thread may wait again: a new one */
}

static void
make_wake_key(void)
{
    pthread_key_create(&wake_key, free_thread_wake);
}

tether__wake
tether__thread_wake(void)
{
    if (!thread_wake) {
        /* On the heap: the key's destructor may run after the thread's own storage is
         * gone, and a pipe's two descriptors do not fit in the key's value. */
        tether__wake *w = tether__malloc(sizeof(*w));
        if (!w) {
            return (tether__wake){.fd = -ENOMEM, .wfd = -ENOMEM};
        }
        int r = tether__wake_init(w);
        if (r < 0) {
            tether__free(w);
            return (tether__wake){.fd = r, .wfd = r};
        }
        pthread_once(&wake_key_once, make_wake_key);
        pthread_setspecific(wake_key, w);
        thread_wake = w;
    }
    return *thread_wake;
}

/* ---- poll sets -------------------------------------------------------------------- */

int
tether__pollset_init(tether__pollset *ps, int fd, void (*changed)(void *arg), void *arg)
{
    *ps = (tether__pollset){
        .fd = fd, .watch_fd = fd, .aux_fd = -1, .changed = changed, .changed_arg = arg};
    atomic_init(&ps->read_on, true);
    atomic_init(&ps->write_on, false);
    return 0;
}

void
tether__pollset_done(tether__pollset *ps)
{
    ps->watch_fd = -1; /* the socket is the link's to close */
}

unsigned
tether__pollset_watch(const tether__pollset *ps)
{
    tether__pollset *s = (tether__pollset *)ps;
    unsigned events = 0;
    events |= atomic_load_explicit(&s->read_on, memory_order_relaxed) ? TETHER__POLL_READ : 0;
    events |= atomic_load_explicit(&s->write_on, memory_order_relaxed) ? TETHER__POLL_WRITE : 0;
    return events;
}

void
tether__pollset_set_read(tether__pollset *ps, bool on)
{
    atomic_store_explicit(&ps->read_on, on, memory_order_relaxed);
    ps->changed(ps->changed_arg);
}

void
tether__pollset_set_write(tether__pollset *ps, bool on)
{
    atomic_store_explicit(&ps->write_on, on, memory_order_relaxed);
    ps->changed(ps->changed_arg);
}

unsigned
tether__pollset_query(tether__pollset *ps, unsigned reported)
{
    (void)ps; /* the watcher polls the socket itself: what it reported is the answer */
    return reported;
}

/* ---- message sockets -------------------------------------------------------------- */

#define PREFIX 4

int
tether__msgsock_pair(int fds[2])
{
    return tether__socket_pair(SOCK_STREAM, fds);
}

int
tether__msgsock_send(int fd, const void *data, size_t len, const int *fds, size_t nfds)
{
    if (nfds > TETHER__MSG_MAX_FDS || len > UINT32_MAX) {
        return -EINVAL;
    }
    tether__fd_record record;
    uint8_t prefix[PREFIX] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
                              (uint8_t)len};
    struct iovec iov[2] = {{prefix, PREFIX}, {(void *)data, len}};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};
    tether__msg_attach_fds(&msg, &record, fds, nfds);
    size_t left = PREFIX + len;
    while (left > 0) {
        ssize_t n = sendmsg(fd, &msg, TETHER__MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return -errno;
        }
        /* A blocking stream socket may still take part of it: send the rest, without
         * the descriptors, which went with the first byte. */
        left -= (size_t)n;
        msg.msg_control = NULL;
        msg.msg_controllen = 0;
        while (n > 0 && msg.msg_iovlen > 0) {
            size_t step = (size_t)n < msg.msg_iov->iov_len ? (size_t)n : msg.msg_iov->iov_len;
            msg.msg_iov->iov_base = (uint8_t *)msg.msg_iov->iov_base + step;
            msg.msg_iov->iov_len -= step;
            n -= (ssize_t)step;
            if (msg.msg_iov->iov_len == 0) {
                msg.msg_iov++;
                msg.msg_iovlen--;
            }
        }
    }
    return 0;
}

ssize_t
tether__msgsock_recv(int fd, tether__msgsock_rx *rx)
{
    for (;;) {
        bool in_prefix = rx->got < PREFIX;
        uint8_t prefix[PREFIX];
        size_t want = in_prefix ? PREFIX - rx->got : PREFIX + rx->length - rx->got;
        ssize_t n = recv(fd, in_prefix ? prefix : rx->buf + (rx->got - PREFIX), want, MSG_DONTWAIT);
        if (n < 0) {
            return errno == EINTR ? -EAGAIN : -errno;
        }
        if (n == 0) {
            return 0; /* the end of the socket, in the middle of a message or not */
        }
        for (ssize_t i = 0; in_prefix && i < n; i++) {
            rx->length = (rx->length << 8) | prefix[i]; /* the prefix may come in pieces */
        }
        rx->got += (size_t)n;
        if (rx->got < PREFIX) {
            continue;
        }
        if (in_prefix && rx->length > rx->cap) {
            return -EMSGSIZE;
        }
        if (rx->got == PREFIX + rx->length) {
            ssize_t len = (ssize_t)rx->length; /* 0 for an empty message: taken as the end */
            rx->got = rx->length = 0;
            return len;
        }
    }
}

/* ---- processes -------------------------------------------------------------------- */

int
tether__process_set_parent_death_signal(int signum)
{
    (void)signum;
    return -ENOTSUP;
}

int
tether__process_set_name(const char *name)
{
    char truncated[16];
    snprintf(truncated, sizeof(truncated), "%s", name);
#if defined(TETHER_HAVE_PTHREAD_SETNAME_NP)
    return -pthread_setname_np(pthread_self(), truncated);
#elif defined(__APPLE__)
    return -pthread_setname_np(truncated);
#else
    (void)truncated;
    return -ENOTSUP;
#endif
}

int
tether__process_spawn(const char *executable, char *const argv[], char *const envp[],
                      const char *cwd, int fd3, int *ret_out, int *ret_err, int64_t *ret_pid)
{
    (void)executable, (void)argv, (void)envp, (void)cwd, (void)fd3, (void)ret_out, (void)ret_err,
        (void)ret_pid;
    return -ENOSYS; /* libuv's uv_spawn starts and reaps processes here */
}

int
tether__process_reap(int pidfd, int *ret_status)
{
    (void)pidfd, (void)ret_status;
    return -ENOSYS;
}

int
tether__process_signal(int pidfd, int signum)
{
    (void)pidfd, (void)signum;
    return -ENOSYS;
}
