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

#include "helpers.h"
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
