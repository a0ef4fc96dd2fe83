/*
 * frame: decoding and encoding tether's frames (see frame.h for the interface and
 * docs/protocol.md for the spec).
 *
 * Decoding is two steps. The whole body is validated first (tether__msgpack_check_exts():
 * every declared length against the bytes left, nesting bounded, REF and BUFFER exts
 * counted). Only then are the fields read, with the bounds-checked readers of codec/msgpack.h:
 * element 0 picks the kind's layout from a table (how many elements it needs, which step reads
 * them), and that step reads the fields in order. Decoding never allocates; its spans
 * point into the body.
 *
 * Encoding computes the exact size of the frame first, reserves it once and writes with
 * the unchecked tether__mp_put_* helpers, so an encoder either appends a complete frame or
 * fails before touching the buffer.
 */
#include "codec/frame.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

#include "codec/ext.h"
#include "codec/validate.h"
#include "util/utf8.h"

/* ---- reading fields -------------------------------------------------------------- */

/*
 * Shortcut for the encodings that dominate real frames: an item of the given type whose
 * number is in its first byte (small ints, short strings, small arrays). Returns true and
 * steps over the first byte when the next item is one.
 */
static inline bool
read_fix(tether__mp_reader *r, int type, size_t *ret)
{
    if (r->p < r->end) {
        const tether__mp_byte *e = &tether__mp_bytes[*r->p];
        if (e->type == type && e->field == 0) {
            *ret = (uint8_t)e->fix;
            r->p++;
            return true;
        }
    }
    return false;
}

/* An unsigned integer, inline for every encoding of one: ids and chains (random 64-bit
 * numbers) are read from every call frame. */
static inline int
dec_uint(tether__mp_reader *r, uint64_t *ret)
{
    if (r->p < r->end) {
        const tether__mp_byte *e = &tether__mp_bytes[*r->p];
        if (e->type == TETHER__MP_UINT && e->field == 0) {
            *ret = (uint8_t)e->fix;
            r->p++;
            return 0;
        }
        if (e->type == TETHER__MP_UINT && *r->p >= 0xcc && *r->p <= 0xcf &&
            e->field < (size_t)(r->end - r->p)) {
            *ret = tether__load_field(r->p + 1, e->field);
            r->p += 1 + e->field;
            return 0;
        }
    }
    return tether__mp_read_uint(r, ret);
}

static inline int
dec_str(tether__mp_reader *r, tether__span *ret)
{
    const uint8_t *start = r->p;
    size_t n;
    if (read_fix(r, TETHER__MP_STR, &n)) {
        if (n <= (size_t)(r->end - r->p)) {
            ret->ptr = r->p;
            ret->len = n;
            r->p += n;
            return 0;
        }
        r->p = start;
    }
    return tether__mp_read_str(r, ret);
}

/* A whole value of the given type (an array or a map), as raw bytes. */
static inline int
read_raw(tether__mp_reader *r, int type, tether__span *ret)
{
    if (tether__mp_peek(r) != type) {
        return -EPROTO;
    }
    const tether__mp_byte *e = &tether__mp_bytes[*r->p];
    if (e->field == 0 && e->fix == 0) {
        /* Empty, as most kwargs and many args are: one byte. */
        *ret = (tether__span){r->p, 1};
        r->p++;
        return 0;
    }
    return tether__mp_skip(r, ret);
}

/* ---- one step per kind: the elements after the kind --------------------------------- */

/* HELLO, WELCOME: [kind, map] (codec/handshake.h reads the map). */
static int
decode_map(tether__mp_reader *r, tether__frame *f)
{
    return read_raw(r, TETHER__MP_MAP, &f->value);
}

/* REFUSE, CONTROL: [kind, str, str] */
static int
decode_two_str(tether__mp_reader *r, tether__frame *f)
{
    if (dec_str(r, &f->method) < 0 || dec_str(r, &f->text) < 0) {
        return -EPROTO;
    }
    return 0;
}

/* NOTIFY: [kind, chain, target, method, args, kwargs]; REQUEST has the same in the middle. */
static int
decode_notify(tether__mp_reader *r, tether__frame *f)
{
    if (dec_uint(r, &f->chain) < 0 || dec_uint(r, &f->target) < 0 || dec_str(r, &f->method) < 0 ||
        read_raw(r, TETHER__MP_ARRAY, &f->args) < 0 ||
        read_raw(r, TETHER__MP_MAP, &f->kwargs) < 0) {
        return -EPROTO;
    }
    return 0;
}

