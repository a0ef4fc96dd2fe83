/*
 * window: calls beyond the peer's in-flight window wait on the caller's side.
 *
 * A peer runs at most max_in_flight of our requests at once (it says how many in its
 * hello or welcome) and refuses the rest. Rather than fail a call the caller could not
 * know was one too many (an asyncio.gather of 2,000 calls, 100,000 futures started at
 * once), a request that finds the window full is encoded into the connection's backlog
 * and goes out as responses free the window, its timeout running meanwhile. Once
 * anything waits there, notifications and releases queue behind it too, so that the
 * peer still sees every frame of this side in the order it was made (a release must not
 * overtake a waiting call that names the object). It sends through the link itself:
 * the layers above call it, never the other way round.
 *
 * The backlog is a buffer of records, each [id (8 bytes), length (4), descriptor count
 * (4), frame, descriptors]; id 0 for a frame that takes no room in the window. The
 * descriptors are copies the record owns (the buffers of the call, conn/fdpass.h), sent
 * beside the frame and closed once it goes, or with the record when it is dropped. A
 * call cancelled or expired while it waits leaves the pending table, and its record is
 * dropped when it comes up: records name
 * calls by id only, since a synchronous call's pending lives on its caller's stack.
 * One thread at a time sends from the backlog (`pumping`), so records leave in order.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "rpc/call.h"
#include "util/alloc.h"

typedef struct record_head {
    uint64_t id;
    uint32_t len;
    uint32_t nfds; /* descriptors to send beside the frame, copies after its bytes */
} record_head;

bool
tether__window_claim_locked(tether_conn *c, tether__pending *p)
{
    p->sent = !c->pumping && tether__buf_pending(&c->backlog) == 0 &&
              c->sent_count < c->peer_max_in_flight;
    if (p->sent) {
        c->sent_count++;
    }
    return p->sent;
}

static void
close_fds(const int *fds, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        close(fds[i]);
    }
}

/* Append a record of what encode writes, with copies of fds; conn lock not held. */
static int
append_record(tether_conn *c, uint64_t id, tether__encode_fn encode, void *arg, const int *fds,
              uint32_t nfds)
{
    tether__buf frame = TETHER__BUF_INIT;
    int r = encode(&frame, arg);
    size_t len = tether__buf_pending(&frame);
    if (r == 0 && len - TETHER__FRAME_HEADER_SIZE > c->link.peer_max_frame_size) {
        r = -EMSGSIZE;
    }
    int copies[TETHER__MAX_FRAME_FDS];
    uint32_t made = 0;
    while (r == 0 && made < nfds) {
        copies[made] = fcntl(fds[made], F_DUPFD_CLOEXEC, 3);
        if (copies[made] < 0) {
            r = -errno;
        } else {
            made++;
        }
    }
    if (r == 0) {
        record_head head = {id, (uint32_t)len, nfds};
        size_t fd_bytes = nfds * sizeof(int);
        pthread_mutex_lock(&c->link.lock);
        size_t before = c->backlog.len;
        if (tether__buf_pending(&c->backlog) + sizeof(head) + len > c->link.max_output_bytes) {
            r = -ENOBUFS; /* the peer stopped answering: as when it stops reading */
        } else if ((r = tether__buf_append(&c->backlog, &head, sizeof(head))) < 0 ||
                   (r = tether__buf_append(&c->backlog, tether__buf_head(&frame), len)) < 0 ||
                   (fd_bytes && (r = tether__buf_append(&c->backlog, copies, fd_bytes)) < 0)) {
            c->backlog.len = before;
        }
        if (r == 0) {
            atomic_fetch_add_explicit(&c->backlog_records, 1, memory_order_relaxed);
            made = 0; /* the record holds them */
        }
        pthread_mutex_unlock(&c->link.lock);
    }
    close_fds(copies, made);
    tether__buf_done(&frame);
    return r;
}

int
tether__window_queue(tether_conn *c, uint64_t id, tether__encode_fn encode, void *arg,
                     const int *fds, uint32_t nfds)
{
    int r = append_record(c, id, encode, arg, fds, nfds);
    if (r == 0) {
        /* Room may have come free before the record was there to take it. */
        tether__window_pump(c);
    }
    return r;
}

