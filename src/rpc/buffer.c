/*
 * buffer: tether_buffer (see buffer.h).
 */
#define _GNU_SOURCE
#include "rpc/buffer.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "codec/ext.h"
#include "codec/frame.h"
#include "conn/link.h"
#include "platform/platform.h"
#include "rpc/conn.h"
#include "rpc/value.h"
#include "util/alloc.h"

/* Memory kept for reuse once nobody maps it (see "the pool" below). */
#define POOL_MAX_BYTES (256ull * 1024 * 1024)
#define POOL_MAX_BUFFERS 16

struct tether_buffer {
    atomic_uint refs;
    int fd;
    uint64_t dev, inode; /* of the memfd: how BUFFERS_DONE names it (inode) */
    uint8_t *data;  /* NULL for size 0 */
    size_t size;
    bool writable; /* made here */
    /* Received: the connection it came on (a reference), told when it goes. Tainted
     * once sent to a peer whose connection closed before it said it was done with it,
     * which may map it still: such memory is not reused here, nor said done upstream. */
    tether_conn *origin;
    atomic_bool tainted;
    const void *from;         /* received: the connection it came on, kept for comparison only */
    unsigned fork_generation; /* of the process that made it: a forked child keeps none */
    tether_buffer *pool_next;
    /* What the receiver is told the bytes are (tether_buffer_set_array): format 0 for
     * plain bytes. */
    char format;
    uint32_t ndim;
    uint64_t shape[TETHER_BUFFER_MAX_DIMS];
};

/* The size of one element of each format that travels (Python's struct module, native). */
static size_t
array_item_size(char format)
{
    switch (format) {
    case 'b':
    case 'B':
    case '?':
        return 1;
    case 'h':
    case 'H':
    case 'e':
        return 2;
    case 'i':
    case 'I':
    case 'f':
        return 4;
    case 'q':
    case 'Q':
    case 'd':
        return 8;
    case 'l':
    case 'L':
        return sizeof(long);
    case 'n':
    case 'N':
        return sizeof(size_t);
    default:
        return 0;
    }
}

int
tether_buffer_set_array(tether_buffer *buffer, char format, const size_t *shape, size_t ndim)
{
    size_t item = array_item_size(format);
    if (!buffer || !buffer->writable || (format && !item) || ndim > TETHER_BUFFER_MAX_DIMS ||
        (!shape && ndim)) {
        return -EINVAL;
    }
    size_t total = item;
    for (size_t i = 0; i < ndim; i++) {
        if (shape[i] && total > SIZE_MAX / shape[i]) {
            return -EINVAL;
        }
        total *= shape[i];
    }
    if (format && total != buffer->size) {
        return -EINVAL;
    }
    buffer->format = format;
    buffer->ndim = format ? (uint32_t)ndim : 0;
    for (uint32_t i = 0; i < buffer->ndim; i++) {
        buffer->shape[i] = shape[i];
    }
    return 0;
}

char
tether__buffer_array(const tether_buffer *b, const uint64_t **ret_shape, uint32_t *ret_ndim)
{
    *ret_shape = b->shape;
    *ret_ndim = b->ndim;
    return b->format;
}

/* ---- forks ------------------------------------------------------------------------ */

typedef struct kept_list kept_list;
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static void buffer_free(tether_buffer *b);
static void pool_drop_all(void);

static pthread_once_t pool_fork_once = PTHREAD_ONCE_INIT;
/* Counts forks in the child: a buffer made before the last one is not this process's to
 * reuse. */
static atomic_uint pool_generation;

/* A child forked without exec shares the kept memory with its parent: were both to make
 * buffers from it, each would write into the other's. The child lets its copies go. */
static void
pool_before_fork(void)
{
    pthread_mutex_lock(&pool_lock);
}

static void
pool_after_fork_parent(void)
{
    pthread_mutex_unlock(&pool_lock);
}

static void
pool_after_fork_child(void)
{
    atomic_fetch_add_explicit(&pool_generation, 1, memory_order_relaxed);
    pool_drop_all();
    pthread_mutex_unlock(&pool_lock);
}

