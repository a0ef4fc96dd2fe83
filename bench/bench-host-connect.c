/*
 * bench-host-connect: how long a client takes to connect to a host and finish the
 * handshake, using only the public API (include/tether.h).
 *
 * The host runs in a forked process (forked before any tether object exists): a
 * tether_host on a Unix socket in a private runtime directory and, for the TCP phase,
 * on an ephemeral loopback TCP port (its token file is in the same directory, where the
 * client finds it). This process then times, each iteration on its own:
 *   unix: tether_client_new + tether_client_connect (hello sent, welcome read), then
 *         tether_client_unref; connect is the time to a usable connection, cycle adds
 *         the unref. One tether_client made at the start and never connected keeps the
 *         process's I/O thread running, as in any program that already uses tether;
 *   tcp:  the same over loopback TCP with the token (as RPyC's default transport);
 *   cold: the same over the Unix socket without that extra client, so every iteration
 *         also starts (in tether_client_new) and joins (in the unref) the I/O thread:
 *         the first connection of a program.
 * Median and p99 of each, after a warm-up.
 *
 * Output: one JSON line, {"bench": "bench-host-connect", "unix": {...}, "tcp": {...},
 * "cold": {...}}; each has "connect" and "cycle" latency figures.
 */
#define _POSIX_C_SOURCE 200809L

#include <tether.h>

#define BENCH_NAME "bench-host-connect"
#include "common.h"

/* The host process: serve until the parent closes the control pipe. Writes the start-up
 * outcome (0 or a negative code) and the TCP port to ready_fd. */
static void
run_host(const char *dir, const char *path, int ready_fd, int stop_fd)
{
    tether_host_options opts = {
        .name = "bench-connect",
        .runtime_dir = dir,
        .unix_path = path,
        .tcp = true,
        .tcp_port = TETHER_PORT_EPHEMERAL,
    };
    const bench_service services[] = {{"noop", TETHER_CONTEXT_IO}};
    tether_host *host = NULL;
    int r = bench_host_start(&opts, services, BENCH_COUNT(services), &host);
    int msg[2] = {r, r == 0 ? tether_host_get_tcp_port(host) : 0};
    if (write(ready_fd, msg, sizeof(msg)) != (ssize_t)sizeof(msg) || r < 0) {
        _exit(1);
    }
    bench_wait_for_stop(stop_fd);
    tether_host_stop(host);
    tether_host_unref(host);
    _exit(0);
}

typedef struct phase {
    const char *key;
    const char *address;
    long iterations, warmup;
} phase;

static void
run_phase(const phase *ph, const char *dir, bool first)
{
    uint64_t *connect = bench_calloc((size_t)ph->iterations, sizeof(uint64_t));
    uint64_t *cycle = bench_calloc((size_t)ph->iterations, sizeof(uint64_t));
    tether_client_options opts = {
        .name = "bench-connect",
        .address = ph->address,
        .runtime_dir = dir,
    };
    uint64_t start = 0;
    for (long i = -ph->warmup; i < ph->iterations; i++) {
        if (i == 0) {
            start = bench_now_ns();
        }
        uint64_t t0 = bench_now_ns();
        tether_client *cl = bench_client_connect(&opts);
        uint64_t t1 = bench_now_ns();
        tether_client_unref(cl);
        uint64_t t2 = bench_now_ns();
        if (i >= 0) {
            connect[i] = t1 - t0;
            cycle[i] = t2 - t0;
        }
    }
    double elapsed = (double)(bench_now_ns() - start) / 1e9;
    bench_stats s_connect = bench_compute_stats(connect, (size_t)ph->iterations);
    bench_stats s_cycle = bench_compute_stats(cycle, (size_t)ph->iterations);
    printf("%s\"%s\": {\"iterations\": %ld, \"connects_per_sec\": %.0f, ", first ? "" : ", ",
           ph->key, ph->iterations, (double)ph->iterations / elapsed);
    bench_print_stats("connect", &s_connect);
    printf(", ");
    bench_print_stats("cycle", &s_cycle);
    printf("}");
    free(connect);
    free(cycle);
}

int
main(int argc, char **argv)
{
    long iterations = 2000, warmup = 200, tcp_iterations = 1000, cold_iterations = 300;
    const bench_option options[] = {
        {"--iterations", &iterations, "timed connections over the Unix socket"},
        {"--warmup", &warmup, "untimed connections first (each phase)"},
        {"--tcp-iterations", &tcp_iterations, "timed connections over TCP (0: none)"},
        {"--cold-iterations", &cold_iterations,
         "timed connections each starting the I/O thread (0: none)"},
    };
    bench_parse_options(argc, argv, options, BENCH_COUNT(options));
    if (iterations < 1) {
        fprintf(stderr, "iterations must be positive\n");
        return 2;
    }
    bench_ignore_sigpipe();

    char dir[128], path[160];
    bench_tmpdir(dir, sizeof(dir), path, sizeof(path), "connect.sock");
    bench_pipes host;
    int msg[2];
    pid_t pid = bench_fork_host(run_host, dir, path, &host, msg, BENCH_COUNT(msg));

    char unix_address[200], tcp_address[64];
    snprintf(unix_address, sizeof(unix_address), "unix:%s", path);
    snprintf(tcp_address, sizeof(tcp_address), "tcp:127.0.0.1:%d", msg[1]);

    /* Keeps the I/O thread running between the clients of the first two phases. */
    tether_client_options kopts = {.name = "bench-connect-keeper", .runtime_dir = dir};
    tether_client *keeper = NULL;
    int r = tether_client_new(&kopts, &keeper);
    if (r < 0) {
        bench_fail("tether_client_new", r, NULL);
    }

    printf("{\"bench\": \"bench-host-connect\", ");
    phase unix_phase = {"unix", unix_address, iterations, warmup};
    run_phase(&unix_phase, dir, true);
    if (tcp_iterations > 0) {
        phase tcp_phase = {"tcp", tcp_address, tcp_iterations, warmup};
        run_phase(&tcp_phase, dir, false);
    }
    keeper = tether_client_unref(keeper);
    if (cold_iterations > 0) {
        phase cold_phase = {"cold", unix_address, cold_iterations, warmup / 4};
        run_phase(&cold_phase, dir, false);
    }
    printf("}\n");
    fflush(stdout);

    bench_pipes_close_and_wait(&host, pid);
    bench_tmpdir_remove(dir, path);
    return 0;
}
