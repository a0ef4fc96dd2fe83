/*
 * host: the listening side. A host owns its listeners (a Unix socket in the runtime
 * directory and, when asked, loopback TCP), accepts connections on the I/O thread,
 * runs the handshake (peer credentials on Unix sockets, the token on TCP, version
 * negotiation, the client limit, the handshake time limit) and keeps the registry of
 * its clients, through which any thread finds a client by name to call it.
 *
 * The registry holds one reference per connection, from accept until the connection
 * closes (the endpoint's conn_closed hook) or the host stops. The endpoint's owner
 * pointer is cleared on the I/O thread when the host stops, so hooks running later
 * never see a freed host.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "codec/frame.h"
#include "codec/msgpack.h"
#include "conn/hostfile.h"
#include "conn/transport.h"
#include "endpoints/host.h"
#include "platform/platform.h"
#include "rpc/request.h"
#include "rpc/value.h"
#include "util/alloc.h"
#include "util/condwait.h"
#include "util/error.h"
#include "util/utf8.h"

#define DEFAULT_MAX_CLIENTS 1024u
#define DEFAULT_HANDSHAKE_USEC (5ull * 1000 * 1000)
#define DEFAULT_CONTROL_GRACE_USEC (5ull * 1000 * 1000)
/* How often a draining connection is looked at: finishing calls end the drain within
 * this much, and the grace is kept to within it. */
#define DRAIN_CHECK_MS 5

typedef struct listener {
    struct tether_host *host;
    int fd;
    bool is_tcp;
    uv_poll_t poll;
    bool polling; /* poll is initialised: it must be closed */
    bool paused;  /* out of descriptors: not watched until accept_retry fires */
} listener;

struct tether_host {
    atomic_uint refs;
    tether__endpoint *ep;
    char *runtime_dir;
    char *unix_path_option;
    bool no_unix, tcp, tcp_allow_remote;
    int tcp_port_option;
    char tcp_bind[64];
    uint32_t max_clients;
    uint64_t handshake_timeout_usec;
    uint64_t control_grace_usec;
    bool keep_fd_limit;
    tether_client_event_fn on_client;
    void *on_client_userdata;
    tether_client_service_fn on_client_service;
    void *on_client_service_userdata;

    bool started, stopped; /* guarded by lock */
    char *address;         /* "unix:..." once started */
    char *unix_path;
    char *token_path;
    char *hostfile_path;       /* <runtime dir>/NAME.host while the host has one */
    tether__hostfile hostfile; /* what it says */
    char token[TETHER__TOKEN_HEX_LEN + 1];
    int tcp_port;
    listener unix_listener, tcp_listener;
    /* Out of descriptors (I/O thread): one kept open to free for a refusal, and a timer
     * that has the listeners try again when even that one is gone. */
    int reserve_fd;
    uv_timer_t accept_retry;
    bool accept_retry_init;
    bool out_of_fds_logged; /* once until a connection is served again */

    pthread_mutex_t lock;
    tether_conn *conns;    /* guarded by lock: every connection, handshaking or open */
    uint32_t conn_count;   /* guarded by lock */
    uint32_t client_count; /* guarded by lock: past the handshake */
};

/* ---- events for the application, delivered on the main thread -------------------------- */

/*
 * A client arrived or left (on_client), or offers a service (on_client_service). Both
 * kinds go through one lane of the main queue, so that a client's CONNECTED comes
 * before the services it announces.
 */
typedef struct host_event {
    tether__work work;
    tether_client_event_fn on_client;        /* or */
    tether_client_service_fn on_service;     /* with service */
    void *userdata;
    tether_conn *conn;
    int event;
    char service[]; /* NUL-terminated */
} host_event;

static void
discard_host_event(tether__work *w)
{
    host_event *e = (host_event *)w;
    tether_conn_unref(e->conn);
    tether__free(e);
}

static void
run_host_event(tether__work *w)
{
    host_event *e = (host_event *)w;
    if (e->on_service) {
        e->on_service(e->userdata, e->conn, e->service);
    } else {
        e->on_client(e->userdata, e->conn, e->event);
    }
    discard_host_event(w);
}

/* Queue an event with room for a service name of len bytes (copied by the caller). */
static host_event *
push_host_event(tether_host *h, tether_conn *c, host_event *e)
{
    e->work = (tether__work){.run = run_host_event, .discard = discard_host_event};
    e->conn = tether_conn_ref(c);
    tether__mainq_push(h->ep->mainq, NULL, &e->work);
    return e;
}

static void
post_client_event(tether_host *h, tether_conn *c, int event)
{
    host_event *e = h->on_client ? tether__calloc(1, sizeof(*e) + 1) : NULL;
    if (e) {
        e->on_client = h->on_client;
        e->userdata = h->on_client_userdata;
        e->event = event;
        push_host_event(h, c, e);
    }
}

/* ---- service announcements ----------------------------------------------------------- */

static void
post_service_event(tether_host *h, tether_conn *c, const char *name, size_t len)
{
    host_event *e = h->on_client_service ? tether__calloc(1, sizeof(*e) + len + 1) : NULL;
    if (e) {
        e->on_service = h->on_client_service;
        e->userdata = h->on_client_service_userdata;
        memcpy(e->service, name, len);
        e->service[len] = '\0';
        push_host_event(h, c, e);
    }
}

/* Whether the announced list of c holds name (conn lock held). */
static bool
has_service_locked(const tether_conn *c, const char *name, size_t len)
{
    for (size_t at = 0; at < c->peer_services_len;) {
        size_t n = strlen(c->peer_services + at);
        if (n == len && memcmp(c->peer_services + at, name, len) == 0) {
            return true;
        }
        at += n + 1;
    }
    return false;
}

/* Names a host keeps per client: beyond, an announcement is refused whole (the list is
 * searched name by name, so it must stay short). */
#define MAX_ANNOUNCED 4096

/*
 * The names of an announcement's args ([[name, ...]]) into *ret_list, read in one pass
 * over the msgpack bytes. Returns 0, or -EINVAL (not one list of non-empty names
 * without NUL bytes), -E2BIG (more than MAX_ANNOUNCED).
 */
