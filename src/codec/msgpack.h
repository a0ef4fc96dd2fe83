/*
 * msgpack: the encoding every tether message is written in (msgpack.org's spec), as far as
 * tether reads and writes it.
 *
 * An item starts with one byte that says what it is and how the rest is laid out:
 *
 *   first byte | big-endian field  | ext type byte | payload (str, bin, ext) or elements
 *
 * The field, when there is one, holds the scalar's value, the payload's length or the
 * container's count; "fix" bytes carry that number in their low bits instead. That layout
 * is data here, not code: tether__mp_bytes[] has one entry per first byte, and every place
 * that classifies a first byte (the reader and the skipper below, the validator in
 * codec/validate.h, the frame decoder's shortcuts, the REF scanner, the callers that ask
 * "is this an array?") reads that one table, so they cannot disagree about a byte.
 *
 * Writing comes in two forms. The tether__mp_* writers append one item to a tether__buf
 * and grow it: the only allocation in the codec, and the caller's. The frame encoders know
 * every item up front, so they use the sized forms instead: add up the
 * tether__mp_*_size() of the items, reserve that once, then tether__mp_put_*() each item
 * without further checks.
 *
 * Reading never allocates and never reads past the end it is given: tether__mp_read_head()
 * reads one item's head (scalars, str, bin and ext whole; an array's or map's count), the
 * typed readers read one item of an expected type, tether__mp_skip() one whole value.
 *
 * Numbers are loaded and stored byte by byte, big-endian: no unaligned loads, no shifts of
 * signed values.
 */
#ifndef TETHER_MSGPACK_H
#define TETHER_MSGPACK_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "util/buf.h"

/* Bytes inside a buffer the caller owns; spans live as long as that buffer. */
typedef struct tether__span {
    const uint8_t *ptr;
    size_t len;
} tether__span;

/* ---- the byte-type table --------------------------------------------------------- */

/*
 * Item types: the family of a first byte in the table, and what tether__mp_read_head()
 * reports. The order groups them by what follows the head, so that one comparison tells
 * the groups apart: scalars (nothing), STR..EXT (a payload), ARRAY and MAP (elements).
 */
enum tether__mp_type {
    TETHER__MP_NIL = 1,
    TETHER__MP_BOOL,
    TETHER__MP_UINT, /* read: an int >= 0, whatever its encoding; table: unsigned encodings */
    TETHER__MP_INT,  /* read: an int < 0; table: signed encodings (their value may be >= 0) */
    TETHER__MP_FLOAT32,
    TETHER__MP_FLOAT64,
    TETHER__MP_STR,
    TETHER__MP_BIN,
    TETHER__MP_EXT,
    TETHER__MP_ARRAY,
    TETHER__MP_MAP,
};

/*
 * What one first byte means. field and head are what a reader needs to find the next
 * thing; fix is the number of the bytes that carry one in themselves.
 */
typedef struct tether__mp_byte {
    uint8_t type;  /* enum tether__mp_type; 0 for 0xc1, which msgpack never uses */
    uint8_t field; /* bytes of the big-endian number after the first byte: 0, 1, 2, 4, 8 */
    uint8_t head;  /* bytes after the first before the payload or elements (field + ext type) */
    int8_t fix;    /* with no field: the value (fixint, bool), length (fixstr, fixext) or
                      count (fixarray, fixmap) */
} tether__mp_byte;

extern const tether__mp_byte tether__mp_bytes[256];

/* The family of the item that starts with byte c (0 for the unused 0xc1). */
static inline int
tether__mp_type_of(uint8_t c)
{
    return tether__mp_bytes[c].type;
}

/* STR, BIN and EXT: n bytes of payload follow the head. */
static inline bool
tether__mp_has_payload(int type)
{
    return (unsigned)(type - TETHER__MP_STR) <= (unsigned)(TETHER__MP_EXT - TETHER__MP_STR);
}

/* ARRAY and MAP: n elements (MAP: n pairs) follow the head. */
static inline bool
tether__mp_is_container(int type)
{
    return type >= TETHER__MP_ARRAY;
}

/* ---- big-endian numbers ----------------------------------------------------------- */

