/*
 * tether-demo: a small engine-like host to try tether with, until the full demo arrives.
 *
 * It serves add, echo, greet, log and time on a Unix socket (and loopback TCP with
 * --tcp), and prints a timestamped line for every client that arrives or leaves (the
 * library's log callback at INFO level) and for every call it serves. Without --once it
 * runs until SIGINT or SIGTERM (or --seconds) and prints how to connect a client.
 *
 * Like an engine, its main thread runs a frame loop, and the services that stand for
 * engine APIs (add, greet, log, time) are TETHER_CONTEXT_MAIN: they run on the main
 * thread, inside the tether_host_dispatch() call of each frame, so they could touch
 * engine state without locks. echo is TETHER_CONTEXT_IO, the fast path: it runs on the
 * library's I/O thread as soon as its request is read, and so must never block.
 *
 * --once runs a bounded self-test instead: a client on a thread of this process
 * connects, calls the host's services the three ways (synchronous, future,
 * notification), and the host calls services of the client back the same ways,
 * including a call that the client answers by calling back into the waiting main
 * thread. The exit status is 0 when every check passed. The client lives in this
 * process to keep the test self-contained; it still talks to the host through the
 * socket.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <tether.h>

#define SELFTEST_CLIENT "tether-demo-selftest"
#define SELFTEST_CALL_TIMEOUT_USEC (5ull * 1000 * 1000)
/* A frame of the main loop (60 per second) and the time each may spend on tether work. */
#define FRAME_MS 16
#define DISPATCH_BUDGET_USEC 2000
/* Wall-clock bound of --once: a hang in the library must fail the run, not stall it. */
#define SELFTEST_ALARM_SECONDS 30

typedef struct demo_options {
    const char *name;
    bool tcp;
    int tcp_port; /* as in tether_host_options */
    long seconds; /* 0: until a signal */
    bool once;
} demo_options;

/* What the host's handlers count: for the self-test and the summary at exit. */
typedef struct demo_stats {
    atomic_int calls;
    atomic_int logs;
    long frames; /* main thread only */
} demo_stats;

/* ---- output ---------------------------------------------------------------------------- */

/* Print one line prefixed with the local time. Called from the main, I/O and self-test
 * client threads: the stream lock keeps each line whole. */
static void say(const char *format, ...) TETHER_PRINTF(1, 2);

