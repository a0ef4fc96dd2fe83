/*
 * endpoint: see endpoint.h. Services are looked up on every request, by readers on
 * any thread that holds a connection's reader role, hence the rwlock; registration is
 * rare.
 */
#define _GNU_SOURCE
#include "rpc/endpoint.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "platform/platform.h"
#include "rpc/conn.h"
#include "util/alloc.h"

int
tether__endpoint_new(const char *name, bool is_host, tether__endpoint **ret)
{
    tether__endpoint *ep = tether__calloc(1, sizeof(*ep));
    if (!ep) {
        return -ENOMEM;
    }
    ep->name = tether__strdup(name ? name : "");
    if (!ep->name) {
        tether__free(ep);
        return -ENOMEM;
    }
    int r = tether__ioloop_acquire(&ep->loop);
    if (r < 0) {
        tether__free(ep->name);
        tether__free(ep);
        return r;
    }
    r = tether__mainq_new(&ep->mainq);
    if (r < 0) {
        tether__ioloop_release(ep->loop);
        tether__free(ep->name);
        tether__free(ep);
        return r;
    }
    ep->main_thread = pthread_self();
    ep->fork_generation = tether__fork_generation();
    atomic_init(&ep->refs, 1);
    ep->is_host = is_host;
    ep->max_frame_size = 16u * 1024 * 1024;
    ep->max_in_flight = TETHER__DEFAULT_MAX_IN_FLIGHT;
    ep->default_timeout_usec = TETHER__DEFAULT_TIMEOUT_USEC;
    ep->max_output_bytes = TETHER__DEFAULT_MAX_OUTPUT_BYTES;
    ep->max_buffer_bytes = TETHER__DEFAULT_MAX_BUFFER_BYTES;
    ep->max_call_depth = 64;
    ep->logger.level = TETHER_LOG_INFO;
    pthread_rwlock_init(&ep->services_lock, NULL);
    pthread_rwlock_init(&ep->owner_lock, NULL);
    pthread_mutex_init(&ep->handlers_lock, NULL);
    pthread_cond_init(&ep->handlers_idle, NULL);
    *ret = ep;
    return 0;
}

tether__endpoint *
tether__endpoint_ref(tether__endpoint *ep)
{
    atomic_fetch_add_explicit(&ep->refs, 1, memory_order_relaxed);
    return ep;
}

