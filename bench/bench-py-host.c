/*
 * bench-py-host: the C host bench/python-bench and bench/buffer-bench call from Python;
 * public API only.
 *
 *   bench-py-host RUNTIME_DIR
 *
 * Serves, on the library's I/O thread (TETHER_CONTEXT_IO, so no hop to a main thread):
 *   noop()     replies nil
 *   echo(b)    replies its bytes argument b (as bytes in the reply's frame, whether b came
 *              as bytes or as a buffer)
 *   echo_buffer(b)   replies b as it came: a buffer goes back as the same buffer (its
 *              shared memory, no copy), bytes as bytes
 *   size(b)    replies the size of b, a buffer ("B") or bytes ("y"), without reading them
 *   checksum_pages(b)   replies the sum of one byte per 4 KiB page of b (every page read)
 *   big(n, array)   replies a buffer of n bytes made and filled once, on the first call
 *              for that n, and kept (a uint8 array of n elements when array is true, else
 *              plain bytes): what a host hands out without filling it per call
 *   frame()    replies the next of 3 buffers made once, uint8 arrays [1080, 1920, 4] (an
 *              8 MiB RGBA frame), after writing the frame's number into its first byte
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
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static int
echo_buffer(tether_request *req, void *userdata)
{
    (void)userdata;
    tether_buffer *buf = NULL;
    if (tether_request_read(req, "B", &buf) == 0) {
        int r = tether_request_reply(req, "B", buf); /* the reply takes its own reference */
        tether_buffer_unref(buf);
        return r;
    }
    return echo(req, userdata);
}

static int
size(tether_request *req, void *userdata)
{
    (void)userdata;
    tether_buffer *buf = NULL;
    if (tether_request_read(req, "B", &buf) == 0) {
        uint64_t n = tether_buffer_get_size(buf);
        tether_buffer_unref(buf);
        return tether_request_reply(req, "u", n);
    }
    const void *data;
    size_t n;
    int r = tether_request_read(req, "y", &data, &n);
    return r < 0 ? r : tether_request_reply(req, "u", (uint64_t)n);
}

static int
checksum_pages(tether_request *req, void *userdata)
{
    (void)userdata;
    const void *data;
    size_t n;
    int r = tether_request_read(req, "y", &data, &n);
    if (r < 0) {
        return r;
    }
    const volatile uint8_t *p = data;
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i += 4096) {
        sum += p[i];
    }
    return tether_request_reply(req, "u", sum);
}

/* big(): one kept buffer per (size, array) asked for; the I/O thread alone uses them. */
#define BIG_KEPT 8
static struct {
    size_t size;
    bool array;
    tether_buffer *buf;
} big_kept[BIG_KEPT];

static int
big(tether_request *req, void *userdata)
{
    (void)userdata;
    uint64_t n;
    bool array = false;
    int r = tether_request_read(req, "ub", &n, &array);
    if (r < 0) {
        return r;
    }
    for (int i = 0; i < BIG_KEPT; i++) {
        if (big_kept[i].buf && big_kept[i].size == n && big_kept[i].array == array) {
            return tether_request_reply(req, "B", big_kept[i].buf);
        }
        if (!big_kept[i].buf) {
            tether_buffer *buf = NULL;
            r = tether_buffer_new((size_t)n, &buf);
            if (r < 0) {
                return r;
            }
            const size_t shape[1] = {(size_t)n};
            r = array ? tether_buffer_set_array(buf, 'B', shape, 1) : 0;
            if (r < 0) {
                tether_buffer_unref(buf);
                return r;
            }
            if (n > 0) {
                memset(tether_buffer_get_writable(buf), 0x5a, (size_t)n); /* pages in */
            }
            big_kept[i].size = (size_t)n;
            big_kept[i].array = array;
            big_kept[i].buf = buf;
            return tether_request_reply(req, "B", buf);
        }
    }
    return TETHER_ENOBUFS;
}

#define FRAME_RING 3
static tether_buffer *frame_ring[FRAME_RING];
static unsigned frame_count;

static int
frame(tether_request *req, void *userdata)
{
    (void)userdata;
    tether_buffer *buf = frame_ring[frame_count % FRAME_RING];
    /* Rendering, cheaply: the frame's number in its first byte. */
    *(uint8_t *)tether_buffer_get_writable(buf) = (uint8_t)frame_count;
    frame_count++;
    return tether_request_reply(req, "B", buf);
}

static int
make_frames(void)
{
    const size_t shape[3] = {1080, 1920, 4};
    for (int i = 0; i < FRAME_RING; i++) {
        int r = tether_buffer_new(1080u * 1920u * 4u, &frame_ring[i]);
        r = r < 0 ? r : tether_buffer_set_array(frame_ring[i], 'B', shape, 3);
        if (r < 0) {
            return r;
        }
        memset(tether_buffer_get_writable(frame_ring[i]), 0, 1080u * 1920u * 4u); /* pages in */
    }
    return 0;
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
    /* bench/buffer-bench: buffers (shared memory) both ways. */
    r = r < 0 ? r
              : tether_host_add_service(host, "echo_buffer", TETHER_CONTEXT_IO, echo_buffer, NULL);
    r = r < 0 ? r : tether_host_add_service(host, "size", TETHER_CONTEXT_IO, size, NULL);
    r = r < 0 ? r
              : tether_host_add_service(host, "checksum_pages", TETHER_CONTEXT_IO, checksum_pages,
                                        NULL);
    r = r < 0 ? r : tether_host_add_service(host, "big", TETHER_CONTEXT_IO, big, NULL);
    r = r < 0 ? r : tether_host_add_service(host, "frame", TETHER_CONTEXT_IO, frame, NULL);
    r = r < 0 ? r : make_frames();
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
    for (int i = 0; i < FRAME_RING; i++) {
        tether_buffer_unref(frame_ring[i]);
    }
    for (int i = 0; i < BIG_KEPT; i++) {
        tether_buffer_unref(big_kept[i].buf);
    }
    return 0;
}
