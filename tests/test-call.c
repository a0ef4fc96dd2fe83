/*
 * Calls end to end, host and client in one process: the three ways to call, both
 * directions, errors as values, timeouts that bound silence and deadlines that bound
 * duration, and concurrent callers sharing one connection.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>

#include "helpers.h"

static int
fail_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply_error(req, "ValueError", "bad value %d", 42);
}

static atomic_int notified;

static int
count_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    int n = 0;
    tether_request_read(req, "i", &n);
    atomic_fetch_add(&notified, n);
    return 0;
}

static int
get_count_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply(req, "i", atomic_load(&notified));
}

/* Replies after a delay from another thread; the call must stay alive meanwhile. */
typedef struct delayed {
    tether_request *req;
    int delay_ms;
} delayed;

static void *
delayed_reply(void *arg)
{
    delayed *d = arg;
    usleep((useconds_t)d->delay_ms * 1000);
    tether_request_reply(d->req, "s", "late");
    tether_request_unref(d->req);
    free(d);
    return NULL;
}

static int
slow_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    delayed *d = malloc(sizeof(*d));
    d->req = tether_request_ref(req);
    d->delay_ms = 0;
    tether_request_read(req, "i", &d->delay_ms);
    pthread_t t;
    pthread_create(&t, NULL, delayed_reply, d);
    pthread_detach(t);
    return 0;
}

static tether_request *stuck_request;

static int
stuck_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    /* Never replies: kept until the test ends. */
    stuck_request = tether_request_ref(req);
    return 0;
}

static int
hang_handler(tether_request *req, void *userdata)
{
    (void)req;
    (void)userdata;
    /* A stuck peer: blocks its own I/O thread, so not even progress goes out. */
    usleep(1000000);
    return 0;
}

static tether_host *
start_host(void)
{
    tether_host *h = test_host_new(NULL);
    ASSERT_OK(tether_host_add_service(h, "add", TETHER_CONTEXT_IO, test_add_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "fail", TETHER_CONTEXT_IO, fail_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "count", TETHER_CONTEXT_IO, count_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "get_count", TETHER_CONTEXT_IO, get_count_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "slow", TETHER_CONTEXT_IO, slow_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "stuck", TETHER_CONTEXT_IO, stuck_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "hang", TETHER_CONTEXT_IO, hang_handler, NULL));
    ASSERT_OK(tether_host_start(h));
    return h;
}

Test(call, sync_add)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("adder", NULL);
    tether_value *v = NULL;
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_OK(tether_conn_call(tether_client_get_conn(c), "add", NULL, &v, &err, "ii", 2, 3));
    int sum = 0;
    ASSERT_OK(tether_value_read(v, NULL, "i", &sum));
    cr_assert_eq(sum, 5);
    tether_value_unref(v);
    cr_assert_str_eq(tether_client_get_host_name(c), "default");
    tether_client_unref(c);
    tether_host_unref(h);
}

/* "kwargs_count": answers how many keyword arguments it got, without reading them. */
static int
kwargs_count_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply(req, "i", tether_request_get_kwargs_count(req));
}

Test(call, keyword_arguments_are_counted_without_a_value)
{
    tether_host *h = test_host_new(NULL);
    ASSERT_OK(
        tether_host_add_service(h, "kwargs_count", TETHER_CONTEXT_IO, kwargs_count_handler, NULL));
    ASSERT_OK(tether_host_start(h));
    tether_client *c = test_client_connect("counter", NULL);
    tether_conn *conn = tether_client_get_conn(c);
    const char *formats[] = {NULL, "{}", "{si}", "{sisi}"};
    for (int i = 0; i < 4; i++) {
        tether_value *kwargs = NULL, *v = NULL;
        if (formats[i]) {
            ASSERT_OK(tether_value_new(&kwargs, formats[i], "x", 1, "y", 2));
        }
        ASSERT_OK(tether_conn_call_values(conn, "kwargs_count", NULL, kwargs, NULL, &v, NULL));
        int n = -1;
        ASSERT_OK(tether_value_read(v, NULL, "i", &n));
        cr_assert_eq(n, i == 0 ? 0 : i - 1, "%s: %d keyword arguments counted",
                     formats[i] ? formats[i] : "none", n);
        tether_value_unref(v);
        tether_value_unref(kwargs);
    }
    cr_assert_eq(tether_request_get_kwargs_count(NULL), TETHER_EINVAL);
    tether_client_unref(c);
    tether_host_unref(h);
}

