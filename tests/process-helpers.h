/*
 * process-helpers: real child processes for the C tests (test-process.c, test-clients.c).
 *
 * Children are plain fork()s that never return into Criterion: they report through their
 * exit status and through single bytes on a channel (a pipe each way), and Criterion
 * assertions are used only in the test's own process; in a child, CHILD_CHECK and
 * CHILD_OK end it with CHILD_FAILED instead. Every child is bounded three ways: alarm()
 * in the child, death with its parent (PR_SET_PDEATHSIG), and a bounded reap() in the
 * parent that kills it. Fork children before the test makes any tether object where
 * possible, so that they are forked from a single-threaded process and inherit no
 * connection.
 */
#ifndef TETHER_TEST_PROCESS_HELPERS_H
#define TETHER_TEST_PROCESS_HELPERS_H

#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#define CHILD_ALARM_SEC 60
#define CHILD_FAILED 99
/* How long either side waits for the other's next byte, in ms. */
#define WAIT_MS 10000

/* ---- children: no Criterion here ------------------------------------------------------- */

/* Report a failed check of a child on stderr and end the child with CHILD_FAILED. */
static inline void
child_fail(const char *file, int line, const char *what, const char *format, ...)
{
    const char *slash = strrchr(file, '/');
    fprintf(stderr, "[child %d] %s:%d: %s", (int)getpid(), slash ? slash + 1 : file, line, what);
    if (format) {
        va_list ap;
        va_start(ap, format);
        fputs(": ", stderr);
        vfprintf(stderr, format, ap);
        va_end(ap);
    }
    fputc('\n', stderr);
    _exit(CHILD_FAILED);
}

/* CHILD_FAIL(what, format, ...): child_fail() at this line. */
#define CHILD_FAIL(...) child_fail(__FILE__, __LINE__, __VA_ARGS__)

#define CHILD_CHECK(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            CHILD_FAIL(#cond, NULL);                                                               \
        }                                                                                          \
    } while (0)

#define CHILD_OK(expr)                                                                             \
    do {                                                                                           \
        int child_ok_r_ = (expr);                                                                  \
        if (child_ok_r_ < 0) {                                                                     \
            CHILD_FAIL(#expr, "%d (%s)", child_ok_r_, tether_strerror(child_ok_r_));               \
        }                                                                                          \
    } while (0)

/*
 * The pipes between the test and one child: the parent writes single bytes down
 * `down` (closing it means "finish"), the child writes single bytes up `up`.
 */
typedef struct channel {
    int down[2];
    int up[2];
} channel;

#define MAX_CHANNELS 8
static channel *all_channels[MAX_CHANNELS];
static int n_channels;

static inline void
channel_open(channel *ch)
{
    cr_assert(n_channels < MAX_CHANNELS);
    cr_assert(pipe2(ch->down, O_CLOEXEC) == 0 && pipe2(ch->up, O_CLOEXEC) == 0);
    all_channels[n_channels++] = ch;
}

static inline void
close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/*
 * Wait up to timeout_ms for one byte (a timeout of 0 only looks). Returns it, -1 on EOF
 * or error, -2 on timeout.
 */
static inline int
read_byte(int fd, int timeout_ms)
{
    uint64_t deadline = tether_now_usec() + (uint64_t)timeout_ms * 1000;
    for (;;) {
        uint64_t now = tether_now_usec();
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int wait_ms = now >= deadline ? 0 : (int)((deadline - now + 999) / 1000);
        int n = poll(&p, 1, wait_ms);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return -1;
        }
        if (n == 0) {
            return -2;
        }
        unsigned char b;
        ssize_t got = read(fd, &b, 1);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        return got == 1 ? b : -1;
    }
}

static inline void
child_send(channel *ch, char b)
{
    CHILD_CHECK(write(ch->up[1], &b, 1) == 1);
}

