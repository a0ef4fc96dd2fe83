/*
 * helpers: shared fixtures of the C tests. Each test binary runs each test in its own
 * process (Criterion), so a host started here never outlives its test.
 */
#ifndef TETHER_TEST_HELPERS_H
#define TETHER_TEST_HELPERS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>
#include <dirent.h>
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

static inline tether_host *
test_host_new(tether_host_options *opts)
{
    tether_host_options defaults = {0};
    if (!opts) {
        opts = &defaults;
    }
    opts->runtime_dir = test_runtime_dir();
    if (!opts->log) {
        opts->log = test_log;
        opts->log_level = TETHER_LOG_DEBUG;
    }
    tether_host *h = NULL;
    ASSERT_OK(tether_host_new(opts, &h));
    return h;
}

static inline tether_client *
test_client_new(const char *name, const char *address)
{
    tether_client_options opts = {
        .name = name,
        .address = address,
        .runtime_dir = test_runtime_dir(),
        .log = test_log,
        .log_level = TETHER_LOG_DEBUG,
    };
    tether_client *c = NULL;
    ASSERT_OK(tether_client_new(&opts, &c));
    return c;
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