static void
pool_fork_setup(void)
{
    pthread_atfork(pool_before_fork, pool_after_fork_parent, pool_after_fork_child);
}

static atomic_uint_fast64_t mappings_made;

uint64_t
tether__buffer_mappings_made(void)
{
    return atomic_load_explicit(&mappings_made, memory_order_relaxed);
}

static int
buffer_map(int fd, size_t size, bool writable, tether_buffer **ret)
{
    atomic_fetch_add_explicit(&mappings_made, 1, memory_order_relaxed);
    tether_buffer *b = tether__calloc(1, sizeof(*b));
    if (!b) {
        close(fd);
        return -ENOMEM;
    }
    if (size > 0) {
        void *p = mmap(NULL, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            int r = -errno;
            close(fd);
            tether__free(b);
            return r == -EACCES || r == -EINVAL ? -EPROTO : -ENOMEM;
        }
        b->data = p;
    }
    struct stat st;
    atomic_init(&b->refs, 1);
    atomic_init(&b->tainted, false);
    b->fd = fd;
    bool known = fstat(fd, &st) == 0;
    b->dev = known ? (uint64_t)st.st_dev : 0;
    b->inode = known ? (uint64_t)st.st_ino : 0;
    b->size = size;
    b->writable = writable;
    pthread_once(&pool_fork_once, pool_fork_setup);
    b->fork_generation = atomic_load_explicit(&pool_generation, memory_order_relaxed);
    *ret = b;
    return 0;
}

static void
buffer_free(tether_buffer *b)
{
    if (b->data) {
        munmap(b->data, b->size);
    }
    close(b->fd);
    tether__free(b);
}

/* ---- the pool -------------------------------------------------------------------- */

/*
 * Memory nobody maps any more through a buffer, kept mapped to be used again:
 *
 * - made here: fresh shared memory costs a page fault per page on first write (200 ms
 *   for 64 MiB on a virtual machine here, against 4 ms to write it again), so a stream
 *   of buffers of one size costs one allocation;
 * - received: a mapping's first read of each page is as slow (2 us a page here) while
 *   reading through a mapping made before is not, and the sender's pool sends the same
 *   memory again and again; so the mapping is kept, and a buffer that arrives with the
 *   same memory (its memfd's inode) takes it instead of mapping anew.
 *
 * Newest first; the oldest goes when a list holds too much.
 */
struct kept_list {
    tether_buffer *head;
    uint64_t bytes;
    unsigned count;
};

static kept_list made_pool, seen_pool;

/* Free every kept buffer. Lock held. */
static void
pool_drop_all(void)
{
    kept_list *lists[2] = {&made_pool, &seen_pool};
    for (int i = 0; i < 2; i++) {
        for (tether_buffer *b = lists[i]->head, *next; b; b = next) {
            next = b->pool_next;
            buffer_free(b);
        }
        *lists[i] = (kept_list){0};
    }
}

/* Keep b (no reference left); false when it cannot be. */
static bool
pool_put(tether_buffer *b)
{
    if (b->size == 0 || b->size > POOL_MAX_BYTES ||
        b->fork_generation != atomic_load_explicit(&pool_generation, memory_order_relaxed) ||
        (b->writable && atomic_load_explicit(&b->tainted, memory_order_acquire))) {
        return false;
    }
    kept_list *l = b->writable ? &made_pool : &seen_pool;
    tether_buffer *evicted = NULL;
    pthread_mutex_lock(&pool_lock);
    b->pool_next = l->head;
    l->head = b;
    l->bytes += b->size;
    l->count++;
    while (l->bytes > POOL_MAX_BYTES || l->count > POOL_MAX_BUFFERS) {
        tether_buffer **last = &l->head;
        while ((*last)->pool_next) {
            last = &(*last)->pool_next;
        }
        tether_buffer *oldest = *last;
        *last = NULL;
        l->bytes -= oldest->size;
        l->count--;
        oldest->pool_next = evicted;
        evicted = oldest;
    }
    pthread_mutex_unlock(&pool_lock);
    while (evicted) {
        tether_buffer *next = evicted->pool_next;
        buffer_free(evicted);
        evicted = next;
    }
    return true;
}

