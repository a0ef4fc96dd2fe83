/*
 * forward: a host between two clients. tether.call_client passes the caller's silence
 * timeout and its cancel on to the client it calls (the target sees a CANCEL, or its
 * handler sees tether_request_is_cancelled), and a client's services, those registered
 * before connecting and those registered after, are announced to the host, which lists
 * them, tells its main thread, and lets a thread wait for one and then call it.
 *
 * The clients are real ones over the host's Unix socket; the silent target is a raw peer
 * (raw-peer.h) that reads the frames the host sends it and never answers, so the test
 * sees the CANCEL itself.
 */
/* ctest: timeout=120 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "process-helpers.h"
#include "raw-peer.h"

static tether_host *
start_host(const char *name, tether_host_options *o)
{
    o->name = name;
    o->builtin_services = TETHER_BUILTIN_ALL;
    tether_host *h = test_host_new(o);
    ASSERT_OK(tether_host_start(h));
    return h;
}

/* ---- call_client: timeout and cancel --------------------------------------------------- */

/* A raw peer called "raw", past its handshake: the host's WELCOME read. */
static int
raw_client(tether_host *h)
{
    int fd = raw_connect(h);
    raw_hello(fd, 1, 1, NULL);
    tether__frame f;
    uint8_t buf[4096];
    cr_assert_eq(raw_read_frame(fd, &f, buf, sizeof(buf)), TETHER__WELCOME);
    test_wait_client_count(h, 1, 5000);
    return fd;
}

Test(forward, caller_timeout_reaches_a_silent_client)
{
    tether_host *h = start_host("fwd-timeout", &(tether_host_options){0});
    int raw = raw_client(h);
    tether_client *tool = test_client_connect("tool", tether_host_get_address(h));

    /* The caller's silence bound is 200 ms; the target never answers nor sends progress. */
    tether_call_options o = {.timeout_usec = 200 * 1000};
    tether_future *future = NULL;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(tool), "tether.call_client", &o,
                                     &future, "ss", "raw", "slow"));
    tether__frame f;
    uint8_t buf[4096];
    cr_assert_eq(raw_read_frame(raw, &f, buf, sizeof(buf)), TETHER__REQUEST);
    cr_assert_eq(f.method.len, 4);
    cr_assert(memcmp(f.method.ptr, "slow", 4) == 0);
    cr_assert_eq(f.timeout_ms, 200, "the forwarded call has the caller's timeout");
    uint64_t id = f.id;

    /* Well within the 30 s the host's own default would take. */
    ASSERT_OK(tether_future_wait(future, 10 * 1000 * 1000));
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_future_get_result(future, NULL, &err), TETHER_ETIMEDOUT);
    cr_assert_str_eq(err.type, "tether.Timeout");
    tether_error_done(&err);

    /* The host stopped waiting for the target and said so. */
    cr_assert_eq(raw_read_frame(raw, &f, buf, sizeof(buf)), TETHER__CANCEL);
    cr_assert_eq(f.id, id);

    tether_future_unref(future);
    tether_client_unref(tool);
    close(raw);
    tether_host_unref(h);
}

typedef struct worker {
    atomic_int started, saw_cancel;
} worker;

/* Works for up to 5 s, stopping early when its caller cancels. */
static int
slow_handler(tether_request *req, void *userdata)
{
    worker *w = userdata;
    atomic_store(&w->started, 1);
    for (int i = 0; i < 500 && !tether_request_is_cancelled(req); i++) {
        usleep(10000);
    }
    if (tether_request_is_cancelled(req)) {
        atomic_store(&w->saw_cancel, 1);
    }
    return tether_request_reply(req, "s", "done");
}

static void
wait_flag(atomic_int *flag, const char *what)
{
    for (int i = 0; i < 1000 && !atomic_load(flag); i++) {
        usleep(10000);
    }
    cr_assert(atomic_load(flag), "%s within 10 s", what);
}

static tether_client *
worker_client(tether_host *h, worker *w)
{
    tether_client *c = test_client_new("worker", tether_host_get_address(h));
    ASSERT_OK(tether_client_add_service(c, "slow", TETHER_CONTEXT_POOL, slow_handler, w));
    ASSERT_OK(tether_client_connect(c, NULL));
    return c;
}

Test(forward, caller_deadline_cancels_the_clients_handler)
{
    tether_host *h = start_host("fwd-deadline", &(tether_host_options){0});
    worker w = {0};
    tether_client *target = worker_client(h, &w);
    tether_client *tool = test_client_connect("tool", tether_host_get_address(h));

    /* The target is alive (it sends progress), so only the whole call's bound ends it.
     * (A future, not a synchronous call: both clients live in this process, where a
     * thread blocked in a call runs the call-backs of its chain, the target's handler
     * included.) */
    tether_call_options o = {.deadline_usec = tether_now_usec() + 200 * 1000};
    tether_future *future = NULL;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(tool), "tether.call_client", &o,
                                     &future, "ss", "worker", "slow"));
    ASSERT_OK(tether_future_wait(future, 10 * 1000 * 1000));
    ASSERT_ERR(tether_future_get_result(future, NULL, NULL), TETHER_ETIMEDOUT);
    tether_future_unref(future);
    wait_flag(&w.saw_cancel, "the target's handler saw the cancel");

    tether_client_unref(tool);
    tether_client_unref(target);
    tether_host_unref(h);
}