static inline uint16_t
tether__load16(const uint8_t *p)
{
    return (uint16_t)(((unsigned)p[0] << 8) | p[1]);
}

static inline uint32_t
tether__load32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t
tether__load64(const uint8_t *p)
{
    return ((uint64_t)tether__load32(p) << 32) | tether__load32(p + 4);
}

/* The field of n bytes (1, 2, 4 or 8) at p. */
static inline uint64_t
tether__load_field(const uint8_t *p, size_t n)
{
    switch (n) {
    case 1:
        return p[0];
    case 2:
        return tether__load16(p);
    case 4:
        return tether__load32(p);
    default:
        return tether__load64(p);
    }
}

static inline uint8_t *
tether__store16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
    return p + 2;
}

static inline uint8_t *
tether__store32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
    return p + 4;
}

static inline uint8_t *
tether__store64(uint8_t *p, uint64_t v)
{
    tether__store32(p, (uint32_t)(v >> 32));
    return tether__store32(p + 4, (uint32_t)v);
}

/* Two's complement reinterpretation without implementation-defined conversions. */
static inline int64_t
tether__as_signed(uint64_t u)
{
    if (u <= (uint64_t)INT64_MAX) {
        return (int64_t)u;
    }
    return -(int64_t)(~u) - 1;
}

/* ---- one item's head, by the table ------------------------------------------------ */

/*
 * The layout of one item as the table gives it. For str, bin and ext the payload is known
 * to fit; an array's or map's count is not compared with anything (each caller has its
 * own rule for that). A scalar's value is left where it is: most callers only step over
 * it, and tether__mp_read_head() reads it from at.
 */
typedef struct tether__mp_item {
    uint8_t type;        /* the table's family, enum tether__mp_type */
    int8_t ext_type;     /* EXT; meaningless for the others */
    uint64_t n;          /* STR, BIN, EXT: payload bytes; ARRAY: elements; MAP: pairs; else 0 */
    const uint8_t *at;   /* the first byte */
    const uint8_t *data; /* after the head: the payload, the first element, the next item */
    const uint8_t *next; /* after the payload; data for everything but str, bin, ext */
} tether__mp_item;

/* The number an item's head carries: its field, or the first byte's fix value
 * sign-extended (for a scalar, the value's bits). */
static inline uint64_t
tether__mp_number(const uint8_t *at, const tether__mp_byte *e)
{
    return e->field == 0 ? (uint64_t)(int64_t)e->fix : tether__load_field(at + 1, e->field);
}

/* Read the item at p (p < end is the caller's check). Returns 0 or -EPROTO (0xc1, or the
 * head or payload runs past end). */
static inline int
tether__mp_item_at(const uint8_t *p, const uint8_t *end, tether__mp_item *ret)
{
    const tether__mp_byte *e = &tether__mp_bytes[*p];
    size_t left = (size_t)(end - p) - 1;
    if (e->type == 0 || e->head > left) {
        return -EPROTO;
    }
    /* Every field is set (the ones a path does not need cost nothing once inlined). */
    ret->type = e->type;
    ret->ext_type = 0;
    ret->n = 0;
    ret->at = p;
    ret->data = p + 1 + e->head;
    ret->next = ret->data;
    if (e->type < TETHER__MP_STR) {
        return 0; /* a scalar: nothing follows its head */
    }
    ret->n = tether__mp_number(p, e);
    if (tether__mp_has_payload(e->type)) {
        if (ret->n > left - e->head) {
            return -EPROTO;
        }
        ret->next += ret->n;
        /* An ext's type byte ends its head (for str and bin this byte means nothing). */
        ret->ext_type = (int8_t)((int)p[e->head] - (p[e->head] > 127 ? 256 : 0));
    }
    return 0;
}

/* ---- sized writing: size every item, reserve once, put without checks ------------- */

static inline size_t
tether__mp_uint_size(uint64_t v)
{
    return v < 128 ? 1 : v <= UINT8_MAX ? 2 : v <= UINT16_MAX ? 3 : v <= UINT32_MAX ? 5 : 9;
}

