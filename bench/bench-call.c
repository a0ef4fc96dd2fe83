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
 *          call; calls completed per second over --ms after --warmup-ms.
 *
 * Output: one JSON line, {"bench": "bench-call", "sync": {...}, "async": {...}}.
 */
#define _POSIX_C_SOURCE 200809L

#include <sys/wait.h>

#include <tether.h>

#include "common.h"

static int
noop(tether_request *req, void *userdata)
{
    return 0;
}

static void
fail(const char *what, int r, tether_error *err)
{
    fprintf(stderr, "%s: %s%s%s%s%s\n", what, tether_strerror(r), err && err->type ? " (" : "",
            err && err->type ? err->type : "", err && err->message ? ": " : "",
            err && err->message ? err->message : "");
    printf("{\"bench\": \"bench-call\", \"error\": \"%s: %s\"}\n", what, tether_strerror(r));
    fflush(stdout);
    exit(1);
}

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
    tether_host *host = NULL;
    int r = tether_host_new(&opts, &host);
    if (r == 0) {
        r = tether_host_add_service(host, "noop", TETHER_CONTEXT_IO, noop, NULL);
    }
    if (r == 0) {
        r = tether_host_start(host);
    }
    if (write(ready_fd, &r, sizeof(r)) != (ssize_t)sizeof(r) || r < 0) {
        _exit(1);
    }
    char c;
    while (read(stop_fd, &c, 1) < 0 && errno == EINTR) {
    }
    tether_host_stop(host);
    tether_host_unref(host);
    _exit(0);
}

static void
bench_sync(tether_conn *conn, long warmup, long iterations)
{
    uint64_t *samples = calloc((size_t)iterations, sizeof(uint64_t));
    if (!samples) {
        bench_die("calloc", ENOMEM);
    }
    tether_error err = TETHER_ERROR_INIT;
    int r;
    for (long i = 0; i < warmup; i++) {
        if ((r = tether_conn_call(conn, "noop", NULL, NULL, &err, NULL)) < 0) {
            fail("tether_conn_call (warm-up)", r, &err);
        }
    }
    uint64_t start = bench_now_ns();
    for (long i = 0; i < iterations; i++) {
        uint64_t t0 = bench_now_ns();
        if ((r = tether_conn_call(conn, "noop", NULL, NULL, &err, NULL)) < 0) {
            fail("tether_conn_call", r, &err);
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
        fail("tether_future_wait", r, NULL);
    }
    tether_value *result = NULL;
    tether_error err = TETHER_ERROR_INIT;
    r = tether_future_get_result(future, &result, &err);
    if (r < 0) {
        fail("tether_future_get_result", r, &err);
    }
    tether_value_unref(result);
    tether_future_unref(future);
}

static void
bench_async(tether_conn *conn, long window, long ms, long warmup_ms)
{
    tether_future **ring = calloc((size_t)window, sizeof(*ring));
    if (!ring) {
        bench_die("calloc", ENOMEM);
    }
    int r;
    for (long i = 0; i < window; i++) {
        if ((r = tether_conn_call_async(conn, "noop", NULL, &ring[i], NULL)) < 0) {
            fail("tether_conn_call_async", r, NULL);
        }
    }
    uint64_t t_warm = bench_now_ns() + (uint64_t)warmup_ms * 1000000u;
    uint64_t t_end = t_warm + (uint64_t)ms * 1000000u;
    uint64_t done = 0, done_at_warm = 0, t_measure = 0, now = 0;
    long head = 0;
    for (;;) {
        complete(ring[head]);
        ring[head] = NULL;
        done++;
        /* Read the clock every 64 completions: cheap, still sub-millisecond precise. */
        if ((done & 63) == 0) {
            now = bench_now_ns();
            if (!t_measure && now >= t_warm) {
                t_measure = now;
                done_at_warm = done;
            }
            if (now >= t_end) {
                break;
            }
        }
        if ((r = tether_conn_call_async(conn, "noop", NULL, &ring[head], NULL)) < 0) {
            fail("tether_conn_call_async", r, NULL);
        }
        head = (head + 1) % window;
    }
    double elapsed = (double)(now - t_measure) / 1e9;
    uint64_t counted = done - done_at_warm;
    /* Drain what is still outstanding (not counted). */
    for (long i = 0; i < window; i++) {
        if (ring[i]) {
            complete(ring[i]);
        }
    }
    printf("\"async\": {\"window\": %ld, \"calls\": %llu, \"seconds\": %.3f, "
           "\"calls_per_sec\": %.0f}",
           window, (unsigned long long)counted, elapsed,
           elapsed > 0 ? (double)counted / elapsed : 0.0);
    free(ring);
}

int
main(int argc, char **argv)
{
    long iterations = 100000, warmup = 10000, window = 1024, ms = 2000, warmup_ms = 300;
    long skip_sync = 0, skip_async = 0;
    const bench_option options[] = {
        {"--iterations", &iterations, "timed synchronous calls"},
        {"--warmup", &warmup, "untimed synchronous calls first"},
        {"--window", &window, "asynchronous calls outstanding"},
        {"--ms", &ms, "measured milliseconds of asynchronous calls"},
        {"--warmup-ms", &warmup_ms, "milliseconds of asynchronous calls not counted"},
        {"--skip-sync", &skip_sync, "1: no synchronous phase"},
        {"--skip-async", &skip_async, "1: no asynchronous phase"},
    };
    bench_parse_options(argc, argv, options, sizeof(options) / sizeof(options[0]));
    if (iterations < 1 || window < 1 || ms < 1) {
        fprintf(stderr, "iterations, window and ms must be positive\n");
        return 2;
    }
    bench_ignore_sigpipe();

    char dir[128], path[160];
    bench_tmpdir(dir, sizeof(dir), path, sizeof(path), "bench.sock");
    int ready[2], stop[2];
    if (pipe(ready) < 0 || pipe(stop) < 0) {
        bench_die("pipe", errno);
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        bench_die("fork", errno);
    }
    if (pid == 0) {
        close(ready[0]);
        close(stop[1]);
        run_host(dir, path, ready[1], stop[0]);
    }
    close(ready[1]);
    close(stop[0]);
    int r;
    if (bench_read_full(ready[0], &r, sizeof(r)) <= 0) {
        bench_die("host process died during start-up", ECHILD);
    }
    if (r < 0) {
        fail("host start-up", r, NULL);
    }

    char address[200];
    snprintf(address, sizeof(address), "unix:%s", path);
    tether_client_options copts = {
        .name = "bench-call",
        .address = address,
        .runtime_dir = dir,
    };
    tether_client *client = NULL;
    tether_error err = TETHER_ERROR_INIT;
    if ((r = tether_client_new(&copts, &client)) < 0) {
        fail("tether_client_new", r, NULL);
    }
    if ((r = tether_client_connect(client, &err)) < 0) {
        fail("tether_client_connect", r, &err);
    }
    tether_conn *conn = tether_client_get_conn(client);

    printf("{\"bench\": \"bench-call\"");
    if (!skip_sync) {
        printf(", ");
        bench_sync(conn, warmup, iterations);
    }
    if (!skip_async) {
        printf(", ");
        bench_async(conn, window, ms, warmup_ms);
    }
    printf("}\n");
    fflush(stdout);

    tether_client_close(client);
    tether_client_unref(client);
    close(stop[1]);
    waitpid(pid, NULL, 0);
    bench_tmpdir_remove(dir, path);
    return 0;
}
