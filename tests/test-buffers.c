/*
 * test-buffers: tether_buffer between a C client and a C host over real sockets: by
 * descriptor on a Unix socket (protocol version 2), inline as a bin over TCP, both ways,
 * beyond the frame size limit, behind the peer's window, in notifications; and no
 * descriptor or mapping left behind.
 */
#include "helpers.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rpc/buffer.h"

/* Sum of the bytes of the first argument, a buffer or bytes; its type as the second
 * element of the reply: [sum, type]. */
static int
sum_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    const uint8_t *p = NULL;
    size_t n = 0;
    int r = tether_request_read(req, "y", &p, &n);
    if (r < 0) {
        return r;
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        sum += p[i];
    }
    tether_value *arg = NULL;
    ASSERT_OK(tether_value_get_item(tether_request_get_args(req), 0, &arg));
    int type = tether_value_get_type(arg);
    tether_value_unref(arg);
    return tether_request_reply(req, "[ui]", sum, type);
}

/* [bytes, buffer]: the sum of both. */
static int
sum_two_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    const uint8_t *p = NULL, *q = NULL;
    size_t n = 0, m = 0;
    int r = tether_request_read(req, "yy", &p, &n, &q, &m);
    if (r < 0) {
        return r;
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        sum += p[i];
    }
    for (size_t i = 0; i < m; i++) {
        sum += q[i];
    }
    return tether_request_reply(req, "u", sum);
}

static int
count_handler(tether_request *req, void *userdata)
{
    return sum_handler(req, userdata);
}

static int make_handler(tether_request *req, void *userdata);

/* keep(b): the host holds the argument's value until drop(); IO context, one thread. */
static tether_value *kept;

static int
keep_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    tether_value_unref(kept);
    kept = tether_value_ref(tether_request_get_args(req));
    return 0;
}

static int
echo_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    tether_value *arg = NULL;
    int r = tether_value_get_item(tether_request_get_args(req), 0, &arg);
    r = r < 0 ? r : tether_request_reply_value(req, arg);
    tether_value_unref(arg);
    return r;
}

static int
drop_handler(tether_request *req, void *userdata)
{
    (void)req;
    (void)userdata;
    kept = tether_value_unref(kept);
    return 0;
}

static uint64_t max_buffer_bytes; /* for the next start_host: 0, the default */

static tether_host *
start_host(bool tcp, uint32_t max_in_flight)
{
    tether_host_options o = {.name = tcp ? "buffers-tcp" : "buffers",
                             .max_in_flight = max_in_flight,
                             .max_buffer_bytes = max_buffer_bytes};
    if (tcp) {
        o.tcp = true;
        o.tcp_port = TETHER_PORT_EPHEMERAL;
    }
    tether_host *h = test_host_new(&o);
    ASSERT_OK(tether_host_add_service(h, "sum", TETHER_CONTEXT_IO, sum_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "sum_pool", TETHER_CONTEXT_POOL, sum_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "count", TETHER_CONTEXT_IO, count_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "sum_two", TETHER_CONTEXT_IO, sum_two_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "make", TETHER_CONTEXT_IO, make_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "keep", TETHER_CONTEXT_IO, keep_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "drop", TETHER_CONTEXT_IO, drop_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "echo", TETHER_CONTEXT_IO, echo_handler, NULL));
    ASSERT_OK(tether_host_start(h));
    return h;
}

static tether_client *
connect_to(tether_host *h, bool tcp)
{
    if (!tcp) {
        return test_client_connect("b", "buffers");
    }
    char *address = NULL;
    cr_assert(asprintf(&address, "tcp:127.0.0.1:%d", tether_host_get_tcp_port(h)) > 0);
    tether_client *c = test_client_connect("b", address);
    free(address);
    return c;
}

/* A host and a client connected to it. */
typedef struct {
    tether_host *host;
    tether_client *client;
    tether_conn *conn;
} peers;

static peers
start_peers(bool tcp, uint32_t max_in_flight)
{
    peers p = {start_host(tcp, max_in_flight), NULL, NULL};
    p.client = connect_to(p.host, tcp);
    p.conn = tether_client_get_conn(p.client);
    return p;
}

static void
stop_peers(peers *p)
{
    tether_client_unref(p->client);
    tether_host_unref(p->host);
}

static tether_buffer *
filled(size_t n)
{
    tether_buffer *b = NULL;
    int r = tether_buffer_new(n, &b);
    if (r == TETHER_ENOTSUP) {
        cr_skip_test("no shared memory on this platform");
    }
    ASSERT_OK(r);
    uint8_t *w = tether_buffer_get_writable(b);
    for (size_t i = 0; i < n; i++) {
        w[i] = (uint8_t)(i * 7);
    }
    return b;
}

