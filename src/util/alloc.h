/*
 * alloc: the one allocator indirection of the library. Every allocation goes through
 * these, so a host allocator can be plugged in later without touching call sites.
 */
#ifndef TETHER_ALLOC_H
#define TETHER_ALLOC_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

static inline void *
tether__malloc(size_t n)
{
    return malloc(n);
}

static inline void *
tether__calloc(size_t n, size_t size)
{
    return calloc(n, size);
}

static inline void *
tether__realloc(void *p, size_t n)
{
    return realloc(p, n);
}

static inline void
tether__free(void *p)
{
    free(p);
}

static inline char *
tether__strdup(const char *s)
{
    if (!s) {
        return NULL;
    }
    size_t n = strlen(s) + 1;
    char *r = tether__malloc(n);
    if (r) {
        memcpy(r, s, n);
    }
    return r;
}

static inline char *
tether__strndup(const char *s, size_t len)
{
    char *r = tether__malloc(len + 1);
    if (r) {
        memcpy(r, s, len);
        r[len] = '\0';
    }
    return r;
}

#endif