/* Arguments as msgpack bytes, as a binding that encodes its own hands them over. */
Test(call, msgpack_arguments_are_checked_once_and_sent)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("packer", NULL);
    tether_conn *conn = tether_client_get_conn(c);
    static const uint8_t two_and_three[] = {0x92, 0x02, 0x03}; /* [2, 3] */
    tether_msgpack_args m = {.args = two_and_three, .args_size = sizeof(two_and_three)};
    tether_value *v = NULL;
    int sum = 0;
    ASSERT_OK(tether_conn_call_msgpack(conn, "add", &m, NULL, &v, NULL));
    ASSERT_OK(tether_value_read(v, NULL, "i", &sum));
    cr_assert_eq(sum, 5);
    tether_value_unref(v);

    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async_msgpack(conn, "add", &m, NULL, &f));
    ASSERT_OK(tether_future_wait(f, 5 * 1000 * 1000));
    ASSERT_OK(tether_future_get_result(f, &v, NULL));
    ASSERT_OK(tether_value_read(v, NULL, "i", &sum));
    cr_assert_eq(sum, 5);
    tether_value_unref(v);
    tether_future_unref(f);

    static const uint8_t four[] = {0x91, 0x04};
    tether_msgpack_args count = {.args = four, .args_size = sizeof(four)};
    int before = atomic_load(&notified);
    ASSERT_OK(tether_conn_notify_msgpack(conn, "count", &count));
    ASSERT_OK(tether_conn_call(conn, "get_count", NULL, &v, NULL, NULL));
    ASSERT_OK(tether_value_read(v, NULL, "i", &sum));
    cr_assert_eq(sum, before + 4);
    tether_value_unref(v);

    /* Refused before anything is sent: not an array, not a map, malformed, truncated,
     * a reference without its object, nested deeper than a frame allows. */
    tether_error err = TETHER_ERROR_INIT;
    static const uint8_t not_array[] = {0x02};
    static const uint8_t truncated[] = {0x92, 0x02};
    static const uint8_t reserved[] = {0x91, 0xc1};
    static const uint8_t not_map[] = {0x90};
    static const uint8_t ref[] = {0x91, 0xd6, 0x01, 0x93, 0x00, 0x01, 0xa0}; /* [REF] */
    uint8_t deep[64];
    memset(deep, 0x91, sizeof(deep));
    deep[63] = 0x90;
    const struct {
        tether_msgpack_args m;
        int code;
    } bad[] = {
        {{.args = not_array, .args_size = 1}, TETHER_EINVAL},
        {{.args = truncated, .args_size = 2}, TETHER_EPROTO},
        {{.args = reserved, .args_size = 2}, TETHER_EPROTO},
        {{.args = two_and_three, .args_size = 0}, TETHER_EINVAL},
        {{.kwargs = not_map, .kwargs_size = 1}, TETHER_EINVAL},
        {{.args = ref, .args_size = sizeof(ref)}, TETHER_EINVAL},
        {{.args = deep, .args_size = sizeof(deep)}, TETHER_EMSGSIZE},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int r = tether_conn_call_msgpack(conn, "add", &bad[i].m, NULL, &v, &err);
        cr_assert_eq(r, bad[i].code, "case %zu: %s", i, tether_strerror(r));
        cr_assert_null(v);
        cr_assert_not_null(err.type, "case %zu has no error type", i);
        tether_error_done(&err);
        cr_assert_eq(tether_conn_notify_msgpack(conn, "count", &bad[i].m), bad[i].code);
    }
    /* 63 levels are the most a frame carries as args. */
    ASSERT_OK(tether_conn_call_msgpack(
        conn, "get_count", &(tether_msgpack_args){.args = deep + 1, .args_size = 63}, NULL, NULL,
        NULL));
    ASSERT_OK(tether_conn_call_msgpack(conn, "add", &m, NULL, NULL, NULL)); /* still fine */
    tether_client_unref(c);
    tether_host_unref(h);
}

