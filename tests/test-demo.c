/*
 * test-demo: tools/tether-demo, the host of `make demo`, worked by a client over its socket.
 *
 * tether-demo is an engine-like host: a 60 fps frame loop on its main thread and a scene
 * of actors that scripts reach through services and through proxies. This program starts
 * the real build/tether-demo as a child process, reads what it prints (the address it
 * listens on, the lines it logs), connects to that address as a client and works the
 * scene: calls the three ways, argument binding and the errors a script can provoke,
 * methods through proxies, actors passed back, deletes and the releases that follow the
 * last proxy, a pipelined burst, then calls as fast as it can for half a second while
 * the frame loop must keep its pace. Then it has the host call it back (the host's
 * tether.call_client), and leaves still holding a deleted actor, which a second
 * connection then sees released. A third client subscribes to the actors' events (spawned,
 * one tick a frame, destroyed), leaves and comes back, and is told what it missed. What
 * only the host knows is asked through its services
 * (frame_stats, scene_stats, tether.clients) or read from its output: the test shares
 * nothing with the host but the socket. Every check prints a line, the demo's output is
 * copied with a "demo | " prefix, and the exit status is 0 when every check passed.
 *
 *   test-demo                       three runs: Unix socket, --tcp 0, --port 0 (ctest)
 *   test-demo TETHER-DEMO-OPTIONS   one run with those options (make demo ARGS=--once)
 *
 * tether-demo is found in $TETHER_BUILD_DIR (set by ctest's wrapper and by tools/demo.py),
 * else beside this program. It uses the runtime directory of the environment.
 */
/* ctest: timeout=120 labels=examples */
#define _GNU_SOURCE /* pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tether.h"

#define CLIENT_NAME "test-demo"
#define OBSERVER_NAME "test-demo-observer"
/* tether-demo's frame rate. */
#define DEMO_FPS 60
#define DEMO_FRAME_USEC (1000000ull / DEMO_FPS)
#define CALL_TIMEOUT_USEC (5ull * 1000 * 1000)
/* Wall-clock bound of one run: a hang in the library must fail the run, not stall it. */
#define RUN_ALARM_SECONDS 30
/* How long the demo may take to print its address, to print a line, and to exit. */
#define START_WAIT_USEC (10ull * 1000 * 1000)
#define OUTPUT_WAIT_USEC (3ull * 1000 * 1000)
#define EXIT_WAIT_USEC (5ull * 1000 * 1000)
/* Calls pipelined at once, and how long a release may take to show. */
#define BURST 240
#define RELEASE_WAIT_USEC (3ull * 1000 * 1000)
/* How long the client calls the host as fast as it can. */
#define HAMMER_USEC (500ull * 1000)
/* tether-demo prints this after its address lines. */
#define READY_TEXT "Stop with Ctrl-C."

/* The demo host as a child process, and everything it printed (stdout and stderr). */
typedef struct demo_proc {
    pid_t pid;
    int fd; /* the read end of its output */
    pthread_t reader;
    pthread_mutex_t lock;
    pthread_cond_t grew;
    char *text; /* NUL-terminated */
    size_t len, cap;
    size_t echoed; /* how much of text has been copied to our output */
    bool ended;    /* its output reached EOF */
} demo_proc;

typedef struct selftest {
    demo_proc demo;
    char address[300]; /* where the client connects, as the demo printed it */
    int checks, failures;
    atomic_int client_notes; /* notifications the client received (I/O thread) */
} selftest;

/* What frame_stats() and scene_stats() returned. */
typedef struct frame_view {
    uint64_t frames, late, calls;
    double fps, frame_ms_mean, frame_ms_max, dispatch_ms_max;
} frame_view;

typedef struct scene_view {
    uint64_t actors, spawned, deleted, released;
} scene_view;

/* The demo of the current run, for the alarm handler. */
static volatile pid_t running_demo = -1;

/* ---- output ------------------------------------------------------------------------------ */

/* One whole line on stdout, which the demo's reader thread shares. */
static void say(const char *format, ...) TETHER_PRINTF(1, 2);

static void
say(const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    flockfile(stdout);
    vprintf(format, ap);
    putchar('\n');
    funlockfile(stdout);
    va_end(ap);
}

static void check(selftest *t, bool ok, const char *format, ...) TETHER_PRINTF(3, 4);

static void
check(selftest *t, bool ok, const char *format, ...)
{
    char line[600];
    va_list ap;
    va_start(ap, format);
    vsnprintf(line, sizeof(line), format, ap);
    va_end(ap);
    t->checks++;
    t->failures += !ok;
    say("%s %s", ok ? "ok  " : "FAIL", line);
}

/* Check that a step returned 0; say why when it did not. */
static void
check_ok(selftest *t, int r, const char *what)
{
    check(t, r == 0, "%s%s%s", what, r ? ": " : "", r ? tether_strerror(r) : "");
}

/* The value as text (JSON-like), newly allocated; NULL when out of memory. */
static char *
render(const tether_value *value)
{
    char *text = NULL;
    if (!value || tether_value_to_string(value, &text) < 0) {
        return NULL;
    }
    return text;
}

/* ---- the demo process -------------------------------------------------------------------- */

/* Copy the complete lines not yet copied (all that is left, once ended). Lock held. */
static void
echo_lines(demo_proc *p)
{
    for (;;) {
        char *start = p->text + p->echoed;
        char *end = strchr(start, '\n');
        if (!end && (!p->ended || !*start)) {
            return;
        }
        size_t n = end ? (size_t)(end - start) : strlen(start);
        say("demo | %.*s", (int)n, start);
        p->echoed += n + (end ? 1 : 0);
    }
}

/* The reader thread: keeps the demo's output, so that the demo never blocks on a full
 * pipe, and copies it line by line. */