void
tether__endpoint_unref(tether__endpoint *ep)
{
    if (!ep || atomic_fetch_sub_explicit(&ep->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    for (size_t i = 0; i < sizeof(ep->services) / sizeof(ep->services[0]); i++) {
        tether__service *s = ep->services[i];
        while (s) {
            tether__service *next = s->next;
            tether__free(s->name);
            tether__free(s);
            s = next;
        }
    }
    pthread_rwlock_destroy(&ep->services_lock);
    pthread_rwlock_destroy(&ep->owner_lock);
    pthread_mutex_destroy(&ep->handlers_lock);
    pthread_cond_destroy(&ep->handlers_idle);
    tether__mainq_free(ep->mainq);
    tether__ioloop *loop = ep->loop;
    tether__free(ep->name);
    tether__free(ep);
    tether__ioloop_release(loop);
}

/* The handlers running on this thread, innermost first. */
static _Thread_local tether__handler_frame *handlers_here;

static void
handler_leave_count(tether__endpoint *ep)
{
    /* The request being run holds its connection, which holds ep: ep outlives this. */
    if (atomic_fetch_sub(&ep->handlers_running, 1) == 1 && atomic_load(&ep->handlers_closed)) {
        pthread_mutex_lock(&ep->handlers_lock);
        pthread_cond_broadcast(&ep->handlers_idle);
        pthread_mutex_unlock(&ep->handlers_lock);
    }
}

bool
tether__endpoint_handler_enter(tether__endpoint *ep, tether__handler_frame *frame)
{
    /* Counted, then the flag looked at; closing sets the flag, then looks at the count
     * (all sequentially consistent): either the closer sees this handler counted and
     * waits for it, or this handler sees the flag and does not run. */
    atomic_fetch_add(&ep->handlers_running, 1);
    if (atomic_load(&ep->handlers_closed)) {
        handler_leave_count(ep);
        return false;
    }
    frame->ep = ep;
    frame->outer = handlers_here;
    handlers_here = frame;
    return true;
}

void
tether__endpoint_handler_leave(tether__endpoint *ep, tether__handler_frame *frame)
{
    handlers_here = frame->outer;
    handler_leave_count(ep);
}

void
tether__endpoint_close_handlers(tether__endpoint *ep)
{
    /* Set before looking: a handler that leaves after the look sees it and signals,
     * under the lock this thread holds until it waits. */
    atomic_store(&ep->handlers_closed, true);
    for (const tether__handler_frame *f = handlers_here; f; f = f->outer) {
        if (f->ep == ep) {
            return;
        }
    }
    pthread_mutex_lock(&ep->handlers_lock);
    while (atomic_load(&ep->handlers_running) != 0) {
        pthread_cond_wait(&ep->handlers_idle, &ep->handlers_lock);
    }
    pthread_mutex_unlock(&ep->handlers_lock);
}

void
tether__endpoint_configure(tether__endpoint *ep, uint32_t max_frame_size, uint32_t max_in_flight,
                           uint64_t default_timeout_usec, uint64_t max_output_bytes,
                           uint32_t max_call_depth, tether_log_fn log, void *log_userdata,
                           int log_level)
{
    if (max_call_depth) {
        ep->max_call_depth = max_call_depth;
    }
    if (max_frame_size) {
        ep->max_frame_size = max_frame_size;
    }
    if (max_in_flight) {
        ep->max_in_flight = max_in_flight;
    }
    if (default_timeout_usec) {
        ep->default_timeout_usec = default_timeout_usec;
    }
    if (max_output_bytes) {
        ep->max_output_bytes = max_output_bytes;
    }
    ep->logger.fn = log;
    ep->logger.userdata = log_userdata;
    if (log_level) {
        ep->logger.level = log_level;
    }
}

static size_t
name_hash(const char *name, size_t len)
{
    /* FNV-1a: service names are short. */
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h = (h ^ (uint8_t)name[i]) * 16777619u;
    }
    return h % 64;
}

int
tether__endpoint_add_service(tether__endpoint *ep, const char *name, tether_context context,
                             tether_handler_fn handler, void *userdata)
{
    if (!name || !*name || !handler || strlen(name) > 255) {
        return -EINVAL;
    }
    if (context != TETHER_CONTEXT_IO && context != TETHER_CONTEXT_MAIN &&
        context != TETHER_CONTEXT_POOL) {
        return -EINVAL;
    }
    tether__service *s = tether__calloc(1, sizeof(*s));
    if (!s) {
        return -ENOMEM;
    }
    s->name = tether__strdup(name);
    if (!s->name) {
        tether__free(s);
        return -ENOMEM;
    }
    s->context = context;
    s->handler = handler;
    s->userdata = userdata;
    size_t len = strlen(name);
    size_t h = name_hash(name, len);
    pthread_rwlock_wrlock(&ep->services_lock);
    for (tether__service *o = ep->services[h]; o; o = o->next) {
        if (strcmp(o->name, name) == 0) {
            pthread_rwlock_unlock(&ep->services_lock);
            tether__free(s->name);
            tether__free(s);
            return -EEXIST;
        }
    }
    s->next = ep->services[h];
    ep->services[h] = s;
    pthread_rwlock_unlock(&ep->services_lock);
    if (context == TETHER_CONTEXT_POOL) {
        atomic_store(&ep->pool_services, true);
    }
    return 0;
}

int
tether__endpoint_find_service(tether__endpoint *ep, const char *name, size_t name_len,
                              tether__service *ret)
{
    size_t h = name_hash(name, name_len);
    int r = -ENOENT;
    pthread_rwlock_rdlock(&ep->services_lock);
    for (tether__service *s = ep->services[h]; s; s = s->next) {
        if (strncmp(s->name, name, name_len) == 0 && s->name[name_len] == '\0') {
            *ret = *s;
            r = 0;
            break;
        }
    }
    pthread_rwlock_unlock(&ep->services_lock);
    return r;
}

int
tether__endpoint_service_names(tether__endpoint *ep, char ***ret_names, size_t *ret_count)
{
    size_t n = 0, cap = 16;
    char **names = tether__malloc(cap * sizeof(*names));
    int r = names ? 0 : -ENOMEM;
    pthread_rwlock_rdlock(&ep->services_lock);
    for (size_t i = 0; r == 0 && i < sizeof(ep->services) / sizeof(ep->services[0]); i++) {
        for (tether__service *s = ep->services[i]; r == 0 && s; s = s->next) {
            if (n == cap) {
                char **grown = tether__realloc(names, 2 * cap * sizeof(*names));
                if (!grown) {
                    r = -ENOMEM;
                    break;
                }
                names = grown;
                cap *= 2;
            }
            if (!(names[n] = tether__strdup(s->name))) {
                r = -ENOMEM;
                break;
            }
            n++;
        }
    }
    pthread_rwlock_unlock(&ep->services_lock);
    if (r < 0) {
        while (n > 0) {
            tether__free(names[--n]);
        }
        tether__free(names);
        return r;
    }
    *ret_names = names;
    *ret_count = n;
    return 0;
}

int
tether__endpoint_check_main(const tether__endpoint *ep)
{
    if (ep->fork_generation != tether__fork_generation()) {
        return -ECHILD;
    }
    return pthread_equal(ep->main_thread, pthread_self()) ? 0 : -EPERM;
}

int
tether__endpoint_dispatch(tether__endpoint *ep, uint64_t budget_usec)
{
    int r = tether__endpoint_check_main(ep);
    return r < 0 ? r : tether__mainq_dispatch(ep->mainq, budget_usec);
}

int
tether__endpoint_wait(tether__endpoint *ep, tether_conn *conn, uint64_t timeout_usec)
{
    int r = tether__endpoint_check_main(ep);
    if (r < 0) {
        return r;
    }
    uint64_t start = tether_now_usec();
    /* What this thread reads and queues is dispatched below, before anyone could see
     * the fd. */
    tether__mainq_quiet(ep->mainq, true);
    r = conn ? tether__conn_wait_main(conn, ep->mainq, timeout_usec) : -ENOTCONN;
    if (r == -ENOTCONN) {
        /* No connection to read, or it closed: the queue alone, for the time left. */
        uint64_t spent = tether_now_usec() - start;
        r = tether__mainq_wait(ep->mainq, timeout_usec == UINT64_MAX ? UINT64_MAX
                                          : spent < timeout_usec     ? timeout_usec - spent
                                                                     : 0);
    }
    if (r > 0) {
        r = tether__mainq_dispatch(ep->mainq, TETHER_BUDGET_UNLIMITED);
        r = r < 0 ? r : 1;
    }
    tether__mainq_quiet(ep->mainq, false);
    return r;
}

void
tether__log(const tether__endpoint *ep, int level, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    tether__logger_writev(&ep->logger, level, format, ap);
    va_end(ap);
}

uint32_t
tether__protocol_version(void)
{
    return tether__shm_supported ? TETHER__PROTOCOL_VERSION : 1;
}

uint32_t
tether_protocol_version(void)
{
    return tether__protocol_version();
}
