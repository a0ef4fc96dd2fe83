/*
 * fdpass: batches of descriptors beside frames (see fdpass.h for the matching rule).
 */
#define _GNU_SOURCE
#include "conn/fdpass.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/alloc.h"

static void
close_all(const int *fds, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
        }
    }
}

void
tether__fd_batch_free(tether__fd_batch *b)
{
    if (b) {
        close_all(b->fds, b->n);
        tether__free(b);
    }
}

int
tether__fd_queue_push(tether__fd_queue *q, uint64_t at, uint64_t len, const int *fds, uint32_t n)
{
    tether__fd_batch *b = n > 0 && n <= TETHER__MAX_FRAME_FDS ? tether__malloc(sizeof(*b)) : NULL;
    if (b && q->n == q->cap) {
        size_t cap = q->cap ? 2 * q->cap : 4;
        tether__fd_batch **v = tether__calloc(cap, sizeof(*v));
        if (v) {
            for (size_t i = 0; i < q->n; i++) {
                v[i] = q->v[(q->head + i) % q->cap];
            }
            tether__free(q->v);
            q->v = v;
            q->head = 0;
            q->cap = cap;
        } else {
            tether__free(b);
            b = NULL;
        }
    }
    if (!b) {
        close_all(fds, n);
        return n > 0 && n <= TETHER__MAX_FRAME_FDS ? -ENOMEM : -EINVAL;
    }
    b->at = at;
    b->len = len;
    b->n = n;
    memcpy(b->fds, fds, n * sizeof(int));
    q->v[(q->head + q->n++) % q->cap] = b;
    q->fds += n;
    return 0;
}

tether__fd_batch *
tether__fd_queue_front(tether__fd_queue *q)
{
    return q->n ? q->v[q->head] : NULL;
}

tether__fd_batch *
tether__fd_queue_pop(tether__fd_queue *q)
{
    if (!q->n) {
        return NULL;
    }
    tether__fd_batch *b = q->v[q->head];
    q->head = (q->head + 1) % q->cap;
    q->n--;
    q->fds -= b->n;
    return b;
}

void
tether__fd_queue_clear(tether__fd_queue *q)
{
    tether__fd_batch *b;
    while ((b = tether__fd_queue_pop(q))) {
        tether__fd_batch_free(b);
    }
    tether__free(q->v);
    *q = (tether__fd_queue)TETHER__FD_QUEUE_INIT;
}

int
tether__fd_claim(tether__fd_queue *q, uint64_t start, uint64_t size, size_t nbuffers,
                 tether__fd_batch **ret, const char **why)
{
    *ret = NULL;
    tether__fd_batch *b = tether__fd_queue_front(q);
    if (b && b->at <= start) {
        *why = "descriptors that came with no frame";
        return -EPROTO;
    }
    /* The read that brought the frame's batch ended inside the frame. */
    bool ours = b && b->at <= start + size;
    if (nbuffers == 0) {
        if (ours) {
            *why = "descriptors with a frame that names no buffer";
            return -EPROTO;
        }
        return 0;
    }
    if (!ours) {
        *why = "a frame that names buffers came without descriptors";
        return -EPROTO;
    }
    if (b->n != nbuffers) {
        *why = "a frame's descriptors and the buffers it names differ in count";
        return -EPROTO;
    }
    *ret = tether__fd_queue_pop(q);
    return 0;
}

ssize_t
tether__fd_send(int sock, const void *p, size_t len, const int *fds, uint32_t n, int flags)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * TETHER__MAX_FRAME_FDS)];
    } control;
    memset(&control, 0, sizeof(control));
    struct iovec iov = {(void *)p, len};
    struct msghdr m = {.msg_iov = &iov,
                       .msg_iovlen = 1,
                       .msg_control = control.buf,
                       .msg_controllen = CMSG_SPACE(sizeof(int) * n)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * n);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
    return sendmsg(sock, &m, flags);
}

ssize_t
tether__fd_recv(int sock, void *p, size_t room, tether__fd_queue *q, uint64_t end_before)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * TETHER__MAX_FRAME_FDS)];
    } control;
    struct iovec iov = {p, room};
    struct msghdr m = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof(control)};
    ssize_t got = recvmsg(sock, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (got < 0 || (m.msg_controllen == 0 && !(m.msg_flags & MSG_CTRUNC))) {
        return got; /* no descriptors came: the usual read */
    }
    int fds[TETHER__MAX_FRAME_FDS];
    uint32_t n = 0;
    bool dropped = (m.msg_flags & MSG_CTRUNC) != 0; /* the kernel closed the rest */
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
            continue; /* nothing else carries descriptors to close */
        }
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (n < TETHER__MAX_FRAME_FDS) {
                fds[n++] = fd;
            } else {
                close(fd);
                dropped = true;
            }
        }
    }
    bool over = dropped || q->fds + n > TETHER__MAX_QUEUED_FDS;
    if (n > 0 && !over && tether__fd_queue_push(q, end_before + (uint64_t)got, 0, fds, n) < 0) {
        errno = ENOMEM;
        return -1;
    }
    if (over) {
        close_all(fds, n);
        errno = EPROTO;
        return -1;
    }
    return got;
}
