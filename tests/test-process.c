/*
 * Real separate processes: what DESIGN.md promises across a process boundary. Several
 * client processes and a host calling each other at once; a host that is stopped
 * (SIGSTOP) times calls out but keeps its connections, while one that is killed fails
 * them at once; a client that dies in the middle of a call costs the host nothing but
 * that call; a restarted host is found again by fresh clients; host threads that make a
 * call to a client process and exit leave no memory or descriptor behind.
 *
 * The children are those of process-helpers.h: plain fork()s that never return into
 * Criterion, report through their exit status and through pipes, and are bounded three
 * ways; they are forked before the parent starts any tether object where possible.
 */
/* ctest: timeout=180 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>

#include "process-helpers.h"

/* ---- parent side ---------------------------------------------------------------------- */

/* Wait (bounded) for a stop or continue notification of pid. */
static void
wait_state(pid_t pid, bool stopped)
{
    int status = 0;
    for (int waited = 0; waited < WAIT_MS; waited++) {
        pid_t r = waitpid(pid, &status, WNOHANG | (stopped ? WUNTRACED : WCONTINUED));
        cr_assert(r >= 0, "waitpid: %s", strerror(errno));
        if (r == pid) {
            cr_assert(stopped ? WIFSTOPPED(status) : WIFCONTINUED(status), "status 0x%x", status);
            return;
        }
        usleep(1000);
    }
    cr_assert_fail("child %d never %s", (int)pid, stopped ? "stopped" : "continued");
}

/* ---- services ------------------------------------------------------------------------ */

/* A client's own service: answers with its index, so the caller knows who answered. */
static int
ident_handler(tether_request *req, void *userdata)
{
    int64_t v;
    int r = tether_request_read(req, "x", &v);
    if (r < 0) {
        return r;
    }
    return tether_request_reply(req, "x", (int64_t)(*(int *)userdata + 1) * 1000000 + v);
}

static tether_host *
parent_host(const char *name)
{
    tether_host_options o = {.name = name};
    tether_host *h = test_host_new(&o);
    ASSERT_OK(tether_host_add_service(h, "add", TETHER_CONTEXT_IO, test_add_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "echo", TETHER_CONTEXT_IO, test_echo_handler, NULL));
    ASSERT_OK(tether_host_start(h));
    return h;
}

/* ---- many clients, both directions at once -------------------------------------------- */

#define N_WORKERS 3
#define N_CALLS 1000
#define N_HOST_THREADS 2
#define N_HOST_ROUNDS 300

typedef struct worker {
    int index;
    channel ch;
    pid_t pid;
} worker;

static int
worker_main(channel *ch, void *arg)
{
    worker *w = arg;
    child_expect(ch, 'G');
    char name[32];
    snprintf(name, sizeof(name), "worker-%d", w->index);
    tether_client *c = child_client(name, "procs");
    CHILD_OK(tether_client_add_service(c, "ident", TETHER_CONTEXT_IO, ident_handler, &w->index));
    child_connect(c);
    child_send(ch, 'R');
    child_expect(ch, 'C');
    tether_conn *conn = tether_client_get_conn(c);
    int64_t base = (int64_t)w->index * 100000;
    for (int k = 0; k < N_CALLS; k++) {
        tether_value *v = NULL;
        CHILD_OK(tether_conn_call(conn, "add", NULL, &v, NULL, "xx", base + k, (int64_t)k));
        int64_t sum = 0;
        CHILD_OK(tether_value_read(v, NULL, "x", &sum));
        if (sum != base + 2 * k) {
            CHILD_FAIL("sync result", "call %d: %lld", k, (long long)sum);
        }
        tether_value_unref(v);
    }
    static tether_future *futures[N_CALLS];
    for (int k = 0; k < N_CALLS; k++) {
        CHILD_OK(tether_conn_call_async(conn, "add", NULL, &futures[k], "xx", base, (int64_t)k));
    }
    for (int k = 0; k < N_CALLS; k++) {
        CHILD_OK(tether_future_wait(futures[k], 10000000));
        tether_value *v = NULL;
        CHILD_OK(tether_future_get_result(futures[k], &v, NULL));
        int64_t sum = 0;
        CHILD_OK(tether_value_read(v, NULL, "x", &sum));
        if (sum != base + k) {
            CHILD_FAIL("async result", "call %d: %lld", k, (long long)sum);
        }
        tether_value_unref(v);
        tether_future_unref(futures[k]);
    }
    child_send(ch, 'D');
    /* Stay until the host is done calling us. */
    child_wait_finish(ch);
    tether_client_unref(c);
    return 0;
}

