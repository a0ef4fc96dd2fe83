/*
 * platform, Linux: the implementation of platform.h that uses what Linux has beyond
 * POSIX, where it saves descriptors, system calls or races.
 *
 * - Wake objects are eventfds: one counter, one descriptor, where a pipe needs two.
 * - A connection's poll set is a private epoll set (the two changes of interest on the
 *   path of every call are inline, in linux.h). The socket is in it for input and a
 *   dup of the socket for output (epoll keys a registration by descriptor, so the same
 *   one cannot be in it twice with separate interests). Any thread changes an interest
 *   with one epoll_ctl; the I/O thread's uv_poll watches the set's own descriptor, which
 *   is readable while something armed is ready. That is what lets a synchronous caller
 *   read its reply without waking the I/O thread (docs/architecture.md, "Threads").
 * - Sockets and pipes are born close-on-exec and non-blocking (SOCK_CLOEXEC, accept4,
 *   pipe2), so no fork() in another thread can leak one between two calls.
 * - A fork server's control channel is SOCK_SEQPACKET: a packet is a message.
 * - The peer's uid comes from SO_PEERCRED, random bytes from getrandom, and the
 *   parent-death signal and the process name from prctl.
 * - A spawned process starts with posix_spawn (no copy of this process) and is watched
 *   and reaped through a pidfd.
 */
#define _GNU_SOURCE
#include "platform/platform.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "platform/unix.h"

/* ---- descriptors and sockets ------------------------------------------------------ */

int
tether__socket_open(int domain, int type)
{
    int fd = socket(domain, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    return fd < 0 ? -errno : fd;
}

int
tether__socket_accept(int listen_fd)
{
    int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int
tether__socket_pair(int type, int fds[2])
{
    return socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, fds) < 0 ? -errno : 0;
}

int
tether__socket_adopt(int fd)
{
    return tether__fd_set_flags(fd, true);
}

int
tether__pipe_open(int fds[2])
{
    return pipe2(fds, O_CLOEXEC) < 0 ? -errno : 0;
}

int
tether__socket_peer_uid(int fd, uid_t *ret)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        return -errno;
    }
    *ret = cred.uid;
    return 0;
}

int
tether__random_bytes(void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = getrandom((uint8_t *)buf + got, len - got, 0);
        if (n < 0 && errno != EINTR) {
            return -errno;
        }
        got += n > 0 ? (size_t)n : 0;
    }
    return 0;
}

/* ---- shared memory --------------------------------------------------------------- */

#define SHM_SEALS (F_SEAL_SHRINK | F_SEAL_GROW)

const bool tether__shm_supported = true;

int
tether__shm_create(size_t size, int *ret_fd)
{
    int fd = memfd_create("tether-buffer", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        return -errno;
    }
    if (ftruncate(fd, (off_t)size) < 0 || fcntl(fd, F_ADD_SEALS, SHM_SEALS | F_SEAL_SEAL) < 0) {
        int r = -errno;
        close(fd);
        return r == -EFBIG || r == -EINVAL ? -ENOMEM : r;
    }
    *ret_fd = fd;
    return 0;
}

int
tether__shm_check(int fd, uint64_t size, const char **why)
{
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0) {
        *why = "a buffer's descriptor is not a memfd";
        return -EPROTO;
    }
    if ((seals & SHM_SEALS) != SHM_SEALS) {
        *why = "a buffer's memfd is not sealed against shrinking and growing";
        return -EPROTO;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != size) {
        *why = "a buffer's memfd is not of the size its frame gives";
        return -EPROTO;
    }
    return 0;
}

/* ---- wake-ups --------------------------------------------------------------------- */

int
tether__wake_init(tether__wake *w)
{
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) {
        return -errno;
    }
    *w = (tether__wake){.fd = fd, .wfd = fd};
    return 0;
}

void
tether__wake_done(tether__wake *w)
{
    if (w->fd >= 0) {
        close(w->fd);
    }
    *w = (tether__wake){.fd = -1, .wfd = -1};
}

void
tether__wake_raise(const tether__wake *w)
{
    uint64_t one = 1;
    ssize_t n = write(w->wfd, &one, sizeof(one));
    (void)n;
}

void
tether__wake_drain(const tether__wake *w)
{
    uint64_t v;
    ssize_t n = read(w->fd, &v, sizeof(v));
    (void)n;
}

static _Thread_local tether__wake thread_wake = {.fd = -1, .wfd = -1};
static pthread_key_t wake_key;
static pthread_once_t wake_key_once = PTHREAD_ONCE_INIT;

static void
close_thread_wake(void *arg)
{
    close((int)(intptr_t)arg - 1);
    thread_wake = (tether__wake){.fd = -1, .wfd = -1}; /* a later destructor may wait again */
}