/* A buffer of n bytes made by the host (filled()), as a reply. */
static int
make_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    uint64_t n = 0;
    int r = tether_request_read(req, "u", &n);
    if (r < 0) {
        return r;
    }
    tether_buffer *b = filled((size_t)n);
    r = tether_request_reply(req, "[Bs]", b, "made");
    tether_buffer_unref(b);
    return r;
}

static uint64_t
expected_sum(size_t n)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        sum += (uint8_t)(i * 7);
    }
    return sum;
}

static void
call_sum(tether_conn *conn, const char *service, tether_buffer *b, int want_type)
{
    tether_value *v = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_conn_call(conn, service, NULL, &v, &err, "B", b);
    cr_assert_eq(r, 0, "%s: %s", tether_strerror(r), err.message ? err.message : "");
    uint64_t sum = 0;
    int type = -1;
    ASSERT_OK(tether_value_read(v, NULL, "[ui]", &sum, &type));
    cr_assert_eq(sum, expected_sum(tether_buffer_get_size(b)));
    cr_assert_eq(type, want_type);
    tether_value_unref(v);
}

/* Descriptors open once the host and client run and have served a call (the I/O
 * thread's, the wake objects of the threads that took part): what buffers must not add
 * to for good. */
/* The host lets go of a request's buffers once its handler has returned, which may be
 * just after the caller has the reply: give it a moment (5 s at most). */
static void
assert_fds_back_to(int expected)
{
    /* Memory kept for reuse holds its descriptor: let it go first, and again as buffers
     * the peer said done with come back to the pool. */
    tether__buffer_pool_clear();
    for (int i = 0; i < 500 && count_open_fds() != expected; i++) {
        usleep(10000);
        tether__buffer_pool_clear();
    }
    cr_assert_eq(count_open_fds(), expected, "descriptors left open: %d, were %d",
                 count_open_fds(), expected);
}

static int
settled_fds(tether_conn *conn)
{
    tether_buffer *b = filled(16);
    call_sum(conn, "sum", b, TETHER_TYPE_BUFFER);
    call_sum(conn, "sum_pool", b, TETHER_TYPE_BUFFER);
    tether_buffer_unref(b);
    /* Steady once two looks 20 ms apart agree. */
    tether__buffer_pool_clear();
    int n = count_open_fds(), last = -1;
    for (int i = 0; i < 50 && n != last; i++) {
        usleep(20000);
        tether__buffer_pool_clear();
        last = n;
        n = count_open_fds();
    }
    return n;
}

Test(buffers, travel_by_descriptor_on_a_unix_socket_both_ways)
{
    peers p = start_peers(false, 0);
    tether_conn *conn = p.conn;
    int fds_before = settled_fds(conn);
    /* 64 MiB: four times the frame size limit. */
    tether_buffer *big = filled(64u << 20);
    call_sum(conn, "sum", big, TETHER_TYPE_BUFFER);
    call_sum(conn, "sum_pool", big, TETHER_TYPE_BUFFER);
    /* The sender may keep writing into what it sent: the receiver maps the same pages. */
    ((uint8_t *)tether_buffer_get_writable(big))[0] += 1;
    tether_value *v = NULL;
    ASSERT_OK(tether_conn_call(conn, "sum", NULL, &v, NULL, "B", big));
    uint64_t sum = 0;
    ASSERT_OK(tether_value_read(v, NULL, "[u*]", &sum));
    cr_assert_eq(sum, expected_sum(64u << 20) + 1);
    tether_value_unref(v);
    tether_buffer_unref(big);
    /* A buffer made by the host, in a reply. */
    ASSERT_OK(tether_conn_call(conn, "make", NULL, &v, NULL, "u", (uint64_t)100000));
    tether_buffer *got = NULL;
    const char *text = NULL;
    ASSERT_OK(tether_value_read(v, NULL, "[Bs]", &got, &text));
    cr_assert_str_eq(text, "made");
    cr_assert_eq(tether_buffer_get_size(got), 100000);
    cr_assert_null(tether_buffer_get_writable(got), "a received buffer is mapped read-only");
    const uint8_t *bytes = tether_buffer_get_data(got);
    for (size_t i = 0; i < 100000; i++) {
        cr_assert_eq(bytes[i], (uint8_t)(i * 7));
    }
    tether_value_unref(v);
    tether_buffer_unref(got);
    assert_fds_back_to(fds_before);
    stop_peers(&p);
}

