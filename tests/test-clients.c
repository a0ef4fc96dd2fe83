/*
 * The troubleshooting view of DESIGN.md, end to end with real client processes: the
 * host lists its clients (oldest first, with their counters and the calls in flight
 * either way), hears them come and go on its main thread, resets a client (it comes
 * back by itself, same process, same state) or disconnects it (by default it dies of
 * SIGTERM; with on_disconnect its main thread is told and it stays away). Clients
 * survive a host restart (calls fail at once while it is away, or wait for it when
 * asked to; no_reconnect stays away), and a client that stops reading is dropped while
 * a well-behaved one goes on being served.
 *
 * Children are those of process-helpers.h, as in test-process.c: plain fork()s that
 * never return into Criterion, report through their exit status, through bytes on pipes
 * and through a small MAP_SHARED region, and are bounded by alarm(), by death with their
 * parent and by a bounded reap that kills them. They are forked before the test makes any
 * tether object, so they are forked from a single-threaded process and inherit no
 * connection.
 */
/* ctest: timeout=120 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <time.h>

#include "process-helpers.h"
#include "raw-peer.h"

/* ---- children ------------------------------------------------------------------------- */

/* Call "echo" with v on conn and check the answer; returns the call's code. */
static int
child_echo(tether_conn *conn, const tether_call_options *o, int64_t v)
{
    tether_value *res = NULL;
    int r = tether_conn_call(conn, "echo", o, &res, NULL, "x", v);
    if (r == 0) {
        int64_t got = -1;
        CHILD_OK(tether_value_read(res, NULL, "x", &got));
        if (got != v) {
            CHILD_FAIL("echo", "sent %lld, got %lld", (long long)v, (long long)got);
        }
    }
    tether_value_unref(res);
    return r;
}

/* ---- parent side ---------------------------------------------------------------------- */

/* Memory both sides of a fork see: children report numbers and text through it. */
static void *
shared_new(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert(p != MAP_FAILED, "mmap: %s", strerror(errno));
    memset(p, 0, size);
    return p;
}

static int64_t
wall_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Wait (bounded) until the host's main-thread fd is readable. */
static void
wait_fd_readable(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n;
    do {
        n = poll(&p, 1, timeout_ms);
    } while (n < 0 && errno == EINTR);
    cr_assert_eq(n, 1, "the main-thread fd did not become readable within %d ms", timeout_ms);
}

/* ---- services ------------------------------------------------------------------------ */

static tether_host *
start_host(const char *name, tether_host_options *o)
{
    tether_host_options defaults = {0};
    if (!o) {
        o = &defaults;
    }
    o->name = name;
    tether_host *h = test_host_new(o);
    ASSERT_OK(tether_host_add_service(h, "echo", TETHER_CONTEXT_IO, test_echo_handler, NULL));
    ASSERT_OK(tether_host_start(h));
    return h;
}

/* The entry of a list with that name, or NULL. */
static const tether_client_info *
find_info(const tether_client_info *infos, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(infos[i].name, name) == 0) {
            return &infos[i];
        }
    }
    return NULL;
}

/* Poll the list (bounded) until it has want entries; returns the last list (the caller
 * frees it), its length in *ret_n. */
static tether_client_info *
wait_list_length(tether_host *h, size_t want, size_t *ret_n)
{
    tether_client_info *infos = NULL;
    size_t n = 0;
    for (int i = 0; i < 500; i++) {
        ASSERT_OK(tether_host_list_clients(h, &infos, &n));
        if (n == want) {
            break;
        }
        tether_client_infos_free(infos, n);
        infos = NULL;
        usleep(10000);
    }
    *ret_n = n;
    return infos;
}

/* A copy of one client's entry (strings not kept), found within a bound. */
typedef struct info_copy {
    tether_conn *conn; /* not a reference: compare only */
    int64_t pid, connected_unix_usec;
    uint32_t calls_in_flight;
    uint64_t calls_in, calls_out, bytes_in, bytes_out;
} info_copy;

static bool
get_info(tether_host *h, const char *name, info_copy *ret)
{
    tether_client_info *infos = NULL;
    size_t n = 0;
    ASSERT_OK(tether_host_list_clients(h, &infos, &n));
    const tether_client_info *i = find_info(infos, n, name);
    if (i) {
        *ret = (info_copy){.conn = i->conn,
                           .pid = i->pid,
                           .connected_unix_usec = i->connected_unix_usec,
                           .calls_in_flight = i->calls_in_flight,
                           .calls_in = i->calls_in,
                           .calls_out = i->calls_out,
                           .bytes_in = i->bytes_in,
                           .bytes_out = i->bytes_out};
    }
    tether_client_infos_free(infos, n);
    return i != NULL;
}

/* ==== list ============================================================================ */

static _Atomic(tether_request *) child_held;
static channel *child_channel;

/* In the child: keep the call unanswered until the parent says 'F'. */
static int
child_hold_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    atomic_store(&child_held, tether_request_ref(req));
    child_send(child_channel, 'H');
    return 0;
}

static int
beta_main(channel *ch, void *arg)
{
    (void)arg;
    child_channel = ch;
    child_expect(ch, 'G');
    tether_client *c = child_client("beta", "lister");
    CHILD_OK(tether_client_add_service(c, "echo", TETHER_CONTEXT_IO, test_echo_handler, NULL));
    CHILD_OK(tether_client_add_service(c, "hold", TETHER_CONTEXT_IO, child_hold_handler, NULL));
    child_connect(c);
    child_send(ch, 'R');
    for (;;) {
        int b = read_byte(ch->down[0], 30000);
        if (b == -1) {
            break;
        }
        if (b == 'C') {
            for (int64_t k = 0; k < 4; k++) {
                CHILD_OK(child_echo(tether_client_get_conn(c), NULL, 100 + k));
            }
        } else if (b == 'F') {
            tether_request *req = atomic_exchange(&child_held, NULL);
            CHILD_CHECK(req != NULL);
            CHILD_OK(tether_request_reply(req, "x", (int64_t)42));
            tether_request_unref(req);
        } else {
            CHILD_FAIL("command", "unexpected %d", b);
        }
        child_send(ch, 'K');
    }
    tether_client_unref(c);
    return 0;
}

static _Atomic(tether_request *) host_kept;

static int
keep_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    atomic_store(&host_kept, tether_request_ref(req));
    return 0;
}