/* A kept buffer of exactly size bytes (and, for one received, of that memfd), or NULL. */
static tether_buffer *
pool_take(kept_list *l, size_t size, uint64_t dev, uint64_t inode)
{
    pthread_mutex_lock(&pool_lock);
    tether_buffer **at = &l->head;
    while (*at && ((*at)->size != size ||
                   (l == &seen_pool && ((*at)->inode != inode || (*at)->dev != dev)))) {
        at = &(*at)->pool_next;
    }
    tether_buffer *b = *at;
    if (b) {
        *at = b->pool_next;
        l->bytes -= b->size;
        l->count--;
    }
    pthread_mutex_unlock(&pool_lock);
    if (b) {
        b->pool_next = NULL;
        b->format = 0;
        b->ndim = 0;
        atomic_store_explicit(&b->tainted, false, memory_order_relaxed);
        atomic_store_explicit(&b->refs, 1, memory_order_relaxed);
    }
    return b;
}

static void
pool_clear(kept_list *l)
{
    pthread_mutex_lock(&pool_lock);
    tether_buffer *b = l->head;
    *l = (kept_list){0};
    pthread_mutex_unlock(&pool_lock);
    while (b) {
        tether_buffer *next = b->pool_next;
        buffer_free(b);
        b = next;
    }
}

/* Forget the mappings kept of what connection from sent (it closed): a peer gone keeps
 * no memory of its alive here. */
static void
pool_forget(const void *from)
{
    tether_buffer *gone = NULL;
    pthread_mutex_lock(&pool_lock);
    for (tether_buffer **at = &seen_pool.head; *at;) {
        tether_buffer *b = *at;
        if (b->from != from) {
            at = &b->pool_next;
            continue;
        }
        *at = b->pool_next;
        seen_pool.bytes -= b->size;
        seen_pool.count--;
        b->pool_next = gone;
        gone = b;
    }
    pthread_mutex_unlock(&pool_lock);
    while (gone) {
        tether_buffer *next = gone->pool_next;
        buffer_free(gone);
        gone = next;
    }
}

void
tether__buffer_pool_clear(void)
{
    pool_clear(&made_pool);
    pool_clear(&seen_pool);
}

static int
buffer_new(size_t size, bool zeroed, tether_buffer **ret)
{
    if (!ret) {
        return -EINVAL;
    }
    *ret = pool_take(&made_pool, size, 0, 0);
    if (*ret) {
        if (zeroed) {
            memset((*ret)->data, 0, size);
        }
        return 0;
    }
    int fd;
    int r = tether__shm_create(size, &fd);
    return r < 0 ? r : buffer_map(fd, size, true, ret);
}

int
tether_buffer_new(size_t size, tether_buffer **ret)
{
    return buffer_new(size, true, ret);
}

int
tether_buffer_new_uninitialized(size_t size, tether_buffer **ret)
{
    return buffer_new(size, false, ret);
}

int
tether__buffer_from_fd(int fd, uint64_t size, tether_buffer **ret, const char **why)
{
    int r = tether__shm_check(fd, size, why);
    if (r == 0 && size > SIZE_MAX) {
        *why = "a buffer larger than this process can map";
        r = -EPROTO;
    }
    if (r < 0) {
        close(fd);
        return r;
    }
    struct stat st;
    if (size > 0 && fstat(fd, &st) == 0 &&
        (*ret = pool_take(&seen_pool, (size_t)size, (uint64_t)st.st_dev, (uint64_t)st.st_ino))) {
        close(fd); /* the same memory, mapped already */
        return 0;
    }
    r = buffer_map(fd, (size_t)size, false, ret);
    if (r == -EPROTO) {
        *why = "a buffer's memfd cannot be mapped";
    }
    return r;
}

tether_buffer *
tether_buffer_ref(tether_buffer *b)
{
    if (b) {
        atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
    }
    return b;
}

static bool buffer_gone(tether_buffer *b);