static inline uint8_t *
tether__mp_put_uint(uint8_t *p, uint64_t v)
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
        return tether__store16(p + 1, (uint16_t)v);
    }
    if (v <= UINT32_MAX) {
        *p = 0xce;
        return tether__store32(p + 1, (uint32_t)v);
    }
    *p = 0xcf;
    return tether__store64(p + 1, v);
}

static inline size_t
tether__mp_int_size(int64_t v)
{
    if (v >= 0) {
        return tether__mp_uint_size((uint64_t)v);
    }
    return v >= -32 ? 1 : v >= INT8_MIN ? 2 : v >= INT16_MIN ? 3 : v >= INT32_MIN ? 5 : 9;
}

static inline uint8_t *
tether__mp_put_int(uint8_t *p, int64_t v)
{
    if (v >= 0) {
        return tether__mp_put_uint(p, (uint64_t)v);
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
        return tether__store16(p + 1, (uint16_t)v);
    }
    if (v >= INT32_MIN) {
        *p = 0xd2;
        return tether__store32(p + 1, (uint32_t)v);
    }
    *p = 0xd3;
    return tether__store64(p + 1, (uint64_t)v);
}

/* Heads of str, bin, ext: n <= UINT32_MAX is the caller's check. */
static inline size_t
tether__mp_str_head_size(size_t n)
{
    return n < 32 ? 1 : n <= UINT8_MAX ? 2 : n <= UINT16_MAX ? 3 : 5;
}

static inline uint8_t *
tether__mp_put_str_head(uint8_t *p, size_t n)
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
        return tether__store16(p + 1, (uint16_t)n);
    }
    *p = 0xdb;
    return tether__store32(p + 1, (uint32_t)n);
}

static inline uint8_t *
tether__mp_put_str(uint8_t *p, const char *s, size_t n)
{
    p = tether__mp_put_str_head(p, n);
    if (n) {
        memcpy(p, s, n);
    }
    return p + n;
}

static inline size_t
tether__mp_bin_head_size(size_t n)
{
    return n <= UINT8_MAX ? 2 : n <= UINT16_MAX ? 3 : 5;
}

static inline uint8_t *
tether__mp_put_bin_head(uint8_t *p, size_t n)
{
    if (n <= UINT8_MAX) {
        p[0] = 0xc4;
        p[1] = (uint8_t)n;
        return p + 2;
    }
    if (n <= UINT16_MAX) {
        *p = 0xc5;
        return tether__store16(p + 1, (uint16_t)n);
    }
    *p = 0xc6;
    return tether__store32(p + 1, (uint32_t)n);
}

static inline size_t
tether__mp_ext_head_size(size_t n)
{
    if (n == 1 || n == 2 || n == 4 || n == 8 || n == 16) {
        return 2;
    }
    return n <= UINT8_MAX ? 3 : n <= UINT16_MAX ? 4 : 6;
}

static inline uint8_t *
tether__mp_put_ext_head(uint8_t *p, int8_t type, size_t n)
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
            p = tether__store16(p, (uint16_t)n);
        } else {
            *p++ = 0xc9;
            p = tether__store32(p, (uint32_t)n);
        }
        break;
    }
    *p++ = (uint8_t)type;
    return p;
}

/* Arrays and maps share their size classes. */
static inline size_t
tether__mp_container_head_size(uint32_t n)
{
    return n < 16 ? 1 : n <= UINT16_MAX ? 3 : 5;
}

static inline uint8_t *
tether__mp_put_container_head(uint8_t *p, uint32_t n, uint8_t fix, uint8_t c16, uint8_t c32)
{
    if (n < 16) {
        *p = (uint8_t)(fix | n);
        return p + 1;
    }
    if (n <= UINT16_MAX) {
        *p = c16;
        return tether__store16(p + 1, (uint16_t)n);
    }
    *p = c32;
    return tether__store32(p + 1, n);
}

static inline uint8_t *
tether__mp_put_array_head(uint8_t *p, uint32_t n)
{
    return tether__mp_put_container_head(p, n, 0x90, 0xdc, 0xdd);
}

static inline uint8_t *
tether__mp_put_map_head(uint8_t *p, uint32_t n)
{
    return tether__mp_put_container_head(p, n, 0x80, 0xde, 0xdf);
}

