/*
 * buf: a growable byte buffer with a read offset, used for frames being built, for a
 * connection's input and for its output queue. Bytes [off, len) are pending; consume()
 * advances off and compacts lazily, so appending and consuming are both amortised O(1).
 */
#ifndef TETHER_BUF_H
#define TETHER_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tether__buf {
    uint8_t *data;
    size_t len; /* bytes written */
    size_t off; /* bytes already consumed from the front */
    size_t cap;
} tether__buf;

#define TETHER__BUF_INIT ((tether__buf){0})

void tether__buf_done(tether__buf *b);
/* Make room for at least n more bytes after len. Returns 0 or -ENOMEM. */
int tether__buf_reserve(tether__buf *b, size_t n);
int tether__buf_append(tether__buf *b, const void *p, size_t n);
/* Drop n pending bytes from the front. */
void tether__buf_consume(tether__buf *b, size_t n);
/* Forget everything, keep the memory. */
void tether__buf_reset(tether__buf *b);

/* Buffers kept per thread for reuse, freed when the thread exits. */
enum tether__thread_buf_slot {
    TETHER__THREAD_BUF_READ = 0,   /* connection reads (conn.c) */
    TETHER__THREAD_BUF_FORMAT = 1, /* values built from formats before framing */
    TETHER__THREAD_BUF_SLOTS = 2,
};

/* The calling thread's buffer of that slot (made on first use), or NULL if out of
 * memory. A caller uses it only between two calls that cannot reach the same slot. */
tether__buf *tether__thread_buf(enum tether__thread_buf_slot slot);

/*
 * Big buffers kept for the whole process: a frame's input buffer that a value took
 * (conn/link.h, tether__link_take_input) or a reply's value that the link sent comes
 * back here when done with, and a buffer growing to that size (tether__buf_reserve)
 * takes it, so that megabytes sent call after call reuse pages already mapped instead
 * of faulting fresh ones in (each fault costs microseconds on a virtual machine).
 * keep takes data (cap bytes; kept from 64 KiB to 4 MiB, two at most, else freed).
 * Thread: any.
 */
void tether__buf_keep(void *data, size_t cap);

static inline size_t
tether__buf_pending(const tether__buf *b)
{
    return b->len - b->off;
}

static inline uint8_t *
tether__buf_head(const tether__buf *b)
{
    return b->data + b->off;
}

#endif
