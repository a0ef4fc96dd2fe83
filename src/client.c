/*
 * client: the connecting side. Resolves the host's address (explicit, $TETHER_ADDRESS,
 * or the host named "default" in the runtime directory), connects, and runs the
 * handshake on the calling thread with a deadline, before the connection is handed to
 * the I/O thread: a refusal is thus a plain return code with the host's reason, and no
 * call can be made on a half-open connection.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alloc.h"
#include "conn.h"
#include "transport.h"
#include "value.h"

#define DEFAULT_CONNECT_USEC (5ull * 1000 * 1000)

struct tether_client {
    atomic_uint refs;
    tether__endpoint *ep;
    char *address, *token, *runtime_dir, *language, *language_version;
    int fd;
    uint64_t connect_timeout_usec;
    pthread_mutex_t lock;
    tether_conn *conn; /* guarded by lock */
    char *host_name;
    bool connecting;   /* guarded by lock */
};

static void
hook_control(tether__endpoint *ep, tether_conn *c, const char *action, const char *reason)
{
    /* Reset and disconnect both end this connection; reconnecting comes with issue #3. */
    tether__log(ep, TETHER_LOG_NOTICE, "the host asked to %s: %s", action, reason);
    tether__conn_fail(c, -ECONNRESET, "the host asked the client to disconnect");
}

static char *
dup_or_null(const char *s, int *r)
{
    if (!s) {
        return NULL;
    }
    char *d = tether__strdup(s);
    if (!d) {
        *r = -ENOMEM;
    }
    return d;
}

int
tether_client_new(const tether_client_options *opts, tether_client **ret_client)
{
    if (!ret_client) {
        return -EINVAL;
    }
    tether_client_options zero = {0};
    if (!opts) {
        opts = &zero;
    }
    tether_client *cl = tether__calloc(1, sizeof(*cl));
    if (!cl) {
        return -ENOMEM;
    }
    extern char *program_invocation_short_name;
    const char *name = opts->name && *opts->name ? opts->name : program_invocation_short_name;
    int r = tether__endpoint_new(name, false, &cl->ep);
    if (r < 0) {
        tether__free(cl);
        return r;
    }
    atomic_init(&cl->refs, 1);
    pthread_mutex_init(&cl->lock, NULL);
    cl->ep->owner = cl;
    cl->ep->hooks.control = hook_control;
    if (opts->max_frame_size) {
        cl->ep->max_frame_size = opts->max_frame_size;
    }
    if (opts->max_in_flight) {
        cl->ep->max_in_flight = opts->max_in_flight;
    }
    if (opts->default_timeout_usec) {
        cl->ep->default_timeout_usec = opts->default_timeout_usec;
    }
    if (opts->max_output_bytes) {
        cl->ep->max_output_bytes = opts->max_output_bytes;
    }
    cl->ep->log = opts->log;
    cl->ep->log_userdata = opts->log_userdata;
    if (opts->log_level) {
        cl->ep->log_level = opts->log_level;
    }
    cl->fd = opts->fd >= 3 ? opts->fd : -1;
    cl->connect_timeout_usec =
        opts->connect_timeout_usec ? opts->connect_timeout_usec : DEFAULT_CONNECT_USEC;
    r = 0;
    cl->address = dup_or_null(opts->address, &r);
    cl->token = dup_or_null(opts->token, &r);
    cl->language = dup_or_null(opts->language ? opts->language : "c", &r);
    cl->language_version = dup_or_null(opts->language_version ? opts->language_version : "", &r);
    if (r == 0) {
        r = tether__runtime_dir(opts->runtime_dir, &cl->runtime_dir);
    }
    if (r < 0) {
        tether_client_unref(cl);
        return r;
    }
    *ret_client = cl;
    return 0;
}

tether_client *
tether_client_ref(tether_client *cl)
{
    if (cl) {
        atomic_fetch_add_explicit(&cl->refs, 1, memory_order_relaxed);
    }
    return cl;
}

static void
detach_owner(void *arg)
{
    tether__endpoint *ep = arg;
    ep->owner = NULL;
}

tether_client *
tether_client_unref(tether_client *cl)
{
    if (!cl || atomic_fetch_sub_explicit(&cl->refs, 1, memory_order_acq_rel) != 1) {
        return NULL;
    }
    tether_client_close(cl);
    tether__ioloop_run_sync(cl->ep->loop, detach_owner, cl->ep);
    tether__mainq_discard_all(cl->ep->mainq);
    tether_conn_unref(cl->conn);
    if (cl->fd >= 0) {
        close(cl->fd);
    }
    tether__free(cl->address);
    tether__free(cl->token);
    tether__free(cl->runtime_dir);
    tether__free(cl->language);
    tether__free(cl->language_version);
    tether__free(cl->host_name);
    pthread_mutex_destroy(&cl->lock);
    tether__endpoint *ep = cl->ep;
    tether__free(cl);
    tether__endpoint_unref(ep);
    return NULL;
}