/* REQUEST: [kind, id > 0, (the notification's fields), timeout_ms] */
static int
decode_request(tether__mp_reader *r, tether__frame *f)
{
    if (dec_uint(r, &f->id) < 0 || f->id == 0 || decode_notify(r, f) < 0 ||
        dec_uint(r, &f->timeout_ms) < 0) {
        return -EPROTO;
    }
    return 0;
}

/* RESPONSE: [kind, id, is_error, value]; an error's value is an ERROR ext. */
static int
decode_response(tether__mp_reader *r, tether__frame *f)
{
    tether__error_ext e;
    if (dec_uint(r, &f->id) < 0 || tether__mp_read_bool(r, &f->is_error) < 0 ||
        tether__mp_skip(r, &f->value) < 0) {
        return -EPROTO;
    }
    if (f->is_error && tether__error_ext_read(f->value.ptr, f->value.len, &e) < 0) {
        return -EPROTO;
    }
    return 0;
}

/* CANCEL, PING, PONG: [kind, uint] */
static int
decode_id(tether__mp_reader *r, tether__frame *f)
{
    return dec_uint(r, &f->id);
}

/* [kind, [entry, ...]]: each entry checked by one step; value is the whole list. */
static int
decode_list(tether__mp_reader *r, tether__frame *f, int (*entry)(tether__mp_reader *r))
{
    const uint8_t *start = r->p;
    uint32_t n;
    if (tether__mp_read_array(r, &n) < 0) {
        return -EPROTO;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (entry(r) < 0) {
            return -EPROTO;
        }
    }
    f->value = (tether__span){start, (size_t)(r->p - start)};
    return 0;
}

/* A RELEASE entry: [object_id:uint, count:uint, ...] */
static int
release_entry(tether__mp_reader *r)
{
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
    return 0;
}

/* A PROGRESS entry: id:uint */
static int
progress_entry(tether__mp_reader *r)
{
    uint64_t u;
    return tether__mp_read_uint(r, &u);
}

/* RELEASE: [kind, [[object_id, count, ...], ...]] */
static int
decode_release(tether__mp_reader *r, tether__frame *f)
{
    return decode_list(r, f, release_entry);
}

/* PROGRESS: [kind, [id, ...]] */
static int
decode_progress(tether__mp_reader *r, tether__frame *f)
{
    return decode_list(r, f, progress_entry);
}

/* LOG: [kind, level:uint, logger:str, message:str] */
static int
decode_log(tether__mp_reader *r, tether__frame *f)
{
    if (dec_uint(r, &f->level) < 0 || decode_two_str(r, f) < 0) {
        return -EPROTO;
    }
    return 0;
}

/* What each kind's body holds: elements needed, element 0 (the kind) included, and the
 * step that reads them. Indexed by kind. */
static const struct layout {
    uint8_t elements;
    int (*decode)(tether__mp_reader *r, tether__frame *f);
} layouts[] = {
    [TETHER__HELLO] = {2, decode_map},         [TETHER__WELCOME] = {2, decode_map},
    [TETHER__REFUSE] = {3, decode_two_str},    [TETHER__REQUEST] = {8, decode_request},
    [TETHER__NOTIFY] = {6, decode_notify},     [TETHER__RESPONSE] = {4, decode_response},
    [TETHER__CANCEL] = {2, decode_id},         [TETHER__RELEASE] = {2, decode_release},
    [TETHER__PING] = {2, decode_id},           [TETHER__PONG] = {2, decode_id},
    [TETHER__PROGRESS] = {2, decode_progress}, [TETHER__CONTROL] = {3, decode_two_str},
    [TETHER__LOG] = {4, decode_log},           [TETHER__BUFFERS_DONE] = {2, decode_progress},
};

/* ---- decoding -------------------------------------------------------------------- */

