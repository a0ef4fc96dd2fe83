/*
 * buffer: tether_buffer (see buffer.h).
 */
#define _GNU_SOURCE
#include "rpc/buffer.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/mman.h>
#include <unistd.h>

#include "codec/ext.h"
#include "codec/frame.h"
#include "conn/link.h"
#include "platform/platform.h"
#include "rpc/value.h"
#include "util/alloc.h"

struct tether_buffer {
    atomic_uint refs;
    int fd;
    uint8_t *data; /* NULL for size 0 */
    size_t size;
    bool writable; /* made here */
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

static int
buffer_map(int fd, size_t size, bool writable, tether_buffer **ret)
{
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
    atomic_init(&b->refs, 1);
    b->fd = fd;
    b->size = size;
    b->writable = writable;
    *ret = b;
    return 0;
}

int
tether_buffer_new(size_t size, tether_buffer **ret)
{
    if (!ret) {
        return -EINVAL;
    }
    *ret = NULL;
    int fd;
    int r = tether__shm_create(size, &fd);
    return r < 0 ? r : buffer_map(fd, size, true, ret);
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

tether_buffer *
tether_buffer_unref(tether_buffer *b)
{
    if (b && atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1) {
        if (b->data) {
            munmap(b->data, b->size);
        }
        close(b->fd);
        tether__free(b);
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
    const int *fds;
    uint32_t n, next;
    tether__bufvec *vec;
    const char **why;
    int status;
} bind_arg;

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
    tether_buffer *b;
    int r = tether__buffer_from_fd(fd, size, &b, a->why);
    if (r == 0) {
        r = tether__bufvec_push(a->vec, off, b);
        tether_buffer_unref(b);
    }
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
    bind_arg a = {fds, (uint32_t)f->buffers, 0, NULL, why, 0};
    int r = 0;
    for (size_t i = 0; i < count && r == 0; i++) {
        a.vec = &vecs[i];
        if (spans[i].len) {
            r = tether__buffers_scan(spans[i].ptr, spans[i].len, bind_one, &a);
        }
    }
    for (uint32_t k = 0; k < a.n; k++) {
        if (fds[k] >= 0) {
            close(fds[k]); /* named where no value takes them (a later version's field) */
        }
    }
    return r;
}