Test(call, wrong_argument_types_are_a_type_error)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("adder", NULL);
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_conn_call(tether_client_get_conn(c), "add", NULL, NULL, &err, "si", "x", 3),
               TETHER_EREMOTE);
    cr_assert_str_eq(err.type, "TypeError");
    cr_assert(strstr(err.message, "expected int") != NULL, "message: %s", err.message);
    tether_error_done(&err);
    ASSERT_ERR(tether_conn_call(tether_client_get_conn(c), "add", NULL, NULL, &err, "i", 1),
               TETHER_EREMOTE);
    cr_assert(strstr(err.message, "2 arguments") != NULL, "message: %s", err.message);
    tether_error_done(&err);
    tether_client_unref(c);
    tether_host_unref(h);
}

Test(call, remote_error_has_type_and_message)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_conn_call(tether_client_get_conn(c), "fail", NULL, NULL, &err, NULL),
               TETHER_EREMOTE);
    cr_assert_str_eq(err.type, "ValueError");
    cr_assert_str_eq(err.message, "bad value 42");
    tether_error_done(&err);
    tether_client_unref(c);
    tether_host_unref(h);
}

Test(call, unknown_service)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_conn_call(tether_client_get_conn(c), "nope", NULL, NULL, &err, NULL),
               TETHER_ENOENT);
    cr_assert_str_eq(err.type, "tether.NoSuchService");
    cr_assert(strstr(err.message, "nope") != NULL);
    tether_error_done(&err);
    /* The connection is still fine. */
    ASSERT_OK(tether_conn_call(tether_client_get_conn(c), "add", NULL, NULL, NULL, "ii", 1, 1));
    tether_client_unref(c);
    tether_host_unref(h);
}

Test(call, future_wait_and_result)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(c), "add", NULL, &f, "ii", 40, 2));
    ASSERT_OK(tether_future_wait(f, 5000000));
    cr_assert_eq(tether_future_is_ready(f), 1);
    tether_value *v = NULL;
    ASSERT_OK(tether_future_get_result(f, &v, NULL));
    int sum = 0;
    ASSERT_OK(tether_value_read(v, NULL, "i", &sum));
    cr_assert_eq(sum, 42);
    tether_value_unref(v);
    ASSERT_ERR(tether_future_cancel(f), TETHER_EALREADY);
    tether_future_unref(f);
    tether_client_unref(c);
    tether_host_unref(h);
}

static pthread_mutex_t cb_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cb_cv = PTHREAD_COND_INITIALIZER;
static int cb_status = 1;

static void
on_done(tether_future *f, void *userdata)
{
    (void)userdata;
    pthread_mutex_lock(&cb_lock);
    cb_status = tether_future_get_result(f, NULL, NULL);
    pthread_cond_signal(&cb_cv);
    pthread_mutex_unlock(&cb_lock);
}

Test(call, future_callback)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(c), "slow", NULL, &f, "i", 50));
    ASSERT_OK(tether_future_set_callback(f, TETHER_CONTEXT_IO, on_done, NULL));
    ASSERT_ERR(tether_future_set_callback(f, TETHER_CONTEXT_IO, on_done, NULL), TETHER_EALREADY);
    pthread_mutex_lock(&cb_lock);
    while (cb_status == 1) {
        pthread_cond_wait(&cb_cv, &cb_lock);
    }
    pthread_mutex_unlock(&cb_lock);
    cr_assert_eq(cb_status, 0);
    tether_future_unref(f);
    tether_client_unref(c);
    tether_host_unref(h);
}

Test(call, future_cancel)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(c), "stuck", NULL, &f, NULL));
    ASSERT_ERR(tether_future_wait(f, 20000), TETHER_ETIMEDOUT);
    ASSERT_OK(tether_future_cancel(f));
    cr_assert_eq(tether_future_is_ready(f), 1);
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_future_get_result(f, NULL, &err), TETHER_ECANCELED);
    cr_assert_str_eq(err.type, "tether.Cancelled");
    tether_error_done(&err);
    tether_future_unref(f);
    /* The callee learns of the cancel. */
    for (int i = 0; i < 200 && !tether_request_is_cancelled(stuck_request); i++) {
        usleep(5000);
    }
    cr_assert_eq(tether_request_is_cancelled(stuck_request), 1);
    tether_client_unref(c);
    tether_host_unref(h);
}

