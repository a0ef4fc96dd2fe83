/*
 * Transports and addressing, host and client in one process: loopback TCP guarded by
 * the token file, Unix sockets named after their host in the runtime directory, the
 * ways a client finds its host (option, $TETHER_ADDRESS, the "default" host), what an
 * unusable address or runtime directory gives, socket files over a host's life, and an
 * inherited socket pair that needs no address and no token.
 *
 * Raw sockets play a client that skips the library where the test needs to see the
 * bytes the host sends (a refusal); everything else goes through the public API.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/wait.h>

#include "raw-peer.h"
#include "rpc/endpoint.h"

/* ---- services ------------------------------------------------------------------------ */

static int
echo_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    const char *s = NULL;
    int r = tether_request_read(req, "s", &s);
    if (r < 0) {
        return r;
    }
    return tether_request_reply(req, "s", s);
}

/* ---- fixtures -------------------------------------------------------------------------- */

static tether_host *
start_host(tether_host_options *opts)
{
    tether_host *h = test_host_new(opts);
    ASSERT_OK(tether_host_add_service(h, "add", TETHER_CONTEXT_IO, test_add_handler, NULL));
    ASSERT_OK(tether_host_start(h));
    return h;
}

static tether_host *
start_named_host(const char *name)
{
    tether_host_options o = {.name = name};
    return start_host(&o);
}

/* The client reaches the host and gets a correct answer. */
static void
assert_calls(tether_client *c)
{
    tether_value *v = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_conn_call(tether_client_get_conn(c), "add", NULL, &v, &err, "ii", 20, 22);
    cr_assert(r == 0, "call failed: %s: %s", tether_strerror(r), err.message ? err.message : "");
    int64_t sum = 0;
    ASSERT_OK(tether_value_read(v, NULL, "x", &sum));
    cr_assert_eq(sum, 42);
    tether_value_unref(v);
}

/* Connecting c fails with code, and the error message names needle. */
static void
assert_connect_fails(tether_client *c, int code, const char *needle)
{
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_client_connect(c, &err), code);
    cr_assert(err.message && strstr(err.message, needle), "message: %s",
              err.message ? err.message : "(none)");
    tether_error_done(&err);
}

/* A fresh, empty, private directory outside the test's runtime directory. */
static char *
private_temp_dir(void)
{
    char *dir = strdup("/tmp/tether-xt-XXXXXX");
    cr_assert(dir && mkdtemp(dir) != NULL);
    cr_assert(chmod(dir, 0700) == 0);
    return dir;
}

static char *
path_in_runtime_dir(const char *file)
{
    char *p = NULL;
    cr_assert(asprintf(&p, "%s/%s", test_runtime_dir(), file) > 0);
    return p;
}

static bool
file_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Read a whole small file into buf (NUL-terminated); returns its size. */
static size_t
read_small_file(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert(fd >= 0, "cannot open %s: %s", path, strerror(errno));
    size_t got = 0;
    ssize_t n;
    while (got < cap - 1 && (n = read(fd, buf + got, cap - 1 - got)) > 0) {
        got += (size_t)n;
    }
    close(fd);
    buf[got] = '\0';
    return got;
}

/* Leave a Unix socket file behind with nobody listening, as a killed host does. */
static void
make_stale_socket(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path, sizeof(un.sun_path), "%s", path);
    cr_assert(bind(fd, (struct sockaddr *)&un, sizeof(un)) == 0, "bind %s: %s", path,
              strerror(errno));
    close(fd);
    struct stat st;
    cr_assert(lstat(path, &st) == 0 && S_ISSOCK(st.st_mode));
}

/*
 * Addresses of the TCP sockets listening on port, from /proc/net/tcp (IPv4, network
 * byte order as the kernel prints it). Returns how many were found.
 */
static int
tcp_listeners_on(int port, uint32_t *addrs, int cap)
{
    FILE *f = fopen("/proc/net/tcp", "r");
    cr_assert(f != NULL, "cannot read /proc/net/tcp");
    char line[512];
    int n = 0;
    cr_assert(fgets(line, sizeof(line), f) != NULL); /* header */
    while (fgets(line, sizeof(line), f)) {
        unsigned addr, lport, state;
        if (sscanf(line, " %*d: %8X:%X %*X:%*X %X", &addr, &lport, &state) == 3 &&
            (int)lport == port && state == 0x0A && n < cap) {
            addrs[n++] = addr;
        }
    }
    fclose(f);
    return n;
}

/* ---- TCP ---------------------------------------------------------------------------------- */

static tether_host *
start_tcp_host(void)
{
    tether_host_options o = {.name = "tcphost", .tcp = true, .tcp_port = TETHER_PORT_EPHEMERAL};
    return start_host(&o);
}

static char *
tcp_address(tether_host *h)
{
    char *a = NULL;
    cr_assert(asprintf(&a, "tcp:127.0.0.1:%d", tether_host_get_tcp_port(h)) > 0);
    return a;
}