Test(forward, cancel_reaches_the_clients_handler)
{
    tether_host *h = start_host("fwd-cancel", &(tether_host_options){0});
    worker w = {0};
    tether_client *target = worker_client(h, &w);
    tether_client *tool = test_client_connect("tool", tether_host_get_address(h));

    tether_future *future = NULL;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(tool), "tether.call_client", NULL,
                                     &future, "ss", "worker", "slow"));
    wait_flag(&w.started, "the target's handler started");
    cr_assert(!atomic_load(&w.saw_cancel));
    ASSERT_OK(tether_future_cancel(future));
    wait_flag(&w.saw_cancel, "the target's handler saw the cancel");

    tether_future_unref(future);
    tether_client_unref(tool);
    tether_client_unref(target);
    tether_host_unref(h);
}

/* ---- service announcements ---------------------------------------------------------------- */

static int
late_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply(req, "s", "late here");
}

/* The child: "early" registered before connecting, "late" once the parent says so. */
static int
announcing_child(channel *ch, void *arg)
{
    tether_client *c = child_client("announcer", arg);
    CHILD_OK(tether_client_add_service(c, "early", TETHER_CONTEXT_IO, late_handler, NULL));
    child_expect(ch, 'G'); /* the host listens (it starts after the fork) */
    child_connect(c);
    child_send(ch, 'c');
    child_expect(ch, 'r');
    usleep(200 * 1000); /* the parent is waiting for it by now */
    CHILD_OK(tether_client_add_service(c, "late", TETHER_CONTEXT_IO, late_handler, NULL));
    child_wait_finish(ch);
    tether_client_unref(c);
    return 0;
}

/* What the main thread was told, in order: "+" for a client's arrival, then names. */
typedef struct announced {
    char names[8][32];
    int count;
    tether_conn *conn;
} announced;

static void
on_client_service(void *userdata, tether_conn *conn, const char *name)
{
    announced *a = userdata;
    if (a->count < 8) {
        snprintf(a->names[a->count++], sizeof(a->names[0]), "%s", name);
    }
    a->conn = conn;
}

static void
on_client(void *userdata, tether_conn *conn, int event)
{
    if (event == TETHER_CLIENT_CONNECTED) {
        on_client_service(userdata, conn, "+");
    }
}