static int
announced_names(tether_request *req, tether__mp_reader *ret_list, uint32_t *ret_count)
{
    const void *data;
    size_t size;
    tether_value *args = tether_request_get_args(req);
    if (!args || tether_value_get_msgpack(args, &data, &size) < 0) {
        return -ENOMEM;
    }
    tether__mp_reader r = {data, (const uint8_t *)data + size};
    uint32_t outer, count;
    if (tether__mp_read_array(&r, &outer) < 0 || outer != 1 ||
        tether__mp_read_array(&r, &count) < 0) {
        return -EINVAL;
    }
    if (count > MAX_ANNOUNCED) {
        return -E2BIG;
    }
    *ret_list = r;
    *ret_count = count;
    for (uint32_t i = 0; i < count; i++) {
        tether__span name;
        if (tether__mp_read_str(&r, &name) < 0 || name.len == 0 ||
            memchr(name.ptr, '\0', name.len)) {
            return -EINVAL;
        }
    }
    return 0;
}

/*
 * tether.announce([name, ...]), a client's notification (I/O thread): remember the
 * names, wake the threads waiting for one, tell the main thread of each new one. The
 * whole announcement is checked before any name is taken, so a bad one changes nothing.
 */
static int
serve_announce(tether_request *req, void *userdata)
{
    tether_host *h = userdata;
    tether_conn *c = tether_request_get_conn(req);
    tether__mp_reader list;
    uint32_t count = 0;
    int r = announced_names(req, &list, &count);
    if (r == 0) {
        /* The host lock as well: tether_host_list_clients sizes its copy under it. */
        pthread_mutex_lock(&h->lock);
        pthread_mutex_lock(&c->link.lock);
        size_t known = 0;
        for (size_t at = 0; at < c->peer_services_len; at++) {
            known += c->peer_services[at] == '\0';
        }
        if (known + count > MAX_ANNOUNCED) {
            r = -E2BIG;
        }
        size_t added_from = c->peer_services_len;
        for (uint32_t i = 0; r == 0 && i < count; i++) {
            tether__span name;
            tether__mp_read_str(&list, &name);
            if (has_service_locked(c, (const char *)name.ptr, name.len)) {
                continue;
            }
            char *grown = tether__realloc(c->peer_services, c->peer_services_len + name.len + 1);
            if (!grown) {
                r = -ENOMEM;
                break;
            }
            memcpy(grown + c->peer_services_len, name.ptr, name.len);
            grown[c->peer_services_len + name.len] = '\0';
            c->peer_services = grown;
            c->peer_services_len += name.len + 1;
        }
        /* The names added, copied to tell the main thread outside the locks. */
        size_t added_len = c->peer_services_len - added_from;
        char *added = added_len ? tether__malloc(added_len) : NULL;
        if (added) {
            memcpy(added, c->peer_services + added_from, added_len);
        }
        if (added_len) {
            pthread_cond_broadcast(&c->peer_services_changed);
        }
        pthread_mutex_unlock(&c->link.lock);
        pthread_mutex_unlock(&h->lock);
        for (size_t at = 0; added && at < added_len;) {
            size_t len = strlen(added + at);
            tether__log(h->ep, TETHER_LOG_DEBUG, "client %s offers %s", c->link.peer_name,
                        added + at);
            post_service_event(h, c, added + at, len);
            at += len + 1;
        }
        tether__free(added);
    }
    if (r == -EINVAL || r == -E2BIG) {
        char why[64];
        snprintf(why, sizeof(why),
                 r == -EINVAL ? "something else than a list of names" : "more than %d services",
                 MAX_ANNOUNCED);
        tether__log(h->ep, TETHER_LOG_NOTICE, "client %s announced %s; ignored",
                    c->link.peer_name ? c->link.peer_name : "?", why);
        return tether_request_reply_error(req, r == -EINVAL ? "TypeError" : "ValueError",
                                          "tether.announce takes one list of service names "
                                          "(got %s)",
                                          why);
    }
    return r;
}

/* A host's connection to a client, not a client's own connection to its host. */
static bool
is_client_conn(const tether_conn *c)
{
    return c->ep->is_host;
}

int
tether_conn_has_service(tether_conn *c, const char *name)
{
    if (!c || !name || !*name) {
        return -EINVAL;
    }
    if (!is_client_conn(c)) {
        return -ENOTSUP;
    }
    pthread_mutex_lock(&c->link.lock);
    bool found = has_service_locked(c, name, strlen(name));
    pthread_mutex_unlock(&c->link.lock);
    return found;
}

int
tether_conn_wait_service(tether_conn *c, const char *name, uint64_t timeout_usec)
{
    if (!c || !name || !*name) {
        return -EINVAL;
    }
    if (!is_client_conn(c)) {
        return -ENOTSUP;
    }
    if (tether__ioloop_in_thread(c->link.loop)) {
        return -EDEADLK;
    }
    uint64_t deadline =
        timeout_usec == TETHER_TIMEOUT_INFINITE ? UINT64_MAX : tether_now_usec() + timeout_usec;
    size_t len = strlen(name);
    int r;
    pthread_mutex_lock(&c->link.lock);
    for (;;) {
        if (has_service_locked(c, name, len)) {
            r = 0;
            break;
        }
        if (tether__conn_state(c) != TETHER__LINK_OPEN) {
            r = -ECONNRESET;
            break;
        }
        uint64_t now = tether_now_usec();
        if (now >= deadline) {
            r = -ETIMEDOUT;
            break;
        }
        /* At most a second at a time: the close is seen even if its wake-up is missed. */
        tether__cond_wait_until(&c->peer_services_changed, &c->link.lock,
                                deadline - now > 1000000 ? now + 1000000 : deadline);
    }
    pthread_mutex_unlock(&c->link.lock);
    return r;
}

/* ---- registry ---------------------------------------------------------------------- */

static void
registry_add(tether_host *h, tether_conn *c)
{
    pthread_mutex_lock(&h->lock);
    c->owner_prev = NULL;
    c->owner_next = h->conns;
    if (h->conns) {
        h->conns->owner_prev = c;
    }
    h->conns = c;
    c->owner_data = h;
    h->conn_count++;
    pthread_mutex_unlock(&h->lock);
}

/* Returns true if c was in the registry (its reference now belongs to the caller). */
static bool
registry_remove(tether_host *h, tether_conn *c)
{
    pthread_mutex_lock(&h->lock);
    bool found = c->owner_data == h;
    if (found) {
        if (c->owner_prev) {
            c->owner_prev->owner_next = c->owner_next;
        } else {
            h->conns = c->owner_next;
        }
        if (c->owner_next) {
            c->owner_next->owner_prev = c->owner_prev;
        }
        c->owner_data = NULL;
        h->conn_count--;
        if (c->link.peer_name) {
            h->client_count--;
        }
    }
    pthread_mutex_unlock(&h->lock);
    return found;
}

