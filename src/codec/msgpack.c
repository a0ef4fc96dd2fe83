/*
 * msgpack: the byte-type table, the appending writers and the reader (see msgpack.h).
 *
 * The table is written out in the order of the spec's "formats" list, so it can be read
 * against it line by line. The reader reads every head through tether__mp_item_at(), which
 * knows nothing of a type beyond its table entry; what the number means (a value to sign-
 * extend, float bits, a length, a count) is decided in head_of_item() and read_scalar().
 * The skipper walks the same items with one counter instead of a stack.
 */
#include "codec/msgpack.h"

#include <errno.h>
#include <string.h>

/* ---- the byte-type table ----------------------------------------------------------- */

/* Entries for bytes that carry their number in themselves: 4 and 16 of them, counting up
 * from n (fixint, fixstr, fixarray, fixmap). Entries for bytes followed by a big-endian
 * field of k bytes (and, for ext, the type byte). The formatter would spread each brace
 * pair of these one-line macros over four lines. */
/* clang-format off */
#define FIX4(type, n) \
    {type, 0, 0, (n)}, {type, 0, 0, (n) + 1}, {type, 0, 0, (n) + 2}, {type, 0, 0, (n) + 3}
#define FIX16(type, n) FIX4(type, n), FIX4(type, (n) + 4), FIX4(type, (n) + 8), FIX4(type, (n) + 12)
#define FIELD(type, k) {type, k, k, 0}
#define EXT_FIELD(k) {TETHER__MP_EXT, k, (k) + 1, 0}
#define FIXEXT(n) {TETHER__MP_EXT, 0, 1, (n)}
/* clang-format on */

const tether__mp_byte tether__mp_bytes[256] = {
    /* 0x00-0x7f positive fixint: the byte is the value */
    FIX16(TETHER__MP_UINT, 0),
    FIX16(TETHER__MP_UINT, 16),
    FIX16(TETHER__MP_UINT, 32),
    FIX16(TETHER__MP_UINT, 48),
    FIX16(TETHER__MP_UINT, 64),
    FIX16(TETHER__MP_UINT, 80),
    FIX16(TETHER__MP_UINT, 96),
    FIX16(TETHER__MP_UINT, 112),
    /* 0x80-0x8f fixmap, 0x90-0x9f fixarray: the low 4 bits are the count */
    FIX16(TETHER__MP_MAP, 0),
    FIX16(TETHER__MP_ARRAY, 0),
    /* 0xa0-0xbf fixstr: the low 5 bits are the length */
    FIX16(TETHER__MP_STR, 0),
    FIX16(TETHER__MP_STR, 16),
    [0xc0] = {TETHER__MP_NIL, 0, 0, 0},
    [0xc1] = {0, 0, 0, 0}, /* never used */
    [0xc2] = {TETHER__MP_BOOL, 0, 0, 0},
    [0xc3] = {TETHER__MP_BOOL, 0, 0, 1},
    [0xc4] = FIELD(TETHER__MP_BIN, 1),
    [0xc5] = FIELD(TETHER__MP_BIN, 2),
    [0xc6] = FIELD(TETHER__MP_BIN, 4),
    [0xc7] = EXT_FIELD(1),
    [0xc8] = EXT_FIELD(2),
    [0xc9] = EXT_FIELD(4),
    [0xca] = FIELD(TETHER__MP_FLOAT32, 4),
    [0xcb] = FIELD(TETHER__MP_FLOAT64, 8),
    [0xcc] = FIELD(TETHER__MP_UINT, 1),
    [0xcd] = FIELD(TETHER__MP_UINT, 2),
    [0xce] = FIELD(TETHER__MP_UINT, 4),
    [0xcf] = FIELD(TETHER__MP_UINT, 8),
    [0xd0] = FIELD(TETHER__MP_INT, 1),
    [0xd1] = FIELD(TETHER__MP_INT, 2),
    [0xd2] = FIELD(TETHER__MP_INT, 4),
    [0xd3] = FIELD(TETHER__MP_INT, 8),
    [0xd4] = FIXEXT(1),
    [0xd5] = FIXEXT(2),
    [0xd6] = FIXEXT(4),
    [0xd7] = FIXEXT(8),
    [0xd8] = FIXEXT(16),
    [0xd9] = FIELD(TETHER__MP_STR, 1),
    [0xda] = FIELD(TETHER__MP_STR, 2),
    [0xdb] = FIELD(TETHER__MP_STR, 4),
    [0xdc] = FIELD(TETHER__MP_ARRAY, 2),
    [0xdd] = FIELD(TETHER__MP_ARRAY, 4),
    [0xde] = FIELD(TETHER__MP_MAP, 2),
    [0xdf] = FIELD(TETHER__MP_MAP, 4),
    /* 0xe0-0xff negative fixint: the byte is the value's two's complement */
    FIX16(TETHER__MP_INT, -32),
    FIX16(TETHER__MP_INT, -16),
};

