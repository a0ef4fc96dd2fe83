/*
 * ext: writing and reading tether's REF and ERROR exts (see ext.h for their payloads).
 *
 * Scanning for REFs needs no stack: msgpack is prefix-encoded, so reading heads one after
 * another (tether__mp_item_at() steps into arrays and maps and over whole payloads) visits
 * every item of the value in order.
 */
#include "codec/ext.h"

#include <errno.h>
#include <string.h>

int
tether__ext_ref_write(tether__buf *out, int64_t owner, uint64_t id, const char *type,
                      size_t type_len)
{
    if (type_len > UINT32_MAX) {
        return -EMSGSIZE;
    }
    uint64_t payload = 1 + tether__mp_int_size(owner) + tether__mp_uint_size(id) +
                       tether__mp_str_head_size(type_len) + (uint64_t)type_len;
    if (payload > UINT32_MAX) {
        return -EMSGSIZE;
    }
    size_t size = tether__mp_ext_head_size((size_t)payload) + (size_t)payload;
    int r;
    uint8_t *p = tether__mp_reserve(out, size, &r);
    if (!p) {
        return r;
    }
    uint8_t *q = tether__mp_put_ext_head(p, TETHER__EXT_REF, (size_t)payload);
    q = tether__mp_put_array_head(q, 3);
    q = tether__mp_put_int(q, owner);
    q = tether__mp_put_uint(q, id);
    q = tether__mp_put_str(q, type, type_len);
    out->len += (size_t)(q - p);
    return 0;
}

/* Read a REF's payload [owner, id, type, ...]; base is where offsets count from. */
static int
read_ref_payload(const tether__span *payload, const uint8_t *base, tether__ref *ref)
{
    tether__mp_reader pr = {payload->ptr, payload->ptr + payload->len};
    uint32_t n;
    if (tether__mp_read_array(&pr, &n) < 0 || n < 3 || tether__mp_read_int(&pr, &ref->owner) < 0) {
        return -EPROTO;
    }
    ref->owner_at = (size_t)(pr.p - 1 - base); /* 0 and 1 end in that byte, however encoded */
    if (tether__mp_read_uint(&pr, &ref->id) < 0 || tether__mp_read_str(&pr, &ref->type) < 0 ||
        ref->id == 0 || (ref->owner != 0 && ref->owner != 1)) {
        return -EPROTO;
    }
    return 0;
}

/*
 * Call visit(arg, offset of the ext's first byte, its payload) for each ext of type in
 * [p, p+len), in order, not looking inside other exts' payloads. Stops at the first
 * nonzero return and returns it; -EPROTO for bytes that are not msgpack, else 0.
 */
static int
scan_exts(const uint8_t *p, size_t len, int8_t type,
          int (*visit)(void *arg, size_t off, const tether__span *payload), void *arg)
{
    const uint8_t *q = p, *end = p + len;
    while (q < end) {
        tether__mp_item it;
        if (tether__mp_item_at(q, end, &it) < 0) {
            return -EPROTO;
        }
        size_t off = (size_t)(q - p);
        /* Scalars and payloads are stepped over; containers' items follow their head. */
        q = it.next;
        if (it.type != TETHER__MP_EXT || it.ext_type != type) {
            continue;
        }
        tether__span payload = {it.data, (size_t)it.n};
        int r = visit(arg, off, &payload);
        if (r != 0) {
            return r;
        }
    }
    return 0;
}

struct refs_scan {
    const uint8_t *base;
    int (*fn)(void *arg, const tether__ref *ref);
    void *arg;
};

static int
visit_ref(void *argp, size_t off, const tether__span *payload)
{
    struct refs_scan *a = argp;
    tether__ref ref = {.off = off};
    if (read_ref_payload(payload, a->base, &ref) < 0) {
        return -EPROTO;
    }
    return a->fn(a->arg, &ref);
}

int
tether__refs_scan(const uint8_t *p, size_t len, int (*fn)(void *arg, const tether__ref *ref),
                  void *arg)
{
    struct refs_scan a = {p, fn, arg};
    return scan_exts(p, len, TETHER__EXT_REF, visit_ref, &a);
}

int
tether__ext_buffer_write(tether__buf *out, uint64_t size, char format, const uint64_t *shape,
                         uint32_t ndim)
{
    size_t payload = 1 + tether__mp_uint_size(size);
    if (format) {
        payload += 2 + 5; /* the format, a str of one; the shape's array head at most */
        for (uint32_t i = 0; i < ndim; i++) {
            payload += tether__mp_uint_size(shape[i]);
        }
    }
    size_t total = tether__mp_ext_head_size(payload) + payload;
    int r;
    uint8_t *p = tether__mp_reserve(out, total, &r);
    if (!p) {
        return r;
    }
    /* The head is written for the largest payload, then the payload's real length: the
     * shape's head is one byte below 16 dimensions. */
    uint8_t *start = p + tether__mp_ext_head_size(payload);
    uint8_t *q = tether__mp_put_array_head(start, format ? 3 : 1);
    q = tether__mp_put_uint(q, size);
    if (format) {
        q = tether__mp_put_str(q, &format, 1);
        q = tether__mp_put_array_head(q, ndim);
        for (uint32_t i = 0; i < ndim; i++) {
            q = tether__mp_put_uint(q, shape[i]);
        }
    }
    size_t used = (size_t)(q - start);
    uint8_t *body = tether__mp_put_ext_head(p, TETHER__EXT_BUFFER, used);
    memmove(body, start, used);
    out->len += (size_t)(body + used - p);
    return 0;
}

struct buffers_scan {
    int (*fn)(void *arg, size_t off, uint64_t size);
    void *arg;
};

static int
visit_buffer(void *argp, size_t off, const tether__span *payload)
{
    struct buffers_scan *a = argp;
    tether__mp_reader pr = {payload->ptr, payload->ptr + payload->len};
    uint32_t n;
    uint64_t size;
    if (tether__mp_read_array(&pr, &n) < 0 || n < 1 || tether__mp_read_uint(&pr, &size) < 0) {
        return -EPROTO;
    }
    return a->fn(a->arg, off, size);
}

int
tether__buffers_scan(const uint8_t *p, size_t len, int (*fn)(void *arg, size_t off, uint64_t size),
                     void *arg)
{
    struct buffers_scan a = {fn, arg};
    return scan_exts(p, len, TETHER__EXT_BUFFER, visit_buffer, &a);
}

int
tether__error_ext_read(const uint8_t *p, size_t len, tether__error_ext *ret)
{
    tether__mp_reader r = {p, p + len};
    tether__mp_head h;
    if (tether__mp_read_head(&r, &h) < 0 || h.type != TETHER__MP_EXT ||
        h.ext_type != TETHER__EXT_ERROR) {
        return -EPROTO;
    }
    tether__mp_reader pr = {h.data.ptr, h.data.ptr + h.data.len};
    uint32_t n;
    if (tether__mp_read_array(&pr, &n) < 0 || n < 3 || tether__mp_read_str(&pr, &ret->type) < 0 ||
        tether__mp_read_str(&pr, &ret->message) < 0) {
        return -EPROTO;
    }
    if (tether__mp_read_nil(&pr) == 0) {
        ret->traceback = (tether__span){NULL, 0};
        return 0;
    }
    return tether__mp_read_str(&pr, &ret->traceback);
}