Test(buffers, travel_inline_over_tcp)
{
    peers p = start_peers(true, 0);
    tether_conn *conn = p.conn;
    tether_buffer *b = filled(1u << 20);
    call_sum(conn, "sum", b, TETHER_TYPE_BIN);
    tether_buffer_unref(b);
    tether_value *v = NULL;
    ASSERT_OK(tether_conn_call(conn, "make", NULL, &v, NULL, "u", (uint64_t)5000));
    const uint8_t *bytes = NULL;
    size_t n = 0;
    ASSERT_OK(tether_value_read(v, NULL, "[ys]", &bytes, &n, NULL));
    cr_assert_eq(n, 5000);
    cr_assert_eq(bytes[4999], (uint8_t)(4999 * 7));
    tether_value *item = NULL;
    ASSERT_OK(tether_value_get_item(v, 0, &item));
    cr_assert_eq(tether_value_get_type(item), TETHER_TYPE_BIN);
    tether_value_unref(item);
    tether_value_unref(v);
    /* Over the frame size limit, a buffer cannot go inline: refused, nothing else lost. */
    tether_buffer *big = filled(20u << 20);
    tether_error err = TETHER_ERROR_INIT;
    cr_assert_lt(tether_conn_call(conn, "sum", NULL, &v, &err, "B", big), 0);
    tether_error_done(&err);
    tether_buffer_unref(big);
    b = filled(300);
    call_sum(conn, "sum", b, TETHER_TYPE_BIN);
    /* Big bytes beside a buffer: the arguments are written out inline, not lent. */
    size_t big_n = 200000;
    uint8_t *plain = malloc(big_n);
    for (size_t i = 0; i < big_n; i++) {
        plain[i] = (uint8_t)(i * 7);
    }
    tether_value *args = NULL;
    ASSERT_OK(tether_value_new(&args, "[yB]", plain, big_n, b));
    free(plain);
    ASSERT_OK(tether_conn_call_values(conn, "sum_two", args, NULL, NULL, &v, NULL));
    uint64_t both = 0;
    ASSERT_OK(tether_value_read(v, NULL, "u", &both));
    cr_assert_eq(both, expected_sum(big_n) + expected_sum(300));
    tether_value_unref(v);
    tether_value_unref(args);
    tether_buffer_unref(b);
    stop_peers(&p);
}

/* Calls beyond the host's window wait in the caller's backlog, descriptors included. */
Test(buffers, wait_behind_the_window_with_their_calls)
{
    peers p = start_peers(false, 2);
    tether_conn *conn = p.conn;
    int fds_before = settled_fds(conn);
    enum { CALLS = 40 };
    tether_future *fs[CALLS];
    tether_buffer *bufs[CALLS];
    for (int i = 0; i < CALLS; i++) {
        bufs[i] = filled(4096 + (size_t)i);
        ASSERT_OK(tether_conn_call_async(conn, "sum", NULL, &fs[i], "B", bufs[i]));
    }
    for (int i = 0; i < CALLS; i++) {
        ASSERT_OK(tether_future_wait(fs[i], 10000000));
        tether_value *v = NULL;
        ASSERT_OK(tether_future_get_result(fs[i], &v, NULL));
        uint64_t sum = 0;
        int type = 0;
        ASSERT_OK(tether_value_read(v, NULL, "[ui]", &sum, &type));
        cr_assert_eq(sum, expected_sum(4096 + (size_t)i), "call %d", i);
        cr_assert_eq(type, TETHER_TYPE_BUFFER);
        tether_value_unref(v);
        tether_future_unref(fs[i]);
        tether_buffer_unref(bufs[i]);
    }
    /* More buffers than one frame carries (64): refused before anything is sent. */
    tether_buffer *one = filled(8);
    tether_value *seven = NULL, *seventy = NULL;
    ASSERT_OK(tether_value_new(&seven, "[BBBBBBB]", one, one, one, one, one, one, one));
    ASSERT_OK(tether_value_new(&seventy, "[vvvvvvvvvv]", seven, seven, seven, seven, seven, seven,
                               seven, seven, seven, seven));
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_conn_call_values(conn, "sum", seventy, NULL, NULL, NULL, &err),
               TETHER_EMSGSIZE);
    tether_error_done(&err);
    ASSERT_ERR(tether_conn_notify_values(conn, "count", seventy, NULL), TETHER_EMSGSIZE);
    tether_value_unref(seventy);
    tether_value_unref(seven);
    tether_buffer_unref(one);
    /* A notification with a buffer, then a call: in order, both with their buffers. */
    tether_buffer *b = filled(777);
    ASSERT_OK(tether_conn_notify(conn, "count", "B", b));
    call_sum(conn, "sum", b, TETHER_TYPE_BUFFER);
    tether_buffer_unref(b);
    assert_fds_back_to(fds_before);
    stop_peers(&p);
}