static inline void
child_expect(channel *ch, char b)
{
    int got = read_byte(ch->down[0], WAIT_MS);
    if (got != (unsigned char)b) {
        CHILD_FAIL("child_expect", "wanted '%c', got %d", b, got);
    }
}

/* Block until the parent closes the channel (or dies). */
static inline void
child_wait_finish(channel *ch)
{
    int got = read_byte(ch->down[0], 30000);
    if (got != -1) {
        CHILD_FAIL("child_wait_finish", "got %d instead of EOF", got);
    }
}

typedef int (*child_fn)(channel *ch, void *arg);

/* Fork a child that runs fn(ch, arg) and exits with its return value. */
static inline pid_t
spawn(channel *ch, child_fn fn, void *arg)
{
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid > 0) {
        close_fd(&ch->down[0]);
        close_fd(&ch->up[1]);
        return pid;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) {
        _exit(CHILD_FAILED);
    }
    alarm(CHILD_ALARM_SEC);
    /* Keep only this child's own ends, so that EOF on a pipe means what it says. */
    for (int i = 0; i < n_channels; i++) {
        channel *o = all_channels[i];
        close_fd(&o->down[1]);
        close_fd(&o->up[0]);
        if (o != ch) {
            close_fd(&o->down[0]);
            close_fd(&o->up[1]);
        }
    }
    _exit(fn(ch, arg));
}

/* A client made in a child (not connected), with the test log. */
static inline tether_client *
child_client_with(tether_client_options *o)
{
    o->log = test_log;
    o->log_level = TETHER_LOG_DEBUG;
    tether_client *c = NULL;
    CHILD_OK(tether_client_new(o, &c));
    return c;
}

static inline tether_client *
child_client(const char *name, const char *address)
{
    tether_client_options o = {.name = name, .address = address};
    return child_client_with(&o);
}

static inline void
child_connect(tether_client *c)
{
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_client_connect(c, &err);
    if (r < 0) {
        CHILD_FAIL("connect", "%s: %s", tether_strerror(r), err.message ? err.message : "");
    }
}

/* ---- parent side ---------------------------------------------------------------------- */

static inline void
send_byte(channel *ch, char b)
{
    cr_assert(write(ch->down[1], &b, 1) == 1);
}

static inline void
expect_byte(channel *ch, char b, int timeout_ms)
{
    int got = read_byte(ch->up[0], timeout_ms);
    cr_assert(got != -2, "no '%c' from the child within %d ms", b, timeout_ms);
    cr_assert(got != -1, "the child ended before sending '%c'", b);
    cr_assert_eq(got, (unsigned char)b, "got '%c' from the child, wanted '%c'", got, b);
}

static inline void
finish(channel *ch)
{
    close_fd(&ch->down[1]);
}

/* Wait (bounded) for the child to end; kill it if it does not. Returns its status. */
static inline int
reap(pid_t pid, int timeout_ms)
{
    int status = 0;
    for (int waited = 0;; waited++) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            return status;
        }
        cr_assert(r == 0, "waitpid %d: %s", (int)pid, strerror(errno));
        if (waited >= timeout_ms) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            cr_assert_fail("child %d did not exit within %d ms", (int)pid, timeout_ms);
        }
        usleep(1000);
    }
}

static inline void
assert_exited(pid_t pid, int status, int code)
{
    cr_assert(WIFEXITED(status), "child %d did not exit normally (status 0x%x%s%s)", (int)pid,
              status, WIFSIGNALED(status) ? ", signal " : "",
              WIFSIGNALED(status) ? strsignal(WTERMSIG(status)) : "");
    cr_assert_eq(WEXITSTATUS(status), code, "child %d exited %d, expected %d", (int)pid,
                 WEXITSTATUS(status), code);
}

static inline void
assert_no_children_left(void)
{
    int status;
    pid_t r = waitpid(-1, &status, WNOHANG);
    cr_assert(r == -1 && errno == ECHILD, "a child is left (waitpid gave %d)", (int)r);
}

#endif