Test(tcp, listens_on_loopback_with_a_private_token_file)
{
    tether_host *h = start_tcp_host();
    int port = tether_host_get_tcp_port(h);
    cr_assert(port > 0 && port <= 65535, "port %d", port);
    cr_assert_neq(port, TETHER_DEFAULT_TCP_PORT);

    uint32_t addrs[8];
    int n = tcp_listeners_on(port, addrs, 8);
    cr_assert_eq(n, 1, "%d listeners on port %d", n, port);
    cr_assert_eq(addrs[0], htonl(INADDR_LOOPBACK), "listening on %08x, not 127.0.0.1", addrs[0]);

    const char *token_path = tether_host_get_token_path(h);
    cr_assert(token_path != NULL);
    char *dir = strdup(token_path);
    char *slash = strrchr(dir, '/');
    cr_assert(slash != NULL);
    *slash = '\0';
    char real_dir[PATH_MAX], real_rt[PATH_MAX];
    cr_assert(realpath(dir, real_dir) && realpath(test_runtime_dir(), real_rt));
    cr_assert_str_eq(real_dir, real_rt, "token file %s is not in the runtime directory",
                     token_path);
    free(dir);

    struct stat st;
    cr_assert(lstat(token_path, &st) == 0, "%s: %s", token_path, strerror(errno));
    cr_assert(S_ISREG(st.st_mode));
    cr_assert_eq(st.st_mode & 07777, 0600, "token file mode %o", st.st_mode & 07777);
    cr_assert_eq(st.st_uid, geteuid());

    char token[256];
    size_t len = read_small_file(token_path, token, sizeof(token));
    cr_assert_eq(len, 64, "token of %zu bytes", len);
    for (size_t i = 0; i < len; i++) {
        cr_assert(isxdigit((unsigned char)token[i]), "token byte %zu is '%c'", i, token[i]);
    }
    tether_host_unref(h);
}

Test(tcp, client_reads_the_token_file_itself)
{
    tether_host *h = start_tcp_host();
    char *address = tcp_address(h);
    tether_client *c = test_client_connect("tcpclient", address);
    assert_calls(c);
    cr_assert_str_eq(tether_client_get_host_name(c), "tcphost");
    /* The host sees it like any other client. */
    tether_conn *conn = NULL;
    ASSERT_OK(tether_host_get_client(h, "tcpclient", &conn));
    cr_assert_eq(tether_conn_get_peer_pid(conn), getpid());
    tether_conn_unref(conn);
    tether_client_unref(c);
    free(address);
    tether_host_unref(h);
}

Test(tcp, wrong_token_is_refused_with_the_host_reason)
{
    tether_host *h = start_tcp_host();
    char *address = tcp_address(h);
    tether_client_options o = {
        .name = "intruder",
        .address = address,
        .token = "0000000000000000000000000000000000000000000000000000000000000000",
        .runtime_dir = test_runtime_dir(),
    };
    tether_client *c = test_client_new_with(&o);
    assert_connect_fails(c, TETHER_EACCES, "wrong token");
    cr_assert_eq(tether_host_get_client_count(h), 0);
    tether_client_unref(c);
    free(address);
    tether_host_unref(h);
}

Test(tcp, token_from_the_environment)
{
    tether_host *h = start_tcp_host();
    char *address = tcp_address(h);
    char token[256];
    read_small_file(tether_host_get_token_path(h), token, sizeof(token));

    /* No token file where this client looks: $TETHER_TOKEN alone lets it in. */
    char *empty = private_temp_dir();
    cr_assert(setenv("TETHER_TOKEN", token, 1) == 0);
    tether_client_options o = {.name = "envtoken", .address = address, .runtime_dir = empty};
    tether_client *c = test_client_new_with(&o);
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_client_connect(c, &err);
    cr_assert(r == 0, "connect: %s: %s", tether_strerror(r), err.message ? err.message : "");
    assert_calls(c);
    tether_client_unref(c);

    /* $TETHER_TOKEN is preferred over the token file. */
    cr_assert(setenv("TETHER_TOKEN", "not-the-token", 1) == 0);
    tether_client_options o2 = {.name = "badenv",
                                .address = address,
                                .runtime_dir = test_runtime_dir()};
    c = test_client_new_with(&o2);
    ASSERT_ERR(tether_client_connect(c, &err), TETHER_EACCES);
    tether_error_done(&err);
    tether_client_unref(c);

    /* And the token option over $TETHER_TOKEN. */
    tether_client_options o3 = {.name = "opt",
                                .address = address,
                                .token = token,
                                .runtime_dir = empty};
    c = test_client_new_with(&o3);
    ASSERT_OK(tether_client_connect(c, NULL));
    assert_calls(c);
    tether_client_unref(c);

    unsetenv("TETHER_TOKEN");
    rmdir(empty);
    free(empty);
    free(address);
    tether_host_unref(h);
}

Test(tcp, client_without_a_token_file_is_refused)
{
    tether_host *h = start_tcp_host();
    char *address = tcp_address(h);
    char *empty = private_temp_dir();
    tether_client_options o = {.name = "stranger", .address = address, .runtime_dir = empty};
    tether_client *c = test_client_new_with(&o);
    assert_connect_fails(c, TETHER_EACCES, "token");
    tether_client_unref(c);
    rmdir(empty);
    free(empty);
    free(address);
    tether_host_unref(h);
}

Test(tcp, raw_hello_without_a_token_gets_a_refusal)
{
    tether_host *h = start_tcp_host();
    int fd = raw_tcp_connect(tether_host_get_tcp_port(h));
    raw_hello(fd, TETHER__PROTOCOL_MIN_VERSION, TETHER__PROTOCOL_VERSION, NULL);
    tether__frame f;
    uint8_t buf[4096];
    cr_assert_eq(raw_read_frame(fd, &f, buf, sizeof(buf)), TETHER__REFUSE);
    cr_assert(f.method.len == 5 && memcmp(f.method.ptr, "token", 5) == 0, "code '%.*s'",
              (int)f.method.len, (const char *)f.method.ptr);
    cr_assert(f.text.len > 0, "a refusal says why");
    raw_expect_close(fd);
    close(fd);
    cr_assert_eq(tether_host_get_client_count(h), 0);
    tether_host_unref(h);
}