/* Reserve n bytes at the end of b and return where they start (NULL with *r set on
 * failure); the caller commits with b->len += the bytes it put. */
static inline uint8_t *
tether__mp_reserve(tether__buf *b, size_t n, int *r)
{
    *r = tether__buf_reserve(b, n);
    return *r < 0 ? NULL : b->data + b->len;
}

/* Length of a NUL-terminated string field (NULL encodes as ""); -EMSGSIZE over 4 GiB. */
static inline int
tether__cstr_len(const char *s, size_t *ret_len)
{
    size_t n = s ? strlen(s) : 0;
    if (n > UINT32_MAX) {
        return -EMSGSIZE;
    }
    *ret_len = n;
    return 0;
}

/* ---- appending writers ------------------------------------------------------------ */

/*
 * Append one item to b. Return 0, -ENOMEM, or -EMSGSIZE for a str/bin/ext over 4 GiB - 1
 * (b unchanged on failure).
 */
int tether__mp_nil(tether__buf *b);
int tether__mp_bool(tether__buf *b, bool v);
int tether__mp_int(tether__buf *b, int64_t v);
int tether__mp_uint(tether__buf *b, uint64_t v);
int tether__mp_double(tether__buf *b, double v);
int tether__mp_str(tether__buf *b, const char *s, size_t len);
int tether__mp_bin(tether__buf *b, const void *p, size_t len);
int tether__mp_array(tether__buf *b, uint32_t n);
int tether__mp_map(tether__buf *b, uint32_t n);
int tether__mp_ext(tether__buf *b, int8_t type, const void *p, size_t len);
int tether__mp_raw(tether__buf *b, const void *p, size_t len);

/* ---- the reader ------------------------------------------------------------------- */

/*
 * A reader over msgpack bytes: each call reads one element at *p and advances it. Return
 * 0, or -EPROTO on a type mismatch or truncation (never reads past end); the reader is
 * unchanged on error.
 */
typedef struct tether__mp_reader {
    const uint8_t *p, *end;
} tether__mp_reader;

/* The family of the next item's first byte, or 0 at the end (and for 0xc1). */
static inline int
tether__mp_peek(const tether__mp_reader *r)
{
    return r->p && r->p < r->end ? tether__mp_type_of(*r->p) : 0;
}

static inline int
tether__mp_read_nil(tether__mp_reader *r)
{
    if (tether__mp_peek(r) != TETHER__MP_NIL) {
        return -EPROTO;
    }
    r->p++;
    return 0;
}

int tether__mp_read_uint(tether__mp_reader *r, uint64_t *ret);
int tether__mp_read_int(tether__mp_reader *r, int64_t *ret);
int tether__mp_read_bool(tether__mp_reader *r, bool *ret);
int tether__mp_read_str(tether__mp_reader *r, tether__span *ret);
int tether__mp_read_array(tether__mp_reader *r, uint32_t *ret_count);
int tether__mp_read_map(tether__mp_reader *r, uint32_t *ret_count);
/*
 * Skip one whole value; ret_span may be NULL. Each array's or map's element count must
 * fit in the bytes left (an element takes at least one byte).
 */
int tether__mp_skip(tether__mp_reader *r, tether__span *ret_span);

typedef struct tether__mp_head {
    int type;          /* enum tether__mp_type */
    bool boolean;      /* BOOL */
    uint64_t u;        /* UINT */
    int64_t i;         /* INT; also UINT when it fits */
    double f;          /* FLOAT32, FLOAT64 */
    uint32_t count;    /* ARRAY: elements; MAP: pairs */
    int8_t ext_type;   /* EXT */
    tether__span data; /* STR, BIN, EXT: the payload bytes */
} tether__mp_head;

/*
 * Read one item's head: scalars, str, bin and ext whole; for an array or map only its
 * header (the elements follow). Checks the declared length against the bytes left, not
 * the elements' count. Returns 0 or -EPROTO (truncated, 0xc1); *r is unchanged on error.
 */
int tether__mp_read_head(tether__mp_reader *r, tether__mp_head *ret);

#endif