/* Poll the list (bounded) until name's entry satisfies cond; returns the last entry. */
#define WAIT_INFO(h, name, info, cond)                                                             \
    do {                                                                                           \
        bool wait_found_ = false, wait_ok_ = false;                                                \
        for (int wait_i_ = 0; wait_i_ < 500 && !wait_ok_; wait_i_++) {                             \
            if (wait_i_) {                                                                         \
                usleep(10000);                                                                     \
            }                                                                                      \
            wait_found_ = get_info((h), (name), &(info));                                          \
            wait_ok_ = wait_found_ && (cond);                                                      \
        }                                                                                          \
        cr_assert(wait_found_, "%s is not in the list", (name));                                   \
        cr_assert(wait_ok_, "%s: never true: %s", (name), #cond);                                  \
    } while (0)

Test(clients, list_shows_clients_oldest_first_with_counters_and_calls_in_flight, .timeout = 60)
{
    test_runtime_dir();
    static channel ch;
    channel_open(&ch);
    pid_t beta = spawn(&ch, beta_main, NULL);
    tether_host *h = test_host_new(&(tether_host_options){.name = "lister"});
    ASSERT_OK(tether_host_add_service(h, "echo", TETHER_CONTEXT_IO, test_echo_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "keep", TETHER_CONTEXT_IO, keep_handler, NULL));
    ASSERT_OK(tether_host_start(h));

    tether_client_info *infos = NULL;
    size_t n = 99;
    ASSERT_OK(tether_host_list_clients(h, &infos, &n));
    cr_assert_eq(n, 0);
    tether_client_infos_free(infos, n);

    /* Three clients, one after the other: alpha and gamma here, beta a process. */
    int64_t t0 = wall_usec();
    tether_client *alpha = test_client_connect("alpha", "lister");
    send_byte(&ch, 'G');
    expect_byte(&ch, 'R', WAIT_MS);
    tether_client *gamma = test_client_connect("gamma", "lister");
    int64_t t1 = wall_usec();
    /* The welcome is counted once the host's send() returned, which may be just after
     * the client read it. */
    info_copy w;
    WAIT_INFO(h, "alpha", w, w.bytes_out > 0);
    WAIT_INFO(h, "beta", w, w.bytes_out > 0);
    WAIT_INFO(h, "gamma", w, w.bytes_out > 0);

    ASSERT_OK(tether_host_list_clients(h, &infos, &n));
    cr_assert_eq(n, 3, "%zu clients listed", n);
    const char *names[3] = {"alpha", "beta", "gamma"};
    const int64_t pids[3] = {getpid(), beta, getpid()};
    for (size_t i = 0; i < 3; i++) {
        cr_assert_str_eq(infos[i].name, names[i], "entry %zu is %s", i, infos[i].name);
        cr_assert_eq(infos[i].pid, pids[i], "%s: pid %lld", names[i], (long long)infos[i].pid);
        cr_assert_str_eq(infos[i].language, "c");
        cr_assert_str_eq(infos[i].language_version, "");
        cr_assert(infos[i].conn != NULL);
        cr_assert_str_eq(tether_conn_get_peer_name(infos[i].conn), names[i]);
        cr_assert_eq(tether_conn_get_peer_pid(infos[i].conn), pids[i]);
        cr_assert_eq(tether_conn_is_connected(infos[i].conn), 1);
        /* The wall clock of its handshake: between the two readings, give or take. */
        cr_assert(infos[i].connected_unix_usec >= t0 - 1000000 &&
                      infos[i].connected_unix_usec <= t1 + 1000000,
                  "%s connected at %lld, test ran %lld..%lld", names[i],
                  (long long)infos[i].connected_unix_usec, (long long)t0, (long long)t1);
        if (i > 0) {
            cr_assert(infos[i].connected_unix_usec >= infos[i - 1].connected_unix_usec,
                      "%s connected before %s", names[i], names[i - 1]);
        }
        cr_assert_eq(infos[i].calls_in_flight, 0);
        cr_assert_eq(infos[i].calls_in, 0, "%s: calls_in %llu", names[i],
                     (unsigned long long)infos[i].calls_in);
        cr_assert_eq(infos[i].calls_out, 0);
        /* The hello came in, the welcome went out. */
        cr_assert(infos[i].bytes_in > 0 && infos[i].bytes_out > 0, "%s: bytes %llu/%llu", names[i],
                  (unsigned long long)infos[i].bytes_in, (unsigned long long)infos[i].bytes_out);
    }
    /* The list holds its own references: they outlive the clients' own handles. */
    tether_conn *alpha_conn = tether_conn_ref(infos[0].conn);
    tether_client_infos_free(infos, n);
    ASSERT_OK(tether_host_list_clients(h, &infos, &n));
    cr_assert_eq(n, 3);
    tether_client_infos_free(infos, n);

    /* Calls from alpha to the host: its calls_in and bytes grow, nobody else's. */
    info_copy a0, b0, g0, a1, b1, g1;
    cr_assert(get_info(h, "alpha", &a0) && get_info(h, "beta", &b0) && get_info(h, "gamma", &g0));
    cr_assert_eq(a0.conn, alpha_conn);
    for (int64_t k = 0; k < 5; k++) {
        test_assert_echo(tether_client_get_conn(alpha), k);
    }
    WAIT_INFO(h, "alpha", a1, a1.bytes_out > a0.bytes_out);
    cr_assert_eq(a1.calls_in, a0.calls_in + 5, "alpha: calls_in %llu -> %llu",
                 (unsigned long long)a0.calls_in, (unsigned long long)a1.calls_in);
    cr_assert(a1.bytes_in > a0.bytes_in);
    cr_assert_eq(a1.calls_out, 0);
    cr_assert(get_info(h, "gamma", &g1));
    cr_assert_eq(g1.calls_in, 0);
    cr_assert_eq(g1.bytes_in, g0.bytes_in);

    /* Calls from the host to beta: calls_out and both byte counts grow. */
    tether_conn *beta_conn = NULL;
    ASSERT_OK(tether_host_get_client(h, "beta", &beta_conn));
    for (int64_t k = 0; k < 3; k++) {
        test_assert_echo(beta_conn, 1000 + k);
    }
    WAIT_INFO(h, "beta", b1, b1.bytes_out > b0.bytes_out && b1.bytes_in > b0.bytes_in);
    cr_assert_eq(b1.calls_out, b0.calls_out + 3, "beta: calls_out %llu",
                 (unsigned long long)b1.calls_out);
    cr_assert_eq(b1.calls_in, 0);

    /* Calls from beta to the host. */
    send_byte(&ch, 'C');
    expect_byte(&ch, 'K', WAIT_MS);
    info_copy b2;
    WAIT_INFO(h, "beta", b2, b2.bytes_out > b1.bytes_out);
    cr_assert_eq(b2.calls_in, 4, "beta: calls_in %llu", (unsigned long long)b2.calls_in);
    cr_assert_eq(b2.calls_out, 3);

    /* A call of the host to beta that beta holds: in flight for beta only. */
    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async(beta_conn, "hold", NULL, &f, NULL));
    expect_byte(&ch, 'H', WAIT_MS);
    info_copy x;
    cr_assert(get_info(h, "beta", &x));
    cr_assert_eq(x.calls_in_flight, 1, "beta: %u calls in flight", x.calls_in_flight);
    cr_assert(get_info(h, "alpha", &x));
    cr_assert_eq(x.calls_in_flight, 0);
    cr_assert(get_info(h, "gamma", &x));
    cr_assert_eq(x.calls_in_flight, 0);
    send_byte(&ch, 'F');
    expect_byte(&ch, 'K', WAIT_MS);
    ASSERT_OK(tether_future_wait(f, 5000000));
    tether_value *v = NULL;
    ASSERT_OK(tether_future_get_result(f, &v, NULL));
    int64_t got = 0;
    ASSERT_OK(tether_value_read(v, NULL, "x", &got));
    cr_assert_eq(got, 42);
    tether_value_unref(v);
    tether_future_unref(f);
    WAIT_INFO(h, "beta", x, x.calls_in_flight == 0);
    cr_assert_eq(x.calls_out, 4);

    /* A call of alpha that the host holds: in flight for alpha. */
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(alpha), "keep", NULL, &f, NULL));
    WAIT_INFO(h, "alpha", x, x.calls_in_flight == 1);
    tether_request *kept = NULL;
    for (int i = 0; i < 500 && !(kept = atomic_exchange(&host_kept, NULL)); i++) {
        usleep(10000);
    }
    cr_assert(kept != NULL);
    ASSERT_OK(tether_request_reply(kept, "x", (int64_t)7));
    tether_request_unref(kept);
    ASSERT_OK(tether_future_wait(f, 5000000));
    ASSERT_OK(tether_future_get_result(f, NULL, NULL));
    tether_future_unref(f);
    WAIT_INFO(h, "alpha", x, x.calls_in_flight == 0);
    cr_assert(get_info(h, "beta", &x));
    cr_assert_eq(x.calls_in_flight, 0);

    /* gamma leaves, then beta: the list shrinks, order kept. */
    tether_client_unref(gamma);
    infos = wait_list_length(h, 2, &n);
    cr_assert_eq(n, 2, "gamma is still listed");
    cr_assert_str_eq(infos[0].name, "alpha");
    cr_assert_str_eq(infos[1].name, "beta");
    tether_client_infos_free(infos, n);

    tether_conn_unref(beta_conn);
    finish(&ch);
    assert_exited(beta, reap(beta, WAIT_MS), 0);
    infos = wait_list_length(h, 1, &n);
    cr_assert_eq(n, 1, "beta is still listed after its process exited");
    cr_assert_str_eq(infos[0].name, "alpha");
    cr_assert_eq(infos[0].conn, alpha_conn);
    tether_client_infos_free(infos, n);

    tether_client_unref(alpha);
    test_wait_client_count(h, 0, 5000);
    /* The reference taken from the list keeps the closed connection readable. */
    cr_assert_eq(tether_conn_is_connected(alpha_conn), 0);
    cr_assert_str_eq(tether_conn_get_peer_name(alpha_conn), "alpha");
    tether_conn_unref(alpha_conn);
    tether_host_unref(h);
    close_fd(&ch.up[0]);
    assert_no_children_left();
}