static void
hook_conn_closed(tether__endpoint *ep, tether_conn *c)
{
    /* Threads waiting for one of its services give up. */
    pthread_mutex_lock(&c->link.lock);
    pthread_cond_broadcast(&c->peer_services_changed);
    pthread_mutex_unlock(&c->link.lock);
    tether_host *h = ep->owner;
    if (!h || !registry_remove(h, c)) {
        return;
    }
    if (c->link.peer_name) {
        tether__log(ep, TETHER_LOG_INFO, "client %s (pid %lld) left", c->link.peer_name,
                    (long long)c->link.peer_pid);
        post_client_event(h, c, TETHER_CLIENT_LEFT);
    }
    tether_conn_unref(c);
}

static void
on_handshake_timeout(uv_timer_t *t)
{
    tether_conn *c = t->data;
    if (tether__conn_state(c) != TETHER__LINK_HANDSHAKE) {
        return;
    }
    tether__link_refuse(&c->link, "timeout", "no hello within the handshake time");
}

static void
hook_attached(tether__endpoint *ep, tether_conn *c)
{
    tether_host *h = ep->owner;
    if (h && tether__conn_state(c) == TETHER__LINK_HANDSHAKE) {
        uint64_t ms = (h->handshake_timeout_usec + 999) / 1000;
        uv_timer_start(&c->handshake_timer, on_handshake_timeout, ms, 0);
    }
}

static void
refuse(tether__hello_result *result, const char *code, const char *format, const char *arg)
{
    result->refuse_code = code;
    snprintf(result->refuse_message, sizeof(result->refuse_message), format, arg);
}

/* Whether an open client of the registry goes by name (lock held). */
static bool
name_taken_locked(tether_host *h, const char *name)
{
    for (tether_conn *c = h->conns; c; c = c->owner_next) {
        if (c->link.peer_name && tether__conn_state(c) == TETHER__LINK_OPEN &&
            strcmp(c->link.peer_name, name) == 0) {
            return true;
        }
    }
    return false;
}

/* name itself if no open client has it, else "name#N" with the smallest free N >= 2;
 * newly allocated (NULL when out of memory). Lock held. */
static char *
unique_name_locked(tether_host *h, const char *name)
{
    if (!name_taken_locked(h, name)) {
        return tether__strdup(name);
    }
    size_t size = strlen(name) + 16;
    char *buf = tether__malloc(size);
    if (!buf) {
        return NULL;
    }
    /* At most max_clients names are taken, so a free number comes before that. */
    for (unsigned long n = 2;; n++) {
        snprintf(buf, size, "%s#%lu", name, n);
        if (!name_taken_locked(h, buf)) {
            return buf;
        }
    }
}

static int
encode_welcome(tether__buf *out, void *arg)
{
    return tether__encode_welcome(out, arg);
}

static void
hook_hello(tether__endpoint *ep, tether_conn *c, const tether__hello *hello,
           tether__hello_result *result)
{
    tether_host *h = ep->owner;
    if (!h) {
        refuse(result, "busy", "the host is stopping%s", "");
        return;
    }
    if (hello->min_version > tether__protocol_version() ||
        hello->max_version < TETHER__PROTOCOL_MIN_VERSION || hello->max_version == 0) {
        char range[64];
        snprintf(range, sizeof(range), "%u..%u", hello->min_version, hello->max_version);
        result->refuse_code = "version";
        snprintf(result->refuse_message, sizeof(result->refuse_message),
                 "the client speaks protocol versions %s, this host speaks %d..%d", range,
                 TETHER__PROTOCOL_MIN_VERSION, tether__protocol_version());
        return;
    }
    if (!c->trusted) {
        if (!hello->token || !h->token[0] || !tether__token_equal(hello->token, h->token)) {
            refuse(result, "token", "%s", hello->token ? "wrong token" : "a token is required");
            return;
        }
    }
    if (!hello->name || !*hello->name) {
        refuse(result, "protocol", "%s", "the hello has no client name");
        return;
    }
    if (!tether__utf8_valid_name(hello->name)) {
        refuse(result, "protocol", "%s", "the client name is not printable UTF-8");
        return;
    }
    pthread_mutex_lock(&h->lock);
    bool full = h->client_count >= h->max_clients;
    if (!full) {
        h->client_count++;
    }
    pthread_mutex_unlock(&h->lock);
    if (full) {
        char n[16];
        snprintf(n, sizeof(n), "%u", h->max_clients);
        refuse(result, "busy", "the host already has its maximum of %s clients", n);
        return;
    }
    /* Names are how the host's application and `tether reset NAME` address a client,
     * so no two open clients share one: a second "twin" is registered as "twin#2" and
     * told so in the welcome (docs/protocol.md, section 6). Handshakes complete on the
     * I/O thread one at a time; the lock keeps the name lookups of other threads out. */
    pthread_mutex_lock(&h->lock);
    char *unique = unique_name_locked(h, hello->name);
    int r = -ENOMEM;
    if (unique) {
        tether__hello named = *hello;
        named.name = unique;
        r = tether__conn_set_peer(c, &named);
        tether__free(unique);
    }
    if (r < 0) {
        h->client_count--;
    }
    pthread_mutex_unlock(&h->lock);
    if (r < 0) {
        refuse(result, "busy", "%s", "out of memory");
        return;
    }
    c->peer_max_in_flight = TETHER__DEFAULT_MAX_IN_FLIGHT;
    tether__welcome w = {
        .version = hello->max_version < tether__protocol_version() ? hello->max_version
                                                                   : tether__protocol_version(),
        .name = c->ep->name,
        .pid = getpid(),
        .max_frame_size = c->ep->max_frame_size,
        .max_in_flight = c->ep->max_in_flight,
        .client_name = c->link.peer_name,
    };
    if (w.version >= 2) {
        tether__link_enable_fds(&c->link); /* before the next frame is read */
    }
    uv_timer_stop(&c->handshake_timer);
    atomic_store(&c->link.state, TETHER__LINK_OPEN);
    tether__conn_send(c, encode_welcome, &w, true);
    tether__log(c->ep, TETHER_LOG_INFO, "client %s (pid %lld, %s%s%s) connected", c->link.peer_name,
                (long long)c->link.peer_pid, c->link.peer_language,
                *c->link.peer_language_version ? " " : "", c->link.peer_language_version);
    post_client_event(h, c, TETHER_CLIENT_CONNECTED);
    if (c->on_open) {
        c->on_open(c->on_open_arg);
    }
}

/* ---- listeners (I/O thread) ---------------------------------------------------------- */

