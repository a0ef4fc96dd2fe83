/*
 * handshake: HELLO and WELCOME maps (see handshake.h), described by a table of keys.
 *
 * Each known key names a field of the C struct (by offset) and how its value is written:
 * a string, a 32-bit or 64-bit integer, or the [min, max] versions pair. Encoding sizes
 * every present field, reserves the frame once (codec/frame.h) and puts them; decoding
 * walks the peer's map, looks each key up in the table and reads its value, skipping keys
 * it does not know.
 */
#include "codec/handshake.h"

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "codec/frame.h"

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

/* The fields' values are read from and written to the struct by offset, with memcpy (the
 * struct's members have their own types; this keeps the accesses well-defined). */
static void
get_field(const void *s, const struct field *fd, void *out, size_t size)
{
    memcpy(out, (const char *)s + fd->offset, size);
}

static const char *
get_str(const void *s, const struct field *fd)
{
    const char *str;
    get_field(s, fd, &str, sizeof(str));
    return str;
}

/* ---- encoding -------------------------------------------------------------------- */

/* Bytes of one field's value; 0 for a NULL string, which is left out. *ret_len is the
 * string's length. Returns -EMSGSIZE for a string over 4 GiB - 1. */
static int
measure_field(const void *s, const struct field *fd, size_t *ret_len, uint64_t *ret_size)
{
    switch (fd->type) {
    case F_STR: {
        const char *str = get_str(s, fd);
        if (!str) {
            *ret_size = 0;
            return 0;
        }
        if (tether__cstr_len(str, ret_len) < 0) {
            return -EMSGSIZE;
        }
        *ret_size = tether__mp_str_head_size(*ret_len) + (uint64_t)*ret_len;
        return 0;
    }
    case F_U32: {
        uint32_t v;
        get_field(s, fd, &v, sizeof(v));
        *ret_size = tether__mp_uint_size(v);
        return 0;
    }
    case F_I64: {
        int64_t v;
        get_field(s, fd, &v, sizeof(v));
        *ret_size = tether__mp_int_size(v);
        return 0;
    }
    default: { /* F_VERSIONS */
        const tether__hello *h = s;
        *ret_size = 1 + tether__mp_uint_size(h->min_version) + tether__mp_uint_size(h->max_version);
        return 0;
    }
    }
}

static uint8_t *
put_field(uint8_t *p, const void *s, const struct field *fd, size_t len)
{
    p = tether__mp_put_str(p, fd->key, fd->key_len);
    switch (fd->type) {
    case F_STR:
        return tether__mp_put_str(p, get_str(s, fd), len);
    case F_U32: {
        uint32_t v;
        get_field(s, fd, &v, sizeof(v));
        return tether__mp_put_uint(p, v);
    }
    case F_I64: {
        int64_t v;
        get_field(s, fd, &v, sizeof(v));
        return tether__mp_put_int(p, v);
    }
    default: { /* F_VERSIONS */
        const tether__hello *h = s;
        *p++ = 0x92;
        p = tether__mp_put_uint(p, h->min_version);
        return tether__mp_put_uint(p, h->max_version);
    }
    }
}

