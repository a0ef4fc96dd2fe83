/*
 * Bad input and faults: every malformed or hostile thing a peer can send costs that
 * peer its connection (or gets it a clear refusal) while the host, and every other
 * client, goes on. Raw sockets play the hostile peer; a well-behaved client checks
 * after each case that the host still serves.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "raw-peer.h"
#include "rpc/conn.h"
#include "rpc/endpoint.h"
#include "rpc/value.h"

static int
ping_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply(req, "s", "pong");
}

static tether_request *kept;

static int
keep_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    kept = tether_request_ref(req);
    return 0;
}

static tether_host *
start_host_with(tether_host_options *opts)
{
    tether_host *h = test_host_new(opts);
    ASSERT_OK(tether_host_add_service(h, "ping", TETHER_CONTEXT_IO, ping_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "keep", TETHER_CONTEXT_IO, keep_handler, NULL));
    ASSERT_OK(tether_host_start(h));
    return h;
}

static void
assert_host_serves(tether_client *c)
{
    tether_value *v = NULL;
    ASSERT_OK(tether_conn_call(tether_client_get_conn(c), "ping", NULL, &v, NULL, NULL));
    const char *s = NULL;
    ASSERT_OK(tether_value_read(v, NULL, "s", &s));
    cr_assert_str_eq(s, "pong");
    tether_value_unref(v);
}

/* Open a raw connection that passed the handshake. */
static int
raw_session(tether_host *h)
{
    int fd = raw_connect(h);
    raw_hello(fd, 1, 1, NULL);
    tether__frame f;
    uint8_t buf[4096];
    cr_assert_eq(raw_read_frame(fd, &f, buf, sizeof(buf)), TETHER__WELCOME);
    return fd;
}

/* Send body as one frame on a fresh session and check the host drops only that peer. */
static void
check_dropped_for(const void *body, size_t n, bool framed)
{
    tether_host *h = start_host_with(NULL);
    tether_client *good = test_client_connect("good", NULL);
    int fd = raw_session(h);
    if (framed) {
        raw_send_frame(fd, body, n);
    } else {
        raw_send(fd, body, n);
    }
    raw_expect_close(fd);
    close(fd);
    assert_host_serves(good);
    tether_client_unref(good);
    tether_host_unref(h);
}

Test(faults, garbage_body)
{
    static const uint8_t body[] = {0xc1, 0xc1, 0xc1};
    check_dropped_for(body, sizeof(body), true);
}

Test(faults, unknown_message_kind)
{
    static const uint8_t body[] = {0x91, 0x63}; /* [99] */
    check_dropped_for(body, sizeof(body), true);
}

Test(faults, wrong_type_in_a_field)
{
    /* REQUEST with a string id. */
    static const uint8_t body[] = {0x98, 0x04, 0xa1, 'x', 0x00, 0x00, 0xa4,
                                   'p',  'i',  'n',  'g', 0x90, 0x80, 0x00};
    check_dropped_for(body, sizeof(body), true);
}

Test(faults, small_frame_declaring_a_huge_array)
{
    static const uint8_t body[] = {0xdd, 0xff, 0xff, 0xff, 0xff}; /* array32 of 2^32-1 */
    check_dropped_for(body, sizeof(body), true);
}

Test(faults, small_frame_declaring_a_huge_map_and_string)
{
    static const uint8_t map[] = {0x92, 0x04, 0xdf, 0xff, 0xff, 0xff, 0xff};
    check_dropped_for(map, sizeof(map), true);
    static const uint8_t str[] = {0x92, 0x04, 0xdb, 0xff, 0xff, 0xff, 0xf0, 'a'};
    check_dropped_for(str, sizeof(str), true);
}

Test(faults, frame_over_the_size_limit)
{
    /* Only the length prefix: the host must refuse before reading (or allocating) a body. */
    static const uint8_t hdr[] = {0x7f, 0xff, 0xff, 0xff};
    check_dropped_for(hdr, sizeof(hdr), false);
}

Test(faults, truncated_frame_then_eof)
{
    tether_host *h = start_host_with(NULL);
    tether_client *good = test_client_connect("good", NULL);
    int fd = raw_session(h);
    static const uint8_t partial[] = {0x00, 0x00, 0x00, 0x10, 0x98, 0x04};
    raw_send(fd, partial, sizeof(partial));
    close(fd);
    usleep(50000);
    assert_host_serves(good);
    cr_assert_eq(tether_host_get_client_count(h), 1);
    tether_client_unref(good);
    tether_host_unref(h);
}

Test(faults, handshake_must_come_first)
{
    tether_host *h = start_host_with(NULL);
    int fd = raw_connect(h);
    static const uint8_t ping[] = {0x92, 0x09, 0x01};
    raw_send_frame(fd, ping, sizeof(ping));
    tether__frame f;
    uint8_t buf[4096];
    cr_assert_eq(raw_read_frame(fd, &f, buf, sizeof(buf)), TETHER__REFUSE);
    cr_assert_eq(f.method.len, strlen("protocol"));
    raw_expect_close(fd);
    close(fd);
    tether_host_unref(h);
}

/* Send bytes as a new peer's first data and expect REFUSE code, then the close. */
static void
expect_refused(tether_host *h, const void *bytes, size_t n, const char *code)
{
    int fd = raw_connect(h);
    if (n) {
        raw_send(fd, bytes, n);
    }
    tether__frame f;
    uint8_t buf[4096];
    cr_assert_eq(raw_read_frame(fd, &f, buf, sizeof(buf)), TETHER__REFUSE);
    cr_assert(f.method.len == strlen(code) && memcmp(f.method.ptr, code, f.method.len) == 0,
              "refused with %.*s, want %s", (int)f.method.len, (const char *)f.method.ptr, code);
    raw_expect_close(fd);
    close(fd);
}

