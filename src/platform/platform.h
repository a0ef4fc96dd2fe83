/*
 * platform: the one place where the library uses what only some systems have. Every
 * other file asks for these things through this header, so a port is a new file here,
 * not a hunt through the tree.
 *
 * Two implementations; the build compiles exactly one (CMake: -DTETHER_PLATFORM=):
 * - linux.c (linux, the default on Linux, and what python/setup.py builds): epoll sets,
 *   eventfds, SOCK_SEQPACKET, accept4 and the *_CLOEXEC flags, SO_PEERCRED, getrandom,
 *   prctl.
 * - posix.c (posix, for every other Unix, and built and tested on Linux by CI): what
 *   POSIX.1-2008 has: poll(), pipes, fcntl() after socket() and accept(), SOCK_STREAM
 *   with length prefixes where Linux keeps packets, /dev/urandom, no parent-death signal.
 * What differs in behaviour is said at each group below, and in docs/rationale.md. The
 * build defines TETHER_PLATFORM_POSIX for the portable one: the few operations on the
 * path of every synchronous call are inline (linux.h), so this header must know.
 *
 * Every descriptor made here is close-on-exec; those that the library polls are
 * non-blocking. Functions return 0 (or a descriptor) on success and a negative errno
 * on failure.
 */
#ifndef TETHER_PLATFORM_H
#define TETHER_PLATFORM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

/* ---- descriptors and sockets ------------------------------------------------------ */

/*
 * Flags of every send() on a connection: never block, never raise SIGPIPE when the
 * peer is gone. MSG_NOSIGNAL is POSIX.1-2008; a system without it (macOS) has
 * SO_NOSIGPIPE instead, which the socket functions below set on every socket.
 */
#ifdef MSG_NOSIGNAL
#define TETHER__MSG_NOSIGNAL MSG_NOSIGNAL
#else
#define TETHER__MSG_NOSIGNAL 0
#endif
#define TETHER__SEND_FLAGS (TETHER__MSG_NOSIGNAL | MSG_DONTWAIT)

/* A socket of domain and type, non-blocking. Returns it or a negative errno. */
int tether__socket_open(int domain, int type);
/* Accept a connection on listen_fd, non-blocking. Returns it or a negative errno
 * (-EAGAIN when none waits). */
int tether__socket_accept(int listen_fd);
/* A connected pair of AF_UNIX sockets of type, blocking. */
int tether__socket_pair(int type, int fds[2]);
/* Make a descriptor received from elsewhere into one of ours: non-blocking and
 * close-on-exec (and no SIGPIPE where that is a socket option). */
int tether__socket_adopt(int fd);
/* A pipe, both ends blocking. */
int tether__pipe_open(int fds[2]);
/* The effective uid of the process at the other end of a Unix socket. -ENOTSUP where
 * the system cannot tell; callers then rely on the runtime directory's mode (0700). */
int tether__socket_peer_uid(int fd, uid_t *ret);
/* len bytes from the system's random source, for tokens and seeds. */
int tether__random_bytes(void *buf, size_t len);

/* ---- shared memory for buffers (protocol version 2) -------------------------------- */

/*
 * An anonymous file of size bytes, zero-filled, whose size can never change (Linux: a
 * memfd sealed with F_SEAL_SHRINK, F_SEAL_GROW and F_SEAL_SEAL): a process that maps
 * it can never fault on its pages, whatever the others do with their descriptors. Its
 * contents stay writable through mappings made writable. Returns 0 with a close-on-exec
 * descriptor in *ret_fd, -ENOMEM, or -ENOTSUP where the platform has no such files
 * (then buffers travel inline, and the protocol version offered is 1).
 */
int tether__shm_create(size_t size, int *ret_fd);
/*
 * Whether a descriptor a peer sent is such a file, of exactly size bytes: 0, or -EPROTO
 * with *why saying what it is not (a memfd; sealed against shrinking and growing; of
 * that size).
 */
int tether__shm_check(int fd, uint64_t size, const char **why);
/* Whether this platform has them (tether__shm_create works). */
extern const bool tether__shm_supported;

/* ---- wake-ups --------------------------------------------------------------------- */

/*
 * A wake object is a pollable descriptor (fd, polled for POLLIN) that any thread can
 * raise; raising is sticky until drained, so a wake-up sent before the sleeper polls is
 * never lost. Linux: one eventfd (wfd == fd). Portable: a pipe (fd its read end, wfd
 * its write end), drained by reading until it is empty.
 */
