/*
 * common: helpers shared by the benchmark programs in bench/ (header only, so each
 * bench/NAME.c stays one executable): the clock, option parsing, per-call time samples
 * with their median and p99, a measured window of completions after a warm-up, a private
 * temporary directory for sockets, a Unix socket listener that a forked server process
 * accepts on, and a forked helper process joined by a pipe each way.
 *
 * A benchmark that includes <tether.h> before this file also gets the helpers of the
 * tether benchmarks (the last section): it defines BENCH_NAME, the "bench" of its JSON
 * error line, before the include.
 *
 * Every benchmark prints exactly one JSON object on one line to stdout; bench/run reads
 * it. Diagnostics go to stderr.
 */
#ifndef TETHER_BENCH_COMMON_H
#define TETHER_BENCH_COMMON_H

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The number of elements of an array. */
#define BENCH_COUNT(a) (sizeof(a) / sizeof((a)[0]))

static inline uint64_t
bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void
bench_die(const char *what, int err)
{
    fprintf(stderr, "%s: %s\n", what, strerror(err));
    printf("{\"error\": \"%s: %s\"}\n", what, strerror(err));
    fflush(stdout);
    exit(1);
}

/* calloc() that ends the benchmark when memory runs out. */
static inline void *
bench_calloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (!p) {
        bench_die("calloc", ENOMEM);
    }
    return p;
}

/* Parse "--name VALUE" options into longs; unknown options are an error. */
typedef struct bench_option {
    const char *name;
    long *value;
    const char *help;
} bench_option;

static inline void
bench_parse_options(int argc, char **argv, const bench_option *options, size_t n)
{
    for (int i = 1; i < argc; i++) {
        size_t j;
        for (j = 0; j < n; j++) {
            if (strcmp(argv[i], options[j].name) == 0 && i + 1 < argc) {
                char *end;
                errno = 0;
                long v = strtol(argv[i + 1], &end, 10);
                if (errno || *end || v < 0) {
                    fprintf(stderr, "%s: bad value '%s'\n", argv[i], argv[i + 1]);
                    exit(2);
                }
                *options[j].value = v;
                i++;
                break;
            }
        }
        if (j == n) {
            fprintf(stderr, "usage: %s [options]\n", argv[0]);
            for (j = 0; j < n; j++) {
                fprintf(stderr, "  %-14s N  %s (default %ld)\n", options[j].name, options[j].help,
                        *options[j].value);
            }
            exit(2);
        }
    }
}

static inline int
bench_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

typedef struct bench_stats {
    double median_usec;
    double p99_usec;
    double mean_usec;
    double min_usec;
    double max_usec;
} bench_stats;

/* Sorts samples (nanoseconds) in place. */
static inline bench_stats
bench_compute_stats(uint64_t *samples, size_t n)
{
    bench_stats s = {0};
    if (n == 0) {
        return s;
    }
    qsort(samples, n, sizeof(samples[0]), bench_cmp_u64);
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        sum += (double)samples[i];
    }
    s.median_usec = (n % 2 ? (double)samples[n / 2]
                           : ((double)samples[n / 2 - 1] + (double)samples[n / 2]) / 2) /
                    1e3;
    size_t p99 = (size_t)((double)(n - 1) * 0.99);
    s.p99_usec = (double)samples[p99] / 1e3;
    s.mean_usec = sum / (double)n / 1e3;
    s.min_usec = (double)samples[0] / 1e3;
    s.max_usec = (double)samples[n - 1] / 1e3;
    return s;
}

static inline void
bench_print_stats(const char *key, const bench_stats *s)
{
    printf("\"%s\": {\"median_usec\": %.3f, \"p99_usec\": %.3f, \"mean_usec\": %.3f, "
           "\"min_usec\": %.3f, \"max_usec\": %.3f}",
           key, s->median_usec, s->p99_usec, s->mean_usec, s->min_usec, s->max_usec);
}

/*
 * Completions counted over a measured window that follows a warm-up: the pipelined
 * benchmarks call bench_window_note() now and then with the completions so far, and
 * stop once it returns true. The count and the time are taken from the first note at or
 * after the end of the warm-up to the last note.
 */
typedef struct bench_window {
    uint64_t warm_end_ns; /* deadline: the end of the warm-up */
    uint64_t end_ns;      /* deadline: the end of the measurement */
    uint64_t start_ns;    /* the first note in the measurement; 0 before it */
    uint64_t last_ns;     /* the last note */
    uint64_t done_at_start;
} bench_window;

