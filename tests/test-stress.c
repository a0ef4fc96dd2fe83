/*
 * A plain program (not Criterion, so ThreadSanitizer can run it: `make tsan`) that
 * drives one connection from many threads at once: synchronous and asynchronous calls
 * both ways, notifications, cancels, MAIN services served by the main thread's dispatch
 * loop, and call-backs into that main thread while it waits (chains); a client whose
 * main thread serves in tether_client_wait, or in an event loop of its own that reads
 * the connection (tether_client_read_*), while other threads call and notify it and a
 * thread of that client calls the host; then it closes everything while calls are still
 * in flight; 100,000 calls started at once, most waiting for room in the host's window;
 * big calls (200 KiB each way) among the others, sent and kept without copies.
 * Exit status 0 when every result was right.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tether.h"

#define CHECK(expr)                                                                            \
    do {                                                                                       \
        if (!(expr)) {                                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #expr);          \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

static atomic_int errors;
static atomic_int notified;

static int
add(tether_request *req, void *userdata)
{
    (void)userdata;
    int64_t a, b;
    int r = tether_request_read(req, "xx", &a, &b);
    return r < 0 ? r : tether_request_reply(req, "x", a + b);
}

static int
bump(tether_request *req, void *userdata)
{
    (void)req;
    (void)userdata;
    atomic_fetch_add(&notified, 1);
    return 0;
}

static void *
late_reply(void *arg)
{
    tether_request *req = arg;
    usleep(2000);
    tether_request_reply(req, "s", "late");
    tether_request_unref(req);
    return NULL;
}

static int
deferred(tether_request *req, void *userdata)
{
    (void)userdata;
    pthread_t t;
    pthread_create(&t, NULL, late_reply, tether_request_ref(req));
    pthread_detach(t);
    return 0;
}

static tether_client *relay_client;

static int
main_add(tether_request *req, void *userdata)
{
    (void)userdata;
    return add(req, NULL);
}

/* A POOL handler of the client that calls a MAIN service of the host back, while the
 * host's main thread waits on this very chain. */
static int
relay(tether_request *req, void *userdata)
{
    (void)userdata;
    tether_value *v = NULL;
    int r = tether_conn_call(tether_client_get_conn(relay_client), "main_add", NULL, &v, NULL,
                             "xx", (int64_t)1, (int64_t)2);
    if (r < 0) {
        return r;
    }
    r = tether_request_reply_value(req, v);
    tether_value_unref(v);
    return r;
}

/* echo_big(b): b again, built into the reply: big enough (200 KiB) that the argument is
 * sent from the caller's memory, read into a buffer the request keeps, and the reply
 * goes out from where it was built. */
static int
echo_big(tether_request *req, void *userdata)
{
    (void)userdata;
    const void *p;
    size_t n;
    int r = tether_request_read(req, "y", &p, &n);
    return r < 0 ? r : tether_request_reply(req, "y", p, n);
}

enum {
    BIG = 200 * 1024
};

/* A big call whose bytes say who sent them; false if the echo differs. */
static bool
big_round_trip(tether_conn *conn, int seed, int i)
{
    uint8_t *buf = malloc(BIG);
    CHECK(buf != NULL);
    for (size_t k = 0; k < BIG; k++) {
        buf[k] = (uint8_t)(seed * 7 + i * 13 + k + (k >> 10));
    }
    tether_value *args = NULL, *v = NULL;
    CHECK(tether_value_new(&args, "[y]", buf, (size_t)BIG) == 0);
    const void *back = NULL;
    size_t n = 0;
    bool ok = tether_conn_call_values(conn, "echo_big", args, NULL, NULL, &v, NULL) == 0 &&
              tether_value_read(v, NULL, "y", &back, &n) == 0 && n == BIG &&
              memcmp(back, buf, BIG) == 0;
    tether_value_unref(v);
    tether_value_unref(args);
    free(buf);
    return ok;
}

typedef struct worker {
    tether_conn *conn;
    int seed;
    bool main_calls;
} worker;

static atomic_int workers_left;

static void *
work_then_count(void *arg);