/* A frame of body as bytes: the length prefix, then the body. */
static size_t
framed(uint8_t *out, const void *body, size_t n)
{
    out[0] = (uint8_t)(n >> 24);
    out[1] = (uint8_t)(n >> 16);
    out[2] = (uint8_t)(n >> 8);
    out[3] = (uint8_t)n;
    memcpy(out + 4, body, n);
    return n + 4;
}

/* One rule for every first frame that is not a well-formed HELLO: REFUSE "protocol". */
Test(faults, every_malformed_hello_is_refused_as_protocol)
{
    tether_host *h = start_host_with(NULL);
    tether_client *good = test_client_connect("good", NULL);
    static const struct {
        const char *body;
        size_t len;
    } bodies[] = {
        {"\xc1", 1},                              /* not msgpack */
        {"\x81\xa1x\x01", 4},                     /* a map, not an array */
        {"\x92\x01\x05", 3},                      /* HELLO whose value is not a map */
        {"\x92\x01\x80\x00", 4},                  /* a trailing byte after the array */
        {"\x92\x01\x81\xa4name\xa2\xc3\x28", 11}, /* a name that is not UTF-8 */
        {"\x92\x01\x81\xa4name\xa3"
         "a\nb",
         10},                            /* a name with a control character */
        {"\x92\x01\x81\xa4name\xa0", 8}, /* an empty name */
    };
    uint8_t frame[64];
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        expect_refused(h, frame, framed(frame, bodies[i].body, bodies[i].len), "protocol");
    }
    /* A well-formed HELLO followed, in the same frame, by one byte more. */
    tether__buf b = TETHER__BUF_INIT;
    ASSERT_OK(raw_encode_hello(&b, "x", 1, 1, NULL));
    uint8_t one_more[256];
    size_t body = tether__buf_pending(&b) - TETHER__FRAME_HEADER_SIZE;
    framed(one_more, tether__buf_head(&b) + TETHER__FRAME_HEADER_SIZE, body);
    one_more[TETHER__FRAME_HEADER_SIZE + body] = 0xc0;
    framed(one_more, one_more + TETHER__FRAME_HEADER_SIZE, body + 1);
    expect_refused(h, one_more, TETHER__FRAME_HEADER_SIZE + body + 1, "protocol");
    tether__buf_done(&b);
    /* A first frame over the size limit: refused before its body is read. */
    expect_refused(h, "\x7f\xff\xff\xff", 4, "protocol");
    assert_host_serves(good);
    cr_assert_eq(tether_host_get_client_count(h), 1);
    tether_client_unref(good);
    tether_host_unref(h);
}

Test(faults, unsupported_protocol_version_is_refused)
{
    tether_host *h = start_host_with(NULL);
    int fd = raw_connect(h);
    raw_hello(fd, 5, 7, NULL);
    tether__frame f;
    uint8_t buf[4096];
    cr_assert_eq(raw_read_frame(fd, &f, buf, sizeof(buf)), TETHER__REFUSE);
    cr_assert(f.method.len == 7 && memcmp(f.method.ptr, "version", 7) == 0);
    close(fd);
    tether_host_unref(h);
}

static int settled_fd_count(void);

/* The limit at which exactly `free_slots` descriptor numbers are still free. */
static rlim_t
limit_leaving(int free_slots)
{
    int n = 0;
    for (;; n++) {
        if (fcntl(n, F_GETFD) < 0 && --free_slots == 0) {
            return (rlim_t)n + 1;
        }
    }
}

/* The kind of the host's answer to a HELLO on a socket made earlier, and whether it
 * says the host is out of descriptors. */
static int
hello_on(int fd, const char *path, bool *out_of_fds)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    ASSERT_OK(connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ? -errno : 0);
    /* A host out of descriptors refuses at once and closes, maybe before the hello goes
     * out (EPIPE then): its REFUSE is still there to read. */
    tether__buf hello = TETHER__BUF_INIT;
    ASSERT_OK(raw_encode_hello(&hello, "raw", 1, 1, NULL));
    int sent = raw_send_all(fd, hello.data, hello.len);
    tether__buf_done(&hello);
    cr_assert(sent == 0 || sent == -EPIPE || sent == -ECONNRESET, "send of the hello: %s",
              strerror(-sent));
    tether__frame f;
    uint8_t buf[4096];
    int kind = raw_read_frame(fd, &f, buf, sizeof(buf));
    *out_of_fds =
        kind == TETHER__REFUSE && memmem(buf, sizeof(buf), "out of file descriptors", 23) != NULL;
    return kind;
}