static int
encode_map_frame(tether__buf *b, int kind, const struct field *fields, size_t nfields,
                 const void *s)
{
    size_t lens[NFIELDS];
    bool present[NFIELDS];
    uint32_t npresent = 0;
    uint64_t body = 2;
    assert(nfields <= NFIELDS);
    for (size_t i = 0; i < nfields; i++) {
        uint64_t vsize;
        if (measure_field(s, &fields[i], &lens[i], &vsize) < 0) {
            return -EMSGSIZE;
        }
        present[i] = fields[i].type != F_STR || get_str(s, &fields[i]) != NULL;
        if (present[i]) {
            npresent++;
            body += tether__mp_str_head_size(fields[i].key_len) + fields[i].key_len + vsize;
        }
    }
    body += tether__mp_container_head_size(npresent);

    int r;
    uint8_t *p = tether__frame_begin(b, body, &r);
    if (!p) {
        return r;
    }
    *p++ = 0x92;
    *p++ = (uint8_t)kind;
    p = tether__mp_put_map_head(p, npresent);
    for (size_t i = 0; i < nfields; i++) {
        if (present[i]) {
            p = put_field(p, s, &fields[i], lens[i]);
        }
    }
    return tether__frame_commit(b, body, p);
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

/* ---- decoding -------------------------------------------------------------------- */

/* A uint field (up to 2^64-1 on the wire, docs/protocol.md section 4) into 32 bits: a
 * larger value reads as UINT32_MAX, which means the same to this side (a version past
 * any it speaks, a limit it never reaches), so an offer such as versions [1, 2^64-1]
 * is understood rather than refused. */
static int
read_u32_saturated(tether__mp_reader *r, uint32_t *ret)
{
    uint64_t v;
    if (tether__mp_read_uint(r, &v) < 0) {
        return -EPROTO;
    }
    *ret = v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
    return 0;
}

/* The table's entry for the next key, or NULL (with the key read) for a key it does not
 * know or one that is not a string. */
static int
read_key(tether__mp_reader *r, const struct field *fields, size_t nfields, size_t *ret_index)
{
    tether__span key;
    *ret_index = SIZE_MAX;
    if (tether__mp_read_str(r, &key) < 0) {
        return tether__mp_skip(r, NULL);
    }
    for (size_t i = 0; i < nfields; i++) {
        if (fields[i].key_len == key.len && memcmp(fields[i].key, key.ptr, key.len) == 0) {
            *ret_index = i;
            break;
        }
    }
    return 0;
}

/*
 * A string value: copied with a NUL into strings, and *ret_at set to its offset from the
 * buffer's head (stable across compaction), or SIZE_MAX for nil. Pointers are made only
 * once no more appends can move the buffer.
 */
static int
read_str_field(tether__mp_reader *r, tether__buf *strings, size_t *ret_at)
{
    static const char nul = '\0';
    tether__span v;
    if (tether__mp_read_nil(r) == 0) {
        *ret_at = SIZE_MAX;
        return 0;
    }
    if (tether__mp_read_str(r, &v) < 0 || memchr(v.ptr, 0, v.len)) {
        return -EPROTO;
    }
    size_t where = tether__buf_pending(strings);
    int err = tether__buf_append(strings, v.ptr, v.len);
    if (err == 0) {
        err = tether__buf_append(strings, &nul, 1);
    }
    if (err < 0) {
        return err;
    }
    *ret_at = where;
    return 0;
}

/* "versions": [min, max, ...] */
static int
read_versions(tether__mp_reader *r, tether__hello *h)
{
    uint32_t count;
    if (tether__mp_read_array(r, &count) < 0 || count < 2 ||
        read_u32_saturated(r, &h->min_version) < 0 || read_u32_saturated(r, &h->max_version) < 0) {
        return -EPROTO;
    }
    for (uint32_t j = 2; j < count; j++) {
        if (tether__mp_skip(r, NULL) < 0) {
            return -EPROTO;
        }
    }
    return 0;
}

static int
read_field(tether__mp_reader *r, const struct field *fd, void *s, tether__buf *strings,
           size_t *str_at)
{
    char *at = (char *)s + fd->offset;
    switch (fd->type) {
    case F_STR:
        return read_str_field(r, strings, str_at);
    case F_U32: {
        uint32_t v;
        if (read_u32_saturated(r, &v) < 0) {
            return -EPROTO;
        }
        memcpy(at, &v, sizeof(v));
        return 0;
    }
    case F_I64: {
        int64_t v;
        if (tether__mp_read_int(r, &v) < 0) {
            return -EPROTO;
        }
        memcpy(at, &v, sizeof(v));
        return 0;
    }
    default: /* F_VERSIONS */
        return read_versions(r, s);
    }
}

static int
decode_map(const tether__span *map, tether__buf *strings, const struct field *fields,
           size_t nfields, void *s)
{
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
    int r = tether__mp_read_map(&rd, &n);
    for (uint32_t k = 0; r == 0 && k < n; k++) {
        size_t i;
        r = read_key(&rd, fields, nfields, &i);
        if (r == 0) {
            r = i == SIZE_MAX ? tether__mp_skip(&rd, NULL)
                              : read_field(&rd, &fields[i], s, strings, &str_at[i]);
        }
    }
    if (r < 0) {
        strings->len = strings->off + mark;
        return r;
    }
    for (size_t i = 0; i < nfields; i++) {
        if (fields[i].type == F_STR) {
            const char *str =
                str_at[i] == SIZE_MAX ? NULL : (const char *)tether__buf_head(strings) + str_at[i];
            memcpy((char *)s + fields[i].offset, &str, sizeof(str));
        }
    }
    return 0;
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