Test(tcp, default_port)
{
    /* Only meaningful where nothing else holds 18861; bind as the host would to check. */
    int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(probe >= 0);
    int one = 1;
    setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(TETHER_DEFAULT_TCP_PORT)};
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int busy = bind(probe, (struct sockaddr *)&in, sizeof(in)) < 0;
    close(probe);
    if (busy) {
        cr_skip_test("port %d is busy on this machine", TETHER_DEFAULT_TCP_PORT);
    }
    tether_host_options o = {.name = "porthost", .tcp = true, .tcp_port = 0};
    tether_host *h = test_host_new(&o);
    ASSERT_OK(tether_host_add_service(h, "add", TETHER_CONTEXT_IO, test_add_handler, NULL));
    int r = tether_host_start(h);
    if (r == -EADDRINUSE) {
        /* Taken between the probe and the start by another program. */
        tether_host_unref(h);
        cr_skip_test("port %d became busy", TETHER_DEFAULT_TCP_PORT);
    }
    ASSERT_OK(r);
    cr_assert_eq(tether_host_get_tcp_port(h), TETHER_DEFAULT_TCP_PORT);
    tether_client *c = test_client_connect("porttest", "tcp:localhost:18861");
    assert_calls(c);
    tether_client_unref(c);
    tether_host_unref(h);
}

Test(tcp, no_tcp_listener_without_the_option)
{
    tether_host *h = start_named_host("unixonly");
    ASSERT_ERR(tether_host_get_tcp_port(h), TETHER_ENOTCONN);
    cr_assert_null(tether_host_get_token_path(h));
    tether_host_unref(h);
}

Test(tcp, remote_bind_needs_allow_remote)
{
    tether_host_options o = {.name = "remote",
                             .tcp = true,
                             .tcp_port = TETHER_PORT_EPHEMERAL,
                             .tcp_bind = "0.0.0.0"};
    tether_host *h = test_host_new(&o);
    ASSERT_ERR(tether_host_start(h), TETHER_EINVAL);
    /* A host that failed to start serves nothing, on any transport. */
    char *sock = path_in_runtime_dir("remote.sock");
    cr_assert_not(file_exists(sock), "%s exists after a failed start", sock);
    free(sock);
    ASSERT_ERR(tether_host_get_tcp_port(h), TETHER_ENOTCONN);
    tether_host_unref(h);
}

Test(tcp, failed_start_leaves_nothing_listening)
{
    /* Hold a TCP port so that the host's TCP listener fails after its Unix one is made. */
    int busy = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in in = {.sin_family = AF_INET};
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(in);
    cr_assert(bind(busy, (struct sockaddr *)&in, sizeof(in)) == 0 && listen(busy, 1) == 0);
    cr_assert(getsockname(busy, (struct sockaddr *)&in, &len) == 0);
    tether_host_options o = {.name = "halfway", .tcp = true, .tcp_port = ntohs(in.sin_port)};
    tether_host *h = test_host_new(&o);
    ASSERT_ERR(tether_host_start(h), -EADDRINUSE);

    /* The host is not serving, so nothing may accept connections in its name: a client
     * must be told at once that nobody is there, not wait for a welcome that never comes,
     * and the name must be free for another host. */
    tether_client_options co = {.name = "c",
                                .address = "halfway",
                                .runtime_dir = test_runtime_dir(),
                                .connect_timeout_usec = 500000};
    tether_client *c = test_client_new_with(&co);
    int r = tether_client_connect(c, NULL);
    tether_client_unref(c);
    tether_host *other = test_host_new(&(tether_host_options){.name = "halfway"});
    int r2 = tether_host_start(other);
    tether_host_unref(other);
    close(busy);
    /* With the port free again, the same host may try again. */
    ASSERT_OK(tether_host_add_service(h, "add", TETHER_CONTEXT_IO, test_add_handler, NULL));
    int r3 = tether_host_start(h);
    if (r3 == 0) {
        cr_assert_eq(tether_host_get_tcp_port(h), ntohs(in.sin_port));
        char *address = tcp_address(h);
        tether_client *tc = test_client_connect("retry", address);
        assert_calls(tc);
        tether_client_unref(tc);
        free(address);
    }
    tether_host_unref(h);
    cr_assert(r == TETHER_ECONNREFUSED || r == -ENOENT,
              "a client of a host that failed to start got %d (%s)", r, tether_strerror(r));
    cr_assert(r2 == 0, "another host cannot take the name: %d (%s)", r2, tether_strerror(r2));
    cr_assert(r3 == 0, "a second start after a failed one: %d (%s)", r3, tether_strerror(r3));
}

/* ---- Unix sockets and addresses -------------------------------------------------------- */

Test(unix_socket, socket_in_the_runtime_dir_named_after_the_host)
{
    tether_host *h = start_named_host("myhost");
    char *path = path_in_runtime_dir("myhost.sock");
    struct stat st;
    cr_assert(lstat(path, &st) == 0, "%s: %s", path, strerror(errno));
    cr_assert(S_ISSOCK(st.st_mode));
    char *expected = NULL;
    cr_assert(asprintf(&expected, "unix:%s", path) > 0);
    cr_assert_str_eq(tether_host_get_address(h), expected);
    free(expected);
    free(path);
    tether_host_unref(h);
}

