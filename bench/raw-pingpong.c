/*
 * raw-pingpong: the physical baseline of a synchronous call. Two processes (the server
 * is forked) exchange fixed-size messages over a Unix stream socket with blocking
 * write() and read(): the client writes a request of --req-size bytes and reads a reply
 * of --resp-size bytes, the server does the opposite. Sizes default to those of an
 * encoded tether no-op request and response, length prefix included (bench/run passes
 * them). Each round trip is timed on its own; the median and p99 are reported.
 *
 * With --wait-ready 1 each side first waits for its input the way an event-driven peer
 * does, then reads: the server in epoll_wait (as a libuv I/O thread), the client in
 * poll (as a tether synchronous caller). The same round trip then shows what waiting
 * for readiness costs by itself, whatever library does it.
 *
 * Output: one JSON line, {"bench": "raw-pingpong", ..., "latency": {...}}.
 */
#define _POSIX_C_SOURCE 200809L

#include <poll.h>
#include <sys/epoll.h>

#include "common.h"

/* --wait-ready: wait for input in poll/epoll before each read (the forked server reads
 * it as it was when forked). */
static long wait_ready;

/* Block until fd is readable: in epoll_wait on epfd (>= 0), else in poll. */
static void
wait_readable(int fd, int epfd)
{
    if (epfd >= 0) {
        struct epoll_event ev;
        while (epoll_wait(epfd, &ev, 1, -1) < 1) {
        }
        return;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (poll(&p, 1, -1) < 1) {
    }
}

static void
serve(int lfd, long req_size, long resp_size)
{
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) {
        _exit(1);
    }
    char *req = calloc(1, (size_t)req_size);
    char *resp = calloc(1, (size_t)resp_size);
    if (!req || !resp) {
        _exit(1);
    }
    int epfd = -1;
    if (wait_ready) {
        struct epoll_event ev = {.events = EPOLLIN};
        epfd = epoll_create1(EPOLL_CLOEXEC);
        if (epfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            _exit(1);
        }
    }
    for (;;) {
        if (wait_ready) {
            wait_readable(fd, epfd);
        }
        int r = bench_read_full(fd, req, (size_t)req_size);
        if (r <= 0) {
            _exit(r == 0 ? 0 : 1);
        }
        if (bench_write_full(fd, resp, (size_t)resp_size) < 0) {
            _exit(1);
        }
    }
}

static void
round_trip(int fd, const char *req, size_t req_size, char *resp, size_t resp_size)
{
    int r;
    if ((r = bench_write_full(fd, req, req_size)) < 0) {
        bench_die("write", -r);
    }
    if (wait_ready) {
        wait_readable(fd, -1);
    }
    if ((r = bench_read_full(fd, resp, resp_size)) <= 0) {
        bench_die("read", r ? -r : ECONNRESET);
    }
}

int
main(int argc, char **argv)
{
    long req_size = 23, resp_size = 13, iterations = 100000, warmup = 10000;
    const bench_option options[] = {
        {"--req-size", &req_size, "bytes of a request"},
        {"--resp-size", &resp_size, "bytes of a reply"},
        {"--iterations", &iterations, "timed round trips"},
        {"--warmup", &warmup, "untimed round trips first"},
        {"--wait-ready", &wait_ready, "1: wait for input in epoll (server) and poll (client)"},
    };
    bench_parse_options(argc, argv, options, BENCH_COUNT(options));
    if (req_size < 1 || resp_size < 1 || iterations < 1) {
        fprintf(stderr, "sizes and iterations must be positive\n");
        return 2;
    }
    bench_ignore_sigpipe();

    char dir[128], path[160];
    bench_tmpdir(dir, sizeof(dir), path, sizeof(path), "raw.sock");
    pid_t pid;
    int fd = bench_fork_server(path, serve, req_size, resp_size, &pid);
    char *req = bench_calloc(1, (size_t)req_size);
    char *resp = bench_calloc(1, (size_t)resp_size);
    uint64_t *samples = bench_calloc((size_t)iterations, sizeof(uint64_t));
    for (long i = 0; i < warmup; i++) {
        round_trip(fd, req, (size_t)req_size, resp, (size_t)resp_size);
    }
    uint64_t start = bench_now_ns();
    for (long i = 0; i < iterations; i++) {
        uint64_t t0 = bench_now_ns();
        round_trip(fd, req, (size_t)req_size, resp, (size_t)resp_size);
        samples[i] = bench_now_ns() - t0;
    }
    double elapsed = (double)(bench_now_ns() - start) / 1e9;

    close(fd);
    waitpid(pid, NULL, 0);
    bench_tmpdir_remove(dir, path);

    bench_stats s = bench_compute_stats(samples, (size_t)iterations);
    printf("{\"bench\": \"raw-pingpong\", \"req_size\": %ld, \"resp_size\": %ld, "
           "\"wait_ready\": %ld, \"iterations\": %ld, \"calls_per_sec\": %.0f, ",
           req_size, resp_size, wait_ready, iterations, (double)iterations / elapsed);
    bench_print_stats("latency", &s);
    printf("}\n");
    free(samples);
    free(req);
    free(resp);
    return 0;
}
