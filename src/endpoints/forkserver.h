/*
 * forkserver: what spawn.c uses of the fork servers that warm spawns fork their children
 * from (forkserver.c). Nothing outside the endpoints layer includes it.
 */
#ifndef TETHER_ENDPOINTS_FORKSERVER_H
#define TETHER_ENDPOINTS_FORKSERVER_H

#include <stddef.h>
#include <stdint.h>

#include "rpc/endpoint.h"
#include "tether.h"

typedef struct tether__forkserver tether__forkserver;

/*
 * One warm child as its fork server follows it, embedded in the spawner's record of the
 * child. The callbacks run on the I/O thread, without the server's lock.
 */
typedef struct tether__fork_slot tether__fork_slot;
struct tether__fork_slot {
    tether__fork_slot *next; /* in its server's lists, guarded by the server's lock */
    int64_t pid;             /* once the server answered it */
    /* The server forked the child: slot->pid is set. */
    void (*forked)(tether__fork_slot *slot);
    /*
     * Called once for each slot that tether__forkserver_fork() queued: the child exited
     * with status (an exit code, or -signal), or it never started or cannot be followed
     * any more (status -SIGKILL). When the server failed it, r < 0 and why says how:
     * -EIO (the server could not fork), -EPROTO (the server sent a malformed message),
     * -ECONNRESET (the server ended); otherwise r is 0 and why NULL.
     */
    void (*ended)(tether__fork_slot *slot, int status, int r, const char *why);
};

/* What tells fork servers apart, and how to start one. */
typedef struct tether__forkserver_spec {
    tether_host *host;
    tether__endpoint *ep;
    const char *executable;
    const char *python_path;
    const char *const *env; /* tether_spawn_options.env */
    /* Start the server's process (python/tether/_forkserver.py) with fd as its fd 3:
     * 0 and a new reference to it in *ret_proc, or a negative code. */
    int (*start)(const struct tether__forkserver_spec *spec, int fd, tether_child **ret_proc);
    void *start_arg;
} tether__forkserver_spec;

/*
 * The host's fork server for spec, started on first use and ready; a new reference.
 * Not on the I/O thread (it waits for the server). Returns 0, or a negative code with a
 * reason in why (why_size bytes).
 */
int tether__forkserver_get(const tether__forkserver_spec *spec, tether__forkserver **ret, char *why,
                           size_t why_size);
tether__forkserver *tether__forkserver_ref(tether__forkserver *fs);
void tether__forkserver_unref(tether__forkserver *fs);

/*
 * I/O thread: ask fs for a child that gets fds (its end of the socket pair, its stdout
 * and stderr; fs sends copies), runs in cwd (NULL: the server's) and is called name.
 * 0: slot is queued, its callbacks will come; or a negative code, and no callback.
 */
int tether__forkserver_fork(tether__forkserver *fs, tether__fork_slot *slot, const int fds[3],
                            const char *cwd, const char *name);

#endif
