/* minimal_host: the smallest embedding, a host with one service. Runs argv[1] seconds. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <tether.h>

static int
ping(tether_request *req, void *userdata)
{
    (void)userdata;
    return tether_request_reply(req, "s", "pong");
}

int
main(int argc, char **argv)
{
    tether_host *host = NULL;
    int r = tether_host_new(NULL, &host);
    r = r < 0 ? r : tether_host_add_service(host, "ping", TETHER_CONTEXT_IO, ping, NULL);
    r = r < 0 ? r : tether_host_start(host);
    if (r < 0) {
        fprintf(stderr, "minimal_host: %s\n", tether_strerror(r));
        tether_host_unref(host);
        return 1;
    }
    printf("serving on %s\n", tether_host_get_address(host));
    fflush(stdout);
    sleep(argc > 1 ? (unsigned)atoi(argv[1]) : 60); /* your application's main loop */
    tether_host_unref(host);
    return 0;
}