static void *
read_output(void *arg)
{
    demo_proc *p = arg;
    char buf[4096];
    for (;;) {
        ssize_t n = read(p->fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        pthread_mutex_lock(&p->lock);
        if (n > 0 && p->len + (size_t)n + 1 > p->cap) {
            size_t cap = 2 * (p->len + (size_t)n + 1);
            char *text = realloc(p->text, cap);
            if (text) {
                p->text = text;
                p->cap = cap;
            } else {
                n = -1; /* out of memory: stop reading, as at EOF */
            }
        }
        if (n > 0) {
            memcpy(p->text + p->len, buf, (size_t)n);
            p->len += (size_t)n;
            p->text[p->len] = '\0';
        } else {
            p->ended = true;
        }
        echo_lines(p);
        pthread_cond_broadcast(&p->grew);
        pthread_mutex_unlock(&p->lock);
        if (n <= 0) {
            return NULL;
        }
    }
}

/* Start argv[0] with its output on a pipe to the reader thread. */
static bool
demo_start(demo_proc *p, char *const argv[])
{
    int fds[2];
    *p = (demo_proc){.pid = -1, .fd = -1};
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->grew, NULL);
    p->text = calloc(1, 1);
    if (!p->text || pipe2(fds, O_CLOEXEC) < 0) {
        return false;
    }
    fflush(stdout);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* Die with this test, so that a test ended by its alarm leaves no host behind. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent || dup2(fds[1], STDOUT_FILENO) < 0 ||
            dup2(fds[1], STDERR_FILENO) < 0) {
            _exit(127);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    p->fd = fds[0];
    if (pid < 0) {
        close(p->fd);
        p->fd = -1;
        return false;
    }
    p->pid = pid;
    running_demo = pid;
    if (pthread_create(&p->reader, NULL, read_output, p) != 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        p->pid = running_demo = -1;
        return false;
    }
    return true;
}

/* Wait until the demo has printed text, up to timeout_usec; whether it has. */
static bool
demo_wait_for(demo_proc *p, const char *text, uint64_t timeout_usec)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)(timeout_usec / 1000000);
    until.tv_nsec += (long)(timeout_usec % 1000000) * 1000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&p->lock);
    bool found;
    while (!(found = strstr(p->text, text) != NULL) && !p->ended &&
           pthread_cond_timedwait(&p->grew, &p->lock, &until) != ETIMEDOUT) {
    }
    pthread_mutex_unlock(&p->lock);
    return found;
}

/* How many times the demo has printed text so far. */
static int
demo_count(demo_proc *p, const char *text)
{
    int n = 0;
    pthread_mutex_lock(&p->lock);
    for (const char *at = p->text; (at = strstr(at, text)); at += strlen(text)) {
        n++;
    }
    pthread_mutex_unlock(&p->lock);
    return n;
}

/* The address of the last "TETHER_ADDRESS=ADDRESS " the demo printed: its TCP address
 * when it listens on TCP, which it prints after the Unix one. */
static bool
demo_address(demo_proc *p, char *buf, size_t size)
{
    const char *key = "TETHER_ADDRESS=", *last = NULL;
    pthread_mutex_lock(&p->lock);
    for (const char *at = p->text; (at = strstr(at, key)); at += strlen(key)) {
        last = at + strlen(key);
    }
    size_t n = last ? strcspn(last, " \n") : 0;
    if (n > 0 && n < size) {
        memcpy(buf, last, n);
    }
    buf[n > 0 && n < size ? n : 0] = '\0';
    pthread_mutex_unlock(&p->lock);
    return buf[0] != '\0';
}

/* Send SIGTERM, wait (bounded; SIGKILL after it) and return the wait status; -1 if the
 * demo never started or had to be killed. Frees what demo_start() made, either way. */
static int
demo_stop(demo_proc *p)
{
    int status = -1;
    if (p->pid > 0) {
        kill(p->pid, SIGTERM);
        uint64_t until = tether_now_usec() + EXIT_WAIT_USEC;
        pid_t r;
        while ((r = waitpid(p->pid, &status, WNOHANG)) == 0 && tether_now_usec() < until) {
            struct timespec nap = {0, 10 * 1000 * 1000};
            nanosleep(&nap, NULL);
        }
        if (r < 0) {
            status = -1;
        } else if (r == 0) {
            say("tether-demo did not exit within %llu s of SIGTERM: killing it",
                (unsigned long long)(EXIT_WAIT_USEC / 1000000));
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &status, 0);
            status = -1;
        }
        running_demo = -1;
        pthread_join(p->reader, NULL);
    }
    if (p->fd >= 0) {
        close(p->fd);
    }
    free(p->text);
    pthread_cond_destroy(&p->grew);
    pthread_mutex_destroy(&p->lock);
    return status;
}

/* A run that outlives its alarm has hung: say so, and take the demo down with it. */
static void
on_alarm(int sig)
{
    static const char message[] = "FAIL the run finished within its time limit\n";
    if (running_demo > 0) {
        kill(running_demo, SIGKILL);
    }
    if (write(STDOUT_FILENO, message, sizeof(message) - 1) < 0) {
        _exit(3);
    }
    _exit(2);
}

/* ---- calls and their checks -------------------------------------------------------------- */

/*
 * Check the outcome of a call of method (args, kwargs: NULL for none) and print it: the
 * result rendered as text, or the error's type name, must be `expect` (NULL: any
 * success). `who` starts the printed line ("client: bob." for a method). Whether it was.
 */
static bool
check_outcome(selftest *t, const char *who, const char *expect, const char *method,
              tether_value *args, tether_value *kwargs, int r, tether_value *result,
              const tether_error *error)
{
    char *args_text = render(args);
    char *kwargs_text = kwargs ? render(kwargs) : NULL;
    char *result_text = r == 0 ? render(result) : NULL;
    size_t len = args_text ? strlen(args_text) : 0;
    const char *outcome = r == 0 ? result_text : error->type;
    bool ok = expect ? outcome && strcmp(outcome, expect) == 0 : r == 0;
    check(t, ok, "%s%s(%.*s%s%s) %s %s%s%s", who, method, len > 2 ? (int)len - 2 : 0,
          len > 2 ? args_text + 1 : "", kwargs_text ? (len > 2 ? ", **" : "**") : "",
          kwargs_text ? kwargs_text : "", r == 0 ? "=" : "raised",
          outcome ? outcome : tether_strerror(r), r < 0 && error->message ? ": " : "",
          r < 0 && error->message ? error->message : "");
    free(args_text);
    free(kwargs_text);
    free(result_text);
    return ok;
}

/*
 * Call method of the service side of conn, or of obj when not NULL, with prebuilt
 * arguments, and check the outcome (check_outcome). Returns the result, a new
 * reference, or NULL.
 */
static tether_value *
call_check(selftest *t, const char *who, tether_conn *conn, tether_object *obj, const char *expect,
           const char *method, tether_value *args, tether_value *kwargs)
{
    tether_value *result = NULL;
    tether_error error = TETHER_ERROR_INIT;
    tether_call_options options = {.timeout_usec = CALL_TIMEOUT_USEC};
    int r = obj ? tether_object_call_values(obj, method, args, kwargs, &options, &result, &error)
                : tether_conn_call_values(conn, method, args, kwargs, &options, &result, &error);
    bool ok = check_outcome(t, who, expect, method, args, kwargs, r, result, &error);
    tether_error_done(&error);
    if (!ok) {
        result = tether_value_unref(result);
    }
    return result;
}

