/*
 * buf: see buf.h. Growth doubles; consumed space at the front is reclaimed when the
 * buffer empties or when the pending tail is small compared to what was consumed.
 */
#include "util/buf.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "util/alloc.h"

void
tether__buf_done(tether__buf *b)
{
    tether__free(b->data);
    *b = TETHER__BUF_INIT;
}

int
tether__buf_reserve(tether__buf *b, size_t n)
{
    if (b->off > 0 && (b->off == b->len || b->cap - b->len < n)) {
        size_t pending = b->len - b->off;
        memmove(b->data, b->data + b->off, pending);
        b->len = pending;
        b->off = 0;
    }
    if (b->cap - b->len >= n) {
        return 0;
    }
    size_t want = b->cap ? b->cap : 256;
    while (want - b->len < n) {
        if (want > SIZE_MAX / 2) {
            return -ENOMEM;
        }
        want *= 2;
    }
    uint8_t *p = tether__realloc(b->data, want);
    if (!p) {
        return -ENOMEM;
    }
    b->data = p;
    b->cap = want;
    return 0;
}

int
tether__buf_append(tether__buf *b, const void *p, size_t n)
{
    int r = tether__buf_reserve(b, n);
    if (r < 0) {
        return r;
    }
    if (n) {
        memcpy(b->data + b->len, p, n);
    }
    b->len += n;
    return 0;
}

void
tether__buf_consume(tether__buf *b, size_t n)
{
    b->off += n;
    if (b->off >= b->len) {
        b->off = 0;
        b->len = 0;
    }
}

void
tether__buf_reset(tether__buf *b)
{
    b->off = 0;
    b->len = 0;
}

/* The kept buffer, its capacity stored in its first bytes while it waits (lock-free:
 * nothing can be left locked in a child forked meanwhile). */
static _Atomic(void *) kept;

/* Bigger buffers are not worth holding on to for the process's life. */
#define KEEP_MAX (4u * 1024 * 1024)

void
tether__buf_keep(void *data, size_t cap)
{
    void *none = NULL;
    if (data && cap >= sizeof(size_t) && cap <= KEEP_MAX) {
        memcpy(data, &cap, sizeof(cap));
        if (atomic_compare_exchange_strong(&kept, &none, data)) {
            return;
        }
    }
    tether__free(data);
}

bool
tether__buf_reuse(tether__buf *b, size_t need)
{
    size_t pending = b->len - b->off;
    if (b->cap >= need || need < pending || !atomic_load_explicit(&kept, memory_order_relaxed)) {
        return false;
    }
    uint8_t *data = atomic_exchange(&kept, NULL);
    size_t cap = 0;
    if (data) {
        memcpy(&cap, data, sizeof(cap));
    }
    if (cap < need) {
        if (data) {
            tether__buf_keep(data, cap); /* not for us: for a bigger frame */
        }
        return false;
    }
    if (pending) {
        memcpy(data, b->data + b->off, pending);
    }
    tether__free(b->data);
    *b = (tether__buf){.data = data, .len = pending, .off = 0, .cap = cap};
    return true;
}

static pthread_key_t thread_buf_key;
static pthread_once_t thread_buf_once = PTHREAD_ONCE_INIT;

static void
free_thread_bufs(void *p)
{
    tether__buf *bufs = p;
    for (int i = 0; i < TETHER__THREAD_BUF_SLOTS; i++) {
        tether__buf_done(&bufs[i]);
    }
    tether__free(bufs);
}

static void
make_thread_buf_key(void)
{
    pthread_key_create(&thread_buf_key, free_thread_bufs);
}

tether__buf *
tether__thread_buf(enum tether__thread_buf_slot slot)
{
    pthread_once(&thread_buf_once, make_thread_buf_key);
    tether__buf *bufs = pthread_getspecific(thread_buf_key);
    if (!bufs) {
        bufs = tether__calloc(TETHER__THREAD_BUF_SLOTS, sizeof(*bufs));
        if (!bufs) {
            return NULL;
        }
        pthread_setspecific(thread_buf_key, bufs);
    }
    return &bufs[slot];
}
