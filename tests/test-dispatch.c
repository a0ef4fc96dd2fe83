/*
 * Main-thread integration: MAIN services run only inside dispatch, on the thread that
 * created the host; dispatch keeps to its budget and leaves the rest, in order, for the
 * next call; the fd is readable exactly while work is queued; MAIN future callbacks run
 * there too; and the call-back scenario that deadlocks the reference engine (the main
 * thread calls a client, which calls a MAIN service of the host, which calls the client
 * again) completes, with real processes on both sides.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>

#include "helpers.h"

static pthread_t main_thread;
static int order[64];
static int order_len;

static int
record(tether_request *req, void *userdata)
{
    (void)userdata;
    cr_assert(pthread_equal(pthread_self(), main_thread), "a MAIN handler ran off the main thread");
    int n = -1;
    tether_request_read(req, "i", &n);
    if (order_len < 64) {
        order[order_len++] = n;
    }
    uint64_t until = tether_now_usec() + 1000;
    while (tether_now_usec() < until) {
        /* a millisecond of work */
    }
    return tether_request_reply(req, "i", n);
}

static tether_host *
start_main_host(void)
{
    main_thread = pthread_self();
    tether_host *h = test_host_new(NULL);
    ASSERT_OK(tether_host_add_service(h, "record", TETHER_CONTEXT_MAIN, record, NULL));
    ASSERT_OK(tether_host_start(h));
    return h;
}

Test(dispatch, main_services_run_only_inside_dispatch_within_budget)
{
    tether_host *h = start_main_host();
    tether_client *c = test_client_connect("c", NULL);
    int fd = tether_host_get_fd(h);
    cr_assert(fd >= 0);
    cr_assert_eq(test_fd_readable(fd), 0);
    ASSERT_ERR(tether_host_dispatch(h, TETHER_BUDGET_UNLIMITED), 0);
    tether_future *fs[10];
    for (int i = 0; i < 10; i++) {
        ASSERT_OK(tether_conn_call_async(tether_client_get_conn(c), "record", NULL, &fs[i], "i",
                                         i));
    }
    /* Nothing runs until the main thread dispatches. */
    for (int i = 0; i < 200 && !test_fd_readable(fd); i++) {
        usleep(1000);
    }
    usleep(20000);
    cr_assert_eq(order_len, 0);
    cr_assert_eq(test_fd_readable(fd), 1);
    /* About three milliseconds of budget, one millisecond per item. */
    int r = tether_host_dispatch(h, 2500);
    cr_assert_eq(r, 1, "work must remain after a small budget, got %d", r);
    cr_assert(order_len >= 1 && order_len <= 5, "ran %d items on a 2.5 ms budget", order_len);
    cr_assert_eq(test_fd_readable(fd), 1);
    int ran = order_len;
    while ((r = tether_host_dispatch(h, 2500)) == 1) {
        cr_assert(order_len > ran, "each dispatch runs at least one item");
        ran = order_len;
    }
    ASSERT_OK(r);
    cr_assert_eq(order_len, 10);
    for (int i = 0; i < 10; i++) {
        cr_assert_eq(order[i], i, "item %d ran as %d", i, order[i]);
        ASSERT_OK(tether_future_wait(fs[i], 5000000));
        ASSERT_OK(tether_future_get_result(fs[i], NULL, NULL));
        tether_future_unref(fs[i]);
    }
    cr_assert_eq(test_fd_readable(fd), 0);
    tether_client_unref(c);
    tether_host_unref(h);
}

static void *
dispatch_from_other_thread(void *arg)
{
    return (void *)(intptr_t)tether_host_dispatch(arg, 0);
}

static int reentry_result = 1;

static int
reenter(tether_request *req, void *userdata)
{
    reentry_result = tether_host_dispatch(userdata, 0);
    return tether_request_reply(req, NULL);
}

Test(dispatch, wrong_thread_and_reentry)
{
    tether_host *h = start_main_host();
    ASSERT_OK(tether_host_add_service(h, "reenter", TETHER_CONTEXT_MAIN, reenter, h));
    pthread_t t;
    void *ret;
    pthread_create(&t, NULL, dispatch_from_other_thread, h);
    pthread_join(t, &ret);
    cr_assert_eq((int)(intptr_t)ret, TETHER_EPERM);
    tether_client *c = test_client_connect("c", NULL);
    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(c), "reenter", NULL, &f, NULL));
    ASSERT_OK(tether_host_wait(h, 5000000));
    cr_assert_eq(reentry_result, TETHER_EBUSY);
    ASSERT_OK(tether_future_wait(f, 5000000));
    tether_future_unref(f);
    tether_client_unref(c);
    tether_host_unref(h);
}

static int callbacks_run;

static void
on_main_callback(tether_future *f, void *userdata)
{
    (void)userdata;
    cr_assert(pthread_equal(pthread_self(), main_thread));
    cr_assert_eq(tether_future_is_ready(f), 1);
    callbacks_run++;
}

static int
ping(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply(req, "s", "pong");
}