static void
say(const char *format, ...)
{
    struct timespec now;
    struct tm tm;
    char stamp[16];
    clock_gettime(CLOCK_REALTIME, &now);
    localtime_r(&now.tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%H:%M:%S", &tm);
    va_list ap;
    va_start(ap, format);
    flockfile(stdout);
    printf("%s.%03ld  ", stamp, now.tv_nsec / 1000000);
    vprintf(format, ap);
    putchar('\n');
    funlockfile(stdout);
    va_end(ap);
}

static void
on_log(void *userdata, int level, const char *message)
{
    const char *prefix = userdata ? userdata : "";
    if (level <= TETHER_LOG_WARNING) {
        say("%s%s: %s", prefix, level <= TETHER_LOG_ERROR ? "error" : "warning", message);
    } else {
        say("%s%s", prefix, message);
    }
}

/* The value as text (JSON-like), newly allocated; NULL when out of memory. */
static char *
render(tether_value *value)
{
    char *text = NULL;
    if (!value || tether_value_to_string(value, &text) < 0) {
        return NULL;
    }
    return text;
}

/* Print "PEER calls METHOD(ARGS) -> OUTCOME" for a request being served. */
static void
print_call(tether_request *req, const char *outcome)
{
    char *args = render(tether_request_get_args(req));
    size_t len = args ? strlen(args) : 0;
    bool notification = tether_request_is_notification(req);
    /* The arguments render as "[...]": drop the brackets to print method(args). */
    say("%s %s %s(%.*s)%s%s", tether_conn_get_peer_name(tether_request_get_conn(req)),
        notification ? "notifies" : "calls", tether_request_get_method(req),
        len >= 2 ? (int)len - 2 : 0, len >= 2 ? args + 1 : "", notification ? "" : " -> ",
        notification ? "" : outcome);
    free(args);
}

/* Reply with result (consumed) and print the call. */
static int
reply(tether_request *req, tether_value *result)
{
    char *text = render(result);
    print_call(req, text ? text : "?");
    free(text);
    int r = tether_request_reply_value(req, result);
    tether_value_unref(result);
    return r;
}

/* A failed tether_request_read(): print it and return its code, so that the library
 * replies the reader's TypeError. */
static int
bad_arguments(tether_request *req, int r)
{
    print_call(req, "TypeError (bad arguments)");
    return r;
}

/* ---- the host's services --------------------------------------------------------------- */

/* add(a, b): integers, or numbers as floats. */
static int
serve_add(tether_request *req, void *userdata)
{
    demo_stats *stats = userdata;
    atomic_fetch_add(&stats->calls, 1);
    tether_value *result = NULL;
    int64_t a, b;
    double x, y;
    int r;
    if (tether_request_read(req, "xx", &a, &b) == 0) {
        if ((b > 0 && a > INT64_MAX - b) || (b < 0 && a < INT64_MIN - b)) {
            print_call(req, "OverflowError");
            return tether_request_reply_error(req, "OverflowError", "integer overflow");
        }
        r = tether_value_new(&result, "x", a + b);
    } else if ((r = tether_request_read(req, "dd", &x, &y)) == 0) {
        r = tether_value_new(&result, "d", x + y);
    } else {
        return bad_arguments(req, r);
    }
    return r < 0 ? r : reply(req, result);
}

/* echo(value): the value itself, whatever it is. */
static int
serve_echo(tether_request *req, void *userdata)
{
    demo_stats *stats = userdata;
    atomic_fetch_add(&stats->calls, 1);
    tether_value *value = NULL;
    int r = tether_request_read(req, "v", &value);
    return r < 0 ? bad_arguments(req, r) : reply(req, value);
}

/* greet(name): "Hello, NAME!", for examples/hello_client.c. */
static int
serve_greet(tether_request *req, void *userdata)
{
    demo_stats *stats = userdata;
    atomic_fetch_add(&stats->calls, 1);
    const char *name;
    char text[256];
    tether_value *result = NULL;
    int r = tether_request_read(req, "s", &name);
    if (r < 0) {
        return bad_arguments(req, r);
    }
    snprintf(text, sizeof(text), "Hello, %s!", name ? name : "stranger");
    r = tether_value_new(&result, "s", text);
    return r < 0 ? r : reply(req, result);
}

/* log(message): meant as a notification; prints the message. */
static int
serve_log(tether_request *req, void *userdata)
{
    demo_stats *stats = userdata;
    atomic_fetch_add(&stats->calls, 1);
    const char *message;
    int r = tether_request_read(req, "s", &message);
    if (r < 0) {
        return bad_arguments(req, r);
    }
    atomic_fetch_add(&stats->logs, 1);
    say("%s says: %s", tether_conn_get_peer_name(tether_request_get_conn(req)),
        message ? message : "(nil)");
    return 0; /* replies nil to a call; a notification gets nothing */
}

/* time(): seconds since the Unix epoch, as a float. */
static int
serve_time(tether_request *req, void *userdata)
{
    demo_stats *stats = userdata;
    atomic_fetch_add(&stats->calls, 1);
    struct timespec now;
    tether_value *result = NULL;
    int r = tether_request_read(req, "");
    if (r < 0) {
        return bad_arguments(req, r);
    }
    clock_gettime(CLOCK_REALTIME, &now);
    r = tether_value_new(&result, "d", (double)now.tv_sec + now.tv_nsec / 1e9);
    return r < 0 ? r : reply(req, result);
}

static int
add_services(tether_host *host, demo_stats *stats)
{
    static const struct {
        const char *name;
        tether_context context;
        tether_handler_fn handler;
    } services[] = {
        {"add", TETHER_CONTEXT_MAIN, serve_add},     {"echo", TETHER_CONTEXT_IO, serve_echo},
        {"greet", TETHER_CONTEXT_MAIN, serve_greet}, {"log", TETHER_CONTEXT_MAIN, serve_log},
        {"time", TETHER_CONTEXT_MAIN, serve_time},
    };
    for (size_t i = 0; i < sizeof(services) / sizeof(services[0]); i++) {
        int r = tether_host_add_service(host, services[i].name, services[i].context,
                                        services[i].handler, stats);
        if (r < 0) {
            return r;
        }
    }
    return 0;
}

/* ---- the main loop --------------------------------------------------------------------- */

/* Called once per frame on the main thread; returns true to end the loop. */
typedef bool (*frame_fn)(void *arg);

/*
 * The engine's frame loop: sleep until main-thread work is queued or the next frame is
 * due, run the queued work within a budget, then see whether to stop (a signal, the
 * time limit, or frame()). Returns 0, or 1 if dispatching failed.
 */
static int
run_frames(tether_host *host, demo_stats *stats, const sigset_t *signals, long seconds,
           frame_fn frame, void *arg)
{
    uint64_t stop_usec = seconds > 0 ? tether_now_usec() + (uint64_t)seconds * 1000000 : 0;
    struct pollfd pfd = {.fd = tether_host_get_fd(host), .events = POLLIN};
    const struct timespec no_wait = {0, 0};
    for (;;) {
        /* An engine would simulate and render here. The fd is readable while MAIN work
         * is queued, so a call is served without waiting for the frame to end. */
        poll(&pfd, 1, FRAME_MS);
        stats->frames++;
        int r = tether_host_dispatch(host, DISPATCH_BUDGET_USEC);
        if (r < 0) {
            say("dispatch failed: %s", tether_strerror(r));
            return 1;
        }
        int sig = sigtimedwait(signals, NULL, &no_wait);
        if (sig == SIGINT || sig == SIGTERM) {
            say("stopping (%s)", sig == SIGINT ? "SIGINT" : "SIGTERM");
            return 0;
        }
        if (stop_usec && tether_now_usec() >= stop_usec) {
            say("stopping after %ld seconds", seconds);
            return 0;
        }
        if (frame && frame(arg)) {
            return 0;
        }
    }
}

/* ---- the self-test (--once) ------------------------------------------------------------ */

typedef struct selftest {
    tether_host *host;
    demo_stats *stats;
    char address[300];  /* where the client connects */
    sem_t client_ready; /* the client made its calls (or gave up) */
    sem_t host_done;    /* the host made its calls back */
    bool host_called;   /* main thread only */
    atomic_bool client_finished;
    atomic_int checks;
    atomic_int failures;
    atomic_int client_notes; /* notifications the client received */
} selftest;

static void check(selftest *t, bool ok, const char *format, ...) TETHER_PRINTF(3, 4);

static void
check(selftest *t, bool ok, const char *format, ...)
{
    char line[600];
    va_list ap;
    va_start(ap, format);
    vsnprintf(line, sizeof(line), format, ap);
    va_end(ap);
    atomic_fetch_add(&t->checks, 1);
    if (!ok) {
        atomic_fetch_add(&t->failures, 1);
    }
    say("%s %s", ok ? "ok  " : "FAIL", line);
}

/* Check that a step returned 0; say why when it did not. */
static void
check_ok(selftest *t, int r, const char *what)
{
    check(t, r == 0, "%s%s%s", what, r ? ": " : "", r ? tether_strerror(r) : "");
}

/*
 * Call method synchronously with the arguments the format builds (one item each) and
 * check the outcome: the result rendered as text, or the error's type name.
 */
static void
expect_call(selftest *t, tether_conn *conn, const char *who, const char *expect, const char *method,
            const char *format, ...)
{
    char wrapped[64];
    tether_value *args = NULL, *result = NULL;
    tether_error error = TETHER_ERROR_INIT;
    tether_call_options options = {.timeout_usec = SELFTEST_CALL_TIMEOUT_USEC};
    va_list ap;
    snprintf(wrapped, sizeof(wrapped), "[%s]", format);
    va_start(ap, format);
    int r = tether_value_newv(&args, wrapped, ap);
    va_end(ap);
    if (r == 0) {
        r = tether_conn_call_values(conn, method, args, NULL, &options, &result, &error);
    }
    char *args_text = render(args);
    char *result_text = r == 0 ? render(result) : NULL;
    size_t len = args_text ? strlen(args_text) : 0;
    const char *outcome = r == 0 ? result_text : error.type;
    check(t, outcome && strcmp(outcome, expect) == 0, "%s %s(%.*s) %s %s%s%s", who, method,
          len >= 2 ? (int)len - 2 : 0, len >= 2 ? args_text + 1 : "", r == 0 ? "=" : "raised",
          outcome ? outcome : tether_strerror(r), r < 0 && error.message ? ": " : "",
          r < 0 && error.message ? error.message : "");
    free(args_text);
    free(result_text);
    tether_value_unref(args);
    tether_value_unref(result);
    tether_error_done(&error);
}

/* Wait for a future and check its result rendered as text. */
static void
expect_future(selftest *t, tether_future *future, const char *what, const char *expect)
{
    tether_value *result = NULL;
    tether_error error = TETHER_ERROR_INIT;
    int r = tether_future_wait(future, 2 * SELFTEST_CALL_TIMEOUT_USEC);
    if (r == 0) {
        r = tether_future_get_result(future, &result, &error);
    }
    char *text = r == 0 ? render(result) : NULL;
    check(t, text && strcmp(text, expect) == 0, "%s = %s", what,
          text            ? text
          : error.message ? error.message
                          : tether_strerror(r));
    free(text);
    tether_value_unref(result);
    tether_error_done(&error);
}

/* The client's services, which the host calls back. */
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

/* add_via_host(a, b): asks the host's add, which is what the host's main thread runs
 * while it waits for this very call. An IO handler must not wait, so it keeps the
 * request and replies from the callback of an asynchronous call. */
static void
relay_reply(tether_future *future, void *userdata)
{
    tether_request *req = userdata;
    tether_value *result = NULL;
    tether_error error = TETHER_ERROR_INIT;
    if (tether_future_get_result(future, &result, &error) == 0) {
        tether_request_reply_value(req, result);
    } else {
        tether_request_reply_error(req, error.type ? error.type : "tether.Error", "%s",
                                   error.message ? error.message : "");
    }
    tether_value_unref(result);
    tether_error_done(&error);
    tether_request_unref(req);
}

static int
serve_add_via_host(tether_request *req, void *userdata)
{
    tether_call_options options = {.timeout_usec = SELFTEST_CALL_TIMEOUT_USEC};
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

static void
wait_sem(sem_t *sem, int seconds)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += seconds;
    while (sem_timedwait(sem, &until) < 0 && errno == EINTR) {
    }
}

static void
client_calls(selftest *t, tether_conn *conn)
{
    const char *me = "client -> host:";
    tether_future *future = NULL;
    tether_call_options options = {.timeout_usec = SELFTEST_CALL_TIMEOUT_USEC};

    /* A future first, then a notification; the synchronous calls after them are
     * answered only once the host has read both, since frames are served in order. */
    int r = tether_conn_call_async(conn, "greet", &options, &future, "s", "self-test");
    check_ok(t, r, "client -> host: greet(\"self-test\") started as a future");
    r = tether_conn_notify(conn, "log", "s", "hello from the self-test client");
    check_ok(t, r, "client -> host: log(\"hello from the self-test client\") notified");

    expect_call(t, conn, me, "5", "add", "ii", 2, 3);
    expect_call(t, conn, me, "4.0", "add", "dd", 1.5, 2.5);
    expect_call(t, conn, me, "{\"list\": [1, 2.5, \"three\"], \"bytes\": b\"\\x00\\xff\"}", "echo",
                "{s[ids]sy}", "list", 1, 2.5, "three", "bytes", "\x00\xff", (size_t)2);
    expect_call(t, conn, me, "TypeError", "add", "si", "two", 3);
    expect_call(t, conn, me, "tether.NoSuchService", "no_such_service", "");

    tether_value *now = NULL;
    double seconds = 0;
    r = tether_conn_call(conn, "time", &options, &now, NULL, "");
    if (r == 0) {
        r = tether_value_read(now, NULL, "d", &seconds);
    }
    struct timespec here;
    clock_gettime(CLOCK_REALTIME, &here);
    double skew = seconds - (double)here.tv_sec;
    check(t, r == 0 && skew > -60 && skew < 60, "%s time() = %.3f", me, seconds);
    tether_value_unref(now);

    if (future) {
        expect_future(t, future, "client -> host: the future of greet(\"self-test\")",
                      "\"Hello, self-test!\"");
        tether_future_unref(future);
    }
}

static void *
client_thread(void *arg)
{
    selftest *t = arg;
    tether_client_options options = {
        .name = SELFTEST_CLIENT,
        .address = t->address,
        .log = on_log,
        .log_userdata = "[client] ",
        .log_level = TETHER_LOG_WARNING,
    };
    tether_client *client = NULL;
    tether_error error = TETHER_ERROR_INIT;
    int r = tether_client_new(&options, &client);
    if (r == 0) {
        r = tether_client_add_service(client, "square", TETHER_CONTEXT_IO, serve_square, t);
    }
    if (r == 0) {
        r = tether_client_add_service(client, "upper", TETHER_CONTEXT_IO, serve_upper, t);
    }
    if (r == 0) {
        r = tether_client_add_service(client, "note", TETHER_CONTEXT_IO, serve_note, t);
    }
    if (r == 0) {
        r = tether_client_add_service(client, "add_via_host", TETHER_CONTEXT_IO, serve_add_via_host,
                                      t);
    }
    if (r == 0) {
        r = tether_client_connect(client, &error);
    }
    check(t, r == 0, "the client connects to %s%s%s", t->address, r ? ": " : "",
          r ? (error.message ? error.message : tether_strerror(r)) : "");
    if (r == 0) {
        client_calls(t, tether_client_get_conn(client));
    }
    sem_post(&t->client_ready);
    /* Stay connected while the host calls back. */
    wait_sem(&t->host_done, 2 * SELFTEST_ALARM_SECONDS);
    tether_client_unref(client);
    tether_error_done(&error);
    atomic_store(&t->client_finished, true);
    return NULL;
}

static void
host_calls(selftest *t)
{
    const char *me = "host -> client:";
    tether_conn *conn = NULL;
    int r = tether_host_get_client(t->host, SELFTEST_CLIENT, &conn);
    check_ok(t, r, "the host finds its client by name");
    if (r < 0) {
        return;
    }
    tether_call_options options = {.timeout_usec = SELFTEST_CALL_TIMEOUT_USEC};
    tether_future *future = NULL;
    r = tether_conn_call_async(conn, "upper", &options, &future, "s", "tether");
    check_ok(t, r, "host -> client: upper(\"tether\") started as a future");
    r = tether_conn_notify(conn, "note", "s", "from the host");
    check_ok(t, r, "host -> client: note(\"from the host\") notified");
    expect_call(t, conn, me, "144", "square", "i", 12);
    expect_call(t, conn, me, "TypeError", "square", "s", "twelve");
    /* The client answers this one by calling the host's add, a MAIN service, while this
     * thread, the host's main thread, is blocked waiting: the call-back belongs to the
     * chain this thread waits on, so the wait runs it instead of deadlocking. */
    expect_call(t, conn, "host -> client -> host:", "42", "add_via_host", "ii", 20, 22);
    if (future) {
        expect_future(t, future, "host -> client: the future of upper(\"tether\")", "\"TETHER\"");
        tether_future_unref(future);
    }
    check(t, atomic_load(&t->client_notes) == 1, "the client received the notification (%d)",
          atomic_load(&t->client_notes));
    tether_conn_unref(conn);
}

/* Once per frame: when the client has made its calls, call it back. */
static bool
selftest_frame(void *arg)
{
    selftest *t = arg;
    if (!t->host_called && sem_trywait(&t->client_ready) == 0) {
        check(t, atomic_load(&t->stats->logs) == 1, "the host received the notification (%d)",
              atomic_load(&t->stats->logs));
        host_calls(t);
        t->host_called = true;
        sem_post(&t->host_done);
    }
    return t->host_called && atomic_load(&t->client_finished);
}

static int
run_selftest(tether_host *host, demo_stats *stats, const sigset_t *signals,
             const demo_options *opts)
{
    selftest t = {.host = host, .stats = stats};
    if (opts->tcp) {
        snprintf(t.address, sizeof(t.address), "tcp:127.0.0.1:%d", tether_host_get_tcp_port(host));
    } else {
        snprintf(t.address, sizeof(t.address), "%s", tether_host_get_address(host));
    }
    sem_init(&t.client_ready, 0, 0);
    sem_init(&t.host_done, 0, 0);
    pthread_t thread;
    if (pthread_create(&thread, NULL, client_thread, &t) != 0) {
        say("self-test: cannot start the client thread");
        return 1;
    }
    /* The host's MAIN services run in this loop, while the client calls them. Its time
     * limit comes before the alarm's, so that a slow run still reports its checks. */
    int r = run_frames(host, stats, signals, SELFTEST_ALARM_SECONDS / 2, selftest_frame, &t);
    if (!t.host_called) {
        check(&t, false, "the self-test finished in time");
        sem_post(&t.host_done);
    }
    pthread_join(thread, NULL);
    sem_destroy(&t.client_ready);
    sem_destroy(&t.host_done);
    int failures = atomic_load(&t.failures);
    if (failures || r != 0) {
        say("self-test FAILED: %d of %d checks", failures, atomic_load(&t.checks));
        return 1;
    }
    say("self-test passed: %d checks", atomic_load(&t.checks));
    return 0;
}

/* ---- running --------------------------------------------------------------------------- */

/* The example client next to this program (a build tree), relative to the working
 * directory when below it; NULL when there is none (an installed tether-demo). */
static char *
find_example_client(void)
{
    char exe[PATH_MAX], cwd[PATH_MAX], path[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) {
        return NULL;
    }
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash) {
        return NULL;
    }
    *slash = '\0';
    snprintf(path, sizeof(path), "%s/example-hello_client", exe);
    if (access(path, X_OK) < 0) {
        return NULL;
    }
    size_t len = getcwd(cwd, sizeof(cwd)) ? strlen(cwd) : 0;
    if (len > 1 && strncmp(path, cwd, len) == 0 && path[len] == '/') {
        return strdup(path + len + 1);
    }
    return strdup(path);
}