typedef struct tether__wake {
    int fd;  /* poll this */
    int wfd; /* raise through this */
} tether__wake;

int tether__wake_init(tether__wake *w);
void tether__wake_done(tether__wake *w);
/* Make w readable. Thread: any; async-signal-safe. */
void tether__wake_raise(const tether__wake *w);
/* Make w unreadable again. */
void tether__wake_drain(const tether__wake *w);

/*
 * The calling thread's wake object (a copy), for the waits of synchronous calls and
 * call chains: made on first use, closed when the thread exits, valid until then. On
 * failure its fd is a negative errno. Returned by value, in registers: every
 * synchronous call asks for it.
 */
tether__wake tether__thread_wake(void);

/* ---- poll sets: what the I/O thread watches for one connection --------------------- */

/*
 * A poll set stands between one connected socket and the I/O thread's watcher (a
 * uv_poll on tether__pollset_fd(), for the events tether__pollset_watch() names). It
 * keeps two interests: input (READ) and room for output (WRITE), which conn/link.c
 * switches on and off as the reader role and the output queue change.
 *
 * Linux: the set is a private epoll set holding the socket (read interest) and a dup
 * of it (write interest); the watcher polls the epoll set for POLLIN. Interests change
 * from any thread, at once, with one epoll_ctl: a caller that takes the reader role
 * pauses input, so the reply it reads itself never wakes the I/O thread.
 *
 * Portable: the watcher polls the socket itself. Only the I/O thread may change what
 * its watcher asks for, so a change of interest calls changed(arg), on the thread that
 * made it, and the link has the I/O thread follow (at once when it is that thread,
 * through a task otherwise). Input cannot be paused from a caller: the I/O thread parks
 * instead, when it wakes and finds the role taken (conn/link.h), and the caller's reply
 * may wake both threads.
 */
enum {
    TETHER__POLL_READ = 1,
    TETHER__POLL_WRITE = 2
};

typedef struct tether__pollset {
    int fd;       /* the socket; not owned */
    int watch_fd; /* what the watcher polls */
    int aux_fd;   /* Linux: the dup of the socket that carries write interest */
    atomic_bool read_on, write_on;
    void (*changed)(void *arg); /* portable: the watcher must follow the interests */
    void *changed_arg;
} tether__pollset;

/* Make a set around fd, with input on and output off. */
int tether__pollset_init(tether__pollset *ps, int fd, void (*changed)(void *arg), void *arg);
/* Close what init made (not fd). */
void tether__pollset_done(tether__pollset *ps);
/* The events (TETHER__POLL_*) the watcher of watch_fd must ask for now. */
unsigned tether__pollset_watch(const tether__pollset *ps);
/* Turn an interest on or off (the inline functions below call these on a change).
 * Linux: inline, one epoll_ctl each (linux.h); TETHER__POLLSET_CAN_PAUSE says whether
 * input can be paused from any thread. */
#ifdef TETHER_PLATFORM_POSIX
#define TETHER__POLLSET_CAN_PAUSE 0
void tether__pollset_set_read(tether__pollset *ps, bool on);
void tether__pollset_set_write(tether__pollset *ps, bool on);
#else
#include "platform/linux.h"
#endif
/* The watcher fired with write interest on: which interests are ready, given what it
 * reported. (With write interest off, only input can be: no need to ask; on Linux that
 * saves a syscall per request.) */
unsigned tether__pollset_query(tether__pollset *ps, unsigned reported);

static inline int
tether__pollset_fd(const tether__pollset *ps)
{
    return ps->watch_fd;
}

/* A caller took the reader role (link lock held, any thread): stop waking the I/O
 * thread for input where the set can do so from here (Linux); elsewhere the I/O thread
 * parks when it wakes. */
static inline void
tether__pollset_pause_read(tether__pollset *ps)
{
    if (TETHER__POLLSET_CAN_PAUSE && atomic_load_explicit(&ps->read_on, memory_order_relaxed)) {
        tether__pollset_set_read(ps, false);
    }
}

/* The I/O thread woke and found the role taken (link lock held): input off until the
 * role comes back. */
static inline void
tether__pollset_park_read(tether__pollset *ps)
{
    if (atomic_load_explicit(&ps->read_on, memory_order_relaxed)) {
        tether__pollset_set_read(ps, false);
    }
}