Test(dispatch, main_future_callbacks_run_at_dispatch)
{
    main_thread = pthread_self();
    tether_host *h = test_host_new(NULL);
    ASSERT_OK(tether_host_add_service(h, "ping", TETHER_CONTEXT_IO, ping, NULL));
    ASSERT_OK(tether_host_start(h));
    tether_client *c = test_client_connect("c", NULL);
    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(c), "ping", NULL, &f, NULL));
    ASSERT_OK(tether_future_set_callback(f, TETHER_CONTEXT_MAIN, on_main_callback, NULL));
    ASSERT_OK(tether_future_wait(f, 5000000));
    usleep(10000);
    cr_assert_eq(callbacks_run, 0, "a MAIN callback ran before dispatch");
    cr_assert_eq(test_fd_readable(tether_client_get_fd(c)), 1);
    ASSERT_OK(tether_client_dispatch(c, TETHER_BUDGET_UNLIMITED));
    cr_assert_eq(callbacks_run, 1);
    /* A callback set on a ready future is queued too. */
    tether_future *g = NULL;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(c), "ping", NULL, &g, NULL));
    ASSERT_OK(tether_future_wait(g, 5000000));
    ASSERT_OK(tether_future_set_callback(g, TETHER_CONTEXT_MAIN, on_main_callback, NULL));
    cr_assert_eq(callbacks_run, 1);
    ASSERT_OK(tether_client_wait(c, 1000000) >= 0 ? 0 : -1);
    cr_assert_eq(callbacks_run, 2);
    tether_future_unref(f);
    tether_future_unref(g);
    tether_client_unref(c);
    tether_host_unref(h);
}

/* ---- the call-back scenario, across processes ---------------------------------------- */

static tether_client *child_client;

/*
 * Answer req with one more than the result v of the nested call that returned r, or,
 * if that call failed, with a RuntimeError whose message is prefix and its message.
 */
static int
reply_one_more(tether_request *req, int r, tether_value *v, tether_error *err, const char *prefix)
{
    if (r < 0) {
        r = tether_request_reply_error(req, "RuntimeError", "%s%s", prefix,
                                       err->message ? err->message : tether_strerror(r));
        tether_error_done(err);
        return r;
    }
    int64_t n = 0;
    tether_value_read(v, NULL, "x", &n);
    tether_value_unref(v);
    return tether_request_reply(req, "x", n + 1);
}

/* Client side, MAIN: calls back into the host while the host's main thread waits on it. */
static int
client_ask_back(tether_request *req, void *userdata)
{
    (void)userdata;
    int depth = 0;
    tether_request_read(req, "i", &depth);
    tether_value *v = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_conn_call(tether_client_get_conn(child_client), "host_value", NULL, &v, &err,
                             "i", depth);
    return reply_one_more(req, r, v, &err, "call-back failed: ");
}

static int
client_leaf(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply(req, "x", (int64_t)100);
}

static tether_host *scenario_host;

/* Host side, MAIN: calls the client again (depth permitting) while both are waiting. */
static int
host_value(tether_request *req, void *userdata)
{
    (void)userdata;
    cr_assert(pthread_equal(pthread_self(), main_thread));
    int depth = 0;
    tether_request_read(req, "i", &depth);
    tether_conn *conn = NULL;
    ASSERT_OK(tether_host_get_client(scenario_host, "scripted", &conn));
    tether_value *v = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = depth > 0 ? tether_conn_call(conn, "ask_back", NULL, &v, &err, "i", depth - 1)
                      : tether_conn_call(conn, "leaf", NULL, &v, &err, NULL);
    tether_conn_unref(conn);
    return reply_one_more(req, r, v, &err, "");
}

static pid_t
spawn_scripted_client(void)
{
    int ready[2];
    cr_assert(pipe(ready) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(ready[0]);
        child_client = test_client_new("scripted", NULL);
        ASSERT_OK(tether_client_add_service(child_client, "ask_back", TETHER_CONTEXT_MAIN,
                                            client_ask_back, NULL));
        ASSERT_OK(tether_client_add_service(child_client, "leaf", TETHER_CONTEXT_MAIN,
                                            client_leaf, NULL));
        ASSERT_OK(tether_client_connect(child_client, NULL));
        cr_assert(write(ready[1], "x", 1) == 1);
        /* The client's main loop: serve MAIN work until the host goes away. */
        while (tether_conn_is_connected(tether_client_get_conn(child_client))) {
            tether_client_wait(child_client, 100000);
        }
        _exit(0);
    }
    close(ready[1]);
    char x;
    cr_assert(read(ready[0], &x, 1) == 1);
    close(ready[0]);
    return pid;
}

/* Start scenario_host (host_value on its main thread, which is this one) and fork the
 * scripted client; returns the host's connection to that client. */