int
tether_client_add_service(tether_client *cl, const char *name, tether_context context,
                          tether_handler_fn handler, void *userdata)
{
    if (!cl) {
        return -EINVAL;
    }
    return tether__endpoint_add_service(cl->ep, name, context, handler, userdata);
}

int
tether_resolve_address(const char *address, const char *runtime_dir, char **ret_address)
{
    if (!ret_address) {
        return -EINVAL;
    }
    char *dir = NULL;
    int r = tether__runtime_dir(runtime_dir, &dir);
    if (r < 0) {
        return r;
    }
    if (!address || !*address) {
        address = getenv("TETHER_ADDRESS");
    }
    if (!address || !*address) {
        address = "default";
    }
    tether__addr addr;
    r = tether__addr_parse(address, dir, &addr);
    tether__free(dir);
    if (r < 0) {
        return r;
    }
    char buf[200];
    tether__addr_format(&addr, buf, sizeof(buf));
    *ret_address = strdup(buf);
    return *ret_address ? 0 : -ENOMEM;
}

static int
refusal_code(const char *code)
{
    if (strcmp(code, "token") == 0) {
        return -EACCES;
    }
    if (strcmp(code, "version") == 0) {
        return -EPROTONOSUPPORT;
    }
    if (strcmp(code, "busy") == 0) {
        return -EUSERS;
    }
    if (strcmp(code, "timeout") == 0) {
        return -ETIMEDOUT;
    }
    return -EPROTO;
}

/* Read exactly one frame into buf (which may keep bytes after it). */
static int
read_frame(int fd, tether__buf *buf, uint32_t max_frame, uint64_t deadline, size_t *ret_len)
{
    for (;;) {
        if (tether__buf_pending(buf) >= TETHER__FRAME_HEADER_SIZE) {
            uint32_t len = tether__frame_length(tether__buf_head(buf));
            if (len > max_frame) {
                return -EMSGSIZE;
            }
            if (tether__buf_pending(buf) >= TETHER__FRAME_HEADER_SIZE + (size_t)len) {
                *ret_len = len;
                return 0;
            }
        }
        int r = tether__buf_reserve(buf, 4096);
        if (r < 0) {
            return r;
        }
        r = tether__read_some(fd, buf->data + buf->len, buf->cap - buf->len, deadline);
        if (r < 0) {
            return r;
        }
        if (r == 0) {
            return -ECONNRESET;
        }
        buf->len += (size_t)r;
    }
}

static int
handshake(tether_client *cl, int fd, bool is_tcp, int port, tether__buf *in,
          tether__welcome *ret_welcome, tether__buf *strings, tether_error *reterr)
{
    uint64_t deadline = tether_now_usec() + cl->connect_timeout_usec;
    char token[TETHER__TOKEN_HEX_LEN + 1] = "";
    const char *tok = cl->token ? cl->token : getenv("TETHER_TOKEN");
    if (is_tcp && !tok) {
        char *path = NULL;
        if (tether__token_path(cl->runtime_dir, port, &path) == 0 &&
            tether__token_read(path, token) == 0) {
            tok = token;
        }
        tether__free(path);
    }
    tether__hello hello = {
        .min_version = TETHER__PROTOCOL_MIN_VERSION,
        .max_version = TETHER__PROTOCOL_VERSION,
        .name = cl->ep->name,
        .pid = getpid(),
        .language = cl->language,
        .language_version = cl->language_version,
        .token = is_tcp ? tok : NULL,
    };
    tether__buf out = TETHER__BUF_INIT;
    int r = tether__encode_hello(&out, &hello);
    if (r == 0) {
        r = tether__write_all(fd, out.data, out.len, deadline);
    }
    tether__buf_done(&out);
    if (r < 0) {
        tether_error_set(reterr, "tether.ConnectionLost", "sending hello: %s", tether_strerror(r));
        return r;
    }
    size_t len;
    r = read_frame(fd, in, cl->ep->max_frame_size, deadline, &len);
    if (r < 0) {
        tether_error_set(reterr, r == -ETIMEDOUT ? "tether.Timeout" : "tether.ConnectionLost",
                         "waiting for the host's welcome: %s", tether_strerror(r));
        return r;
    }
    tether__frame f;
    tether__wire_limits limits = {.max_frame_size = cl->ep->max_frame_size};
    r = tether__frame_decode(tether__buf_head(in) + TETHER__FRAME_HEADER_SIZE, len, &limits, &f);
    if (r == 0 && f.kind == TETHER__REFUSE) {
        char code[32];
        snprintf(code, sizeof(code), "%.*s", (int)f.method.len, (const char *)f.method.ptr);
        tether_error_set(reterr, "tether.Refused", "the host refused the connection (%s): %.*s",
                         code, (int)f.text.len, (const char *)f.text.ptr);
        return refusal_code(code);
    }
    if (r == 0 && f.kind != TETHER__WELCOME) {
        r = -EPROTO;
    }
    if (r == 0) {
        r = tether__decode_welcome(&f.value, strings, ret_welcome);
    }
    if (r == 0 && (ret_welcome->version < TETHER__PROTOCOL_MIN_VERSION ||
                   ret_welcome->version > TETHER__PROTOCOL_VERSION)) {
        r = -EPROTONOSUPPORT;
    }
    if (r < 0) {
        tether_error_set(reterr, "tether.ProtocolError", "bad welcome from the host: %s",
                         tether_strerror(r));
        return r;
    }
    tether__buf_consume(in, TETHER__FRAME_HEADER_SIZE + len);
    return 0;
}

