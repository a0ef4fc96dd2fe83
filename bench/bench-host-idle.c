/*
 * bench-host-idle: what idle clients cost a host, using only the public API
 * (include/tether.h).
 *
 * This process is the host: a tether_host on a Unix socket in a private runtime
 * directory, whose main thread is the one measured. A forked process holds the clients
 * (it is forked before any tether object exists): on command it connects more clients
 * (tether_client_new + tether_client_connect each, all kept open and silent) or drops
 * them all. Both processes raise RLIMIT_NOFILE to its hard limit, since each client
 * uses several fds on each side. The host measures:
 *   dispatch: tether_host_dispatch(host, --budget-usec) with an empty queue, in a tight
 *             loop of --dispatch-calls calls in fifty batches, with no client (before the
 *             clients come and after they leave) and with --clients idle clients
 *             connected; ns per call of the best batch (noise only ever adds to a loop
 *             that does the same work each time), and of the median batch;
 *   memory:   the host process's Rss and Pss (/proc/self/smaps_rollup) with no client,
 *             with half of them and with all of them connected, after one client came
 *             and went (so that what any first client allocates once is in the baseline);
 *             bytes per client from none to all, and from half to all;
 *   idle:     the host process's CPU time (getrusage, every thread) over --idle-ms
 *             milliseconds of idling with all the clients connected, the main thread
 *             asleep.
 * The clients' process reports its own Rss growth per client, for information.
 *
 * Output: one JSON line, {"bench": "bench-host-idle", "dispatch": {...}, ...}.
 */
#define _POSIX_C_SOURCE 200809L

#include <poll.h>

#include <tether.h>

#define BENCH_NAME "bench-host-idle"
#include "common.h"

enum {
    CMD_CONNECT = 1,
    CMD_DROP = 2
};

/* Fds one client needs in the clients' process: its socket, a dup of it, an epoll set
 * and an eventfd (the host side needs three). The portable platform layer needs three
 * (its socket and the two ends of a pipe) and one on the host side. */
#define FDS_PER_CLIENT 4

/* ---- the clients' process ------------------------------------------------------------ */

typedef struct reply {
    int32_t status; /* 0 or a negative tether code */
    int32_t index;  /* the client that failed */
    int64_t rss_kib_before, rss_kib_after;
} reply;

static void
run_clients(const char *address, const char *dir, int cmd_fd, int reply_fd)
{
    bench_raise_nofile();
    tether_client **clients = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        uint32_t cmd[2];
        if (bench_read_full(cmd_fd, cmd, sizeof(cmd)) <= 0) {
            break;
        }
        reply rep = {0};
        rep.rss_kib_before = bench_read_mem().rss_kib;
        if (cmd[0] == CMD_CONNECT) {
            if (n + cmd[1] > cap) {
                cap = n + cmd[1];
                tether_client **p = realloc(clients, cap * sizeof(*clients));
                if (!p) {
                    _exit(1);
                }
                clients = p;
            }
            for (uint32_t i = 0; i < cmd[1]; i++) {
                char name[32];
                snprintf(name, sizeof(name), "idle-%zu", n);
                tether_client_options opts = {
                    .name = name,
                    .address = address,
                    .runtime_dir = dir,
                };
                tether_client *cl = NULL;
                int r = tether_client_new(&opts, &cl);
                if (r == 0) {
                    r = tether_client_connect(cl, NULL);
                }
                if (r < 0) {
                    tether_client_unref(cl);
                    rep.status = r;
                    rep.index = (int32_t)n;
                    break;
                }
                clients[n++] = cl;
            }
        } else {
            while (n > 0) {
                tether_client_unref(clients[--n]);
            }
        }
        rep.rss_kib_after = bench_read_mem().rss_kib;
        if (bench_write_full(reply_fd, &rep, sizeof(rep)) < 0) {
            break;
        }
    }
    while (n > 0) {
        tether_client_unref(clients[--n]);
    }
    free(clients);
    _exit(0);
}

/* ---- the host --------------------------------------------------------------------------- */