static tether_conn *
start_scenario(tether_host_options *o, pid_t *ret_pid)
{
    main_thread = pthread_self();
    test_runtime_dir();
    scenario_host = test_host_new(o);
    ASSERT_OK(tether_host_add_service(scenario_host, "host_value", TETHER_CONTEXT_MAIN,
                                      host_value, NULL));
    ASSERT_OK(tether_host_start(scenario_host));
    *ret_pid = spawn_scripted_client();
    tether_conn *conn = NULL;
    ASSERT_OK(tether_host_get_client(scenario_host, "scripted", &conn));
    return conn;
}

Test(dispatch, call_back_into_a_waiting_main_thread_does_not_deadlock, .timeout = 30)
{
    pid_t pid;
    tether_conn *conn = start_scenario(NULL, &pid);
    /* main -> client.ask_back -> host.host_value (MAIN) -> client.leaf, all nested. */
    tether_call_options o = {.timeout_usec = 10000000};
    tether_value *v = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_conn_call(conn, "ask_back", &o, &v, &err, "i", 0);
    cr_assert_eq(r, 0, "%s: %s", tether_strerror(r), err.message ? err.message : "");
    int64_t n = 0;
    ASSERT_OK(tether_value_read(v, NULL, "x", &n));
    cr_assert_eq(n, 102);
    tether_value_unref(v);
    /* Deeper: the chain goes back and forth five times. */
    r = tether_conn_call(conn, "ask_back", &o, &v, &err, "i", 5);
    cr_assert_eq(r, 0, "%s: %s", tether_strerror(r), err.message ? err.message : "");
    ASSERT_OK(tether_value_read(v, NULL, "x", &n));
    cr_assert_eq(n, 112);
    tether_value_unref(v);
    tether_conn_unref(conn);
    tether_host_unref(scenario_host);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

Test(dispatch, call_back_depth_is_limited, .timeout = 30)
{
    tether_host_options o = {.max_call_depth = 3};
    pid_t pid;
    tether_conn *conn = start_scenario(&o, &pid);
    tether_value *v = NULL;
    tether_error err = TETHER_ERROR_INIT;
    /* Within the limit: fine. */
    ASSERT_OK(tether_conn_call(conn, "ask_back", NULL, &v, NULL, "i", 1));
    tether_value_unref(v);
    /* Past it, the innermost call fails and the failure travels back out: no hang. */
    int r = tether_conn_call(conn, "ask_back", NULL, NULL, &err, "i", 10);
    cr_assert_eq(r, TETHER_EREMOTE, "%d %s", r, tether_strerror(r));
    cr_assert(strstr(err.message, "nested") != NULL, "message: %s", err.message);
    tether_error_done(&err);
    /* And the connection still works. */
    ASSERT_OK(tether_conn_call(conn, "ask_back", NULL, &v, NULL, "i", 0));
    tether_value_unref(v);
    tether_conn_unref(conn);
    tether_host_unref(scenario_host);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
}

/* In one process: the host's main thread calls a client whose POOL handler calls a
 * MAIN service of the host back. The pool thread also waits on the chain; the
 * call-back must still reach the main thread. */
static tether_host *same_process_host;
static tether_client *same_process_client;

static int
host_add_main(tether_request *req, void *userdata)
{
    (void)userdata;
    cr_assert(pthread_equal(pthread_self(), main_thread));
    int64_t a = 0, b = 0;
    int r = tether_request_read(req, "xx", &a, &b);
    return r < 0 ? r : tether_request_reply(req, "x", a + b);
}

static int
client_pool_relay(tether_request *req, void *userdata)
{
    (void)userdata;
    tether_value *v = NULL;
    int r = tether_conn_call(tether_client_get_conn(same_process_client), "add_main", NULL, &v,
                             NULL, "xx", (int64_t)20, (int64_t)22);
    if (r < 0) {
        return r;
    }
    r = tether_request_reply_value(req, v);
    tether_value_unref(v);
    return r;
}

Test(dispatch, call_back_from_a_pool_thread_of_the_same_process, .timeout = 30)
{
    main_thread = pthread_self();
    same_process_host = test_host_new(NULL);
    ASSERT_OK(tether_host_add_service(same_process_host, "add_main", TETHER_CONTEXT_MAIN,
                                      host_add_main, NULL));
    ASSERT_OK(tether_host_start(same_process_host));
    same_process_client = test_client_new("relay", NULL);
    ASSERT_OK(tether_client_add_service(same_process_client, "relay", TETHER_CONTEXT_POOL,
                                        client_pool_relay, NULL));
    ASSERT_OK(tether_client_connect(same_process_client, NULL));
    tether_conn *conn = NULL;
    ASSERT_OK(tether_host_get_client(same_process_host, "relay", &conn));
    tether_call_options o = {.timeout_usec = 5000000, .deadline_usec = tether_now_usec() + 10000000};
    tether_value *v = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_conn_call(conn, "relay", &o, &v, &err, NULL);
    cr_assert_eq(r, 0, "%s: %s", tether_strerror(r), err.message ? err.message : "");
    int64_t n = 0;
    ASSERT_OK(tether_value_read(v, NULL, "x", &n));
    cr_assert_eq(n, 42);
    tether_value_unref(v);
    tether_conn_unref(conn);
    tether_client_unref(same_process_client);
    tether_host_unref(same_process_host);
}

/* POOL services calling each other back and forth, deeper than libuv's pool has
 * threads: each call-back runs on the thread already waiting on the chain. */
static tether_host *pool_host;
static tether_client *pool_client;

static int
pool_bounce(tether_request *req, void *userdata)
{
    bool on_host = userdata != NULL;
    int n = 0;
    int r = tether_request_read(req, "i", &n);
    if (r < 0 || n == 0) {
        return r < 0 ? r : tether_request_reply(req, "i", 0);
    }
    tether_conn *conn = NULL;
    if (on_host) {
        ASSERT_OK(tether_host_get_client(pool_host, "bouncer", &conn));
    } else {
        conn = tether_conn_ref(tether_client_get_conn(pool_client));
    }
    tether_value *v = NULL;
    r = tether_conn_call(conn, "bounce", NULL, &v, NULL, "i", n - 1);
    tether_conn_unref(conn);
    if (r < 0) {
        return r;
    }
    int depth = 0;
    tether_value_read(v, NULL, "i", &depth);
    tether_value_unref(v);
    return tether_request_reply(req, "i", depth + 1);
}

Test(dispatch, pool_call_backs_deeper_than_the_pool, .timeout = 30)
{
    pool_host = test_host_new(NULL);
    ASSERT_OK(tether_host_add_service(pool_host, "bounce", TETHER_CONTEXT_POOL, pool_bounce,
                                      pool_host));
    ASSERT_OK(tether_host_start(pool_host));
    pool_client = test_client_new("bouncer", NULL);
    ASSERT_OK(tether_client_add_service(pool_client, "bounce", TETHER_CONTEXT_POOL, pool_bounce,
                                        NULL));
    ASSERT_OK(tether_client_connect(pool_client, NULL));
    tether_call_options o = {.timeout_usec = 10000000, .deadline_usec = tether_now_usec() + 20000000};
    tether_value *v = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_conn_call(tether_client_get_conn(pool_client), "bounce", &o, &v, &err, "i", 12);
    cr_assert_eq(r, 0, "%s: %s", tether_strerror(r), err.message ? err.message : "");
    int depth = 0;
    ASSERT_OK(tether_value_read(v, NULL, "i", &depth));
    cr_assert_eq(depth, 12);
    tether_value_unref(v);
    tether_client_unref(pool_client);
    tether_host_unref(pool_host);
}

/* Two POOL services that wait for each other: each needs a worker of its own. */
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_changed = PTHREAD_COND_INITIALIZER;
static bool gate_open;
/* How long wait_gate waits for open_gate. */
static uint64_t gate_wait_usec = 5000000;

static int
wait_gate(tether_request *req, void *userdata)
{
    (void)userdata;
    uint64_t deadline = tether_now_usec() + gate_wait_usec;
    pthread_mutex_lock(&gate_lock);
    while (!gate_open && tether_now_usec() < deadline) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&gate_changed, &gate_lock, &ts);
    }
    bool open = gate_open;
    pthread_mutex_unlock(&gate_lock);
    return tether_request_reply(req, "b", open);
}

