/*
 * eval_exec: a host runs Python code in a script, through the script's exec and eval
 * services (tether.services.EvalExec). Start it, then the script:
 *
 *     build/example-eval_exec                                        # shell 1
 *     PYTHONPATH=build/python python3 examples/eval_exec_client.py   # shell 2
 *
 * The host serves the host "eval_exec" and waits for the client "evaluator" to say it is
 * ready. It evaluates x there, which fails with a NameError since nothing set it yet,
 * executes x = 5, evaluates x again (5), and disconnects the client, which then ends.
 * argv[1]: how many seconds to wait for the client (30 by default). Exit status 0 when
 * every step gave what it should.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tether.h>

#define CLIENT "evaluator"

static tether_conn *evaluator; /* main thread only: the client, once it said it is ready */

/* ready(): the client calls it once its services are registered. MAIN: it runs in this
 * program's main thread, inside tether_host_wait(). */
static int
ready(tether_request *req, void *userdata)
{
    (void)userdata;
    tether_conn *conn = tether_request_get_conn(req);
    if (!evaluator && strcmp(tether_conn_get_peer_name(conn), CLIENT) == 0) {
        evaluator = tether_conn_ref(conn);
    }
    return tether_request_reply_value(req, NULL); /* None */
}

/*
 * Call method(source) on the client and print the outcome as Python shows it: the
 * result, or the exception's type and message. Returns the call's code; a result that
 * is an integer is stored in *ret_int, the error's type in type (size bytes).
 */
static int
run(tether_conn *conn, const char *method, const char *source, int64_t *ret_int, char *type,
    size_t size)
{
    tether_value *result = NULL;
    tether_error error = TETHER_ERROR_INIT;
    char *text = NULL;
    int r = tether_conn_call(conn, method, NULL, &result, &error, "s", source);
    type[0] = '\0';
    if (r == 0 && tether_value_read(result, NULL, "n") == 0) {
        printf("%s(\"%s\") -> None\n", method, source);
    } else if (r == 0) {
        tether_value_read(result, NULL, "x", ret_int);
        tether_value_to_string(result, &text);
        printf("%s(\"%s\") -> %s\n", method, source, text ? text : "?");
    } else {
        snprintf(type, size, "%s", error.type ? error.type : "");
        printf("%s(\"%s\") -> %s: %s\n", method, source, error.type ? error.type : "error",
               error.message ? error.message : tether_strerror(r));
    }
    free(text);
    tether_error_done(&error);
    tether_value_unref(result);
    return r;
}

int
main(int argc, char **argv)
{
    long seconds = argc > 1 ? atol(argv[1]) : 30;
    tether_host_options options = {.name = "eval_exec"};
    tether_host *host = NULL;
    int r = tether_host_new(&options, &host);
    r = r < 0 ? r : tether_host_add_service(host, "ready", TETHER_CONTEXT_MAIN, ready, NULL);
    r = r < 0 ? r : tether_host_start(host);
    if (r < 0) {
        fprintf(stderr, "eval_exec: %s\n", tether_strerror(r));
        tether_host_unref(host);
        return 1;
    }
    printf("eval_exec: serving on %s; waiting for the client '%s'\n", tether_host_get_address(host),
           CLIENT);
    fflush(stdout);

    /* Serve MAIN work (ready) until the client is there, or the time is up. */
    uint64_t deadline = tether_now_usec() + (uint64_t)(seconds > 0 ? seconds : 30) * 1000000;
    uint64_t now;
    while (!evaluator && (now = tether_now_usec()) < deadline) {
        tether_host_wait(host, deadline - now);
    }
    if (!evaluator) {
        fprintf(stderr, "eval_exec: no client '%s' came within %ld seconds\n", CLIENT, seconds);
        tether_host_unref(host);
        return 1;
    }
    printf("client '%s' (pid %lld) is ready\n", CLIENT,
           (long long)tether_conn_get_peer_pid(evaluator));

    /* Nothing set x yet: a NameError. Then set it, and it is 5. */
    int64_t x = 0;
    char type[64];
    int ok = 1;
    r = run(evaluator, "eval", "x", &x, type, sizeof(type));
    ok &= r == TETHER_EREMOTE && strcmp(type, "NameError") == 0;
    r = run(evaluator, "exec", "x = 5", &x, type, sizeof(type));
    ok &= r == 0;
    r = run(evaluator, "eval", "x", &x, type, sizeof(type));
    ok &= r == 0 && x == 5;

    /* Done with it: the client is told to go, and shuts down. */
    r = tether_host_disconnect_client(host, evaluator);
    printf("disconnected '%s'%s%s\n", CLIENT, r < 0 ? ": " : "", r < 0 ? tether_strerror(r) : "");
    tether_conn_unref(evaluator);
    tether_host_unref(host);
    printf("eval_exec: %s\n", ok ? "all steps as expected" : "FAILED");
    return ok ? 0 : 1;
}