/* ==== events ========================================================================== */

typedef struct event_rec {
    int event;
    char name[32];
    int64_t pid;
    tether_conn *conn; /* a reference for CONNECTED, only compared for LEFT */
    bool on_main;
    void *userdata;
} event_rec;

static event_rec events[16];
static int n_events;
static pthread_t test_thread;

static void
on_client_event(void *userdata, tether_conn *conn, int event)
{
    if (n_events >= 16) {
        return;
    }
    event_rec *e = &events[n_events++];
    e->event = event;
    snprintf(e->name, sizeof(e->name), "%s", tether_conn_get_peer_name(conn));
    e->pid = tether_conn_get_peer_pid(conn);
    e->conn = event == TETHER_CLIENT_CONNECTED ? tether_conn_ref(conn) : conn;
    e->on_main = pthread_equal(pthread_self(), test_thread);
    e->userdata = userdata;
}

static void
assert_event(int i, int event, const char *name, int64_t pid)
{
    cr_assert(i < n_events, "event %d missing (%d events)", i, n_events);
    event_rec *e = &events[i];
    cr_assert_eq(e->event, event, "event %d is %d, expected %d", i, e->event, event);
    cr_assert_str_eq(e->name, name, "event %d is about %s", i, e->name);
    cr_assert_eq(e->pid, pid);
    cr_assert(e->on_main, "event %d was delivered off the main thread", i);
    cr_assert_eq(e->userdata, (void *)events);
}

static void
free_events(void)
{
    for (int i = 0; i < n_events; i++) {
        if (events[i].event == TETHER_CLIENT_CONNECTED) {
            tether_conn_unref(events[i].conn);
        }
    }
    n_events = 0;
}

/* Dispatch (bounded) until at least n events arrived, then a little longer for extras. */
static void
dispatch_events(tether_host *h, int n)
{
    uint64_t deadline = tether_now_usec() + WAIT_MS * 1000ull;
    while (n_events < n && tether_now_usec() < deadline) {
        ASSERT_OK(tether_host_wait(h, 10000));
    }
    ASSERT_OK(tether_host_wait(h, 50000));
    cr_assert_eq(n_events, n, "%d events, expected %d", n_events, n);
}

/* A host whose client events this thread records (on_client_event) and checks. */
static tether_host *
start_watched_host(const char *name)
{
    test_thread = pthread_self();
    tether_host_options o = {.on_client = on_client_event, .on_client_userdata = events};
    return start_host(name, &o);
}

/* The only events are name's process (pid) connecting once, then leaving. */
static void
assert_came_once_and_left(tether_host *h, const char *name, pid_t pid)
{
    dispatch_events(h, 2);
    assert_event(0, TETHER_CLIENT_CONNECTED, name, pid);
    assert_event(1, TETHER_CLIENT_LEFT, name, pid);
}

static int
visitor_main(channel *ch, void *arg)
{
    (void)arg;
    child_expect(ch, 'G');
    tether_client *c = child_client("visitor", "eventful");
    child_connect(c);
    child_send(ch, 'R');
    child_wait_finish(ch);
    tether_client_unref(c);
    return 0;
}

Test(clients, events_arrive_in_order_only_when_the_main_thread_dispatches, .timeout = 60)
{
    test_runtime_dir();
    static channel ch;
    channel_open(&ch);
    pid_t visitor = spawn(&ch, visitor_main, NULL);
    tether_host *h = start_watched_host("eventful");
    int fd = tether_host_get_fd(h);
    cr_assert(fd >= 0);

    send_byte(&ch, 'G');
    expect_byte(&ch, 'R', WAIT_MS);
    /* Queued for the main thread: the fd says so, nothing ran. */
    wait_fd_readable(fd, WAIT_MS);
    usleep(20000);
    cr_assert_eq(tether_host_get_client_count(h), 1);
    cr_assert_eq(n_events, 0, "an event ran before dispatch");
    ASSERT_ERR(tether_host_dispatch(h, TETHER_BUDGET_UNLIMITED), 0);
    cr_assert_eq(n_events, 1);
    assert_event(0, TETHER_CLIENT_CONNECTED, "visitor", visitor);
    cr_assert_eq(test_fd_readable(fd), 0);

    /* A second client, here; delivered by wait this time. */
    tether_client *local = test_client_connect("local", "eventful");
    wait_fd_readable(fd, WAIT_MS);
    cr_assert_eq(n_events, 1);
    ASSERT_ERR(tether_host_wait(h, 5000000), 1);
    cr_assert_eq(n_events, 2);
    assert_event(1, TETHER_CLIENT_CONNECTED, "local", getpid());
    cr_assert(events[1].conn != events[0].conn);
    tether_conn *found = NULL;
    ASSERT_OK(tether_host_get_client(h, "local", &found));
    cr_assert_eq(found, events[1].conn, "the event's conn is not the registered one");
    tether_conn_unref(found);

    /* local leaves. */
    tether_client_unref(local);
    wait_fd_readable(fd, WAIT_MS);
    usleep(20000);
    cr_assert_eq(n_events, 2, "LEFT ran before dispatch");
    ASSERT_ERR(tether_host_wait(h, 5000000), 1);
    cr_assert_eq(n_events, 3);
    assert_event(2, TETHER_CLIENT_LEFT, "local", getpid());
    cr_assert_eq(events[2].conn, events[1].conn, "LEFT came with another conn than CONNECTED");

    /* The visitor's process ends. */
    finish(&ch);
    assert_exited(visitor, reap(visitor, WAIT_MS), 0);
    wait_fd_readable(fd, WAIT_MS);
    cr_assert_eq(n_events, 3);
    ASSERT_ERR(tether_host_dispatch(h, TETHER_BUDGET_UNLIMITED), 0);
    cr_assert_eq(n_events, 4);
    assert_event(3, TETHER_CLIENT_LEFT, "visitor", visitor);
    cr_assert_eq(events[3].conn, events[0].conn);
    cr_assert_eq(tether_conn_is_connected(events[0].conn), 0);

    /* Nothing more. */
    cr_assert_eq(test_fd_readable(fd), 0);
    ASSERT_ERR(tether_host_wait(h, 50000), 0);
    cr_assert_eq(n_events, 4);
    test_wait_client_count(h, 0, 5000);
    free_events();
    tether_host_unref(h);
    close_fd(&ch.up[0]);
    assert_no_children_left();
}