/* ---- reuse, limits ------------------------------------------------------------------ */

static uint64_t
inode_of(const tether_buffer *b)
{
    struct stat st;
    ASSERT_OK(fstat(tether_buffer_get_fd(b), &st));
    return (uint64_t)st.st_ino;
}

/* Whether a new buffer of size bytes is, within a second, the memory of inode: the peer
 * said done with it and it went back to the pool. The buffers made meanwhile are held,
 * so that each try takes another. */
static bool
reused_soon(size_t size, uint64_t inode, int tries)
{
    tether_buffer *made[100] = {NULL};
    bool found = false;
    int n = 0;
    for (; n < tries && !found; n++) {
        ASSERT_OK(tether_buffer_new(size, &made[n]));
        found = inode_of(made[n]) == inode;
        if (found) {
            const uint8_t *p = tether_buffer_get_data(made[n]);
            cr_assert(p[0] == 0 && p[size - 1] == 0, "tether_buffer_new zeroes reused memory");
        } else {
            usleep(10000);
        }
    }
    while (n > 0) {
        tether_buffer_unref(made[--n]);
    }
    return found;
}

static void
call_ok(tether_conn *conn, const char *method, tether_buffer *b)
{
    tether_error err = TETHER_ERROR_INIT;
    int r = b ? tether_conn_call(conn, method, NULL, NULL, &err, "B", b)
              : tether_conn_call(conn, method, NULL, NULL, &err, "");
    cr_assert_eq(r, 0, "%s: %s", tether_strerror(r), err.message ? err.message : "");
}

Test(buffers, memory_is_reused_once_the_peer_is_done_with_it)
{
    peers p = start_peers(false, 0);
    int fds_before = settled_fds(p.conn);
    enum {
        SIZE = 300000
    };
    /* Sent, used and dropped by the host: said done, and made again here. */
    tether_buffer *b = filled(SIZE);
    uint64_t first = inode_of(b);
    call_sum(p.conn, "sum", b, TETHER_TYPE_BUFFER);
    tether_buffer_unref(b);
    cr_assert(reused_soon(SIZE, first, 100), "the memory the host is done with is reused");
    /* Kept by the host: not reused until it lets go. */
    b = filled(SIZE);
    uint64_t second = inode_of(b);
    call_ok(p.conn, "keep", b);
    tether_buffer_unref(b);
    cr_assert(!reused_soon(SIZE, second, 20), "memory the host still maps is not reused");
    call_ok(p.conn, "drop", NULL);
    cr_assert(reused_soon(SIZE, second, 100), "reused once the host let go");
    /* Sent back (the host relays what it received): home again once this side has
     * dropped the copy it got, which tells the host, which then tells this side. */
    b = filled(SIZE);
    uint64_t third = inode_of(b);
    tether_value *back = NULL;
    ASSERT_OK(tether_conn_call(p.conn, "echo", NULL, &back, NULL, "B", b));
    tether_buffer_unref(b);
    cr_assert(!reused_soon(SIZE, third, 10), "the echo still maps it");
    tether_value_unref(back);
    cr_assert(reused_soon(SIZE, third, 100));
    /* The host's buffers come back to its pool in turn, so the same memory arrives
     * again: this side takes the mapping it kept instead of mapping anew. */
    uint64_t maps_before = tether__buffer_mappings_made();
    for (int i = 0; i < 20; i++) {
        tether_value *v = NULL;
        ASSERT_OK(tether_conn_call(p.conn, "make", NULL, &v, NULL, "u", (uint64_t)SIZE));
        tether_buffer *got = NULL;
        ASSERT_OK(tether_value_read(v, NULL, "[B*]", &got));
        const uint8_t *bytes = tether_buffer_get_data(got);
        cr_assert_eq(bytes[SIZE - 1], (uint8_t)((SIZE - 1) * 7));
        tether_buffer_unref(got);
        tether_value_unref(v);
        usleep(5000);
    }
    /* Each make maps on both sides when nothing is kept: 40 mappings. */
    uint64_t maps = tether__buffer_mappings_made() - maps_before;
    cr_assert(maps <= 10, "%llu mappings for 20 buffers of memory seen before",
              (unsigned long long)maps);
    assert_fds_back_to(fds_before);
    stop_peers(&p);
}