tether_buffer *
tether_buffer_unref(tether_buffer *b)
{
    if (b && atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1) {
        bool keep = b->origin ? buffer_gone(b) : true;
        if (!keep || !pool_put(b)) {
            buffer_free(b);
        }
    }
    return NULL;
}

const void *
tether_buffer_get_data(const tether_buffer *b)
{
    return b ? b->data : NULL;
}

void *
tether_buffer_get_writable(tether_buffer *b)
{
    return b && b->writable ? b->data : NULL;
}

size_t
tether_buffer_get_size(const tether_buffer *b)
{
    return b ? b->size : 0;
}

int
tether_buffer_get_fd(const tether_buffer *b)
{
    return b ? b->fd : -EINVAL;
}

int
tether__bufvec_push(tether__bufvec *vec, size_t off, tether_buffer *buf)
{
    if (vec->n == vec->cap) {
        size_t cap = vec->cap ? 2 * vec->cap : 4;
        tether__bufref *v = tether__realloc(vec->v, cap * sizeof(*v));
        if (!v) {
            return -ENOMEM;
        }
        vec->v = v;
        vec->cap = cap;
    }
    vec->v[vec->n++] = (tether__bufref){off, tether_buffer_ref(buf)};
    return 0;
}

void
tether__bufvec_clear(tether__bufvec *vec)
{
    for (size_t i = 0; i < vec->n; i++) {
        tether_buffer_unref(vec->v[i].buf);
    }
    tether__free(vec->v);
    *vec = TETHER__BUFVEC_INIT;
}

/* ---- buffers on a connection ------------------------------------------------------ */

static void done_later(tether_conn *c, uint64_t inode);

/* The peer is about to map bufs: hold each until it says it is done. A received buffer
 * sent on is said done upstream only then, when its last reference goes. */
static int
buffers_sent(tether_conn *c, tether_buffer *const *bufs, size_t n)
{
    tether__conn_buffers *cb = &c->buffers;
    int r = 0;
    pthread_mutex_lock(&c->link.lock);
    for (size_t k = 0; k < n && r == 0; k++) {
        tether_buffer *b = bufs[k];
        size_t i = 0;
        while (i < cb->nsent && cb->sent[i].buf != b) {
            i++;
        }
        if (i == cb->nsent) {
            if (cb->nsent == cb->capsent) {
                size_t cap = cb->capsent ? 2 * cb->capsent : 8;
                tether__sent_buffer *v = tether__realloc(cb->sent, cap * sizeof(*v));
                if (!v) {
                    r = -ENOMEM;
                    break;
                }
                cb->sent = v;
                cb->capsent = cap;
            }
            cb->sent[cb->nsent++] = (tether__sent_buffer){b->inode, tether_buffer_ref(b), 0};
        }
        cb->sent[i].receipts++;
    }
    pthread_mutex_unlock(&c->link.lock);
    return r;
}

int
tether__outbufs_prepare(tether__link *l, tether_value *const *values, size_t count,
                        const uint8_t **const *bytes, size_t *const *lens, tether__outbufs *ob)
{
    ob->n = 0;
    ob->flat[0] = ob->flat[1] = TETHER__BUF_INIT;
    for (size_t i = 0; i < count && i < 2; i++) {
        size_t n;
        tether_buffer *const *bufs = values[i] ? tether__value_buffers(values[i], &n) : NULL;
        if (!bufs || n == 0) {
            continue;
        }
        if (!l->pass_fds) {
            int r = tether__value_write_inline(values[i], &ob->flat[i]);
            if (r < 0) {
                return r;
            }
            *bytes[i] = tether__buf_head(&ob->flat[i]);
            *lens[i] = tether__buf_pending(&ob->flat[i]);
            continue;
        }
        if (ob->n + n > TETHER__MAX_FRAME_FDS) {
            return -EMSGSIZE;
        }
        for (size_t k = 0; k < n; k++) {
            ob->fds[ob->n++] = bufs[k]->fd;
        }
        int r = buffers_sent(tether__conn_of(l), bufs, n);
        if (r < 0) {
            return r;
        }
    }
    return 0;
}

void
tether__outbufs_done(tether__outbufs *ob)
{
    tether__buf_done(&ob->flat[0]);
    tether__buf_done(&ob->flat[1]);
}