/* Whether input is off (paused or parked); link lock held. */
static inline bool
tether__pollset_read_paused(const tether__pollset *ps)
{
    return !atomic_load_explicit(&((tether__pollset *)ps)->read_on, memory_order_relaxed);
}

/* The reader role came back and input is off (link lock held, any thread): on again. */
static inline void
tether__pollset_resume_read(tether__pollset *ps)
{
    tether__pollset_set_read(ps, true);
}

/* Output is queued (on) or flushed (off); the link's write lock held, any thread. */
static inline void
tether__pollset_want_write(tether__pollset *ps, bool on)
{
    if (atomic_load_explicit(&ps->write_on, memory_order_relaxed) != on) {
        tether__pollset_set_write(ps, on);
    }
}

/* Whether output is wanted: read without the write lock by the I/O thread. */
static inline bool
tether__pollset_wants_write(const tether__pollset *ps)
{
    return atomic_load_explicit(&((tether__pollset *)ps)->write_on, memory_order_relaxed);
}

/* ---- message sockets: the control channel of a fork server ------------------------- */

/*
 * A connected pair of sockets that keeps the boundaries of messages and carries
 * descriptors with them (SCM_RIGHTS). Linux: SOCK_SEQPACKET, a message is a packet.
 * Portable: SOCK_STREAM (AF_UNIX SOCK_SEQPACKET is missing on macOS), a message is a
 * 4-byte big-endian length and that many bytes, its descriptors riding on its first
 * byte. The peer tells which from the socket's type (python/tether/_forkserver.py).
 */
int tether__msgsock_pair(int fds[2]);
/* Send one message of len bytes with nfds descriptors (copies) attached; blocks. */
int tether__msgsock_send(int fd, const void *data, size_t len, const int *fds, size_t nfds);

/* A reader of messages: buf holds up to cap bytes; the rest is the reader's state. */
typedef struct tether__msgsock_rx {
    uint8_t *buf;
    size_t cap;
    size_t got;    /* portable: bytes of the current message (prefix included) read */
    size_t length; /* portable: its length, once its prefix is read */
} tether__msgsock_rx;

/*
 * Read without blocking. Returns the length of the next whole message (in rx->buf),
 * -EAGAIN until one has come, 0 at the end of the socket, -EMSGSIZE for a message
 * longer than rx->cap (the socket is of no further use), or another negative errno.
 * Descriptors sent along are discarded. An empty message reads as the end.
 */
ssize_t tether__msgsock_recv(int fd, tether__msgsock_rx *rx);

/* ---- processes -------------------------------------------------------------------- */

/* Have the kernel send signum to this process when its parent dies. Linux only:
 * -ENOTSUP elsewhere (a spawned child still exits at the end of its socket). */
int tether__process_set_parent_death_signal(int signum);
/* Name the calling thread (the process, from the main thread) as ps shows it: the first
 * 15 bytes. -ENOTSUP where the system has no way. */
int tether__process_set_name(const char *name);

/*
 * Start executable as a new process without copying this one: Linux's posix_spawn runs
 * the child in the caller's memory until it execs (vfork semantics), where fork() copies
 * the page tables of a process as big as a Python interpreter and leaves it write faults
 * to take afterwards (a fork and exec from such a process took 8 ms here, posix_spawn
 * 1.7). An executable without a slash is looked up in the PATH of envp, as execvpe
 * does. The child gets stdin from /dev/null, stdout and stderr on pipes whose reading
 * ends come back in *ret_out and *ret_err (close-on-exec, non-blocking), fd3 as its
 * descriptor 3, envp, cwd (NULL: ours) and every signal at its default, unblocked.
 * Returns a descriptor that becomes readable when the process exits (a pidfd; close it
 * after tether__process_reap) and sets *ret_pid; a negative code (the exec's own,
 * -ENOENT for a missing executable); -ENOSYS where the platform has no such way (the
 * caller starts the process with libuv instead).
 */
int tether__process_spawn(const char *executable, char *const argv[], char *const envp[],
                          const char *cwd, int fd3, int *ret_out, int *ret_err, int64_t *ret_pid);
/* The status of the exited process of tether__process_spawn, reaping it: its exit code,
 * or minus the signal that ended it; -EAGAIN while it runs. */
int tether__process_reap(int pidfd, int *ret_status);
/* Send signum to that process (while not reaped: the pidfd names it, never a reused pid). */
int tether__process_signal(int pidfd, int signum);

#endif