/* Holds the host's I/O thread, so that what comes meanwhile is read in one batch. */
static int
stall_io(tether_request *req, void *userdata)
{
    (void)userdata;
    usleep(200000);
    return tether_request_reply(req, "n");
}

static int
open_gate(tether_request *req, void *userdata)
{
    (void)userdata;
    pthread_mutex_lock(&gate_lock);
    gate_open = true;
    pthread_cond_broadcast(&gate_changed);
    pthread_mutex_unlock(&gate_lock);
    return tether_request_reply(req, "b", true);
}

/*
 * wait_gate, then open_gate, read by the host in one batch while one pool worker idles:
 * whether open_gate ran while wait_gate waited for it (true), or queued behind it until
 * wait_gate gave up (false).
 */
static bool
gates_in_one_batch(void)
{
    tether_host *h = test_host_new(NULL);
    ASSERT_OK(tether_host_add_service(h, "wait_gate", TETHER_CONTEXT_POOL, wait_gate, NULL));
    ASSERT_OK(tether_host_add_service(h, "open_gate", TETHER_CONTEXT_POOL, open_gate, NULL));
    ASSERT_OK(tether_host_add_service(h, "stall_io", TETHER_CONTEXT_IO, stall_io, NULL));
    ASSERT_OK(tether_host_start(h));
    tether_client *cl = test_client_connect("gates", NULL);
    tether_conn *conn = tether_client_get_conn(cl);
    /* A first POOL call leaves one worker started and idle (made async: a synchronous
     * caller of this process would run it itself, waiting in its chain). */
    tether_future *first = NULL;
    ASSERT_OK(tether_conn_call_async(conn, "open_gate", NULL, &first, NULL));
    ASSERT_OK(tether_future_wait(first, 10000000));
    tether_future_unref(first);
    usleep(20000); /* and back in its wait */
    pthread_mutex_lock(&gate_lock);
    gate_open = false;
    pthread_mutex_unlock(&gate_lock);
    tether_future *stalling = NULL, *waiting = NULL, *opening = NULL;
    ASSERT_OK(tether_conn_call_async(conn, "stall_io", NULL, &stalling, NULL));
    usleep(50000); /* the host's I/O thread is in stall_io */
    ASSERT_OK(tether_conn_call_async(conn, "wait_gate", NULL, &waiting, NULL));
    ASSERT_OK(tether_conn_call_async(conn, "open_gate", NULL, &opening, NULL));
    ASSERT_OK(tether_future_wait(waiting, 10000000));
    tether_value *v = NULL;
    ASSERT_OK(tether_future_get_result(waiting, &v, NULL));
    bool opened = false;
    ASSERT_OK(tether_value_read(v, NULL, "b", &opened));
    tether_value_unref(v);
    ASSERT_OK(tether_future_wait(opening, 10000000));
    tether_future_unref(stalling);
    tether_future_unref(waiting);
    tether_future_unref(opening);
    tether_client_unref(cl);
    tether_host_unref(h);
    return opened;
}

