/*
 * wire: the frame codec (see wire.h for the interface and docs/protocol.md for the spec).
 *
 * Decoding is two steps. tether__msgpack_check() walks the body once, iteratively, with
 * an explicit nesting stack on the C stack (no recursion, no allocation): every declared
 * str/bin/ext length and array/map count is compared with the bytes left before it is
 * used (an element takes at least one byte, so a count larger than the bytes left is
 * already a lie), nesting is bounded, and REF/ERROR ext payloads are checked as nested
 * values. Only then does tether__frame_decode() read the fields, with the bounds-checked
 * readers below; it never allocates and its spans point into the body.
 *
 * Encoding computes the exact size of the frame first, reserves it once and writes with
 * unchecked put_* helpers, so an encoder either appends a complete frame or fails before
 * touching the buffer. All multi-byte quantities are read and written byte by byte in
 * big-endian order: no unaligned loads, no shifts of signed values.
 */
#include "codec/wire.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

/* ---- byte order ---------------------------------------------------------------- */

static inline uint16_t
load16(const uint8_t *p)
{
    return (uint16_t)(((unsigned)p[0] << 8) | p[1]);
}

static inline uint32_t
load32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t
load64(const uint8_t *p)
{
    return ((uint64_t)load32(p) << 32) | load32(p + 4);
}

static inline uint8_t *
store16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
    return p + 2;
}

static inline uint8_t *
store32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
    return p + 4;
}

static inline uint8_t *
store64(uint8_t *p, uint64_t v)
{
    store32(p, (uint32_t)(v >> 32));
    return store32(p + 4, (uint32_t)v);
}

/* Two's complement reinterpretation without implementation-defined conversions. */
static inline int64_t
as_signed(uint64_t u)
{
    if (u <= (uint64_t)INT64_MAX) {
        return (int64_t)u;
    }
    return -(int64_t)(~u) - 1;
}

uint32_t
tether__frame_length(const uint8_t *p)
{
    return load32(p);
}

/* ---- sizes and unchecked writers ----------------------------------------------- */

static inline size_t
uint_size(uint64_t v)
{
    if (v < 128) {
        return 1;
    }
    if (v <= UINT8_MAX) {
        return 2;
    }
    if (v <= UINT16_MAX) {
        return 3;
    }
    if (v <= UINT32_MAX) {
        return 5;
    }
    return 9;
}

static inline uint8_t *
put_uint(uint8_t *p, uint64_t v)
{
    if (v < 128) {
        *p = (uint8_t)v;
        return p + 1;
    }
    if (v <= UINT8_MAX) {
        p[0] = 0xcc;
        p[1] = (uint8_t)v;
        return p + 2;
    }
    if (v <= UINT16_MAX) {
        *p = 0xcd;
        return store16(p + 1, (uint16_t)v);
    }
    if (v <= UINT32_MAX) {
        *p = 0xce;
        return store32(p + 1, (uint32_t)v);
    }
    *p = 0xcf;
    return store64(p + 1, v);
}

static inline size_t
int_size(int64_t v)
{
    if (v >= 0) {
        return uint_size((uint64_t)v);
    }
    if (v >= -32) {
        return 1;
    }
    if (v >= INT8_MIN) {
        return 2;
    }
    if (v >= INT16_MIN) {
        return 3;
    }
    if (v >= INT32_MIN) {
        return 5;
    }
    return 9;
}

static inline uint8_t *
put_int(uint8_t *p, int64_t v)
{
    if (v >= 0) {
        return put_uint(p, (uint64_t)v);
    }
    /* Conversions of negative values to unsigned types are defined (modulo 2^N). */
    if (v >= -32) {
        *p = (uint8_t)v;
        return p + 1;
    }
    if (v >= INT8_MIN) {
        p[0] = 0xd0;
        p[1] = (uint8_t)v;
        return p + 2;
    }
    if (v >= INT16_MIN) {
        *p = 0xd1;
        return store16(p + 1, (uint16_t)v);
    }
    if (v >= INT32_MIN) {
        *p = 0xd2;
        return store32(p + 1, (uint32_t)v);
    }
    *p = 0xd3;
    return store64(p + 1, (uint64_t)v);
}

/* n <= UINT32_MAX is the caller's check. */
static inline size_t
str_head_size(size_t n)
{
    return n < 32 ? 1 : n <= UINT8_MAX ? 2 : n <= UINT16_MAX ? 3 : 5;
}

static inline uint8_t *
put_str_head(uint8_t *p, size_t n)
{
    if (n < 32) {
        *p = (uint8_t)(0xa0 | n);
        return p + 1;
    }
    if (n <= UINT8_MAX) {
        p[0] = 0xd9;
        p[1] = (uint8_t)n;
        return p + 2;
    }
    if (n <= UINT16_MAX) {
        *p = 0xda;
        return store16(p + 1, (uint16_t)n);
    }
    *p = 0xdb;
    return store32(p + 1, (uint32_t)n);
}

static inline uint8_t *
put_str(uint8_t *p, const char *s, size_t n)
{
    p = put_str_head(p, n);
    if (n) {
        memcpy(p, s, n);
    }
    return p + n;
}

static inline size_t
bin_head_size(size_t n)
{
    return n <= UINT8_MAX ? 2 : n <= UINT16_MAX ? 3 : 5;
}

static inline uint8_t *
put_bin_head(uint8_t *p, size_t n)
{
    if (n <= UINT8_MAX) {
        p[0] = 0xc4;
        p[1] = (uint8_t)n;
        return p + 2;
    }
    if (n <= UINT16_MAX) {
        *p = 0xc5;
        return store16(p + 1, (uint16_t)n);
    }
    *p = 0xc6;
    return store32(p + 1, (uint32_t)n);
}

/* Arrays and maps share their size classes. */
static inline size_t
container_head_size(uint32_t n)
{
    return n < 16 ? 1 : n <= UINT16_MAX ? 3 : 5;
}

static inline uint8_t *
put_container_head(uint8_t *p, uint32_t n, uint8_t fix, uint8_t c16, uint8_t c32)
{
    if (n < 16) {
        *p = (uint8_t)(fix | n);
        return p + 1;
    }
    if (n <= UINT16_MAX) {
        *p = c16;
        return store16(p + 1, (uint16_t)n);
    }
    *p = c32;
    return store32(p + 1, n);
}

static inline uint8_t *
put_array_head(uint8_t *p, uint32_t n)
{
    return put_container_head(p, n, 0x90, 0xdc, 0xdd);
}

static inline uint8_t *
put_map_head(uint8_t *p, uint32_t n)
{
    return put_container_head(p, n, 0x80, 0xde, 0xdf);
}

