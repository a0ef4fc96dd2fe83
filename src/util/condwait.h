/*
 * condwait: waiting on a condition variable until a tether deadline. The condition
 * variables of the library are made with CLOCK_MONOTONIC, the clock of tether_now_usec
 * and of every deadline_usec, so a deadline converts to the timespec as it is.
 */
#ifndef TETHER_CONDWAIT_H
#define TETHER_CONDWAIT_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* Make cv a condition variable of CLOCK_MONOTONIC, for tether__cond_wait_until. */
static inline void
tether__cond_init_monotonic(pthread_cond_t *cv)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &attr);
    pthread_condattr_destroy(&attr);
}

/* Wait once (spurious wake-ups included) until deadline_usec; UINT64_MAX: no bound. */
static inline void
tether__cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *lock, uint64_t deadline_usec)
{
    if (deadline_usec == UINT64_MAX) {
        pthread_cond_wait(cv, lock);
        return;
    }
    struct timespec ts = {.tv_sec = (time_t)(deadline_usec / 1000000),
                          .tv_nsec = (long)(deadline_usec % 1000000) * 1000};
    pthread_cond_timedwait(cv, lock, &ts);
}

#endif
