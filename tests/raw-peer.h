/*
 * raw-peer: a peer over a raw socket, for the C tests that must see or send the bytes
 * themselves (a refusal, a malformed frame, a client that never reads): connect, send
 * a hello, read one frame, wait for the host to hang up.
 *
 * The raw_*() functions that return a negative errno use no Criterion assertion, so a
 * forked child (process-helpers.h) can use them too; the others assert, for the test's
 * own process.
 */
#ifndef TETHER_TEST_RAW_PEER_H
#define TETHER_TEST_RAW_PEER_H

#include "helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "codec/frame.h"
#include "codec/handshake.h"

/* ---- no Criterion: usable in a child ----------------------------------------------------- */

/* Connect to a "unix:PATH" address. Returns the fd, or a negative errno. */
static inline int
raw_connect_address(const char *address)
{
    if (strncmp(address, "unix:", 5) != 0) {
        return -EINVAL;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path, sizeof(un.sun_path), "%s", address + 5);
    if (connect(fd, (struct sockaddr *)&un, sizeof(un)) < 0) {
        int r = -errno;
        close(fd);
        return r;
    }
    return fd;
}

/* Send all n bytes (never SIGPIPE). Returns 0 or a negative errno. */
static inline int
raw_send_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return w < 0 ? -errno : -EIO;
        }
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Append a hello frame from a C peer of this process called name to b. */
static inline int
raw_encode_hello(tether__buf *b, const char *name, uint32_t min_version, uint32_t max_version,
                 const char *token)
{
    tether__hello hello = {.min_version = min_version,
                           .max_version = max_version,
                           .name = name,
                           .pid = getpid(),
                           .language = "c",
                           .token = token};
    return tether__encode_hello(b, &hello);
}

/*
 * Receive one whole frame into buf (cap bytes), waiting up to timeout_ms for each read.
 * Returns the length of its body, which starts at buf + TETHER__FRAME_HEADER_SIZE, with
 * the bytes received in *ret_got (more than the frame if more came); -ETIMEDOUT when
 * nothing came in time, -ECONNRESET when the connection ended first, -EMSGSIZE for a
 * frame larger than buf, or another negative errno.
 */
static inline int
raw_recv_frame(int fd, uint8_t *buf, size_t cap, int timeout_ms, size_t *ret_got)
{
    size_t got = 0;
    for (;;) {
        if (got >= TETHER__FRAME_HEADER_SIZE) {
            uint32_t len = tether__frame_length(buf);
            if (len > cap - TETHER__FRAME_HEADER_SIZE) {
                return -EMSGSIZE;
            }
            if (got >= TETHER__FRAME_HEADER_SIZE + len) {
                *ret_got = got;
                return (int)len;
            }
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = poll(&p, 1, timeout_ms);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return n == 0 ? -ETIMEDOUT : -errno;
        }
        ssize_t r = recv(fd, buf + got, cap - got, 0);
        if (r <= 0) {
            return r == 0 ? -ECONNRESET : -errno;
        }
        got += (size_t)r;
    }
}

/* ---- Criterion: the test's own process ----------------------------------------------- */

/* A raw connection to the host's Unix socket. */
static inline int
raw_connect(tether_host *h)
{
    const char *address = tether_host_get_address(h);
    int fd = raw_connect_address(address);
    cr_assert(fd >= 0, "connect to %s: %s", address, strerror(-fd));
    return fd;
}

/* A raw connection to the loopback TCP port. */
static inline int
raw_tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert(connect(fd, (struct sockaddr *)&in, sizeof(in)) == 0, "connect: %s", strerror(errno));
    return fd;
}

static inline void
raw_send(int fd, const void *p, size_t n)
{
    int r = raw_send_all(fd, p, n);
    cr_assert(r == 0, "send of %zu bytes: %s", n, strerror(-r));
}

/* Send body as one frame: its length prefix, then body. */
static inline void
raw_send_frame(int fd, const void *body, size_t n)
{
    uint8_t hdr[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
    raw_send(fd, hdr, 4);
    raw_send(fd, body, n);
}

/* Send the hello of a C peer called "raw". */
static inline void
raw_hello(int fd, uint32_t min_version, uint32_t max_version, const char *token)
{
    tether__buf b = TETHER__BUF_INIT;
    ASSERT_OK(raw_encode_hello(&b, "raw", min_version, max_version, token));
    raw_send(fd, b.data, b.len);
    tether__buf_done(&b);
}

/* Read one frame (bounded by 5 s) and decode it into f, whose spans point into buf;
 * returns its kind. */
static inline int
raw_read_frame(int fd, tether__frame *f, uint8_t *buf, size_t cap)
{
    size_t got;
    int len = raw_recv_frame(fd, buf, cap, 5000, &got);
    cr_assert(len >= 0, "no whole frame from the host: %s", strerror(-len));
    ASSERT_OK(tether__frame_decode(buf + TETHER__FRAME_HEADER_SIZE, (size_t)len, NULL, f));
    return f->kind;
}

/* The host closes the connection (EOF or reset) within 5 s; what it sent first is read
 * and dropped. */
static inline void
raw_expect_close(int fd)
{
    uint8_t buf[4096];
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        cr_assert(poll(&p, 1, 5000) == 1, "the host kept the connection open");
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) {
            return;
        }
    }
}

#endif