static inline size_t
ext_head_size(size_t n)
{
    if (n == 1 || n == 2 || n == 4 || n == 8 || n == 16) {
        return 2;
    }
    return n <= UINT8_MAX ? 3 : n <= UINT16_MAX ? 4 : 6;
}

static inline uint8_t *
put_ext_head(uint8_t *p, int8_t type, size_t n)
{
    switch (n) {
    case 1:
        *p++ = 0xd4;
        break;
    case 2:
        *p++ = 0xd5;
        break;
    case 4:
        *p++ = 0xd6;
        break;
    case 8:
        *p++ = 0xd7;
        break;
    case 16:
        *p++ = 0xd8;
        break;
    default:
        if (n <= UINT8_MAX) {
            *p++ = 0xc7;
            *p++ = (uint8_t)n;
        } else if (n <= UINT16_MAX) {
            *p++ = 0xc8;
            p = store16(p, (uint16_t)n);
        } else {
            *p++ = 0xc9;
            p = store32(p, (uint32_t)n);
        }
        break;
    }
    *p++ = (uint8_t)type;
    return p;
}

/* Length of a NUL-terminated string field (NULL encodes as ""); -EMSGSIZE over 4 GiB. */
static inline int
cstr_len(const char *s, size_t *ret_len)
{
    size_t n = s ? strlen(s) : 0;
    if (n > UINT32_MAX) {
        return -EMSGSIZE;
    }
    *ret_len = n;
    return 0;
}

/* ---- public msgpack writers ---------------------------------------------------- */

/* Reserve n bytes and return where they start; the caller commits with b->len += n. */
static inline uint8_t *
reserve(tether__buf *b, size_t n, int *r)
{
    *r = tether__buf_reserve(b, n);
    return *r < 0 ? NULL : b->data + b->len;
}

int
tether__mp_nil(tether__buf *b)
{
    static const uint8_t nil = 0xc0;
    return tether__buf_append(b, &nil, 1);
}

int
tether__mp_bool(tether__buf *b, bool v)
{
    const uint8_t c = v ? 0xc3 : 0xc2;
    return tether__buf_append(b, &c, 1);
}

int
tether__mp_int(tether__buf *b, int64_t v)
{
    int r;
    uint8_t *p = reserve(b, 9, &r);
    if (!p) {
        return r;
    }
    b->len += (size_t)(put_int(p, v) - p);
    return 0;
}

int
tether__mp_uint(tether__buf *b, uint64_t v)
{
    int r;
    uint8_t *p = reserve(b, 9, &r);
    if (!p) {
        return r;
    }
    b->len += (size_t)(put_uint(p, v) - p);
    return 0;
}

int
tether__mp_double(tether__buf *b, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof(bits));
    int r;
    uint8_t *p = reserve(b, 9, &r);
    if (!p) {
        return r;
    }
    p[0] = 0xcb;
    store64(p + 1, bits);
    b->len += 9;
    return 0;
}

int
tether__mp_str(tether__buf *b, const char *s, size_t len)
{
    if (len > UINT32_MAX) {
        return -EMSGSIZE;
    }
    int r;
    uint8_t *p = reserve(b, str_head_size(len) + len, &r);
    if (!p) {
        return r;
    }
    b->len += (size_t)(put_str(p, s, len) - p);
    return 0;
}

int
tether__mp_bin(tether__buf *b, const void *data, size_t len)
{
    if (len > UINT32_MAX) {
        return -EMSGSIZE;
    }
    int r;
    uint8_t *p = reserve(b, bin_head_size(len) + len, &r);
    if (!p) {
        return r;
    }
    uint8_t *q = put_bin_head(p, len);
    if (len) {
        memcpy(q, data, len);
    }
    b->len += (size_t)(q - p) + len;
    return 0;
}

int
tether__mp_array(tether__buf *b, uint32_t n)
{
    int r;
    uint8_t *p = reserve(b, 5, &r);
    if (!p) {
        return r;
    }
    b->len += (size_t)(put_array_head(p, n) - p);
    return 0;
}

int
tether__mp_map(tether__buf *b, uint32_t n)
{
    int r;
    uint8_t *p = reserve(b, 5, &r);
    if (!p) {
        return r;
    }
    b->len += (size_t)(put_map_head(p, n) - p);
    return 0;
}

int
tether__mp_ext(tether__buf *b, int8_t type, const void *data, size_t len)
{
    if (len > UINT32_MAX) {
        return -EMSGSIZE;
    }
    int r;
    uint8_t *p = reserve(b, ext_head_size(len) + len, &r);
    if (!p) {
        return r;
    }
    uint8_t *q = put_ext_head(p, type, len);
    if (len) {
        memcpy(q, data, len);
    }
    b->len += (size_t)(q - p) + len;
    return 0;
}

int
tether__mp_raw(tether__buf *b, const void *data, size_t len)
{
    return tether__buf_append(b, data, len);
}

/* ---- readers ------------------------------------------------------------------- */

