/*
 * endpoint: what a host and a client have in common and what their connections need
 * from them: the service table, the log sink, the limits and default timeouts, and
 * hooks for the role-specific parts (a host forgets a closed client; a client acts on
 * control messages).
 *
 * An endpoint is reference counted separately from the public host or client: every
 * connection holds a reference, so a connection the application still holds can
 * outlive its host object safely (calls then fail with TETHER_ENOTCONN).
 */
#ifndef TETHER_ENDPOINT_H
#define TETHER_ENDPOINT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "codec/handshake.h"
#include "conn/ioloop.h"
#include "conn/link.h"
#include "rpc/mainq.h"
#include "tether.h"
#include "util/log.h"


typedef struct tether__service {
    struct tether__service *next;
    char *name;
    tether_context context;
    tether_handler_fn handler;
    void *userdata;
} tether__service;

typedef struct tether__endpoint tether__endpoint;

typedef struct tether__endpoint_hooks {
    /* A connection started being served (on the I/O thread). */
    void (*attached)(tether__endpoint *ep, tether_conn *conn);
    /* A connection closed (on the I/O thread). */
    void (*conn_closed)(tether__endpoint *ep, tether_conn *conn);
    /* A client's current connection, for calls made on one it replaced (any thread);
     * waits until wait_deadline_usec for one to come. NULL: none. */
    tether_conn *(*current_conn)(tether__endpoint *ep, uint64_t wait_deadline_usec);
    /* A hello arrived on a host's connection (on the I/O thread): accept it (send the
     * welcome, open the connection) or fill result with a refusal. */
    void (*hello)(tether__endpoint *ep, tether_conn *conn, const tether__hello *hello,
                  tether__hello_result *result);
    /* A CONTROL frame arrived (on the I/O thread). */
    void (*control)(tether__endpoint *ep, tether_conn *conn, const char *action,
                    const char *reason);
} tether__endpoint_hooks;

struct tether__endpoint {
    atomic_uint refs;
    tether__ioloop *loop;
    char *name; /* own name, for hello/welcome */
    bool is_host;
    void *owner; /* tether_host * or tether_client *; cleared under owner_lock when it goes */
    pthread_rwlock_t owner_lock;
    tether__endpoint_hooks hooks;

    uint32_t max_frame_size;
    uint32_t max_in_flight;
    uint64_t default_timeout_usec;
    uint64_t max_output_bytes;
    uint64_t max_buffer_bytes;
    uint32_t max_call_depth;

    tether__logger logger;

    /* Work for the owner's main thread (MAIN services and callbacks) and that thread. */
    tether__mainq *mainq;
    tether__lane objects_lane; /* releases of local objects with a MAIN release */
    pthread_t main_thread;
    unsigned fork_generation;

    pthread_rwlock_t services_lock;
    tether__service *services[64]; /* guarded by services_lock; chained hash on name */
    atomic_bool pool_services;     /* some service runs in TETHER_CONTEXT_POOL */

    /* Handlers running (services and methods of local objects), on any thread: a host
     * that stops and a client that goes wait for them, so that their owner may free
     * what the handlers use once that returns (tether__endpoint_close_handlers). */
    atomic_uint handlers_running;
    atomic_bool handlers_closed; /* none may start: the owner stopped or went */
    pthread_mutex_t handlers_lock;
    pthread_cond_t handlers_idle;
};

/* A handler running on this thread, innermost first (they nest: a call a handler
 * makes can run a call-back's handler inline). Lives on the stack of the caller. */
typedef struct tether__handler_frame {
    tether__endpoint *ep;
    struct tether__handler_frame *outer;
} tether__handler_frame;

/* The notification a client sends its host to name its services: as it connects (all
 * of them) and when it registers one later; args [[name, ...]] (docs/protocol.md,
 * "Service announcements"). Protocol bookkeeping: not counted as a call. */
#define TETHER__ANNOUNCE "tether.announce"

#define TETHER__DEFAULT_TIMEOUT_USEC (30ull * 1000 * 1000)
#define TETHER__DEFAULT_MAX_IN_FLIGHT 1024u
#define TETHER__DEFAULT_MAX_OUTPUT_BYTES (64ull * 1024 * 1024)
/* Shared memory of a peer's buffers one connection may hold mapped at once. */
#define TETHER__DEFAULT_MAX_BUFFER_BYTES (1ull << 30)

int tether__endpoint_new(const char *name, bool is_host, tether__endpoint **ret);
tether__endpoint *tether__endpoint_ref(tether__endpoint *ep);
void tether__endpoint_unref(tether__endpoint *ep);

/* Apply the limits and log settings common to host and client options (0: default). */
void tether__endpoint_configure(tether__endpoint *ep, uint32_t max_frame_size,
                                uint32_t max_in_flight, uint64_t default_timeout_usec,
                                uint64_t max_output_bytes, uint32_t max_call_depth,
                                tether_log_fn log, void *log_userdata, int log_level);

int tether__endpoint_add_service(tether__endpoint *ep, const char *name, tether_context context,
                                 tether_handler_fn handler, void *userdata);
/* Copies the service's fields into *ret. Returns 0 or -ENOENT. */
int tether__endpoint_find_service(tether__endpoint *ep, const char *name, size_t name_len,
                                  tether__service *ret);
/* Newly allocated copies of every service's name (free each and the array). */
int tether__endpoint_service_names(tether__endpoint *ep, char ***ret_names, size_t *ret_count);

/*
 * Count a handler of ep as running on this thread until leave; returns false, counting
 * nothing, once handlers are closed (tether__endpoint_close_handlers): the handler must
 * not run. Thread: the handler's.
 */
bool tether__endpoint_handler_enter(tether__endpoint *ep, tether__handler_frame *frame);
void tether__endpoint_handler_leave(tether__endpoint *ep, tether__handler_frame *frame);
/*
 * Let no handler of ep start from now on, and wait until none runs on another thread:
 * its owner may then free what they use. It does not wait when this thread runs a
 * handler of ep (it would wait for itself). Final. Thread: any.
 */
void tether__endpoint_close_handlers(tether__endpoint *ep);

/* Checks for the owner's main-thread calls: 0, -EPERM (wrong thread), -ECHILD (forked). */
int tether__endpoint_check_main(const tether__endpoint *ep);
int tether__endpoint_dispatch(tether__endpoint *ep, uint64_t budget_usec);
/* Wait on the main thread for queued work and run it (1), or time out (0). conn: a
 * connection this thread reads meanwhile (rpc/main_wait.c), or NULL. */
int tether__endpoint_wait(tether__endpoint *ep, tether_conn *conn, uint64_t timeout_usec);

void tether__log(const tether__endpoint *ep, int level, const char *format, ...)
    TETHER_PRINTF(3, 4);

#define tether__log_enabled(ep, level) tether__logger_enabled(&(ep)->logger, level)

/* The highest protocol version this build offers: TETHER__PROTOCOL_VERSION where the
 * platform has sealable shared memory for buffers, 1 where it has not. */
uint32_t tether__protocol_version(void);

#endif