/*
 * A thread that waits for a future reads the connection itself while nobody else does
 * (rpc/call.c, lead_until_done). Whatever else completes the future must still end the
 * wait at once: a cancel from another thread, the call's own timeout, a close.
 */
typedef struct {
    tether_future *future;
    tether_conn *conn;
    int wait_result;
    uint64_t waited_usec;
} future_waiter;

static void *
wait_forever(void *arg)
{
    future_waiter *w = arg;
    uint64_t start = tether_now_usec();
    w->wait_result = tether_future_wait(w->future, TETHER_TIMEOUT_INFINITE);
    w->waited_usec = tether_now_usec() - start;
    return NULL;
}

/* A call never answered, and a thread that waits for it (reading by the time this
 * returns). */
static pthread_t
start_stuck_waiter(tether_conn *conn, future_waiter *w)
{
    ASSERT_OK(tether_conn_call_async(conn, "stuck", NULL, &w->future, NULL));
    pthread_t t;
    pthread_create(&t, NULL, wait_forever, w);
    usleep(50000);
    return t;
}

static void
end_waiter_test(tether_host *h, tether_client *c, future_waiter *w)
{
    tether_future_unref(w->future);
    tether_client_unref(c);
    tether_host_unref(h);
}

Test(call, a_reading_future_waiter_sees_a_cancel_from_another_thread)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    future_waiter w = {0};
    pthread_t t = start_stuck_waiter(tether_client_get_conn(c), &w);
    uint64_t cancelled = tether_now_usec();
    ASSERT_OK(tether_future_cancel(w.future));
    pthread_join(t, NULL);
    ASSERT_OK(w.wait_result);
    /* Woken by the cancel, not by the end of its poll's slice (a second). */
    uint64_t after = tether_now_usec() - cancelled;
    cr_assert(after < 900000, "the waiter returned %llu us after the cancel",
              (unsigned long long)after);
    ASSERT_ERR(tether_future_get_result(w.future, NULL, NULL), TETHER_ECANCELED);
    end_waiter_test(h, c, &w);
}

Test(call, a_reading_future_waiter_sees_its_call_time_out)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    /* A deadline: the silence bound never passes, the callee sends progress. */
    tether_call_options opts = {.deadline_usec = tether_now_usec() + 100000};
    future_waiter w = {0};
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(c), "stuck", &opts, &w.future, NULL));
    wait_forever(&w);
    ASSERT_OK(w.wait_result);
    ASSERT_ERR(tether_future_get_result(w.future, NULL, NULL), TETHER_ETIMEDOUT);
    cr_assert(w.waited_usec < 5000000, "the wait took %llu us", (unsigned long long)w.waited_usec);
    end_waiter_test(h, c, &w);
}

Test(call, a_reading_future_waiter_delivers_other_threads_answers)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    tether_conn *conn = tether_client_get_conn(c);
    future_waiter w = {0};
    pthread_t t = start_stuck_waiter(conn, &w);
    /* Synchronous calls and other futures of this thread, answered while the waiter
     * holds the reading. */
    for (int i = 0; i < 200; i++) {
        tether_value *v = NULL;
        ASSERT_OK(tether_conn_call(conn, "add", NULL, &v, NULL, "ii", i, 1));
        int sum = 0;
        ASSERT_OK(tether_value_read(v, NULL, "i", &sum));
        cr_assert_eq(sum, i + 1);
        tether_value_unref(v);
        tether_future *f = NULL;
        ASSERT_OK(tether_conn_call_async(conn, "add", NULL, &f, "ii", i, 2));
        ASSERT_OK(tether_future_wait(f, 5000000));
        tether_future_unref(f);
    }
    cr_assert_eq(tether_future_is_ready(w.future), 0);
    ASSERT_OK(tether_future_cancel(w.future));
    pthread_join(t, NULL);
    ASSERT_OK(w.wait_result);
    end_waiter_test(h, c, &w);
}