static void *
work(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < 1500; i++) {
        tether_value *v = NULL;
        int64_t sum = -1;
        if (tether_conn_call(w->conn, "add", NULL, &v, NULL, "xx", (int64_t)w->seed,
                             (int64_t)i) < 0 ||
            tether_value_read(v, NULL, "x", &sum) < 0 || sum != w->seed + i) {
            atomic_fetch_add(&errors, 1);
        }
        tether_value_unref(v);
        if (i % 5 == 0) {
            tether_future *f = NULL;
            if (tether_conn_call_async(w->conn, "add", NULL, &f, "xx", (int64_t)1, (int64_t)2) <
                    0 ||
                tether_future_wait(f, 10000000) < 0 || tether_future_get_result(f, NULL, NULL) < 0) {
                atomic_fetch_add(&errors, 1);
            }
            tether_future_unref(f);
        }
        if (i % 11 == 0) {
            tether_future *f = NULL;
            if (tether_conn_call_async(w->conn, "deferred", NULL, &f, NULL) == 0) {
                if (i % 2 == 0) {
                    tether_future_cancel(f);
                }
                tether_future_wait(f, 10000000);
                tether_future_unref(f);
            }
        }
        if (i % 3 == 0) {
            tether_conn_notify(w->conn, "bump", NULL);
        }
        if (i % 60 == 0 && !big_round_trip(w->conn, w->seed, i)) {
            atomic_fetch_add(&errors, 1);
        }
        if (w->main_calls && i % 10 == 0) {
            /* Served by the main thread's dispatch loop in main(). */
            tether_value *m = NULL;
            if (tether_conn_call(w->conn, "main_add", NULL, &m, NULL, "xx", (int64_t)i,
                                 (int64_t)1) < 0) {
                atomic_fetch_add(&errors, 1);
            }
            tether_value_unref(m);
        }
    }
    return NULL;
}

static void *
work_then_count(void *arg)
{
    work(arg);
    atomic_fetch_sub(&workers_left, 1);
    return NULL;
}

/* ---- a client serving in tether_client_wait ------------------------------------------ */

static pthread_t waiting_thread;
static atomic_int waited_notes; /* notifications the waiting client's MAIN service saw */
static atomic_bool stop_waiting;

/* MAIN: on the waiting thread; echoes how many notifications it saw before it, so that
 * a caller can check that its own notification (sent first) ran first. */
static int
seen_notes(tether_request *req, void *userdata)
{
    (void)userdata;
    if (!pthread_equal(pthread_self(), waiting_thread)) {
        atomic_fetch_add(&errors, 1);
    }
    return tether_request_reply(req, "i", atomic_load(&waited_notes));
}

static int
note(tether_request *req, void *userdata)
{
    (void)req;
    (void)userdata;
    if (!pthread_equal(pthread_self(), waiting_thread)) {
        atomic_fetch_add(&errors, 1);
    }
    atomic_fetch_add(&waited_notes, 1);
    return 0;
}

typedef struct waiting_args {
    const char *dir;
    atomic_bool ready;
} waiting_args;

static atomic_int loop_reads; /* reads by the loop's thread that left the reading with it */

/* One turn of an event loop that reads the client's connection while idle. */
static void
loop_turn(tether_client *c, int *sock)
{
    if (*sock < 0) {
        *sock = tether_client_read_begin(c);
    }
    struct pollfd fds[2] = {{.fd = tether_client_get_fd(c), .events = POLLIN},
                            {.fd = *sock, .events = POLLIN}};
    if (poll(fds, *sock >= 0 ? 2 : 1, 2) <= 0) {
        return;
    }
    if (fds[0].revents) {
        CHECK(tether_client_dispatch(c, TETHER_BUDGET_UNLIMITED) >= 0);
    }
    if (*sock >= 0 && fds[1].revents) {
        if (tether_client_read_ready(c, TETHER_BUDGET_UNLIMITED) == 1) {
            *sock = -1;
        } else {
            atomic_fetch_add(&loop_reads, 1);
        }
    }
}

static atomic_bool stop_client_calls;

/* Another thread of the waiting client: asynchronous calls of the host, whose answers
 * must not wait for the main thread's loop. */
static void *
client_calls_async(void *arg)
{
    tether_client *c = arg;
    for (int64_t i = 0; !atomic_load(&stop_client_calls); i++) {
        tether_future *f = NULL;
        tether_value *v = NULL;
        int64_t sum = 0;
        if (tether_conn_call_async(tether_client_get_conn(c), "add", NULL, &f, "xx", i,
                                   (int64_t)2) < 0 ||
            tether_future_wait(f, 10000000) < 0 || tether_future_get_result(f, &v, NULL) < 0 ||
            tether_value_read(v, NULL, "x", &sum) < 0 || sum != i + 2) {
            atomic_fetch_add(&errors, 1);
        }
        tether_value_unref(v);
        tether_future_unref(f);
    }
    return NULL;
}

