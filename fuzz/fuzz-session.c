/*
 * fuzz-session: libFuzzer target for a host's side of a whole connection, the handshake
 * and the object operations included. fuzz-frame sees one frame's bytes; this one sees
 * what a host does with a stream of them: the handshake state, REFs bound and released
 * across frames, methods and operations (__tether_describe__, __getattr__, __len__ ...)
 * on an exported object, objects made and released, the built-in services.
 *
 * The input's first byte chooses the start: odd, a well-formed HELLO is sent first and
 * the rest of the input follows it; even, the rest is the whole stream, handshake
 * included. The stream goes to a real host (made once, serving adopted socket pairs,
 * every handler on its I/O thread) on a new connection, which is then half-closed; the
 * input is done when the host has closed its end. A crash, a sanitizer report, a host
 * that stops answering, or a connection that outlives its input is a bug.
 *
 * The host exports one object, made before any other so that its id is 1 (object ids
 * are numbered per process): its service root() returns it, and the seeds in
 * fuzz/corpus/session/ call it by that id.
 *
 * Build: make fuzz (build-fuzz/fuzz/fuzz-session)
 * Run:   build-fuzz/fuzz/fuzz-session -max_total_time=120 fuzz/corpus/session
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz-target.h"
#include "codec/frame.h"
#include "codec/handshake.h"
#include "tether.h"
#include "util/buf.h"


/* The host waits this long at most for the stream to end (a hang is a finding). */
#define DRAIN_MS 5000

static tether_host *host;
static tether_object *root;
static int64_t counter;

static int
thing_get(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply(req, "x", counter);
}

static int
thing_set(tether_request *req, void *userdata)
{
    (void)userdata;
    int64_t v;
    if (tether_request_read(req, "x", &v) < 0) {
        return TETHER_EINVAL;
    }
    counter = v;
    return tether_request_reply(req, "n");
}

static int
thing_len(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply(req, "i", 3);
}

static int
thing_getattr(tether_request *req, void *userdata)
{
    (void)userdata;
    const char *name;
    if (tether_request_read(req, "s", &name) < 0 || !name) {
        return TETHER_EINVAL;
    }
    if (strcmp(name, "count") == 0) {
        return tether_request_reply(req, "x", counter);
    }
    return tether_request_reply_error(req, "AttributeError", "no attribute '%s'", name);
}

static int thing_spawn(tether_request *req, void *userdata);

static const tether_method thing_methods[] = {
    {"get", TETHER_CONTEXT_IO, thing_get},     {"set", TETHER_CONTEXT_IO, thing_set},
    {"__len__", TETHER_CONTEXT_IO, thing_len}, {"__getattr__", TETHER_CONTEXT_IO, thing_getattr},
    {"spawn", TETHER_CONTEXT_IO, thing_spawn}, {NULL, 0, NULL},
};

static const tether_class thing_class = {.name = "Thing", .methods = thing_methods};

/* A new object for the caller, released when its RELEASE (or the connection's end) comes. */
static int
thing_spawn(tether_request *req, void *userdata)
{
    (void)userdata;
    tether_object *obj = NULL;
    int r = tether_conn_new_object(tether_request_get_conn(req), &thing_class, NULL, &obj);
    if (r < 0) {
        return r;
    }
    r = tether_request_reply(req, "o", obj);
    tether_object_unref(obj);
    return r;
}

static int
serve_root(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply(req, "o", root);
}

static int
serve_echo(tether_request *req, void *userdata)
{
    (void)userdata;
    tether_value *args = tether_request_get_args(req);
    return tether_request_reply_value(req, args);
}

static void
start_host(void)
{
    char dir[64]; /* the host's runtime directory, this process's own */
    snprintf(dir, sizeof(dir), "/tmp/tether-fuzz-session-%ld", (long)getpid());
    CHECK(mkdir(dir, 0700) == 0 || errno == EEXIST);
    tether_host_options o = {
        .name = "fuzz",
        .runtime_dir = dir,
        .no_unix = true,
        .builtin_services = TETHER_BUILTIN_CLIENTS | TETHER_BUILTIN_CALL_CLIENT,
        .handshake_timeout_usec = 1000 * 1000,
        .default_timeout_usec = 1000 * 1000,
    };
    CHECK(tether_host_new(&o, &host) == 0);
    CHECK(tether_host_new_object(host, &thing_class, NULL, &root) == 0);
    CHECK(tether_object_get_id(root) == 1);
    CHECK(tether_host_add_service(host, "root", TETHER_CONTEXT_IO, serve_root, NULL) == 0);
    CHECK(tether_host_add_service(host, "echo", TETHER_CONTEXT_IO, serve_echo, NULL) == 0);
    CHECK(tether_host_start(host) == 0);
    rmdir(dir);
}

static void
send_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return; /* the host closed: what is left is not read */
        }
        p += w;
        n -= (size_t)w;
    }
}

/* Read what the host sends until it closes its end. */
static void
drain(int fd)
{
    uint8_t buf[65536];
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = poll(&p, 1, DRAIN_MS);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        CHECK(n == 1); /* the host must end a connection whose peer has stopped sending */
        ssize_t r = recv(fd, buf, sizeof(buf), 0);
        if (r <= 0) {
            return;
        }
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!host) {
        start_host();
    }
    if (size == 0) {
        return 0;
    }
    bool with_hello = data[0] & 1;
    data++;
    size--;

    int fds[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    CHECK(tether_host_adopt_fd(host, fds[0]) == 0);
    /* The host reads and writes at once, so a large input never fills both buffers. */
    if (with_hello) {
        tether__buf b = TETHER__BUF_INIT;
        tether__hello hello = {
            .min_version = 1, .max_version = 1, .name = "fuzz", .pid = 1, .language = "c"};
        CHECK(tether__encode_hello(&b, &hello) == 0);
        send_all(fds[1], tether__buf_head(&b), tether__buf_pending(&b));
        tether__buf_done(&b);
    }
    send_all(fds[1], data, size);
    shutdown(fds[1], SHUT_WR);
    drain(fds[1]);
    close(fds[1]);
    return 0;
}