Test(call, a_reading_future_waiter_sees_the_connection_close)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    future_waiter w = {0};
    pthread_t t = start_stuck_waiter(tether_client_get_conn(c), &w);
    tether_host_stop(h);
    pthread_join(t, NULL);
    ASSERT_OK(w.wait_result);
    cr_assert_lt(tether_future_get_result(w.future, NULL, NULL), 0);
    end_waiter_test(h, c, &w);
}

Test(call, notify_is_delivered_in_order)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    tether_conn *conn = tether_client_get_conn(c);
    for (int i = 0; i < 100; i++) {
        ASSERT_OK(tether_conn_notify(conn, "count", "i", 1));
    }
    tether_value *v = NULL;
    ASSERT_OK(tether_conn_call(conn, "get_count", NULL, &v, NULL, NULL));
    int n = 0;
    ASSERT_OK(tether_value_read(v, NULL, "i", &n));
    cr_assert_eq(n, 100);
    tether_value_unref(v);
    tether_client_unref(c);
    tether_host_unref(h);
}

Test(call, notifications_sent_before_closing_arrive)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    for (int i = 0; i < 20; i++) {
        ASSERT_OK(tether_conn_notify(tether_client_get_conn(c), "count", "i", 1));
    }
    tether_client_unref(c);
    for (int i = 0; i < 200 && atomic_load(&notified) < 20; i++) {
        usleep(5000);
    }
    cr_assert_eq(atomic_load(&notified), 20);
    tether_host_unref(h);
}

static char logged[512];
static pthread_mutex_t logged_lock = PTHREAD_MUTEX_INITIALIZER;

static void
capture_log(void *userdata, int level, const char *message)
{
    (void)userdata;
    if (level == TETHER_LOG_WARNING && strstr(message, "engine:")) {
        pthread_mutex_lock(&logged_lock);
        snprintf(logged, sizeof(logged), "%s", message);
        pthread_mutex_unlock(&logged_lock);
    }
}

/* Wait (up to a second) for the next line capture_log keeps, and take it. */
static void
next_logged(char *seen, size_t size)
{
    seen[0] = '\0';
    for (int i = 0; i < 200 && !seen[0]; i++) {
        usleep(5000);
        pthread_mutex_lock(&logged_lock);
        snprintf(seen, size, "%s", logged);
        logged[0] = '\0';
        pthread_mutex_unlock(&logged_lock);
    }
}

Test(call, log_records_reach_the_peers_log)
{
    tether_host_options o = {.log = capture_log, .log_level = TETHER_LOG_DEBUG};
    tether_host *h = test_host_new(&o);
    ASSERT_OK(tether_host_start(h));
    tether_client *c = test_client_connect("logger", NULL);
    ASSERT_ERR(tether_conn_log(tether_client_get_conn(c), 99, "x", "y"), TETHER_EINVAL);
    ASSERT_OK(tether_conn_log(tether_client_get_conn(c), TETHER_LOG_WARNING, "engine",
                              "low on actors"));
    char seen[512];
    next_logged(seen, sizeof(seen));
    cr_assert(strstr(seen, "[logger pid ") != NULL, "log line: '%s'", seen);
    cr_assert(strstr(seen, "engine: low on actors") != NULL, "log line: '%s'", seen);

    /* A record cannot forge a line of the host's log or drive its terminal: control
     * characters arrive escaped, later lines indented; bytes that are not UTF-8 arrive as
     * U+FFFD rather than costing the record. */
    ASSERT_OK(tether_conn_log(tether_client_get_conn(c), TETHER_LOG_WARNING, "engine",
                              "one\nclient 'x' (pid 1) left\x1b[2J\xff"));
    next_logged(seen, sizeof(seen));
    cr_assert(strstr(seen, "engine: one\n    client 'x' (pid 1) left\\x1b[2J\xef\xbf\xbd") != NULL,
              "log line: '%s'", seen);
    tether_client_unref(c);
    tether_host_unref(h);
}

