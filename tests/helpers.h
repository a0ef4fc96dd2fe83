/*
 * helpers: shared fixtures of the C tests. Each test binary runs each test in its own
 * process (Criterion), so a host started here never outlives its test.
 *
 * Beside this file: raw-peer.h plays a peer over a raw socket (codec/frame.h's frames, no
 * library connection), process-helpers.h forks child processes that talk to the test
 * over pipes.
 */
#ifndef TETHER_TEST_HELPERS_H
#define TETHER_TEST_HELPERS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>
#include <dirent.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tether.h"

#define ASSERT_OK(expr)                                                                        \
    do {                                                                                       \
        int assert_ok_r_ = (expr);                                                             \
        cr_assert(assert_ok_r_ >= 0, "%s failed: %d (%s)", #expr, assert_ok_r_,                \
                  tether_strerror(assert_ok_r_));                                              \
    } while (0)

#define ASSERT_ERR(expr, code)                                                                 \
    do {                                                                                       \
        int assert_err_r_ = (expr);                                                            \
        cr_assert_eq(assert_err_r_, (code), "%s returned %d (%s), expected %d (%s)", #expr,   \
                     assert_err_r_, tether_strerror(assert_err_r_), (code),                    \
                     tether_strerror(code));                                                   \
    } while (0)

/* A fresh private runtime directory for this test process. */
static inline const char *
test_runtime_dir(void)
{
    static char dir[256];
    if (!dir[0]) {
        snprintf(dir, sizeof(dir), "/tmp/tether-test-%d-XXXXXX", (int)getpid());
        cr_assert(mkdtemp(dir) != NULL);
        chmod(dir, 0700);
        setenv("TETHER_RUNTIME_DIR", dir, 1);
    }
    return dir;
}

static inline void
test_log(void *userdata, int level, const char *message)
{
    (void)userdata;
    if (getenv("TETHER_TEST_VERBOSE")) {
        fprintf(stderr, "[%d] %s\n", level, message);
    }
}

/* A host (not started) with the test's runtime directory unless opts names one, and the
 * test log unless opts has a log. */
static inline tether_host *
test_host_new(tether_host_options *opts)
{
    tether_host_options defaults = {0};
    if (!opts) {
        opts = &defaults;
    }
    if (!opts->runtime_dir) {
        opts->runtime_dir = test_runtime_dir();
    }
    if (!opts->log) {
        opts->log = test_log;
        opts->log_level = TETHER_LOG_DEBUG;
    }
    tether_host *h = NULL;
    ASSERT_OK(tether_host_new(opts, &h));
    return h;
}

/* A client (not connected) with these options and the test log unless o has a log. */
static inline tether_client *
test_client_new_with(tether_client_options *o)
{
    if (!o->log) {
        o->log = test_log;
        o->log_level = TETHER_LOG_DEBUG;
    }
    tether_client *c = NULL;
    ASSERT_OK(tether_client_new(o, &c));
    return c;
}

static inline tether_client *
test_client_new(const char *name, const char *address)
{
    tether_client_options opts = {
        .name = name,
        .address = address,
        .runtime_dir = test_runtime_dir(),
    };
    return test_client_new_with(&opts);
}

static inline tether_client *
test_client_connect(const char *name, const char *address)
{
    tether_client *c = test_client_new(name, address);
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_client_connect(c, &err);
    cr_assert(r >= 0, "connect failed: %s: %s", tether_strerror(r),
              err.message ? err.message : "");
    tether_error_done(&err);
    return c;
}

/* Wait (up to timeout_ms, in 10 ms steps) until the host counts expected clients. */
static inline void
test_wait_client_count(tether_host *h, int expected, int timeout_ms)
{
    for (int i = 0; i < timeout_ms / 10 && tether_host_get_client_count(h) != expected; i++) {
        usleep(10000);
    }
    cr_assert_eq(tether_host_get_client_count(h), expected);
}

/* Whether fd is readable now (a host's or client's main-thread fd: work is queued). */
static inline int
test_fd_readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 1;
}

/* ---- services several tests serve ------------------------------------------------------- */

/* "add": two integers, answers their sum. */
static inline int
test_add_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    int64_t a, b;
    int r = tether_request_read(req, "xx", &a, &b);
    if (r < 0) {
        return r;
    }
    return tether_request_reply(req, "x", a + b);
}

/* "echo": one integer, answered as it came. */
static inline int
test_echo_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    int64_t v;
    int r = tether_request_read(req, "x", &v);
    if (r < 0) {
        return r;
    }
    return tether_request_reply(req, "x", v);
}

/* Call "echo" with v on conn: it succeeds and answers v. */
static inline void
test_assert_echo(tether_conn *conn, int64_t v)
{
    tether_value *res = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_conn_call(conn, "echo", NULL, &res, &err, "x", v);
    cr_assert(r == 0, "echo %lld: %s: %s", (long long)v, tether_strerror(r),
              err.message ? err.message : "");
    int64_t got = -1;
    ASSERT_OK(tether_value_read(res, NULL, "x", &got));
    cr_assert_eq(got, v, "echo %lld answered %lld", (long long)v, (long long)got);
    tether_value_unref(res);
}

static inline int
count_open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    while ((e = readdir(d))) {
        n += e->d_name[0] != '.';
    }
    closedir(d);
    return n - 1;
}

#endif