Test(dispatch, pool_services_that_wait_for_each_other, .timeout = 30)
{
    /* The second must not queue behind the first, which blocks until it has run. */
    cr_assert(gates_in_one_batch(), "wait_gate ran alone: open_gate queued behind it");
}

Test(dispatch, pool_size_bounds_the_workers, .timeout = 30)
{
    /* One worker at most: open_gate waits for wait_gate to give up. (Read when the pool
     * starts, at this process's first POOL work; each test runs in a process of its
     * own.) */
    setenv("TETHER_POOL_SIZE", "1", 1);
    gate_wait_usec = 300000;
    cr_assert(!gates_in_one_batch(), "a second worker ran with TETHER_POOL_SIZE=1");
}

Test(dispatch, other_chains_wait_for_dispatch, .timeout = 30)
{
    /* While the main thread waits on one client, another client's MAIN request is not
     * run inside that wait: it is queued and runs at the next dispatch. */
    tether_host *h = start_main_host();
    tether_client *waiter_target = test_client_new("slow", NULL);
    tether_client_unref(waiter_target);
    tether_client *other = test_client_connect("other", NULL);
    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(other), "record", NULL, &f, "i", 7));
    usleep(50000);
    cr_assert_eq(order_len, 0);
    ASSERT_OK(tether_host_dispatch(h, TETHER_BUDGET_UNLIMITED));
    cr_assert_eq(order_len, 1);
    ASSERT_OK(tether_future_wait(f, 5000000));
    tether_future_unref(f);
    tether_client_unref(other);
    tether_host_unref(h);
}

/* ---- an event loop's main thread reads the connection (tether_client_read_*) --------- */

static int
loop_service(tether_request *req, void *userdata)
{
    (void)userdata;
    cr_assert(pthread_equal(pthread_self(), main_thread), "a MAIN service ran off the loop");
    int n = -1;
    tether_request_read(req, "i", &n);
    return tether_request_reply(req, "i", n + 1);
}

static void *
reply_later(void *arg)
{
    tether_request *req = arg;
    usleep(300000);
    tether_request_reply(req, "s", "pong");
    tether_request_unref(req);
    return NULL;
}

/* Answers 300 ms later from a thread of its own (a POOL or MAIN service of this
 * in-process host would run inside the caller's wait: the same chain). */
static int
slow_ping(tether_request *req, void *userdata)
{
    (void)userdata;
    pthread_t t;
    cr_assert(pthread_create(&t, NULL, reply_later, tether_request_ref(req)) == 0);
    pthread_detach(t);
    return 0;
}

typedef struct {
    tether_host *host;
    tether_client *client;
    const char *method; /* host calls: the client's service; else the client calls this */
    int calls, done;
    int begin_result; /* read_begin off the main thread */
} loop_peer;

/* The host calling the client's service `calls` times (a thread of the host's side). */
static void *
host_calls(void *arg)
{
    loop_peer *p = arg;
    tether_conn *conn = NULL;
    ASSERT_OK(tether_host_get_client(p->host, "looped", &conn));
    for (int i = 0; i < p->calls; i++) {
        tether_value *v = NULL;
        int got = 0;
        ASSERT_OK(tether_conn_call(conn, "svc", NULL, &v, NULL, "i", i));
        ASSERT_OK(tether_value_read(v, NULL, "i", &got));
        tether_value_unref(v);
        cr_assert_eq(got, i + 1);
        __atomic_add_fetch(&p->done, 1, __ATOMIC_SEQ_CST);
    }
    tether_conn_unref(conn);
    return NULL;
}