typedef struct bind_arg {
    tether_conn *c;
    const int *fds;
    uint32_t n, next;
    tether__bufvec *vec;
    const char **why;
    int status;
} bind_arg;

/* Count size more bytes as held from c's peer: -ENOBUFS over the connection's limit. */
static int
hold_bytes(tether_conn *c, uint64_t size)
{
    tether__conn_buffers *cb = &c->buffers;
    pthread_mutex_lock(&c->link.lock);
    bool over = size > cb->max_held - cb->held;
    if (!over) {
        cb->held += size;
    }
    pthread_mutex_unlock(&c->link.lock);
    return over ? -ENOBUFS : 0;
}

static void
release_bytes(tether_conn *c, uint64_t size)
{
    pthread_mutex_lock(&c->link.lock);
    c->buffers.held -= size;
    pthread_mutex_unlock(&c->link.lock);
}

static int
bind_one(void *argp, size_t off, uint64_t size)
{
    bind_arg *a = argp;
    if (a->next >= a->n) {
        *a->why = "a frame names more buffers than it brought descriptors";
        return -EPROTO;
    }
    int fd = a->fds[a->next];
    ((int *)a->fds)[a->next++] = -1; /* taken, whatever comes of it */
    if (a->status < 0 || (a->status = hold_bytes(a->c, size)) < 0) {
        /* Over the limit: the frame is refused, not the connection; its descriptors go,
         * and the peer is told it may reuse them. The rest of the frame is checked. */
        struct stat st;
        int checked = tether__shm_check(fd, size, a->why);
        bool known = checked == 0 && fstat(fd, &st) == 0;
        close(fd);
        if (checked < 0) {
            return checked;
        }
        if (known) {
            done_later(a->c, (uint64_t)st.st_ino);
        }
        return 0;
    }
    tether_buffer *b;
    int r = tether__buffer_from_fd(fd, size, &b, a->why);
    if (r < 0) {
        release_bytes(a->c, size);
        return r;
    }
    b->origin = tether_conn_ref(a->c);
    b->from = a->c;
    r = tether__bufvec_push(a->vec, off, b);
    tether_buffer_unref(b);
    return r;
}

int
tether__buffers_bind(tether__link *l, const tether__frame *f, const tether__span *spans,
                     size_t count, tether__bufvec *vecs, const char **why)
{
    if (f->buffers == 0) {
        return 0;
    }
    int fds[TETHER__MAX_FRAME_FDS];
    if (f->buffers > TETHER__MAX_FRAME_FDS ||
        tether__link_take_fds(l, f, fds, f->buffers) < 0) {
        *why = "a frame names buffers it brought no descriptors for";
        return -EPROTO;
    }
    tether_conn *c = tether__conn_of(l);
    bind_arg a = {c, fds, (uint32_t)f->buffers, 0, NULL, why, 0};
    int r = 0;
    for (size_t i = 0; i < count && r == 0; i++) {
        a.vec = &vecs[i];
        if (spans[i].len) {
            r = tether__buffers_scan(spans[i].ptr, spans[i].len, bind_one, &a);
        }
    }
    if (r == 0 && a.status < 0) {
        *why = "its buffers would pass the shared memory this connection may hold mapped "
               "(max_buffer_bytes)";
        r = a.status;
    }
    for (uint32_t k = 0; k < a.n; k++) {
        if (fds[k] >= 0) {
            close(fds[k]); /* named where no value takes them (a later version's field) */
        }
    }
    return r;
}

/* ---- said done ------------------------------------------------------------------------ */

static int
encode_done(tether__buf *out, void *argp)
{
    tether__conn_buffers *list = argp;
    return tether__encode_buffers_done(out, list->done, list->ndone);
}

