/*
 * fdpass: descriptors that travel beside frames on a Unix socket (SCM_RIGHTS), and the
 * rule that ties each batch of them to its frame (docs/protocol.md, "Buffers").
 *
 * The sender writes a frame that carries descriptors with one sendmsg of its own, whose
 * data is that frame alone and begins at its first byte, the descriptors attached. Linux
 * hands attached descriptors to the read that takes the first byte they came with, and
 * ends that read within the same write: so the last byte of the read that brought a
 * batch lies inside its frame. The receiver notes each batch with the stream offset
 * where that read ended and gives it to the frame that holds the byte before. A batch
 * whose read ended before the frame being decoded began belongs to no frame; a frame
 * that names buffers takes exactly one batch, of exactly as many descriptors. Either
 * breaks the protocol, and every descriptor the connection holds is closed with it.
 *
 * A queue holds batches in stream order: on the sending side from tether__link_send_fds
 * until the frame is written, on the receiving side from the read until a frame takes
 * them (or they are closed). The queue's owner guards it.
 */
#ifndef TETHER_FDPASS_H
#define TETHER_FDPASS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Descriptors one frame may carry; a read brings at most this many. */
#define TETHER__MAX_FRAME_FDS 64u
/* Descriptors a receiving queue may hold before frames take them. */
#define TETHER__MAX_QUEUED_FDS 256u

typedef struct tether__fd_batch {
    uint64_t at;  /* sending: the frame's first byte; receiving: the end of its read */
    uint64_t len; /* sending: the frame's size, length prefix included */
    uint32_t n;
    int fds[TETHER__MAX_FRAME_FDS];
} tether__fd_batch;

typedef struct tether__fd_queue {
    tether__fd_batch **v; /* a ring of head..head + n */
    size_t head, n, cap;
    size_t fds; /* descriptors held */
} tether__fd_queue;

#define TETHER__FD_QUEUE_INIT {NULL, 0, 0, 0, 0}

/* Append a batch of n (1 to TETHER__MAX_FRAME_FDS) descriptors, which the queue owns
 * from now on whatever the outcome (closed on failure). Returns 0 or -ENOMEM. */
int tether__fd_queue_push(tether__fd_queue *q, uint64_t at, uint64_t len, const int *fds,
                          uint32_t n);
/* The oldest batch, or NULL. */
tether__fd_batch *tether__fd_queue_front(tether__fd_queue *q);
/* Remove the oldest batch and return it (the caller owns it and its descriptors: free it
 * with tether__fd_batch_free), or NULL. */
tether__fd_batch *tether__fd_queue_pop(tether__fd_queue *q);
/* Close every descriptor held and free the queue. */
void tether__fd_queue_clear(tether__fd_queue *q);
/* Close the batch's descriptors that are still >= 0 and free it. Accepts NULL. */
void tether__fd_batch_free(tether__fd_batch *b);

/*
 * The batch for the frame that occupies stream bytes [start, start + size), taken from
 * the front of q (receiving side). Returns 0 with *ret the batch (NULL when the frame
 * names no buffers, nbuffers 0), or -EPROTO with *why saying which rule the peer broke:
 * descriptors that came before the frame and belong to none, a frame without its batch,
 * or a batch of another count.
 */
int tether__fd_claim(tether__fd_queue *q, uint64_t start, uint64_t size, size_t nbuffers,
                     tether__fd_batch **ret, const char **why);

/*
 * sendmsg of data [p, p + len) with the n descriptors attached. Returns what sendmsg
 * does (bytes written, the descriptors sent with them if > 0; -1 with errno).
 */
ssize_t tether__fd_send(int sock, const void *p, size_t len, const int *fds, uint32_t n,
                        int flags);

/*
 * recvmsg into [p, p + room), the descriptors that came queued on q as one batch ending
 * at stream offset end_before + the bytes read (close-on-exec). Returns bytes read (0 at
 * the end of input), or -1 with errno; EPROTO when the peer sent more descriptors than
 * a read takes or the queue holds (those are closed).
 */
ssize_t tether__fd_recv(int sock, void *p, size_t room, tether__fd_queue *q, uint64_t end_before);

#endif