int
tether__mp_read_head(tether__mp_reader *r, tether__mp_head *h)
{
    const uint8_t *p = r->p;
    if (!p || p >= r->end) {
        return -EPROTO;
    }
    uint8_t c = *p++;
    size_t avail = (size_t)(r->end - p);
    size_t n = 0; /* payload bytes of str/bin/ext */

#define NEED(k)                                                                                    \
    do {                                                                                           \
        if (avail < (k)) {                                                                         \
            return -EPROTO;                                                                        \
        }                                                                                          \
    } while (0)

    if (c <= 0x7f) {
        h->type = TETHER__MP_UINT;
        h->u = c;
        h->i = c;
        r->p = p;
        return 0;
    }
    if (c >= 0xe0) {
        h->type = TETHER__MP_INT;
        h->i = (int64_t)c - 256;
        r->p = p;
        return 0;
    }
    if (c <= 0x8f) {
        h->type = TETHER__MP_MAP;
        h->count = c & 0x0f;
        r->p = p;
        return 0;
    }
    if (c <= 0x9f) {
        h->type = TETHER__MP_ARRAY;
        h->count = c & 0x0f;
        r->p = p;
        return 0;
    }
    if (c <= 0xbf) {
        h->type = TETHER__MP_STR;
        n = c & 0x1f;
        goto payload;
    }
    switch (c) {
    case 0xc0:
        h->type = TETHER__MP_NIL;
        break;
    case 0xc2:
    case 0xc3:
        h->type = TETHER__MP_BOOL;
        h->boolean = c == 0xc3;
        break;
    case 0xc4:
    case 0xd9:
        NEED(1);
        n = p[0];
        p += 1;
        avail -= 1;
        h->type = c == 0xc4 ? TETHER__MP_BIN : TETHER__MP_STR;
        goto payload;
    case 0xc5:
    case 0xda:
        NEED(2);
        n = load16(p);
        p += 2;
        avail -= 2;
        h->type = c == 0xc5 ? TETHER__MP_BIN : TETHER__MP_STR;
        goto payload;
    case 0xc6:
    case 0xdb:
        NEED(4);
        n = load32(p);
        p += 4;
        avail -= 4;
        h->type = c == 0xc6 ? TETHER__MP_BIN : TETHER__MP_STR;
        goto payload;
    case 0xc7:
        NEED(2);
        n = p[0];
        h->ext_type = (int8_t)((int)p[1] - (p[1] > 127 ? 256 : 0));
        p += 2;
        avail -= 2;
        h->type = TETHER__MP_EXT;
        goto payload;
    case 0xc8:
        NEED(3);
        n = load16(p);
        h->ext_type = (int8_t)((int)p[2] - (p[2] > 127 ? 256 : 0));
        p += 3;
        avail -= 3;
        h->type = TETHER__MP_EXT;
        goto payload;
    case 0xc9:
        NEED(5);
        n = load32(p);
        h->ext_type = (int8_t)((int)p[4] - (p[4] > 127 ? 256 : 0));
        p += 5;
        avail -= 5;
        h->type = TETHER__MP_EXT;
        goto payload;
    case 0xca: {
        NEED(4);
        uint32_t bits = load32(p);
        float f;
        memcpy(&f, &bits, sizeof(f));
        h->type = TETHER__MP_FLOAT32;
        h->f = f;
        p += 4;
        break;
    }
    case 0xcb: {
        NEED(8);
        uint64_t bits = load64(p);
        memcpy(&h->f, &bits, sizeof(h->f));
        h->type = TETHER__MP_FLOAT64;
        p += 8;
        break;
    }
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf: {
        size_t k = (size_t)1 << (c - 0xcc);
        NEED(k);
        uint64_t u = k == 1 ? p[0] : k == 2 ? load16(p) : k == 4 ? load32(p) : load64(p);
        h->type = TETHER__MP_UINT;
        h->u = u;
        h->i = as_signed(u);
        p += k;
        break;
    }
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3: {
        size_t k = (size_t)1 << (c - 0xd0);
        NEED(k);
        int64_t v;
        if (k == 1) {
            v = (int64_t)p[0] - (p[0] > 127 ? 256 : 0);
        } else if (k == 2) {
            uint16_t u = load16(p);
            v = (int64_t)u - (u > INT16_MAX ? 65536 : 0);
        } else if (k == 4) {
            uint32_t u = load32(p);
            v = (int64_t)u - (u > INT32_MAX ? ((int64_t)1 << 32) : 0);
        } else {
            v = as_signed(load64(p));
        }
        if (v >= 0) {
            h->type = TETHER__MP_UINT;
            h->u = (uint64_t)v;
        } else {
            h->type = TETHER__MP_INT;
        }
        h->i = v;
        p += k;
        break;
    }
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        NEED(1);
        n = (size_t)1 << (c - 0xd4);
        h->ext_type = (int8_t)((int)p[0] - (p[0] > 127 ? 256 : 0));
        p += 1;
        avail -= 1;
        h->type = TETHER__MP_EXT;
        goto payload;
    case 0xdc:
        NEED(2);
        h->type = TETHER__MP_ARRAY;
        h->count = load16(p);
        p += 2;
        break;
    case 0xdd:
        NEED(4);
        h->type = TETHER__MP_ARRAY;
        h->count = load32(p);
        p += 4;
        break;
    case 0xde:
        NEED(2);
        h->type = TETHER__MP_MAP;
        h->count = load16(p);
        p += 2;
        break;
    case 0xdf:
        NEED(4);
        h->type = TETHER__MP_MAP;
        h->count = load32(p);
        p += 4;
        break;
    default: /* 0xc1, never used */
        return -EPROTO;
    }
    r->p = p;
    return 0;

payload:
    NEED(n);
    h->data.ptr = p;
    h->data.len = n;
    r->p = p + n;
    return 0;
#undef NEED
}

int
tether__mp_read_uint(tether__mp_reader *r, uint64_t *ret)
{
    if (r->p && r->p < r->end && *r->p <= 0x7f) {
        *ret = *r->p++;
        return 0;
    }
    tether__mp_reader t = *r;
    tether__mp_head h;
    if (tether__mp_read_head(&t, &h) < 0 || h.type != TETHER__MP_UINT) {
        return -EPROTO;
    }
    *ret = h.u;
    *r = t;
    return 0;
}

int
tether__mp_read_int(tether__mp_reader *r, int64_t *ret)
{
    tether__mp_reader t = *r;
    tether__mp_head h;
    if (tether__mp_read_head(&t, &h) < 0) {
        return -EPROTO;
    }
    if (h.type == TETHER__MP_INT || (h.type == TETHER__MP_UINT && h.u <= INT64_MAX)) {
        *ret = h.i;
        *r = t;
        return 0;
    }
    return -EPROTO;
}

int
tether__mp_read_bool(tether__mp_reader *r, bool *ret)
{
    if (!r->p || r->p >= r->end || (*r->p != 0xc2 && *r->p != 0xc3)) {
        return -EPROTO;
    }
    *ret = *r->p++ == 0xc3;
    return 0;
}

/* Read one head of the expected type, advancing r only on success. */
static int
read_head_of(tether__mp_reader *r, int type, tether__mp_head *ret)
{
    tether__mp_reader t = *r;
    if (tether__mp_read_head(&t, ret) < 0 || ret->type != type) {
        return -EPROTO;
    }
    *r = t;
    return 0;
}

int
tether__mp_read_str(tether__mp_reader *r, tether__span *ret)
{
    tether__mp_head h;
    int rc = read_head_of(r, TETHER__MP_STR, &h);
    if (rc == 0) {
        *ret = h.data;
    }
    return rc;
}

int
tether__mp_read_array(tether__mp_reader *r, uint32_t *ret_count)
{
    tether__mp_head h;
    int rc = read_head_of(r, TETHER__MP_ARRAY, &h);
    if (rc == 0) {
        *ret_count = h.count;
    }
    return rc;
}

int
tether__mp_read_map(tether__mp_reader *r, uint32_t *ret_count)
{
    tether__mp_head h;
    int rc = read_head_of(r, TETHER__MP_MAP, &h);
    if (rc == 0) {
        *ret_count = h.count;
    }
    return rc;
}

/*
 * Skipping needs no stack: one counter of items still to read is enough, since an
 * array adds its count and a map twice its count. Every count is first compared with
 * the bytes left, so the counter stays below the input size.
 */
