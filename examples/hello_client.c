/* hello_client: calls a host (argv[1], else $TETHER_ADDRESS, else the host "default"). */
#include <stdio.h>

#include <tether.h>

int
main(int argc, char **argv)
{
    tether_client_options options = {.address = argc > 1 ? argv[1] : NULL};
    tether_client *client = NULL;
    tether_future *future = NULL;
    tether_value *sum = NULL, *greeting = NULL;
    tether_error error = TETHER_ERROR_INIT;
    int64_t n = 0;
    const char *text = NULL;

    int r = tether_client_new(&options, &client);
    r = r < 0 ? r : tether_client_connect(client, &error);
    tether_conn *conn = tether_client_get_conn(client);
    /* Start greet, tell the host something (no reply), then call add and wait for it. */
    r = r < 0 ? r : tether_conn_call_async(conn, "greet", NULL, &future, "s", "world");
    r = r < 0 ? r : tether_conn_notify(conn, "greet", "s", "everyone");
    r = r < 0 ? r : tether_conn_call(conn, "add", NULL, &sum, &error, "ii", 2, 3);
    r = r < 0 ? r : tether_value_read(sum, &error, "x", &n);
    /* greet ran while add was under way; collect its outcome. */
    r = r < 0 ? r : tether_future_wait(future, TETHER_TIMEOUT_INFINITE);
    r = r < 0 ? r : tether_future_get_result(future, &greeting, &error);
    r = r < 0 ? r : tether_value_read(greeting, &error, "s", &text);
    if (r < 0 && error.type) {
        fprintf(stderr, "hello_client: %s (%s: %s)\n", tether_strerror(r), error.type,
                error.message ? error.message : "");
    } else if (r < 0) {
        fprintf(stderr, "hello_client: %s\n", tether_strerror(r));
    } else {
        printf("add(2, 3) = %lld\ngreet(\"world\") = %s\n", (long long)n, text);
    }
    tether_error_done(&error);
    tether_value_unref(greeting);
    tether_value_unref(sum);
    tether_future_unref(future);
    tether_client_unref(client);
    return r < 0;
}