/* The clients' process, through the pipes: commands go out, replies come in. */
static reply
command(bench_pipes *cp, uint32_t op, uint32_t count)
{
    uint32_t cmd[2] = {op, count};
    reply rep;
    if (bench_write_full(cp->out_fd, cmd, sizeof(cmd)) < 0 ||
        bench_read_full(cp->in_fd, &rep, sizeof(rep)) <= 0) {
        bench_die("the clients' process died", ECHILD);
    }
    if (rep.status < 0) {
        char what[96];
        snprintf(what, sizeof(what), "client %d: tether_client_connect", rep.index);
        bench_fail(what, rep.status, NULL);
    }
    return rep;
}

/* Wait until the host counts `want` clients (its I/O thread notices a departure late). */
static void
wait_count(tether_host *host, int want)
{
    uint64_t give_up = bench_now_ns() + 20ull * 1000000000u;
    int n;
    while ((n = tether_host_get_client_count(host)) != want) {
        if (bench_now_ns() > give_up) {
            char what[96];
            snprintf(what, sizeof(what), "host counts %d clients, expected %d", n, want);
            bench_fail_message(what);
        }
        bench_sleep_ms(1);
    }
}

typedef struct dispatch_figures {
    double median_ns, min_ns, max_ns;
} dispatch_figures;

#define BATCHES 50

static int
cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ns per tether_host_dispatch() call with nothing queued: batches, the median one. */
static dispatch_figures
time_dispatch(tether_host *host, long calls, uint64_t budget_usec)
{
    long per_batch = calls / BATCHES > 0 ? calls / BATCHES : 1;
    double ns[BATCHES];
    for (int b = 0; b < BATCHES; b++) {
        int worst = 0;
        uint64_t t0 = bench_now_ns();
        for (long i = 0; i < per_batch; i++) {
            int r = tether_host_dispatch(host, budget_usec);
            worst = r != 0 ? r : worst;
        }
        uint64_t t1 = bench_now_ns();
        if (worst < 0) {
            bench_fail("tether_host_dispatch", worst, NULL);
        }
        if (worst > 0) {
            bench_fail("tether_host_dispatch found work in a queue that should be empty", -EPROTO,
                       NULL);
        }
        ns[b] = (double)(t1 - t0) / (double)per_batch;
    }
    qsort(ns, BATCHES, sizeof(ns[0]), cmp_double);
    return (dispatch_figures){(ns[BATCHES / 2 - 1] + ns[BATCHES / 2]) / 2, ns[0], ns[BATCHES - 1]};
}