Test(faults, peers_arriving_when_descriptors_run_out_are_refused_busy)
{
    tether_host_options o = {.keep_fd_limit = true};
    tether_host *h = start_host_with(&o);
    tether_client *good = test_client_connect("good", NULL);
    const char *path = tether_host_get_address(h) + strlen("unix:");
    enum {
        PEERS = 5
    };
    int fds[PEERS];
    for (int i = 0; i < PEERS; i++) {
        fds[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert(fds[i] >= 0);
    }
    /* What a connection costs the host here: its socket, and on Linux an epoll set and a
     * dup as well (platform/platform.h). */
    int base = settled_fd_count();
    int probe = raw_session(h);
    int cost = settled_fd_count() - base - 1;
    close(probe);
    settled_fd_count();
    cr_assert(cost >= 1, "a connection costs the host %d descriptors", cost);
    /* Room for two connections, then none. */
    struct rlimit was;
    ASSERT_OK(getrlimit(RLIMIT_NOFILE, &was));
    struct rlimit low = {limit_leaving(2 * cost), was.rlim_max};
    ASSERT_OK(setrlimit(RLIMIT_NOFILE, &low));
    int welcomed = 0, refused = 0;
    for (int i = 0; i < PEERS; i++) {
        bool out_of_fds = false;
        int kind = hello_on(fds[i], path, &out_of_fds);
        cr_assert(kind == TETHER__WELCOME || (kind == TETHER__REFUSE && out_of_fds),
                  "peer %d: answer %d, not WELCOME or REFUSE busy (out of descriptors)", i, kind);
        welcomed += kind == TETHER__WELCOME;
        refused += kind == TETHER__REFUSE;
    }
    ASSERT_OK(setrlimit(RLIMIT_NOFILE, &was));
    cr_assert(welcomed >= 1 && refused >= 2, "%d welcomed, %d refused", welcomed, refused);
    for (int i = 0; i < PEERS; i++) {
        close(fds[i]);
    }
    /* Descriptors back: the host accepts again, and its clients never noticed. */
    int fd = raw_connect(h);
    raw_hello(fd, 1, 1, NULL);
    tether__frame f;
    uint8_t buf[4096];
    int kind = raw_read_frame(fd, &f, buf, sizeof(buf));
    cr_assert_eq(kind, TETHER__WELCOME, "answer %d: %.*s", kind, 40, (const char *)buf + 4);
    close(fd);
    assert_host_serves(good);
    tether_client_unref(good);
    tether_host_unref(h);
}

Test(faults, a_host_raises_the_open_files_limit_unless_asked_not_to)
{
    struct rlimit was;
    ASSERT_OK(getrlimit(RLIMIT_NOFILE, &was));
    if (was.rlim_max <= 1024) {
        cr_skip_test("the hard limit (%llu) leaves nothing to raise",
                     (unsigned long long)was.rlim_max);
    }
    struct rlimit low = {1024, was.rlim_max};
    ASSERT_OK(setrlimit(RLIMIT_NOFILE, &low));
    tether_host_options keep = {.keep_fd_limit = true};
    tether_host *h = start_host_with(&keep);
    struct rlimit now;
    ASSERT_OK(getrlimit(RLIMIT_NOFILE, &now));
    cr_assert_eq(now.rlim_cur, 1024);
    tether_host_unref(h);
    tether_host_options dflt = {.name = "raises"};
    h = start_host_with(&dflt);
    ASSERT_OK(getrlimit(RLIMIT_NOFILE, &now));
    cr_assert_eq(now.rlim_cur, was.rlim_max);
    tether_host_unref(h);
    ASSERT_OK(setrlimit(RLIMIT_NOFILE, &was));
}

Test(faults, versions_are_read_whatever_the_size_of_their_numbers)
{
    tether_host *h = start_host_with(NULL);
    int fd = raw_connect(h);
    /* HELLO {"versions": [1, 2^64-1], "name": "v"}: it includes version 1. */
    static const uint8_t body[] =
        "\x92\x01\x82\xa8versions\x92\x01\xcf\xff\xff\xff\xff\xff\xff\xff\xff"
        "\xa4name\xa1v";
    raw_send_frame(fd, body, sizeof(body) - 1);
    tether__frame f;
    uint8_t buf[4096];
    cr_assert_eq(raw_read_frame(fd, &f, buf, sizeof(buf)), TETHER__WELCOME);
    close(fd);
    tether_host_unref(h);
}

Test(faults, newer_client_talks_to_this_host)
{
    tether_host *h = start_host_with(NULL);
    int fd = raw_connect(h);
    raw_hello(fd, 1, 9, NULL);
    tether__frame f;
    uint8_t buf[4096];
    cr_assert_eq(raw_read_frame(fd, &f, buf, sizeof(buf)), TETHER__WELCOME);
    tether__buf strings = TETHER__BUF_INIT;
    tether__welcome w;
    ASSERT_OK(tether__decode_welcome(&f.value, &strings, &w));
    cr_assert_eq(w.version, tether__protocol_version()); /* the highest both speak */
    tether__buf_done(&strings);
    close(fd);
    tether_host_unref(h);
}

Test(faults, handshake_time_limit)
{
    tether_host_options o = {.handshake_timeout_usec = 100000};
    tether_host *h = start_host_with(&o);
    uint64_t t0 = tether_now_usec();
    expect_refused(h, NULL, 0, "timeout");
    uint64_t took = tether_now_usec() - t0;
    cr_assert(took >= 80000 && took < 3000000, "took %llu us", (unsigned long long)took);
    expect_refused(h, "\x00\x00\x00\x10\x92", 5, "timeout"); /* half a frame */
    tether_host_unref(h);
}

Test(faults, client_limit)
{
    tether_host_options o = {.max_clients = 1};
    tether_host *h = start_host_with(&o);
    tether_client *first = test_client_connect("first", NULL);
    tether_client *second = test_client_new("second", NULL);
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_client_connect(second, &err), TETHER_EUSERS);
    cr_assert(strstr(err.message, "maximum") != NULL, "message: %s", err.message);
    tether_error_done(&err);
    assert_host_serves(first);
    tether_client_unref(first);
    /* A place frees up once the first leaves. */
    for (int i = 0; i < 100 && tether_host_get_client_count(h) > 0; i++) {
        usleep(10000);
    }
    ASSERT_OK(tether_client_connect(second, NULL));
    tether_client_unref(second);
    tether_host_unref(h);
}

static int64_t pings_seen;

static int
counted_ping_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    pings_seen++; /* the I/O thread only */
    return tether_request_reply(req, "x", pings_seen);
}

