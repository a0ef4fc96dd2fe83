/* hello_host: serves add(a, b) and greet(name) until SIGINT, SIGTERM or argv[1] seconds. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <tether.h>

/* IO-context handlers run on the library's I/O thread: quick, and never blocking. */
static int
add(tether_request *req, void *userdata)
{
    (void)userdata;
    int a, b;
    int r = tether_request_read(req, "ii", &a, &b); /* on a mismatch the caller gets a TypeError */
    return r < 0 ? r : tether_request_reply(req, "x", (int64_t)a + b);
}

static int
greet(tether_request *req, void *userdata)
{
    (void)userdata;
    const char *name; /* a nil argument reads as NULL */
    char text[256];
    int r = tether_request_read(req, "s", &name);
    if (r < 0) {
        return r;
    }
    snprintf(text, sizeof(text), "Hello, %s!", name ? name : "stranger");
    printf("greeting %s\n", name ? name : "a stranger");
    return tether_request_reply(req, "s", text);
}

int
main(int argc, char **argv)
{
    /* Block the signals before the library starts its I/O thread, which inherits the
     * mask, so that they reach only the sigtimedwait() below. */
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, NULL);

    tether_host *host = NULL;
    int r = tether_host_new(NULL, &host); /* defaults: the host "default", a Unix socket */
    r = r < 0 ? r : tether_host_add_service(host, "add", TETHER_CONTEXT_IO, add, NULL);
    r = r < 0 ? r : tether_host_add_service(host, "greet", TETHER_CONTEXT_IO, greet, NULL);
    r = r < 0 ? r : tether_host_start(host);
    if (r < 0) {
        fprintf(stderr, "hello_host: %s\n", tether_strerror(r));
        tether_host_unref(host);
        return 1;
    }
    printf("serving on %s\n", tether_host_get_address(host));
    fflush(stdout);
    struct timespec limit = {.tv_sec = argc > 1 ? atoi(argv[1]) : 24 * 3600};
    sigtimedwait(&signals, NULL, &limit);
    tether_host_unref(host); /* stops serving, closes the clients, removes the socket */
    return 0;
}