int
tether__mp_skip(tether__mp_reader *r, tether__span *ret_span)
{
    tether__mp_reader t = *r;
    uint64_t pending = 1;
    while (pending > 0) {
        tether__mp_head h;
        if (tether__mp_read_head(&t, &h) < 0) {
            return -EPROTO;
        }
        pending--;
        if (h.type == TETHER__MP_ARRAY || h.type == TETHER__MP_MAP) {
            uint64_t n = h.type == TETHER__MP_MAP ? 2 * (uint64_t)h.count : h.count;
            if (n > (uint64_t)(t.end - t.p)) {
                return -EPROTO;
            }
            pending += n;
        }
    }
    if (ret_span) {
        ret_span->ptr = r->p;
        ret_span->len = (size_t)(t.p - r->p);
    }
    *r = t;
    return 0;
}

/* ---- checking ------------------------------------------------------------------ */

int
tether__msgpack_check(const uint8_t *p, size_t len, uint32_t max_depth, size_t *ret_size)
{
    size_t nrefs;
    return tether__msgpack_check_refs(p, len, max_depth, ret_size, &nrefs);
}

int
tether__msgpack_check_refs(const uint8_t *p, size_t len, uint32_t max_depth, size_t *ret_size,
                           size_t *ret_refs)
{
    size_t refs = 0;
    /* One entry per open container: the parent's items left, and for an ext payload
     * the bound to restore when it closes (NULL for arrays and maps). */
    struct level {
        size_t left;
        const uint8_t *outer;
    } stack[TETHER__MAX_DEPTH_CAP];

    if (!p || len == 0) {
        return -EPROTO;
    }
    if (max_depth > TETHER__MAX_DEPTH_CAP) {
        max_depth = TETHER__MAX_DEPTH_CAP;
    }
    const uint8_t *q = p, *lim = p + len;
    uint32_t depth = 0;
    size_t left = 1;

    for (;;) {
        if (q >= lim) {
            return -EPROTO;
        }
        uint8_t c = *q++;
        size_t avail = (size_t)(lim - q);
        uint64_t skip = 0;  /* scalar payload bytes */
        uint64_t count = 0; /* items of an array or map */
        bool container = false;
        int ext = -1; /* ext type byte, -1 if not an ext */

        if (c <= 0x7f || c >= 0xe0) {
            /* fixint */
        } else if (c <= 0x8f) {
            count = 2 * (uint64_t)(c & 0x0f);
            container = true;
        } else if (c <= 0x9f) {
            count = c & 0x0f;
            container = true;
        } else if (c <= 0xbf) {
            skip = c & 0x1f;
        } else {
            size_t h = 0; /* header bytes after c */
            switch (c) {
            case 0xc0:
            case 0xc2:
            case 0xc3:
                break;
            case 0xc4:
            case 0xd9:
                h = 1;
                break;
            case 0xc5:
            case 0xda:
            case 0xdc:
            case 0xde:
                h = 2;
                break;
            case 0xc6:
            case 0xdb:
            case 0xdd:
            case 0xdf:
                h = 4;
                break;
            case 0xc7:
                h = 2;
                break;
            case 0xc8:
                h = 3;
                break;
            case 0xc9:
                h = 5;
                break;
            case 0xca:
            case 0xd2:
            case 0xce:
                skip = 4;
                break;
            case 0xcb:
            case 0xcf:
            case 0xd3:
                skip = 8;
                break;
            case 0xcc:
            case 0xd0:
                skip = 1;
                break;
            case 0xcd:
            case 0xd1:
                skip = 2;
                break;
            case 0xd4:
            case 0xd5:
            case 0xd6:
            case 0xd7:
            case 0xd8:
                h = 1;
                break;
            default: /* 0xc1 */
                return -EPROTO;
            }
            if (h > avail) {
                return -EPROTO;
            }
            switch (c) {
            case 0xc4:
            case 0xd9:
                skip = q[0];
                break;
            case 0xc5:
            case 0xda:
                skip = load16(q);
                break;
            case 0xc6:
            case 0xdb:
                skip = load32(q);
                break;
            case 0xc7:
                skip = q[0];
                ext = q[1];
                break;
            case 0xc8:
                skip = load16(q);
                ext = q[2];
                break;
            case 0xc9:
                skip = load32(q);
                ext = q[4];
                break;
            case 0xd4:
            case 0xd5:
            case 0xd6:
            case 0xd7:
            case 0xd8:
                skip = (uint64_t)1 << (c - 0xd4);
                ext = q[0];
                break;
            case 0xdc:
                count = load16(q);
                container = true;
                break;
            case 0xdd:
                count = load32(q);
                container = true;
                break;
            case 0xde:
                count = 2 * (uint64_t)load16(q);
                container = true;
                break;
            case 0xdf:
                count = 2 * (uint64_t)load32(q);
                container = true;
                break;
            default:
                break;
            }
            q += h;
            avail -= h;
        }

        if (container) {
            if (depth >= max_depth) {
                return -EMSGSIZE;
            }
            if (count > avail) {
                return -EPROTO;
            }
            if (count > 0) {
                stack[depth].left = left;
                stack[depth].outer = NULL;
                depth++;
                left = (size_t)count;
                continue;
            }
        } else {
            if (skip > avail) {
                return -EPROTO;
            }
            if (ext == TETHER__EXT_REF || ext == TETHER__EXT_ERROR) {
                refs += ext == TETHER__EXT_REF;
                if (depth >= max_depth) {
                    return -EMSGSIZE;
                }
                stack[depth].left = left;
                stack[depth].outer = lim;
                depth++;
                lim = q + skip;
                left = 1;
                continue;
            }
            q += skip;
        }

        /* One item is complete: close every container it completes. */
        while (--left == 0) {
            if (depth == 0) {
                *ret_size = (size_t)(q - p);
                *ret_refs = refs;
                return 0;
            }
            depth--;
            if (stack[depth].outer) {
                if (q != lim) {
                    return -EPROTO; /* bytes after the ext payload's value */
                }
                lim = stack[depth].outer;
            }
            left = stack[depth].left;
        }
    }
}

/* ---- frame decoding ------------------------------------------------------------ */

/*
 * Fast paths for the one-byte encodings that dominate real frames (small ints, short
 * strings, small arrays); anything else goes through the general readers above.
 */
static inline int
dec_uint(tether__mp_reader *r, uint64_t *ret)
{
    if (r->p < r->end && *r->p <= 0x7f) {
        *ret = *r->p++;
        return 0;
    }
    return tether__mp_read_uint(r, ret);
}

static inline int
dec_str(tether__mp_reader *r, tether__span *ret)
{
    if (r->p < r->end && (*r->p & 0xe0) == 0xa0) {
        size_t n = *r->p & 0x1fu;
        if (n < (size_t)(r->end - r->p)) {
            ret->ptr = r->p + 1;
            ret->len = n;
            r->p += 1 + n;
            return 0;
        }
    }
    return tether__mp_read_str(r, ret);
}