/* The arguments of a call, from a format listing one item per argument; NULL (and a
 * failed check) if they cannot be built. */
static tether_value *
new_args(selftest *t, const char *format, va_list ap)
{
    char wrapped[64];
    tether_value *args = NULL;
    snprintf(wrapped, sizeof(wrapped), "[%s]", format);
    int r = tether_value_newv(&args, wrapped, ap);
    if (r < 0) {
        check_ok(t, r, "building the arguments");
    }
    return args;
}

/* Build the arguments and call_check(). */
static tether_value *
call_checkv(selftest *t, const char *who, tether_conn *conn, tether_object *obj, const char *expect,
            const char *method, const char *format, va_list ap)
{
    tether_value *args = new_args(t, format, ap);
    tether_value *result = args ? call_check(t, who, conn, obj, expect, method, args, NULL) : NULL;
    tether_value_unref(args);
    return result;
}

/* A call whose result is checked as text (or whose error's type is). */
static void
expect_call(selftest *t, const char *who, tether_conn *conn, tether_object *obj, const char *expect,
            const char *method, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    tether_value_unref(call_checkv(t, who, conn, obj, expect, method, format, ap));
    va_end(ap);
}

/*
 * The host calls this client's service `method` back: asked through the host's
 * tether.call_client(name, method, args), which forwards the call to the client of that
 * name and passes its outcome on, error type included. Checked as expect_call does.
 */
static void
expect_callback(selftest *t, const char *who, tether_conn *conn, const char *expect,
                const char *method, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    tether_value *args = new_args(t, format, ap);
    va_end(ap);
    tether_value *forward = NULL, *result = NULL;
    tether_error error = TETHER_ERROR_INIT;
    tether_call_options options = {.timeout_usec = CALL_TIMEOUT_USEC};
    int r = args ? tether_value_new(&forward, "[ssv]", CLIENT_NAME, method, args) : TETHER_EINVAL;
    if (r == 0) {
        r = tether_conn_call_values(conn, "tether.call_client", forward, NULL, &options, &result,
                                    &error);
        check_outcome(t, who, expect, method, args, NULL, r, result, &error);
    }
    tether_value_unref(args);
    tether_value_unref(forward);
    tether_value_unref(result);
    tether_error_done(&error);
}

/* The Actor a result holds: a proxy, a new reference; NULL (and a failed check) if not. */
static tether_object *
actor_result(selftest *t, tether_value *result, const char *what)
{
    tether_object *obj = NULL;
    if (!result) {
        return NULL;
    }
    int r = tether_value_read(result, NULL, "o", &obj);
    bool ok = r == 0 && obj && tether_object_is_remote(obj) &&
              strcmp(tether_object_get_type_name(obj), "Actor") == 0;
    check(t, ok, "%s is a proxy for an Actor", what);
    tether_value_unref(result);
    if (!ok) {
        obj = tether_object_unref(obj);
    }
    return obj;
}

/* A call that returns an Actor. */
static tether_object *
expect_actor(selftest *t, tether_conn *conn, const char *method, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    tether_value *result = call_checkv(t, "client: ", conn, NULL, NULL, method, format, ap);
    va_end(ap);
    return actor_result(t, result, "the result");
}

/* Call a service without arguments that answers a map, and read it with a format; a
 * failed check if either fails. */
static bool
read_stats(selftest *t, tether_conn *conn, const char *service, const char *format, ...)
{
    tether_value *result = NULL;
    tether_error error = TETHER_ERROR_INIT;
    va_list ap;
    va_start(ap, format);
    int r = tether_conn_call(conn, service, NULL, &result, &error, NULL);
    r = r < 0 ? r : tether_value_readv(result, &error, format, ap);
    va_end(ap);
    if (r < 0) {
        check(t, false, "client: %s(): %s", service,
              error.message ? error.message : tether_strerror(r));
    }
    tether_value_unref(result);
    tether_error_done(&error);
    return r == 0;
}

/* The maps' keys in the order the services write them (see tools/tether-demo.c). */
static bool
read_frame_stats(selftest *t, tether_conn *conn, frame_view *v)
{
    return read_stats(t, conn, "frame_stats", "{*u*d*d*d*d*u*u}", &v->frames, &v->fps,
                      &v->frame_ms_mean, &v->frame_ms_max, &v->dispatch_ms_max, &v->late,
                      &v->calls);
}

static bool
read_scene_stats(selftest *t, tether_conn *conn, scene_view *v)
{
    return read_stats(t, conn, "scene_stats", "{*u*u*u*u}", &v->actors, &v->spawned, &v->deleted,
                      &v->released);
}

