/*
 * bench-py-host: the C host bench/python-bench calls from Python; public API only.
 *
 *   bench-py-host RUNTIME_DIR
 *
 * Serves, on the library's I/O thread (TETHER_CONTEXT_IO, so no hop to a main thread):
 *   noop()     replies nil
 *   echo(b)    replies its bytes argument b
 * on RUNTIME_DIR/bench-py.sock, prints "ready ADDRESS" on stdout once listening, and
 * exits when its standard input reaches end of file (so it never outlives the benchmark
 * that started it).
 */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <tether.h>

static int
noop(tether_request *req, void *userdata)
{
    (void)req;
    (void)userdata;
    return 0; /* returning without a reply replies nil */
}

static int
echo(tether_request *req, void *userdata)
{
    (void)userdata;
    const void *data;
    size_t size;
    /* "y" reads the bin in place (no copy); the reply copies it once into its frame. */
    int r = tether_request_read(req, "y", &data, &size);
    return r < 0 ? r : tether_request_reply(req, "y", data, size);
}

int
main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s RUNTIME_DIR\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    tether_host_options options = {
        .name = "bench-py",
        .runtime_dir = argv[1],
        /* python-bench keeps 10,000 calls in flight; over the limit (1024 by default)
         * the host would answer tether.TooManyRequests instead of running them. */
        .max_in_flight = 16384,
        /* A 1 MiB echo argument plus the request's envelope; the default (16 MiB) would
         * do, this states what the benchmark needs. */
        .max_frame_size = 2u << 20,
    };
    tether_host *host = NULL;
    int r = tether_host_new(&options, &host);
    r = r < 0 ? r : tether_host_add_service(host, "noop", TETHER_CONTEXT_IO, noop, NULL);
    r = r < 0 ? r : tether_host_add_service(host, "echo", TETHER_CONTEXT_IO, echo, NULL);
    r = r < 0 ? r : tether_host_start(host);
    if (r < 0) {
        fprintf(stderr, "bench-py-host: %s\n", tether_strerror(r));
        tether_host_unref(host);
        return 1;
    }
    printf("ready %s\n", tether_host_get_address(host));
    fflush(stdout);

    char buf[256];
    while (read(STDIN_FILENO, buf, sizeof(buf)) > 0) {
    }
    tether_host_unref(host); /* stops serving, removes the socket */
    return 0;
}