Test(unix_socket, client_connects_by_host_name)
{
    tether_host *h = start_named_host("myhost");
    tether_host *other = start_named_host("other");
    tether_client *c = test_client_connect("byname", "myhost");
    assert_calls(c);
    cr_assert_str_eq(tether_client_get_host_name(c), "myhost");
    tether_client_unref(c);
    c = test_client_connect("byname", "other");
    cr_assert_str_eq(tether_client_get_host_name(c), "other");
    tether_client_unref(c);
    tether_host_unref(other);
    tether_host_unref(h);
}

Test(unix_socket, client_connects_by_tether_address)
{
    tether_host *h = start_named_host("myhost");
    tether_host *d = start_named_host(NULL);

    cr_assert(setenv("TETHER_ADDRESS", tether_host_get_address(h), 1) == 0);
    tether_client *c = test_client_connect("byenv", NULL);
    assert_calls(c);
    cr_assert_str_eq(tether_client_get_host_name(c), "myhost");
    tether_client_unref(c);

    cr_assert(setenv("TETHER_ADDRESS", "myhost", 1) == 0);
    c = test_client_connect("byenvname", NULL);
    cr_assert_str_eq(tether_client_get_host_name(c), "myhost");
    tether_client_unref(c);

    /* The address option wins over the environment. */
    c = test_client_connect("byoption", "default");
    cr_assert_str_eq(tether_client_get_host_name(c), "default");
    tether_client_unref(c);

    unsetenv("TETHER_ADDRESS");
    tether_host_unref(d);
    tether_host_unref(h);
}

Test(unix_socket, no_address_means_the_default_host)
{
    unsetenv("TETHER_ADDRESS");
    tether_host *other = start_named_host("notdefault");
    tether_host *h = start_named_host(NULL);
    char *path = path_in_runtime_dir("default.sock");
    cr_assert(file_exists(path));
    free(path);
    tether_client *c = test_client_connect("plain", NULL);
    assert_calls(c);
    cr_assert_str_eq(tether_client_get_host_name(c), "default");
    tether_client_unref(c);
    tether_host_unref(h);
    tether_host_unref(other);
}

static void
assert_resolves(const char *address, const char *runtime_dir, const char *expected)
{
    char *got = NULL;
    int r = tether_resolve_address(address, runtime_dir, &got);
    cr_assert(r == 0, "resolve '%s': %s", address ? address : "(null)", tether_strerror(r));
    cr_assert_str_eq(got, expected, "resolve '%s'", address ? address : "(null)");
    free(got);
}

Test(unix_socket, resolve_address)
{
    unsetenv("TETHER_ADDRESS");
    const char *rt = test_runtime_dir();
    tether_host *h = start_named_host("myhost");
    /* What a client would resolve is where the host listens. */
    assert_resolves("myhost", rt, tether_host_get_address(h));
    assert_resolves("myhost", NULL, tether_host_get_address(h)); /* $TETHER_RUNTIME_DIR */

    char *expected = NULL;
    cr_assert(asprintf(&expected, "unix:%s/default.sock", rt) > 0);
    assert_resolves(NULL, rt, expected);
    assert_resolves("", rt, expected);
    free(expected);

    cr_assert(setenv("TETHER_ADDRESS", "myhost", 1) == 0);
    assert_resolves(NULL, rt, tether_host_get_address(h));
    cr_assert(setenv("TETHER_ADDRESS", "unix:/somewhere/else.sock", 1) == 0);
    assert_resolves(NULL, rt, "unix:/somewhere/else.sock");
    unsetenv("TETHER_ADDRESS");

    /* An explicit runtime directory is where the name is looked up. */
    assert_resolves("myhost", "/var/empty/x", "unix:/var/empty/x/myhost.sock");

    assert_resolves("unix:/tmp/a.sock", rt, "unix:/tmp/a.sock");
    assert_resolves("tcp:127.0.0.1:18861", rt, "tcp:127.0.0.1:18861");
    assert_resolves("tcp:localhost:4000", rt, "tcp:127.0.0.1:4000");
    tether_host_unref(h);
}

Test(unix_socket, unparsable_addresses)
{
    static const char *const bad[] = {
        "bogus:",  "tcp:nohost",       "tcp:127.0.0.1:99999", "../x",  "tcp:127.0.0.1:",
        "tcp::80", "tcp:127.0.0.1:-1", "tcp:127.0.0.1:80x",   "unix:", "a/b",
        ".hidden",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *got = NULL;
        int r = tether_resolve_address(bad[i], test_runtime_dir(), &got);
        cr_assert_eq(r, TETHER_EINVAL, "resolve '%s' gave %d (%s) %s", bad[i], r,
                     tether_strerror(r), got ? got : "");
        cr_assert_null(got);

        tether_client *c = test_client_new("bad", bad[i]);
        tether_error err = TETHER_ERROR_INIT;
        r = tether_client_connect(c, &err);
        cr_assert_eq(r, TETHER_EINVAL, "connect '%s' gave %d (%s)", bad[i], r, tether_strerror(r));
        cr_assert(err.message && strstr(err.message, bad[i]), "message for '%s': %s", bad[i],
                  err.message ? err.message : "(none)");
        tether_error_done(&err);
        tether_client_unref(c);
    }
}