/* ==== reset =========================================================================== */

/* The client's state: lives in its memory, survives reconnects. */
static int64_t counter;

static int
next_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    counter++;
    return tether_request_reply(req, "x", counter);
}

typedef struct reset_report {
    int call_result;
    int connected;
} reset_report;

/* A script with its own loop: polls the client's fd and the pipe, dispatches. */
static int
counter_main(channel *ch, void *arg)
{
    reset_report *rep = arg;
    child_expect(ch, 'G');
    tether_client *c = child_client("counter", "resetter");
    CHILD_OK(tether_client_add_service(c, "next", TETHER_CONTEXT_MAIN, next_handler, NULL));
    child_connect(c);
    child_send(ch, 'R');
    int cfd = tether_client_get_fd(c);
    CHILD_CHECK(cfd >= 0);
    for (;;) {
        struct pollfd p[2] = {{.fd = cfd, .events = POLLIN}, {.fd = ch->down[0], .events = POLLIN}};
        int n = poll(p, 2, 1000);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        CHILD_CHECK(n >= 0);
        if (p[0].revents) {
            CHILD_OK(tether_client_dispatch(c, TETHER_BUDGET_UNLIMITED));
        }
        if (p[1].revents) {
            unsigned char b;
            ssize_t got = read(ch->down[0], &b, 1);
            if (got <= 0) {
                break;
            }
            CHILD_CHECK(b == 'C');
            /* Call the host over whatever connection is current now. */
            tether_call_options o = {.timeout_usec = 5000000, .wait_for_connection = true};
            rep->call_result = child_echo(tether_client_get_conn(c), &o, 77);
            rep->connected = tether_client_is_connected(c);
            child_send(ch, 'K');
        }
    }
    tether_client_unref(c);
    return 0;
}

static int64_t
call_next(tether_conn *conn)
{
    tether_value *v = NULL;
    tether_error err = TETHER_ERROR_INIT;
    tether_call_options o = {.timeout_usec = 5000000};
    int r = tether_conn_call(conn, "next", &o, &v, &err, NULL);
    cr_assert(r == 0, "next: %s: %s", tether_strerror(r), err.message ? err.message : "");
    int64_t got = -1;
    ASSERT_OK(tether_value_read(v, NULL, "x", &got));
    tether_value_unref(v);
    return got;
}

Test(clients, reset_client_comes_back_by_itself_with_its_state, .timeout = 60)
{
    test_runtime_dir();
    static channel ch;
    channel_open(&ch);
    reset_report *rep = shared_new(sizeof(*rep));
    pid_t pid = spawn(&ch, counter_main, rep);
    tether_host *h = start_host("resetter", NULL);
    send_byte(&ch, 'G');
    expect_byte(&ch, 'R', WAIT_MS);

    tether_conn *conn = NULL;
    ASSERT_OK(tether_host_get_client(h, "counter", &conn));
    int64_t expected = 0;
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(call_next(conn), ++expected);
    }
    info_copy before;
    cr_assert(get_info(h, "counter", &before));
    cr_assert_eq(before.pid, pid);
    cr_assert_eq(before.conn, conn);

    for (int round = 0; round < 2; round++) {
        uint64_t t0 = tether_now_usec();
        ASSERT_OK(tether_host_reset_client(h, conn));
        cr_assert_eq(tether_conn_is_connected(conn), 0, "the reset connection is still open");
        /* Gone from the host's point of view: a second reset or disconnect finds nothing. */
        ASSERT_ERR(tether_host_reset_client(h, conn), TETHER_ENOENT);
        ASSERT_ERR(tether_host_disconnect_client(h, conn), TETHER_ENOENT);
        ASSERT_ERR(tether_conn_call(conn, "next", NULL, NULL, NULL, NULL), TETHER_ENOTCONN);

        /* It comes back by itself: same process, a new connection. */
        info_copy after;
        WAIT_INFO(h, "counter", after, after.conn != conn);
        uint64_t back = tether_now_usec() - t0;
        cr_assert(back < 3000000, "the client took %llu us to come back", (unsigned long long)back);
        cr_assert_eq(after.pid, pid, "a different process came back");
        cr_assert(after.connected_unix_usec >= before.connected_unix_usec);
        cr_assert_eq(tether_host_get_client_count(h), 1);
        tether_conn_unref(conn);
        ASSERT_OK(tether_host_get_client(h, "counter", &conn));
        cr_assert_eq(conn, after.conn);

        /* Its service answers, and its state went on. */
        for (int i = 0; i < 2; i++) {
            cr_assert_eq(call_next(conn), ++expected, "the counter did not continue");
        }
        /* And it can call the host. */
        rep->call_result = -1;
        send_byte(&ch, 'C');
        expect_byte(&ch, 'K', WAIT_MS);
        cr_assert_eq(rep->call_result, 0, "the client's call after the reset: %d (%s)",
                     rep->call_result, tether_strerror(rep->call_result));
        cr_assert_eq(rep->connected, 1);
        before = after;
    }
    tether_conn_unref(conn);
    finish(&ch);
    assert_exited(pid, reap(pid, WAIT_MS), 0);
    test_wait_client_count(h, 0, 5000);
    tether_host_unref(h);
    close_fd(&ch.up[0]);
    munmap(rep, sizeof(*rep));
    assert_no_children_left();
}

/* ==== disconnect ====================================================================== */

static int
doomed_main(channel *ch, void *arg)
{
    (void)arg;
    child_expect(ch, 'G');
    tether_client *c = child_client("doomed", "bouncer");
    CHILD_OK(tether_client_add_service(c, "echo", TETHER_CONTEXT_IO, test_echo_handler, NULL));
    child_connect(c);
    child_send(ch, 'R');
    child_wait_finish(ch);
    tether_client_unref(c);
    return 3; /* only if SIGTERM never came */
}

/* The host's connection to the client called name: it answers an echo of v, then the
 * host disconnects it, which closes the connection at once. */
static tether_conn *
echo_then_disconnect(tether_host *h, const char *name, int64_t v)
{
    tether_conn *conn = NULL;
    ASSERT_OK(tether_host_get_client(h, name, &conn));
    test_assert_echo(conn, v);
    ASSERT_OK(tether_host_disconnect_client(h, conn));
    cr_assert_eq(tether_conn_is_connected(conn), 0);
    return conn;
}