Test(faults, calls_beyond_the_peers_window_wait_for_room)
{
    tether_host_options o = {.max_in_flight = 2};
    tether_host *h = test_host_new(&o);
    ASSERT_OK(tether_host_add_service(h, "keep", TETHER_CONTEXT_IO, keep_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "ping", TETHER_CONTEXT_IO, counted_ping_handler, NULL));
    ASSERT_OK(tether_host_start(h));
    tether_client *c = test_client_connect("c", NULL);
    tether_conn *conn = tether_client_get_conn(c);
    tether_future *f1, *f2, *queued, *dropped;
    ASSERT_OK(tether_conn_call_async(conn, "keep", NULL, &f1, NULL));
    ASSERT_OK(tether_conn_call_async(conn, "keep", NULL, &f2, NULL));
    /* The client learnt the host's limit in the welcome: two more wait on its side. */
    ASSERT_OK(tether_conn_call_async(conn, "ping", NULL, &dropped, NULL));
    ASSERT_OK(tether_conn_call_async(conn, "ping", NULL, &queued, NULL));
    /* A notification made now takes no room, but goes out behind the waiting call. */
    ASSERT_OK(tether_conn_notify(conn, "ping", NULL));
    ASSERT_ERR(tether_future_wait(queued, 100000), TETHER_ETIMEDOUT);
    /* A waiting call cancelled never reaches the host. */
    tether_future_cancel(dropped);
    ASSERT_ERR(tether_future_get_result(dropped, NULL, NULL), TETHER_ECANCELED);
    /* A synchronous call waits too, within its timeout, and says why it gave up. */
    tether_call_options brief = {.timeout_usec = 100000};
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_conn_call(conn, "ping", &brief, NULL, &err, NULL), TETHER_ETIMEDOUT);
    cr_assert(strstr(err.message, "no room came free in the peer's window") != NULL, "%s",
              err.message);
    tether_error_done(&err);
    /* Room: the waiting call goes out, the first ping the host sees; the notification
     * second. */
    tether_future_cancel(f1);
    ASSERT_OK(tether_future_wait(queued, 5000000));
    tether_value *v = NULL;
    int64_t seen = 0;
    ASSERT_OK(tether_future_get_result(queued, &v, NULL));
    ASSERT_OK(tether_value_read(v, NULL, "x", &seen));
    cr_assert_eq(seen, 1, "the host saw %lld pings", (long long)seen);
    tether_value_unref(v);
    tether_future_cancel(f2);
    ASSERT_OK(tether_conn_call(conn, "ping", NULL, &v, NULL, NULL));
    ASSERT_OK(tether_value_read(v, NULL, "x", &seen));
    cr_assert_eq(seen, 3, "the host saw %lld pings", (long long)seen);
    tether_value_unref(v);
    tether_future_unref(f1);
    tether_future_unref(f2);
    tether_future_unref(queued);
    tether_future_unref(dropped);
    tether_client_unref(c);
    tether_host_unref(h);
}

Test(faults, in_flight_limit_enforced_by_the_host)
{
    tether_host_options o = {.max_in_flight = 1};
    tether_host *h = start_host_with(&o);
    int fd = raw_session(h);
    tether__buf b = TETHER__BUF_INIT;
    ASSERT_OK(tether__encode_request(&b, 1, 0, 0, "keep", 4, NULL, 0, NULL, 0, 0));
    ASSERT_OK(tether__encode_request(&b, 2, 0, 0, "keep", 4, NULL, 0, NULL, 0, 0));
    raw_send(fd, b.data, b.len);
    tether__buf_done(&b);
    tether__frame f;
    uint8_t buf[4096];
    cr_assert_eq(raw_read_frame(fd, &f, buf, sizeof(buf)), TETHER__RESPONSE);
    cr_assert_eq(f.id, 2);
    cr_assert(f.is_error);
    close(fd);
    tether_host_unref(h);
}

Test(faults, arguments_over_the_frame_limit)
{
    tether_host_options o = {.max_frame_size = 4096};
    tether_host *h = start_host_with(&o);
    tether_client *c = test_client_connect("c", NULL);
    static char big[8192];
    memset(big, 'a', sizeof(big) - 1);
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_conn_call(tether_client_get_conn(c), "ping", NULL, NULL, &err, "s", big),
               TETHER_EMSGSIZE);
    tether_error_done(&err);
    assert_host_serves(c);
    tether_client_unref(c);
    tether_host_unref(h);
}

static tether_value *
deep_value(int depth)
{
    uint8_t bytes[128];
    for (int i = 0; i < depth - 1; i++) {
        bytes[i] = 0x91; /* array of one */
    }
    bytes[depth - 1] = 0x90;
    tether_value *v = NULL;
    ASSERT_OK(tether_value_new_msgpack(bytes, (size_t)depth, &v));
    return v;
}

static int
deep_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    tether_value *v = deep_value(64);
    int r = tether_request_reply_value(req, v);
    tether_value_unref(v);
    return r;
}

Test(faults, values_nested_past_the_frame_limit_are_refused_by_the_sender)
{
    tether_host *h = start_host_with(NULL);
    ASSERT_OK(tether_host_add_service(h, "deep", TETHER_CONTEXT_IO, deep_handler, NULL));
    tether_client *c = test_client_connect("c", NULL);
    tether_value *v = deep_value(64);
    tether_error err = TETHER_ERROR_INIT;
    ASSERT_ERR(tether_conn_call(tether_client_get_conn(c), "ping", NULL, NULL, &err, "v", v),
               TETHER_EMSGSIZE);
    tether_error_done(&err);
    tether_value_unref(v);
    /* Just inside the limit goes through (the frame and args arrays take two levels). */
    v = deep_value(62);
    ASSERT_OK(tether_conn_call(tether_client_get_conn(c), "ping", NULL, NULL, NULL, "v", v));
    tether_value_unref(v);
    v = deep_value(63); /* one level too many inside the args array */
    ASSERT_ERR(tether_conn_call(tether_client_get_conn(c), "ping", NULL, NULL, NULL, "v", v),
               TETHER_EMSGSIZE);
    /* As the args themselves: 63 levels fit beside the frame's array, 64 do not. */
    ASSERT_OK(
        tether_conn_call_values(tether_client_get_conn(c), "ping", v, NULL, NULL, NULL, NULL));
    tether_value_unref(v);
    v = deep_value(64);
    ASSERT_ERR(tether_conn_call_values(tether_client_get_conn(c), "ping", v, NULL, NULL, NULL,
                                       NULL),
               TETHER_EMSGSIZE);
    tether_value_unref(v);
    /* Brackets of a format count the same way: the args array and 62 more fit. */
    char format[2 * 63 + 1];
    for (int levels = 62; levels <= 63; levels++) {
        memset(format, '[', (size_t)levels);
        memset(format + levels, ']', (size_t)levels);
        format[2 * levels] = '\0';
        int r = tether_conn_call(tether_client_get_conn(c), "ping", NULL, NULL, NULL, format);
        cr_assert_eq(r, levels == 62 ? 0 : TETHER_EMSGSIZE, "%d levels: %s", levels,
                     tether_strerror(r));
    }
    /* A result too deep comes back as an error, not a dropped connection. */
    ASSERT_ERR(tether_conn_call(tether_client_get_conn(c), "deep", NULL, NULL, &err, NULL),
               TETHER_EMSGSIZE);
    cr_assert_str_eq(err.type, "tether.MessageTooLarge");
    tether_error_done(&err);
    assert_host_serves(c);
    tether_client_unref(c);
    tether_host_unref(h);
}

