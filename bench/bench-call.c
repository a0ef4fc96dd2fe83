/*
 * bench-call: what a tether call costs, C client to C host over a Unix socket, using
 * only the public API (include/tether.h).
 *
 * The host runs in a forked process: a tether_host serving a no-op service "noop" on
 * its I/O thread (TETHER_CONTEXT_IO, the handler returns 0, so the reply is nil), on a
 * socket in a private temporary runtime directory. The parent forks before creating any
 * tether object, then connects a tether_client and measures:
 *   sync:  tether_conn_call(conn, "noop", ...) round trips, each timed on its own, after
 *          a warm-up; median and p99;
 *   async: pipelined tether_conn_call_async() with --window futures outstanding: wait
 *          for the oldest (tether_future_wait), take its result, unref it, issue a new
 *          call; calls completed per second over --ms after --warmup-ms, and the CPU
 *          time per call of each process (the client's every thread; the host's from
 *          /proc, in clock ticks). With --batch 1
 *          the calls are batch calls (tether_call_options.batch): each waits in the
 *          output until a wait for a future still pending writes them all.
 *
 * Output: one JSON line, {"bench": "bench-call", "sync": {...}, "async": {...}}.
 */
#define _POSIX_C_SOURCE 200809L

#include <tether.h>

#define BENCH_NAME "bench-call"
#include "common.h"

/*
 * The host process: serve until the parent closes its end of the control pipe. The
 * outcome of the start-up (0 or a negative code) is written to ready_fd.
 */
static void
run_host(const char *dir, const char *path, int ready_fd, int stop_fd)
{
    tether_host_options opts = {
        .name = "bench",
        .runtime_dir = dir,
        .unix_path = path,
    };
    const bench_service services[] = {{"noop", TETHER_CONTEXT_IO}};
    tether_host *host = NULL;
    int r = bench_host_start(&opts, services, BENCH_COUNT(services), &host);
    if (write(ready_fd, &r, sizeof(r)) != (ssize_t)sizeof(r) || r < 0) {
        _exit(1);
    }
    bench_wait_for_stop(stop_fd);
    tether_host_stop(host);
    tether_host_unref(host);
    _exit(0);
}

static void
bench_sync(tether_conn *conn, long warmup, long iterations)
{
    uint64_t *samples = bench_calloc((size_t)iterations, sizeof(uint64_t));
    tether_error err = TETHER_ERROR_INIT;
    int r;
    for (long i = 0; i < warmup; i++) {
        if ((r = tether_conn_call(conn, "noop", NULL, NULL, &err, NULL)) < 0) {
            bench_fail("tether_conn_call (warm-up)", r, &err);
        }
    }
    uint64_t start = bench_now_ns();
    for (long i = 0; i < iterations; i++) {
        uint64_t t0 = bench_now_ns();
        if ((r = tether_conn_call(conn, "noop", NULL, NULL, &err, NULL)) < 0) {
            bench_fail("tether_conn_call", r, &err);
        }
        samples[i] = bench_now_ns() - t0;
    }
    double elapsed = (double)(bench_now_ns() - start) / 1e9;
    bench_stats s = bench_compute_stats(samples, (size_t)iterations);
    printf("\"sync\": {\"iterations\": %ld, \"calls_per_sec\": %.0f, ", iterations,
           (double)iterations / elapsed);
    bench_print_stats("latency", &s);
    printf("}");
    free(samples);
}

static void
complete(tether_future *future)
{
    int r = tether_future_wait(future, TETHER_TIMEOUT_INFINITE);
    if (r < 0) {
        bench_fail("tether_future_wait", r, NULL);
    }
    tether_value *result = NULL;
    tether_error err = TETHER_ERROR_INIT;
    r = tether_future_get_result(future, &result, &err);
    if (r < 0) {
        bench_fail("tether_future_get_result", r, &err);
    }
    tether_value_unref(result);
    tether_future_unref(future);
}

/* CPU time of both processes at one moment. */
typedef struct {
    uint64_t client_usec, host_usec;
} cpu_mark;

static cpu_mark
cpu_now(pid_t host)
{
    return (cpu_mark){bench_self_cpu_usec(), bench_pid_cpu_usec(host)};
}