Test(clients, disconnect_by_default_terminates_the_client_process, .timeout = 60)
{
    test_runtime_dir();
    static channel ch;
    channel_open(&ch);
    pid_t pid = spawn(&ch, doomed_main, NULL);
    tether_host *h = start_watched_host("bouncer");
    send_byte(&ch, 'G');
    expect_byte(&ch, 'R', WAIT_MS);

    tether_conn *conn = echo_then_disconnect(h, "doomed", 5);
    ASSERT_ERR(tether_host_disconnect_client(h, conn), TETHER_ENOENT);
    ASSERT_ERR(tether_host_reset_client(h, conn), TETHER_ENOENT);

    int status = reap(pid, WAIT_MS);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM,
              "the disconnected client was not ended by SIGTERM (status 0x%x: %s %d)", status,
              WIFSIGNALED(status) ? "signal" : "exit",
              WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    test_wait_client_count(h, 0, 5000);
    tether_conn *none = NULL;
    ASSERT_ERR(tether_host_get_client(h, "doomed", &none), TETHER_ENOENT);

    /* It came once and left once. */
    assert_came_once_and_left(h, "doomed", pid);
    free_events();
    tether_conn_unref(conn);
    tether_host_unref(h);
    finish(&ch);
    close_fd(&ch.up[0]);
    assert_no_children_left();
}

typedef struct polite_report {
    int called; /* times on_disconnect ran */
    int on_main;
    char reason[256];
    int connected_again; /* seen connected in the second after */
    int plain_call, wait_call;
    int64_t plain_usec, wait_usec;
} polite_report;

static pthread_t child_main_thread;

static void
on_disconnect_cb(void *userdata, const char *reason)
{
    polite_report *rep = userdata;
    rep->called++;
    rep->on_main = pthread_equal(pthread_self(), child_main_thread);
    snprintf(rep->reason, sizeof(rep->reason), "%s", reason ? reason : "(null)");
}

/* A script that handles being disconnected: its loop runs until it is told, then it
 * checks that it stays away and exits 0 by itself. */
static int
polite_main(channel *ch, void *arg)
{
    polite_report *rep = arg;
    child_main_thread = pthread_self();
    child_expect(ch, 'G');
    tether_client_options o = {.name = "polite",
                               .address = "bouncer2",
                               .on_disconnect = on_disconnect_cb,
                               .on_disconnect_userdata = rep};
    tether_client *c = child_client_with(&o);
    CHILD_OK(tether_client_add_service(c, "echo", TETHER_CONTEXT_IO, test_echo_handler, NULL));
    child_connect(c);
    child_send(ch, 'R');
    uint64_t deadline = tether_now_usec() + WAIT_MS * 1000ull;
    while (rep->called == 0 && tether_now_usec() < deadline) {
        CHILD_OK(tether_client_wait(c, 100000));
    }
    CHILD_CHECK(rep->called == 1);
    uint64_t until = tether_now_usec() + 1000000;
    while (tether_now_usec() < until) {
        if (tether_client_is_connected(c)) {
            rep->connected_again = 1;
        }
        CHILD_OK(tether_client_wait(c, 20000));
    }
    uint64_t t0 = tether_now_usec();
    rep->plain_call = child_echo(tether_client_get_conn(c), NULL, 1);
    rep->plain_usec = (int64_t)(tether_now_usec() - t0);
    tether_call_options w = {.timeout_usec = 2000000, .wait_for_connection = true};
    t0 = tether_now_usec();
    rep->wait_call = child_echo(tether_client_get_conn(c), &w, 2);
    rep->wait_usec = (int64_t)(tether_now_usec() - t0);
    child_send(ch, 'D');
    tether_client_unref(c);
    return 0;
}

Test(clients, disconnect_with_on_disconnect_tells_the_main_thread_and_stays_away, .timeout = 60)
{
    test_runtime_dir();
    static channel ch;
    channel_open(&ch);
    polite_report *rep = shared_new(sizeof(*rep));
    pid_t pid = spawn(&ch, polite_main, rep);
    tether_host *h = start_watched_host("bouncer2");
    send_byte(&ch, 'G');
    expect_byte(&ch, 'R', WAIT_MS);

    tether_conn *conn = echo_then_disconnect(h, "polite", 9);

    /* It exits by itself, with 0: no SIGTERM, no help from the pipe. */
    expect_byte(&ch, 'D', 3 * WAIT_MS);
    assert_exited(pid, reap(pid, WAIT_MS), 0);
    cr_assert_eq(rep->called, 1);
    cr_assert(rep->on_main, "on_disconnect ran off the client's main thread");
    cr_assert(strstr(rep->reason, "disconnected by the host") != NULL, "reason: '%s'", rep->reason);
    cr_assert_eq(rep->connected_again, 0, "the disconnected client reconnected");
    cr_assert_eq(rep->plain_call, TETHER_ENOTCONN, "a call after the disconnect: %d (%s)",
                 rep->plain_call, tether_strerror(rep->plain_call));
    cr_assert(rep->plain_usec < 500000, "took %lld us", (long long)rep->plain_usec);
    cr_assert_eq(rep->wait_call, TETHER_ENOTCONN, "a waiting call after the disconnect: %d (%s)",
                 rep->wait_call, tether_strerror(rep->wait_call));
    cr_assert(rep->wait_usec < 500000, "a disconnected client waited %lld us for a host",
              (long long)rep->wait_usec);

    /* The host saw it once: it never came back. */
    assert_came_once_and_left(h, "polite", pid);
    cr_assert_eq(tether_host_get_client_count(h), 0);
    free_events();
    tether_conn_unref(conn);
    tether_host_unref(h);
    finish(&ch);
    close_fd(&ch.up[0]);
    munmap(rep, sizeof(*rep));
    assert_no_children_left();
}

/* ==== host restart ==================================================================== */

typedef struct restart_report {
    int plain_call; /* while the host is away */
    int64_t plain_usec;
    int wait_call; /* with wait_for_connection, across the restart */
    int64_t wait_usec;
    uint64_t wait_done_usec;
    int connected_again; /* no_reconnect: seen connected after the restart */
    int late_call, late_wait_call;
    int64_t late_wait_usec;
} restart_report;

static int64_t whoami_calls;

static int
whoami_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    whoami_calls++;
    return tether_request_reply(req, "[xx]", (int64_t)getpid(), whoami_calls);
}

