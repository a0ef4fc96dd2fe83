/*
 * clock: the library's one clock. Every time inside tether is CLOCK_MONOTONIC
 * microseconds in a uint64_t, so deadlines and timeouts never mix units.
 */
#define _POSIX_C_SOURCE 200809L

#include <time.h>

#include "tether.h"

uint64_t
tether_now_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