static void
bench_async(tether_conn *conn, pid_t host, long window, long ms, long warmup_ms, bool batch)
{
    tether_future **ring = bench_calloc((size_t)window, sizeof(*ring));
    tether_call_options opts = {.batch = batch};
    int r;
    for (long i = 0; i < window; i++) {
        if ((r = tether_conn_call_async(conn, "noop", &opts, &ring[i], NULL)) < 0) {
            bench_fail("tether_conn_call_async", r, NULL);
        }
    }
    bench_window w = bench_window_start(warmup_ms, ms);
    uint64_t done = 0;
    long head = 0;
    cpu_mark cpu_start = {0, 0};
    for (;;) {
        complete(ring[head]);
        ring[head] = NULL;
        done++;
        /* Read the clock every 64 completions: cheap, still sub-millisecond precise. */
        if ((done & 63) == 0) {
            bool started = w.start_ns != 0;
            if (bench_window_note(&w, done)) {
                break;
            }
            if (!started && w.start_ns) {
                cpu_start = cpu_now(host); /* the measured span begins */
            }
        }
        if ((r = tether_conn_call_async(conn, "noop", &opts, &ring[head], NULL)) < 0) {
            bench_fail("tether_conn_call_async", r, NULL);
        }
        head = (head + 1) % window;
    }
    cpu_mark cpu_end = cpu_now(host);
    double elapsed = bench_window_seconds(&w);
    uint64_t counted = bench_window_counted(&w, done);
    /* Drain what is still outstanding (not counted). */
    for (long i = 0; i < window; i++) {
        if (ring[i]) {
            complete(ring[i]);
        }
    }
    double per_call = counted ? 1.0 / (double)counted : 0.0;
    printf("\"async\": {\"window\": %ld, \"batch\": %s, \"calls\": %llu, \"seconds\": %.3f, "
           "\"calls_per_sec\": %.0f, \"client_cpu_usec\": %.3f, \"host_cpu_usec\": %.3f}",
           window, batch ? "true" : "false", (unsigned long long)counted, elapsed,
           elapsed > 0 ? (double)counted / elapsed : 0.0,
           (double)(cpu_end.client_usec - cpu_start.client_usec) * per_call,
           (double)(cpu_end.host_usec - cpu_start.host_usec) * per_call);
    free(ring);
}

int
main(int argc, char **argv)
{
    long iterations = 100000, warmup = 10000, window = 1024, ms = 2000, warmup_ms = 300;
    long skip_sync = 0, skip_async = 0, batch = 0;
    const bench_option options[] = {
        {"--iterations", &iterations, "timed synchronous calls"},
        {"--warmup", &warmup, "untimed synchronous calls first"},
        {"--window", &window, "asynchronous calls outstanding"},
        {"--ms", &ms, "measured milliseconds of asynchronous calls"},
        {"--warmup-ms", &warmup_ms, "milliseconds of asynchronous calls not counted"},
        {"--skip-sync", &skip_sync, "1: no synchronous phase"},
        {"--skip-async", &skip_async, "1: no asynchronous phase"},
        {"--batch", &batch, "1: asynchronous calls are batch calls, written by the waits"},
    };
    bench_parse_options(argc, argv, options, BENCH_COUNT(options));
    if (iterations < 1 || window < 1 || ms < 1) {
        fprintf(stderr, "iterations, window and ms must be positive\n");
        return 2;
    }
    bench_ignore_sigpipe();

    char dir[128], path[160];
    bench_tmpdir(dir, sizeof(dir), path, sizeof(path), "bench.sock");
    bench_pipes host;
    int ready;
    pid_t pid = bench_fork_host(run_host, dir, path, &host, &ready, 1);

    tether_client *client = bench_client_connect_unix("bench-call", path, dir);
    tether_conn *conn = tether_client_get_conn(client);

    printf("{\"bench\": \"bench-call\"");
    if (!skip_sync) {
        printf(", ");
        bench_sync(conn, warmup, iterations);
    }
    if (!skip_async) {
        printf(", ");
        bench_async(conn, pid, window, ms, warmup_ms, batch != 0);
    }
    printf("}\n");
    fflush(stdout);

    tether_client_close(client);
    tether_client_unref(client);
    bench_pipes_close_and_wait(&host, pid);
    bench_tmpdir_remove(dir, path);
    return 0;
}