static inline int
dec_array(tether__mp_reader *r, uint32_t *ret)
{
    if (r->p < r->end && (*r->p & 0xf0) == 0x90) {
        *ret = *r->p++ & 0x0fu;
        return 0;
    }
    return tether__mp_read_array(r, ret);
}

/* Skip a value whose first byte is already known to be there. */
static inline int
dec_skip(tether__mp_reader *r, tether__span *ret)
{
    const uint8_t *start = r->p;
    const uint8_t *p = r->p;
    size_t pending = 1;
    /* Small containers of one-byte items and short strings, inline. */
    while (pending > 0 && p < r->end) {
        uint8_t c = *p;
        if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
            p++;
        } else if ((c & 0xe0) == 0xa0 && (size_t)(c & 0x1f) < (size_t)(r->end - p)) {
            p += 1 + (c & 0x1f);
        } else if ((c & 0xe0) == 0x80 && (size_t)(c & 0x0f) * 2 < (size_t)(r->end - p)) {
            pending += (c & 0x0fu) * ((c & 0x10) ? 1u : 2u);
            p++;
        } else {
            break;
        }
        pending--;
    }
    if (pending == 0) {
        ret->ptr = start;
        ret->len = (size_t)(p - start);
        r->p = p;
        return 0;
    }
    return tether__mp_skip(r, ret);
}

static inline bool
peek_array(const tether__mp_reader *r)
{
    uint8_t c = *r->p;
    return (c >= 0x90 && c <= 0x9f) || c == 0xdc || c == 0xdd;
}

static inline bool
peek_map(const tether__mp_reader *r)
{
    uint8_t c = *r->p;
    return (c >= 0x80 && c <= 0x8f) || c == 0xde || c == 0xdf;
}

static inline int
read_raw_array(tether__mp_reader *r, tether__span *ret)
{
    if (r->p >= r->end || !peek_array(r)) {
        return -EPROTO;
    }
    return dec_skip(r, ret);
}

static inline int
read_raw_map(tether__mp_reader *r, tether__span *ret)
{
    if (r->p >= r->end || !peek_map(r)) {
        return -EPROTO;
    }
    return dec_skip(r, ret);
}

/* [type:str, message:str, traceback:str|nil, ...] inside an ERROR ext. */
static int
check_error_value(const tether__span *value)
{
    tether__mp_reader r = {value->ptr, value->ptr + value->len};
    tether__mp_head h;
    if (tether__mp_read_head(&r, &h) < 0 || h.type != TETHER__MP_EXT ||
        h.ext_type != TETHER__EXT_ERROR) {
        return -EPROTO;
    }
    tether__mp_reader pr = {h.data.ptr, h.data.ptr + h.data.len};
    uint32_t n;
    tether__span s;
    if (tether__mp_read_array(&pr, &n) < 0 || n < 3 || tether__mp_read_str(&pr, &s) < 0 ||
        tether__mp_read_str(&pr, &s) < 0) {
        return -EPROTO;
    }
    if (pr.p < pr.end && *pr.p == 0xc0) {
        return 0;
    }
    return tether__mp_read_str(&pr, &s);
}

/* RELEASE: [[object_id:uint, count:uint, ...], ...] */
static int
check_release_list(tether__mp_reader *r, tether__span *ret)
{
    const uint8_t *start = r->p;
    uint32_t n;
    if (tether__mp_read_array(r, &n) < 0) {
        return -EPROTO;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t k;
        uint64_t u;
        if (tether__mp_read_array(r, &k) < 0 || k < 2 || tether__mp_read_uint(r, &u) < 0 ||
            tether__mp_read_uint(r, &u) < 0) {
            return -EPROTO;
        }
        for (uint32_t j = 2; j < k; j++) {
            if (tether__mp_skip(r, NULL) < 0) {
                return -EPROTO;
            }
        }
    }
    ret->ptr = start;
    ret->len = (size_t)(r->p - start);
    return 0;
}

/* PROGRESS: [id:uint, ...] */
static int
check_id_list(tether__mp_reader *r, tether__span *ret)
{
    const uint8_t *start = r->p;
    uint32_t n;
    if (tether__mp_read_array(r, &n) < 0) {
        return -EPROTO;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint64_t u;
        if (tether__mp_read_uint(r, &u) < 0) {
            return -EPROTO;
        }
    }
    ret->ptr = start;
    ret->len = (size_t)(r->p - start);
    return 0;
}

/* Elements each kind needs, element 0 (the kind) included; indexed by kind. */
static const uint8_t required_elements[] = {
    [TETHER__HELLO] = 2,  [TETHER__WELCOME] = 2,  [TETHER__REFUSE] = 3,   [TETHER__REQUEST] = 8,
    [TETHER__NOTIFY] = 6, [TETHER__RESPONSE] = 4, [TETHER__CANCEL] = 2,   [TETHER__RELEASE] = 2,
    [TETHER__PING] = 2,   [TETHER__PONG] = 2,     [TETHER__PROGRESS] = 2, [TETHER__CONTROL] = 3,
    [TETHER__LOG] = 4,
};