static inline bench_window
bench_window_start(long warmup_ms, long ms)
{
    uint64_t warm_end = bench_now_ns() + (uint64_t)warmup_ms * 1000000u;
    return (bench_window){.warm_end_ns = warm_end, .end_ns = warm_end + (uint64_t)ms * 1000000u};
}

/* Record that done completions happened by now; true once the measured time is over. */
static inline bool
bench_window_note(bench_window *w, uint64_t done)
{
    uint64_t now = bench_now_ns();
    w->last_ns = now;
    if (!w->start_ns && now >= w->warm_end_ns) {
        w->start_ns = now;
        w->done_at_start = done;
    }
    return now >= w->end_ns;
}

/* The measured seconds, and the completions counted in them out of done in all. */
static inline double
bench_window_seconds(const bench_window *w)
{
    return (double)(w->last_ns - w->start_ns) / 1e9;
}

static inline uint64_t
bench_window_counted(const bench_window *w, uint64_t done)
{
    return done - w->done_at_start;
}

/* CPU time (user + system, every thread) this process used so far, in microseconds. */
static inline uint64_t
bench_self_cpu_usec(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)ru.ru_utime.tv_sec * 1000000u + (uint64_t)ru.ru_utime.tv_usec +
           (uint64_t)ru.ru_stime.tv_sec * 1000000u + (uint64_t)ru.ru_stime.tv_usec;
}

/* The same for another process, from /proc/PID/stat (in clock ticks: 10 ms on most
 * kernels, so only for spans of a second or more); 0 where unreadable. */
static inline uint64_t
bench_pid_cpu_usec(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) {
        return 0;
    }
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the name may hold spaces */
    unsigned long long utime = 0, stime = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
                     &stime) != 2) {
        return 0;
    }
    long hz = sysconf(_SC_CLK_TCK);
    return hz > 0 ? (utime + stime) * 1000000u / (unsigned long long)hz : 0;
}

/* A private directory for the benchmark's socket; removed by bench_tmpdir_remove(). */
static inline void
bench_tmpdir(char *dir, size_t dir_size, char *sock, size_t sock_size, const char *sock_name)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base || strlen(base) > 60) {
        base = "/tmp";
    }
    snprintf(dir, dir_size, "%s/tether-bench.XXXXXX", base);
    if (!mkdtemp(dir)) {
        bench_die("mkdtemp", errno);
    }
    snprintf(sock, sock_size, "%s/%s", dir, sock_name);
}

/* Remove the directory and the files left in it (sockets, a token file). */
static inline void
bench_tmpdir_remove(const char *dir, const char *sock)
{
    unlink(sock);
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
                char p[512];
                snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
                unlink(p);
            }
        }
        closedir(d);
    }
    rmdir(dir);
}

/* A listening Unix stream socket at path (blocking). */
static inline int
bench_listen(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(addr.sun_path)) {
        bench_die("socket path too long", ENAMETOOLONG);
    }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        bench_die("socket", errno);
    }
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        bench_die("bind", errno);
    }
    if (listen(fd, 16) < 0) {
        bench_die("listen", errno);
    }
    return fd;
}

static inline int
bench_connect(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        bench_die("socket", errno);
    }
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        bench_die("connect", errno);
    }
    return fd;
}

/* Read exactly n bytes: 1 on success, 0 on EOF, -errno on error. */
static inline int
bench_read_full(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r > 0) {
            got += (size_t)r;
        } else if (r == 0) {
            return 0;
        } else if (errno != EINTR) {
            return -errno;
        }
    }
    return 1;
}

/* Write exactly n bytes: 0 on success, -errno on error. */
static inline int
bench_write_full(int fd, const void *buf, size_t n)
{
    size_t put = 0;
    while (put < n) {
        ssize_t r = write(fd, (const char *)buf + put, n - put);
        if (r > 0) {
            put += (size_t)r;
        } else if (r < 0 && errno != EINTR) {
            return -errno;
        }
    }
    return 0;
}

static inline void
bench_ignore_sigpipe(void)
{
    struct sigaction sa = {.sa_handler = SIG_IGN};
    sigaction(SIGPIPE, &sa, NULL);
}