static int
big_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    static uint8_t big[1536 * 1024];
    return tether_request_reply(req, "y", big, sizeof(big));
}

/* The host's output buffer for the client, as its I/O thread left it. */
static size_t
out_capacity(tether_host *h, const char *client)
{
    tether_conn *conn = NULL;
    ASSERT_OK(tether_host_get_client(h, client, &conn));
    pthread_mutex_lock(&conn->link.wlock);
    size_t cap = conn->link.out.cap;
    pthread_mutex_unlock(&conn->link.wlock);
    tether_conn_unref(conn);
    return cap;
}

Test(faults, a_big_output_buffer_is_kept_while_used_and_given_back_when_idle)
{
    tether_host *h = start_host_with(NULL);
    ASSERT_OK(tether_host_add_service(h, "big", TETHER_CONTEXT_IO, big_handler, NULL));
    tether_client *c = test_client_connect("bulk", NULL);
    for (int i = 0; i < 3; i++) {
        ASSERT_OK(tether_conn_call(tether_client_get_conn(c), "big", NULL, NULL, NULL, NULL));
    }
    /* Kept between calls that come close together: no fresh pages per call. */
    cr_assert_gt(out_capacity(h, "bulk"), 1024 * 1024);
    /* Given back once idle (1 s), so an idle client costs the host no big buffer. */
    size_t cap = 1;
    for (int i = 0; i < 300 && (cap = out_capacity(h, "bulk")) != 0; i++) {
        usleep(10000);
    }
    cr_assert_eq(cap, 0, "the idle connection still holds %zu bytes", cap);
    assert_host_serves(c);
    tether_client_unref(c);
    tether_host_unref(h);
}

/* A host serving in a child process until it is killed (or the test ends), with what
 * setup adds (NULL: nothing); returns its pid once it serves. */
static pid_t
fork_host_with(void (*setup)(tether_host *h))
{
    test_runtime_dir();
    int ready[2];
    cr_assert(pipe(ready) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* gone with the test, however it ends */
        tether_host *h = start_host_with(NULL);
        if (setup) {
            setup(h);
        }
        cr_assert(write(ready[1], "x", 1) == 1);
        pause();
        _exit(0);
    }
    char x;
    cr_assert(read(ready[0], &x, 1) == 1);
    close(ready[0]);
    close(ready[1]);
    return pid;
}

static pid_t
fork_host(void)
{
    return fork_host_with(NULL);
}

/* Stop the forked host and return once it has stopped (kill alone may return while it
 * still runs, and answers, on another CPU). */
static void
stop_host(pid_t pid)
{
    int status;
    cr_assert(kill(pid, SIGSTOP) == 0);
    cr_assert_eq(waitpid(pid, &status, WUNTRACED), pid);
    cr_assert(WIFSTOPPED(status));
}

Test(faults, peer_dies_mid_call, .timeout = 30)
{
    /* The host runs in a child process that exits while handling the call. */
    pid_t pid = fork_host();
    tether_client *c = test_client_connect("c", NULL);
    tether_future *f = NULL;
    ASSERT_OK(tether_conn_call_async(tether_client_get_conn(c), "keep", NULL, &f, NULL));
    usleep(50000);
    kill(pid, SIGKILL);
    uint64_t t0 = tether_now_usec();
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_conn_call(tether_client_get_conn(c), "keep", NULL, NULL, &err, NULL);
    cr_assert(r == TETHER_ECONNRESET || r == TETHER_ENOTCONN, "%d %s", r, tether_strerror(r));
    tether_error_done(&err);
    ASSERT_OK(tether_future_wait(f, 5000000));
    ASSERT_ERR(tether_future_get_result(f, NULL, NULL), TETHER_ECONNRESET);
    cr_assert(tether_now_usec() - t0 < 2000000, "the failure must not wait for the timeout");
    tether_future_unref(f);
    waitpid(pid, NULL, 0);
    tether_client_unref(c);
}

Test(faults, sync_call_fails_at_once_when_the_peer_dies, .timeout = 30)
{
    pid_t pid = fork_host();
    tether_client *c = test_client_connect("c", NULL);
    /* Kill the host while the synchronous call waits. */
    pid_t killer = fork();
    if (killer == 0) {
        usleep(100000);
        kill(pid, SIGKILL);
        _exit(0);
    }
    uint64_t t0 = tether_now_usec();
    ASSERT_ERR(tether_conn_call(tether_client_get_conn(c), "keep", NULL, NULL, NULL, NULL),
               TETHER_ECONNRESET);
    cr_assert(tether_now_usec() - t0 < 2000000);
    waitpid(killer, NULL, 0);
    waitpid(pid, NULL, 0);
    cr_assert_eq(tether_conn_is_connected(tether_client_get_conn(c)), 0);
    ASSERT_ERR(tether_conn_call(tether_client_get_conn(c), "ping", NULL, NULL, NULL, NULL),
               TETHER_ENOTCONN);
    tether_client_unref(c);
}