static int
serve_fd_conn(tether_host *h, int fd, bool is_tcp, bool trusted, void (*on_open)(void *),
              void *on_open_arg, tether_conn **ret_conn)
{
    pthread_mutex_lock(&h->lock);
    bool over = h->conn_count >= 2 * h->max_clients + 16;
    pthread_mutex_unlock(&h->lock);
    if (over) {
        /* Past the limit even for a refusal: drop at once. */
        return -EUSERS;
    }
    tether_conn *c;
    int r = tether__conn_new(h->ep, fd, is_tcp, TETHER__LINK_HANDSHAKE, &c);
    if (r < 0) {
        return r;
    }
    c->trusted = trusted;
    c->on_open = on_open;
    c->on_open_arg = on_open_arg;
    if (ret_conn) {
        *ret_conn = tether_conn_ref(c);
    }
    registry_add(h, c); /* the registry keeps the creation reference */
    tether__conn_attach(c);
    return 0;
}

static int
serve_fd(tether_host *h, int fd, bool is_tcp, bool trusted)
{
    return serve_fd_conn(h, fd, is_tcp, trusted, NULL, NULL, NULL);
}

/* ---- running out of descriptors (I/O thread) ------------------------------------------ */

/* Refuse a peer on a socket that never became a connection, and close it. Best effort:
 * the socket is new, so the one small frame fits its buffer. */
static void
refuse_socket(int fd, const char *message)
{
    tether__buf b = TETHER__BUF_INIT;
    if (tether__encode_refuse(&b, "busy", message) == 0) {
        ssize_t n = send(fd, tether__buf_head(&b), tether__buf_pending(&b),
                         MSG_DONTWAIT | TETHER__MSG_NOSIGNAL);
        (void)n;
    }
    tether__buf_done(&b);
    close(fd);
}

static void
open_reserve(tether_host *h)
{
    if (h->reserve_fd < 0) {
        h->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
}

static void on_listener(uv_poll_t *handle, int status, int events);

static void
on_accept_retry(uv_timer_t *t)
{
    tether_host *h = t->data;
    listener *ls[2] = {&h->unix_listener, &h->tcp_listener};
    for (int i = 0; i < 2; i++) {
        if (ls[i]->polling && ls[i]->paused) {
            ls[i]->paused = false;
            uv_poll_start(&ls[i]->poll, UV_READABLE, on_listener);
        }
    }
}

/*
 * accept() failed for want of descriptors. A peer waiting in the backlog would get no
 * answer, and the level-triggered watcher would fire again at once, so: free the reserve
 * descriptor, accept one peer into it, refuse it "busy", and take the reserve back (the
 * way nginx and libuv handle EMFILE). One peer a time: the next one goes through
 * accept() again, and is served if descriptors came back meanwhile. (Linux reports
 * EMFILE with nothing waiting, too: then there is nobody to refuse.) Without a reserve
 * (something else took the slot), stop accepting for a moment instead of spinning.
 */
static void
refuse_backlog(tether_host *h, listener *l)
{
    if (h->reserve_fd >= 0) {
        close(h->reserve_fd);
        h->reserve_fd = -1;
        int fd = tether__accept(l->fd);
        if (fd >= 0) {
            refuse_socket(fd, "the host is out of file descriptors");
            if (!h->out_of_fds_logged) {
                h->out_of_fds_logged = true;
                tether__log(h->ep, TETHER_LOG_WARNING,
                            "out of file descriptors: refusing new connections until some "
                            "are free (see RLIMIT_NOFILE, ulimit -n)");
            }
        }
        open_reserve(h);
    }
    if (h->reserve_fd < 0 && l->polling && !l->paused) {
        if (!h->accept_retry_init) {
            uv_timer_init(tether__ioloop_uv(h->ep->loop), &h->accept_retry);
            h->accept_retry.data = h;
            h->accept_retry_init = true;
        }
        uv_poll_stop(&l->poll);
        l->paused = true;
        uv_timer_start(&h->accept_retry, on_accept_retry, 100, 0);
    }
}

/* Let this process open as many descriptors as its hard limit allows: each client costs
 * the host three (conn/link.h), and the common soft limit of 1024 would admit about
 * a third of max_clients. */
static void
raise_fd_limit(tether_host *h)
{
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) < 0 || lim.rlim_cur == lim.rlim_max) {
        return;
    }
    rlim_t was = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &lim) < 0) {
        return; /* macOS refuses an unlimited soft limit: keep what there is */
    }
    tether__log(h->ep, TETHER_LOG_DEBUG, "raised the open-files limit from %llu to %llu",
                (unsigned long long)was, (unsigned long long)lim.rlim_cur);
}

static void
on_listener(uv_poll_t *handle, int status, int events)
{
    (void)events;
    listener *l = handle->data;
    tether_host *h = l->host;
    if (status < 0) {
        return;
    }
    for (int i = 0; i < 64; i++) {
        int fd = tether__accept(l->fd);
        if (fd == -EMFILE || fd == -ENFILE) {
            refuse_backlog(h, l);
            return;
        }
        if (fd < 0) {
            if (fd != -EAGAIN && fd != -EINTR && fd != -ECONNABORTED) {
                tether__log(h->ep, TETHER_LOG_WARNING, "accept failed: %s", tether_strerror(fd));
            }
            return;
        }
        bool trusted = false;
        if (!l->is_tcp) {
            if (tether__check_peer_uid(fd) < 0) {
                tether__log(h->ep, TETHER_LOG_WARNING,
                            "refused a connection from another user on the Unix socket");
                close(fd);
                continue;
            }
            trusted = true;
        }
        int r = serve_fd(h, fd, l->is_tcp, trusted);
        if (r == 0) {
            h->out_of_fds_logged = false;
        } else {
            tether__log(h->ep, TETHER_LOG_WARNING, "refused a new connection: %s",
                        tether_strerror(r));
            refuse_socket(fd, r == -EMFILE || r == -ENFILE
                                  ? "the host is out of file descriptors"
                                  : "the host cannot serve another connection now");
        }
    }
}

static void
start_listener(void *arg)
{
    listener *l = arg;
    uv_poll_init(tether__ioloop_uv(l->host->ep->loop), &l->poll, l->fd);
    l->poll.data = l;
    uv_poll_start(&l->poll, UV_READABLE, on_listener);
    l->polling = true;
}

static void
on_listener_closed(uv_handle_t *handle)
{
    listener *l = handle->data;
    close(l->fd);
    l->fd = -1;
}