Test(call, names_and_strings_that_are_not_utf8_are_refused_before_sending)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    tether_conn *conn = tether_client_get_conn(c);
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_conn_call(conn, "pi\xffng", NULL, NULL, &err, NULL), TETHER_EINVAL);
    tether_error_done(&err);
    ASSERT_ERR(tether_conn_call(conn, "add", NULL, NULL, &err, "s", "\xc3("), TETHER_EINVAL);
    tether_error_done(&err);
    /* Nothing was sent, so the connection is as good as before. */
    tether_value *v = NULL;
    ASSERT_OK(tether_conn_call(conn, "add", NULL, &v, NULL, "ii", 2, 3));
    tether_value_unref(v);
    tether_client *bad = NULL;
    tether_client_options o = {.name = "two\nlines"};
    ASSERT_ERR(tether_client_new(&o, &bad), TETHER_EINVAL);
    o.name = "caf\xc3";
    ASSERT_ERR(tether_client_new(&o, &bad), TETHER_EINVAL);
    cr_assert_null(bad);
    tether_client_unref(c);
    tether_host_unref(h);
}

Test(call, silence_timeout)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    tether_call_options o = {.timeout_usec = 200000};
    tether_error err = TETHER_ERROR_INIT;
    uint64_t t0 = tether_now_usec();
    ASSERT_ERR(tether_conn_call(tether_client_get_conn(c), "hang", &o, NULL, &err, NULL),
               TETHER_ETIMEDOUT);
    uint64_t took = tether_now_usec() - t0;
    cr_assert_str_eq(err.type, "tether.Timeout");
    tether_error_done(&err);
    cr_assert(took >= 150000 && took < 900000, "took %llu us", (unsigned long long)took);
    /* A future times out the same way. */
    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(c), "hang", &o, &f, NULL));
    ASSERT_OK(tether_future_wait(f, 5000000));
    ASSERT_ERR(tether_future_get_result(f, NULL, NULL), TETHER_ETIMEDOUT);
    tether_future_unref(f);
    tether_client_unref(c);
    tether_host_unref(h);
}

Test(call, live_long_call_outlasts_the_silence_timeout)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    tether_call_options o = {.timeout_usec = 150000};
    tether_value *v = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_conn_call(tether_client_get_conn(c), "slow", &o, &v, &err, "i", 600);
    cr_assert_eq(r, 0, "%s: %s", tether_strerror(r), err.message ? err.message : "");
    const char *s = NULL;
    ASSERT_OK(tether_value_read(v, NULL, "s", &s));
    cr_assert_str_eq(s, "late");
    tether_value_unref(v);
    /* The same through a future. */
    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(c), "slow", &o, &f, "i", 600));
    ASSERT_OK(tether_future_wait(f, 5000000));
    ASSERT_OK(tether_future_get_result(f, NULL, NULL));
    tether_future_unref(f);
    tether_client_unref(c);
    tether_host_unref(h);
}

Test(call, deadline_bounds_a_live_call)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    /* The silence bound is longer than the deadline, so that on a loaded machine, where a
     * progress beat can come late, it is still the deadline that ends the call. */
    tether_call_options o = {.timeout_usec = 1000000, .deadline_usec = tether_now_usec() + 300000};
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_conn_call(tether_client_get_conn(c), "slow", &o, NULL, &err, "i", 1500),
               TETHER_ETIMEDOUT);
    cr_assert(strstr(err.message, "deadline") != NULL, "message: %s", err.message);
    tether_error_done(&err);
    tether_future *f = NULL;
    o.deadline_usec = tether_now_usec() + 300000;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(c), "slow", &o, &f, "i", 1500));
    ASSERT_OK(tether_future_wait(f, 5000000));
    ASSERT_ERR(tether_future_get_result(f, NULL, NULL), TETHER_ETIMEDOUT);
    tether_future_unref(f);
    tether_client_unref(c);
    tether_host_unref(h);
}

/* Says "stop" on its third call. */
static int
interrupt_on_third(void *userdata)
{
    return atomic_fetch_add((atomic_int *)userdata, 1) >= 2;
}