/* Raise the soft limit on open files to the hard limit; returns the new soft limit. */
static inline long
bench_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
        return -1;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    return rl.rlim_cur == RLIM_INFINITY ? 1L << 20 : (long)rl.rlim_cur;
}

/*
 * The calling process's resident memory in KiB: Rss and Pss from
 * /proc/self/smaps_rollup, or VmRSS from /proc/self/status (Pss then equals Rss) on
 * kernels without it. Kernel memory (socket buffers, epoll instances) is not included.
 */
typedef struct bench_mem {
    long rss_kib;
    long pss_kib;
} bench_mem;

static inline bench_mem
bench_read_mem(void)
{
    bench_mem m = {-1, -1};
    char line[256];
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (f) {
        while (fgets(line, sizeof(line), f)) {
            long v;
            if (sscanf(line, "Rss: %ld kB", &v) == 1) {
                m.rss_kib = v;
            } else if (sscanf(line, "Pss: %ld kB", &v) == 1) {
                m.pss_kib = v;
            }
        }
        fclose(f);
    }
    if (m.rss_kib < 0 && (f = fopen("/proc/self/status", "r"))) {
        while (fgets(line, sizeof(line), f)) {
            long v;
            if (sscanf(line, "VmRSS: %ld kB", &v) == 1) {
                m.rss_kib = v;
            }
        }
        fclose(f);
    }
    if (m.pss_kib < 0) {
        m.pss_kib = m.rss_kib;
    }
    return m;
}

/* fork() after flushing stdout (so that nothing buffered is printed twice); ends the
 * benchmark if it fails. */
static inline pid_t
bench_fork(void)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        bench_die("fork", errno);
    }
    return pid;
}

/* One side's ends of the two pipes between a benchmark and a helper process it forked. */
typedef struct bench_pipes {
    int in_fd;  /* reads what the other process writes to its out_fd */
    int out_fd; /* closing it is the other process's EOF (the parent's "stop") */
} bench_pipes;

/*
 * Fork a helper process joined to this one by a pipe each way: returns 0 in the child
 * and the child's pid in the parent, with this side's ends in *ret on both sides (the
 * other ends are closed). Ends the benchmark if pipe() or fork() fails.
 */
static inline pid_t
bench_fork_piped(bench_pipes *ret)
{
    int down[2], up[2];
    if (pipe(down) < 0 || pipe(up) < 0) {
        bench_die("pipe", errno);
    }
    pid_t pid = bench_fork();
    if (pid == 0) {
        close(down[1]);
        close(up[0]);
        *ret = (bench_pipes){.in_fd = down[0], .out_fd = up[1]};
    } else {
        close(down[0]);
        close(up[1]);
        *ret = (bench_pipes){.in_fd = up[0], .out_fd = down[1]};
    }
    return pid;
}

/* Close this side's pipes, so the helper process sees EOF, and wait for it to end;
 * returns its wait status. */
static inline int
bench_pipes_close_and_wait(bench_pipes *p, pid_t pid)
{
    close(p->out_fd);
    close(p->in_fd);
    int status = 0;
    waitpid(pid, &status, 0);
    return status;
}

/* Block until fd has a byte or EOF: a helper process waits for its parent's stop. */
static inline void
bench_wait_for_stop(int fd)
{
    char c;
    while (read(fd, &c, 1) < 0 && errno == EINTR) {
    }
}

/* The body of a forked raw server: accept one connection on lfd, answer each request of
 * req_size bytes with resp_size bytes until EOF, then _exit(); it never returns. */
typedef void (*bench_serve_fn)(int lfd, long req_size, long resp_size);

/*
 * Listen on a Unix socket at path, fork a server process that runs serve on it, and
 * connect to it: returns the connected fd, and the server's pid in *ret_pid (closing the
 * fd ends the server).
 */
static inline int
bench_fork_server(const char *path, bench_serve_fn serve, long req_size, long resp_size,
                  pid_t *ret_pid)
{
    int lfd = bench_listen(path);
    pid_t pid = bench_fork();
    if (pid == 0) {
        serve(lfd, req_size, resp_size);
        _exit(1);
    }
    close(lfd);
    *ret_pid = pid;
    return bench_connect(path);
}

/* Sleep for ms milliseconds, resuming after signals. */
static inline void
bench_sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* ---- the tether benchmarks (<tether.h> included first) ------------------------------- */

#ifdef TETHER_H

#ifndef BENCH_NAME
#error "define BENCH_NAME (the benchmark's name) before including common.h"
#endif

