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
#include "tether.h"
#include "util/buf.h"

/* A buffer that a peer sent: fd (taken: closed on failure too) checked to be of size
 * bytes and mapped read-only. Returns 0, -EPROTO with *why (what the peer got wrong), or
 * -ENOMEM. */
int tether__buffer_from_fd(int fd, uint64_t size, tether_buffer **ret, const char **why);

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

#endif