/* The body is within the size limit and exactly one valid value; counts its exts. */
static int
check_body(const uint8_t *body, size_t len, const tether__wire_limits *limits,
           tether__ext_counts *ret_counts)
{
    uint32_t max_size = TETHER__DEFAULT_MAX_FRAME_SIZE;
    uint32_t max_depth = TETHER__DEFAULT_MAX_DEPTH;
    if (limits && limits->max_frame_size) {
        max_size = limits->max_frame_size;
    }
    if (limits && limits->max_depth) {
        max_depth = limits->max_depth;
    }
    if (len > max_size) {
        return -EMSGSIZE;
    }
    size_t size;
    int r = tether__msgpack_check_exts(body, len, max_depth, limits && limits->buffer_exts, &size,
                                       ret_counts);
    if (r < 0) {
        return r;
    }
    return size == len ? 0 : -EPROTO;
}

/* Element 0: a known kind, in an array long enough for that kind's layout. */
static int
read_kind(tether__mp_reader *r, tether__frame *f, const struct layout **ret)
{
    size_t n;
    uint32_t count;
    uint64_t kind;
    if (!read_fix(r, TETHER__MP_ARRAY, &n)) {
        if (tether__mp_read_array(r, &count) < 0) {
            return -EPROTO;
        }
        n = count;
    }
    if (n < 1 || dec_uint(r, &kind) < 0) {
        return -EPROTO;
    }
    if (kind >= sizeof(layouts) / sizeof(layouts[0]) || !layouts[kind].decode ||
        n < layouts[kind].elements) {
        return -EPROTO;
    }
    f->kind = (int)kind;
    *ret = &layouts[kind];
    return 0;
}

int
tether__frame_decode(const uint8_t *body, size_t len, const tether__wire_limits *limits,
                     tether__frame *ret)
{
    *ret = (tether__frame){0};
    tether__ext_counts counts;
    int r = check_body(body, len, limits, &counts);
    if (r < 0) {
        return r;
    }
    ret->refs = counts.refs;
    ret->buffers = counts.buffers;
    tether__mp_reader rd = {body, body + len};
    const struct layout *layout;
    if (read_kind(&rd, ret, &layout) < 0 ||
        (ret->kind == TETHER__BUFFERS_DONE && !(limits && limits->buffer_exts)) ||
        layout->decode(&rd, ret) < 0) {
        *ret = (tether__frame){0};
        return -EPROTO;
    }
    return 0;
}

/* ---- encoding -------------------------------------------------------------------- */

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
    assert(tether__mp_type_of(args[0]) == TETHER__MP_ARRAY);
    if (args_len > UINT32_MAX || kwargs_len > UINT32_MAX) {
        return -EMSGSIZE;
    }
    size_t start = 0; /* set by call_open; -O3 cannot tell */
    int r = tether__encode_call_open(b, kind, id, chain, target, method, method_len, &start);
    if (r < 0) {
        return r;
    }
    r = tether__buf_append(b, args, args_len);
    if (r == 0) {
        r = tether__encode_call_close(b, start, kind, kwargs, kwargs_len, timeout_ms);
    }
    if (r < 0) {
        b->len = b->off + start; /* the buffer as it was */
    }
    return r;
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
tether__encode_call_open(tether__buf *b, int kind, uint64_t id, uint64_t chain, uint64_t target,
                         const char *method, size_t method_len, size_t *ret_start)
{
    if (!method) {
        method = "";
        method_len = 0;
    }
    if (method_len > UINT32_MAX) {
        return -EMSGSIZE;
    }
    bool request = kind == TETHER__REQUEST;
    size_t head = TETHER__FRAME_HEADER_SIZE + 2 + tether__mp_uint_size(chain) +
                  tether__mp_uint_size(target) + tether__mp_str_head_size(method_len) +
                  method_len + (request ? tether__mp_uint_size(id) : 0);
    int r;
    uint8_t *p = tether__mp_reserve(b, head, &r);
    if (!p) {
        return r;
    }
    *ret_start = tether__buf_pending(b);
    p += TETHER__FRAME_HEADER_SIZE; /* the length, once known */
    *p++ = request ? 0x98 : 0x96;
    *p++ = (uint8_t)kind;
    if (request) {
        p = tether__mp_put_uint(p, id);
    }
    p = tether__mp_put_uint(p, chain);
    p = tether__mp_put_uint(p, target);
    p = tether__mp_put_str(p, method, method_len);
    b->len += head;
    return 0;
}

