/*
 * test-fdpass: descriptors beside frames (conn/fdpass.h) over real Unix socket pairs:
 * the rule that gives each batch to its frame, checked against what the kernel does
 * with a read that meets descriptors, and every way a peer can break it.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conn/fdpass.h"
#include "platform/platform.h"

static int
open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    while (readdir(d)) {
        n++;
    }
    closedir(d);
    return n;
}

static void
socket_pair(int sv[2])
{
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
}

static void
send_all(int sock, const uint8_t *p, size_t len, const int *fds, uint32_t n)
{
    while (len > 0) {
        ssize_t w = n ? tether__fd_send(sock, p, len, fds, n, MSG_NOSIGNAL)
                      : send(sock, p, len, MSG_NOSIGNAL);
        cr_assert_gt(w, 0, "send: %s", strerror(errno));
        p += w;
        len -= (size_t)w;
        n = 0; /* sent with the first byte */
    }
}

/* Read everything the socket has, len bytes in all, in reads of at most chunk bytes. */
static void
recv_all(int sock, uint8_t *p, size_t len, size_t chunk, tether__fd_queue *q)
{
    size_t got = 0;
    while (got < len) {
        size_t room = len - got < chunk ? len - got : chunk;
        ssize_t r = tether__fd_recv(sock, p + got, room, q, got);
        if (r < 0 && errno == EAGAIN) {
            usleep(1000);
            continue;
        }
        cr_assert_gt(r, 0, "recv: %s", strerror(errno));
        got += (size_t)r;
    }
}

static void
same_file(int a, int b)
{
    struct stat sa, sb;
    cr_assert_eq(fstat(a, &sa), 0);
    cr_assert_eq(fstat(b, &sb), 0);
    cr_assert(sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev);
}

/* Frames A (no descriptors), B (two), C (none), D (one), sent one after another and read
 * in one go: each batch lands in its own frame. */
Test(fdpass, batches_land_in_their_frames_whatever_the_reads)
{
    const size_t sizes[] = {10, 20, 10, 7};
    size_t chunks[] = {1, 3, 17, 4096};
    for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
        int sv[2], p1[2], p2[2];
        socket_pair(sv);
        cr_assert_eq(pipe2(p1, O_CLOEXEC), 0);
        cr_assert_eq(pipe2(p2, O_CLOEXEC), 0);
        uint8_t bytes[47];
        memset(bytes, 'x', sizeof(bytes));
        int two[] = {p1[0], p1[1]};
        send_all(sv[0], bytes, 10, NULL, 0);
        send_all(sv[0], bytes + 10, 20, two, 2);
        send_all(sv[0], bytes + 30, 10, NULL, 0);
        send_all(sv[0], bytes + 40, 7, &p2[0], 1);
        tether__fd_queue q = TETHER__FD_QUEUE_INIT;
        uint8_t in[47];
        recv_all(sv[1], in, sizeof(in), chunks[c], &q);
        cr_assert_eq(q.n, 2, "chunk %zu", chunks[c]);
        size_t start = 0;
        size_t want[] = {0, 2, 0, 1};
        for (size_t i = 0; i < 4; i++) {
            tether__fd_batch *b;
            const char *why = NULL;
            cr_assert_eq(tether__fd_claim(&q, start, sizes[i], want[i], &b,
                                          &why),
                         0, "chunk %zu frame %zu: %s", chunks[c], i, why ? why : "");
            if (want[i]) {
                cr_assert_not_null(b);
                cr_assert_eq(b->n, want[i]);
                same_file(b->fds[0], i == 1 ? p1[0] : p2[0]);
                tether__fd_batch_free(b);
            } else {
                cr_assert_null(b);
            }
            start += sizes[i];
        }
        cr_assert_eq(q.n, 0);
        tether__fd_queue_clear(&q);
        close(p1[0]), close(p1[1]), close(p2[0]), close(p2[1]);
        close(sv[0]), close(sv[1]);
    }
}