/* Wait (polling scene_stats) until the host has released `want` actors. */
static bool
wait_released(selftest *t, tether_conn *conn, uint64_t want)
{
    uint64_t until = tether_now_usec() + RELEASE_WAIT_USEC;
    scene_view v = {0};
    while (read_scene_stats(t, conn, &v) && v.released < want && tether_now_usec() < until) {
        struct timespec nap = {0, 5 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
    return v.released == want;
}

/* ---- the client's session ---------------------------------------------------------------- */

/* The basics: calls the three ways, errors of the call itself. */
static void
client_basics(selftest *t, tether_conn *conn, tether_future **ret_greeting)
{
    const char *me = "client: ";
    tether_call_options options = {.timeout_usec = CALL_TIMEOUT_USEC};
    /* A future and a notification first: the synchronous calls after them are answered
     * only once the host has read both, since a connection's frames are served in order. */
    int r = tether_conn_call_async(conn, "greet", &options, ret_greeting, "s", "self-test");
    check_ok(t, r, "client: greet(\"self-test\") started as a future");
    r = tether_conn_notify(conn, "log", "s", "hello from the self-test client");
    check_ok(t, r, "client: log(\"hello from the self-test client\") notified");
    expect_call(t, me, conn, NULL, "5", "add", "ii", 2, 3);
    expect_call(t, me, conn, NULL, "4.0", "add", "dd", 1.5, 2.5);
    expect_call(t, me, conn, NULL, "{\"list\": [1, 2.5, \"three\"], \"bytes\": b\"\\x00\\xff\"}",
                "echo", "{s[ids]sy}", "list", 1, 2.5, "three", "bytes", "\x00\xff", (size_t)2);
    expect_call(t, me, conn, NULL, "TypeError", "add", "si", "two", 3);
    expect_call(t, me, conn, NULL, "tether.NoSuchService", "no_such_service", "");
}

/* Argument binding: keywords, defaults, and the errors a script can provoke. */
static tether_object *
client_spawns(selftest *t, tether_conn *conn, tether_object **ret_bob)
{
    const char *me = "client: ";
    tether_object *ann = expect_actor(t, conn, "spawn_actor", "s", "Ann");
    tether_value *args = NULL, *kwargs = NULL;
    int r = tether_value_new(&args, "[s]", "Bob");
    r = r < 0 ? r : tether_value_new(&kwargs, "{sdsdss}", "x", 1.5, "y", -2.0, "label", "hero");
    *ret_bob =
        r < 0 ? NULL
              : actor_result(t, call_check(t, me, conn, NULL, NULL, "spawn_actor", args, kwargs),
                             "the result");
    tether_value_unref(args);
    tether_value_unref(kwargs);
    kwargs = NULL;
    expect_call(t, me, conn, NULL, "ValueError", "spawn_actor", "s", "Ann");
    expect_call(t, me, conn, NULL, "ValueError", "spawn_actor", "s", "");
    expect_call(t, me, conn, NULL, "TypeError", "spawn_actor", "i", 42);
    expect_call(t, me, conn, NULL, "TypeError", "spawn_actor", "");
    expect_call(t, me, conn, NULL, "TypeError", "spawn_actor", "sddss", "Cid", 0.0, 0.0, "", "");
    r = tether_value_new(&args, "[s]", "Cid");
    r = r < 0 ? r : tether_value_new(&kwargs, "{si}", "z", 1);
    if (r == 0) {
        tether_value_unref(call_check(t, me, conn, NULL, "TypeError", "spawn_actor", args, kwargs));
    }
    tether_value_unref(args);
    tether_value_unref(kwargs);
    return ann;
}

/* Methods through proxies, and actors passed back to services. */
static void
client_methods(selftest *t, tether_conn *conn, tether_object *ann, tether_object *bob)
{
    const char *me = "client: ";
    expect_call(t, "client: bob.", NULL, bob, "[2.5, -1.0]", "move", "ii", 1, 1);
    expect_call(t, "client: bob.", NULL, bob, "[2.5, -1.0]", "position", "");
    expect_call(t, "client: bob.", NULL, bob, "\"hero\"", "__getattr__", "s", "label");
    expect_call(t, "client: bob.", NULL, bob, "AttributeError", "__getattr__", "s", "speed");
    expect_call(t, "client: bob.", NULL, bob, "\"<Actor 'Bob' at (2.5, -1.0)>\"", "__repr__", "");
    expect_call(t, "client: bob.", NULL, bob, "null", "set_label", "s", "villain");
    expect_call(t, "client: bob.", NULL, bob,
                "{\"name\": \"Bob\", \"x\": 2.5, \"y\": -1.0, \"label\": \"villain\"}", "info", "");
    expect_call(t, "client: bob.", NULL, bob, "TypeError", "move", "si", "far", 1);
    expect_call(t, "client: bob.", NULL, bob, "AttributeError", "fly", "");

    /* A proxy passed back arrives at the host as the actor itself. */
    expect_call(t, me, conn, NULL, "[3.0, -1.0]", "move_actor", "odd", bob, 0.5, 0.0);
    expect_call(t, me, conn, NULL, "[1.0, 2.0]", "move_actor", "sii", "Ann", 1, 2);
    expect_call(t, me, conn, NULL, "KeyError", "move_actor", "sii", "Nobody", 1, 2);
    tether_object *again = expect_actor(t, conn, "get_actor", "s", "Bob");
    check(t, again && tether_object_get_id(again) == tether_object_get_id(bob),
          "get_actor(\"Bob\") names the same object as spawn_actor gave");
    tether_object_unref(again);
    expect_call(t, me, conn, NULL, "KeyError", "get_actor", "s", "Nobody");
    expect_call(t, me, conn, NULL, "null", "rename_actor", "os", ann, "Anna");
    expect_call(t, "client: ann.", NULL, ann, "\"Anna\"", "__getattr__", "s", "name");
    expect_call(t, me, conn, NULL, "ValueError", "rename_actor", "ss", "Anna", "Bob");

    tether_value *list = call_check(t, me, conn, NULL, NULL, "list_actors", NULL, NULL);
    tether_object *first = NULL, *second = NULL;
    int r = list ? tether_value_read(list, NULL, "[oo]", &first, &second) : TETHER_EINVAL;
    check(t,
          r == 0 && tether_object_get_id(first) == tether_object_get_id(ann) &&
              tether_object_get_id(second) == tether_object_get_id(bob),
          "list_actors() holds Anna and Bob, in spawn order");
    tether_object_unref(first);
    tether_object_unref(second);
    tether_value_unref(list);

    tether_value *globals = call_check(t, me, conn, NULL, NULL, "globals", NULL, NULL);
    uint64_t frame = 0;
    double fps = 0;
    first = second = NULL;
    r = globals ? tether_value_read(globals, NULL, "{*[oo]*u*d}", &first, &second, &frame, &fps)
                : TETHER_EINVAL;
    check(t, r == 0 && first && second && frame > 0,
          "globals() holds the two actors, the frame number (%llu) and fps (%.1f)",
          (unsigned long long)frame, fps);
    tether_object_unref(first);
    tether_object_unref(second);
    tether_value_unref(globals);
}

/* Deleting: the actor lives while a proxy does, and is released after the last. */
static void
client_deletes(selftest *t, tether_conn *conn, tether_object **ann, tether_object **bob)
{
    const char *me = "client: ";
    scene_view before = {0}, now = {0};
    read_scene_stats(t, conn, &before);
    expect_call(t, me, conn, NULL, "null", "delete_actor", "s", "Bob");
    expect_call(t, "client: bob.", NULL, *bob, "ReferenceError", "move", "ii", 1, 1);
    expect_call(t, "client: bob.", NULL, *bob, "\"Bob\"", "__getattr__", "s", "name");
    expect_call(t, "client: bob.", NULL, *bob, "false", "__bool__", "");
    expect_call(t, me, conn, NULL, "ReferenceError", "move_actor", "oii", *bob, 1, 1);
    check(t, read_scene_stats(t, conn, &now) && now.released == before.released,
          "Bob is not released while the client holds a proxy");
    *bob = tether_object_unref(*bob);
    check(t, wait_released(t, conn, before.released + 1),
          "Bob is released once the client drops its proxy");

    expect_call(t, "client: ann.", NULL, *ann, "null", "delete", "");
    expect_call(t, me, conn, NULL, "[]", "list_actors", "");
    *ann = tether_object_unref(*ann);
    check(t, wait_released(t, conn, before.released + 2),
          "Anna is released once the client drops its proxy");
}

/* Many calls at once: the frame loop serves them within its budget, frame after frame. */
static void
client_burst(selftest *t, tether_conn *conn)
{
    tether_object *cid = expect_actor(t, conn, "spawn_actor", "s", "Cid");
    tether_future *futures[BURST] = {NULL};
    tether_value *args = NULL;
    tether_call_options options = {.timeout_usec = CALL_TIMEOUT_USEC};
    frame_view before = {0}, after = {0};
    int ok = 0, r = tether_value_new(&args, "[ii]", 1, 0);
    read_frame_stats(t, conn, &before);
    for (int i = 0; r == 0 && cid && i < BURST; i++) {
        r = tether_object_call_async_values(cid, "move", args, NULL, &options, &futures[i]);
    }
    for (int i = 0; i < BURST && futures[i]; i++) {
        if (tether_future_wait(futures[i], 2 * CALL_TIMEOUT_USEC) == 0 &&
            tether_future_get_result(futures[i], NULL, NULL) == 0) {
            ok++;
        }
        tether_future_unref(futures[i]);
    }
    read_frame_stats(t, conn, &after);
    check(t, ok == BURST,
          "%d of %d pipelined cid.move(1, 0) calls succeeded, served within %llu frame%s", ok,
          BURST, (unsigned long long)(after.frames - before.frames + 1),
          after.frames == before.frames ? "" : "s");
    char expect[64];
    snprintf(expect, sizeof(expect), "[%d.0, 0.0]", BURST);
    if (cid) {
        expect_call(t, "client: cid.", NULL, cid, expect, "position", "");
        expect_call(t, "client: ", conn, NULL, "null", "delete_actor", "o", cid);
    }
    tether_object_unref(cid);
    tether_value_unref(args);
}

/*
 * A script that calls the host as fast as it can, one call after another, for half a
 * second: the frame loop must keep its pace, and give scripts no more than its budget.
 */
static void
client_hammers(selftest *t, tether_conn *conn)
{
    frame_view start = {0}, end = {0};
    tether_object *dot = expect_actor(t, conn, "spawn_actor", "s", "Dot");
    tether_value *args = NULL;
    int calls = 0, r = dot && read_frame_stats(t, conn, &start) ? 0 : TETHER_EINVAL;
    r = r < 0 ? r : tether_value_new(&args, "[dd]", 0.001, 0.0);
    uint64_t begin = tether_now_usec(), stop = begin + HAMMER_USEC;
    for (; r == 0 && tether_now_usec() < stop; calls++) {
        r = tether_object_call_values(dot, "move", args, NULL, NULL, NULL, NULL);
    }
    double seconds = (double)(tether_now_usec() - begin) / 1e6;
    check_ok(t, r, "client: dot.move(0.001, 0.0), over and over");
    if (r == 0 && read_frame_stats(t, conn, &end)) {
        uint64_t frames = end.frames - start.frames;
        check(t, (double)frames >= seconds * DEMO_FPS * 3 / 4,
              "the loop kept running while the client called it %d times in %.2f s: %llu frames",
              calls, seconds, (unsigned long long)frames);
        check(t, end.fps > 30 && end.fps < 90 && end.frame_ms_mean > 10 && end.frame_ms_mean < 33,
              "frame_stats(): fps %.1f, frame mean %.2f ms, max %.2f ms, %llu late of %llu",
              end.fps, end.frame_ms_mean, end.frame_ms_max, (unsigned long long)end.late,
              (unsigned long long)end.frames);
        /* The budget is 2 ms plus the item running when it ran out; a stall would be
         * frames long. */
        check(t, end.dispatch_ms_max < 3 * DEMO_FRAME_USEC / 1000.0,
              "no frame spent 3 frames' time serving scripts (the most was %.2f ms)",
              end.dispatch_ms_max);
    }
    if (dot) {
        expect_call(t, "client: ", conn, NULL, "null", "delete_actor", "o", dot);
    }
    tether_object_unref(dot);
    tether_value_unref(args);
}

static void
client_session(selftest *t, tether_conn *conn, tether_object **ret_ghost)
{
    tether_future *greeting = NULL;
    tether_object *bob = NULL;
    client_basics(t, conn, &greeting);
    tether_object *ann = client_spawns(t, conn, &bob);
    if (ann && bob) {
        client_methods(t, conn, ann, bob);
        client_deletes(t, conn, &ann, &bob);
    }
    tether_object_unref(ann);
    tether_object_unref(bob);
    client_burst(t, conn);
    client_hammers(t, conn);
    /* An actor deleted while the client still holds it: released when the client leaves. */
    *ret_ghost = expect_actor(t, conn, "spawn_actor", "s", "Ghost");
    expect_call(t, "client: ", conn, NULL, "null", "delete_actor", "s", "Ghost");

    tether_value *text = NULL;
    int r = greeting ? tether_future_wait(greeting, 2 * CALL_TIMEOUT_USEC) : TETHER_EINVAL;
    r = r < 0 ? r : tether_future_get_result(greeting, &text, NULL);
    char *shown = r == 0 ? render(text) : NULL;
    check(t, shown && strcmp(shown, "\"Hello, self-test!\"") == 0,
          "client: the future of greet(\"self-test\") = %s", shown ? shown : tether_strerror(r));
    free(shown);
    tether_value_unref(text);
    tether_future_unref(greeting);
}

/* The log notification of client_basics, as the demo prints it: "[NAME] message". */
static void
check_logged(selftest *t)
{
    const char *line = "[" CLIENT_NAME "] hello from the self-test client";
    bool printed = demo_wait_for(&t->demo, line, OUTPUT_WAIT_USEC);
    int count = demo_count(&t->demo, line);
    check(t, printed && count == 1, "the host received the log notification (%d)", count);
}

/* ---- the client's services, which the host calls back ------------------------------------ */

static int
serve_square(tether_request *req, void *userdata)
{
    int x;
    int r = tether_request_read(req, "i", &x);
    return r < 0 ? r : tether_request_reply(req, "x", (int64_t)x * x);
}

static int
serve_upper(tether_request *req, void *userdata)
{
    const char *text;
    char upper[256];
    int r = tether_request_read(req, "s", &text);
    if (r < 0) {
        return r;
    }
    size_t i = 0;
    for (; text && text[i] && i < sizeof(upper) - 1; i++) {
        upper[i] = text[i] >= 'a' && text[i] <= 'z' ? (char)(text[i] - 'a' + 'A') : text[i];
    }
    upper[i] = '\0';
    return tether_request_reply(req, "s", upper);
}

/* add_via_host(a, b): asks the host's add, a MAIN service, while the host waits for this
 * very call. An IO handler must not wait, so it keeps the request and replies from the
 * callback of an asynchronous call. */
static void
relay_reply(tether_future *future, void *userdata)
{
    tether_request *req = userdata;
    tether_value *result = NULL;
    tether_error error = TETHER_ERROR_INIT;
    if (tether_future_get_result(future, &result, &error) == 0) {
        tether_request_reply_value(req, result);
    } else {
        tether_request_reply_error_full(req, &error); /* type, message and traceback */
    }
    tether_value_unref(result);
    tether_error_done(&error);
    tether_request_unref(req);
}

static int
serve_add_via_host(tether_request *req, void *userdata)
{
    tether_call_options options = {.timeout_usec = CALL_TIMEOUT_USEC};
    tether_future *future = NULL;
    int a, b;
    int r = tether_request_read(req, "ii", &a, &b);
    if (r == 0) {
        r = tether_conn_call_async(tether_request_get_conn(req), "add", &options, &future, "ii", a,
                                   b);
    }
    if (r == 0) {
        r = tether_future_set_callback(future, TETHER_CONTEXT_IO, relay_reply,
                                       tether_request_ref(req));
        tether_future_unref(future);
    }
    return r;
}

static int
serve_note(tether_request *req, void *userdata)
{
    selftest *t = userdata;
    atomic_fetch_add(&t->client_notes, 1);
    return 0;
}

/* The host calls its client back, the three ways, and once through a call-back. */
static void
host_calls(selftest *t, tether_conn *conn)
{
    const char *me = "host -> client: ";
    tether_value *clients = NULL;
    int r = tether_conn_call(conn, "tether.clients", NULL, &clients, NULL, NULL);
    char *listed = r == 0 ? render(clients) : NULL;
    char entry[128];
    snprintf(entry, sizeof(entry), "{\"name\": \"%s\", \"pid\": %lld,", CLIENT_NAME,
             (long long)getpid());
    check(t, listed && strstr(listed, entry),
          "the host finds its client by name: tether.clients() lists %s ...}", entry);
    free(listed);
    tether_value_unref(clients);

    tether_call_options options = {.timeout_usec = CALL_TIMEOUT_USEC};
    tether_future *future = NULL;
    r = tether_conn_call_async(conn, "tether.call_client", &options, &future, "ss[s]", CLIENT_NAME,
                               "upper", "tether");
    check_ok(t, r, "host -> client: upper(\"tether\") started as a future");
    r = tether_conn_notify(conn, "tether.call_client", "ss[s]", CLIENT_NAME, "note",
                           "from the host");
    check_ok(t, r, "host -> client: note(\"from the host\") notified");
    expect_callback(t, me, conn, "144", "square", "i", 12);
    expect_callback(t, me, conn, "TypeError", "square", "s", "twelve");
    /* The client answers this one by calling the host's add, a MAIN service, which the
     * host's frame loop serves while the forwarded call waits for the client. */
    expect_callback(t, "host -> client -> host: ", conn, "42", "add_via_host", "ii", 20, 22);
    tether_value *text = NULL;
    r = future ? tether_future_wait(future, 2 * CALL_TIMEOUT_USEC) : TETHER_EINVAL;
    r = r < 0 ? r : tether_future_get_result(future, &text, NULL);
    char *shown = r == 0 ? render(text) : NULL;
    check(t, shown && strcmp(shown, "\"TETHER\"") == 0,
          "host -> client: the future of upper(\"tether\") = %s",
          shown ? shown : tether_strerror(r));
    free(shown);
    tether_value_unref(text);
    tether_future_unref(future);
    /* Forwarded in order with the calls above, so it has arrived by now. */
    check(t, atomic_load(&t->client_notes) == 1, "the client received the notification (%d)",
          atomic_load(&t->client_notes));
}

/* Warnings and errors of the library, on the client's side. */
static void
client_log(void *userdata, int level, const char *message)
{
    say("client: %s: %s", level <= TETHER_LOG_ERROR ? "error" : "warning", message);
}

/* A client of the demo with this program's log; its services are added by the caller. */
static tether_client *
new_client(selftest *t, const char *name)
{
    tether_client_options options = {
        .name = name,
        .address = t->address,
        .log = client_log,
        .log_level = TETHER_LOG_WARNING,
    };
    tether_client *client = NULL;
    int r = tether_client_new(&options, &client);
    if (r < 0) {
        check_ok(t, r, "making a client");
    }
    return client;
}

static int
connect_client(selftest *t, tether_client *client, const char *who)
{
    tether_error error = TETHER_ERROR_INIT;
    int r = client ? tether_client_connect(client, &error) : TETHER_EINVAL;
    check(t, r == 0, "%s connects to %s%s%s", who, t->address, r ? ": " : "",
          r ? (error.message ? error.message : tether_strerror(r)) : "");
    tether_error_done(&error);
    return r;
}

/*
 * Once the client has left, still holding the deleted Ghost, its proxy is gone with the
 * connection: every deleted actor must then be released. Seen from a second client.
 */
static void
check_all_released(selftest *t)
{
    tether_client *observer = new_client(t, OBSERVER_NAME);
    if (observer && connect_client(t, observer, "an observer") == 0) {
        tether_conn *conn = tether_client_get_conn(observer);
        uint64_t until = tether_now_usec() + RELEASE_WAIT_USEC;
        scene_view v = {0};
        while (read_scene_stats(t, conn, &v) && v.released < v.deleted &&
               tether_now_usec() < until) {
            struct timespec nap = {0, 5 * 1000 * 1000};
            nanosleep(&nap, NULL);
        }
        check(t, v.deleted > 0 && v.released == v.deleted,
              "every deleted actor was released, the last when its client left (%llu of %llu)",
              (unsigned long long)v.released, (unsigned long long)v.deleted);
    }
    tether_client_close(observer);
    tether_client_unref(observer);
}

/* The client's part: its session, the host's calls back, then it leaves. */
static void
work_the_demo(selftest *t)
{
    tether_client *client = new_client(t, CLIENT_NAME);
    tether_object *ghost = NULL;
    if (!client) {
        return;
    }
    int r = tether_client_add_service(client, "square", TETHER_CONTEXT_IO, serve_square, t);
    r = r < 0 ? r : tether_client_add_service(client, "upper", TETHER_CONTEXT_IO, serve_upper, t);
    r = r < 0 ? r : tether_client_add_service(client, "note", TETHER_CONTEXT_IO, serve_note, t);
    r = r < 0 ? r
              : tether_client_add_service(client, "add_via_host", TETHER_CONTEXT_IO,
                                          serve_add_via_host, t);
    if (r < 0) {
        check_ok(t, r, "the client offers its services");
    } else if (connect_client(t, client, "the client") == 0) {
        tether_conn *conn = tether_client_get_conn(client);
        client_session(t, conn, &ghost);
        check_logged(t);
        host_calls(t, conn);
    }
    /* Leave, still holding the Ghost. */
    tether_client_close(client);
    tether_object_unref(ghost);
    tether_client_unref(client);
    if (r == 0) {
        check_all_released(t);
    }
}

/* ---- actor events: a watcher subscribes and is told ------------------------------------- */

#define WATCHER_NAME "test-demo-watcher"
#define SCENER_NAME "test-demo-scener"

/* What the watcher's on_actor_event received: "EVENT NAME" lines for all but ticks, and the
 * ticks of the actor named "Watched". */
typedef struct watcher_log {
    pthread_mutex_t lock;
    pthread_cond_t grew;
    char text[4096];
    size_t len;
    unsigned ticks;
    uint64_t last_tick_frame;
    bool ticks_consecutive; /* with every=1, each tick one frame after the one before */
} watcher_log;

/* on_actor_event(event, info), on the I/O thread. info's keys come in the order the demo
 * writes them: id, name, x, y, label, frame, and for "spawned" actor and existing. */
static int
serve_on_actor_event(tether_request *req, void *userdata)
{
    watcher_log *w = userdata;
    const char *event = NULL, *name = "";
    tether_value *info = NULL;
    uint64_t id = 0, frame = 0;
    int r = tether_request_read(req, "sv", &event, &info);
    if (r < 0) {
        return r;
    }
    if (strcmp(event, "subscribed") != 0 &&
        tether_value_read(info, NULL, "{*u*s*******u}", &id, &name, &frame) < 0 &&
        tether_value_read(info, NULL, "{*u*s*******u****}", &id, &name, &frame) < 0) {
        name = "?";
    }
    pthread_mutex_lock(&w->lock);
    if (strcmp(event, "ticked") == 0) {
        if (strcmp(name, "Watched") == 0) {
            w->ticks_consecutive &= w->ticks == 0 || frame == w->last_tick_frame + 1;
            w->last_tick_frame = frame;
            w->ticks++;
        }
    } else if (w->len < sizeof(w->text)) {
        w->len += (size_t)snprintf(w->text + w->len, sizeof(w->text) - w->len, "%s%s%s\n", event,
                                   *name ? " " : "", name);
        w->len = w->len < sizeof(w->text) ? w->len : sizeof(w->text);
    }
    pthread_cond_broadcast(&w->grew);
    pthread_mutex_unlock(&w->lock);
    tether_value_unref(info);
    return tether_request_reply(req, NULL);
}

/* Wait until the watcher has received the line, or `ticks` ticks of Watched. */
static bool
watcher_wait(watcher_log *w, const char *line, unsigned ticks)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += OUTPUT_WAIT_USEC / 1000000;
    pthread_mutex_lock(&w->lock);
    bool seen;
    while (!(seen = line ? strstr(w->text, line) != NULL : w->ticks >= ticks) &&
           pthread_cond_timedwait(&w->grew, &w->lock, &until) == 0) {
    }
    pthread_mutex_unlock(&w->lock);
    return seen;
}

static tether_client *
new_watcher(selftest *t, watcher_log *w)
{
    tether_client *watcher = new_client(t, WATCHER_NAME);
    int r = watcher ? tether_client_add_service(watcher, "on_actor_event", TETHER_CONTEXT_IO,
                                                serve_on_actor_event, w)
                    : TETHER_ENOMEM;
    if (r < 0) {
        check_ok(t, r, "the watcher offers on_actor_event");
    } else if (connect_client(t, watcher, "the watcher") == 0) {
        return watcher;
    }
    tether_client_unref(watcher);
    return NULL;
}

/*
 * A client subscribes to the actors' events: told of an actor spawned, of its ticks (one a
 * frame, with every=1) and of its deletion; a missing service is refused. It leaves and
 * comes back (the same process and name, as after a reset): told what it missed.
 */
static void
watch_the_demo(selftest *t)
{
    watcher_log w = {.ticks_consecutive = true};
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.grew, NULL);
    tether_client *scener = new_client(t, SCENER_NAME);
    tether_client *watcher = NULL;
    if (scener && connect_client(t, scener, "a second client") == 0 &&
        (watcher = new_watcher(t, &w))) {
        tether_conn *conn = tether_client_get_conn(watcher);
        tether_conn *scene = tether_client_get_conn(scener);
        const char *me = "watcher: ";
        expect_call(t, me, conn, NULL, "ValueError", "subscribe_actor_events", "s", "nope");
        expect_call(t, me, conn, NULL, "ValueError", "subscribe_actor_events", "si",
                    "on_actor_event", -1);
        expect_call(t, me, conn, NULL, NULL, "subscribe_actor_events", "si", "on_actor_event", 1);
        check(t, watcher_wait(&w, "subscribed\n", 0), "the watcher was called: subscribed");
        expect_call(t, "client: ", scene, NULL, NULL, "spawn_actor", "s", "Watched");
        check(t, watcher_wait(&w, "spawned Watched\n", 0), "the watcher was told: spawned");
        bool ticked = watcher_wait(&w, NULL, 10);
        pthread_mutex_lock(&w.lock);
        unsigned ticks = w.ticks;
        bool consecutive = w.ticks_consecutive;
        pthread_mutex_unlock(&w.lock);
        check(t, ticked && consecutive,
              "the watcher was told of 10 ticks of Watched, one a frame (%u, %s)", ticks,
              consecutive ? "consecutive" : "not consecutive");
        expect_call(t, "client: ", scene, NULL, "null", "delete_actor", "s", "Watched");
        check(t, watcher_wait(&w, "destroyed Watched\n", 0), "the watcher was told: destroyed");

        /* Away and back: what happened meanwhile is told, without subscribing again. */
        expect_call(t, "client: ", scene, NULL, NULL, "spawn_actor", "s", "Known");
        check(t, watcher_wait(&w, "spawned Known\n", 0), "the watcher was told: spawned Known");
        /* Its "left" line, not the "connected" one, which a looser pattern would find at
         * once: what follows must happen while the host knows it is away. */
        char left[96];
        snprintf(left, sizeof(left), "client '" WATCHER_NAME "' (pid %lld) left",
                 (long long)getpid());
        int left_before = demo_count(&t->demo, left);
        tether_client_close(watcher);
        watcher = tether_client_unref(watcher);
        bool gone = false;
        for (uint64_t waited = 0; !gone && waited < OUTPUT_WAIT_USEC; waited += 10000) {
            gone = demo_count(&t->demo, left) > left_before;
            if (!gone) {
                usleep(10000);
            }
        }
        check(t, gone, "the watcher left");
        expect_call(t, "client: ", scene, NULL, "null", "delete_actor", "s", "Known");
        expect_call(t, "client: ", scene, NULL, NULL, "spawn_actor", "s", "Brief");
        expect_call(t, "client: ", scene, NULL, "null", "delete_actor", "s", "Brief");
        expect_call(t, "client: ", scene, NULL, NULL, "spawn_actor", "s", "Later");
        watcher = new_watcher(t, &w);
        check(t, watcher && watcher_wait(&w, "destroyed Known\nspawned Later\n", 0),
              "the watcher, back, was told of the actors destroyed and spawned while it was "
              "away");
        check(t,
              demo_wait_for(&t->demo,
                            "actor events to '" WATCHER_NAME
                            "' go on after its reconnection (4 missed)",
                            OUTPUT_WAIT_USEC),
              "the host says the subscription goes on, 4 events missed");
        expect_call(t, "client: ", scene, NULL, "null", "delete_actor", "s", "Later");
        check(t, watcher_wait(&w, "destroyed Later\n", 0), "and of its deletion after");
        pthread_mutex_lock(&w.lock);
        bool brief = strstr(w.text, "Brief") != NULL;
        pthread_mutex_unlock(&w.lock);
        check(t, !brief, "nor of an actor spawned and destroyed while it was away");
    }
    /* Leave subscribed: the host ends it when it stops, or after its wait. */
    tether_client_close(watcher);
    tether_client_unref(watcher);
    tether_client_close(scener);
    tether_client_unref(scener);
    pthread_cond_destroy(&w.grew);
    pthread_mutex_destroy(&w.lock);
}

