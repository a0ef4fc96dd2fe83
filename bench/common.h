/*
 * common: helpers shared by the benchmark programs in bench/ (header only, so each
 * bench/NAME.c stays one executable): the clock, option parsing, per-call time samples
 * with their median and p99, a private temporary directory for sockets, and a Unix
 * socket listener that a forked server process accepts on.
 *
 * Every benchmark prints exactly one JSON object on one line to stdout; bench/run reads
 * it. Diagnostics go to stderr.
 */
#ifndef TETHER_BENCH_COMMON_H
#define TETHER_BENCH_COMMON_H

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

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

/* Sleep for ms milliseconds, resuming after signals. */
static inline void
bench_sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

#endif
