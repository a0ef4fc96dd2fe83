/*
 * buffer: tether_buffer, bytes in shared memory (protocol version 2, docs/protocol.md
 * "Buffers").
 *
 * A buffer made here is an anonymous file of fixed size (platform.h, tether__shm_create)
 * mapped read-write; one received is the file a peer sent, checked (tether__shm_check)
 * and mapped read-only. Either keeps its descriptor, so that it can be sent on (a host
 * relaying a script's frame to another sends the same memory). A value names a buffer
 * with a BUFFER ext [size]; the buffer travels as its descriptor beside the frame on a
 * connection that passes descriptors, and as its bytes (a bin) on any other.
 */
#ifndef TETHER_BUFFER_H
#define TETHER_BUFFER_H

#include <stddef.h>
#include <stdint.h>

#include "codec/msgpack.h"
#include "conn/fdpass.h"
#include "conn/ioloop.h"
#include "tether.h"
#include "util/buf.h"

/* A buffer that a peer sent: fd (taken: closed on failure too) checked to be of size
 * bytes and mapped read-only. Returns 0, -EPROTO with *why (what the peer got wrong), or
 * -ENOMEM. */
int tether__buffer_from_fd(int fd, uint64_t size, tether_buffer **ret, const char **why);

/* Free the memory kept for reuse (tests that count descriptors). */
void tether__buffer_pool_clear(void);
/* Mappings made since the process started, received buffers' and new ones' (tests). */
uint64_t tether__buffer_mappings_made(void);

/* What tether_buffer_set_array said of b: its format (0: plain bytes) and shape. */
char tether__buffer_array(const tether_buffer *b, const uint64_t **ret_shape, uint32_t *ret_ndim);

/* Buffers named in a value's bytes, at the offsets of their BUFFER exts. */
typedef struct tether__bufref {
    size_t off;
    tether_buffer *buf; /* a reference */
} tether__bufref;

typedef struct tether__bufvec {
    tether__bufref *v;
    size_t n, cap;
} tether__bufvec;

#define TETHER__BUFVEC_INIT ((tether__bufvec){NULL, 0, 0})

/* Append (off, buf), taking a new reference to buf. Returns 0 or -ENOMEM. */
int tether__bufvec_push(tether__bufvec *vec, size_t off, tether_buffer *buf);
/* Release every reference and the array. */
void tether__bufvec_clear(tether__bufvec *vec);


/* ---- buffers on a connection ------------------------------------------------------ */

struct tether__link;
struct tether__frame;

/*
 * How the buffers of the values a frame carries go out on link l (the values borrowed,
 * NULL entries allowed, in the order their bytes stand in the frame): where l passes
 * descriptors, their descriptors in that order (fds, n; borrowed from the buffers); where
 * it does not, each value's bytes with its buffers written inline, in flat[i], to send
 * instead of the value's own bytes (*bytes[i], *lens[i] are pointed there).
 */
typedef struct tether__outbufs {
    int fds[TETHER__MAX_FRAME_FDS];
    uint32_t n;
    tether__buf flat[2];
} tether__outbufs;

/* Returns 0, -EMSGSIZE (more buffers than a frame carries), -ENOMEM. */
int tether__outbufs_prepare(struct tether__link *l, tether_value *const *values, size_t count,
                            const uint8_t **const *bytes, size_t *const *lens,
                            tether__outbufs *ob);
void tether__outbufs_done(tether__outbufs *ob);

/*
 * Inside the hook acting on frame f: bind the descriptors that came with it to the
 * BUFFER exts of its spans (args, kwargs or value, in frame order), checked and mapped,
 * into vecs[i] at offsets within spans[i]. Returns 0, or -EPROTO with *why (the
 * connection breaks the protocol: the caller fails it), -ENOMEM. Descriptors not bound
 * are closed.
 */
int tether__buffers_bind(struct tether__link *l, const struct tether__frame *f,
                         const tether__span *spans, size_t count, tether__bufvec *vecs,
                         const char **why);

/* ---- a connection's buffers ---------------------------------------------------------- */

struct tether_conn;

/*
 * A buffer sent on a connection is held until the peer says, with BUFFERS_DONE, that it
 * no longer maps it; a buffer received is said done when its last reference goes. So
 * memory made here goes back to the pool of reusable memory (buffer.c) only once every
 * peer it reached, and every peer those sent it on to, is done with it. A connection
 * that closes with buffers not said done taints them: its peer may map them still, so
 * they are neither reused nor said done upstream.
 */
typedef struct tether__sent_buffer {
    uint64_t inode;
    tether_buffer *buf; /* a reference, until the peer is done with it */
    uint32_t receipts;  /* sent and not said done yet */
} tether__sent_buffer;

typedef struct tether__conn_buffers {
    tether__sent_buffer *sent; /* conn lock */
    size_t nsent, capsent;
    /* conn lock: bytes of the peer's buffers mapped here, and the most allowed */
    uint64_t held, max_held;
    uint64_t *done; /* conn lock: inodes for the next BUFFERS_DONE */
    size_t ndone, capdone;
    bool done_posted;
    tether__task done_task;
} tether__conn_buffers;

/* The peer's BUFFERS_DONE, on whichever thread reads (a caller waiting for its answer
 * too: memory comes back to the pool before the caller's next send). */
void tether__conn_buffers_on_done(struct tether_conn *c, const struct tether__frame *f);
/* The connection failed or goes: forget what was sent (left out of the pool) and what
 * was to be said done. */
void tether__conn_drop_buffers(struct tether_conn *c);

#endif