Test(call, interrupt_cancels_a_synchronous_call)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    atomic_int asked = 0;
    tether_call_options o = {.interrupt = interrupt_on_third,
                             .interrupt_userdata = &asked,
                             .interrupt_interval_usec = 20000};
    tether_error err = TETHER_ERROR_INIT;
    uint64_t start = tether_now_usec();
    ASSERT_ERR(tether_conn_call(tether_client_get_conn(c), "slow", &o, NULL, &err, "i", 3000),
               TETHER_ECANCELED);
    uint64_t took = tether_now_usec() - start;
    cr_assert_eq(atomic_load(&asked), 3);
    cr_assert(took >= 40000 && took < 1500000, "took %llu us", (unsigned long long)took);
    cr_assert_str_eq(err.type, "tether.Cancelled");
    tether_error_done(&err);
    /* Without an interruption the callback only watches. */
    atomic_store(&asked, -1000);
    ASSERT_OK(tether_conn_call(tether_client_get_conn(c), "slow", &o, NULL, NULL, "i", 100));
    cr_assert(atomic_load(&asked) > -1000, "asked while waiting");
    ASSERT_OK(tether_conn_call(tether_client_get_conn(c), "add", NULL, NULL, NULL, "xx",
                               (int64_t)2, (int64_t)3)); /* the connection is fine */
    tether_client_unref(c);
    tether_host_unref(h);
}

static int
client_echo(tether_request *req, void *userdata)
{
    (void)userdata;
    const char *s = NULL;
    int r = tether_request_read(req, "s", &s);
    if (r < 0) {
        return r;
    }
    return tether_request_reply(req, "[ss]", "echo", s);
}

Test(call, host_calls_a_client_by_name)
{
    tether_host *h = start_host();
    tether_client *c = test_client_new("scripter", NULL);
    ASSERT_OK(tether_client_add_service(c, "echo", TETHER_CONTEXT_IO, client_echo, NULL));
    ASSERT_OK(tether_client_connect(c, NULL));
    tether_conn *to_client = NULL;
    ASSERT_ERR(tether_host_get_client(h, "nobody", &to_client), TETHER_ENOENT);
    ASSERT_OK(tether_host_get_client(h, "scripter", &to_client));
    cr_assert_eq(tether_conn_get_peer_pid(to_client), getpid());
    cr_assert_str_eq(tether_conn_get_peer_language(to_client), "c");
    tether_value *v = NULL;
    ASSERT_OK(tether_conn_call(to_client, "echo", NULL, &v, NULL, "s", "hi"));
    const char *a = NULL, *b = NULL;
    ASSERT_OK(tether_value_read(v, NULL, "[ss]", &a, &b));
    cr_assert_str_eq(a, "echo");
    cr_assert_str_eq(b, "hi");
    tether_value_unref(v);
    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async(to_client, "echo", NULL, &f, "s", "async"));
    ASSERT_OK(tether_future_wait(f, 5000000));
    ASSERT_OK(tether_future_get_result(f, NULL, NULL));
    tether_future_unref(f);
    ASSERT_OK(tether_conn_notify(to_client, "echo", "s", "n"));
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_conn_call(to_client, "missing", NULL, NULL, &err, NULL), TETHER_ENOENT);
    cr_assert(strstr(err.message, "client 'scripter'") != NULL, "message: %s", err.message);
    tether_error_done(&err);
    tether_conn_unref(to_client);
    tether_client_unref(c);
    tether_host_unref(h);
}

typedef struct caller_arg {
    tether_conn *conn;
    int base;
    int failures;
} caller_arg;

static void *
caller_thread(void *argp)
{
    caller_arg *a = argp;
    for (int i = 0; i < 2000; i++) {
        tether_value *v = NULL;
        int sum = -1;
        if (tether_conn_call(a->conn, "add", NULL, &v, NULL, "ii", a->base, i) < 0 ||
            tether_value_read(v, NULL, "i", &sum) < 0 || sum != a->base + i) {
            a->failures++;
        }
        tether_value_unref(v);
        if (i % 7 == 0) {
            tether_future *f = NULL;
            if (tether_conn_call_async(a->conn, "add", NULL, &f, "ii", 1, 1) < 0 ||
                tether_future_wait(f, 10000000) < 0 || tether_future_get_result(f, NULL, NULL) < 0) {
                a->failures++;
            }
            tether_future_unref(f);
        }
    }
    return NULL;
}