static void
run_done_flush(tether__task *task)
{
    tether_conn *c = (tether_conn *)((char *)task - offsetof(tether_conn, buffers.done_task));
    pthread_mutex_lock(&c->link.lock);
    tether__conn_buffers list = {.done = c->buffers.done, .ndone = c->buffers.ndone};
    c->buffers.done = NULL;
    c->buffers.ndone = c->buffers.capdone = 0;
    c->buffers.done_posted = false;
    pthread_mutex_unlock(&c->link.lock);
    if (list.ndone) {
        (void)tether__conn_send(c, encode_done, &list, true);
    }
    tether__free(list.done);
    tether_conn_unref(c);
}

/* Tell c's peer it may reuse the buffer of inode: in the next BUFFERS_DONE. */
static void
done_later(tether_conn *c, uint64_t inode)
{
    tether__conn_buffers *cb = &c->buffers;
    pthread_mutex_lock(&c->link.lock);
    if (tether__conn_state(c) != TETHER__LINK_CLOSED) {
        if (cb->ndone == cb->capdone) {
            size_t cap = cb->capdone ? 2 * cb->capdone : 8;
            uint64_t *v = tether__realloc(cb->done, cap * sizeof(*v));
            if (v) {
                cb->done = v;
                cb->capdone = cap;
            }
        }
        /* Out of memory: the peer never reuses that memory; nothing else is lost. */
        if (cb->ndone < cb->capdone) {
            cb->done[cb->ndone++] = inode;
        }
        if (!cb->done_posted) {
            /* One task per batch: buffers dropped together are said done in one frame. */
            cb->done_posted = true;
            tether_conn_ref(c);
            cb->done_task.run = run_done_flush;
            tether__ioloop_post(c->link.loop, &cb->done_task);
        }
    }
    pthread_mutex_unlock(&c->link.lock);
}

/* A received buffer's last reference went: whether its mapping may be kept, which it
 * may while its connection is open (the memory may come again). */
static bool
buffer_gone(tether_buffer *b)
{
    tether_conn *c = b->origin;
    b->origin = NULL;
    release_bytes(c, b->size);
    if (!atomic_load_explicit(&b->tainted, memory_order_acquire)) {
        done_later(c, b->inode);
    }
    bool open = tether__conn_state(c) != TETHER__LINK_CLOSED;
    tether_conn_unref(c);
    return open;
}

void
tether__conn_buffers_on_done(tether_conn *c, const tether__frame *f)
{
    tether__conn_buffers *cb = &c->buffers;
    tether__mp_reader rd = {f->value.ptr, f->value.ptr + f->value.len};
    uint32_t n = 0;
    (void)tether__mp_read_array(&rd, &n); /* checked by the decoder */
    tether_buffer *freed[64];
    size_t nfreed = 0;
    for (uint32_t k = 0; k < n; k++) {
        uint64_t inode = 0;
        (void)tether__mp_read_uint(&rd, &inode);
        pthread_mutex_lock(&c->link.lock);
        for (size_t i = 0; i < cb->nsent; i++) {
            if (cb->sent[i].inode == inode) {
                /* An inode the peer names more often than it got it: ignored. */
                if (--cb->sent[i].receipts == 0) {
                    freed[nfreed++] = cb->sent[i].buf;
                    cb->sent[i] = cb->sent[--cb->nsent];
                }
                break;
            }
        }
        pthread_mutex_unlock(&c->link.lock);
        if (nfreed == sizeof(freed) / sizeof(freed[0]) || k + 1 == n) {
            while (nfreed > 0) {
                tether_buffer_unref(freed[--nfreed]); /* to the pool, if nobody holds it */
            }
        }
    }
}

void
tether__conn_drop_buffers(tether_conn *c)
{
    tether__conn_buffers *cb = &c->buffers;
    pthread_mutex_lock(&c->link.lock);
    tether__sent_buffer *sent = cb->sent;
    size_t nsent = cb->nsent;
    cb->sent = NULL;
    cb->nsent = cb->capsent = 0;
    tether__free(cb->done);
    cb->done = NULL;
    cb->ndone = cb->capdone = 0;
    pthread_mutex_unlock(&c->link.lock);
    for (size_t i = 0; i < nsent; i++) {
        atomic_store_explicit(&sent[i].buf->tainted, true, memory_order_release);
        tether_buffer_unref(sent[i].buf);
    }
    tether__free(sent);
    pool_forget(c);
}
