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

/* The kept buffers, each one's capacity stored in its first bytes while it waits
 * (lock-free: nothing can be left locked in a child forked meanwhile). Two: a big call's
 * input buffer and its reply's value come back from one echo. */
#define KEPT_SLOTS 2
static _Atomic(void *) kept[KEPT_SLOTS];

/* Smaller buffers are cheap to allocate; bigger ones not worth holding on to for the
 * process's life. */
#define KEEP_MIN (64u * 1024)
#define KEEP_MAX (4u * 1024 * 1024)

void
tether__buf_keep(void *data, size_t cap)
{
    if (data && cap >= KEEP_MIN && cap <= KEEP_MAX) {
        memcpy(data, &cap, sizeof(cap));
        for (int i = 0; i < KEPT_SLOTS; i++) {
            void *none = NULL;
            if (atomic_compare_exchange_strong(&kept[i], &none, data)) {
                return;
            }
        }
    }
    tether__free(data);
}

/* Move b's pending bytes into a kept buffer of at least need bytes, if one waits. */
static bool
reuse_kept(tether__buf *b, size_t need)
{
    for (int i = 0; i < KEPT_SLOTS; i++) {
        if (!atomic_load_explicit(&kept[i], memory_order_relaxed)) {
            continue;
        }
        uint8_t *data = atomic_exchange(&kept[i], NULL);
        size_t cap = 0;
        if (data) {
            memcpy(&cap, data, sizeof(cap));
        }
        if (cap < need) {
            if (data) {
                tether__buf_keep(data, cap); /* not for us: for a bigger one */
            }
            continue;
        }
        size_t pending = b->len - b->off;
        if (pending) {
            memcpy(data, b->data + b->off, pending);
        }
        tether__free(b->data);
        *b = (tether__buf){.data = data, .len = pending, .off = 0, .cap = cap};
        return true;
    }
    return false;
}

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
    /* A big buffer is taken from those kept, whose pages are mapped already: a fresh one
     * costs a page fault per 4 KiB, the same again as copying into it. */
    size_t need = b->len - b->off + n;
    if (need >= KEEP_MIN && need <= KEEP_MAX && reuse_kept(b, need)) {
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