Test(call, concurrent_callers_share_a_connection, .timeout = 60)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    pthread_t threads[4];
    caller_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (caller_arg){tether_client_get_conn(c), i * 100000, 0};
        pthread_create(&threads[i], NULL, caller_thread, &args[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(threads[i], NULL);
        cr_assert_eq(args[i].failures, 0, "thread %d had %d failures", i, args[i].failures);
    }
    tether_client_unref(c);
    tether_host_unref(h);
}

Test(call, batch_calls_wait_for_a_flush)
{
    /* Batch calls stay in the output until their thread flushes, or waits for one of
     * them. A call alone in flight goes out at once: a first one that never answers
     * keeps the others company. */
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    tether_conn *conn = tether_client_get_conn(c);
    tether_call_options batch = {.batch = true};
    tether_future *first = NULL, *f[4];
    /* The I/O thread writes what is queued whenever it has read (its first look at a new
     * connection too): an answer it reads (a future's; a synchronous caller reads its
     * own) says it has looked, and a moment later it is done with that read. */
    tether_future *attached = NULL;
    ASSERT_OK(tether_conn_call_async(conn, "get_count", NULL, &attached, NULL));
    ASSERT_OK(tether_future_wait(attached, 5000000));
    tether_future_unref(attached);
    usleep(20000);
    ASSERT_OK(tether_conn_call_async(conn, "stuck", &batch, &first, NULL));
    for (int i = 0; i < 2; i++) {
        ASSERT_OK(tether_conn_call_async(conn, "count", &batch, &f[i], "i", 1));
    }
    usleep(100000);
    cr_assert_eq(atomic_load(&notified), 0, "batch calls went out before a flush");
    ASSERT_OK(tether_conn_flush(conn));
    for (int i = 0; i < 2; i++) {
        ASSERT_OK(tether_future_wait(f[i], 5000000));
        tether_future_unref(f[i]);
    }
    cr_assert_eq(atomic_load(&notified), 2);
    /* A wait writes them too. (Any write does: let the I/O thread finish with the
     * answers above first, after which it writes what it finds queued. The progress of
     * "stuck", after a second, would make it look again.) */
    usleep(20000);
    for (int i = 2; i < 4; i++) {
        ASSERT_OK(tether_conn_call_async(conn, "count", &batch, &f[i], "i", 1));
    }
    usleep(50000);
    cr_assert_eq(atomic_load(&notified), 2, "batch calls went out before a wait");
    ASSERT_OK(tether_future_wait(f[3], 5000000));
    ASSERT_OK(tether_future_wait(f[2], 5000000));
    cr_assert_eq(atomic_load(&notified), 4);
    tether_future_unref(f[2]);
    tether_future_unref(f[3]);
    tether_future_unref(first);
    cr_assert_eq(tether_conn_flush(NULL), TETHER_EINVAL);
    tether_client_unref(c);
    tether_host_unref(h);
}

Test(call, pipelined_futures)
{
    tether_host *h = start_host();
    tether_client *c = test_client_connect("x", NULL);
    enum { N = 5000 };
    tether_future **fs = calloc(N, sizeof(*fs));
    for (int i = 0; i < N; i++) {
        int r;
        while ((r = tether_conn_call_async(tether_client_get_conn(c), "add", NULL, &fs[i], "ii", i,
                                           i)) == TETHER_ENOBUFS) {
            usleep(100);
        }
        ASSERT_OK(r);
    }
    for (int i = 0; i < N; i++) {
        ASSERT_OK(tether_future_wait(fs[i], 10000000));
        tether_value *v = NULL;
        ASSERT_OK(tether_future_get_result(fs[i], &v, NULL));
        int sum = 0;
        ASSERT_OK(tether_value_read(v, NULL, "i", &sum));
        cr_assert_eq(sum, 2 * i);
        tether_value_unref(v);
        tether_future_unref(fs[i]);
    }
    free(fs);
    tether_client_unref(c);
    tether_host_unref(h);
}