/* A frame bigger than the socket's buffer: its batch comes with its first part. */
Test(fdpass, a_big_frame_brings_its_batch_with_its_first_part)
{
    int sv[2], p[2];
    socket_pair(sv);
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    size_t before = 100, big = 4u << 20;
    uint8_t *bytes = calloc(1, before + big);
    uint8_t *in = calloc(1, before + big);
    cr_assert(bytes && in);
    cr_assert_eq(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
    send_all(sv[0], bytes, before, NULL, 0);
    /* The sender writes what fits, the receiver reads, in turns. */
    size_t sent = 0, got = 0;
    tether__fd_queue q = TETHER__FD_QUEUE_INIT;
    bool with = true;
    while (got < before + big) {
        if (sent < big) {
            ssize_t w = with ? tether__fd_send(sv[0], bytes + before + sent, big - sent, &p[0], 1,
                                               MSG_NOSIGNAL | MSG_DONTWAIT)
                             : send(sv[0], bytes + before + sent, big - sent,
                                    MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) {
                sent += (size_t)w;
                with = false;
            }
        }
        ssize_t r = tether__fd_recv(sv[1], in + got, before + big - got, &q, got);
        if (r > 0) {
            got += (size_t)r;
        }
    }
    tether__fd_batch *b;
    const char *why = NULL;
    cr_assert_eq(tether__fd_claim(&q, 0, before, 0, &b, &why), 0, "%s", why ? why : "");
    cr_assert_eq(tether__fd_claim(&q, before, big, 1, &b, &why), 0, "%s", why ? why : "");
    same_file(b->fds[0], p[0]);
    tether__fd_batch_free(b);
    tether__fd_queue_clear(&q);
    free(bytes);
    free(in);
    close(p[0]), close(p[1]), close(sv[0]), close(sv[1]);
}

/* What a peer can get wrong: each is found, and no descriptor outlives the queue. */
Test(fdpass, broken_rules_are_found_and_nothing_leaks)
{
    int baseline = open_fds();
    int sv[2], p[2];
    socket_pair(sv);
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    uint8_t bytes[30] = {0}, in[30];
    tether__fd_queue q = TETHER__FD_QUEUE_INIT;
    tether__fd_batch *b;
    const char *why;

    /* Descriptors with a frame that names no buffer. */
    send_all(sv[0], bytes, 10, &p[0], 1);
    recv_all(sv[1], in, 10, 64, &q);
    cr_assert_eq(tether__fd_claim(&q, 0, 10, 0, &b, &why), -EPROTO);
    tether__fd_queue_clear(&q);

    /* A frame that names a buffer, without descriptors. */
    send_all(sv[0], bytes, 10, NULL, 0);
    recv_all(sv[1], in, 10, 64, &q);
    cr_assert_eq(tether__fd_claim(&q, 0, 10, 1, &b, &why), -EPROTO);

    /* Descriptors sent with the frame before the one that names them: found by the next
     * frame whatever it names. */
    send_all(sv[0], bytes, 10, &p[0], 1);
    send_all(sv[0], bytes + 10, 10, NULL, 0);
    recv_all(sv[1], in, 20, 64, &q);
    cr_assert_eq(tether__fd_claim(&q, 10, 10, 1, &b, &why), -EPROTO);
    tether__fd_queue_clear(&q);

    /* Another count than the frame's buffers. */
    int two[] = {p[0], p[1]};
    send_all(sv[0], bytes, 10, two, 2);
    recv_all(sv[1], in, 10, 64, &q);
    cr_assert_eq(tether__fd_claim(&q, 0, 10, 1, &b, &why), -EPROTO);
    tether__fd_queue_clear(&q);

    /* More than a frame may carry in one read: refused, all closed. */
    int many[TETHER__MAX_FRAME_FDS + 1];
    for (size_t i = 0; i < sizeof(many) / sizeof(many[0]); i++) {
        many[i] = p[0];
    }
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(many))];
    } control;
    struct iovec iov = {bytes, 10};
    struct msghdr m = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof(control.buf)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(many));
    memcpy(CMSG_DATA(c), many, sizeof(many));
    cr_assert_eq(sendmsg(sv[0], &m, 0), 10);
    errno = 0;
    cr_assert_eq(tether__fd_recv(sv[1], in, sizeof(in), &q, 0), -1);
    cr_assert_eq(errno, EPROTO);
    cr_assert_eq(q.n, 0);

    /* More than a connection may hold before frames take them. */
    size_t batches = TETHER__MAX_QUEUED_FDS / TETHER__MAX_FRAME_FDS + 1;
    for (size_t i = 0; i < batches; i++) {
        send_all(sv[0], bytes, 1, many, TETHER__MAX_FRAME_FDS);
    }
    ssize_t r = 0;
    for (size_t i = 0; i < batches && r >= 0; i++) {
        r = tether__fd_recv(sv[1], in, 1, &q, i);
    }
    cr_assert_eq(r, -1);
    cr_assert_eq(errno, EPROTO);
    cr_assert_leq(q.fds, TETHER__MAX_QUEUED_FDS);
    tether__fd_queue_clear(&q);

    close(p[0]), close(p[1]), close(sv[0]), close(sv[1]);
    cr_assert_eq(open_fds(), baseline, "descriptors left open");
}

/* Shared memory for buffers: what a receiver accepts, and what it refuses. */
Test(fdpass, shared_memory_is_checked_before_it_is_mapped)
{
    const char *why = NULL;
    int fd = -1;
    if (!tether__shm_supported) {
        cr_assert_eq(tether__shm_create(4096, &fd), -ENOTSUP);
        cr_assert_eq(tether__shm_check(0, 0, &why), -EPROTO);
        return;
    }
    cr_assert_eq(tether__shm_create(100000, &fd), 0);
    cr_assert_eq(tether__shm_check(fd, 100000, &why), 0);
    /* Its size is fixed from the start. */
    cr_assert_eq(ftruncate(fd, 10), -1);
    cr_assert_eq(ftruncate(fd, 200000), -1);
    cr_assert_eq(tether__shm_check(fd, 99999, &why), -EPROTO);
    cr_assert_not_null(strstr(why, "size"));
    close(fd);
    /* Not a memfd. */
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    cr_assert_eq(tether__shm_check(p[0], 0, &why), -EPROTO);
    cr_assert_not_null(strstr(why, "not a memfd"));
    close(p[0]), close(p[1]);
    /* A memfd whose size could still change under the receiver's mapping. */
    fd = memfd_create("unsealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, 4096), 0);
    cr_assert_eq(tether__shm_check(fd, 4096, &why), -EPROTO);
    cr_assert_not_null(strstr(why, "sealed"));
    cr_assert_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
    cr_assert_eq(tether__shm_check(fd, 4096, &why), -EPROTO);
    cr_assert_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_GROW), 0);
    cr_assert_eq(tether__shm_check(fd, 4096, &why), 0);
    close(fd);
}