static int
restart_child(channel *ch, restart_report *rep, const char *name, bool no_reconnect)
{
    child_expect(ch, 'G');
    tether_client_options o = {.name = name, .address = "phoenix", .no_reconnect = no_reconnect};
    tether_client *c = child_client_with(&o);
    CHILD_OK(tether_client_add_service(c, "whoami", TETHER_CONTEXT_IO, whoami_handler, NULL));
    child_connect(c);
    child_send(ch, 'R');
    for (;;) {
        int b = read_byte(ch->down[0], 30000);
        if (b == -1) {
            break;
        }
        if (b == 'D') {
            /* The host went away: calls fail at once. */
            for (int i = 0; i < 500 && tether_client_is_connected(c); i++) {
                usleep(10000);
            }
            CHILD_CHECK(!tether_client_is_connected(c));
            uint64_t t0 = tether_now_usec();
            rep->plain_call = child_echo(tether_client_get_conn(c), NULL, 1);
            rep->plain_usec = (int64_t)(tether_now_usec() - t0);
            child_send(ch, 'N');
        } else if (b == 'W') {
            /* This one waits for the host to be back. */
            child_send(ch, 'w');
            tether_call_options w = {.timeout_usec = 10000000, .wait_for_connection = true};
            uint64_t t0 = tether_now_usec();
            rep->wait_call = child_echo(tether_client_get_conn(c), &w, 2);
            rep->wait_done_usec = tether_now_usec();
            rep->wait_usec = (int64_t)(rep->wait_done_usec - t0);
            child_send(ch, 'K');
        } else if (b == 'B') {
            /* The host is back: watch for a second. */
            uint64_t until = tether_now_usec() + 1000000;
            while (tether_now_usec() < until) {
                if (tether_client_is_connected(c)) {
                    rep->connected_again = 1;
                }
                usleep(10000);
            }
            rep->late_call = child_echo(tether_client_get_conn(c), NULL, 3);
            tether_call_options w = {.timeout_usec = 2000000, .wait_for_connection = true};
            uint64_t t0 = tether_now_usec();
            rep->late_wait_call = child_echo(tether_client_get_conn(c), &w, 4);
            rep->late_wait_usec = (int64_t)(tether_now_usec() - t0);
            child_send(ch, 'K');
        } else {
            CHILD_FAIL("command", "unexpected %d", b);
        }
    }
    tether_client_unref(c);
    return 0;
}

static int
survivor_main(channel *ch, void *arg)
{
    return restart_child(ch, arg, "survivor", false);
}

static int
loner_main(channel *ch, void *arg)
{
    return restart_child(ch, arg, "loner", true);
}

static void
assert_whoami(tether_host *h, pid_t pid, int64_t count)
{
    tether_conn *conn = NULL;
    ASSERT_OK(tether_host_get_client(h, "survivor", &conn));
    tether_value *v = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_conn_call(conn, "whoami", NULL, &v, &err, NULL);
    cr_assert(r == 0, "whoami: %s: %s", tether_strerror(r), err.message ? err.message : "");
    int64_t got_pid = 0, got_count = 0;
    ASSERT_OK(tether_value_read(v, NULL, "[xx]", &got_pid, &got_count));
    cr_assert_eq(got_pid, pid);
    cr_assert_eq(got_count, count, "the client's state: %lld calls, expected %lld",
                 (long long)got_count, (long long)count);
    tether_value_unref(v);
    tether_conn_unref(conn);
}

Test(clients, clients_reconnect_to_a_restarted_host_unless_told_not_to, .timeout = 60)
{
    test_runtime_dir();
    static channel sch, lch;
    channel_open(&sch);
    channel_open(&lch);
    restart_report *reps = shared_new(2 * sizeof(*reps));
    pid_t survivor = spawn(&sch, survivor_main, &reps[0]);
    pid_t loner = spawn(&lch, loner_main, &reps[1]);
    tether_host *h = start_host("phoenix", NULL);
    send_byte(&sch, 'G');
    expect_byte(&sch, 'R', WAIT_MS);
    send_byte(&lch, 'G');
    expect_byte(&lch, 'R', WAIT_MS);
    cr_assert_eq(tether_host_get_client_count(h), 2);
    assert_whoami(h, survivor, 1);

    /* The host goes away. */
    ASSERT_OK(tether_host_stop(h));
    h = tether_host_unref(h);
    send_byte(&sch, 'D');
    send_byte(&lch, 'D');
    expect_byte(&sch, 'N', WAIT_MS);
    expect_byte(&lch, 'N', WAIT_MS);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(reps[i].plain_call, TETHER_ENOTCONN, "%s: a call without a host: %d (%s)",
                     i ? "loner" : "survivor", reps[i].plain_call,
                     tether_strerror(reps[i].plain_call));
        cr_assert(reps[i].plain_usec < 500000, "%s: failing took %lld us", i ? "loner" : "survivor",
                  (long long)reps[i].plain_usec);
    }

    /* A call that waits for the host, made before the host is back. */
    send_byte(&sch, 'W');
    expect_byte(&sch, 'w', WAIT_MS);
    usleep(300000);
    uint64_t restarted = tether_now_usec();
    h = start_host("phoenix", NULL);
    expect_byte(&sch, 'K', 2 * WAIT_MS);
    cr_assert_eq(reps[0].wait_call, 0, "the waiting call: %d (%s)", reps[0].wait_call,
                 tether_strerror(reps[0].wait_call));
    cr_assert(reps[0].wait_usec >= 250000, "the call did not wait: %lld us",
              (long long)reps[0].wait_usec);
    cr_assert(reps[0].wait_done_usec >= restarted);
    cr_assert(reps[0].wait_done_usec - restarted < 8000000, "reconnecting took %llu us",
              (unsigned long long)(reps[0].wait_done_usec - restarted));

    /* The survivor is back, by name, same process, same state. */
    info_copy info;
    WAIT_INFO(h, "survivor", info, info.pid == survivor);
    assert_whoami(h, survivor, 2);

    /* The loner stays away. */
    send_byte(&lch, 'B');
    expect_byte(&lch, 'K', WAIT_MS);
    cr_assert_eq(reps[1].connected_again, 0, "a no_reconnect client reconnected");
    cr_assert_eq(reps[1].late_call, TETHER_ENOTCONN, "%d (%s)", reps[1].late_call,
                 tether_strerror(reps[1].late_call));
    cr_assert_eq(reps[1].late_wait_call, TETHER_ENOTCONN, "%d (%s)", reps[1].late_wait_call,
                 tether_strerror(reps[1].late_wait_call));
    /* It is not reconnecting, so there is nothing to wait for (tether.h: "while it is
     * reconnecting to its host: wait ... instead of failing at once"). */
    cr_assert(reps[1].late_wait_usec < 500000,
              "a no_reconnect client's wait_for_connection call waited %lld us for a "
              "connection that cannot come",
              (long long)reps[1].late_wait_usec);
    tether_conn *none = NULL;
    ASSERT_ERR(tether_host_get_client(h, "loner", &none), TETHER_ENOENT);
    cr_assert_eq(tether_host_get_client_count(h), 1);

    finish(&sch);
    finish(&lch);
    assert_exited(survivor, reap(survivor, WAIT_MS), 0);
    assert_exited(loner, reap(loner, WAIT_MS), 0);
    test_wait_client_count(h, 0, 5000);
    tether_host_unref(h);
    close_fd(&sch.up[0]);
    close_fd(&lch.up[0]);
    munmap(reps, 2 * sizeof(*reps));
    assert_no_children_left();
}

/* ==== a client that stops reading ===================================================== */

#define BIG_SIZE (1024 * 1024)
#define MAX_OUTPUT (4ull * 1024 * 1024)
static uint8_t big_data[BIG_SIZE];

static int
big_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply(req, "y", big_data, (size_t)BIG_SIZE);
}