int
tether__encode_call_close(tether__buf *b, size_t start, int kind, const uint8_t *kwargs,
                          size_t kwargs_len, uint64_t timeout_ms)
{
    if (!kwargs || kwargs_len == 0) {
        kwargs = &empty_map;
        kwargs_len = 1;
    }
    assert(tether__mp_type_of(kwargs[0]) == TETHER__MP_MAP);
    bool request = kind == TETHER__REQUEST;
    size_t tail = kwargs_len + (request ? tether__mp_uint_size(timeout_ms) : 0);
    int r;
    uint8_t *p = tether__mp_reserve(b, tail, &r);
    if (!p) {
        return r;
    }
    memcpy(p, kwargs, kwargs_len);
    p += kwargs_len;
    if (request) {
        tether__mp_put_uint(p, timeout_ms);
    }
    b->len += tail;
    uint8_t *frame = tether__buf_head(b) + start;
    size_t body = (size_t)(b->data + b->len - frame) - TETHER__FRAME_HEADER_SIZE;
    if (body > UINT32_MAX) {
        return -EMSGSIZE;
    }
    tether__store32(frame, (uint32_t)body);
    return 0;
}

/* A response's frame but for the value's bytes, value_len of them, which go at *ret_p
 * before tether__frame_commit(buf, *ret_body, *ret_p + value_len). NULL and *ret_r
 * on failure. */
static uint8_t *
response_begin(tether__buf *buf, uint64_t id, bool is_error, size_t value_len, uint64_t *ret_body,
               int *ret_r)
{
    if (value_len > UINT32_MAX) {
        *ret_r = -EMSGSIZE;
        return NULL;
    }
    *ret_body = 3 + tether__mp_uint_size(id) + (uint64_t)value_len;
    uint8_t *p = tether__frame_begin(buf, *ret_body, ret_r);
    if (!p) {
        return NULL;
    }
    *p++ = 0x94;
    *p++ = TETHER__RESPONSE;
    p = tether__mp_put_uint(p, id);
    *p++ = is_error ? 0xc3 : 0xc2;
    return p;
}

int
tether__encode_response(tether__buf *buf, uint64_t id, bool is_error, const uint8_t *value,
                        size_t value_len)
{
    if (!value || value_len == 0) {
        value = &nil_value;
        value_len = 1;
    }
    uint64_t body;
    int r;
    uint8_t *p = response_begin(buf, id, is_error, value_len, &body, &r);
    if (!p) {
        return r;
    }
    memcpy(p, value, value_len);
    return tether__frame_commit(buf, body, p + value_len);
}

int
tether__encode_response_room(tether__buf *buf, uint64_t id, size_t value_len, size_t *ret_at)
{
    uint64_t body;
    int r;
    uint8_t *p = response_begin(buf, id, false, value_len, &body, &r);
    if (!p) {
        return r;
    }
    *ret_at = (size_t)(p - tether__buf_head(buf));
    return tether__frame_commit(buf, body, p + value_len);
}

/* A string written for a person (an error, a log record, a refusal's reason): its
 * length once repaired (util/utf8.h), so that bytes that are not UTF-8 cost the reader a
 * replacement character rather than the frame. */
static int
text_len(const char *s, size_t *ret_len)
{
    size_t n = s ? strlen(s) : 0;
    if (n && !tether__utf8_valid((const uint8_t *)s, n)) {
        n = tether__utf8_repaired_size((const uint8_t *)s, n);
    }
    if (n > UINT32_MAX) {
        return -EMSGSIZE;
    }
    *ret_len = n;
    return 0;
}

/* Write text of text_len() bytes: as it is when valid, else repaired. */
static uint8_t *
put_text(uint8_t *p, const char *s, size_t len)
{
    size_t raw = s ? strlen(s) : 0;
    p = tether__mp_put_str_head(p, len);
    if (raw == 0) {
        return p; /* NULL is written as "" */
    }
    if (raw == len) { /* text_len() found it valid (a repair only ever adds bytes) */
        memcpy(p, s, raw);
        return p + raw;
    }
    return tether__utf8_put_repaired(p, (const uint8_t *)s, raw);
}