static void
stop_listeners(void *arg)
{
    tether_host *h = arg;
    listener *ls[2] = {&h->unix_listener, &h->tcp_listener};
    for (int i = 0; i < 2; i++) {
        if (ls[i]->polling) {
            ls[i]->polling = false;
            uv_close((uv_handle_t *)&ls[i]->poll, on_listener_closed);
        } else if (ls[i]->fd >= 0) {
            close(ls[i]->fd);
            ls[i]->fd = -1;
        }
    }
    if (h->accept_retry_init) {
        h->accept_retry_init = false;
        uv_close((uv_handle_t *)&h->accept_retry, NULL);
    }
    if (h->reserve_fd >= 0) {
        close(h->reserve_fd);
        h->reserve_fd = -1;
    }
    h->ep->owner = NULL;
}

static void
loop_barrier(void *arg)
{
    (void)arg;
}

/* ---- public ---------------------------------------------------------------------------- */

int
tether_host_new(const tether_host_options *opts, tether_host **ret_host)
{
    if (!ret_host) {
        return -EINVAL;
    }
    tether_host_options zero = {0};
    if (!opts) {
        opts = &zero;
    }
    if (opts->tcp && (opts->tcp_port < TETHER_PORT_EPHEMERAL || opts->tcp_port > 65535)) {
        return -EINVAL;
    }
    if (opts->no_unix && !opts->tcp && opts->unix_path) {
        return -EINVAL;
    }
    tether_host *h = tether__calloc(1, sizeof(*h));
    if (!h) {
        return -ENOMEM;
    }
    const char *name = opts->name && *opts->name ? opts->name : "default";
    int r = tether__endpoint_new(name, true, &h->ep);
    if (r < 0) {
        tether__free(h);
        return r;
    }
    h->ep->owner = h;
    h->ep->hooks.conn_closed = hook_conn_closed;
    h->ep->hooks.attached = hook_attached;
    h->ep->hooks.hello = hook_hello;
    tether__endpoint_configure(h->ep, opts->max_frame_size, opts->max_in_flight,
                               opts->default_timeout_usec, opts->max_output_bytes,
                               opts->max_call_depth, opts->log, opts->log_userdata,
                               opts->log_level);
    if (opts->max_buffer_bytes) {
        h->ep->max_buffer_bytes = opts->max_buffer_bytes;
    }
    atomic_init(&h->refs, 1);
    pthread_mutex_init(&h->lock, NULL);
    h->max_clients = opts->max_clients ? opts->max_clients : DEFAULT_MAX_CLIENTS;
    h->on_client = opts->on_client;
    h->on_client_userdata = opts->on_client_userdata;
    h->on_client_service = opts->on_client_service;
    h->on_client_service_userdata = opts->on_client_service_userdata;
    h->handshake_timeout_usec =
        opts->handshake_timeout_usec ? opts->handshake_timeout_usec : DEFAULT_HANDSHAKE_USEC;
    h->control_grace_usec =
        opts->control_grace_usec ? opts->control_grace_usec : DEFAULT_CONTROL_GRACE_USEC;
    h->keep_fd_limit = opts->keep_fd_limit;
    h->reserve_fd = -1;
    h->no_unix = opts->no_unix;
    h->tcp = opts->tcp;
    h->tcp_port_option = opts->tcp_port;
    h->tcp_allow_remote = opts->tcp_allow_remote;
    snprintf(h->tcp_bind, sizeof(h->tcp_bind), "%s", opts->tcp_bind ? opts->tcp_bind : "127.0.0.1");
    h->unix_listener = (listener){.host = h, .fd = -1};
    h->tcp_listener = (listener){.host = h, .fd = -1, .is_tcp = true};
    h->tcp_port = -1;
    r = tether__runtime_dir(opts->runtime_dir, &h->runtime_dir);
    if (r == 0 && opts->unix_path) {
        h->unix_path_option = tether__strdup(opts->unix_path);
        r = h->unix_path_option ? 0 : -ENOMEM;
    }
    if (r == 0) {
        /* Part of the protocol, not an option: every host learns its clients' services. */
        r = tether_host_add_service(h, TETHER__ANNOUNCE, TETHER_CONTEXT_IO, serve_announce, h);
    }
    if (r == 0) {
        r = tether__builtins_add(h, opts->builtin_services);
    }
    if (r < 0) {
        tether_host_unref(h);
        return r;
    }
    *ret_host = h;
    return 0;
}

tether_host *
tether_host_ref(tether_host *h)
{
    if (h) {
        atomic_fetch_add_explicit(&h->refs, 1, memory_order_relaxed);
    }
    return h;
}

tether_host *
tether_host_unref(tether_host *h)
{
    if (!h || atomic_fetch_sub_explicit(&h->refs, 1, memory_order_acq_rel) != 1) {
        return NULL;
    }
    tether_host_stop(h);
    tether__free(h->runtime_dir);
    tether__free(h->unix_path_option);
    tether__free(h->address);
    tether__free(h->unix_path);
    tether__free(h->token_path);
    pthread_mutex_destroy(&h->lock);
    tether__endpoint *ep = h->ep;
    tether__free(h);
    tether__endpoint_unref(ep);
    return NULL;
}

int
tether_host_add_service(tether_host *h, const char *name, tether_context context,
                        tether_handler_fn handler, void *userdata)
{
    if (!h) {
        return -EINVAL;
    }
    return tether__endpoint_add_service(h->ep, name, context, handler, userdata);
}

static int
is_loopback(const char *addr)
{
    struct in_addr in;
    return inet_pton(AF_INET, addr, &in) == 1 && (ntohl(in.s_addr) >> 24) == 127;
}

/*
 * Tell clients and `tether hosts` how to reach this host by name: <runtime dir>/NAME.host
 * (docs/protocol.md, section 2). Written by a host that listens on its socket in the
 * runtime directory or on TCP; a host on a Unix path of its own choosing, and no TCP,
 * is not found by name, so it writes none. Best effort: a host that cannot write it
 * still serves, and says so.
 */
static void
write_hostfile(tether_host *h, bool runtime_dir_ok)
{
    bool findable = h->tcp_port >= 0 || (h->unix_path && !h->unix_path_option);
    if (!findable || !runtime_dir_ok) {
        return;
    }
    tether__hostfile *f = &h->hostfile;
    *f = (tether__hostfile){.pid = getpid(),
                            .min_version = TETHER__PROTOCOL_MIN_VERSION,
                            .max_version = tether__protocol_version()};
    snprintf(f->name, sizeof(f->name), "%s", h->ep->name);
    if (h->unix_path) {
        snprintf(f->unix_path, sizeof(f->unix_path), "%s", h->unix_path);
    }
    if (h->tcp_port >= 0) {
        snprintf(f->tcp_host, sizeof(f->tcp_host), "%s", h->tcp_bind);
        f->tcp_port = h->tcp_port;
        snprintf(f->token_path, sizeof(f->token_path), "%s", h->token_path);
    }
    char *path = NULL;
    int r = tether__hostfile_path(h->runtime_dir, h->ep->name, &path);
    if (r == 0) {
        r = tether__hostfile_write(path, f);
    }
    if (r < 0) {
        tether__log(h->ep, TETHER_LOG_WARNING,
                    "no host file for '%s' in %s (%s): clients find it only by its address",
                    h->ep->name, h->runtime_dir, tether_strerror(r));
        tether__free(path);
        return;
    }
    h->hostfile_path = path;
}