int
tether__window_send(tether_conn *c, tether__encode_fn encode, void *arg, bool flush_now,
                    const int *fds, uint32_t nfds)
{
    pthread_mutex_lock(&c->link.lock);
    bool behind = c->pumping || tether__buf_pending(&c->backlog) > 0;
    pthread_mutex_unlock(&c->link.lock);
    return behind ? tether__window_queue(c, 0, encode, arg, fds, nfds)
           : nfds ? tether__link_send_fds(&c->link, encode, arg, flush_now, fds, nfds)
                  : tether__link_send(&c->link, encode, arg, flush_now);
}

static int
encode_bytes(tether__buf *out, void *arg)
{
    const tether__span *frame = arg;
    return tether__buf_append(out, frame->ptr, frame->len);
}

void
tether__window_pump(tether_conn *c)
{
    if (atomic_load_explicit(&c->backlog_records, memory_order_relaxed) == 0) {
        return;
    }
    /* Off the I/O thread, what came free goes out in one write: at the end of the pump,
     * or of the input that the reading thread acts on, which frees the window a frame at
     * a time (conn/link.h, tether__link_send). */
    bool on_io_thread = tether__ioloop_in_thread(c->link.loop);
    tether__buf frame = TETHER__BUF_INIT;
    pthread_mutex_lock(&c->link.lock);
    if (c->pumping) {
        pthread_mutex_unlock(&c->link.lock); /* that thread takes what came free too */
        return;
    }
    c->pumping = true;
    while (tether__buf_pending(&c->backlog) >= sizeof(record_head)) {
        record_head head;
        memcpy(&head, tether__buf_head(&c->backlog), sizeof(head));
        int fds[TETHER__MAX_FRAME_FDS];
        memcpy(fds, tether__buf_head(&c->backlog) + sizeof(head) + head.len,
               head.nfds * sizeof(int));
        tether__pending *p = head.id ? tether__pending_find(c, head.id) : NULL;
        if (p && c->sent_count >= c->peer_max_in_flight) {
            break;
        }
        bool send = !head.id || p;
        if (p) {
            p->sent = true;
            c->sent_count++;
            p->last_heard_usec = tether_now_usec(); /* silence counts from here on */
        }
        tether__buf_reset(&frame);
        int r = send ? tether__buf_append(&frame, tether__buf_head(&c->backlog) + sizeof(head),
                                          head.len)
                     : 0;
        tether__buf_consume(&c->backlog, sizeof(head) + head.len + head.nfds * sizeof(int));
        atomic_fetch_sub_explicit(&c->backlog_records, 1, memory_order_relaxed);
        if (!send || r < 0) {
            close_fds(fds, head.nfds);
            continue; /* cancelled or expired while it waited; or no memory: it times out */
        }
        pthread_mutex_unlock(&c->link.lock);
        tether__span bytes = {tether__buf_head(&frame), tether__buf_pending(&frame)};
        int mode = on_io_thread ? TETHER__SEND_BATCH : TETHER__SEND_HOLD;
        r = head.nfds ? tether__link_send_fds(&c->link, encode_bytes, &bytes, mode, fds, head.nfds)
                      : tether__link_send(&c->link, encode_bytes, &bytes, mode);
        close_fds(fds, head.nfds);
        if (r == -ENOBUFS) {
            tether__link_drop_slow_reader(&c->link);
        }
        pthread_mutex_lock(&c->link.lock);
    }
    c->pumping = false;
    if (tether__buf_pending(&c->backlog) == 0) {
        tether__buf_done(&c->backlog); /* a burst's buffer is not kept */
    }
    pthread_mutex_unlock(&c->link.lock);
    tether__buf_done(&frame);
    if (!on_io_thread) {
        (void)tether__link_flush(&c->link);
    }
}

void
tether__window_clear_locked(tether_conn *c)
{
    /* The records' descriptors first. */
    for (size_t at = 0; at + sizeof(record_head) <= tether__buf_pending(&c->backlog);) {
        record_head head;
        memcpy(&head, tether__buf_head(&c->backlog) + at, sizeof(head));
        int fds[TETHER__MAX_FRAME_FDS];
        memcpy(fds, tether__buf_head(&c->backlog) + at + sizeof(head) + head.len,
               head.nfds * sizeof(int));
        close_fds(fds, head.nfds);
        at += sizeof(head) + head.len + head.nfds * sizeof(int);
    }
    tether__buf_done(&c->backlog);
    atomic_store_explicit(&c->backlog_records, 0, memory_order_relaxed);
    c->sent_count = 0;
}