int
tether__frame_decode(const uint8_t *body, size_t len, const tether__wire_limits *limits,
                     tether__frame *ret)
{
    uint32_t max_size = TETHER__DEFAULT_MAX_FRAME_SIZE;
    uint32_t max_depth = TETHER__DEFAULT_MAX_DEPTH;
    if (limits) {
        if (limits->max_frame_size) {
            max_size = limits->max_frame_size;
        }
        if (limits->max_depth) {
            max_depth = limits->max_depth;
        }
    }
    *ret = (tether__frame){0};
    if (len > max_size) {
        return -EMSGSIZE;
    }
    size_t size, refs;
    int r = tether__msgpack_check_refs(body, len, max_depth, &size, &refs);
    if (r < 0) {
        return r;
    }
    if (size != len) {
        return -EPROTO;
    }
    ret->refs = refs;

    tether__mp_reader rd = {body, body + len};
    uint32_t n;
    uint64_t kind;
    if (dec_array(&rd, &n) < 0 || n < 1 || dec_uint(&rd, &kind) < 0) {
        return -EPROTO;
    }
    if (kind == 0 || kind >= sizeof(required_elements) || n < required_elements[kind]) {
        return -EPROTO;
    }
    tether__frame *f = ret;
    f->kind = (int)kind;
    switch (kind) {
    case TETHER__HELLO:
    case TETHER__WELCOME:
        if (read_raw_map(&rd, &f->value) < 0) {
            goto fail;
        }
        break;
    case TETHER__REFUSE:
    case TETHER__CONTROL:
        if (dec_str(&rd, &f->method) < 0 || dec_str(&rd, &f->text) < 0) {
            goto fail;
        }
        break;
    case TETHER__REQUEST:
        if (dec_uint(&rd, &f->id) < 0 || f->id == 0) {
            goto fail;
        }
        /* The rest of a request is laid out as a notification. */
        /* fall through */
    case TETHER__NOTIFY:
        if (dec_uint(&rd, &f->chain) < 0 || dec_uint(&rd, &f->target) < 0 ||
            dec_str(&rd, &f->method) < 0 || read_raw_array(&rd, &f->args) < 0 ||
            read_raw_map(&rd, &f->kwargs) < 0) {
            goto fail;
        }
        if (kind == TETHER__REQUEST && dec_uint(&rd, &f->timeout_ms) < 0) {
            goto fail;
        }
        break;
    case TETHER__RESPONSE:
        if (dec_uint(&rd, &f->id) < 0 || tether__mp_read_bool(&rd, &f->is_error) < 0 ||
            (rd.p < rd.end ? dec_skip(&rd, &f->value) : -EPROTO) < 0) {
            goto fail;
        }
        if (f->is_error && check_error_value(&f->value) < 0) {
            goto fail;
        }
        break;
    case TETHER__CANCEL:
    case TETHER__PING:
    case TETHER__PONG:
        if (dec_uint(&rd, &f->id) < 0) {
            goto fail;
        }
        break;
    case TETHER__RELEASE:
        if (check_release_list(&rd, &f->value) < 0) {
            goto fail;
        }
        break;
    case TETHER__PROGRESS:
        if (check_id_list(&rd, &f->value) < 0) {
            goto fail;
        }
        break;
    case TETHER__LOG:
        if (dec_uint(&rd, &f->level) < 0 || dec_str(&rd, &f->method) < 0 ||
            dec_str(&rd, &f->text) < 0) {
            goto fail;
        }
        break;
    default:
        goto fail;
    }
    return 0;

fail:
    *ret = (tether__frame){0};
    return -EPROTO;
}

/* ---- frame encoding ------------------------------------------------------------ */

/*
 * Reserve a whole frame of body bytes and write its length prefix; returns where the
 * body goes, or NULL with *r set. frame_commit() checks the size and commits.
 */
static uint8_t *
frame_begin(tether__buf *b, uint64_t body, int *r)
{
    if (body > UINT32_MAX) {
        *r = -EMSGSIZE;
        return NULL;
    }
    uint8_t *p = reserve(b, TETHER__FRAME_HEADER_SIZE + (size_t)body, r);
    if (!p) {
        return NULL;
    }
    return store32(p, (uint32_t)body);
}

static inline int
frame_commit(tether__buf *b, uint64_t body, const uint8_t *end)
{
    (void)end;
    assert(end == b->data + b->len + TETHER__FRAME_HEADER_SIZE + body);
    b->len += TETHER__FRAME_HEADER_SIZE + (size_t)body;
    return 0;
}

static const uint8_t empty_array = 0x90;
static const uint8_t empty_map = 0x80;
static const uint8_t nil_value = 0xc0;

static int
encode_call(tether__buf *b, int kind, uint64_t id, uint64_t chain, uint64_t target,
            const char *method, size_t method_len, const uint8_t *args, size_t args_len,
            const uint8_t *kwargs, size_t kwargs_len, uint64_t timeout_ms)
{
    if (!args || args_len == 0) {
        args = &empty_array;
        args_len = 1;
    }
    if (!kwargs || kwargs_len == 0) {
        kwargs = &empty_map;
        kwargs_len = 1;
    }
    assert((args[0] >= 0x90 && args[0] <= 0x9f) || args[0] == 0xdc || args[0] == 0xdd);
    assert((kwargs[0] >= 0x80 && kwargs[0] <= 0x8f) || kwargs[0] == 0xde || kwargs[0] == 0xdf);
    if (!method) {
        method = "";
        method_len = 0;
    }
    if (method_len > UINT32_MAX || args_len > UINT32_MAX || kwargs_len > UINT32_MAX) {
        return -EMSGSIZE;
    }
    bool request = kind == TETHER__REQUEST;
    uint64_t body = 2 + uint_size(chain) + uint_size(target) + str_head_size(method_len) +
                    (uint64_t)method_len + args_len + kwargs_len;
    if (request) {
        body += uint_size(id) + uint_size(timeout_ms);
    }
    int r;
    uint8_t *p = frame_begin(b, body, &r);
    if (!p) {
        return r;
    }
    *p++ = request ? 0x98 : 0x96;
    *p++ = (uint8_t)kind;
    if (request) {
        p = put_uint(p, id);
    }
    p = put_uint(p, chain);
    p = put_uint(p, target);
    p = put_str(p, method, method_len);
    memcpy(p, args, args_len);
    p += args_len;
    memcpy(p, kwargs, kwargs_len);
    p += kwargs_len;
    if (request) {
        p = put_uint(p, timeout_ms);
    }
    return frame_commit(b, body, p);
}

int
tether__encode_request(tether__buf *buf, uint64_t id, uint64_t chain, uint64_t target,
                       const char *method, size_t method_len, const uint8_t *args, size_t args_len,
                       const uint8_t *kwargs, size_t kwargs_len, uint64_t timeout_ms)
{
    return encode_call(buf, TETHER__REQUEST, id, chain, target, method, method_len, args, args_len,
                       kwargs, kwargs_len, timeout_ms);
}

int
tether__encode_notify(tether__buf *buf, uint64_t chain, uint64_t target, const char *method,
                      size_t method_len, const uint8_t *args, size_t args_len,
                      const uint8_t *kwargs, size_t kwargs_len)
{
    return encode_call(buf, TETHER__NOTIFY, 0, chain, target, method, method_len, args, args_len,
                       kwargs, kwargs_len, 0);
}

int
tether__encode_response(tether__buf *buf, uint64_t id, bool is_error, const uint8_t *value,
                        size_t value_len)
{
    if (!value || value_len == 0) {
        value = &nil_value;
        value_len = 1;
    }
    if (value_len > UINT32_MAX) {
        return -EMSGSIZE;
    }
    uint64_t body = 3 + uint_size(id) + (uint64_t)value_len;
    int r;
    uint8_t *p = frame_begin(buf, body, &r);
    if (!p) {
        return r;
    }
    *p++ = 0x94;
    *p++ = TETHER__RESPONSE;
    p = put_uint(p, id);
    *p++ = is_error ? 0xc3 : 0xc2;
    memcpy(p, value, value_len);
    p += value_len;
    return frame_commit(buf, body, p);
}