typedef struct host_caller {
    tether_host *host;
    int thread;
    atomic_int calls;
    char failure[256]; /* first failure, empty if none */
} host_caller;

static atomic_bool clients_done;

static void *
host_caller_main(void *arg)
{
    host_caller *hc = arg;
    /* At least N_HOST_ROUNDS, and on until every client has made all its calls, so
     * that both directions are certainly busy at the same time. */
    for (int round = 0; (round < N_HOST_ROUNDS || !atomic_load(&clients_done)) && !hc->failure[0];
         round++) {
        for (int i = 0; i < N_WORKERS; i++) {
            char name[32];
            snprintf(name, sizeof(name), "worker-%d", i);
            tether_conn *conn = NULL;
            int r = tether_host_get_client(hc->host, name, &conn);
            if (r < 0) {
                snprintf(hc->failure, sizeof(hc->failure), "get_client %s: %s", name,
                         tether_strerror(r));
                return NULL;
            }
            int64_t arg_v = (int64_t)hc->thread * 10000 + round;
            tether_value *v = NULL;
            tether_error err = TETHER_ERROR_INIT;
            tether_call_options o = {.timeout_usec = 10000000};
            r = tether_conn_call(conn, "ident", &o, &v, &err, "x", arg_v);
            int64_t got = 0;
            if (r == 0) {
                r = tether_value_read(v, NULL, "x", &got);
            }
            if (r < 0 || got != (int64_t)(i + 1) * 1000000 + arg_v) {
                snprintf(hc->failure, sizeof(hc->failure), "ident on %s: %s %s (got %lld)", name,
                         tether_strerror(r), err.message ? err.message : "", (long long)got);
            }
            tether_error_done(&err);
            tether_value_unref(v);
            tether_conn_unref(conn);
            atomic_fetch_add(&hc->calls, 1);
        }
    }
    return NULL;
}