/* The client's main thread: serves in tether_client_wait and in turns of an event loop
 * by turns, and now and then calls the host itself (taking the reader role from its own
 * wait or loop); another thread of it calls the host meanwhile. */
static void *
serve_waiting(void *arg)
{
    waiting_args *a = arg;
    waiting_thread = pthread_self();
    tether_client_options co = {.name = "waiter", .address = "stress", .runtime_dir = a->dir};
    tether_client *c = NULL;
    CHECK(tether_client_new(&co, &c) == 0);
    CHECK(tether_client_add_service(c, "seen_notes", TETHER_CONTEXT_MAIN, seen_notes, NULL) ==
          0);
    CHECK(tether_client_add_service(c, "note", TETHER_CONTEXT_MAIN, note, NULL) == 0);
    CHECK(tether_client_connect(c, NULL) == 0);
    atomic_store(&a->ready, true);
    pthread_t caller;
    pthread_create(&caller, NULL, client_calls_async, c);
    int sock = -1;
    for (int i = 0; !atomic_load(&stop_waiting); i++) {
        if (i / 50 % 2) {
            CHECK(tether_client_wait(c, 2000) >= 0);
        } else {
            loop_turn(c, &sock);
        }
        if (i % 7 == 0) {
            tether_value *v = NULL;
            int64_t sum = 0;
            if (tether_conn_call(tether_client_get_conn(c), "add", NULL, &v, NULL, "xx",
                                 (int64_t)i, (int64_t)1) < 0 ||
                tether_value_read(v, NULL, "x", &sum) < 0 || sum != i + 1) {
                atomic_fetch_add(&errors, 1);
            }
            tether_value_unref(v);
        }
    }
    atomic_store(&stop_client_calls, true);
    pthread_join(caller, NULL);
    CHECK(tether_client_read_end(c) == 0);
    tether_client_close(c);
    tether_client_unref(c);
    return NULL;
}

/* A host thread: a notification, then a call that must find it run. */
static void *
call_waiting(void *arg)
{
    tether_conn *conn = arg;
    for (int i = 0; i < 800; i++) {
        int before = atomic_load(&waited_notes);
        if (tether_conn_notify(conn, "note", NULL) < 0) {
            atomic_fetch_add(&errors, 1);
        }
        tether_value *v = NULL;
        int seen = -1;
        if (tether_conn_call(conn, "seen_notes", NULL, &v, NULL, NULL) < 0 ||
            tether_value_read(v, NULL, "i", &seen) < 0 || seen <= before) {
            atomic_fetch_add(&errors, 1);
        }
        tether_value_unref(v);
    }
    return NULL;
}

static void
serve_in_wait(tether_host *h, const char *dir)
{
    waiting_args a = {.dir = dir};
    pthread_t server, callers[2];
    pthread_create(&server, NULL, serve_waiting, &a);
    while (!atomic_load(&a.ready)) {
        usleep(1000);
    }
    tether_conn *conn = NULL;
    CHECK(tether_host_get_client(h, "waiter", &conn) == 0);
    for (int i = 0; i < 2; i++) {
        pthread_create(&callers[i], NULL, call_waiting, conn);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(callers[i], NULL);
    }
    atomic_store(&stop_waiting, true);
    pthread_join(server, NULL);
    tether_conn_unref(conn);
    CHECK(atomic_load(&waited_notes) == 1600);
    CHECK(atomic_load(&loop_reads) > 0);
}