int
tether__encode_error_response(tether__buf *buf, uint64_t id, const char *type, const char *message,
                              const char *traceback)
{
    size_t tl, ml, bl;
    if (cstr_len(type, &tl) < 0 || cstr_len(message, &ml) < 0 || cstr_len(traceback, &bl) < 0) {
        return -EMSGSIZE;
    }
    uint64_t payload = 1 + str_head_size(tl) + (uint64_t)tl + str_head_size(ml) + (uint64_t)ml +
                       str_head_size(bl) + (uint64_t)bl;
    if (payload > UINT32_MAX) {
        return -EMSGSIZE;
    }
    uint64_t body = 3 + uint_size(id) + ext_head_size((size_t)payload) + payload;
    int r;
    uint8_t *p = frame_begin(buf, body, &r);
    if (!p) {
        return r;
    }
    *p++ = 0x94;
    *p++ = TETHER__RESPONSE;
    p = put_uint(p, id);
    *p++ = 0xc3;
    p = put_ext_head(p, TETHER__EXT_ERROR, (size_t)payload);
    *p++ = 0x93;
    p = put_str(p, type, tl);
    p = put_str(p, message, ml);
    p = put_str(p, traceback, bl);
    return frame_commit(buf, body, p);
}

/* [kind, uint] frames: CANCEL, PING, PONG. */
static int
encode_kind_uint(tether__buf *b, int kind, uint64_t v)
{
    uint64_t body = 2 + uint_size(v);
    int r;
    uint8_t *p = frame_begin(b, body, &r);
    if (!p) {
        return r;
    }
    *p++ = 0x92;
    *p++ = (uint8_t)kind;
    p = put_uint(p, v);
    return frame_commit(b, body, p);
}

int
tether__encode_cancel(tether__buf *buf, uint64_t id)
{
    return encode_kind_uint(buf, TETHER__CANCEL, id);
}

int
tether__encode_ping(tether__buf *buf, int kind, uint64_t nonce)
{
    if (kind != TETHER__PING && kind != TETHER__PONG) {
        return -EINVAL;
    }
    return encode_kind_uint(buf, kind, nonce);
}