Test(buffers, a_connection_closed_before_done_leaves_its_memory_alone)
{
    peers p = start_peers(false, 0);
    tether_buffer *b = filled(200000);
    uint64_t sent = inode_of(b);
    call_ok(p.conn, "keep", b);
    tether_buffer_unref(b);
    /* The host maps it still: however the connection ends, this process must not write
     * into that memory again. */
    tether_client_unref(p.client);
    p.client = NULL;
    cr_assert(!reused_soon(200000, sent, 30));
    tether_host_unref(p.host);
    kept = tether_value_unref(kept);
}

Test(buffers, a_peer_over_its_shared_memory_limit_is_refused_and_keeps_its_connection)
{
    max_buffer_bytes = 1u << 20;
    peers p = start_peers(false, 0);
    max_buffer_bytes = 0;
    int fds_before = settled_fds(p.conn);
    tether_buffer *held = filled(700000), *more = filled(400000);
    call_ok(p.conn, "keep", held);
    /* 700,000 + 400,000 bytes would pass the host's 1 MiB. */
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_conn_call(p.conn, "sum", NULL, NULL, &err, "B", more);
    cr_assert_eq(r, TETHER_EREMOTE, "%s", tether_strerror(r));
    cr_assert_not_null(strstr(err.message, "max_buffer_bytes"), "%s", err.message);
    tether_error_done(&err);
    /* Nothing else is lost: the connection serves on, and once the host lets go of the
     * first, the second fits. */
    tether_buffer *small = filled(16);
    call_sum(p.conn, "sum", small, TETHER_TYPE_BUFFER);
    call_ok(p.conn, "drop", NULL);
    call_sum(p.conn, "sum", more, TETHER_TYPE_BUFFER);
    /* The refused one was said done too: its memory comes back. */
    uint64_t refused = inode_of(more);
    tether_buffer_unref(more);
    cr_assert(reused_soon(400000, refused, 100));
    tether_buffer_unref(small);
    tether_buffer_unref(held);
    assert_fds_back_to(fds_before);
    stop_peers(&p);
}

Test(buffers, a_forked_child_makes_its_own_memory)
{
    /* Kept for reuse here (never sent: back to the pool at once), and one in use. */
    tether_buffer *pooled = filled(123456);
    uint64_t pooled_inode = inode_of(pooled);
    tether_buffer_unref(pooled);
    tether_buffer *in_use = filled(654321);
    uint64_t in_use_inode = inode_of(in_use);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        /* Neither may become a buffer of the child's: the parent writes into them. */
        tether_buffer *a = NULL, *b = NULL;
        tether_buffer_unref(in_use);
        int bad = tether_buffer_new(123456, &a) < 0 || inode_of(a) == pooled_inode;
        bad |= tether_buffer_new(654321, &b) < 0 || inode_of(b) == in_use_inode;
        _exit(bad);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the child reused its parent's memory");
    /* The parent's pool is as it was. */
    tether_buffer *again = NULL;
    ASSERT_OK(tether_buffer_new(123456, &again));
    cr_assert_eq(inode_of(again), pooled_inode);
    tether_buffer_unref(again);
    tether_buffer_unref(in_use);
    tether__buffer_pool_clear();
}

/* Mappings of this process of the memfd of inode (/proc/self/maps). */
static int
mappings_of(uint64_t inode)
{
    FILE *maps = fopen("/proc/self/maps", "r");
    cr_assert_not_null(maps);
    char line[512];
    int n = 0;
    while (fgets(line, sizeof(line), maps)) {
        unsigned long long ino = 0;
        if (strstr(line, "memfd:") && sscanf(line, "%*s %*s %*s %*s %llu", &ino) == 1 &&
            ino == inode) {
            n++;
        }
    }
    fclose(maps);
    return n;
}

Test(buffers, a_peer_gone_leaves_no_mapping_of_its_memory)
{
    peers p = start_peers(false, 0);
    tether_buffer *b = filled(250000);
    uint64_t inode = inode_of(b);
    call_sum(p.conn, "sum", b, TETHER_TYPE_BUFFER);
    /* While the client is connected the host may keep its mapping, for the same memory
     * coming again: this process maps it once as the client, at most once as the host. */
    cr_assert_leq(mappings_of(inode), 2);
    tether_client_unref(p.client);
    p.client = NULL;
    for (int i = 0; i < 500 && mappings_of(inode) > 1; i++) {
        usleep(10000);
    }
    cr_assert_eq(mappings_of(inode), 1, "the host kept a mapping of a client gone");
    tether_buffer_unref(b);
    tether_host_unref(p.host);
    tether__buffer_pool_clear();
}
