/*
 * bench-py-host: the C host bench/python-bench calls from Python; public API only.
 *
 *   bench-py-host RUNTIME_DIR
 *
 * Serves, on the library's I/O thread (TETHER_CONTEXT_IO, so no hop to a main thread):
 *   noop()     replies nil
 *   echo(b)    replies its bytes argument b
 *   tether.call_client(name, method, args)   the built-in service: method(*args) on the
 *              client called name
 * and on its main thread, an application's loop (poll on tether_host_get_fd, then
 * tether_host_dispatch), the way an engine calls a script:
 *   time_calls(method, count, warmup)   a notification: calls the caller's service
 *              `method` synchronously warmup + count times, one at a time, then notifies
 *              it report(samples), samples the count round trips in nanoseconds as bin
 *              (native uint32 each)
 * on RUNTIME_DIR/bench-py.sock, prints "ready ADDRESS" on stdout once listening, and
 * exits when its standard input reaches end of file (so it never outlives the benchmark
 * that started it).
 */
#define _POSIX_C_SOURCE 200809L
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <tether.h>

static int
noop(tether_request *req, void *userdata)
{
    (void)req;
    (void)userdata;
    return 0; /* returning without a reply replies nil */
}

static int
echo(tether_request *req, void *userdata)
{
    (void)userdata;
    const void *data;
    size_t size;
    /* "y" reads the bin in place (no copy); the reply copies it once into its frame. */
    int r = tether_request_read(req, "y", &data, &size);
    return r < 0 ? r : tether_request_reply(req, "y", data, size);
}

static uint64_t
now_nsec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int
time_calls(tether_request *req, void *userdata)
{
    (void)userdata;
    const char *method;
    int count, warmup;
    int r = tether_request_read(req, "sii", &method, &count, &warmup);
    if (r < 0 || count <= 0 || warmup < 0) {
        return r < 0 ? r : TETHER_EINVAL;
    }
    tether_conn *conn = tether_request_get_conn(req);
    uint32_t *samples = calloc((size_t)count, sizeof(*samples));
    if (!samples) {
        return TETHER_ENOMEM;
    }
    for (int i = -warmup; i < count && r == 0; i++) {
        uint64_t t0 = now_nsec();
        r = tether_conn_call(conn, method, NULL, NULL, NULL, NULL);
        uint64_t ns = now_nsec() - t0;
        if (i >= 0) {
            samples[i] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
        }
    }
    if (r == 0) {
        r = tether_conn_notify(conn, "report", "y", samples, (size_t)count * sizeof(*samples));
    }
    free(samples);
    return r;
}

int
main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s RUNTIME_DIR\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    tether_host_options options = {
        .name = "bench-py",
        .runtime_dir = argv[1],
        /* python-bench keeps 10,000 calls in flight; over the limit (1024 by default)
         * the host would answer tether.TooManyRequests instead of running them. */
        .max_in_flight = 16384,
        /* A 1 MiB echo argument plus the request's envelope; the default (16 MiB) would
         * do, this states what the benchmark needs. */
        .max_frame_size = 2u << 20,
        /* tether.call_client: one Python client calls another's service through us. */
        .builtin_services = TETHER_BUILTIN_CALL_CLIENT,
    };
    tether_host *host = NULL;
    int r = tether_host_new(&options, &host);
    r = r < 0 ? r : tether_host_add_service(host, "noop", TETHER_CONTEXT_IO, noop, NULL);
    r = r < 0 ? r : tether_host_add_service(host, "echo", TETHER_CONTEXT_IO, echo, NULL);
    r = r < 0 ? r
              : tether_host_add_service(host, "time_calls", TETHER_CONTEXT_MAIN, time_calls, NULL);
    r = r < 0 ? r : tether_host_start(host);
    if (r < 0) {
        fprintf(stderr, "bench-py-host: %s\n", tether_strerror(r));
        tether_host_unref(host);
        return 1;
    }
    printf("ready %s\n", tether_host_get_address(host));
    fflush(stdout);

    struct pollfd fds[2] = {{.fd = STDIN_FILENO, .events = POLLIN},
                            {.fd = tether_host_get_fd(host), .events = POLLIN}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            continue; /* EINTR */
        }
        if (fds[0].revents) {
            char buf[256];
            if (read(STDIN_FILENO, buf, sizeof(buf)) <= 0) {
                break;
            }
        }
        if (fds[1].revents) {
            tether_host_dispatch(host, TETHER_BUDGET_UNLIMITED);
        }
    }
    tether_host_unref(host); /* stops serving, removes the socket */
    return 0;
}
