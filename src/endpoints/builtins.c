/*
 * builtins: the services a host may offer every client for tools such as the `tether`
 * command line (tether_host_options.builtin_services): listing its services and its
 * clients, resetting or disconnecting a client, and forwarding a call to a client.
 *
 * Each is opt-in, since any client may call them: the management ones act on other
 * clients, and call_client lets one client drive another. All run on the I/O thread and
 * never block (a forwarded call completes in its future's callback).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/msgpack.h"
#include "endpoints/host.h"
#include "rpc/request.h"
#include "rpc/value.h"
#include "util/alloc.h"
#include "util/error.h"

/* An array value of n items, each a value (references dropped either way). */
static int
array_of(tether_value **items, size_t n, tether_value **ret)
{
    tether__buf b = TETHER__BUF_INIT;
    int r = tether__mp_array(&b, (uint32_t)n);
    for (size_t i = 0; r == 0 && i < n; i++) {
        const void *data;
        size_t size;
        tether_value_get_msgpack(items[i], &data, &size);
        r = tether__mp_raw(&b, data, size);
    }
    if (r == 0) {
        r = tether__value_new_copy(tether__buf_head(&b), tether__buf_pending(&b), ret);
    }
    tether__buf_done(&b);
    for (size_t i = 0; i < n; i++) {
        tether_value_unref(items[i]);
    }
    return r;
}

static int
compare_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* tether.services() -> the names of the host's services, sorted. */
static int
serve_services(tether_request *req, void *userdata)
{
    tether_host *h = userdata;
    if (tether_request_read(req, "") < 0) {
        return TETHER_EINVAL;
    }
    char **names = NULL;
    size_t count = 0;
    int r = tether__endpoint_service_names(tether__host_endpoint(h), &names, &count);
    if (r < 0) {
        return r;
    }
    qsort(names, count, sizeof(*names), compare_names);
    tether_value **items = tether__calloc(count ? count : 1, sizeof(*items));
    r = items ? 0 : -ENOMEM;
    for (size_t i = 0; r == 0 && i < count; i++) {
        r = tether_value_new(&items[i], "s", names[i]);
    }
    tether_value *result = NULL;
    if (items) {
        int r2 = array_of(items, count, &result);
        r = r < 0 ? r : r2;
    }
    for (size_t i = 0; i < count; i++) {
        tether__free(names[i]);
    }
    tether__free(names);
    tether__free(items);
    if (r == 0) {
        r = tether_request_reply_value(req, result);
    }
    tether_value_unref(result);
    return r;
}

/* The services a client announced, sorted, as an array value. */
static int
services_of(const tether_client_info *c, tether_value **ret)
{
    const char **names = tether__calloc(c->service_count ? c->service_count : 1, sizeof(*names));
    if (!names) {
        return -ENOMEM;
    }
    memcpy(names, c->services, c->service_count * sizeof(*names));
    qsort(names, c->service_count, sizeof(*names), compare_names);
    tether__buf b = TETHER__BUF_INIT;
    int r = tether__mp_array(&b, (uint32_t)c->service_count);
    for (size_t i = 0; r == 0 && i < c->service_count; i++) {
        r = tether__mp_str(&b, names[i], strlen(names[i]));
    }
    if (r == 0) {
        r = tether__value_new_copy(tether__buf_head(&b), tether__buf_pending(&b), ret);
    }
    tether__buf_done(&b);
    tether__free(names);
    return r;
}

/* tether.clients() -> [{"name", "pid", "language", "language_version", "connected_since"
 * (unix seconds), "calls_in_flight", "calls_in", "calls_out", "bytes_in", "bytes_out",
 * "services" (the names it announced, sorted)}], oldest first: the troubleshooting view. */
static int
serve_clients(tether_request *req, void *userdata)
{
    tether_host *h = userdata;
    if (tether_request_read(req, "") < 0) {
        return TETHER_EINVAL;
    }
    tether_client_info *infos = NULL;
    size_t count = 0;
    int r = tether_host_list_clients(h, &infos, &count);
    tether_value **items = r == 0 ? tether__calloc(count ? count : 1, sizeof(*items)) : NULL;
    r = r < 0 ? r : items ? 0 : -ENOMEM;
    for (size_t i = 0; r == 0 && i < count; i++) {
        const tether_client_info *c = &infos[i];
        tether_value *services = NULL;
        r = services_of(c, &services);
        if (r == 0) {
            r = tether_value_new(&items[i], "{sssxsssssdsusususususv}", "name", c->name, "pid",
                                 c->pid, "language", c->language, "language_version",
                                 c->language_version, "connected_since",
                                 (double)c->connected_unix_usec / 1e6, "calls_in_flight",
                                 (uint64_t)c->calls_in_flight, "calls_in", c->calls_in, "calls_out",
                                 c->calls_out, "bytes_in", c->bytes_in, "bytes_out", c->bytes_out,
                                 "services", services);
        }
        tether_value_unref(services);
    }
    tether_value *result = NULL;
    if (items) {
        int r2 = array_of(items, count, &result);
        r = r < 0 ? r : r2;
    }
    tether__free(items);
    tether_client_infos_free(infos, count);
    if (r == 0) {
        r = tether_request_reply_value(req, result);
    }
    tether_value_unref(result);
    return r;
}

/*
 * tether.reset_client(name), tether.disconnect_client(name): the most recent client of
 * that name other than the caller (a command line acting on a client of its own name
 * means another one). LookupError if there is none.
 */