static void
print_how_to_connect(tether_host *host, const demo_options *opts)
{
    char *client = find_example_client();
    const char *command = client ? client : "your-client";
    printf("\n%s serves add(a, b), greet(name), log(message) and time() on its main\n"
           "thread, between frames, and echo(value) on the I/O thread.\n",
           opts->name);
    printf("Connect a client from another shell:\n");
    printf("    TETHER_ADDRESS=%s %s\n", tether_host_get_address(host), command);
    if (opts->tcp) {
        printf("or over TCP (same user: the token is read from %s):\n",
               tether_host_get_token_path(host));
        printf("    TETHER_ADDRESS=tcp:127.0.0.1:%d %s\n", tether_host_get_tcp_port(host), command);
    }
    printf("Stop with Ctrl-C.\n\n");
    fflush(stdout);
    free(client);
}

static void
usage(FILE *to)
{
    fprintf(to,
            "usage: tether-demo [--name NAME] [--tcp [PORT]] [--seconds N] [--once]\n"
            "\n"
            "A small host to try tether with: serves add, echo, greet, log and time.\n"
            "\n"
            "  --name NAME   the host's name (tether-demo); clients find it by name\n"
            "  --tcp [PORT]  also listen on loopback TCP, port %d by default,\n"
            "                0 for any free port\n"
            "  --seconds N   stop after N seconds (default: at SIGINT or SIGTERM)\n"
            "  --once        run a self-test: a client calls the host and the host calls\n"
            "                it back; exit 0 when every check passed\n",
            TETHER_DEFAULT_TCP_PORT);
}