Test(forward, a_service_registered_after_connecting_becomes_callable)
{
    char address[300];
    snprintf(address, sizeof(address), "unix:%s/announce.sock", test_runtime_dir());
    channel ch;
    channel_open(&ch);
    pid_t child = spawn(&ch, announcing_child, address);

    announced seen = {0};
    tether_host_options o = {.on_client = on_client,
                             .on_client_userdata = &seen,
                             .on_client_service = on_client_service,
                             .on_client_service_userdata = &seen};
    tether_host *h = start_host("announce", &o);
    send_byte(&ch, 'G');
    expect_byte(&ch, 'c', WAIT_MS);
    tether_conn *conn = NULL;
    ASSERT_OK(tether_host_get_client(h, "announcer", &conn));

    /* Registered before connecting: announced as it connected. */
    ASSERT_OK(tether_conn_wait_service(conn, "early", 10 * 1000 * 1000));
    cr_assert_eq(tether_conn_has_service(conn, "early"), 1);
    cr_assert_eq(tether_conn_has_service(conn, "late"), 0);
    ASSERT_ERR(tether_conn_call(conn, "late", NULL, NULL, NULL, NULL), TETHER_ENOENT);

    /* Registered while connected: the host waiting for it learns of it and calls it. */
    send_byte(&ch, 'r');
    ASSERT_OK(tether_conn_wait_service(conn, "late", 10 * 1000 * 1000));
    tether_value *v = NULL;
    ASSERT_OK(tether_conn_call(conn, "late", NULL, &v, NULL, NULL));
    const char *text;
    ASSERT_OK(tether_value_read(v, NULL, "s", &text));
    cr_assert_str_eq(text, "late here");
    tether_value_unref(v);

    /* The main thread heard of the client, then of both services, in order. */
    for (int i = 0; i < 100 && seen.count < 3; i++) {
        tether_host_wait(h, 100 * 1000);
    }
    cr_assert_eq(seen.count, 3);
    cr_assert_str_eq(seen.names[0], "+");
    cr_assert_str_eq(seen.names[1], "early");
    cr_assert_str_eq(seen.names[2], "late");
    cr_assert_eq(seen.conn, conn);

    /* The list of clients shows them. */
    tether_client_info *infos = NULL;
    size_t n = 0;
    ASSERT_OK(tether_host_list_clients(h, &infos, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(infos[0].service_count, 2);
    cr_assert_str_eq(infos[0].services[0], "early");
    cr_assert_str_eq(infos[0].services[1], "late");
    tether_client_infos_free(infos, n);

    /* The client leaves: a thread waiting for another service stops waiting. */
    finish(&ch);
    ASSERT_ERR(tether_conn_wait_service(conn, "never", TETHER_TIMEOUT_INFINITE), TETHER_ECONNRESET);
    assert_exited(child, reap(child, WAIT_MS), 0);
    tether_conn_unref(conn);
    tether_host_unref(h);
    assert_no_children_left();
}

/* Send a REQUEST (id > 0) or a NOTIFY (id 0) of tether.announce with these args. */
static void
raw_announce(int fd, uint64_t id, const uint8_t *args, size_t len)
{
    tether__buf b = TETHER__BUF_INIT;
    const char *m = "tether.announce";
    if (id) {
        ASSERT_OK(tether__encode_request(&b, id, 0, 0, m, strlen(m), args, len, NULL, 0, 0));
    } else {
        ASSERT_OK(tether__encode_notify(&b, 0, 0, m, strlen(m), args, len, NULL, 0));
    }
    raw_send(fd, b.data, b.len);
    tether__buf_done(&b);
}

Test(forward, a_peer_that_announces_nothing_or_nonsense)
{
    tether_host *h = start_host("announce-raw", &(tether_host_options){0});
    int raw = raw_client(h);
    tether_conn *conn = NULL;
    ASSERT_OK(tether_host_get_client(h, "raw", &conn));

    /* An older peer announces nothing: it is still served, nothing is waited for in vain
     * beyond the timeout. */
    cr_assert_eq(tether_conn_has_service(conn, "x"), 0);
    ASSERT_ERR(tether_conn_wait_service(conn, "x", 50 * 1000), TETHER_ETIMEDOUT);
    ASSERT_ERR(tether_conn_wait_service(conn, "x", 0), TETHER_ETIMEDOUT);
    ASSERT_ERR(tether_conn_wait_service(conn, NULL, 0), TETHER_EINVAL);
    ASSERT_ERR(tether_conn_has_service(conn, ""), TETHER_EINVAL);

    /* Not a list of names: a TypeError, and nothing of it is taken. */
    static const uint8_t not_names[] = {0x91, 0x92, 0xa2, 'o', 'k', 0x02}; /* [["ok", 2]] */
    raw_announce(raw, 1, not_names, sizeof(not_names));
    tether__frame f;
    uint8_t buf[4096];
    cr_assert_eq(raw_read_frame(raw, &f, buf, sizeof(buf)), TETHER__RESPONSE);
    cr_assert_eq(f.id, 1);
    cr_assert(f.is_error);
    cr_assert_eq(tether_conn_has_service(conn, "ok"), 0);
    static const uint8_t a_name[] = {0x91, 0xa2, 'o', 'k'}; /* ["ok"]: not inside a list */
    raw_announce(raw, 2, a_name, sizeof(a_name));
    cr_assert_eq(raw_read_frame(raw, &f, buf, sizeof(buf)), TETHER__RESPONSE);
    cr_assert(f.is_error);

    /* Over the host's limit of names per client: refused whole. */
    size_t many = 4097, len = 6 + 2 * many;
    uint8_t *big = malloc(len);
    cr_assert(big);
    memcpy(big, (uint8_t[]){0x91, 0xdd, 0x00, 0x00, 0x10, 0x01}, 6); /* [[4097 items]] */
    for (size_t i = 0; i < many; i++) {
        big[6 + 2 * i] = 0xa1; /* "k" */
        big[7 + 2 * i] = 'k';
    }
    raw_announce(raw, 3, big, len);
    free(big);
    cr_assert_eq(raw_read_frame(raw, &f, buf, sizeof(buf)), TETHER__RESPONSE);
    cr_assert_eq(f.id, 3);
    cr_assert(f.is_error);
    cr_assert_eq(tether_conn_has_service(conn, "k"), 0);

    /* A well-formed one, as a notification like a client sends it. */
    static const uint8_t names[] = {0x91, 0x91, 0xa2, 'o', 'k'}; /* [["ok"]] */
    raw_announce(raw, 0, names, sizeof(names));
    ASSERT_OK(tether_conn_wait_service(conn, "ok", 10 * 1000 * 1000));

    /* A client's own connection to its host has no announced services to ask about. */
    tether_client *tool = test_client_connect("tool", tether_host_get_address(h));
    ASSERT_ERR(tether_conn_has_service(tether_client_get_conn(tool), "ok"), TETHER_ENOTSUP);
    ASSERT_ERR(tether_conn_wait_service(tether_client_get_conn(tool), "ok", 0), TETHER_ENOTSUP);

    tether_client_unref(tool);
    close(raw);
    tether_conn_unref(conn);
    tether_host_unref(h);
}
