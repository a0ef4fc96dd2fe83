/*
 * raw-pingpong: the physical baseline of a synchronous call. Two processes (the server
 * is forked) exchange fixed-size messages over a Unix stream socket with blocking
 * write() and read(): the client writes a request of --req-size bytes and reads a reply
 * of --resp-size bytes, the server does the opposite. Sizes default to those of an
 * encoded tether no-op request and response, length prefix included (bench/run passes
 * them). Each round trip is timed on its own; the median and p99 are reported.
 *
 * Output: one JSON line, {"bench": "raw-pingpong", ..., "latency": {...}}.
 */
#define _POSIX_C_SOURCE 200809L

#include "common.h"

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
    for (;;) {
        int r = bench_read_full(fd, req, (size_t)req_size);
        if (r <= 0) {
            _exit(r == 0 ? 0 : 1);
        }
        if (bench_write_full(fd, resp, (size_t)resp_size) < 0) {
            _exit(1);
        }
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
    int r;
    for (long i = 0; i < warmup; i++) {
        if ((r = bench_write_full(fd, req, (size_t)req_size)) < 0) {
            bench_die("write", -r);
        }
        if ((r = bench_read_full(fd, resp, (size_t)resp_size)) <= 0) {
            bench_die("read", r ? -r : ECONNRESET);
        }
    }
    uint64_t start = bench_now_ns();
    for (long i = 0; i < iterations; i++) {
        uint64_t t0 = bench_now_ns();
        if ((r = bench_write_full(fd, req, (size_t)req_size)) < 0) {
            bench_die("write", -r);
        }
        if ((r = bench_read_full(fd, resp, (size_t)resp_size)) <= 0) {
            bench_die("read", r ? -r : ECONNRESET);
        }
        samples[i] = bench_now_ns() - t0;
    }
    double elapsed = (double)(bench_now_ns() - start) / 1e9;

    close(fd);
    waitpid(pid, NULL, 0);
    bench_tmpdir_remove(dir, path);

    bench_stats s = bench_compute_stats(samples, (size_t)iterations);
    printf("{\"bench\": \"raw-pingpong\", \"req_size\": %ld, \"resp_size\": %ld, "
           "\"iterations\": %ld, \"calls_per_sec\": %.0f, ",
           req_size, resp_size, iterations, (double)iterations / elapsed);
    bench_print_stats("latency", &s);
    printf("}\n");
    free(samples);
    free(req);
    free(resp);
    return 0;
}