int
main(int argc, char **argv)
{
    long clients = 1000, calls = 10000000, idle_ms = 2000, budget = 500;
    const bench_option options[] = {
        {"--clients", &clients, "idle clients to connect"},
        {"--dispatch-calls", &calls, "tether_host_dispatch() calls timed per case"},
        {"--idle-ms", &idle_ms, "milliseconds of idling whose CPU time is measured"},
        {"--budget-usec", &budget, "budget passed to tether_host_dispatch()"},
    };
    bench_parse_options(argc, argv, options, BENCH_COUNT(options));
    if (clients < 2 || calls < BATCHES) {
        fprintf(stderr, "--clients must be at least 2, --dispatch-calls at least %d\n", BATCHES);
        return 2;
    }
    bench_ignore_sigpipe();
    long nofile = bench_raise_nofile();
    if (nofile < clients * FDS_PER_CLIENT + 64) {
        char what[128];
        snprintf(what, sizeof(what), "RLIMIT_NOFILE hard limit %ld is too low for %ld clients",
                 nofile, clients);
        bench_fail_message(what);
    }

    char dir[128], path[160], address[200];
    bench_tmpdir(dir, sizeof(dir), path, sizeof(path), "idle.sock");
    snprintf(address, sizeof(address), "unix:%s", path);
    bench_pipes cp;
    pid_t pid = bench_fork_piped(&cp);
    if (pid == 0) {
        run_clients(address, dir, cp.in_fd, cp.out_fd);
    }

    tether_host_options hopts = {
        .name = "bench-idle",
        .runtime_dir = dir,
        .unix_path = path,
        .max_clients = (uint32_t)clients + 16,
    };
    const bench_service services[] = {{"noop", TETHER_CONTEXT_IO}};
    tether_host *host = NULL;
    int r = bench_host_start(&hopts, services, BENCH_COUNT(services), &host);
    if (r < 0) {
        bench_fail("host start-up", r, NULL);
    }

    /* One client comes and goes: what a first client allocates once is then counted in
     * the baseline, not spread over the clients. */
    command(&cp, CMD_CONNECT, 1);
    wait_count(host, 1);
    command(&cp, CMD_DROP, 0);
    wait_count(host, 0);
    bench_sleep_ms(50);

    dispatch_figures none_before = time_dispatch(host, calls, (uint64_t)budget);
    bench_mem mem0 = bench_read_mem();

    long half = clients / 2;
    reply r1 = command(&cp, CMD_CONNECT, (uint32_t)half);
    wait_count(host, (int)half);
    bench_sleep_ms(100);
    bench_mem mem_half = bench_read_mem();
    reply r2 = command(&cp, CMD_CONNECT, (uint32_t)(clients - half));
    wait_count(host, (int)clients);
    bench_sleep_ms(100);
    bench_mem mem1 = bench_read_mem();

    dispatch_figures with_clients = time_dispatch(host, calls, (uint64_t)budget);

    struct pollfd pfd = {.fd = tether_host_get_fd(host), .events = POLLIN};
    int fd_readable = poll(&pfd, 1, 0) > 0;
    uint64_t cpu0 = bench_self_cpu_usec(), wall0 = bench_now_ns();
    bench_sleep_ms(idle_ms);
    uint64_t cpu1 = bench_self_cpu_usec(), wall1 = bench_now_ns();
    int still = tether_host_get_client_count(host);

    command(&cp, CMD_DROP, 0);
    wait_count(host, 0);
    dispatch_figures none_after = time_dispatch(host, calls, (uint64_t)budget);

    double none_ns =
        none_before.min_ns < none_after.min_ns ? none_before.min_ns : none_after.min_ns;
    double none_median_ns = (none_before.median_ns + none_after.median_ns) / 2;
    long client_rss_kib =
        (long)((r1.rss_kib_after - r1.rss_kib_before) + (r2.rss_kib_after - r2.rss_kib_before));
    printf("{\"bench\": \"bench-host-idle\", \"clients\": %ld, \"budget_usec\": %ld, "
           "\"dispatch\": {\"calls_per_case\": %ld, \"none_ns\": %.2f, \"clients_ns\": %.2f, "
           "\"clients_over_none\": %.3f, \"none_before_ns\": %.2f, \"none_after_ns\": %.2f, "
           "\"none_median_ns\": %.2f, \"clients_median_ns\": %.2f, "
           "\"clients_over_none_median\": %.3f, \"clients_max_ns\": %.2f}, ",
           clients, budget, calls, none_ns, with_clients.min_ns,
           none_ns > 0 ? with_clients.min_ns / none_ns : 0.0, none_before.min_ns, none_after.min_ns,
           none_median_ns, with_clients.median_ns,
           none_median_ns > 0 ? with_clients.median_ns / none_median_ns : 0.0, with_clients.max_ns);
    printf("\"memory\": {\"rss_kib_none\": %ld, \"rss_kib_half\": %ld, \"rss_kib_all\": %ld, "
           "\"pss_kib_none\": %ld, \"pss_kib_all\": %ld, "
           "\"rss_per_client_bytes\": %.0f, \"pss_per_client_bytes\": %.0f, "
           "\"rss_per_client_bytes_half_to_all\": %.0f, "
           "\"clients_process_rss_per_client_bytes\": %.0f}, ",
           mem0.rss_kib, mem_half.rss_kib, mem1.rss_kib, mem0.pss_kib, mem1.pss_kib,
           (double)(mem1.rss_kib - mem0.rss_kib) * 1024 / (double)clients,
           (double)(mem1.pss_kib - mem0.pss_kib) * 1024 / (double)clients,
           (double)(mem1.rss_kib - mem_half.rss_kib) * 1024 / (double)(clients - half),
           (double)client_rss_kib * 1024 / (double)clients);
    printf("\"idle\": {\"ms\": %.0f, \"cpu_usec\": %llu, \"clients_still_connected\": %d, "
           "\"main_fd_readable\": %s}}\n",
           (double)(wall1 - wall0) / 1e6, (unsigned long long)(cpu1 - cpu0), still,
           fd_readable ? "true" : "false");
    fflush(stdout);

    tether_host_stop(host);
    tether_host_unref(host);
    bench_pipes_close_and_wait(&cp, pid);
    bench_tmpdir_remove(dir, path);
    return 0;
}