Test(process, three_clients_and_the_host_call_each_other, .timeout = 120)
{
    test_runtime_dir();
    static worker workers[N_WORKERS];
    for (int i = 0; i < N_WORKERS; i++) {
        workers[i].index = i;
        channel_open(&workers[i].ch);
    }
    for (int i = 0; i < N_WORKERS; i++) {
        workers[i].pid = spawn(&workers[i].ch, worker_main, &workers[i]);
    }
    tether_host *h = parent_host("procs");
    int fds_before = count_open_fds();
    for (int i = 0; i < N_WORKERS; i++) {
        send_byte(&workers[i].ch, 'G');
    }
    for (int i = 0; i < N_WORKERS; i++) {
        expect_byte(&workers[i].ch, 'R', WAIT_MS);
    }
    cr_assert_eq(tether_host_get_client_count(h), N_WORKERS);
    for (int i = 0; i < N_WORKERS; i++) {
        char name[32];
        snprintf(name, sizeof(name), "worker-%d", i);
        tether_conn *conn = NULL;
        ASSERT_OK(tether_host_get_client(h, name, &conn));
        cr_assert_eq(tether_conn_get_peer_pid(conn), (int64_t)workers[i].pid);
        cr_assert_str_eq(tether_conn_get_peer_language(conn), "c");
        tether_conn_unref(conn);
    }

    /* The host's threads start calling, then the clients are let loose on the host. */
    static host_caller callers[N_HOST_THREADS];
    pthread_t threads[N_HOST_THREADS];
    for (int t = 0; t < N_HOST_THREADS; t++) {
        callers[t].host = h;
        callers[t].thread = t;
        cr_assert(pthread_create(&threads[t], NULL, host_caller_main, &callers[t]) == 0);
    }
    for (int i = 0; i < N_WORKERS; i++) {
        send_byte(&workers[i].ch, 'C');
    }
    for (int i = 0; i < N_WORKERS; i++) {
        expect_byte(&workers[i].ch, 'D', 60000);
    }
    atomic_store(&clients_done, true);
    for (int t = 0; t < N_HOST_THREADS; t++) {
        pthread_join(threads[t], NULL);
    }
    for (int t = 0; t < N_HOST_THREADS; t++) {
        cr_assert(callers[t].failure[0] == '\0', "host thread %d: %s", t, callers[t].failure);
        cr_assert_geq(atomic_load(&callers[t].calls), N_HOST_ROUNDS * N_WORKERS);
    }

    for (int i = 0; i < N_WORKERS; i++) {
        finish(&workers[i].ch);
    }
    for (int i = 0; i < N_WORKERS; i++) {
        assert_exited(workers[i].pid, reap(workers[i].pid, WAIT_MS), 0);
        close_fd(&workers[i].ch.up[0]);
    }
    test_wait_client_count(h, 0, 2000);
    /* The host keeps nothing of clients that left (their pipes are closed too). */
    int fds_expected = fds_before - 2 * N_WORKERS;
    for (int i = 0; i < 200 && count_open_fds() != fds_expected; i++) {
        usleep(10000);
    }
    cr_assert_eq(count_open_fds(), fds_expected, "fds: %d before, %d after", fds_expected,
                 count_open_fds());
    tether_host_unref(h);
    assert_no_children_left();
}

/* ---- short-lived host threads -------------------------------------------------------- */

static int
idle_client_main(channel *ch, void *arg)
{
    (void)arg;
    child_expect(ch, 'G');
    tether_client *c = child_client("callee", "procs3");
    static int index = 6;
    CHILD_OK(tether_client_add_service(c, "ident", TETHER_CONTEXT_IO, ident_handler, &index));
    child_connect(c);
    child_send(ch, 'R');
    child_wait_finish(ch);
    tether_client_unref(c);
    return 0;
}

typedef struct one_call {
    tether_host *host;
    int64_t arg;
    int result;
} one_call;

static void *
one_call_main(void *arg)
{
    one_call *oc = arg;
    tether_conn *conn = NULL;
    oc->result = tether_host_get_client(oc->host, "callee", &conn);
    tether_value *v = NULL;
    if (oc->result == 0) {
        oc->result = tether_conn_call(conn, "ident", NULL, &v, NULL, "x", oc->arg);
    }
    int64_t got = 0;
    if (oc->result == 0) {
        oc->result = tether_value_read(v, NULL, "x", &got);
    }
    if (oc->result == 0 && got != 7 * 1000000 + oc->arg) {
        oc->result = -EBADMSG;
    }
    tether_value_unref(v);
    tether_conn_unref(conn);
    return NULL;
}

static void
call_from_a_new_thread(tether_host *h, int64_t arg)
{
    one_call oc = {.host = h, .arg = arg};
    pthread_t t;
    cr_assert(pthread_create(&t, NULL, one_call_main, &oc) == 0);
    pthread_join(t, NULL);
    cr_assert(oc.result == 0, "call %lld: %d (%s)", (long long)arg, oc.result,
              tether_strerror(oc.result));
}

