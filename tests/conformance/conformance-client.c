/*
 * conformance-client: the C client under test in tests/conformance (test_client.py),
 * run against a peer of the suite acting as host. Public API only.
 *
 *   tether-conformance-client ADDRESS MODE
 *
 * MODE call:     calls add(2, 3), prints "add=N", notifies bye("done"), closes.
 * MODE timeout:  calls busy() with a 1 s silence timeout; prints "busy=RESULT" or
 *                "busy=error ERRNAME".
 * MODE serve:    registers main-thread services, notifies started() from outside any
 *                handler, and dispatches until the host disconnects it (prints
 *                "disconnected REASON") or the connection is lost (prints "lost"):
 *     echo(*args)        -> args
 *     notify_back()      notifies noted("from a handler") back to the host, -> nil
 *     record(text)       appends text to the record
 *     recorded()         -> the record, "," between entries
 *     call_host()        calls the host's work() and replies its result (the call-backs
 *                        the host makes while work() runs are served inside that wait)
 */
#include <stdio.h>
#include <string.h>

#include <tether.h>

static char record_text[1024];
static int disconnected;

static int
echo(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply_value(req, tether_request_get_args(req));
}

static int
notify_back(tether_request *req, void *userdata)
{
    (void)userdata;
    int r = tether_conn_notify(tether_request_get_conn(req), "noted", "s", "from a handler");
    return r < 0 ? r : tether_request_reply(req, NULL);
}

static int
record(tether_request *req, void *userdata)
{
    (void)userdata;
    const char *text;
    int r = tether_request_read(req, "s", &text);
    if (r < 0) {
        return r;
    }
    size_t used = strlen(record_text);
    snprintf(record_text + used, sizeof(record_text) - used, "%s%s", used ? "," : "", text);
    return tether_request_reply(req, NULL);
}

static int
recorded(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply(req, "s", record_text);
}

static int
call_host(tether_request *req, void *userdata)
{
    (void)userdata;
    tether_value *result = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_conn_call(tether_request_get_conn(req), "work", NULL, &result, &err, NULL);
    if (r == 0) {
        r = tether_request_reply_value(req, result);
    } else {
        r = tether_request_reply_error(req, "RuntimeError", "work() failed: %s",
                                       err.message ? err.message : tether_strerror(r));
    }
    tether_value_unref(result);
    tether_error_done(&err);
    return r;
}

static void
on_disconnect(void *userdata, const char *reason)
{
    (void)userdata;
    printf("disconnected %s\n", reason ? reason : "");
    fflush(stdout);
    disconnected = 1;
}

static int
serve(tether_client *client)
{
    static const struct {
        const char *name;
        tether_handler_fn fn;
    } services[] = {{"echo", echo},
                    {"notify_back", notify_back},
                    {"record", record},
                    {"recorded", recorded},
                    {"call_host", call_host}};
    for (size_t i = 0; i < sizeof(services) / sizeof(services[0]); i++) {
        int r = tether_client_add_service(client, services[i].name, TETHER_CONTEXT_MAIN,
                                          services[i].fn, NULL);
        if (r < 0) {
            return r;
        }
    }
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_client_connect(client, &err);
    tether_error_done(&err);
    r = r < 0 ? r : tether_conn_notify(tether_client_get_conn(client), "started", NULL);
    while (r == 0 && !disconnected) {
        tether_client_wait(client, 100000);
        tether_client_dispatch(client, 0);
        if (!disconnected && !tether_client_is_connected(client)) {
            printf("lost\n");
            break;
        }
    }
    return r;
}

int
main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s ADDRESS call|timeout|serve\n", argv[0]);
        return 2;
    }
    tether_client_options options = {
        .name = "conformance-client",
        .address = argv[1],
        .no_reconnect = true,
        .on_disconnect = on_disconnect,
    };
    tether_client *client = NULL;
    tether_value *result = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_client_new(&options, &client);
    const char *mode = argv[2];
    if (r == 0 && strcmp(mode, "serve") == 0) {
        r = serve(client);
    } else if (r == 0 && strcmp(mode, "call") == 0) {
        int64_t n = 0;
        r = tether_client_connect(client, &err);
        tether_conn *conn = tether_client_get_conn(client);
        r = r < 0 ? r : tether_conn_call(conn, "add", NULL, &result, &err, "ii", 2, 3);
        r = r < 0 ? r : tether_value_read(result, &err, "x", &n);
        r = r < 0 ? r : tether_conn_notify(conn, "bye", "s", "done");
        if (r == 0) {
            printf("add=%lld\n", (long long)n);
        }
    } else if (r == 0 && strcmp(mode, "timeout") == 0) {
        tether_call_options call = {.timeout_usec = 1000000};
        r = tether_client_connect(client, &err);
        tether_conn *conn = tether_client_get_conn(client);
        const char *text = NULL;
        r = r < 0 ? r : tether_conn_call(conn, "busy", &call, &result, &err, NULL);
        if (r == TETHER_ETIMEDOUT) {
            printf("busy=error ETIMEDOUT\n");
            r = 0;
        } else if (r == 0 && tether_value_read(result, &err, "s", &text) == 0) {
            printf("busy=%s\n", text);
        }
    } else if (r == 0) {
        fprintf(stderr, "unknown mode %s\n", mode);
        r = TETHER_EINVAL;
    }
    if (r < 0) {
        fprintf(stderr, "conformance-client: %s%s%s\n", tether_strerror(r), err.message ? ": " : "",
                err.message ? err.message : "");
    }
    fflush(stdout);
    tether_error_done(&err);
    tether_value_unref(result);
    tether_client_unref(client);
    return r < 0;
}