/* Parse a whole decimal number in [min, max]. */
static bool
parse_number(const char *text, long min, long max, long *ret)
{
    char *end;
    errno = 0;
    long value = text && *text ? strtol(text, &end, 10) : 0;
    if (!text || !*text || errno || *end || value < min || value > max) {
        return false;
    }
    *ret = value;
    return true;
}

/* Returns 0, or 2 after printing a usage error. */
static int
parse_options(int argc, char **argv, demo_options *opts)
{
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *eq = strchr(arg, '=');
        size_t key_len = eq ? (size_t)(eq - arg) : strlen(arg);
        const char *value = eq ? eq + 1 : NULL;
        long number;
#define IS(option) (key_len == strlen(option) && strncmp(arg, option, key_len) == 0)
        if (IS("--help") || IS("-h")) {
            usage(stdout);
            exit(0);
        } else if (IS("--once") && !value) {
            opts->once = true;
        } else if (IS("--name")) {
            opts->name = value ? value : i + 1 < argc ? argv[++i] : NULL;
            if (!opts->name || !*opts->name) {
                fprintf(stderr, "tether-demo: --name needs a name\n");
                return 2;
            }
        } else if (IS("--seconds")) {
            value = value ? value : i + 1 < argc ? argv[++i] : NULL;
            if (!parse_number(value, 1, INT_MAX, &opts->seconds)) {
                fprintf(stderr, "tether-demo: --seconds needs a number of seconds\n");
                return 2;
            }
        } else if (IS("--tcp")) {
            /* The port is optional: take the next argument only if it is a number. */
            if (!value && i + 1 < argc && parse_number(argv[i + 1], 0, 65535, &number)) {
                value = argv[++i];
            }
            opts->tcp = true;
            if (value) {
                if (!parse_number(value, 0, 65535, &number)) {
                    fprintf(stderr, "tether-demo: bad TCP port '%s'\n", value);
                    return 2;
                }
                /* Here 0 asks for a free port; in tether_host_options 0 means the default. */
                opts->tcp_port = number == 0 ? TETHER_PORT_EPHEMERAL : (int)number;
            }
        } else {
            fprintf(stderr, "tether-demo: unknown option '%s'\n", arg);
            usage(stderr);
            return 2;
        }
#undef IS
    }
    return 0;
}