Test(unix_socket, nothing_listening)
{
    /* No socket file at all. */
    char *path = path_in_runtime_dir("nobody.sock");
    tether_client *c = test_client_new("lonely", "nobody");
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_client_connect(c, &err);
    cr_assert(r == TETHER_ECONNREFUSED || r == -ENOENT, "%d (%s)", r, tether_strerror(r));
    cr_assert(err.message && strstr(err.message, path), "message: %s",
              err.message ? err.message : "(none)");
    tether_error_done(&err);
    tether_client_unref(c);
    free(path);

    /* A socket file nobody accepts on. */
    path = path_in_runtime_dir("dead.sock");
    make_stale_socket(path);
    c = test_client_new("lonely", "dead");
    assert_connect_fails(c, TETHER_ECONNREFUSED, path);
    tether_client_unref(c);
    unlink(path);
    free(path);

    /* A TCP port bound by nobody that listens. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in in = {.sin_family = AF_INET};
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(in);
    cr_assert(bind(fd, (struct sockaddr *)&in, sizeof(in)) == 0);
    cr_assert(getsockname(fd, (struct sockaddr *)&in, &len) == 0);
    char *address = NULL;
    cr_assert(asprintf(&address, "tcp:127.0.0.1:%d", ntohs(in.sin_port)) > 0);
    c = test_client_new("lonely", address);
    assert_connect_fails(c, TETHER_ECONNREFUSED, address);
    tether_client_unref(c);
    close(fd);
    free(address);
}

/* ---- socket files over a host's life ------------------------------------------------- */

Test(lifecycle, second_host_with_the_same_name)
{
    tether_host *first = start_named_host("single");
    tether_host_options o = {.name = "single"};
    tether_host *second = test_host_new(&o);
    ASSERT_ERR(tether_host_start(second), -EADDRINUSE);
    tether_host_unref(second);
    /* The failed host took nothing from the live one. */
    char *path = path_in_runtime_dir("single.sock");
    cr_assert(file_exists(path), "the live host's socket was removed");
    free(path);
    tether_client *c = test_client_connect("c", "single");
    assert_calls(c);
    tether_client_unref(c);
    tether_host_unref(first);
}

Test(lifecycle, stale_socket_file_is_replaced)
{
    char *path = path_in_runtime_dir("phoenix.sock");
    make_stale_socket(path);
    tether_host *h = start_named_host("phoenix");
    tether_client *c = test_client_connect("c", "phoenix");
    assert_calls(c);
    tether_client_unref(c);
    tether_host_unref(h);
    cr_assert_not(file_exists(path));
    free(path);
}

Test(lifecycle, a_regular_file_is_not_taken_for_a_stale_socket)
{
    /* Only a socket nobody accepts on is a dead host's leftover, ours to replace; a
     * unix_path that names some other file by mistake must not cost the user that file. */
    char *dir = private_temp_dir();
    char *path = NULL;
    cr_assert(asprintf(&path, "%s/notes.txt", dir) > 0);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    cr_assert(fd >= 0);
    cr_assert(write(fd, "data", 4) == 4);
    close(fd);
    tether_host_options o = {.name = "careless", .unix_path = path};
    tether_host *h = test_host_new(&o);
    int r = tether_host_start(h);
    struct stat st;
    bool kept = lstat(path, &st) == 0 && S_ISREG(st.st_mode);
    tether_host_unref(h);
    unlink(path);
    rmdir(dir);
    free(path);
    free(dir);
    cr_assert(r < 0, "a host started over a regular file named by unix_path (and %s it)",
              kept ? "kept" : "deleted");
    cr_assert(kept, "the file was removed");
}

Test(lifecycle, stop_removes_socket_and_token_files)
{
    tether_host_options o = {.name = "tidy", .tcp = true, .tcp_port = TETHER_PORT_EPHEMERAL};
    tether_host *h = start_host(&o);
    char *sock = path_in_runtime_dir("tidy.sock");
    char *token = strdup(tether_host_get_token_path(h));
    cr_assert(file_exists(sock) && file_exists(token));
    tether_client *c = test_client_connect("c", "tidy");
    ASSERT_OK(tether_host_stop(h));
    cr_assert_not(file_exists(sock), "%s left behind", sock);
    cr_assert_not(file_exists(token), "%s left behind", token);
    ASSERT_ERR(tether_host_stop(h), TETHER_EALREADY);
    /* The client's connection went with it. */
    for (int i = 0; i < 100 && tether_conn_is_connected(tether_client_get_conn(c)); i++) {
        usleep(10000);
    }
    cr_assert_eq(tether_conn_is_connected(tether_client_get_conn(c)), 0);
    tether_client_unref(c);
    c = test_client_new("late", "tidy");
    int r = tether_client_connect(c, NULL);
    cr_assert(r == -ENOENT || r == TETHER_ECONNREFUSED, "%d (%s)", r, tether_strerror(r));
    tether_client_unref(c);
    tether_host_unref(h);
    free(token);
    free(sock);
}

/* ---- host files ------------------------------------------------------------------------ */

/* Write a file by hand, as another implementation of the format would. */
static void
write_text_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    cr_assert(fd >= 0, "cannot create %s: %s", path, strerror(errno));
    cr_assert(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
}

/* Whether the runtime directory holds a file whose name starts with prefix. */
static bool
runtime_dir_has_prefix(const char *prefix)
{
    DIR *d = opendir(test_runtime_dir());
    cr_assert(d != NULL);
    bool found = false;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        found |= strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    }
    closedir(d);
    return found;
}