int
tether__encode_error_response(tether__buf *buf, uint64_t id, const char *type, const char *message,
                              const char *traceback)
{
    size_t tl, ml, bl;
    if (text_len(type, &tl) < 0 || text_len(message, &ml) < 0 || text_len(traceback, &bl) < 0) {
        return -EMSGSIZE;
    }
    uint64_t payload = 1 + tether__mp_str_head_size(tl) + (uint64_t)tl +
                       tether__mp_str_head_size(ml) + (uint64_t)ml + tether__mp_str_head_size(bl) +
                       (uint64_t)bl;
    if (payload > UINT32_MAX) {
        return -EMSGSIZE;
    }
    uint64_t body =
        3 + tether__mp_uint_size(id) + tether__mp_ext_head_size((size_t)payload) + payload;
    int r;
    uint8_t *p = tether__frame_begin(buf, body, &r);
    if (!p) {
        return r;
    }
    *p++ = 0x94;
    *p++ = TETHER__RESPONSE;
    p = tether__mp_put_uint(p, id);
    *p++ = 0xc3;
    p = tether__mp_put_ext_head(p, TETHER__EXT_ERROR, (size_t)payload);
    *p++ = 0x93;
    p = put_text(p, type, tl);
    p = put_text(p, message, ml);
    p = put_text(p, traceback, bl);
    return tether__frame_commit(buf, body, p);
}

/* [kind, uint] frames: CANCEL, PING, PONG. */
static int
encode_kind_uint(tether__buf *b, int kind, uint64_t v)
{
    uint64_t body = 2 + tether__mp_uint_size(v);
    int r;
    uint8_t *p = tether__frame_begin(b, body, &r);
    if (!p) {
        return r;
    }
    *p++ = 0x92;
    *p++ = (uint8_t)kind;
    p = tether__mp_put_uint(p, v);
    return tether__frame_commit(b, body, p);
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

static int
encode_uint_list(tether__buf *buf, int kind, const uint64_t *ids, size_t n)
{
    if (n > UINT32_MAX) {
        return -EMSGSIZE;
    }
    uint64_t body = 2 + tether__mp_container_head_size((uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        body += tether__mp_uint_size(ids[i]);
    }
    int r;
    uint8_t *p = tether__frame_begin(buf, body, &r);
    if (!p) {
        return r;
    }
    *p++ = 0x92;
    *p++ = (uint8_t)kind;
    p = tether__mp_put_array_head(p, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        p = tether__mp_put_uint(p, ids[i]);
    }
    return tether__frame_commit(buf, body, p);
}

int
tether__encode_progress(tether__buf *buf, const uint64_t *ids, size_t n)
{
    return encode_uint_list(buf, TETHER__PROGRESS, ids, n);
}

int
tether__encode_buffers_done(tether__buf *buf, const uint64_t *inodes, size_t n)
{
    return encode_uint_list(buf, TETHER__BUFFERS_DONE, inodes, n);
}

int
tether__encode_release(tether__buf *buf, const uint64_t *object_ids, const uint64_t *counts,
                       size_t n)
{
    if (n > UINT32_MAX) {
        return -EMSGSIZE;
    }
    uint64_t body = 2 + tether__mp_container_head_size((uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        body += 1 + tether__mp_uint_size(object_ids[i]) + tether__mp_uint_size(counts[i]);
    }
    int r;
    uint8_t *p = tether__frame_begin(buf, body, &r);
    if (!p) {
        return r;
    }
    *p++ = 0x92;
    *p++ = TETHER__RELEASE;
    p = tether__mp_put_array_head(p, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        *p++ = 0x92;
        p = tether__mp_put_uint(p, object_ids[i]);
        p = tether__mp_put_uint(p, counts[i]);
    }
    return tether__frame_commit(buf, body, p);
}

/* [kind, (uint,)? str, str] frames: REFUSE, CONTROL, LOG. */
static int
encode_two_str(tether__buf *b, int kind, int64_t level, const char *s1, const char *s2)
{
    size_t l1, l2;
    if (text_len(s1, &l1) < 0 || text_len(s2, &l2) < 0) {
        return -EMSGSIZE;
    }
    bool with_level = level >= 0;
    uint64_t body = 2 + (with_level ? tether__mp_int_size(level) : 0) +
                    tether__mp_str_head_size(l1) + (uint64_t)l1 + tether__mp_str_head_size(l2) +
                    (uint64_t)l2;
    int r;
    uint8_t *p = tether__frame_begin(b, body, &r);
    if (!p) {
        return r;
    }
    *p++ = with_level ? 0x94 : 0x93;
    *p++ = (uint8_t)kind;
    if (with_level) {
        p = tether__mp_put_int(p, level);
    }
    p = put_text(p, s1, l1);
    p = put_text(p, s2, l2);
    return tether__frame_commit(b, body, p);
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