static void
make_wake_key(void)
{
    pthread_key_create(&wake_key, close_thread_wake);
}

/* The thread's first wait: make its eventfd, closed by the key's destructor. */
static tether__wake
make_thread_wake(void)
{
    int r = tether__wake_init(&thread_wake);
    if (r < 0) {
        return (tether__wake){.fd = r, .wfd = r};
    }
    pthread_once(&wake_key_once, make_wake_key);
    /* Stored +1 so that fd 0 is not mistaken for "no value". */
    pthread_setspecific(wake_key, (void *)(intptr_t)(thread_wake.fd + 1));
    return thread_wake;
}

tether__wake
tether__thread_wake(void)
{
    tether__wake w = thread_wake; /* one look-up of the thread's storage per call */
    return w.fd < 0 ? make_thread_wake() : w;
}

/* ---- poll sets -------------------------------------------------------------------- */

int
tether__pollset_init(tether__pollset *ps, int fd, void (*changed)(void *arg), void *arg)
{
    *ps = (tether__pollset){.fd = fd, .changed = changed, .changed_arg = arg};
    ps->watch_fd = epoll_create1(EPOLL_CLOEXEC);
    ps->aux_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    int r = 0;
    if (ps->watch_fd < 0 || ps->aux_fd < 0) {
        r = -errno;
    } else {
        struct epoll_event rev = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = TETHER__EPOLL_READ};
        struct epoll_event wev = {.events = 0, .data.u32 = TETHER__EPOLL_WRITE};
        if (epoll_ctl(ps->watch_fd, EPOLL_CTL_ADD, fd, &rev) < 0 ||
            epoll_ctl(ps->watch_fd, EPOLL_CTL_ADD, ps->aux_fd, &wev) < 0) {
            r = -errno;
        }
    }
    if (r < 0) {
        tether__pollset_done(ps);
        return r;
    }
    atomic_init(&ps->read_on, true);
    atomic_init(&ps->write_on, false);
    return 0;
}

void
tether__pollset_done(tether__pollset *ps)
{
    if (ps->watch_fd >= 0) {
        close(ps->watch_fd);
    }
    if (ps->aux_fd >= 0) {
        close(ps->aux_fd);
    }
    ps->watch_fd = ps->aux_fd = -1;
}

unsigned
tether__pollset_watch(const tether__pollset *ps)
{
    (void)ps;
    return TETHER__POLL_READ; /* the epoll set's own descriptor */
}

unsigned
tether__pollset_query(tether__pollset *ps, unsigned reported)
{
    (void)reported; /* the set's descriptor was readable: ask the set which one */
    struct epoll_event evs[2];
    int n = epoll_wait(ps->watch_fd, evs, 2, 0);
    unsigned ready = 0;
    for (int i = 0; i < n; i++) {
        ready |= evs[i].data.u32 == TETHER__EPOLL_READ ? TETHER__POLL_READ : 0;
        ready |= evs[i].data.u32 == TETHER__EPOLL_WRITE ? TETHER__POLL_WRITE : 0;
    }
    return ready;
}

/* ---- message sockets -------------------------------------------------------------- */

int
tether__msgsock_pair(int fds[2])
{
    return tether__socket_pair(SOCK_SEQPACKET, fds);
}

int
tether__msgsock_send(int fd, const void *data, size_t len, const int *fds, size_t nfds)
{
    if (nfds > TETHER__MSG_MAX_FDS) {
        return -EINVAL;
    }
    tether__fd_record record;
    struct iovec iov = {(void *)data, len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    tether__msg_attach_fds(&msg, &record, fds, nfds);
    return sendmsg(fd, &msg, MSG_NOSIGNAL) < 0 ? -errno : 0;
}

ssize_t
tether__msgsock_recv(int fd, tether__msgsock_rx *rx)
{
    struct iovec iov = {rx->buf, rx->cap};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT);
    if (n < 0) {
        return errno == EINTR ? -EAGAIN : -errno;
    }
    return msg.msg_flags & MSG_TRUNC ? -EMSGSIZE : n;
}

/* ---- processes -------------------------------------------------------------------- */

int
tether__process_set_parent_death_signal(int signum)
{
    return prctl(PR_SET_PDEATHSIG, (unsigned long)signum) < 0 ? -errno : 0;
}

int
tether__process_set_name(const char *name)
{
    return prctl(PR_SET_NAME, (unsigned long)name) < 0 ? -errno : 0;
}

/* ---- spawned processes ------------------------------------------------------------ */

static void
close_pair(int fds[2])
{
    for (int i = 0; i < 2; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
        }
    }
}

/* Where execvpe would find executable with envp's PATH: into buf, or executable itself
 * when it has a slash or is found nowhere (the spawn then fails as the exec would). */