int
tether_client_connect(tether_client *cl, tether_error *reterr)
{
    if (!cl) {
        return -EINVAL;
    }
    pthread_mutex_lock(&cl->lock);
    bool busy = cl->connecting || (cl->conn && tether_conn_is_connected(cl->conn));
    if (!busy) {
        cl->connecting = true;
    }
    pthread_mutex_unlock(&cl->lock);
    if (busy) {
        return -EALREADY;
    }
    int fd = -1;
    bool is_tcp = false;
    int port = 0;
    int r = 0;
    if (cl->fd >= 0) {
        fd = cl->fd;
        cl->fd = -1;
    } else {
        const char *address = cl->address;
        if (!address || !*address) {
            address = getenv("TETHER_ADDRESS");
        }
        if (!address || !*address) {
            address = "default";
        }
        tether__addr addr;
        r = tether__addr_parse(address, cl->runtime_dir, &addr);
        if (r < 0) {
            tether_error_set(reterr, "tether.InvalidAddress", "cannot parse address '%s'",
                             address);
            goto out;
        }
        r = tether__connect(&addr, cl->connect_timeout_usec, &fd);
        if (r < 0) {
            char where[200];
            tether__addr_format(&addr, where, sizeof(where));
            tether_error_set(reterr, "tether.ConnectionRefused", "no host at %s: %s", where,
                             tether_strerror(r));
            goto out;
        }
        is_tcp = addr.kind == TETHER__ADDR_TCP;
        port = addr.port;
    }
    tether__buf in = TETHER__BUF_INIT, strings = TETHER__BUF_INIT;
    tether__welcome welcome = {0};
    r = handshake(cl, fd, is_tcp, port, &in, &welcome, &strings, reterr);
    tether_conn *c = NULL;
    if (r == 0) {
        r = tether__conn_new(cl->ep, fd, is_tcp, TETHER__CONN_OPEN, &c);
    }
    if (r == 0) {
        tether__hello peer = {.name = welcome.name, .pid = welcome.pid, .language = "host"};
        r = tether__conn_set_peer(c, &peer);
        if (welcome.max_in_flight) {
            c->peer_max_in_flight = welcome.max_in_flight;
        }
        if (welcome.max_frame_size) {
            c->peer_max_frame_size = welcome.max_frame_size;
        }
        /* Frames the host sent right after its welcome are already in our buffer. */
        c->in = in;
        in = TETHER__BUF_INIT;
        fd = -1;
    }
    if (r == 0) {
        char *host_name = tether__strdup(welcome.name ? welcome.name : "");
        pthread_mutex_lock(&cl->lock);
        tether_conn *old = cl->conn;
        cl->conn = c;
        tether__free(cl->host_name);
        cl->host_name = host_name;
        pthread_mutex_unlock(&cl->lock);
        tether_conn_unref(old);
        tether__conn_attach(c);
        tether__log(cl->ep, TETHER_LOG_INFO, "connected to host '%s'", cl->host_name);
    } else {
        tether_conn_unref(c);
    }
    tether__buf_done(&in);
    tether__buf_done(&strings);
    if (fd >= 0) {
        close(fd);
    }
out:
    pthread_mutex_lock(&cl->lock);
    cl->connecting = false;
    pthread_mutex_unlock(&cl->lock);
    return r;
}

tether_conn *
tether_client_get_conn(tether_client *cl)
{
    if (!cl) {
        return NULL;
    }
    pthread_mutex_lock(&cl->lock);
    tether_conn *c = cl->conn;
    pthread_mutex_unlock(&cl->lock);
    return c;
}

const char *
tether_client_get_host_name(const tether_client *cl)
{
    return cl ? cl->host_name : NULL;
}

int
tether_client_get_fd(const tether_client *cl)
{
    return cl ? tether__mainq_get_fd(cl->ep->mainq) : -EINVAL;
}

int
tether_client_dispatch(tether_client *cl, uint64_t budget_usec)
{
    return cl ? tether__endpoint_dispatch(cl->ep, budget_usec) : -EINVAL;
}

int
tether_client_wait(tether_client *cl, uint64_t timeout_usec)
{
    return cl ? tether__endpoint_wait(cl->ep, timeout_usec) : -EINVAL;
}

int
tether_client_close(tether_client *cl)
{
    if (!cl) {
        return -EINVAL;
    }
    tether_conn *c = tether_client_get_conn(cl);
    return c ? tether_conn_close(c) : -EALREADY;
}