Test(host_file, describes_the_host_while_it_runs)
{
    tether_host_options o = {.name = "described", .tcp = true, .tcp_port = TETHER_PORT_EPHEMERAL};
    tether_host *h = start_host(&o);
    char *path = path_in_runtime_dir("described.host");
    char text[2048], *expected = NULL;
    read_small_file(path, text, sizeof(text));
    cr_assert(
        asprintf(&expected,
                 "tether-host 1\nname described\npid %d\nversions 1 %u\nunix %s/described.sock\n"
                 "tcp 127.0.0.1:%d\ntoken %s\n",
                 (int)getpid(), tether__protocol_version(), test_runtime_dir(),
                 tether_host_get_tcp_port(h), tether_host_get_token_path(h)) > 0);
    cr_assert_str_eq(text, expected);
    struct stat st;
    cr_assert(lstat(path, &st) == 0 && S_ISREG(st.st_mode));
    cr_assert_eq(st.st_mode & 07777, 0600);
    /* Written through a temporary file renamed over it: none is left behind. */
    cr_assert_not(runtime_dir_has_prefix("described.host."));
    ASSERT_OK(tether_host_stop(h));
    cr_assert_not(file_exists(path), "%s left behind", path);
    tether_host_unref(h);
    free(expected);
    free(path);
}

Test(host_file, a_tcp_only_host_is_found_by_name)
{
    unsetenv("TETHER_ADDRESS");
    tether_host_options o = {.name = "tcponly",
                             .no_unix = true,
                             .tcp = true,
                             .tcp_port = TETHER_PORT_EPHEMERAL};
    tether_host *h = start_host(&o);
    char *expected = NULL;
    cr_assert(asprintf(&expected, "tcp:127.0.0.1:%d", tether_host_get_tcp_port(h)) > 0);
    assert_resolves("tcponly", test_runtime_dir(), expected);
    tether_client *c = test_client_connect("c", "tcponly");
    assert_calls(c);
    tether_client_unref(c);
    tether_host_unref(h);
    /* Gone with the host: the name means its socket again, where nobody listens. */
    char *sock = NULL;
    cr_assert(asprintf(&sock, "unix:%s/tcponly.sock", test_runtime_dir()) > 0);
    assert_resolves("tcponly", test_runtime_dir(), sock);
    free(sock);
    free(expected);
}

/* The file is all a client needs: a host of another name, described by a file written by
 * hand whose token file is not the runtime directory's tcp-PORT.token (removed here). */
Test(host_file, a_client_uses_the_files_token_path)
{
    tether_host_options o = {.name = "real",
                             .no_unix = true,
                             .tcp = true,
                             .tcp_port = TETHER_PORT_EPHEMERAL};
    tether_host *h = start_host(&o);
    char token[128];
    read_small_file(tether_host_get_token_path(h), token, sizeof(token));
    char *moved = path_in_runtime_dir("moved-token");
    write_text_file(moved, token);
    cr_assert(unlink(tether_host_get_token_path(h)) == 0);
    char *path = path_in_runtime_dir("alias.host"), *text = NULL;
    cr_assert(asprintf(&text,
                       "tether-host 1\nname alias\npid %d\nversions 1 1\nfuture-key ignored\n"
                       "tcp 127.0.0.1:%d\ntoken %s\n",
                       (int)getpid(), tether_host_get_tcp_port(h), moved) > 0);
    write_text_file(path, text);
    tether_client *c = test_client_connect("c", "alias");
    assert_calls(c);
    cr_assert_str_eq(tether_client_get_host_name(c), "real");
    tether_client_unref(c);
    tether_host_unref(h);
    unlink(path);
    unlink(moved);
    free(text);
    free(path);
    free(moved);
}

/* A file naming a process that ended (a host killed before it could remove it), or one
 * that is not in the format, is not followed: the name means NAME.sock, as without one. */
Test(host_file, stale_or_foreign_files_are_not_followed)
{
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        _exit(0);
    }
    int status;
    cr_assert(waitpid(pid, &status, 0) == pid);
    const char *files[][2] = {
        {"ghost.host", "tether-host 1\nname ghost\npid %d\nversions 1 1\ntcp 127.0.0.1:1\n"
                       "token /nonexistent\n"},
        {"junk.host", "something else entirely %d\n"},
        {"later.host", "tether-host 2\nname later\npid %d\nversions 1 1\ntcp 127.0.0.1:1\n"
                       "token /nonexistent\n"},
        {"notcp.host", "tether-host 1\nname notcp\npid %d\nversions 1 1\n"},
    };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char *path = path_in_runtime_dir(files[i][0]), *text = NULL, *sock = NULL;
        /* The stale one names the dead child; the others our own, live pid. */
        cr_assert(asprintf(&text, files[i][1], i == 0 ? (int)pid : (int)getpid()) > 0);
        write_text_file(path, text);
        char name[32];
        snprintf(name, sizeof(name), "%.*s", (int)(strlen(files[i][0]) - 5), files[i][0]);
        cr_assert(asprintf(&sock, "unix:%s/%s.sock", test_runtime_dir(), name) > 0);
        assert_resolves(name, test_runtime_dir(), sock);
        tether_client *c = test_client_new("c", name);
        ASSERT_ERR(tether_client_connect(c, NULL), -ENOENT);
        tether_client_unref(c);
        unlink(path);
        free(sock);
        free(text);
        free(path);
    }
}

/* Two hosts of one name (possible when at most one has a Unix socket): the file describes
 * the one that started last, and the other's stop leaves it in place. */