static int
control_client(tether_request *req, tether_host *h, bool disconnect)
{
    const char *name;
    if (tether_request_read(req, "s", &name) < 0 || !name) {
        return TETHER_EINVAL;
    }
    tether_client_info *infos = NULL;
    size_t count = 0;
    int r = tether_host_list_clients(h, &infos, &count);
    const tether_client_info *target = NULL;
    for (size_t i = 0; r == 0 && i < count; i++) {
        if (strcmp(infos[i].name, name) == 0 && infos[i].conn != tether_request_get_conn(req)) {
            target = &infos[i];
        }
    }
    if (r == 0) {
        r = !target      ? TETHER_ENOENT
            : disconnect ? tether_host_disconnect_client(h, target->conn)
                         : tether_host_reset_client(h, target->conn);
        if (r == TETHER_ENOENT) {
            r = tether_request_reply_error(req, "LookupError", "no client named '%s'", name);
        }
    }
    tether_client_infos_free(infos, count);
    return r;
}

static int
serve_reset_client(tether_request *req, void *userdata)
{
    return control_client(req, userdata, false);
}

static int
serve_disconnect_client(tether_request *req, void *userdata)
{
    return control_client(req, userdata, true);
}

/*
 * A forwarded call holds the caller's request (a reference, as the future callback's
 * userdata) and the request holds the future (a reference, as its cancel hook's arg):
 * whichever of the answer and a cancel comes first ends the other.
 */

/* The caller cancelled the call, or its connection is gone: so is the forwarded one. */
static void
forwarded_cancelled(void *arg)
{
    tether_future *future = arg;
    tether_future_cancel(future);
    tether_future_unref(future);
}

/* The client answered a forwarded call (I/O thread): pass its outcome on. */
static void
forwarded_done(tether_future *future, void *userdata)
{
    tether_request *req = userdata;
    tether_future_unref(tether__request_take_cancel_hook(req));
    tether_value *result = NULL;
    tether_error error = TETHER_ERROR_INIT;
    if (tether_future_get_result(future, &result, &error) == 0) {
        tether_request_reply_value(req, result);
    } else {
        tether_request_reply_error_full(req, &error);
    }
    tether_value_unref(result);
    tether_error_done(&error);
    tether_request_unref(req);
}

/*
 * tether.call_client(name, method, args=[], kwargs={}): method(*args, **kwargs) on the
 * client called name (the most recent of that name); its outcome, error type included.
 * The forwarded call has the caller's silence timeout, so a client gone silent times out
 * the caller as the caller asked (tether.Timeout); a caller's deadline does not travel,
 * but its CANCEL when the deadline passes does, and cancels the forwarded call.
 */
static int
serve_call_client(tether_request *req, void *userdata)
{
    tether_host *h = userdata;
    const char *name, *method;
    tether_value *args = NULL, *kwargs = NULL;
    if (tether_request_read(req, "ss", &name, &method) < 0 &&
        tether_request_read(req, "ssv", &name, &method, &args) < 0 &&
        tether_request_read(req, "ssvv", &name, &method, &args, &kwargs) < 0) {
        return TETHER_EINVAL;
    }
    tether_conn *conn = NULL;
    tether_future *future = NULL;
    uint64_t timeout_ms = req->timeout_ms;
    /* 0 from the caller means no silence bound, here as there. */
    tether_call_options options = {.timeout_usec = timeout_ms == 0 || timeout_ms > UINT64_MAX / 1000
                                                       ? TETHER_TIMEOUT_INFINITE
                                                       : timeout_ms * 1000};
    int r;
    if (!name || !method || !*method) {
        r = tether_request_reply_error(req, "ValueError",
                                       "tether.call_client(name, method, "
                                       "args=[], kwargs={}) needs a name and "
                                       "a method");
    } else if (tether_host_get_client(h, name, &conn) < 0) {
        r = tether_request_reply_error(req, "LookupError", "no client named '%s'", name);
    } else if (tether_request_is_notification(req)) {
        r = tether_conn_notify_values(conn, method, args, kwargs);
    } else if ((r = tether_conn_call_async_values(conn, method, args, kwargs, &options, &future)) <
               0) {
        r = tether_request_reply_error(req, r == TETHER_EINVAL ? "TypeError" : TETHER__ERR_GENERIC,
                                       "cannot call client '%s': %s", name, tether_strerror(r));
    } else if (tether__request_set_cancel_hook(req, forwarded_cancelled,
                                               tether_future_ref(future)) < 0) {
        tether_future_cancel(future);
        tether_future_unref(future); /* the hook's reference */
        tether_future_unref(future);
    } else {
        r = tether_future_set_callback(future, TETHER_CONTEXT_IO, forwarded_done,
                                       tether_request_ref(req));
        if (r < 0) {
            tether_request_unref(req); /* the callback will not run */
            tether_future_unref(tether__request_take_cancel_hook(req));
        }
        tether_future_unref(future);
    }
    tether_conn_unref(conn);
    tether_value_unref(args);
    tether_value_unref(kwargs);
    return r;
}

static const struct {
    uint32_t flag;
    const char *name;
    tether_handler_fn handler;
} builtins[] = {
    {TETHER_BUILTIN_CLIENTS, "tether.services", serve_services},
    {TETHER_BUILTIN_CLIENTS, "tether.clients", serve_clients},
    {TETHER_BUILTIN_MANAGE, "tether.reset_client", serve_reset_client},
    {TETHER_BUILTIN_MANAGE, "tether.disconnect_client", serve_disconnect_client},
    {TETHER_BUILTIN_CALL_CLIENT, "tether.call_client", serve_call_client},
};

int
tether__builtins_add(tether_host *h, uint32_t flags)
{
    for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++) {
        if (flags & builtins[i].flag) {
            int r = tether_host_add_service(h, builtins[i].name, TETHER_CONTEXT_IO,
                                            builtins[i].handler, h);
            if (r < 0) {
                return r;
            }
        }
    }
    return 0;
}
