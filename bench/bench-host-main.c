/*
 * bench-host-main: what the hop to the host's main thread costs a synchronous call,
 * using only the public API (include/tether.h).
 *
 * The host runs in a forked process (forked before any tether object exists) and serves
 * two no-op services: "noop_io" (TETHER_CONTEXT_IO, answered on the I/O thread) and
 * "noop_main" (TETHER_CONTEXT_MAIN). Its main thread is an application's own loop:
 * poll() on tether_host_get_fd() (and on a control pipe), then
 * tether_host_dispatch(host, TETHER_BUDGET_UNLIMITED) whenever the fd is readable.
 * This process connects one tether_client and times synchronous tether_conn_call()
 * round trips to both services, after a warm-up of each, alternating blocks of --block
 * calls so that drift of the machine hits both alike; median and p99 of each.
 *
 * Output: one JSON line,
 *   {"bench": "bench-host-main", "io": {...}, "main": {...}, "main_over_io": R}.
 */
#define _POSIX_C_SOURCE 200809L

#include <poll.h>

#include <tether.h>

#define BENCH_NAME "bench-host-main"
#include "common.h"

/*
 * The host process: the main thread's loop, until the parent closes its end of the
 * control pipe. The outcome of the start-up (0 or a negative code) is written to
 * ready_fd; a failed dispatch ends the process with status 3.
 */
static void
run_host(const char *dir, const char *path, int ready_fd, int stop_fd)
{
    tether_host_options opts = {
        .name = "bench-main",
        .runtime_dir = dir,
        .unix_path = path,
    };
    const bench_service services[] = {
        {"noop_io", TETHER_CONTEXT_IO},
        {"noop_main", TETHER_CONTEXT_MAIN},
    };
    tether_host *host = NULL;
    int r = bench_host_start(&opts, services, BENCH_COUNT(services), &host);
    if (write(ready_fd, &r, sizeof(r)) != (ssize_t)sizeof(r) || r < 0) {
        _exit(1);
    }
    struct pollfd pfd[2] = {
        {.fd = tether_host_get_fd(host), .events = POLLIN},
        {.fd = stop_fd, .events = POLLIN},
    };
    int status = 0;
    for (;;) {
        int n = poll(pfd, 2, -1);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            status = 2;
            break;
        }
        if (pfd[1].revents) {
            break;
        }
        if (pfd[0].revents & POLLIN) {
            r = tether_host_dispatch(host, TETHER_BUDGET_UNLIMITED);
            if (r < 0) {
                fprintf(stderr, "tether_host_dispatch: %s\n", tether_strerror(r));
                status = 3;
                break;
            }
        }
    }
    tether_host_stop(host);
    tether_host_unref(host);
    _exit(status);
}

static void
call(tether_conn *conn, const char *method)
{
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_conn_call(conn, method, NULL, NULL, &err, NULL);
    if (r < 0) {
        bench_fail(method, r, &err);
    }
}

int
main(int argc, char **argv)
{
    long iterations = 20000, warmup = 2000, block = 500;
    const bench_option options[] = {
        {"--iterations", &iterations, "timed synchronous calls to each service"},
        {"--warmup", &warmup, "untimed calls to each service first"},
        {"--block", &block, "calls to one service before switching to the other"},
    };
    bench_parse_options(argc, argv, options, BENCH_COUNT(options));
    if (iterations < 1 || block < 1) {
        fprintf(stderr, "iterations and block must be positive\n");
        return 2;
    }
    bench_ignore_sigpipe();

    char dir[128], path[160];
    bench_tmpdir(dir, sizeof(dir), path, sizeof(path), "main.sock");
    bench_pipes host;
    int ready;
    pid_t pid = bench_fork_host(run_host, dir, path, &host, &ready, 1);

    tether_client *client = bench_client_connect_unix("bench-host-main", path, dir);
    tether_conn *conn = tether_client_get_conn(client);

    uint64_t *io = bench_calloc((size_t)iterations, sizeof(uint64_t));
    uint64_t *mn = bench_calloc((size_t)iterations, sizeof(uint64_t));
    for (long i = 0; i < warmup; i++) {
        call(conn, "noop_io");
        call(conn, "noop_main");
    }
    uint64_t io_ns = 0, main_ns = 0;
    for (long done = 0; done < iterations; done += block) {
        long n = iterations - done < block ? iterations - done : block;
        uint64_t t = bench_now_ns();
        for (long i = done; i < done + n; i++) {
            uint64_t t0 = bench_now_ns();
            call(conn, "noop_io");
            io[i] = bench_now_ns() - t0;
        }
        uint64_t t2 = bench_now_ns();
        io_ns += t2 - t;
        for (long i = done; i < done + n; i++) {
            uint64_t t0 = bench_now_ns();
            call(conn, "noop_main");
            mn[i] = bench_now_ns() - t0;
        }
        main_ns += bench_now_ns() - t2;
    }
    bench_stats s_io = bench_compute_stats(io, (size_t)iterations);
    bench_stats s_main = bench_compute_stats(mn, (size_t)iterations);

    printf("{\"bench\": \"bench-host-main\", \"iterations\": %ld, \"block\": %ld, ", iterations,
           block);
    printf("\"io\": {\"calls_per_sec\": %.0f, ", (double)iterations / ((double)io_ns / 1e9));
    bench_print_stats("latency", &s_io);
    printf("}, \"main\": {\"calls_per_sec\": %.0f, ", (double)iterations / ((double)main_ns / 1e9));
    bench_print_stats("latency", &s_main);
    printf("}, \"main_over_io\": %.3f}\n",
           s_io.median_usec > 0 ? s_main.median_usec / s_io.median_usec : 0.0);
    fflush(stdout);
    free(io);
    free(mn);

    tether_client_close(client);
    tether_client_unref(client);
    int status = bench_pipes_close_and_wait(&host, pid);
    bench_tmpdir_remove(dir, path);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "the host process ended with status %d\n", status);
        return 1;
    }
    return 0;
}