/* A thread of the client's side calling the host: it takes the reading over. */
static void *
client_calls(void *arg)
{
    loop_peer *p = arg;
    p->begin_result = tether_client_read_begin(p->client);
    tether_value *v = NULL;
    ASSERT_OK(tether_conn_call(tether_client_get_conn(p->client), p->method, NULL, &v, NULL, NULL));
    tether_value_unref(v);
    __atomic_add_fetch(&p->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

/* read_begin once the I/O thread, which may be reading at this moment, has let go:
 * a loop finding the reading busy begins again later. */
static int
read_begin_again(tether_client *c)
{
    int r = TETHER_EBUSY;
    for (int i = 0; i < 1000 && r == TETHER_EBUSY; i++) {
        if ((r = tether_client_read_begin(c)) == TETHER_EBUSY) {
            usleep(1000);
        }
    }
    return r;
}

/* The loop: poll the socket while reading it, and the queue's fd, until done reaches n. */
static void
run_loop(tether_client *c, loop_peer *p, int n)
{
    int sock = tether_client_read_begin(c);
    uint64_t deadline = tether_now_usec() + 10000000;
    while (__atomic_load_n(&p->done, __ATOMIC_SEQ_CST) < n && tether_now_usec() < deadline) {
        struct pollfd fds[2] = {{.fd = tether_client_get_fd(c), .events = POLLIN},
                                {.fd = sock, .events = POLLIN}};
        if (poll(fds, sock >= 0 ? 2 : 1, 10) < 0) {
            continue;
        }
        if (fds[0].revents) {
            ASSERT_OK(tether_client_dispatch(c, TETHER_BUDGET_UNLIMITED) >= 0 ? 0 : -1);
        }
        if (sock >= 0 && fds[1].revents && tether_client_read_ready(c, TETHER_BUDGET_UNLIMITED)) {
            sock = -1; /* another thread took the reading: the queue's fd serves */
        }
        if (sock < 0) {
            sock = tether_client_read_begin(c);
        }
    }
    cr_assert_eq(__atomic_load_n(&p->done, __ATOMIC_SEQ_CST), n);
}

Test(dispatch, an_event_loop_reads_the_connection_itself, .timeout = 30)
{
    main_thread = pthread_self();
    tether_host *h = test_host_new(NULL);
    ASSERT_OK(tether_host_add_service(h, "ping", TETHER_CONTEXT_IO, ping, NULL));
    ASSERT_OK(tether_host_add_service(h, "slow_ping", TETHER_CONTEXT_IO, slow_ping, NULL));
    ASSERT_OK(tether_host_start(h));
    tether_client *c = test_client_new("looped", NULL);
    ASSERT_ERR(tether_client_read_begin(c), TETHER_ENOTCONN);
    ASSERT_OK(tether_client_add_service(c, "svc", TETHER_CONTEXT_MAIN, loop_service, NULL));
    ASSERT_OK(tether_client_connect(c, NULL));

    /* The host's calls are read and run by the loop's thread (once the I/O thread, which
     * may be reading what followed the welcome, lets go). */
    int sock = read_begin_again(c);
    cr_assert(sock >= 0, "read_begin: %s", tether_strerror(sock));
    cr_assert_eq(tether_client_read_begin(c), sock, "holding it already is no error");
    loop_peer p = {.host = h, .client = c, .calls = 200};
    pthread_t t;
    cr_assert(pthread_create(&t, NULL, host_calls, &p) == 0);
    run_loop(c, &p, p.calls);
    pthread_join(t, NULL);

    /* The loop's own blocking call leaves the reading with it. */
    tether_value *v = NULL;
    ASSERT_OK(tether_conn_call(tether_client_get_conn(c), "ping", NULL, &v, NULL, NULL));
    tether_value_unref(v);
    ASSERT_OK(tether_client_read_ready(c, TETHER_BUDGET_UNLIMITED));

    /* Its wait for a future hands the reading to the I/O thread: blocked there, it runs
     * no loop to read the answer. Then it begins again. */
    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(c), "ping", NULL, &f, NULL));
    ASSERT_OK(tether_future_wait(f, 5000000));
    tether_future_unref(f);
    cr_assert_eq(tether_client_read_ready(c, TETHER_BUDGET_UNLIMITED), 1);
    cr_assert_eq(read_begin_again(c), sock);

    /* Another thread's call takes it over: read_begin is refused there (not the main
     * thread) and here while that call runs; after it the loop learns it lost the
     * reading, and takes it back. */
    loop_peer q = {.client = c, .method = "slow_ping"};
    cr_assert(pthread_create(&t, NULL, client_calls, &q) == 0);
    usleep(100000);
    ASSERT_ERR(tether_client_read_begin(c), TETHER_EBUSY);
    pthread_join(t, NULL);
    cr_assert_eq(q.begin_result, TETHER_EPERM);
    cr_assert_eq(tether_client_read_ready(c, TETHER_BUDGET_UNLIMITED), 1);
    cr_assert_eq(read_begin_again(c), sock);

    /* And serves the host's calls again. */
    p.done = 0;
    cr_assert(pthread_create(&t, NULL, host_calls, &p) == 0);
    run_loop(c, &p, p.calls);
    pthread_join(t, NULL);
    ASSERT_OK(tether_client_read_end(c));
    cr_assert_eq(tether_client_read_ready(c, TETHER_BUDGET_UNLIMITED), 1);
    tether_client_unref(c);
    tether_host_unref(h);
}