Test(process, host_threads_that_call_and_exit_leave_nothing_behind, .timeout = 60)
{
    /* One malloc arena, so that mallinfo2() sees what every thread allocates. (Under
     * ASan mallinfo2 reports nothing and LeakSanitizer does this job instead.) */
    mallopt(M_ARENA_MAX, 1);
    test_runtime_dir();
    static channel ch;
    channel_open(&ch);
    pid_t pid = spawn(&ch, idle_client_main, NULL);
    tether_host *h = parent_host("procs3");
    send_byte(&ch, 'G');
    expect_byte(&ch, 'R', WAIT_MS);
    /* Warm up: whatever the library keeps once per process is allocated by now. */
    for (int i = 0; i < 5; i++) {
        call_from_a_new_thread(h, i);
    }
    int fds = count_open_fds();
    size_t used = mallinfo2().uordblks;
    for (int i = 0; i < 200; i++) {
        call_from_a_new_thread(h, 100 + i);
    }
    long long grown = (long long)mallinfo2().uordblks - (long long)used;
    int fds_after = count_open_fds();
    finish(&ch);
    assert_exited(pid, reap(pid, WAIT_MS), 0);
    tether_host_unref(h);
    close_fd(&ch.up[0]);
    assert_no_children_left();
    cr_assert_eq(fds_after, fds, "200 threads that called once left %d fds behind",
                 fds_after - fds);
    /* A thread that has gone can own nothing: allow for noise, not per-thread buffers. */
    cr_assert(grown < 256 * 1024, "200 threads that called once left %lld bytes behind", grown);
}

/* ---- a host that is stopped, continued, then killed ----------------------------------- */

typedef struct host_child {
    const char *name;
} host_child;

static channel *hold_channel;
static tether_request *held[16];
static int n_held;

/* Keeps the request unanswered (the library sends progress for it) and says so. */
static int
hold_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    if (n_held < 16) {
        held[n_held++] = tether_request_ref(req);
    }
    child_send(hold_channel, 'H');
    return 0;
}

static int
host_child_main(channel *ch, void *arg)
{
    host_child *hc = arg;
    hold_channel = ch;
    tether_host_options o = {.name = hc->name, .log = test_log, .log_level = TETHER_LOG_DEBUG};
    tether_host *h = NULL;
    CHILD_OK(tether_host_new(&o, &h));
    CHILD_OK(tether_host_add_service(h, "add", TETHER_CONTEXT_IO, test_add_handler, NULL));
    CHILD_OK(tether_host_add_service(h, "echo", TETHER_CONTEXT_IO, test_echo_handler, NULL));
    CHILD_OK(tether_host_add_service(h, "hold", TETHER_CONTEXT_IO, hold_handler, NULL));
    int r = tether_host_start(h);
    if (r < 0) {
        child_send(ch, 'E');
        CHILD_FAIL("tether_host_start", "%s", tether_strerror(r));
    }
    child_send(ch, 'R');
    child_wait_finish(ch);
    for (int i = 0; i < n_held; i++) {
        tether_request_unref(held[i]);
    }
    tether_host_unref(h);
    return 0;
}

typedef struct stopper {
    pid_t pid;
    channel *ch;
    int delay_ms;
    uint64_t stopped_at;
    int result; /* 0 once stopped, else what went wrong */
} stopper;

/* Stops the host once it holds the call, after letting the call live delay_ms. */
static void *
stopper_main(void *arg)
{
    stopper *s = arg;
    s->result = read_byte(s->ch->up[0], WAIT_MS) == 'H' ? 0 : -1;
    if (s->result == 0) {
        usleep((useconds_t)s->delay_ms * 1000);
        s->stopped_at = tether_now_usec();
        s->result = kill(s->pid, SIGSTOP) == 0 ? 0 : -2;
    }
    return NULL;
}