Test(faults, futures_time_out_after_a_lull_and_back_to_back, .timeout = 30)
{
    /* The sweep that times futures out keeps running between calls made one after
     * another and stops after a lull: a future started then must start it again. The
     * host, stopped, answers nothing. */
    pid_t pid = fork_host();
    tether_client *c = test_client_connect("lull", NULL);
    tether_conn *conn = tether_client_get_conn(c);
    stop_host(pid);
    tether_call_options o = {.timeout_usec = 60000};
    for (int i = 0; i < 4; i++) {
        if (i == 2) {
            usleep(100000); /* several sweep ticks without a future: it stops */
        }
        tether_future *f = NULL;
        uint64_t t0 = tether_now_usec();
        ASSERT_OK(tether_conn_call_async(conn, "ping", &o, &f, NULL));
        ASSERT_OK(tether_future_wait(f, 5000000));
        ASSERT_ERR(tether_future_get_result(f, NULL, NULL), TETHER_ETIMEDOUT);
        uint64_t took = tether_now_usec() - t0;
        cr_assert(took >= 50000 && took < 1000000, "call %d took %llu us", i,
                  (unsigned long long)took);
        tether_future_unref(f);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    tether_client_unref(c);
}

/* ==== big arguments sent from the caller's memory ===================================== */

/* FNV-1a: enough to tell bytes apart, the same on both sides of a fork. */
static uint64_t
hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603u;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ p[i]) * 1099511628211u;
    }
    return h;
}

static uint64_t last_hash; /* the forked host's: of the last bytes "hash" received */

static int
hash_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    const void *p;
    size_t n;
    int r = tether_request_read(req, "y", &p, &n);
    if (r < 0) {
        return r;
    }
    last_hash = hash_bytes(p, n);
    return tether_request_reply(req, "u", last_hash);
}

static int
last_hash_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply(req, "u", last_hash);
}

/* Call method with args given as msgpack bytes (a binding's way: the way that lends). */
static uint64_t
call_hash(tether_conn *conn, const char *method, const uint8_t *args, size_t n, uint64_t timeout,
          int expect)
{
    tether_call_options o = {.timeout_usec = timeout};
    tether_msgpack_args a = {.args = args, .args_size = n};
    tether_value *v = NULL;
    int r = tether_conn_call_msgpack(conn, method, args ? &a : NULL, &o, &v, NULL);
    cr_assert_eq(r, expect, "%s: %s", method, tether_strerror(r));
    uint64_t h = 0;
    if (r == 0) {
        ASSERT_OK(tether_value_read(v, NULL, "u", &h));
    }
    tether_value_unref(v);
    return h;
}

static void
add_hash_services(tether_host *h)
{
    ASSERT_OK(tether_host_add_service(h, "hash", TETHER_CONTEXT_IO, hash_handler, NULL));
    ASSERT_OK(tether_host_add_service(h, "last_hash", TETHER_CONTEXT_IO, last_hash_handler, NULL));
}

Test(faults, big_arguments_lent_to_a_peer_that_stops_reading_arrive_intact, .timeout = 60)
{
    /* A big argument goes out from the caller's memory; when the call ends before the
     * peer read it all (here: its timeout, the host stopped), the rest is copied, so the
     * caller may reuse its memory at once and the peer still gets what was sent. */
    pid_t pid = fork_host_with(add_hash_services);
    tether_client *c = test_client_connect("lender", NULL);
    tether_conn *conn = tether_client_get_conn(c);
    /* [bin of n bytes] */
    size_t n = 3u * 1024 * 1024 + 1, size = n + 6;
    uint8_t *args = malloc(size), *big = args + 6;
    cr_assert_not_null(args);
    memcpy(args, (uint8_t[]){0x91, 0xc6, 0, (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n}, 6);
    for (size_t i = 0; i < n; i++) {
        big[i] = (uint8_t)(i * 7 + (i >> 12));
    }
    uint64_t want = hash_bytes(big, n);
    cr_assert_eq(call_hash(conn, "hash", args, size, 0, 0), want);

    stop_host(pid);
    big[0] ^= 1;
    want = hash_bytes(big, n);
    call_hash(conn, "hash", args, size, 200000, TETHER_ETIMEDOUT);
    memset(big, 0xee, n); /* the caller's memory is its own again */
    free(args);
    kill(pid, SIGCONT);
    /* The timed-out request still reached the host whole, and frames stay in order. */
    cr_assert_eq(call_hash(conn, "last_hash", NULL, 0, 10000000, 0), want);
    assert_host_serves(c);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    tether_client_unref(c);
}

/* ==== big replies given to the link ==================================================== */

/* n bytes that seed tells apart. */
static void
fill_blob(uint8_t *p, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++) {
        p[i] = (uint8_t)(seed * 131 + i * 7 + (i >> 11));
    }
}

/* blob(seed, n, as_value): n bytes of fill_blob, replied from a format ("y", whose built
 * buffer the link takes) or as a value (which the link holds a reference of). */
static int
blob_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    uint64_t seed, n;
    bool as_value;
    int r = tether_request_read(req, "uub", &seed, &n, &as_value);
    if (r < 0) {
        return r;
    }
    uint8_t *p = malloc(n ? n : 1);
    cr_assert_not_null(p);
    fill_blob(p, n, seed);
    if (as_value) {
        tether_value *v = NULL;
        ASSERT_OK(tether_value_new(&v, "y", p, (size_t)n));
        r = tether_request_reply_value(req, v);
        tether_value_unref(v);
    } else {
        r = tether_request_reply(req, "y", p, (size_t)n);
    }
    free(p);
    return r;
}

static void
assert_blob(tether_value *v, uint64_t seed, size_t n)
{
    const void *p;
    size_t got;
    ASSERT_OK(tether_value_read(v, NULL, "y", &p, &got));
    cr_assert_eq(got, n);
    uint8_t *want = malloc(n ? n : 1);
    cr_assert_not_null(want);
    fill_blob(want, n, seed);
    cr_assert(memcmp(p, want, n) == 0, "blob %llu of %zu bytes differs", (unsigned long long)seed,
              n);
    free(want);
}