Test(host_file, a_host_removes_only_its_own_file)
{
    tether_host_options o = {.name = "shared",
                             .no_unix = true,
                             .tcp = true,
                             .tcp_port = TETHER_PORT_EPHEMERAL};
    tether_host *first = start_host(&o);
    tether_host_options o2 = o;
    tether_host *second = start_host(&o2);
    char *expected = NULL;
    cr_assert(asprintf(&expected, "tcp:127.0.0.1:%d", tether_host_get_tcp_port(second)) > 0);
    assert_resolves("shared", test_runtime_dir(), expected);
    tether_host_unref(first);
    assert_resolves("shared", test_runtime_dir(), expected);
    tether_host_unref(second);
    char *path = path_in_runtime_dir("shared.host");
    cr_assert_not(file_exists(path));
    free(path);
    free(expected);
}

/* ---- runtime directory --------------------------------------------------------------- */

static void
assert_open_dir_refused(mode_t mode)
{
    char *dir = private_temp_dir();
    cr_assert(chmod(dir, mode) == 0);
    tether_host *h = test_host_new(&(tether_host_options){.name = "exposed", .runtime_dir = dir});
    ASSERT_ERR(tether_host_start(h), TETHER_EACCES);
    tether_host_unref(h);
    char *sock = NULL;
    cr_assert(asprintf(&sock, "%s/exposed.sock", dir) > 0);
    cr_assert_not(file_exists(sock), "a socket was made in a %o directory", mode);
    /* Nor was the directory "fixed" behind the user's back. */
    struct stat st;
    cr_assert(stat(dir, &st) == 0);
    cr_assert_eq(st.st_mode & 07777, mode);
    free(sock);
    rmdir(dir);
    free(dir);
}

Test(runtime_dir, open_to_others_is_refused)
{
    assert_open_dir_refused(0755);
    assert_open_dir_refused(0750);
    assert_open_dir_refused(0701);
}

Test(runtime_dir, start_can_be_retried_once_the_dir_is_fixed)
{
    char *dir = private_temp_dir();
    cr_assert(chmod(dir, 0755) == 0);
    tether_host *h = test_host_new(&(tether_host_options){.name = "retry", .runtime_dir = dir});
    ASSERT_OK(tether_host_add_service(h, "add", TETHER_CONTEXT_IO, test_add_handler, NULL));
    ASSERT_ERR(tether_host_start(h), TETHER_EACCES);
    cr_assert(chmod(dir, 0700) == 0);
    ASSERT_OK(tether_host_start(h));
    ASSERT_ERR(tether_host_start(h), TETHER_EALREADY);
    tether_client_options co = {.name = "c", .address = "retry", .runtime_dir = dir};
    tether_client *c = test_client_new_with(&co);
    ASSERT_OK(tether_client_connect(c, NULL));
    assert_calls(c);
    tether_client_unref(c);
    tether_host_unref(h);
    rmdir(dir);
    free(dir);
}

Test(runtime_dir, missing_one_is_created_private)
{
    char *parent = private_temp_dir();
    char *dir = NULL;
    cr_assert(asprintf(&dir, "%s/rt", parent) > 0);
    mode_t old = umask(0);
    tether_host *h = test_host_new(&(tether_host_options){.name = "fresh", .runtime_dir = dir});
    ASSERT_OK(tether_host_add_service(h, "add", TETHER_CONTEXT_IO, test_add_handler, NULL));
    ASSERT_OK(tether_host_start(h));
    umask(old);
    struct stat st;
    cr_assert(lstat(dir, &st) == 0 && S_ISDIR(st.st_mode));
    cr_assert_eq(st.st_mode & 07777, 0700, "runtime dir mode %o", st.st_mode & 07777);
    cr_assert_eq(st.st_uid, geteuid());
    tether_client_options co = {.name = "c", .address = "fresh", .runtime_dir = dir};
    tether_client *c = test_client_new_with(&co);
    ASSERT_OK(tether_client_connect(c, NULL));
    assert_calls(c);
    tether_client_unref(c);
    tether_host_unref(h);
    rmdir(dir);
    rmdir(parent);
    free(dir);
    free(parent);
}

/* ---- socket pair ---------------------------------------------------------------------- */

Test(socketpair, adopted_fd_needs_no_address_or_token)
{
    /* A host with no listener at all: the pair is the only way in. */
    tether_host_options o = {.name = "pairhost", .no_unix = true};
    tether_host *h = start_host(&o);
    cr_assert_null(tether_host_get_address(h));
    int fds[2];
    cr_assert(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    ASSERT_OK(tether_host_adopt_fd(h, fds[0]));

    /* An address in the environment must not matter when the client has an fd. */
    cr_assert(setenv("TETHER_ADDRESS", "unix:/nonexistent/none.sock", 1) == 0);
    tether_client_options co = {.name = "paired", .fd = fds[1]};
    tether_client *c = test_client_new_with(&co);
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_client_connect(c, &err);
    cr_assert(r == 0, "connect: %s: %s", tether_strerror(r), err.message ? err.message : "");
    unsetenv("TETHER_ADDRESS");
    ASSERT_OK(tether_client_add_service(c, "echo", TETHER_CONTEXT_IO, echo_handler, NULL));
    cr_assert_str_eq(tether_client_get_host_name(c), "pairhost");
    assert_calls(c);

    /* The other way: the host finds the client by name and calls it. */
    tether_conn *conn = NULL;
    ASSERT_OK(tether_host_get_client(h, "paired", &conn));
    tether_value *v = NULL;
    ASSERT_OK(tether_conn_call(conn, "echo", NULL, &v, NULL, "s", "over the pair"));
    const char *s = NULL;
    ASSERT_OK(tether_value_read(v, NULL, "s", &s));
    cr_assert_str_eq(s, "over the pair");
    tether_value_unref(v);
    tether_conn_unref(conn);

    tether_client_unref(c);
    tether_host_unref(h);
}

Test(socketpair, blocking_fd_is_fine)
{
    /* Callers hand over whatever socketpair() gave them: blocking, not close-on-exec. */
    tether_host *h = start_named_host("pairhost2");
    int fds[2];
    cr_assert(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    ASSERT_OK(tether_host_adopt_fd(h, fds[0]));
    tether_client_options co = {.name = "blocking", .fd = fds[1]};
    tether_client *c = test_client_new_with(&co);
    ASSERT_OK(tether_client_connect(c, NULL));
    for (int i = 0; i < 100; i++) {
        assert_calls(c);
    }
    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(c), "add", NULL, &f, "ii", 1, 2));
    ASSERT_OK(tether_future_wait(f, 5000000));
    ASSERT_OK(tether_future_get_result(f, NULL, NULL));
    tether_future_unref(f);
    tether_client_unref(c);
    tether_host_unref(h);
}