static void
remove_hostfile(tether_host *h)
{
    if (h->hostfile_path) {
        tether__hostfile_remove(h->hostfile_path, &h->hostfile);
        tether__free(h->hostfile_path);
        h->hostfile_path = NULL;
    }
}

/* Undo a start that failed halfway: nothing may keep listening in the host's name. */
static void
undo_start(tether_host *h)
{
    listener *ls[2] = {&h->unix_listener, &h->tcp_listener};
    for (int i = 0; i < 2; i++) {
        if (ls[i]->fd >= 0) {
            close(ls[i]->fd);
            ls[i]->fd = -1;
        }
    }
    if (h->unix_path) {
        unlink(h->unix_path);
    }
    if (h->token_path) {
        unlink(h->token_path);
    }
    remove_hostfile(h);
    if (h->reserve_fd >= 0) {
        close(h->reserve_fd);
        h->reserve_fd = -1;
    }
    tether__free(h->unix_path);
    tether__free(h->address);
    tether__free(h->token_path);
    h->unix_path = h->address = h->token_path = NULL;
    h->tcp_port = -1;
    pthread_mutex_lock(&h->lock);
    h->started = false;
    pthread_mutex_unlock(&h->lock);
}

static int
listen_unix(tether_host *h)
{
    tether__addr addr;
    int r;
    if (h->unix_path_option) {
        char buf[160];
        snprintf(buf, sizeof(buf), "unix:%s", h->unix_path_option);
        r = tether__addr_parse(buf, NULL, &addr);
    } else {
        r = tether__addr_parse(h->ep->name, h->runtime_dir, &addr);
    }
    if (r == 0) {
        r = tether__listen(&addr, 128, &h->unix_listener.fd);
    }
    if (r < 0) {
        tether__log(h->ep, TETHER_LOG_ERROR, "cannot listen for host '%s': %s", h->ep->name,
                    tether_strerror(r));
        return r;
    }
    h->unix_path = tether__strdup(addr.path);
    char buf[160];
    tether__addr_format(&addr, buf, sizeof(buf));
    h->address = tether__strdup(buf);
    return h->unix_path && h->address ? 0 : -ENOMEM;
}

static int
listen_tcp(tether_host *h)
{
    tether__addr addr = {.kind = TETHER__ADDR_TCP};
    snprintf(addr.host, sizeof(addr.host), "%s", h->tcp_bind);
    addr.port = h->tcp_port_option == 0                       ? TETHER_DEFAULT_TCP_PORT
                : h->tcp_port_option == TETHER_PORT_EPHEMERAL ? 0
                                                              : h->tcp_port_option;
    int r = tether__listen(&addr, 128, &h->tcp_listener.fd);
    if (r == 0) {
        h->tcp_port = addr.port;
        r = tether__token_path(h->runtime_dir, addr.port, &h->token_path);
    }
    if (r == 0) {
        r = tether__token_create(h->token_path, h->token);
    }
    if (r < 0) {
        tether__log(h->ep, TETHER_LOG_ERROR, "cannot listen on TCP: %s", tether_strerror(r));
    }
    return r;
}

int
tether_host_start(tether_host *h)
{
    if (!h) {
        return -EINVAL;
    }
    pthread_mutex_lock(&h->lock);
    bool already = h->started || h->stopped;
    h->started = true;
    pthread_mutex_unlock(&h->lock);
    if (already) {
        return -EALREADY;
    }
    int r = 0;
    if (h->tcp && !h->tcp_allow_remote && !is_loopback(h->tcp_bind)) {
        r = -EINVAL;
        goto fail;
    }
    r = tether__runtime_dir_ensure(h->runtime_dir);
    bool runtime_dir_ok = r == 0;
    if (r < 0 && (!h->unix_path_option || h->tcp)) {
        tether__log(h->ep, TETHER_LOG_ERROR,
                    "runtime directory %s unusable: %s (it must be a directory of this user's, "
                    "mode 0700)",
                    h->runtime_dir, tether_strerror(r));
        goto fail;
    }
    if (!h->keep_fd_limit) {
        raise_fd_limit(h);
    }
    open_reserve(h);
    r = 0;
    if (!h->no_unix && (r = listen_unix(h)) < 0) {
        goto fail;
    }
    if (h->tcp && (r = listen_tcp(h)) < 0) {
        goto fail;
    }
    if (h->unix_listener.fd >= 0) {
        tether__ioloop_run_sync(h->ep->loop, start_listener, &h->unix_listener);
    }
    if (h->tcp_listener.fd >= 0) {
        tether__ioloop_run_sync(h->ep->loop, start_listener, &h->tcp_listener);
    }
    /* Last: the file says the host is reachable, so only once it is. */
    write_hostfile(h, runtime_dir_ok);
    if (h->tcp_port >= 0) {
        tether__log(h->ep, TETHER_LOG_INFO, "host '%s' listening on %s and tcp:%s:%d", h->ep->name,
                    h->address ? h->address : "no unix socket", h->tcp_bind, h->tcp_port);
    } else {
        tether__log(h->ep, TETHER_LOG_INFO, "host '%s' listening on %s", h->ep->name,
                    h->address ? h->address : "no socket (socket pairs only)");
    }
    return 0;
fail:
    undo_start(h);
    return r;
}