Test(faults, big_replies_from_many_threads_arrive_whole_and_in_place, .timeout = 60)
{
    /* Pool threads reply big values at once: one reply's bytes go out from where they
     * were built while the others wait behind it, copied; every reply arrives whole. */
    tether_host *h = start_host_with(NULL);
    ASSERT_OK(tether_host_add_service(h, "blob", TETHER_CONTEXT_POOL, blob_handler, NULL));
    tether_client *c = test_client_connect("blobs", NULL);
    tether_conn *conn = tether_client_get_conn(c);
    enum {
        CALLS = 24
    };
    static const size_t sizes[] = {65535, 65536, 65537, 300000, (1u << 20) + 3, 3u << 20};
    for (int round = 0; round < 3; round++) {
        tether_future *f[CALLS];
        for (int i = 0; i < CALLS; i++) {
            size_t n = sizes[(i + round) % 6];
            ASSERT_OK(tether_conn_call_async(conn, "blob", NULL, &f[i], "uub", (uint64_t)i,
                                             (uint64_t)n, (i & 1) != 0));
        }
        for (int i = 0; i < CALLS; i++) {
            ASSERT_OK(tether_future_wait(f[i], 20000000));
            tether_value *v = NULL;
            ASSERT_OK(tether_future_get_result(f[i], &v, NULL));
            assert_blob(v, (uint64_t)i, sizes[(i + round) % 6]);
            tether_value_unref(v);
            tether_future_unref(f[i]);
        }
    }
    assert_host_serves(c);
    tether_client_unref(c);
    tether_host_unref(h);
}

Test(faults, a_client_gone_during_a_big_reply_costs_the_host_nothing, .timeout = 60)
{
    /* A client asks for big replies and dies without reading them: the host's link is
     * done with a reply's bytes still given to it, which it frees (ASan tells), and it
     * serves the next client. */
    tether_host *h = start_host_with(NULL);
    ASSERT_OK(tether_host_add_service(h, "blob", TETHER_CONTEXT_IO, blob_handler, NULL));
    for (int i = 0; i < 4; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            tether_client *c = test_client_connect("reader-that-dies", NULL);
            tether_future *f[4];
            for (int k = 0; k < 4; k++) {
                tether_conn_call_async(tether_client_get_conn(c), "blob", NULL, &f[k], "uub",
                                       (uint64_t)k, (uint64_t)(3u << 20), (k & 1) != 0);
            }
            tether_conn_flush(tether_client_get_conn(c));
            usleep(20000);
            _exit(0); /* nothing read, nothing closed in order */
        }
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
    }
    tether_client *c = test_client_connect("after", NULL);
    tether_value *v = NULL;
    ASSERT_OK(tether_conn_call(tether_client_get_conn(c), "blob", NULL, &v, NULL, "uub",
                               (uint64_t)9, (uint64_t)(1u << 20), true));
    assert_blob(v, 9, 1u << 20);
    tether_value_unref(v);
    assert_host_serves(c);
    tether_client_unref(c);
    tether_host_unref(h);
}

Test(faults, other_clients_unaffected_by_a_protocol_error)
{
    tether_host *h = start_host_with(NULL);
    tether_client *a = test_client_connect("a", NULL);
    tether_client *b = test_client_connect("b", NULL);
    for (int i = 0; i < 10; i++) {
        int fd = raw_session(h);
        static const uint8_t bad[] = {0x93, 0x06, 0xc0};
        raw_send_frame(fd, bad, sizeof(bad));
        close(fd);
        assert_host_serves(a);
        assert_host_serves(b);
    }
    tether_client_unref(a);
    tether_client_unref(b);
    tether_host_unref(h);
}

/* The number of open fds once it has not changed for 100 ms (at most 3 s). */
static int
settled_fd_count(void)
{
    int n = count_open_fds();
    int same = 0;
    for (int i = 0; i < 300 && same < 10; i++) {
        usleep(10000);
        int m = count_open_fds();
        same = m == n ? same + 1 : 0;
        n = m;
    }
    return n;
}

Test(faults, no_fd_leak_over_many_connections)
{
    tether_host *h = start_host_with(NULL);
    /* The first synchronous call gives this thread its eventfd, kept for its lifetime. */
    tether_client *warm = test_client_connect("warm", NULL);
    assert_host_serves(warm);
    tether_client_unref(warm);
    /* The host closes its side when it reads the end of the stream, a moment after the
     * client count drops: wait until the number of open fds settles. */
    int before = settled_fd_count();
    for (int i = 0; i < 50; i++) {
        tether_client *c = test_client_connect("c", NULL);
        assert_host_serves(c);
        tether_client_unref(c);
    }
    int after = settled_fd_count();
    cr_assert_eq(after, before, "%d fds left behind by 50 connections", after - before);
    tether_host_unref(h);
}

/* Send a REQUEST for "ping" (id 1) whose one argument is the REF [owner, id, "X"]. */
static void
send_ping_with_ref(int fd, uint8_t owner, uint8_t id, uint64_t target)
{
    uint8_t body[] = {0x98, 0x04, 0x01, 0x00, (uint8_t)target, 0xa4, 'p',  'i', 'n',  'g', 0x91,
                      0xc7, 0x05, 0x01, 0x93, owner,           id,   0xa1, 'X', 0x80, 0x00};
    raw_send_frame(fd, body, sizeof(body));
}

/* Read exactly one frame (the host may send the next right behind it) and decode it. */
static int
read_one_frame(int fd, tether__frame *f, uint8_t *buf, size_t cap)
{
    size_t want = TETHER__FRAME_HEADER_SIZE, got = 0;
    while (got < want) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        cr_assert_eq(poll(&p, 1, 5000), 1, "no frame from the host");
        ssize_t n = recv(fd, buf + got, want - got, 0);
        cr_assert(n > 0, "the host closed the connection");
        got += (size_t)n;
        if (got == TETHER__FRAME_HEADER_SIZE) {
            want += tether__frame_length(buf);
            cr_assert(want <= cap);
        }
    }
    ASSERT_OK(tether__frame_decode(buf + TETHER__FRAME_HEADER_SIZE,
                                   want - TETHER__FRAME_HEADER_SIZE, NULL, f));
    return f->kind;
}

