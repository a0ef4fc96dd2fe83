/*
 * chain: call chains, which make call-backs into a waiting thread work instead of
 * deadlocking.
 *
 * Every request carries a chain id. A call made by a thread that is not running a
 * handler starts a new chain; a call made from inside a handler carries the chain of
 * the request being handled, so a whole conversation of nested calls, across processes
 * and in both directions, shares one id. A thread blocked in a synchronous call
 * registers itself as the waiter of its chain; a MAIN-context request of that chain,
 * arriving while it waits, is delivered to it if it is the main thread, and a POOL one
 * whatever thread it is, and runs there, as a nested call would in one process, instead
 * of queueing for a main thread that is busy waiting or for a pool whose threads may all
 * be waiting on the same chain.
 *
 * Each waiting thread sleeps on its own wake object (platform.h: made on first use,
 * closed when the thread exits), which both a completed call and a delivered call-back
 * raise.
 */
#ifndef TETHER_CHAIN_H
#define TETHER_CHAIN_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "platform/platform.h"
#include "rpc/mainq.h"

typedef struct tether__waiter {
    struct tether__waiter *next;  /* registry bucket, guarded by the registry lock */
    struct tether__waiter *outer; /* the same thread's enclosing wait, if nested */
    uint64_t chain;
    pthread_t thread;
    tether__wake wake;                     /* the thread's (a copy) */
    tether__work *inbox_head, *inbox_tail; /* guarded by the registry lock */
} tether__waiter;

/* A fresh chain id, never 0. */
uint64_t tether__chain_new(void);

/* Register the calling thread as the waiter of chain (w lives on its stack). */
int tether__waiter_push(tether__waiter *w, uint64_t chain);
/* Unregister; call-backs still in the inbox are run first, on this thread. */
void tether__waiter_pop(tether__waiter *w);
/* Take one delivered call-back, or NULL. */
tether__work *tether__waiter_take(tether__waiter *w);

/*
 * Hand work of chain to its innermost waiter that runs on *only_thread (NULL: on any
 * thread). Returns true if delivered (the waiter will run it), false otherwise.
 */
bool tether__chain_deliver(uint64_t chain, const pthread_t *only_thread, tether__work *work);

#endif