Test(process, stopped_host_times_out_then_recovers_killed_host_fails_at_once, .timeout = 60)
{
    test_runtime_dir();
    static channel ch;
    channel_open(&ch);
    host_child hc = {.name = "remote"};
    pid_t pid = spawn(&ch, host_child_main, &hc);
    expect_byte(&ch, 'R', WAIT_MS);
    tether_client *c = test_client_connect("watcher", "remote");
    tether_conn *conn = tether_client_get_conn(c);
    cr_assert_eq(tether_conn_get_peer_pid(conn), (int64_t)pid);
    test_assert_echo(conn, 1);

    /* A live callee keeps a call alive past its silence timeout (progress); once the
     * host is stopped the silence starts, and the call fails one timeout later. */
    stopper s = {.pid = pid, .ch = &ch, .delay_ms = 500};
    pthread_t t;
    cr_assert(pthread_create(&t, NULL, stopper_main, &s) == 0);
    tether_call_options o = {.timeout_usec = 300000};
    tether_error err = TETHER_ERROR_INIT;
    uint64_t t0 = tether_now_usec();
    int r = tether_conn_call(conn, "hold", &o, NULL, &err, NULL);
    uint64_t t1 = tether_now_usec();
    pthread_join(t, NULL);
    cr_assert_eq(s.result, 0, "stopping the host failed: %d", s.result);
    wait_state(pid, true);
    cr_assert_eq(r, TETHER_ETIMEDOUT, "held call gave %d (%s): %s", r, tether_strerror(r),
                 err.message ? err.message : "");
    cr_assert_str_eq(err.type, "tether.Timeout");
    tether_error_done(&err);
    /* Progress goes out every third of the timeout, so the silence began at most about
     * 100 ms before the stop: the call failed 200-300 ms after it, and lived on for the
     * 500 ms before it although its timeout is 300 ms. */
    cr_assert(t1 - t0 >= 550000, "the live call failed after %llu us",
              (unsigned long long)(t1 - t0));
    cr_assert(t1 >= s.stopped_at + 100000, "failed %lld us after the stop",
              (long long)(t1 - s.stopped_at));
    cr_assert(t1 - s.stopped_at < 3000000, "failed %llu us after the stop",
              (unsigned long long)(t1 - s.stopped_at));

    /* A call made while the host is stopped: silence from the start. */
    t0 = tether_now_usec();
    ASSERT_ERR(tether_conn_call(conn, "echo", &o, NULL, &err, "x", (int64_t)2), TETHER_ETIMEDOUT);
    t1 = tether_now_usec();
    tether_error_done(&err);
    cr_assert(t1 - t0 >= 250000 && t1 - t0 < 3000000, "took %llu us",
              (unsigned long long)(t1 - t0));
    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async(conn, "echo", &o, &f, "x", (int64_t)3));
    ASSERT_OK(tether_future_wait(f, 5000000));
    ASSERT_ERR(tether_future_get_result(f, NULL, NULL), TETHER_ETIMEDOUT);
    tether_future_unref(f);
    cr_assert_eq(tether_conn_is_connected(conn), 1, "a timeout must not close the connection");

    /* Continued, the host answers the calls it missed; those answers are dropped and the
     * connection goes on with every reply matched to its own call. */
    cr_assert(kill(pid, SIGCONT) == 0);
    wait_state(pid, false);
    for (int64_t i = 10; i < 60; i++) {
        test_assert_echo(conn, i);
    }
    cr_assert_eq(tether_conn_is_connected(conn), 1);

    /* Killed, the host is gone at once, not after a timeout. */
    cr_assert(kill(pid, SIGKILL) == 0);
    int status = reap(pid, WAIT_MS);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    t0 = tether_now_usec();
    r = tether_conn_call(conn, "echo", NULL, NULL, &err, "x", (int64_t)4);
    t1 = tether_now_usec();
    cr_assert(r == TETHER_ECONNRESET || r == TETHER_ENOTCONN, "%d (%s)", r, tether_strerror(r));
    cr_assert(err.type != NULL, "reterr is filled for a lost connection");
    tether_error_done(&err);
    cr_assert(t1 - t0 < 1000000, "took %llu us", (unsigned long long)(t1 - t0));
    cr_assert_eq(tether_conn_is_connected(conn), 0);

    tether_client_unref(c);
    close_fd(&ch.up[0]);
    finish(&ch);
    assert_no_children_left();
}