int
tether__encode_progress(tether__buf *buf, const uint64_t *ids, size_t n)
{
    if (n > UINT32_MAX) {
        return -EMSGSIZE;
    }
    uint64_t body = 2 + container_head_size((uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        body += uint_size(ids[i]);
    }
    int r;
    uint8_t *p = frame_begin(buf, body, &r);
    if (!p) {
        return r;
    }
    *p++ = 0x92;
    *p++ = TETHER__PROGRESS;
    p = put_array_head(p, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        p = put_uint(p, ids[i]);
    }
    return frame_commit(buf, body, p);
}

int
tether__encode_release(tether__buf *buf, const uint64_t *object_ids, const uint64_t *counts,
                       size_t n)
{
    if (n > UINT32_MAX) {
        return -EMSGSIZE;
    }
    uint64_t body = 2 + container_head_size((uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        body += 1 + uint_size(object_ids[i]) + uint_size(counts[i]);
    }
    int r;
    uint8_t *p = frame_begin(buf, body, &r);
    if (!p) {
        return r;
    }
    *p++ = 0x92;
    *p++ = TETHER__RELEASE;
    p = put_array_head(p, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        *p++ = 0x92;
        p = put_uint(p, object_ids[i]);
        p = put_uint(p, counts[i]);
    }
    return frame_commit(buf, body, p);
}

/* [kind, (uint,)? str, str] frames: REFUSE, CONTROL, LOG. */
static int
encode_two_str(tether__buf *b, int kind, int64_t level, const char *s1, const char *s2)
{
    size_t l1, l2;
    if (cstr_len(s1, &l1) < 0 || cstr_len(s2, &l2) < 0) {
        return -EMSGSIZE;
    }
    bool with_level = level >= 0;
    uint64_t body = 2 + (with_level ? int_size(level) : 0) + str_head_size(l1) + (uint64_t)l1 +
                    str_head_size(l2) + (uint64_t)l2;
    int r;
    uint8_t *p = frame_begin(b, body, &r);
    if (!p) {
        return r;
    }
    *p++ = with_level ? 0x94 : 0x93;
    *p++ = (uint8_t)kind;
    if (with_level) {
        p = put_int(p, level);
    }
    p = put_str(p, s1, l1);
    p = put_str(p, s2, l2);
    return frame_commit(b, body, p);
}

int
tether__encode_control(tether__buf *buf, const char *action, const char *reason)
{
    return encode_two_str(buf, TETHER__CONTROL, -1, action, reason);
}

int
tether__encode_refuse(tether__buf *buf, const char *code, const char *message)
{
    return encode_two_str(buf, TETHER__REFUSE, -1, code, message);
}

int
tether__encode_log(tether__buf *buf, int level, const char *logger, const char *message)
{
    if (level < 0) {
        return -EINVAL;
    }
    return encode_two_str(buf, TETHER__LOG, level, logger, message);
}

/* ---- hello and welcome --------------------------------------------------------- */

/*
 * HELLO and WELCOME maps are described by a table of keys, so that encoding, decoding
 * and the set of known keys cannot drift apart.
 */
enum field_type {
    F_STR,
    F_U32,
    F_I64,
    F_VERSIONS
};

struct field {
    const char *key;
    uint8_t key_len;
    uint8_t type;
    size_t offset;
};

#define FIELD(k, t, s, m)                                                                          \
    {                                                                                              \
        k, sizeof(k) - 1, t, offsetof(s, m)                                                        \
    }

static const struct field hello_fields[] = {
    FIELD("versions", F_VERSIONS, tether__hello, min_version),
    FIELD("name", F_STR, tether__hello, name),
    FIELD("pid", F_I64, tether__hello, pid),
    FIELD("language", F_STR, tether__hello, language),
    FIELD("language_version", F_STR, tether__hello, language_version),
    FIELD("token", F_STR, tether__hello, token),
};

static const struct field welcome_fields[] = {
    FIELD("version", F_U32, tether__welcome, version),
    FIELD("name", F_STR, tether__welcome, name),
    FIELD("pid", F_I64, tether__welcome, pid),
    FIELD("max_frame_size", F_U32, tether__welcome, max_frame_size),
    FIELD("max_in_flight", F_U32, tether__welcome, max_in_flight),
    FIELD("client_name", F_STR, tether__welcome, client_name),
};

#define NFIELDS 6

static int
encode_map_frame(tether__buf *b, int kind, const struct field *fields, size_t nfields,
                 const void *s)
{
    const char *base = s;
    size_t lens[NFIELDS];
    bool present[NFIELDS];
    uint32_t npresent = 0;
    uint64_t body = 2;
    assert(nfields <= NFIELDS);
    for (size_t i = 0; i < nfields; i++) {
        const struct field *fd = &fields[i];
        const char *at = base + fd->offset;
        uint64_t vsize = 0;
        present[i] = true;
        switch (fd->type) {
        case F_STR: {
            const char *str;
            memcpy(&str, at, sizeof(str));
            if (!str) {
                present[i] = false;
                break;
            }
            if (cstr_len(str, &lens[i]) < 0) {
                return -EMSGSIZE;
            }
            vsize = str_head_size(lens[i]) + (uint64_t)lens[i];
            break;
        }
        case F_U32: {
            uint32_t v;
            memcpy(&v, at, sizeof(v));
            vsize = uint_size(v);
            break;
        }
        case F_I64: {
            int64_t v;
            memcpy(&v, at, sizeof(v));
            vsize = int_size(v);
            break;
        }
        case F_VERSIONS: {
            const tether__hello *h = s;
            vsize = 1 + uint_size(h->min_version) + uint_size(h->max_version);
            break;
        }
        }
        if (present[i]) {
            npresent++;
            body += str_head_size(fd->key_len) + fd->key_len + vsize;
        }
    }
    body += container_head_size(npresent);

    int r;
    uint8_t *p = frame_begin(b, body, &r);
    if (!p) {
        return r;
    }
    *p++ = 0x92;
    *p++ = (uint8_t)kind;
    p = put_map_head(p, npresent);
    for (size_t i = 0; i < nfields; i++) {
        const struct field *fd = &fields[i];
        const char *at = base + fd->offset;
        if (!present[i]) {
            continue;
        }
        p = put_str(p, fd->key, fd->key_len);
        switch (fd->type) {
        case F_STR: {
            const char *str;
            memcpy(&str, at, sizeof(str));
            p = put_str(p, str, lens[i]);
            break;
        }
        case F_U32: {
            uint32_t v;
            memcpy(&v, at, sizeof(v));
            p = put_uint(p, v);
            break;
        }
        case F_I64: {
            int64_t v;
            memcpy(&v, at, sizeof(v));
            p = put_int(p, v);
            break;
        }
        case F_VERSIONS: {
            const tether__hello *h = s;
            *p++ = 0x92;
            p = put_uint(p, h->min_version);
            p = put_uint(p, h->max_version);
            break;
        }
        }
    }
    return frame_commit(b, body, p);
}

int
tether__encode_hello(tether__buf *buf, const tether__hello *hello)
{
    return encode_map_frame(buf, TETHER__HELLO, hello_fields, NFIELDS, hello);
}

int
tether__encode_welcome(tether__buf *buf, const tether__welcome *welcome)
{
    return encode_map_frame(buf, TETHER__WELCOME, welcome_fields, NFIELDS, welcome);
}

static int
read_u32(tether__mp_reader *r, uint32_t *ret)
{
    uint64_t v;
    if (tether__mp_read_uint(r, &v) < 0 || v > UINT32_MAX) {
        return -EPROTO;
    }
    *ret = (uint32_t)v;
    return 0;
}

static int
decode_map(const tether__span *map, tether__buf *strings, const struct field *fields,
           size_t nfields, void *s)
{
    char *base = s;
    /* Offsets of copied strings from the buffer's head (stable across compaction), or
     * SIZE_MAX for NULL; pointers are made once no more appends can move the buffer. */
    size_t str_at[NFIELDS];
    size_t mark = tether__buf_pending(strings);
    for (size_t i = 0; i < NFIELDS; i++) {
        str_at[i] = SIZE_MAX;
    }
    if (!map || !map->ptr) {
        return -EPROTO;
    }
    tether__mp_reader rd = {map->ptr, map->ptr + map->len};
    uint32_t n;
    int r = -EPROTO;
    if (tether__mp_read_map(&rd, &n) < 0) {
        goto fail;
    }
    for (uint32_t k = 0; k < n; k++) {
        tether__span key;
        const struct field *fd = NULL;
        size_t i = 0;
        if (tether__mp_read_str(&rd, &key) == 0) {
            for (i = 0; i < nfields; i++) {
                if (fields[i].key_len == key.len && memcmp(fields[i].key, key.ptr, key.len) == 0) {
                    fd = &fields[i];
                    break;
                }
            }
        } else if (tether__mp_skip(&rd, NULL) < 0) {
            goto fail;
        }
        if (!fd) {
            if (tether__mp_skip(&rd, NULL) < 0) {
                goto fail;
            }
            continue;
        }
        char *at = base + fd->offset;
        switch (fd->type) {
        case F_STR: {
            tether__span v;
            if (rd.p < rd.end && *rd.p == 0xc0) {
                rd.p++;
                str_at[i] = SIZE_MAX;
                break;
            }
            if (tether__mp_read_str(&rd, &v) < 0 || memchr(v.ptr, 0, v.len)) {
                goto fail;
            }
            size_t where = tether__buf_pending(strings);
            static const char nul = '\0';
            if ((r = tether__buf_append(strings, v.ptr, v.len)) < 0 ||
                (r = tether__buf_append(strings, &nul, 1)) < 0) {
                goto fail;
            }
            r = -EPROTO;
            str_at[i] = where;
            break;
        }
        case F_U32: {
            uint32_t v;
            if (read_u32(&rd, &v) < 0) {
                goto fail;
            }
            memcpy(at, &v, sizeof(v));
            break;
        }
        case F_I64: {
            int64_t v;
            if (tether__mp_read_int(&rd, &v) < 0) {
                goto fail;
            }
            memcpy(at, &v, sizeof(v));
            break;
        }
        case F_VERSIONS: {
            tether__hello *h = s;
            uint32_t count;
            if (tether__mp_read_array(&rd, &count) < 0 || count < 2 ||
                read_u32(&rd, &h->min_version) < 0 || read_u32(&rd, &h->max_version) < 0) {
                goto fail;
            }
            for (uint32_t j = 2; j < count; j++) {
                if (tether__mp_skip(&rd, NULL) < 0) {
                    goto fail;
                }
            }
            break;
        }
        }
    }
    for (size_t i = 0; i < nfields; i++) {
        if (fields[i].type == F_STR) {
            const char *str =
                str_at[i] == SIZE_MAX ? NULL : (const char *)tether__buf_head(strings) + str_at[i];
            memcpy(base + fields[i].offset, &str, sizeof(str));
        }
    }
    return 0;

fail:
    strings->len = strings->off + mark;
    return r;
}

int
tether__decode_hello(const tether__span *map, tether__buf *strings, tether__hello *ret)
{
    *ret = (tether__hello){0};
    int r = decode_map(map, strings, hello_fields, NFIELDS, ret);
    if (r < 0) {
        *ret = (tether__hello){0};
    }
    return r;
}

int
tether__decode_welcome(const tether__span *map, tether__buf *strings, tether__welcome *ret)
{
    *ret = (tether__welcome){0};
    int r = decode_map(map, strings, welcome_fields, NFIELDS, ret);
    if (r < 0) {
        *ret = (tether__welcome){0};
    }
    return r;
}