int
main(void)
{
    char dir[] = "/tmp/tether-stress-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    tether_host_options ho = {.name = "stress", .runtime_dir = dir};
    tether_host *h = NULL;
    CHECK(tether_host_new(&ho, &h) == 0);
    CHECK(tether_host_add_service(h, "add", TETHER_CONTEXT_IO, add, NULL) == 0);
    CHECK(tether_host_add_service(h, "bump", TETHER_CONTEXT_IO, bump, NULL) == 0);
    CHECK(tether_host_add_service(h, "deferred", TETHER_CONTEXT_IO, deferred, NULL) == 0);
    CHECK(tether_host_add_service(h, "main_add", TETHER_CONTEXT_MAIN, main_add, NULL) == 0);
    CHECK(tether_host_add_service(h, "echo_big", TETHER_CONTEXT_POOL, echo_big, NULL) == 0);
    CHECK(tether_host_start(h) == 0);

    tether_client_options co = {.name = "worker", .address = "stress", .runtime_dir = dir};
    tether_client *c = NULL;
    CHECK(tether_client_new(&co, &c) == 0);
    CHECK(tether_client_add_service(c, "add", TETHER_CONTEXT_IO, add, NULL) == 0);
    CHECK(tether_client_add_service(c, "relay", TETHER_CONTEXT_POOL, relay, NULL) == 0);
    CHECK(tether_client_add_service(c, "echo_big", TETHER_CONTEXT_IO, echo_big, NULL) == 0);
    relay_client = c;
    CHECK(tether_client_connect(c, NULL) == 0);
    tether_conn *to_client = NULL;
    CHECK(tether_host_get_client(h, "worker", &to_client) == 0);

    enum { N = 4 };
    pthread_t threads[N];
    worker workers[N];
    atomic_store(&workers_left, N);
    for (int i = 0; i < N; i++) {
        /* Half the threads call the host (MAIN services too), half call the client. */
        workers[i] = (worker){i % 2 ? tether_client_get_conn(c) : to_client, i * 1000000, i % 2};
        pthread_create(&threads[i], NULL, work_then_count, &workers[i]);
    }
    /* The host's main loop, meanwhile: dispatch, and call the client, whose handler
     * calls back into a MAIN service while this thread waits. */
    int relays = 0;
    while (atomic_load(&workers_left) > 0) {
        tether_host_dispatch(h, 500);
        if (relays < 200) {
            tether_value *v = NULL;
            int64_t n = 0;
            if (tether_conn_call(to_client, "relay", NULL, &v, NULL, NULL) < 0 ||
                tether_value_read(v, NULL, "x", &n) < 0 || n != 3) {
                atomic_fetch_add(&errors, 1);
            }
            tether_value_unref(v);
            relays++;
        } else {
            tether_host_wait(h, 1000);
        }
    }
    for (int i = 0; i < N; i++) {
        pthread_join(threads[i], NULL);
    }
    CHECK(atomic_load(&errors) == 0);
    serve_in_wait(h, dir);
    CHECK(atomic_load(&errors) == 0);

    /* 100,000 calls started at once: the host runs 1024 at a time (its window), the rest
     * wait on this side and go out as answers come; every one succeeds. */
    enum {
        MANY = 100000
    };
    tether_future **many = calloc(MANY, sizeof(*many));
    CHECK(many != NULL);
    for (int i = 0; i < MANY; i++) {
        CHECK(tether_conn_call_async(tether_client_get_conn(c), "add", NULL, &many[i], "xx",
                                     (int64_t)i, (int64_t)1) == 0);
    }
    for (int i = 0; i < MANY; i++) {
        tether_value *v = NULL;
        int64_t sum = -1;
        CHECK(tether_future_wait(many[i], 60000000) == 0);
        CHECK(tether_future_get_result(many[i], &v, NULL) == 0);
        CHECK(tether_value_read(v, NULL, "x", &sum) == 0 && sum == i + 1);
        tether_value_unref(v);
        tether_future_unref(many[i]);
    }
    free(many);

    /* Close while asynchronous calls are in flight: each completes exactly once. */
    tether_future *fs[200];
    for (int i = 0; i < 200; i++) {
        CHECK(tether_conn_call_async(tether_client_get_conn(c), "deferred", NULL, &fs[i], NULL) ==
              0);
    }
    tether_client_close(c);
    for (int i = 0; i < 200; i++) {
        CHECK(tether_future_wait(fs[i], 10000000) == 0);
        int r = tether_future_get_result(fs[i], NULL, NULL);
        CHECK(r == 0 || r == TETHER_ECANCELED);
        tether_future_unref(fs[i]);
    }
    tether_conn_unref(to_client);
    tether_client_unref(c);
    tether_host_unref(h);
    usleep(20000); /* let late replies of detached threads finish */
    rmdir(dir);
    printf("stress: ok, %d notifications\n", atomic_load(&notified));
    return 0;
}