/* ---- a client that dies while the host calls it --------------------------------------- */

static int
die_handler(tether_request *req, void *userdata)
{
    (void)req;
    (void)userdata;
    _exit(7);
}

static int
doomed_main(channel *ch, void *arg)
{
    (void)arg;
    child_expect(ch, 'G');
    tether_client *c = child_client("doomed", "procs2");
    CHILD_OK(tether_client_add_service(c, "die", TETHER_CONTEXT_IO, die_handler, NULL));
    child_connect(c);
    child_send(ch, 'R');
    child_wait_finish(ch);
    tether_client_unref(c);
    return 0; /* not reached when the host calls "die" */
}

static int
survivor_main(channel *ch, void *arg)
{
    (void)arg;
    child_expect(ch, 'G');
    tether_client *c = child_client("survivor", "procs2");
    static int index = 4;
    CHILD_OK(tether_client_add_service(c, "ident", TETHER_CONTEXT_IO, ident_handler, &index));
    child_connect(c);
    child_send(ch, 'R');
    child_expect(ch, 'C');
    for (int k = 0; k < 100; k++) {
        tether_value *v = NULL;
        CHILD_OK(tether_conn_call(tether_client_get_conn(c), "add", NULL, &v, NULL, "xx",
                                  (int64_t)k, (int64_t)1));
        int64_t sum = 0;
        CHILD_OK(tether_value_read(v, NULL, "x", &sum));
        CHILD_CHECK(sum == k + 1);
        tether_value_unref(v);
    }
    child_send(ch, 'D');
    child_wait_finish(ch);
    tether_client_unref(c);
    return 0;
}

Test(process, client_exiting_mid_call_fails_only_that_call, .timeout = 60)
{
    test_runtime_dir();
    static channel dch, sch;
    channel_open(&dch);
    channel_open(&sch);
    pid_t doomed = spawn(&dch, doomed_main, NULL);
    pid_t survivor = spawn(&sch, survivor_main, NULL);
    tether_host *h = parent_host("procs2");
    send_byte(&dch, 'G');
    send_byte(&sch, 'G');
    expect_byte(&dch, 'R', WAIT_MS);
    expect_byte(&sch, 'R', WAIT_MS);
    cr_assert_eq(tether_host_get_client_count(h), 2);

    tether_conn *conn = NULL;
    ASSERT_OK(tether_host_get_client(h, "doomed", &conn));
    tether_call_options o = {.timeout_usec = 10000000};
    tether_error err = TETHER_ERROR_INIT;
    uint64_t t0 = tether_now_usec();
    int r = tether_conn_call(conn, "die", &o, NULL, &err, NULL);
    uint64_t took = tether_now_usec() - t0;
    cr_assert_eq(r, TETHER_ECONNRESET, "%d (%s): %s", r, tether_strerror(r),
                 err.message ? err.message : "");
    cr_assert_str_eq(err.type, "tether.ConnectionLost");
    tether_error_done(&err);
    cr_assert(took < 2000000, "the call took %llu us to notice", (unsigned long long)took);
    cr_assert_eq(tether_conn_is_connected(conn), 0);
    ASSERT_ERR(tether_conn_call(conn, "die", NULL, NULL, NULL, NULL), TETHER_ENOTCONN);
    tether_conn_unref(conn);
    assert_exited(doomed, reap(doomed, WAIT_MS), 7);
    test_wait_client_count(h, 1, 2000);
    ASSERT_ERR(tether_host_get_client(h, "doomed", &conn), TETHER_ENOENT);

    /* The host goes on serving, and calling, the other client. */
    send_byte(&sch, 'C');
    ASSERT_OK(tether_host_get_client(h, "survivor", &conn));
    for (int64_t i = 0; i < 100; i++) {
        tether_value *v = NULL;
        ASSERT_OK(tether_conn_call(conn, "ident", NULL, &v, NULL, "x", i));
        int64_t got = 0;
        ASSERT_OK(tether_value_read(v, NULL, "x", &got));
        cr_assert_eq(got, 5 * 1000000 + i);
        tether_value_unref(v);
    }
    tether_conn_unref(conn);
    expect_byte(&sch, 'D', WAIT_MS);
    finish(&sch);
    finish(&dch);
    assert_exited(survivor, reap(survivor, WAIT_MS), 0);
    test_wait_client_count(h, 0, 2000);
    tether_host_unref(h);
    assert_no_children_left();
}