int
tether_host_stop(tether_host *h)
{
    if (!h) {
        return -EINVAL;
    }
    pthread_mutex_lock(&h->lock);
    bool already = h->stopped;
    h->stopped = true;
    pthread_mutex_unlock(&h->lock);
    if (already) {
        return -EALREADY;
    }
    /* First: a client that reads the file from now on finds no host, not one going. */
    remove_hostfile(h);
    tether__ioloop_run_sync(h->ep->loop, stop_listeners, h);
    /* Close callbacks run at the end of the loop iteration that closed the handles;
     * a second round trip through the loop waits for them. */
    tether__ioloop_run_sync(h->ep->loop, loop_barrier, NULL);
    if (h->unix_path) {
        unlink(h->unix_path);
    }
    if (h->token_path) {
        unlink(h->token_path);
    }
    /* Take every connection out of the registry, then close them. */
    pthread_mutex_lock(&h->lock);
    tether_conn *list = h->conns;
    h->conns = NULL;
    for (tether_conn *c = list; c; c = c->owner_next) {
        c->owner_data = NULL;
    }
    h->conn_count = h->client_count = 0;
    pthread_mutex_unlock(&h->lock);
    while (list) {
        tether_conn *c = list;
        list = c->owner_next;
        tether__conn_fail(c, -ECONNRESET, "the host stopped");
        tether_conn_unref(c);
    }
    /* Requests still waiting for the main thread will not run now. */
    tether__mainq_discard_all(h->ep->mainq);
    /* Nor will any other; those running on other threads (a POOL service taking its
     * time, an IO one on the I/O thread) finish before this returns, so the caller may
     * free what they use. */
    tether__endpoint_close_handlers(h->ep);
    tether__forkserver_host_stopped(h);
    return 0;
}

const char *
tether_host_get_address(const tether_host *h)
{
    return h ? h->address : NULL;
}

int
tether_host_get_tcp_port(const tether_host *h)
{
    if (!h) {
        return -EINVAL;
    }
    return h->tcp_port >= 0 ? h->tcp_port : -ENOTCONN;
}

const char *
tether_host_get_token_path(const tether_host *h)
{
    return h ? h->token_path : NULL;
}

int
tether_host_get_client(tether_host *h, const char *name, tether_conn **ret_conn)
{
    if (!h || !name || !ret_conn) {
        return -EINVAL;
    }
    int r = -ENOENT;
    pthread_mutex_lock(&h->lock);
    /* Newest first: connections are pushed at the head. */
    for (tether_conn *c = h->conns; c; c = c->owner_next) {
        if (c->link.peer_name && tether__conn_state(c) == TETHER__LINK_OPEN &&
            strcmp(c->link.peer_name, name) == 0) {
            *ret_conn = tether_conn_ref(c);
            r = 0;
            break;
        }
    }
    pthread_mutex_unlock(&h->lock);
    return r;
}

int
tether_host_get_client_count(const tether_host *h)
{
    if (!h) {
        return -EINVAL;
    }
    /* As the list counts: open connections past their handshake, not those closing. */
    int n = 0;
    pthread_mutex_lock(&((tether_host *)h)->lock);
    for (tether_conn *c = h->conns; c; c = c->owner_next) {
        n += c->link.peer_name && tether__conn_state(c) == TETHER__LINK_OPEN;
    }
    pthread_mutex_unlock(&((tether_host *)h)->lock);
    return n;
}

int
tether_host_list_clients(tether_host *h, tether_client_info **ret_infos, size_t *ret_count)
{
    if (!h || !ret_infos || !ret_count) {
        return -EINVAL;
    }
    *ret_infos = NULL;
    *ret_count = 0;
    pthread_mutex_lock(&h->lock);
    size_t n = 0, strings = 0, services = 0; /* clients, bytes of text, service names */
    for (tether_conn *c = h->conns; c; c = c->owner_next) {
        if (c->link.peer_name && tether__conn_state(c) == TETHER__LINK_OPEN) {
            n++;
            strings += strlen(c->link.peer_name) + strlen(c->link.peer_language) +
                       strlen(c->link.peer_language_version) + 3;
            pthread_mutex_lock(&c->link.lock);
            strings += c->peer_services_len;
            for (size_t at = 0; at < c->peer_services_len; at++) {
                services += c->peer_services[at] == '\0';
            }
            pthread_mutex_unlock(&c->link.lock);
        }
    }
    /* One block: the array, the service name pointers, then the strings they point to.
     * The host lock keeps the clients and their announced services as counted. */
    tether_client_info *infos =
        tether__calloc(1, n * sizeof(*infos) + services * sizeof(char *) + strings + 1);
    if (!infos) {
        pthread_mutex_unlock(&h->lock);
        return -ENOMEM;
    }
    const char **names = (const char **)(infos + n);
    char *text = (char *)(names + services);
    size_t i = n;
    /* The registry is newest first; fill from the back for oldest first. */
    for (tether_conn *c = h->conns; c && i > 0; c = c->owner_next) {
        if (!c->link.peer_name || tether__conn_state(c) != TETHER__LINK_OPEN) {
            continue;
        }
        tether_client_info *info = &infos[--i];
        const char *src[3] = {c->link.peer_name, c->link.peer_language,
                              c->link.peer_language_version};
        const char **dst[3] = {&info->name, &info->language, &info->language_version};
        for (int k = 0; k < 3; k++) {
            size_t len = strlen(src[k]) + 1;
            memcpy(text, src[k], len);
            *dst[k] = text;
            text += len;
        }
        pthread_mutex_lock(&c->link.lock);
        info->calls_in_flight = c->pending_count + c->running_count;
        info->services = names;
        for (size_t at = 0; at < c->peer_services_len;) {
            size_t len = strlen(c->peer_services + at) + 1;
            memcpy(text, c->peer_services + at, len);
            names[info->service_count++] = text;
            text += len;
            at += len;
        }
        names += info->service_count;
        pthread_mutex_unlock(&c->link.lock);
        info->conn = tether_conn_ref(c);
        info->pid = c->link.peer_pid;
        info->connected_unix_usec = c->connected_unix_usec;
        info->calls_in = atomic_load_explicit(&c->calls_in, memory_order_relaxed);
        info->calls_out = atomic_load_explicit(&c->calls_out, memory_order_relaxed);
        info->bytes_in = atomic_load_explicit(&c->link.bytes_in, memory_order_relaxed);
        info->bytes_out = atomic_load_explicit(&c->link.bytes_out, memory_order_relaxed);
    }
    pthread_mutex_unlock(&h->lock);
    *ret_infos = infos;
    *ret_count = n;
    return 0;
}

void
tether_client_infos_free(tether_client_info *infos, size_t count)
{
    if (!infos) {
        return;
    }
    for (size_t i = 0; i < count; i++) {
        tether_conn_unref(infos[i].conn);
    }
    tether__free(infos);
}

/*
 * A graceful CONTROL (docs/protocol.md, CONTROL): the connection is marked draining, so
 * the client's new requests are refused with tether.Closing (rpc/request.c) while the
 * ones in flight, and the host's own calls to the client, go on; once none is left, or
 * the grace time is over, what still runs is answered with tether.Closing, then CONTROL
 * is written and the connection closed. The drain lives on the I/O thread, with its own
 * reference to the connection, so it needs the host no longer: a host that stops
 * meanwhile closes the connection, and the next check lets the drain go.
 */