/* ---- appending writers ------------------------------------------------------------- */

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
    uint8_t *p = tether__mp_reserve(b, 9, &r);
    if (!p) {
        return r;
    }
    b->len += (size_t)(tether__mp_put_int(p, v) - p);
    return 0;
}

int
tether__mp_uint(tether__buf *b, uint64_t v)
{
    int r;
    uint8_t *p = tether__mp_reserve(b, 9, &r);
    if (!p) {
        return r;
    }
    b->len += (size_t)(tether__mp_put_uint(p, v) - p);
    return 0;
}

int
tether__mp_double(tether__buf *b, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof(bits));
    int r;
    uint8_t *p = tether__mp_reserve(b, 9, &r);
    if (!p) {
        return r;
    }
    p[0] = 0xcb;
    tether__store64(p + 1, bits);
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
    uint8_t *p = tether__mp_reserve(b, tether__mp_str_head_size(len) + len, &r);
    if (!p) {
        return r;
    }
    b->len += (size_t)(tether__mp_put_str(p, s, len) - p);
    return 0;
}

/* The payload after a head put at q: bin and ext. */
static inline void
put_payload(tether__buf *b, uint8_t *p, uint8_t *q, const void *data, size_t len)
{
    if (len) {
        memcpy(q, data, len);
    }
    b->len += (size_t)(q - p) + len;
}

int
tether__mp_bin(tether__buf *b, const void *data, size_t len)
{
    if (len > UINT32_MAX) {
        return -EMSGSIZE;
    }
    int r;
    uint8_t *p = tether__mp_reserve(b, tether__mp_bin_head_size(len) + len, &r);
    if (!p) {
        return r;
    }
    put_payload(b, p, tether__mp_put_bin_head(p, len), data, len);
    return 0;
}

int
tether__mp_ext(tether__buf *b, int8_t type, const void *data, size_t len)
{
    if (len > UINT32_MAX) {
        return -EMSGSIZE;
    }
    int r;
    uint8_t *p = tether__mp_reserve(b, tether__mp_ext_head_size(len) + len, &r);
    if (!p) {
        return r;
    }
    put_payload(b, p, tether__mp_put_ext_head(p, type, len), data, len);
    return 0;
}

int
tether__mp_array(tether__buf *b, uint32_t n)
{
    int r;
    uint8_t *p = tether__mp_reserve(b, 5, &r);
    if (!p) {
        return r;
    }
    b->len += (size_t)(tether__mp_put_array_head(p, n) - p);
    return 0;
}

int
tether__mp_map(tether__buf *b, uint32_t n)
{
    int r;
    uint8_t *p = tether__mp_reserve(b, 5, &r);
    if (!p) {
        return r;
    }
    b->len += (size_t)(tether__mp_put_map_head(p, n) - p);
    return 0;
}

int
tether__mp_raw(tether__buf *b, const void *data, size_t len)
{
    return tether__buf_append(b, data, len);
}

/* ---- the reader -------------------------------------------------------------------- */

/* The value of a signed encoding from its bits: a field sign-extended, or a fix value
 * (already sign-extended). */
static inline int64_t
signed_value(const tether__mp_byte *e, uint64_t bits)
{
    if (e->field == 0 || e->field == 8) {
        return tether__as_signed(bits);
    }
    uint64_t sign = (uint64_t)1 << (8 * e->field - 1);
    return (int64_t)(bits ^ sign) - (int64_t)sign;
}

/* A scalar's value, by its table entry. */
static inline void
read_scalar(const uint8_t *at, tether__mp_head *h)
{
    const tether__mp_byte *e = &tether__mp_bytes[*at];
    uint64_t bits = tether__mp_number(at, e);
    switch (e->type) {
    case TETHER__MP_BOOL:
        h->boolean = bits != 0;
        break;
    case TETHER__MP_UINT:
        h->u = bits;
        h->i = tether__as_signed(bits);
        break;
    case TETHER__MP_INT:
        /* Signed encodings of values >= 0 read as UINT, as an unsigned one would. */
        h->i = signed_value(e, bits);
        if (h->i >= 0) {
            h->type = TETHER__MP_UINT;
            h->u = (uint64_t)h->i;
        }
        break;
    case TETHER__MP_FLOAT32: {
        uint32_t bits32 = (uint32_t)bits;
        float f;
        memcpy(&f, &bits32, sizeof(f));
        h->f = f;
        break;
    }
    case TETHER__MP_FLOAT64:
        memcpy(&h->f, &bits, sizeof(h->f));
        break;
    default: /* NIL: nothing more */
        break;
    }
}