/* Context switches so far of this process's threads named name (/proc). */
static long
thread_switches(const char *name)
{
    long total = 0;
    DIR *d = opendir("/proc/self/task");
    cr_assert(d != NULL);
    for (struct dirent *e; (e = readdir(d));) {
        char path[300], comm[64] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) {
            continue;
        }
        bool match = fgets(comm, sizeof comm, f) && strncmp(comm, name, strlen(name)) == 0 &&
                     comm[strlen(name)] == '\n';
        fclose(f);
        snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
        if (!match || !(f = fopen(path, "r"))) {
            continue;
        }
        char line[256];
        long n;
        while (fgets(line, sizeof line, f)) {
            if (sscanf(line, "voluntary_ctxt_switches: %ld", &n) == 1 ||
                sscanf(line, "nonvoluntary_ctxt_switches: %ld", &n) == 1) {
                total += n;
            }
        }
        fclose(f);
    }
    closedir(d);
    return total;
}

static int
main_ping(tether_request *req, void *userdata)
{
    (void)userdata;
    cr_assert(pthread_equal(pthread_self(), main_thread), "a MAIN handler ran off the main thread");
    return tether_request_reply(req, "s", "pong");
}

static void *
call_main_ping(void *arg)
{
    loop_peer *p = arg;
    for (int i = 0; i < p->calls; i++) {
        tether_value *v = NULL;
        ASSERT_OK(
            tether_conn_call(tether_client_get_conn(p->client), "main_ping", NULL, &v, NULL, NULL));
        tether_value_unref(v);
        __atomic_add_fetch(&p->done, 1, __ATOMIC_SEQ_CST);
    }
    return NULL;
}

#ifdef __linux__
Test(dispatch, a_host_waiting_on_its_one_client_reads_it_itself, .timeout = 60)
{
    /* The host's main thread in tether_host_wait reads its only connection: a call of a
     * MAIN service wakes it alone, and the process's I/O thread (which the client here
     * shares: its caller reads its own replies) sleeps. A count of switches, not a time.
     * A call that comes while the main thread is between two waits (it has written the
     * reply, and the caller was quicker than its return to tether_host_wait) is read by
     * the I/O thread: the best of three rounds counts, against half the calls. */
    if (strcmp(TETHER_TEST_PLATFORM, "linux") != 0) {
        /* The portable build's I/O thread watches the socket itself: the reading thread's
         * input may wake it too. */
        cr_skip_test("the %s build's I/O thread may wake for input another thread reads",
                     TETHER_TEST_PLATFORM);
    }
    main_thread = pthread_self();
    tether_host *h = test_host_new(NULL);
    ASSERT_OK(tether_host_add_service(h, "main_ping", TETHER_CONTEXT_MAIN, main_ping, NULL));
    ASSERT_OK(tether_host_start(h));
    tether_client *c = test_client_connect("one", NULL);
    test_wait_client_count(h, 1, 5000);
    enum {
        CALLS = 1000
    };
    long woken = -1;
    for (int round = 0; round < 3 && (woken < 0 || woken >= CALLS / 2); round++) {
        loop_peer p = {.client = c, .calls = CALLS};
        long before = thread_switches("tether-io");
        pthread_t t;
        cr_assert(pthread_create(&t, NULL, call_main_ping, &p) == 0);
        uint64_t deadline = tether_now_usec() + 20000000;
        while (__atomic_load_n(&p.done, __ATOMIC_SEQ_CST) < p.calls &&
               tether_now_usec() < deadline) {
            cr_assert(tether_host_wait(h, 100000) >= 0);
        }
        pthread_join(t, NULL);
        long n = thread_switches("tether-io") - before;
        woken = woken < 0 || n < woken ? n : woken;
    }
    cr_assert_lt(woken, CALLS / 2, "the I/O thread woke %ld times for %d calls", woken, CALLS);
    tether_client_unref(c);
    tether_host_unref(h);
}
#endif

/* ---- a host or client that goes waits for its handlers running ------------------------ */

/* A POOL service that takes 300 ms: what it uses must not be freed under it. */
static atomic_int slow_entered, slow_finished;

static int
slow_pool_service(tether_request *req, void *userdata)
{
    (void)userdata;
    atomic_store(&slow_entered, 1);
    usleep(300 * 1000);
    atomic_store(&slow_finished, 1);
    return tether_request_reply(req, "i", 1);
}

static void
wait_until_entered(void)
{
    for (int i = 0; i < 1000 && !atomic_load(&slow_entered); i++) {
        usleep(5000);
    }
    cr_assert(atomic_load(&slow_entered), "the POOL service did not start");
}