/* ---- runs -------------------------------------------------------------------------------- */

/* Whether the options make the demo listen on TCP (and print that address last). */
static bool
wants_tcp(char *const *options, int count)
{
    for (int i = 0; i < count; i++) {
        if (strncmp(options[i], "--tcp", 5) == 0 || strncmp(options[i], "--port", 6) == 0) {
            return true;
        }
    }
    return false;
}

/*
 * One run: start the demo with these options (after ours, so that they win), work it,
 * stop it. Adds its checks and failures to *checks and *failures.
 */
static void
run(const char *demo_path, char *const *options, int count, int *checks, int *failures)
{
    selftest t = {0};
    char name[64];
    char **argv = calloc((size_t)count + 7, sizeof(*argv));
    int argc = 0;
    if (!argv) {
        say("FAIL out of memory");
        (*failures)++;
        return;
    }
    snprintf(name, sizeof(name), "test-demo-%lld", (long long)getpid());
    argv[argc++] = (char *)demo_path;
    argv[argc++] = "--quiet";
    argv[argc++] = "--name";
    argv[argc++] = name;
    argv[argc++] = "--seconds";
    argv[argc++] = "60";
    for (int i = 0; i < count; i++) {
        argv[argc++] = options[i];
    }
    argv[argc] = NULL;

    flockfile(stdout);
    printf("==");
    for (int i = 0; i < argc; i++) {
        printf(" %s", argv[i]);
    }
    printf("\n");
    funlockfile(stdout);

    alarm(RUN_ALARM_SECONDS);
    bool started = demo_start(&t.demo, argv);
    bool ready = started && demo_wait_for(&t.demo, READY_TEXT, START_WAIT_USEC) &&
                 demo_address(&t.demo, t.address, sizeof(t.address));
    bool tcp = strncmp(t.address, "tcp:", 4) == 0;
    check(&t, ready && tcp == wants_tcp(options, count),
          "tether-demo starts and prints the address to use: %s",
          t.address[0] ? t.address : "none");
    if (ready) {
        work_the_demo(&t);
        watch_the_demo(&t);
    }
    int status = demo_stop(&t.demo);
    check(&t, status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "tether-demo exits 0 on SIGTERM (wait status %d)", status);
    alarm(0);
    say("%s: %d of %d checks failed", t.failures ? "FAILED" : "passed", t.failures, t.checks);
    free(argv);
    *checks += t.checks;
    *failures += t.failures;
}