/* Add up the counts a RELEASE frame gives back (all for object 5 here). */
static uint64_t
released_in(const tether__frame *f)
{
    tether__mp_reader rd = {f->value.ptr, f->value.ptr + f->value.len};
    uint32_t n, k;
    uint64_t total = 0;
    ASSERT_OK(tether__mp_read_array(&rd, &n));
    for (uint32_t j = 0; j < n; j++) {
        uint64_t id, count;
        ASSERT_OK(tether__mp_read_array(&rd, &k));
        ASSERT_OK(tether__mp_read_uint(&rd, &id));
        ASSERT_OK(tether__mp_read_uint(&rd, &count));
        cr_assert_eq(id, 5);
        total += count;
    }
    return total;
}

/* The next RESPONSE (RELEASE frames on the way are tallied in *released): its error
 * type, or NULL for a success. Newly allocated. */
static char *
next_response(int fd, uint64_t *released)
{
    tether__frame f;
    uint8_t buf[4096];
    while (read_one_frame(fd, &f, buf, sizeof(buf)) == TETHER__RELEASE) {
        *released += released_in(&f);
    }
    cr_assert_eq(f.kind, TETHER__RESPONSE);
    if (!f.is_error) {
        return NULL;
    }
    char *type = NULL;
    tether_value *v = NULL;
    ASSERT_OK(tether__value_new_copy(f.value.ptr, f.value.len, &v));
    ASSERT_OK(tether__value_error_fields(v, &type, NULL, NULL));
    tether_value_unref(v);
    return type;
}

static void
expect_error(int fd, uint64_t *released, const char *type)
{
    char *got = next_response(fd, released);
    cr_assert(got && strcmp(got, type) == 0, "got %s, want %s", got ? got : "success", type);
    free(got);
}

Test(faults, object_references_from_a_peer_are_checked_and_counted)
{
    tether_host *h = start_host_with(NULL);
    tether_client *good = test_client_connect("good", NULL);
    int fd = raw_session(h);
    uint64_t released = 0;

    /* An object of the host's that this connection never received. */
    send_ping_with_ref(fd, 1, 99, 0);
    expect_error(fd, &released, "tether.NoSuchObject");
    /* A method call on an object id the host never exported. */
    send_ping_with_ref(fd, 0, 5, 42);
    expect_error(fd, &released, "tether.NoSuchObject");
    /* Releasing what it never had is ignored. */
    static const uint8_t release[] = {0x92, 0x08, 0x91, 0x92, 0xcd, 0x03, 0x09, 0x05};
    raw_send_frame(fd, release, sizeof(release));

    /* A REF of ours: the host makes a proxy for the call and, once done with it, gives
     * the reference back with a RELEASE, as it did for the one sent with the failed
     * method call above. */
    send_ping_with_ref(fd, 0, 5, 0);
    char *error = next_response(fd, &released);
    cr_assert_null(error, "ping failed: %s", error);
    tether__frame f;
    uint8_t buf[4096];
    while (released < 2 && read_one_frame(fd, &f, buf, sizeof(buf)) == TETHER__RELEASE) {
        released += released_in(&f);
    }
    cr_assert_eq(released, 2, "both references to object 5 given back");
    close(fd);

    /* A REF that is broken (object id 0 names nothing, by definition) makes the frame
     * malformed, as a broken ERROR does: the host closes that connection, and only it. */
    fd = raw_session(h);
    send_ping_with_ref(fd, 0, 0, 0);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 5000), 1);
    cr_assert_eq(recv(fd, buf, sizeof(buf), 0), 0, "the host closes the connection");
    close(fd);
    assert_host_serves(good);
    tether_client_unref(good);
    tether_host_unref(h);
}

static int
pong_handler(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply(req, "s", "pong");
}

/*
 * A host may call a client at once: its REQUEST can arrive with the WELCOME, in the
 * bytes the client's handshake read. The client's I/O thread serves those when it takes
 * the connection over, also when the application has queued output meanwhile (a
 * notification sent right after connecting), which makes the I/O thread ask the poll
 * set what woke it: the buffered request is no event of the socket's.
 */
Test(faults, a_request_that_came_with_the_welcome_is_served_despite_queued_output)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    /* The "host" end: WELCOME and a REQUEST in one write, before the client reads. */
    tether__buf b = TETHER__BUF_INIT;
    tether__welcome w = {.version = 1,
                         .name = "raw-host",
                         .pid = getpid(),
                         .max_frame_size = 1 << 20,
                         .max_in_flight = 16,
                         .client_name = "early-bird"};
    ASSERT_OK(tether__encode_welcome(&b, &w));
    ASSERT_OK(tether__encode_request(&b, 7, 0, 0, "ping", 4, NULL, 0, NULL, 0, 0));
    raw_send(sv[0], b.data, b.len);
    tether__buf_done(&b);

    tether_client_options o = {.name = "early-bird", .fd = sv[1], .no_reconnect = true};
    tether_client *c = test_client_new_with(&o);
    ASSERT_OK(tether_client_add_service(c, "ping", TETHER_CONTEXT_IO, pong_handler, NULL));
    ASSERT_OK(tether_client_connect(c, NULL));
    ASSERT_OK(tether_conn_notify(tether_client_get_conn(c), "note", NULL));

    /* HELLO, then whatever the client sends: the NOTIFY, and the RESPONSE to id 7. */
    tether__frame f;
    uint8_t buf[4096];
    cr_assert_eq(read_one_frame(sv[0], &f, buf, sizeof(buf)), TETHER__HELLO);
    bool answered = false;
    for (int i = 0; i < 8 && !answered; i++) {
        int kind = read_one_frame(sv[0], &f, buf, sizeof(buf));
        answered = kind == TETHER__RESPONSE && f.id == 7 && !f.is_error;
    }
    cr_assert(answered, "the request that came with the welcome was answered");
    tether_client_unref(c);
    close(sv[0]);
}