Test(dispatch, a_host_stops_only_once_its_running_handlers_return, .timeout = 30)
{
    tether_host *h = test_host_new(NULL);
    ASSERT_OK(tether_host_add_service(h, "slow", TETHER_CONTEXT_POOL, slow_pool_service, NULL));
    ASSERT_OK(tether_host_start(h));
    tether_client *c = test_client_connect("caller", NULL);
    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(c), "slow", NULL, &f, NULL));
    wait_until_entered();
    ASSERT_OK(tether_host_stop(h));
    cr_assert(atomic_load(&slow_finished), "tether_host_stop returned while a handler ran");
    tether_future_unref(f);
    tether_client_unref(c);
    tether_host_unref(h);
}

/* A started host (*h) and a client named name (*c) serving service with handler in
 * context; returns the host's connection to it. */
static tether_conn *
host_with_serving_client(tether_host **h, tether_client **c, const char *name, const char *service,
                         tether_context context, tether_handler_fn handler)
{
    *h = test_host_new(NULL);
    ASSERT_OK(tether_host_start(*h));
    *c = test_client_new(name, NULL);
    ASSERT_OK(tether_client_add_service(*c, service, context, handler, NULL));
    ASSERT_OK(tether_client_connect(*c, NULL));
    tether_conn *conn = NULL;
    ASSERT_OK(tether_host_get_client(*h, name, &conn));
    return conn;
}

Test(dispatch, the_last_client_unref_waits_for_its_running_handlers, .timeout = 30)
{
    tether_host *h;
    tether_client *c;
    tether_conn *conn =
        host_with_serving_client(&h, &c, "served", "slow", TETHER_CONTEXT_POOL, slow_pool_service);
    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async(conn, "slow", NULL, &f, NULL));
    wait_until_entered();
    tether_client_unref(c);
    cr_assert(atomic_load(&slow_finished), "tether_client_unref returned while a handler ran");
    tether_future_unref(f);
    tether_conn_unref(conn);
    tether_host_unref(h);
}

/* A handler that stops its own host (which it should not): the stop does not wait for
 * the handler calling it, nor hang. */
static tether_host *self_stopping_host;
static atomic_int self_stop_result = 1;

static int
stop_own_host(tether_request *req, void *userdata)
{
    (void)req;
    (void)userdata;
    atomic_store(&self_stop_result, tether_host_stop(self_stopping_host));
    return 0;
}

Test(dispatch, a_handler_that_stops_its_host_does_not_wait_for_itself, .timeout = 30)
{
    self_stopping_host = test_host_new(NULL);
    ASSERT_OK(tether_host_add_service(self_stopping_host, "stop", TETHER_CONTEXT_POOL,
                                      stop_own_host, NULL));
    ASSERT_OK(tether_host_start(self_stopping_host));
    tether_client *c = test_client_connect("stopper", NULL);
    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(c), "stop", NULL, &f, NULL));
    /* The call fails as the host's connections close, maybe before the stop returns. */
    for (int i = 0; i < 2000 && atomic_load(&self_stop_result) == 1; i++) {
        usleep(5000);
    }
    cr_assert_eq(atomic_load(&self_stop_result), 0, "the handler's tether_host_stop: %d",
                 atomic_load(&self_stop_result));
    tether_future_unref(f);
    tether_client_unref(c);
    tether_host_unref(self_stopping_host);
}

/* A MAIN future callback that never runs (its host stops first) has its discard
 * function called instead, so that what its userdata holds can be freed. */
static int discard_fn_runs, discard_runs;

static void
never_dispatched(tether_future *f, void *userdata)
{
    (void)f;
    (void)userdata;
    discard_fn_runs++;
}

static void
count_discard(void *userdata)
{
    cr_assert_eq(userdata, &discard_runs);
    discard_runs++;
}

Test(dispatch, a_main_callback_that_never_runs_is_discarded, .timeout = 30)
{
    tether_host *h;
    tether_client *c;
    tether_conn *conn =
        host_with_serving_client(&h, &c, "echoer", "echo", TETHER_CONTEXT_IO, test_echo_handler);
    tether_future *f[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        ASSERT_OK(tether_conn_call_async(conn, "echo", NULL, &f[i], "x", (int64_t)i));
        ASSERT_OK(tether_future_wait(f[i], 10 * 1000 * 1000));
        ASSERT_OK(tether_future_set_callback_full(f[i], TETHER_CONTEXT_MAIN, never_dispatched,
                                                  &discard_runs, count_discard));
        cr_assert(test_fd_readable(tether_host_get_fd(h)), "the callback is not queued");
        if (i == 0) {
            /* Dispatched, it runs and its discard does not. */
            cr_assert_eq(tether_host_dispatch(h, 0), 0);
            cr_assert_eq(discard_fn_runs, 1);
            cr_assert_eq(discard_runs, 0);
        }
    }
    ASSERT_OK(tether_host_stop(h));
    cr_assert_eq(discard_runs, 1);
    cr_assert_eq(discard_fn_runs, 1);
    cr_assert_eq(tether_host_dispatch(h, 0), 0);
    cr_assert_eq(discard_fn_runs, 1);
    cr_assert_eq(discard_runs, 1);
    tether_future_unref(f[0]);
    tether_future_unref(f[1]);
    tether_conn_unref(conn);
    tether_client_unref(c);
    tether_host_unref(h);
}