/* Report a failure in the JSON line bench/run reads, with message on stderr; exit 1. */
static inline void
bench_fail_message(const char *message)
{
    fprintf(stderr, "%s\n", message);
    printf("{\"bench\": \"%s\", \"error\": \"%s\"}\n", BENCH_NAME, message);
    fflush(stdout);
    exit(1);
}

/* A tether call that failed with r: the remote error's type and message (err may be
 * NULL) go to stderr only. */
static inline void
bench_fail(const char *what, int r, const tether_error *err)
{
    fprintf(stderr, "%s: %s%s%s%s%s\n", what, tether_strerror(r), err && err->type ? " (" : "",
            err && err->type ? err->type : "", err && err->message ? ": " : "",
            err && err->message ? err->message : "");
    printf("{\"bench\": \"%s\", \"error\": \"%s: %s\"}\n", BENCH_NAME, what, tether_strerror(r));
    fflush(stdout);
    exit(1);
}

/* The service every benchmark host serves: does nothing, so the reply is nil. */
static inline int
bench_noop(tether_request *req, void *userdata)
{
    (void)req;
    (void)userdata;
    return 0;
}

typedef struct bench_service {
    const char *name;
    tether_context context;
} bench_service;

/* Create and start a host serving bench_noop under each of the n names. Returns 0 with
 * the host in *ret_host, or a negative code (no host). */
static inline int
bench_host_start(const tether_host_options *opts, const bench_service *services, size_t n,
                 tether_host **ret_host)
{
    tether_host *host = NULL;
    int r = tether_host_new(opts, &host);
    for (size_t i = 0; r == 0 && i < n; i++) {
        r = tether_host_add_service(host, services[i].name, services[i].context, bench_noop, NULL);
    }
    if (r == 0) {
        r = tether_host_start(host);
    }
    if (r < 0) {
        host = tether_host_unref(host);
    }
    *ret_host = host;
    return r;
}

/*
 * Read a forked host process's start-up report from fd: n ints, the first its outcome (0
 * or a negative code), the rest whatever it adds. Ends the benchmark if the process died
 * or failed to start.
 */
static inline void
bench_host_ready(int fd, int *msg, size_t n)
{
    if (bench_read_full(fd, msg, n * sizeof(msg[0])) <= 0) {
        bench_die("host process died during start-up", ECHILD);
    }
    if (msg[0] < 0) {
        bench_fail("host start-up", msg[0], NULL);
    }
}

/*
 * The body of a forked host process: start a host with its socket at path in the
 * runtime directory dir, write the start-up report to ready_fd, serve until stop_fd
 * reads EOF, then _exit(); it never returns.
 */
typedef void (*bench_host_fn)(const char *dir, const char *path, int ready_fd, int stop_fd);

/*
 * Fork a host process that runs run_host, and wait until it serves: its start-up report
 * (n ints, see bench_host_ready) is read into msg. Returns its pid, with the parent's ends
 * of the pipes in *ret (bench_pipes_close_and_wait() stops it). Call it before any tether
 * object exists, so that the child is forked from a single-threaded process.
 */
static inline pid_t
bench_fork_host(bench_host_fn run_host, const char *dir, const char *path, bench_pipes *ret,
                int *msg, size_t n)
{
    pid_t pid = bench_fork_piped(ret);
    if (pid == 0) {
        run_host(dir, path, ret->out_fd, ret->in_fd);
        _exit(1);
    }
    bench_host_ready(ret->in_fd, msg, n);
    return pid;
}

/* A new client, connected; ends the benchmark if either step fails. */
static inline tether_client *
bench_client_connect(const tether_client_options *opts)
{
    tether_client *client = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_client_new(opts, &client);
    if (r < 0) {
        bench_fail("tether_client_new", r, NULL);
    }
    if ((r = tether_client_connect(client, &err)) < 0) {
        bench_fail("tether_client_connect", r, &err);
    }
    return client;
}

/* The same, for a client named name of the host listening at the Unix socket path. */
static inline tether_client *
bench_client_connect_unix(const char *name, const char *path, const char *dir)
{
    char address[200];
    snprintf(address, sizeof(address), "unix:%s", path);
    tether_client_options opts = {
        .name = name,
        .address = address,
        .runtime_dir = dir,
    };
    return bench_client_connect(&opts);
}

#endif /* TETHER_H */

#endif