static const char *
find_executable(const char *executable, char *const envp[], char *buf, size_t size)
{
    if (strchr(executable, '/')) {
        return executable;
    }
    const char *path = "/bin:/usr/bin"; /* execvpe's default */
    for (char *const *e = envp; *e; e++) {
        if (strncmp(*e, "PATH=", 5) == 0) {
            path = *e + 5;
        }
    }
    for (const char *dir = path;; dir++) {
        const char *end = strchrnul(dir, ':');
        size_t n = (size_t)(end - dir);
        int len = snprintf(buf, size, "%.*s%s%s", (int)n, dir, n ? "/" : "", executable);
        if (len > 0 && (size_t)len < size && access(buf, X_OK) == 0) {
            return buf;
        }
        if (!*end) {
            return executable;
        }
        dir = end;
    }
}

/* Whether pidfd_open works here: a kernel before 5.3, or valgrind (3.19 knows no
 * pidfd_open), says ENOSYS once, and later spawns go to libuv at once. */
static atomic_bool no_pidfd;

int
tether__process_spawn(const char *executable, char *const argv[], char *const envp[],
                      const char *cwd, int fd3, int *ret_out, int *ret_err, int64_t *ret_pid)
{
#if defined(SYS_pidfd_open)
    if (atomic_load_explicit(&no_pidfd, memory_order_relaxed)) {
        return -ENOSYS;
    }
    int out[2] = {-1, -1}, err[2] = {-1, -1};
    /* Close-on-exec pipes, the reading ends non-blocking for the I/O thread; the child's
     * ends stay blocking, as an inherited stdout is. */
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
        int e = errno;
        close_pair(out);
        close_pair(err);
        return -e;
    }
    (void)fcntl(out[0], F_SETFL, O_NONBLOCK);
    (void)fcntl(err[0], F_SETFL, O_NONBLOCK);
    char found[4096];
    const char *file = find_executable(executable, envp, found, sizeof(found));
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int result = -1;
    int r = posix_spawn_file_actions_init(&fa);
    if (r == 0 && (r = posix_spawnattr_init(&attr)) != 0) {
        posix_spawn_file_actions_destroy(&fa);
    }
    if (r != 0) {
        close_pair(out);
        close_pair(err);
        return -r;
    }
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    /* dup2 onto the descriptor the child wants clears its close-on-exec flag, even when
     * both are the same descriptor (glibc 2.29 and later). */
    if ((r = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)) == 0 &&
        (r = posix_spawn_file_actions_adddup2(&fa, out[1], 1)) == 0 &&
        (r = posix_spawn_file_actions_adddup2(&fa, err[1], 2)) == 0 &&
        (r = posix_spawn_file_actions_adddup2(&fa, fd3, 3)) == 0 &&
        (!cwd || (r = posix_spawn_file_actions_addchdir_np(&fa, cwd)) == 0) &&
        (r = posix_spawnattr_setsigmask(&attr, &none)) == 0 &&
        (r = posix_spawnattr_setsigdefault(&attr, &all)) == 0 &&
        (r = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)) ==
            0) {
        pid_t pid;
        r = posix_spawn(&pid, file, &fa, &attr, argv, envp);
        if (r == 0) {
            int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
            if (pidfd >= 0) {
                (void)fcntl(pidfd, F_SETFD, FD_CLOEXEC);
                *ret_pid = pid;
                result = pidfd;
            } else {
                /* No pidfd: the process is ours to end and reap, here, and the caller
                 * starts it again the other way. */
                r = errno;
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
                if (r == ENOSYS) {
                    atomic_store_explicit(&no_pidfd, true, memory_order_relaxed);
                }
            }
        }
    }
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    close(err[1]);
    if (r != 0) {
        close(out[0]);
        close(err[0]);
        return -r;
    }
    *ret_out = out[0];
    *ret_err = err[0];
    return result;
#else
    (void)executable, (void)argv, (void)envp, (void)cwd, (void)fd3, (void)ret_out, (void)ret_err,
        (void)ret_pid;
    return -ENOSYS;
#endif
}

int
tether__process_reap(int pidfd, int *ret_status)
{
    siginfo_t info = {0};
    if (waitid(P_PIDFD, (id_t)pidfd, &info, WEXITED | WNOHANG) < 0) {
        return -errno;
    }
    if (info.si_pid == 0) {
        return -EAGAIN;
    }
    *ret_status = info.si_code == CLD_EXITED ? info.si_status : -info.si_status;
    return 0;
}

int
tether__process_signal(int pidfd, int signum)
{
    return syscall(SYS_pidfd_send_signal, pidfd, signum, NULL, 0) < 0 ? -errno : 0;
}