/* ---- peer information ----------------------------------------------------------------- */

Test(peer, identity_and_count)
{
    tether_host *h = start_named_host("census");
    cr_assert_eq(tether_host_get_client_count(h), 0);
    tether_client *alice = test_client_connect("alice", "census");
    tether_client *bob = test_client_connect("bob", "census");
    tether_client_options po = {.name = "snake",
                                .address = "census",
                                .runtime_dir = test_runtime_dir(),
                                .language = "python",
                                .language_version = "3.11.2"};
    tether_client *py = test_client_new_with(&po);
    ASSERT_OK(tether_client_connect(py, NULL));
    cr_assert_eq(tether_host_get_client_count(h), 3);

    tether_conn *conn = NULL;
    ASSERT_OK(tether_host_get_client(h, "alice", &conn));
    cr_assert_str_eq(tether_conn_get_peer_name(conn), "alice");
    cr_assert_eq(tether_conn_get_peer_pid(conn), (int64_t)getpid());
    cr_assert_str_eq(tether_conn_get_peer_language(conn), "c");
    cr_assert_str_eq(tether_conn_get_peer_language_version(conn), "");
    cr_assert_eq(tether_conn_is_connected(conn), 1);

    tether_conn *snake = NULL;
    ASSERT_OK(tether_host_get_client(h, "snake", &snake));
    cr_assert_str_eq(tether_conn_get_peer_language(snake), "python");
    cr_assert_str_eq(tether_conn_get_peer_language_version(snake), "3.11.2");
    tether_conn_unref(snake);

    tether_conn *none = NULL;
    ASSERT_ERR(tether_host_get_client(h, "carol", &none), TETHER_ENOENT);
    cr_assert_null(none);

    /* The client's own view of the host. */
    tether_conn *up = tether_client_get_conn(alice);
    cr_assert_str_eq(tether_conn_get_peer_name(up), "census");
    cr_assert_eq(tether_conn_get_peer_pid(up), (int64_t)getpid());

    tether_client_unref(alice);
    test_wait_client_count(h, 2, 1000);
    ASSERT_ERR(tether_host_get_client(h, "alice", &none), TETHER_ENOENT);
    /* A reference kept by the application outlives the connection, closed. */
    cr_assert_eq(tether_conn_is_connected(conn), 0);
    int r = tether_conn_call(conn, "anything", NULL, NULL, NULL, NULL);
    cr_assert(r == TETHER_ENOTCONN || r == TETHER_ECONNRESET, "%d (%s)", r, tether_strerror(r));
    tether_conn_unref(conn);

    tether_client_unref(bob);
    tether_client_unref(py);
    test_wait_client_count(h, 0, 1000);
    tether_host_unref(h);
}

/* A taken name is given with a suffix (docs/protocol.md, section 6): "twin" stays the
 * older client's, the newer is "twin#2", and "twin" reaches the older one. */
Test(peer, same_name_is_registered_apart)
{
    tether_host *h = start_named_host("twins");
    tether_client *older = test_client_connect("twin", "twins");
    tether_client *newer = test_client_connect("twin", "twins");
    ASSERT_OK(tether_client_add_service(older, "echo", TETHER_CONTEXT_IO, echo_handler, NULL));
    cr_assert_eq(tether_host_get_client_count(h), 2);
    tether_conn *conn = NULL;
    ASSERT_OK(tether_host_get_client(h, "twin", &conn));
    /* Only the older one has the service, so this tells them apart. */
    ASSERT_OK(tether_conn_call(conn, "echo", NULL, NULL, NULL, "s", "x"));
    tether_conn_unref(conn);
    ASSERT_OK(tether_host_get_client(h, "twin#2", &conn));
    ASSERT_ERR(tether_conn_call(conn, "echo", NULL, NULL, NULL, "s", "x"), TETHER_ENOENT);
    tether_conn_unref(conn);
    tether_client_unref(older);
    test_wait_client_count(h, 1, 1000);
    /* The newer keeps its name: names do not move while a client is connected. */
    ASSERT_ERR(tether_host_get_client(h, "twin", &conn), TETHER_ENOENT);
    ASSERT_OK(tether_host_get_client(h, "twin#2", &conn));
    tether_conn_unref(conn);
    tether_client_unref(newer);
    tether_host_unref(h);
}
