/*
 * chain: see chain.h. The registry is one small hash table under one mutex: it is
 * touched twice per synchronous call (register, unregister) and once per request that
 * carries a chain, always briefly.
 */
#define _GNU_SOURCE
#include "rpc/chain.h"

#include <errno.h>
#include <stdatomic.h>
#include <unistd.h>

#define BUCKETS 256

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static tether__waiter *registry[BUCKETS]; /* guarded by registry_lock */
static atomic_uint_fast64_t next_chain;

uint64_t
tether__chain_new(void)
{
    uint64_t id = atomic_fetch_add_explicit(&next_chain, 1, memory_order_relaxed);
    if (id == 0) {
        /* First use: start from a random point so that chains of different processes
         * do not collide when they meet in one conversation. */
        uint64_t seed = 0;
        (void)tether__random_bytes(&seed, sizeof(seed)); /* 0 on failure: still valid */
        seed |= 1;
        uint_fast64_t expected = 1;
        atomic_compare_exchange_strong(&next_chain, &expected, seed + 1);
        id = atomic_fetch_add_explicit(&next_chain, 1, memory_order_relaxed);
    }
    return id ? id : tether__chain_new();
}

static size_t
bucket_of(uint64_t chain)
{
    return (size_t)((chain * 0x9e3779b97f4a7c15ull) >> 56) % BUCKETS;
}

int
tether__waiter_push(tether__waiter *w, uint64_t chain)
{
    tether__wake wake = tether__thread_wake();
    if (wake.fd < 0) {
        return wake.fd;
    }
    *w = (tether__waiter){.chain = chain, .thread = pthread_self(), .wake = wake};
    pthread_mutex_lock(&registry_lock);
    size_t b = bucket_of(chain);
    /* Innermost first: a nested wait shadows the enclosing one of the same chain. */
    w->next = registry[b];
    registry[b] = w;
    pthread_mutex_unlock(&registry_lock);
    return 0;
}

tether__work *
tether__waiter_take(tether__waiter *w)
{
    pthread_mutex_lock(&registry_lock);
    tether__work *work = w->inbox_head;
    if (work) {
        w->inbox_head = work->next;
        if (!w->inbox_head) {
            w->inbox_tail = NULL;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return work;
}

void
tether__waiter_pop(tether__waiter *w)
{
    pthread_mutex_lock(&registry_lock);
    for (tether__waiter **p = &registry[bucket_of(w->chain)]; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    /* Nothing can be delivered any more; run what came in just before. */
    tether__work *work;
    while ((work = tether__waiter_take(w))) {
        work->run(work);
    }
}

bool
tether__chain_deliver(uint64_t chain, const pthread_t *only_thread, tether__work *work)
{
    if (chain == 0) {
        return false;
    }
    bool delivered = false;
    pthread_mutex_lock(&registry_lock);
    /* Innermost first; a waiter of the chain on another thread (a pool thread of the
     * same process, say) is passed over, not a reason to give up. */
    for (tether__waiter *w = registry[bucket_of(chain)]; w; w = w->next) {
        if (w->chain != chain || (only_thread && !pthread_equal(w->thread, *only_thread))) {
            continue;
        }
        work->next = NULL;
        if (w->inbox_tail) {
            w->inbox_tail->next = work;
        } else {
            w->inbox_head = work;
        }
        w->inbox_tail = work;
        /* Raised under the lock: the waiter cannot unregister and exit meanwhile. */
        tether__wake_raise(&w->wake);
        delivered = true;
        break;
    }
    pthread_mutex_unlock(&registry_lock);
    return delivered;
}