typedef struct slow_shared {
    atomic_int flooding; /* 1 from the raw client's first request until it saw the hangup */
    atomic_long good_calls, good_during, good_failures;
    char good_failure[256];
    int raw_hung;           /* the raw client saw its connection end */
    int64_t raw_sent;       /* requests it sent before that */
    int64_t raw_hang_usec;  /* from its first request to the hangup */
    int raw_end_errno;      /* 0: EOF after the queued bytes, else the read error */
    int64_t raw_read_after; /* bytes it could still read after the hangup */
    int raw_send_errno;     /* what sending once more gave */
} slow_shared;

static int
good_main(channel *ch, void *arg)
{
    slow_shared *sh = arg;
    child_expect(ch, 'G');
    tether_client *c = child_client("good", "slowpoke");
    child_connect(c);
    child_send(ch, 'R');
    child_expect(ch, 'S');
    bool ending = false;
    int after = 0;
    while (after < 10) {
        int before = atomic_load(&sh->flooding);
        tether_value *v = NULL;
        tether_error err = TETHER_ERROR_INIT;
        tether_call_options o = {.timeout_usec = 10000000};
        int r = tether_conn_call(tether_client_get_conn(c), "big", &o, &v, &err, NULL);
        const void *p = NULL;
        size_t size = 0;
        if (r == 0) {
            r = tether_value_read(v, NULL, "y", &p, &size);
        }
        if (r == 0 && (size != BIG_SIZE || memcmp(p, big_data, BIG_SIZE) != 0)) {
            r = -EBADMSG;
        }
        if (r == 0) {
            r = child_echo(tether_client_get_conn(c), &o, atomic_load(&sh->good_calls));
        }
        if (r < 0 && atomic_fetch_add(&sh->good_failures, 1) == 0) {
            snprintf(sh->good_failure, sizeof(sh->good_failure), "call %ld: %s: %s",
                     atomic_load(&sh->good_calls), tether_strerror(r),
                     err.message ? err.message : "");
        }
        tether_error_done(&err);
        tether_value_unref(v);
        if (before && atomic_load(&sh->flooding)) {
            atomic_fetch_add(&sh->good_during, 1);
        }
        if (atomic_fetch_add(&sh->good_calls, 1) == 0) {
            child_send(ch, 'r');
        }
        if (ending) {
            after++;
        } else {
            int b = read_byte(ch->down[0], 0);
            if (b == 'E') {
                ending = true;
            } else if (b != -2) {
                CHILD_FAIL("command", "unexpected %d", b);
            }
        }
    }
    child_send(ch, 'D');
    child_wait_finish(ch);
    tether_client_unref(c);
    return 0;
}

/* A peer that completes the handshake, asks for big results and never reads them. */
static int
raw_main(channel *ch, void *arg)
{
    slow_shared *sh = arg;
    child_expect(ch, 'G');
    char *address = NULL;
    CHILD_OK(tether_resolve_address("slowpoke", NULL, &address));
    int fd = raw_connect_address(address);
    CHILD_OK(fd);
    free(address);

    tether__buf b = TETHER__BUF_INIT;
    CHILD_OK(raw_encode_hello(&b, "raw-slow", 1, 1, NULL));
    CHILD_OK(raw_send_all(fd, b.data, b.len));
    tether__buf_done(&b);
    /* The welcome is the one thing it reads. */
    static uint8_t buf[65536];
    size_t got = 0;
    int welcome_len = raw_recv_frame(fd, buf, sizeof(buf), 5000, &got);
    CHILD_OK(welcome_len);
    tether__frame f;
    CHILD_OK(tether__frame_decode(buf + TETHER__FRAME_HEADER_SIZE, (size_t)welcome_len, NULL, &f));
    CHILD_CHECK(f.kind == TETHER__WELCOME);
    CHILD_CHECK(got == TETHER__FRAME_HEADER_SIZE + (size_t)welcome_len);
    child_send(ch, 'R');
    child_expect(ch, 'S');

    /* One request every 20 ms, until the host hangs up: never a byte read. */
    atomic_store(&sh->flooding, 1);
    uint64_t t0 = tether_now_usec();
    for (uint64_t id = 1; id <= 400 && !sh->raw_hung; id++) {
        /* Before the request that takes the host over its limit, with megabytes stuck in
         * its queue for this client, the good client must be served: wait for it (a
         * slow build under load may need more than the flood's own few requests). */
        for (int w = 0; w < 500 && (id + 1) * BIG_SIZE > MAX_OUTPUT &&
                            atomic_load(&sh->good_during) == 0;
             w++) {
            usleep(10000);
        }
        tether__buf rq = TETHER__BUF_INIT;
        CHILD_OK(tether__encode_request(&rq, id, id, 0, "big", 3, NULL, 0, NULL, 0, 0));
        ssize_t n = send(fd, rq.data, rq.len, MSG_NOSIGNAL);
        int e = errno;
        size_t len = rq.len;
        tether__buf_done(&rq);
        if (n != (ssize_t)len) {
            CHILD_CHECK(n < 0 && (e == EPIPE || e == ECONNRESET));
            sh->raw_hung = 1;
            break;
        }
        sh->raw_sent = (int64_t)id;
        struct pollfd p = {.fd = fd, .events = POLLRDHUP};
        if (poll(&p, 1, 20) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
            sh->raw_hung = 1;
        }
    }
    sh->raw_hang_usec = (int64_t)(tether_now_usec() - t0);
    atomic_store(&sh->flooding, 0);

    if (sh->raw_hung) {
        /* What the kernel had taken in is still there, then the end. */
        for (;;) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            CHILD_CHECK(poll(&p, 1, 5000) == 1);
            ssize_t n = recv(fd, buf, sizeof(buf), 0);
            if (n > 0) {
                sh->raw_read_after += n;
                continue;
            }
            sh->raw_end_errno = n == 0 ? 0 : errno;
            break;
        }
        tether__buf rq = TETHER__BUF_INIT;
        CHILD_OK(tether__encode_request(&rq, 999, 999, 0, "big", 3, NULL, 0, NULL, 0, 0));
        ssize_t n = send(fd, rq.data, rq.len, MSG_NOSIGNAL);
        sh->raw_send_errno = n < 0 ? errno : 0;
        tether__buf_done(&rq);
    }
    close(fd);
    child_send(ch, 'H');
    child_wait_finish(ch);
    return 0;
}

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char slow_line[512]; /* guarded by log_lock: the first "stopped reading" line */

static void
capture_log(void *userdata, int level, const char *message)
{
    test_log(userdata, level, message);
    pthread_mutex_lock(&log_lock);
    if (!slow_line[0] && strstr(message, "stopped reading")) {
        snprintf(slow_line, sizeof(slow_line), "%s", message);
    }
    pthread_mutex_unlock(&log_lock);
}