/* What the item's number means, by its type. */
static inline void
head_of_item(const tether__mp_item *it, tether__mp_head *h)
{
    h->type = it->type;
    if (it->type < TETHER__MP_STR) {
        read_scalar(it->at, h);
    } else if (tether__mp_is_container(it->type)) {
        h->count = (uint32_t)it->n;
    } else {
        h->ext_type = it->ext_type;
        h->data.ptr = it->data;
        h->data.len = (size_t)it->n;
    }
}

/* The next item, read through the table; the reader is not moved. */
static inline int
next_item(const tether__mp_reader *r, tether__mp_item *it)
{
    if (!r->p || r->p >= r->end) {
        return -EPROTO;
    }
    return tether__mp_item_at(r->p, r->end, it);
}

/* The next item if it is of the given family. */
static inline int
next_item_of(const tether__mp_reader *r, int type, tether__mp_item *it)
{
    if (next_item(r, it) < 0 || it->type != type) {
        return -EPROTO;
    }
    return 0;
}

int
tether__mp_read_head(tether__mp_reader *r, tether__mp_head *h)
{
    tether__mp_item it;
    if (next_item(r, &it) < 0) {
        return -EPROTO;
    }
    head_of_item(&it, h);
    r->p = it.next;
    return 0;
}

int
tether__mp_read_uint(tether__mp_reader *r, uint64_t *ret)
{
    tether__mp_item it;
    if (next_item(r, &it) < 0) {
        return -EPROTO;
    }
    const tether__mp_byte *e = &tether__mp_bytes[*it.at];
    if (it.type == TETHER__MP_UINT) {
        *ret = tether__mp_number(it.at, e);
    } else {
        /* A signed encoding of a value >= 0 reads as an unsigned one. */
        int64_t v = it.type == TETHER__MP_INT ? signed_value(e, tether__mp_number(it.at, e)) : -1;
        if (v < 0) {
            return -EPROTO;
        }
        *ret = (uint64_t)v;
    }
    r->p = it.next;
    return 0;
}

int
tether__mp_read_int(tether__mp_reader *r, int64_t *ret)
{
    tether__mp_item it;
    if (next_item(r, &it) < 0) {
        return -EPROTO;
    }
    const tether__mp_byte *e = &tether__mp_bytes[*it.at];
    if (it.type == TETHER__MP_INT) {
        *ret = signed_value(e, tether__mp_number(it.at, e));
    } else {
        uint64_t u = it.type == TETHER__MP_UINT ? tether__mp_number(it.at, e) : UINT64_MAX;
        if (u > INT64_MAX) {
            return -EPROTO;
        }
        *ret = (int64_t)u;
    }
    r->p = it.next;
    return 0;
}

int
tether__mp_read_bool(tether__mp_reader *r, bool *ret)
{
    if (tether__mp_peek(r) != TETHER__MP_BOOL) {
        return -EPROTO;
    }
    *ret = tether__mp_bytes[*r->p++].fix != 0;
    return 0;
}

int
tether__mp_read_str(tether__mp_reader *r, tether__span *ret)
{
    tether__mp_item it;
    if (next_item_of(r, TETHER__MP_STR, &it) < 0) {
        return -EPROTO;
    }
    *ret = (tether__span){it.data, (size_t)it.n};
    r->p = it.next;
    return 0;
}

/* An array's or map's head: its count. */
static inline int
read_count(tether__mp_reader *r, int type, uint32_t *ret_count)
{
    tether__mp_item it;
    if (next_item_of(r, type, &it) < 0) {
        return -EPROTO;
    }
    *ret_count = (uint32_t)it.n;
    r->p = it.next;
    return 0;
}

int
tether__mp_read_array(tether__mp_reader *r, uint32_t *ret_count)
{
    return read_count(r, TETHER__MP_ARRAY, ret_count);
}

int
tether__mp_read_map(tether__mp_reader *r, uint32_t *ret_count)
{
    return read_count(r, TETHER__MP_MAP, ret_count);
}

/*
 * Skipping needs no stack: one counter of items still to read is enough, since an array
 * adds its count and a map twice its count. Every count is first compared with the bytes
 * left, so the counter stays below the input size.
 */
int
tether__mp_skip(tether__mp_reader *r, tether__span *ret_span)
{
    const uint8_t *p = r->p;
    uint64_t pending = 1;
    if (!p) {
        return -EPROTO;
    }
    while (pending > 0) {
        tether__mp_item it;
        if (p >= r->end || tether__mp_item_at(p, r->end, &it) < 0) {
            return -EPROTO;
        }
        pending--;
        p = it.next;
        if (tether__mp_is_container(it.type)) {
            uint64_t n = it.type == TETHER__MP_MAP ? 2 * it.n : it.n;
            if (n > (uint64_t)(r->end - p)) {
                return -EPROTO;
            }
            pending += n;
        }
    }
    if (ret_span) {
        ret_span->ptr = r->p;
        ret_span->len = (size_t)(p - r->p);
    }
    r->p = p;
    return 0;
}