/* ---- restarted hosts ------------------------------------------------------------------ */

Test(process, host_restarted_in_the_same_process, .timeout = 60)
{
    tether_host *h = parent_host("phoenix");
    tether_client *old = test_client_connect("old", "phoenix");
    test_assert_echo(tether_client_get_conn(old), 1);
    ASSERT_OK(tether_host_stop(h));
    tether_conn *oc = tether_client_get_conn(old);
    for (int i = 0; i < 100 && tether_conn_is_connected(oc); i++) {
        usleep(10000);
    }
    cr_assert_eq(tether_conn_is_connected(oc), 0, "the stopped host's client is still connected");
    int r = tether_conn_call(oc, "echo", NULL, NULL, NULL, "x", (int64_t)2);
    cr_assert(r == TETHER_ENOTCONN || r == TETHER_ECONNRESET, "%d (%s)", r, tether_strerror(r));
    tether_host_unref(h);

    h = parent_host("phoenix");
    tether_client *fresh = test_client_connect("fresh", "phoenix");
    test_assert_echo(tether_client_get_conn(fresh), 3);
    cr_assert_eq(tether_host_get_client_count(h), 1);
    tether_client_unref(fresh);
    tether_client_unref(old);
    tether_host_unref(h);
    assert_no_children_left();
}

Test(process, host_restarted_as_a_new_process, .timeout = 60)
{
    test_runtime_dir();
    static channel first_ch, second_ch;
    channel_open(&first_ch);
    host_child hc = {.name = "phoenix"};
    pid_t first = spawn(&first_ch, host_child_main, &hc);
    expect_byte(&first_ch, 'R', WAIT_MS);
    tether_client *c = test_client_connect("early", "phoenix");
    test_assert_echo(tether_client_get_conn(c), 1);

    /* Killed: it leaves its socket file behind, which the next host must replace. */
    cr_assert(kill(first, SIGKILL) == 0);
    int status = reap(first, WAIT_MS);
    cr_assert(WIFSIGNALED(status));
    char *sock = NULL;
    cr_assert(asprintf(&sock, "%s/phoenix.sock", test_runtime_dir()) > 0);
    struct stat st;
    cr_assert(lstat(sock, &st) == 0 && S_ISSOCK(st.st_mode), "no stale socket file to test");
    free(sock);
    tether_client_unref(c); /* no tether object left: the next fork is single-threaded */

    channel_open(&second_ch);
    pid_t second = spawn(&second_ch, host_child_main, &hc);
    int got = read_byte(second_ch.up[0], WAIT_MS);
    cr_assert_eq(got, 'R', "the new host did not start (got %d)", got);
    c = test_client_connect("late", "phoenix");
    cr_assert_eq(tether_conn_get_peer_pid(tether_client_get_conn(c)), (int64_t)second);
    test_assert_echo(tether_client_get_conn(c), 2);
    tether_client_unref(c);
    finish(&second_ch);
    assert_exited(second, reap(second, WAIT_MS), 0);
    finish(&first_ch);
    assert_no_children_left();
}