Test(clients, a_client_that_stops_reading_is_dropped_while_others_are_served, .timeout = 60)
{
    test_runtime_dir();
    for (size_t i = 0; i < BIG_SIZE; i++) {
        big_data[i] = (uint8_t)(i * 7 + (i >> 12));
    }
    static channel gch, rch;
    channel_open(&gch);
    channel_open(&rch);
    slow_shared *sh = shared_new(sizeof(*sh));
    pid_t good = spawn(&gch, good_main, sh);
    pid_t raw = spawn(&rch, raw_main, sh);
    tether_host_options o = {.name = "slowpoke",
                             .max_output_bytes = MAX_OUTPUT,
                             .log = capture_log,
                             .log_level = TETHER_LOG_DEBUG};
    tether_host *h = test_host_new(&o);
    ASSERT_OK(tether_host_add_service(h, "big", TETHER_CONTEXT_IO, big_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "echo", TETHER_CONTEXT_IO, test_echo_handler, NULL));
    ASSERT_OK(tether_host_start(h));

    /* The good client is busy with big results before, during and after. */
    send_byte(&gch, 'G');
    expect_byte(&gch, 'R', WAIT_MS);
    send_byte(&gch, 'S');
    expect_byte(&gch, 'r', WAIT_MS);
    send_byte(&rch, 'G');
    expect_byte(&rch, 'R', WAIT_MS);
    info_copy info;
    WAIT_INFO(h, "raw-slow", info, info.pid == raw);

    send_byte(&rch, 'S');
    expect_byte(&rch, 'H', 3 * WAIT_MS);
    cr_log_info("raw client: %lld requests, dropped after %lld us; good client: %ld calls, "
                "%ld during the flood",
                (long long)sh->raw_sent, (long long)sh->raw_hang_usec, atomic_load(&sh->good_calls),
                atomic_load(&sh->good_during));
    cr_assert(sh->raw_hung,
              "the host never dropped the client that does not read (%lld requests "
              "over %lld us)",
              (long long)sh->raw_sent, (long long)sh->raw_hang_usec);
    /* Dropped once more than max_output_bytes was queued for it, not before. */
    cr_assert(sh->raw_sent * BIG_SIZE > (int64_t)MAX_OUTPUT, "dropped after %lld requests",
              (long long)sh->raw_sent);
    cr_assert(sh->raw_end_errno == 0 || sh->raw_end_errno == ECONNRESET, "read after: %s",
              strerror(sh->raw_end_errno));
    cr_assert(sh->raw_read_after < sh->raw_sent * BIG_SIZE,
              "the dropped client still got all %lld results", (long long)sh->raw_sent);
    cr_assert(sh->raw_send_errno == EPIPE || sh->raw_send_errno == ECONNRESET,
              "sending after the drop: %s", strerror(sh->raw_send_errno));

    /* The host said why. */
    char line[512] = "";
    for (int i = 0; i < 500 && !line[0]; i++) {
        pthread_mutex_lock(&log_lock);
        snprintf(line, sizeof(line), "%s", slow_line);
        pthread_mutex_unlock(&log_lock);
        if (!line[0]) {
            usleep(10000);
        }
    }
    cr_assert(line[0], "no log line mentions \"stopped reading\"");
    cr_assert(strstr(line, "raw-slow") != NULL, "the log line does not name the client: %s", line);

    /* Only the slow one is gone. */
    for (int i = 0; i < 500 && get_info(h, "raw-slow", &info); i++) {
        usleep(10000);
    }
    cr_assert(!get_info(h, "raw-slow", &info), "the dropped client is still listed");
    cr_assert(get_info(h, "good", &info));
    test_wait_client_count(h, 1, 5000);
    cr_assert_eq(atomic_load(&sh->good_failures), 0, "the good client failed: %s",
                 sh->good_failure);
    cr_assert(atomic_load(&sh->good_during) >= 1,
              "no call of the good client completed while the other was flooding (%lld us)",
              (long long)sh->raw_hang_usec);

    send_byte(&gch, 'E');
    expect_byte(&gch, 'D', 3 * WAIT_MS);
    cr_assert_eq(atomic_load(&sh->good_failures), 0, "the good client failed: %s",
                 sh->good_failure);
    cr_assert(atomic_load(&sh->good_calls) > atomic_load(&sh->good_during) + 10);

    finish(&gch);
    finish(&rch);
    assert_exited(good, reap(good, WAIT_MS), 0);
    assert_exited(raw, reap(raw, WAIT_MS), 0);
    test_wait_client_count(h, 0, 5000);
    tether_host_unref(h);
    close_fd(&gch.up[0]);
    close_fd(&rch.up[0]);
    munmap(sh, sizeof(*sh));
    assert_no_children_left();
}

static int
second_name_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply(req, "s", "second");
}

Test(clients, built_in_services_for_tools, .timeout = 60)
{
    tether_host_options o = {.builtin_services = TETHER_BUILTIN_ALL};
    tether_host *h = start_host("builtins", &o);
    tether_client *tool = test_client_connect("tool", tether_host_get_address(h));
    tether_client *second = test_client_new("second", tether_host_get_address(h));
    ASSERT_OK(tether_client_add_service(second, "whoami", TETHER_CONTEXT_IO, second_name_handler, NULL));
    ASSERT_OK(tether_client_connect(second, NULL));
    tether_conn *conn = tether_client_get_conn(tool);

    /* The host's services, sorted, the built-in ones included. */
    tether_value *v = NULL;
    ASSERT_OK(tether_conn_call(conn, "tether.services", NULL, &v, NULL, NULL));
    char *text = NULL;
    ASSERT_OK(tether_value_to_string(v, &text));
    cr_assert(strstr(text, "\"tether.call_client\", \"tether.clients\", \"tether.disconnect_client\""),
              "%s", text);
    free(text);
    tether_value_unref(v);

    /* Both clients, oldest first. */
    ASSERT_OK(tether_conn_call(conn, "tether.clients", NULL, &v, NULL, NULL));
    const char *first_name, *second_name;
    ASSERT_OK(tether_value_read(v, NULL, "[{ss" "********************" "}{ss" "********************" "}]",
                                NULL, &first_name, NULL, &second_name));
    cr_assert_str_eq(first_name, "tool");
    cr_assert_str_eq(second_name, "second");
    tether_value_unref(v);

    /* A call forwarded to another client, and its error passed on. */
    ASSERT_OK(tether_conn_call(conn, "tether.call_client", NULL, &v, NULL, "ss", "second",
                               "whoami"));
    const char *who;
    ASSERT_OK(tether_value_read(v, NULL, "s", &who));
    cr_assert_str_eq(who, "second");
    tether_value_unref(v);
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_conn_call(conn, "tether.call_client", NULL, NULL, &err, "ss", "second",
                                "nope"),
               TETHER_ENOENT);
    cr_assert_str_eq(err.type, "tether.NoSuchService");
    ASSERT_ERR(tether_conn_call(conn, "tether.reset_client", NULL, NULL, &err, "s", "nobody"),
               TETHER_EREMOTE);
    cr_assert_str_eq(err.type, "LookupError");
    tether_error_done(&err);

    /* A reset: the other client comes back by itself. */
    ASSERT_OK(tether_conn_call(conn, "tether.reset_client", NULL, NULL, NULL, "s", "second"));
    for (int i = 0; i < 300 && tether_client_is_connected(second); i++) {
        usleep(1000);
    }
    for (int i = 0; i < 500 && !tether_client_is_connected(second); i++) {
        usleep(10000);
    }
    cr_assert(tether_client_is_connected(second), "reconnected after the reset");

    tether_client_unref(second);
    tether_client_unref(tool);
    tether_host_unref(h);

    /* Without the option, none of them. */
    tether_host *plain = start_host("plain", NULL);
    tether_client *c = test_client_connect("c", tether_host_get_address(plain));
    ASSERT_ERR(tether_conn_call(tether_client_get_conn(c), "tether.clients", NULL, NULL, NULL, NULL),
               TETHER_ENOENT);
    tether_client_unref(c);
    tether_host_unref(plain);
}