int
main(int argc, char **argv)
{
    demo_options opts = {.name = "tether-demo", .tcp_port = TETHER_DEFAULT_TCP_PORT};
    int r = parse_options(argc, argv, &opts);
    if (r != 0) {
        return r;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* Block the stop signals before the library starts its I/O thread, which inherits
     * the mask, so that they stay pending for the main loop to see. */
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, NULL);
    if (opts.once) {
        alarm(SELFTEST_ALARM_SECONDS);
    }

    demo_stats stats = {0};
    tether_host_options host_opts = {
        .name = opts.name,
        .tcp = opts.tcp,
        .tcp_port = opts.tcp_port,
        .log = on_log,
        .log_level = TETHER_LOG_INFO,
    };
    tether_host *host = NULL;
    r = tether_host_new(&host_opts, &host);
    if (r == 0) {
        r = add_services(host, &stats);
    }
    if (r == 0) {
        r = tether_host_start(host);
    }
    if (r < 0) {
        fprintf(stderr, "tether-demo: cannot start the host '%s': %s\n", opts.name,
                tether_strerror(r));
        if (r == -EADDRINUSE) {
            fprintf(stderr, "tether-demo: another host uses that name or port: "
                            "choose another with --name or --tcp PORT\n");
        }
        tether_host_unref(host);
        return 1;
    }

    int status;
    if (opts.once) {
        status = run_selftest(host, &stats, &signals, &opts);
    } else {
        print_how_to_connect(host, &opts);
        status = run_frames(host, &stats, &signals, opts.seconds, NULL, NULL);
        say("served %d calls in %ld frames", atomic_load(&stats.calls), stats.frames);
    }
    tether_host_unref(host);
    return status;
}
