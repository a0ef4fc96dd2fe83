/*
 * host internals shared by the files of the endpoints layer (host.c, spawn.c, forkserver.c,
 * builtins.c); nothing below this layer includes it.
 */
#ifndef TETHER_ENDPOINTS_HOST_H
#define TETHER_ENDPOINTS_HOST_H

#include <stdint.h>

#include "rpc/conn.h"
#include "rpc/endpoint.h"
#include "tether.h"

/* The host's endpoint (borrowed). */
tether__endpoint *tether__host_endpoint(tether_host *host);
/* Serve a spawned child's end of a socket pair (trusted) with on_open called once it
 * completed its handshake; stores a new reference to the connection. The host owns fd
 * on success. */
int tether__host_adopt_child(tether_host *host, int fd, void (*on_open)(void *arg), void *arg,
                             tether_conn **ret_conn);
/* builtins.c: register the built-in services of flags (TETHER_BUILTIN_*). */
int tether__builtins_add(tether_host *host, uint32_t flags);
/* forkserver.c: the host stopped; its fork servers end. */
void tether__forkserver_host_stopped(tether_host *host);

#endif