typedef struct drain {
    uv_timer_t timer;
    tether_conn *conn;
    uint64_t deadline_usec, grace_usec;
    char action[16];
    char reason[64];
} drain;

typedef struct control_arg {
    const char *action, *reason;
} control_arg;

static int
encode_control(tether__buf *out, void *arg)
{
    control_arg *a = arg;
    return tether__encode_control(out, a->action, a->reason);
}

static void
drain_free(uv_handle_t *handle)
{
    drain *d = handle->data;
    tether_conn_unref(d->conn);
    tether__free(d);
}

static void
drain_check(uv_timer_t *t)
{
    drain *d = t->data;
    tether_conn *c = d->conn;
    if (tether__conn_state(c) != TETHER__LINK_OPEN) {
        /* Closed meanwhile: the client left, or the host stopped. */
        uv_close((uv_handle_t *)&d->timer, drain_free);
        return;
    }
    pthread_mutex_lock(&c->link.lock);
    bool busy = c->running_count > 0 || c->pending_count > 0;
    pthread_mutex_unlock(&c->link.lock);
    if (busy && tether_now_usec() < d->deadline_usec) {
        return;
    }
    if (busy) {
        char message[160];
        snprintf(message, sizeof(message),
                 "the host closed the connection (%s) before the call finished: its grace of "
                 "%llu ms was over",
                 d->action, (unsigned long long)(d->grace_usec / 1000));
        size_t n = tether__request_fail_running(c, TETHER__ERR_CLOSING, message);
        tether__log(c->ep, TETHER_LOG_NOTICE,
                    "client %s: %zu call(s) still running at the end of the %s grace time",
                    c->link.peer_name, n, d->action);
    }
    /* Written at once, after every answer, so it precedes the end of the stream. */
    control_arg a = {d->action, d->reason};
    tether__conn_send(c, encode_control, &a, true);
    tether__conn_fail(c, -ECONNRESET, d->reason);
    uv_close((uv_handle_t *)&d->timer, drain_free);
}

/* On the I/O thread, where requests are taken in: every request that arrived before
 * draining was set is in the running list by now, and every later one is refused. */
static void
drain_start(void *arg)
{
    drain *d = arg;
    uv_timer_init(tether__ioloop_uv(d->conn->link.loop), &d->timer);
    d->timer.data = d;
    drain_check(&d->timer);
    if (!uv_is_closing((uv_handle_t *)&d->timer)) {
        uv_timer_start(&d->timer, drain_check, DRAIN_CHECK_MS, DRAIN_CHECK_MS);
    }
}

static int
send_control(tether_host *h, tether_conn *c, const char *action, const char *reason)
{
    if (!h || !c) {
        return -EINVAL;
    }
    pthread_mutex_lock(&h->lock);
    bool ours = c->owner_data == h && c->link.peer_name;
    pthread_mutex_unlock(&h->lock);
    if (!ours || tether__conn_state(c) != TETHER__LINK_OPEN) {
        return -ENOENT;
    }
    drain *d = tether__calloc(1, sizeof(*d));
    if (!d) {
        return -ENOMEM;
    }
    if (atomic_exchange(&c->draining, true)) {
        tether__free(d);
        return -EALREADY;
    }
    tether__log(h->ep, TETHER_LOG_INFO, "%s client %s (pid %lld)", reason, c->link.peer_name,
                (long long)c->link.peer_pid);
    d->conn = tether_conn_ref(c);
    d->grace_usec = h->control_grace_usec;
    d->deadline_usec = tether_now_usec() + d->grace_usec;
    snprintf(d->action, sizeof(d->action), "%s", action);
    snprintf(d->reason, sizeof(d->reason), "%s", reason);
    /* With nothing in flight the connection is closed when this returns, as before. */
    tether__ioloop_run_sync(c->link.loop, drain_start, d);
    return 0;
}

int
tether_host_reset_client(tether_host *h, tether_conn *client)
{
    return send_control(h, client, "reset", "reset by the host");
}

int
tether_host_disconnect_client(tether_host *h, tether_conn *client)
{
    return send_control(h, client, "disconnect", "disconnected by the host");
}

int
tether_host_new_object(tether_host *h, const tether_class *cls, void *userdata,
                       tether_object **ret_object)
{
    if (!h) {
        return -EINVAL;
    }
    return tether__object_new(h->ep, cls, userdata, ret_object);
}

int
tether_host_get_fd(const tether_host *h)
{
    return h ? tether__mainq_get_fd(h->ep->mainq) : -EINVAL;
}

int
tether_host_dispatch(tether_host *h, uint64_t budget_usec)
{
    return h ? tether__endpoint_dispatch(h->ep, budget_usec) : -EINVAL;
}

int
tether_host_wait(tether_host *h, uint64_t timeout_usec)
{
    if (!h) {
        return -EINVAL;
    }
    /* With one connection (a host serving one script, or the child it spawned), the
     * main thread reads it while it waits, as a client's does (rpc/main_wait.c): a call
     * of a MAIN service wakes this thread alone. With more, the I/O thread reads them
     * all and queues the work: one thread cannot poll every connection's socket without
     * two system calls per connection and wait. */
    tether_conn *only = NULL;
    pthread_mutex_lock(&h->lock);
    if (h->conn_count == 1 && tether__conn_state(h->conns) == TETHER__LINK_OPEN) {
        only = tether_conn_ref(h->conns);
    }
    pthread_mutex_unlock(&h->lock);
    int r = tether__endpoint_wait(h->ep, only, timeout_usec);
    tether_conn_unref(only);
    return r;
}

tether__endpoint *
tether__host_endpoint(tether_host *h)
{
    return h->ep;
}

int
tether_host_adopt_fd(tether_host *h, int fd)
{
    return tether__host_adopt_child(h, fd, NULL, NULL, NULL);
}

int
tether__host_adopt_child(tether_host *h, int fd, void (*on_open)(void *arg), void *arg,
                         tether_conn **ret_conn)
{
    if (!h || fd < 0) {
        return -EINVAL;
    }
    pthread_mutex_lock(&h->lock);
    bool stopped = h->stopped;
    pthread_mutex_unlock(&h->lock);
    if (stopped) {
        return -ENOTCONN;
    }
    int r = tether__socket_adopt(fd);
    if (r < 0) {
        return r;
    }
    return serve_fd_conn(h, fd, false, true, on_open, arg, ret_conn);
}