/* build/tether-demo: in $TETHER_BUILD_DIR, else in this program's directory. */
static bool
find_demo(char *path, size_t size)
{
    const char *dir = getenv("TETHER_BUILD_DIR");
    char exe[PATH_MAX];
    snprintf(path, size, "tether-demo");
    if (!dir || !*dir) {
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        char *slash = n > 0 ? memrchr(exe, '/', (size_t)n) : NULL;
        if (!slash) {
            return false;
        }
        *slash = '\0';
        dir = exe;
    }
    snprintf(path, size, "%s/tether-demo", dir);
    return access(path, X_OK) == 0;
}

int
main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    char demo_path[PATH_MAX + 16];
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("usage: test-demo [TETHER-DEMO OPTIONS...]\n"
               "Starts build/tether-demo ($TETHER_BUILD_DIR) and works its scene as a client;\n"
               "without options three runs (Unix socket, --tcp 0, --port 0), with options one.\n"
               "Exit status 0 when every check passed.\n");
        return 0;
    }
    if (!find_demo(demo_path, sizeof(demo_path))) {
        fprintf(stderr, "test-demo: no tether-demo at %s (set TETHER_BUILD_DIR)\n", demo_path);
        return 1;
    }
    signal(SIGALRM, on_alarm);

    /* Without options: the Unix socket, and TCP on a free port given both ways. */
    static char *tcp_zero[] = {"--tcp", "0"}, *port_zero[] = {"--port", "0"};
    int checks = 0, failures = 0, runs = 0;
    if (argc > 1) {
        run(demo_path, argv + 1, argc - 1, &checks, &failures);
        runs = 1;
    } else {
        run(demo_path, NULL, 0, &checks, &failures);
        run(demo_path, tcp_zero, 2, &checks, &failures);
        run(demo_path, port_zero, 2, &checks, &failures);
        runs = 3;
    }
    if (failures) {
        say("self-test FAILED: %d of %d checks in %d run%s", failures, checks, runs,
            runs == 1 ? "" : "s");
        return 1;
    }
    say("self-test passed: %d checks in %d run%s", checks, runs, runs == 1 ? "" : "s");
    return 0;
}
