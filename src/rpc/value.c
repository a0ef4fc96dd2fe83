/*
 * value: immutable, reference-counted msgpack values and the format engine that builds
 * and reads them.
 *
 * A value is one allocation: the header followed by the encoded bytes of exactly one
 * msgpack item (or the header alone, its bytes in the input buffer of the big frame they
 * came in, taken from the link instead of copied). Its bytes have always been checked
 * (tether__msgpack_check) before they got here, either by the frame decoder or by
 * tether_value_new_msgpack(), or they were written by the format engine, so every reader below may
 * trust the declared lengths; the readers still never step past the end. One thing is made lazily
 * and freed with the value: NUL-terminated copies of strings read with "s", kept in a side arena
 * (chunks that never move, so handed-out pointers stay valid) and indexed by the
 * string's offset, so reading the same string again returns the same copy instead of
 * growing.
 *
 * The format engine walks a format string (the table in tether.h) and a va_list, in one
 * of four modes: BUILD appends msgpack to a buffer; CHECK compares the value with the
 * format without touching any output; STORE writes the outputs; UNDO releases the "v"
 * outputs of a STORE pass that ran out of memory. Reading is CHECK then STORE, so a
 * mismatch leaves every output untouched and never leaks a reference. The format is
 * validated once up front (balanced brackets, even map item counts, known characters),
 * so the walk itself only fails on a mismatch or on memory.
 */
#define _POSIX_C_SOURCE 200809L

#include "rpc/value.h"

#include <assert.h>
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/ext.h"
#include "codec/frame.h"
#include "codec/msgpack.h"
#include "codec/validate.h"
#include "rpc/buffer.h"
#include "rpc/object.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/utf8.h"

struct str_copy {
    size_t off;      /* offset of the string's bytes in the value */
    const char *str; /* NUL-terminated copy in the arena */
};

struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    char mem[];
};

struct tether_value {
    atomic_size_t refs;
    size_t size;
    struct arena_chunk *arena; /* "s" copies */
    struct str_copy *copies;   /* sorted by off */
    size_t ncopies, capcopies;
    /* Objects named by REF exts, in byte order: objs[i] at offset offs[i] (one block). */
    tether_object **objs;
    size_t *offs;
    size_t nobjs;
    /* Buffers named by BUFFER exts, in byte order, likewise (one block). */
    tether_buffer **bufs;
    size_t *buf_offs;
    size_t nbufs;
    /* Whether the value fits in a frame's arguments or result (nesting <= 63), found
     * once: SENDABLE_UNKNOWN until a check or its origin tells. */
    atomic_uchar sendable;
    /* The bytes: inline after the header, or in block (a frame's input buffer that the
     * value took instead of copying it; freed with the value). */
    uint8_t *data;
    void *block;
    size_t block_cap;
    uint8_t inline_data[];
};

enum { SENDABLE_UNKNOWN = 0, SENDABLE_YES = 1, SENDABLE_NO = 2 };

/* Deepest nesting a value sent inside a frame may have: the frame's array is a level. */
#define SENDABLE_DEPTH (TETHER__DEFAULT_MAX_DEPTH - 1)

#define VALUE_HEADER offsetof(struct tether_value, inline_data)
#define ARENA_MAX_CHUNK (64u * 1024u)

/* ---- values -------------------------------------------------------------------- */

static void
value_init(tether_value *v, size_t size)
{
    atomic_init(&v->refs, 1);
    atomic_init(&v->sendable, SENDABLE_UNKNOWN);
    v->size = size;
    v->arena = NULL;
    v->copies = NULL;
    v->ncopies = 0;
    v->capcopies = 0;
    v->objs = NULL;
    v->offs = NULL;
    v->nobjs = 0;
    v->bufs = NULL;
    v->buf_offs = NULL;
    v->nbufs = 0;
    v->data = v->inline_data;
    v->block = NULL;
}

int
tether__value_adopt(tether_value *v, tether__objvec *vec)
{
    if (vec->n == 0) {
        tether__objvec_clear(vec);
        return 0;
    }
    tether_object **objs = tether__malloc(vec->n * (sizeof(*objs) + sizeof(size_t)));
    if (!objs) {
        tether__objvec_clear(vec);
        return -ENOMEM;
    }
    size_t *offs = (size_t *)(void *)(objs + vec->n);
    for (size_t i = 0; i < vec->n; i++) {
        objs[i] = vec->v[i].obj; /* the vector's reference moves to the value */
        offs[i] = vec->v[i].off;
    }
    v->objs = objs;
    v->offs = offs;
    v->nobjs = vec->n;
    tether__free(vec->v);
    *vec = TETHER__OBJVEC_INIT;
    return 0;
}

int
tether__value_adopt_buffers(tether_value *v, tether__bufvec *vec)
{
    if (vec->n == 0) {
        tether__bufvec_clear(vec);
        return 0;
    }
    tether_buffer **bufs = tether__malloc(vec->n * (sizeof(*bufs) + sizeof(size_t)));
    if (!bufs) {
        tether__bufvec_clear(vec);
        return -ENOMEM;
    }
    size_t *offs = (size_t *)(void *)(bufs + vec->n);
    for (size_t i = 0; i < vec->n; i++) {
        bufs[i] = vec->v[i].buf; /* the vector's reference moves to the value */
        offs[i] = vec->v[i].off;
    }
    v->bufs = bufs;
    v->buf_offs = offs;
    v->nbufs = vec->n;
    tether__free(vec->v);
    *vec = TETHER__BUFVEC_INIT;
    return 0;
}

bool
tether__value_has_buffers(const tether_value *v)
{
    return v && v->nbufs > 0;
}

tether_buffer *const *
tether__value_buffers(const tether_value *v, size_t *ret_count)
{
    *ret_count = v->nbufs;
    return v->bufs;
}

int
tether_value_get_buffers(const tether_value *value, tether_buffer *const **ret_buffers,
                         size_t *ret_count)
{
    if (!value || !ret_buffers || !ret_count) {
        return -EINVAL;
    }
    *ret_buffers = tether__value_buffers(value, ret_count);
    return 0;
}

tether_object *const *
tether__value_objects(const tether_value *v, size_t *ret_count)
{
    *ret_count = v->nobjs;
    return v->objs;
}

int
tether_value_get_objects(const tether_value *value, tether_object *const **ret_objects,
                         size_t *ret_count)
{
    if (!value || !ret_objects || !ret_count) {
        return -EINVAL;
    }
    *ret_objects = tether__value_objects(value, ret_count);
    return 0;
}

/* Copy the objects of v lying in [from, from + len) into vec, at offsets moved by
 * delta (where the copied bytes start in the destination, minus from). */
static int
objects_copy_range(const tether_value *v, size_t from, size_t len, size_t delta_base,
                   tether__objvec *vec)
{
    for (size_t i = 0; i < v->nobjs; i++) {
        if (v->offs[i] >= from && v->offs[i] < from + len) {
            int r = tether__objvec_push(vec, v->offs[i] - from + delta_base, v->objs[i]);
            if (r < 0) {
                return r;
            }
        }
    }
    return 0;
}

/* The same for buffers. */
static int
buffers_copy_range(const tether_value *v, size_t from, size_t len, size_t delta_base,
                   tether__bufvec *vec)
{
    for (size_t i = 0; i < v->nbufs; i++) {
        if (v->buf_offs[i] >= from && v->buf_offs[i] < from + len) {
            int r = tether__bufvec_push(vec, v->buf_offs[i] - from + delta_base, v->bufs[i]);
            if (r < 0) {
                return r;
            }
        }
    }
    return 0;
}

int
tether__value_new_copy(const uint8_t *p, size_t len, tether_value **ret)
{
    if (len > SIZE_MAX - VALUE_HEADER) {
        return -ENOMEM;
    }
    tether_value *v = tether__malloc(VALUE_HEADER + len);
    if (!v) {
        return -ENOMEM;
    }
    value_init(v, len);
    if (len) {
        memcpy(v->data, p, len);
    }
    *ret = v;
    return 0;
}

int
tether__value_new_in_block(void *block, size_t cap, const uint8_t *p, size_t len,
                           tether_value **ret)
{
    tether_value *v = tether__malloc(VALUE_HEADER);
    if (!v) {
        return -ENOMEM;
    }
    value_init(v, len);
    v->data = (uint8_t *)p;
    v->block = block;
    v->block_cap = cap;
    *ret = v;
    return 0;
}

int
tether_value_newv(tether_value **ret, const char *format, va_list ap)
{
    if (!ret) {
        return -EINVAL;
    }
    /* Build straight after room for the header, then adopt the buffer as the value. */
    tether__buf b = TETHER__BUF_INIT;
    int r = tether__buf_reserve(&b, VALUE_HEADER + 16);
    if (r < 0) {
        return r;
    }
    b.len = VALUE_HEADER;
    va_list aq;
    va_copy(aq, ap);
    tether__objvec objs = TETHER__OBJVEC_INIT;
    tether__bufvec bufs = TETHER__BUFVEC_INIT;
    r = tether__format_build(&b, format, aq, false, &objs, &bufs, 0);
    va_end(aq);
    if (r < 0) {
        tether__buf_done(&b);
        return r;
    }
    uint8_t *mem = b.data;
    if (b.cap - b.len > 64) {
        uint8_t *shrunk = tether__realloc(mem, b.len);
        if (shrunk) {
            mem = shrunk;
        }
    }
    tether_value *v = (tether_value *)(void *)mem;
    value_init(v, b.len - VALUE_HEADER);
    /* The build's offsets count from where it started, which is where data begins. */
    r = tether__value_adopt(v, &objs);
    int rb = tether__value_adopt_buffers(v, &bufs);
    if (r < 0 || rb < 0) {
        tether_value_unref(v);
        return r < 0 ? r : rb;
    }
    *ret = v;
    return 0;
}

int
tether_value_new(tether_value **ret, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    int r = tether_value_newv(ret, format, ap);
    va_end(ap);
    return r;
}

int
tether_value_new_msgpack(const void *data, size_t size, tether_value **ret)
{
    if (!ret || (!data && size)) {
        return -EINVAL;
    }
    return tether_value_new_msgpack_objects(data, size, NULL, 0, ret);
}

typedef struct match_arg {
    tether_object *const *objects;
    size_t count, k;
    tether__objvec *vec;
} match_arg;

/* The k-th REF must name the k-th object, as its owner would encode it. */
static int
match_ref(void *argp, const tether__ref *ref)
{
    match_arg *a = argp;
    if (a->k >= a->count) {
        return -EINVAL;
    }
    tether_object *obj = a->objects[a->k++];
    if (!obj || ref->id != obj->id || ref->owner != (obj->remote ? 1 : 0)) {
        return -EINVAL;
    }
    return a->vec ? tether__objvec_push(a->vec, ref->off, obj) : 0;
}

/* The k-th BUFFER must name a buffer of the size it gives. */
typedef struct match_buffer_arg {
    tether_buffer *const *buffers;
    size_t count, k;
    tether__bufvec *vec;
} match_buffer_arg;

static int
match_buffer(void *argp, size_t off, uint64_t size)
{
    match_buffer_arg *a = argp;
    if (a->k >= a->count) {
        return -EINVAL;
    }
    tether_buffer *buf = a->buffers[a->k++];
    if (!buf || size != tether_buffer_get_size(buf)) {
        return -EINVAL;
    }
    return a->vec ? tether__bufvec_push(a->vec, off, buf) : 0;
}

int
tether__msgpack_refs_check(const uint8_t *p, size_t len, uint32_t max_depth,
                           tether_object *const *objects, size_t count, tether__objvec *vec,
                           tether_buffer *const *buffers, size_t nbuffers, tether__bufvec *bufvec)
{
    size_t used;
    tether__ext_counts exts;
    int r = tether__msgpack_check_exts(p, len, max_depth, true, &used, &exts);
    if (r < 0 || used != len) {
        return r == -EMSGSIZE ? r : -EPROTO;
    }
    if (exts.refs != count || exts.buffers != nbuffers) {
        return -EINVAL;
    }
    match_arg a = {objects, count, 0, vec};
    r = count ? tether__refs_scan(p, len, match_ref, &a) : 0;
    match_buffer_arg b = {buffers, nbuffers, 0, bufvec};
    return r == 0 && nbuffers ? tether__buffers_scan(p, len, match_buffer, &b) : r;
}

int
tether__msgpack_objects_check(const uint8_t *p, size_t len, uint32_t max_depth,
                              tether_object *const *objects, size_t count, tether__objvec *vec)
{
    /* A BUFFER ext names a buffer that bytes alone cannot bring along. */
    return tether__msgpack_refs_check(p, len, max_depth, objects, count, vec, NULL, 0, NULL);
}

int
tether_value_new_msgpack_objects(const void *data, size_t size, tether_object *const *objects,
                                 size_t count, tether_value **ret)
{
    return tether_value_new_msgpack_buffers(data, size, objects, count, NULL, 0, ret);
}

int
tether_value_new_msgpack_buffers(const void *data, size_t size, tether_object *const *objects,
                                 size_t count, tether_buffer *const *buffers, size_t nbuffers,
                                 tether_value **ret)
{
    if (!ret || (!data && size) || (!objects && count) || (!buffers && nbuffers)) {
        return -EINVAL;
    }
    /* Checked against the tighter limit of a frame first: a value that passes is known
     * to be sendable and never walked again; one that fails gets the value limit. */
    tether__objvec vec = TETHER__OBJVEC_INIT;
    tether__bufvec bufvec = TETHER__BUFVEC_INIT;
    int sendable = SENDABLE_YES;
    int r = tether__msgpack_refs_check(data, size, SENDABLE_DEPTH, objects, count, &vec, buffers,
                                       nbuffers, &bufvec);
    if (r == -EMSGSIZE) {
        sendable = SENDABLE_NO;
        tether__objvec_clear(&vec);
        tether__bufvec_clear(&bufvec);
        r = tether__msgpack_refs_check(data, size, TETHER__DEFAULT_MAX_DEPTH, objects, count, &vec,
                                       buffers, nbuffers, &bufvec);
    }
    if (r == 0) {
        r = tether__value_new_copy(data, size, ret);
    }
    if (r < 0) {
        tether__objvec_clear(&vec);
        tether__bufvec_clear(&bufvec);
        return r == -EMSGSIZE ? -EPROTO : r;
    }
    atomic_store_explicit(&(*ret)->sendable, sendable, memory_order_relaxed);
    r = tether__value_adopt(*ret, &vec);
    r = r < 0 ? r : tether__value_adopt_buffers(*ret, &bufvec);
    if (r < 0) {
        tether__bufvec_clear(&bufvec);
        *ret = tether_value_unref(*ret);
    }
    return r;
}

bool
tether__value_sendable(tether_value *v)
{
    int known = atomic_load_explicit(&v->sendable, memory_order_relaxed);
    if (known == SENDABLE_UNKNOWN) {
        size_t used;
        known = tether__msgpack_check(v->data, v->size, SENDABLE_DEPTH, &used) == 0
                    ? SENDABLE_YES
                    : SENDABLE_NO;
        atomic_store_explicit(&v->sendable, (unsigned char)known, memory_order_relaxed);
    }
    return known == SENDABLE_YES;
}

void
tether__value_mark_sendable(tether_value *v)
{
    atomic_store_explicit(&v->sendable, SENDABLE_YES, memory_order_relaxed);
}

tether_value *
tether_value_ref(tether_value *value)
{
    if (value) {
        atomic_fetch_add_explicit(&value->refs, 1, memory_order_relaxed);
    }
    return value;
}

tether_value *
tether_value_unref(tether_value *value)
{
    if (!value) {
        return NULL;
    }
    if (atomic_fetch_sub_explicit(&value->refs, 1, memory_order_release) != 1) {
        return NULL;
    }
    atomic_thread_fence(memory_order_acquire);
    for (struct arena_chunk *c = value->arena, *next; c; c = next) {
        next = c->next;
        tether__free(c);
    }
    tether__free(value->copies);
    for (size_t i = 0; i < value->nobjs; i++) {
        tether_object_unref(value->objs[i]);
    }
    tether__free(value->objs);
    for (size_t i = 0; i < value->nbufs; i++) {
        tether_buffer_unref(value->bufs[i]);
    }
    tether__free(value->bufs);
    if (value->block) {
        tether__buf_keep(value->block, value->block_cap); /* for the next big frame */
    }
    tether__free(value);
    return NULL;
}

int
tether_value_get_msgpack(const tether_value *value, const void **ret_data, size_t *ret_size)
{
    if (!value) {
        return -EINVAL;
    }
    if (ret_data) {
        *ret_data = value->data;
    }
    if (ret_size) {
        *ret_size = value->size;
    }
    return 0;
}

/* A NUL-terminated copy of the string at [s, s+len) inside v, made once per string. */
static int
value_cstr(tether_value *v, const uint8_t *s, size_t len, const char **ret)
{
    size_t off = (size_t)(s - v->data);
    size_t lo = 0, hi = v->ncopies;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v->copies[mid].off < off) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo < v->ncopies && v->copies[lo].off == off) {
        *ret = v->copies[lo].str;
        return 0;
    }
    if (v->ncopies == v->capcopies) {
        size_t cap = v->capcopies ? 2 * v->capcopies : 8;
        struct str_copy *c = tether__realloc(v->copies, cap * sizeof(*c));
        if (!c) {
            return -ENOMEM;
        }
        v->copies = c;
        v->capcopies = cap;
    }
    struct arena_chunk *chunk = v->arena;
    size_t need = len + 1; /* len <= v->size, so no overflow */
    if (!chunk || chunk->cap - chunk->used < need) {
        size_t cap = chunk ? 2 * chunk->cap : 256;
        if (cap > ARENA_MAX_CHUNK) {
            cap = ARENA_MAX_CHUNK;
        }
        if (cap < need) {
            cap = need;
        }
        if (cap > SIZE_MAX - sizeof(*chunk)) {
            return -ENOMEM;
        }
        struct arena_chunk *c = tether__malloc(sizeof(*c) + cap);
        if (!c) {
            return -ENOMEM;
        }
        c->next = chunk;
        c->used = 0;
        c->cap = cap;
        v->arena = chunk = c;
    }
    char *dst = chunk->mem + chunk->used;
    chunk->used += need;
    if (len) {
        memcpy(dst, s, len);
    }
    dst[len] = '\0';
    memmove(&v->copies[lo + 1], &v->copies[lo], (v->ncopies - lo) * sizeof(v->copies[0]));
    v->copies[lo] = (struct str_copy){off, dst};
    v->ncopies++;
    *ret = dst;
    return 0;
}

/* ---- introspection -------------------------------------------------------------- */

static int value_new_slice(const tether_value *v, tether__span span, tether_value **ret);
static tether_buffer *buffer_at(const tether_value *v, size_t off);

int
tether_value_get_type(const tether_value *value)
{
    if (!value) {
        return TETHER_EINVAL;
    }
    tether__mp_reader r = {value->data, value->data + value->size};
    tether__mp_head h;
    if (tether__mp_read_head(&r, &h) < 0) {
        return TETHER_EPROTO; /* never: the bytes were checked */
    }
    switch (h.type) {
    case TETHER__MP_NIL:
        return TETHER_TYPE_NIL;
    case TETHER__MP_BOOL:
        return TETHER_TYPE_BOOL;
    case TETHER__MP_UINT:
    case TETHER__MP_INT:
        return TETHER_TYPE_INT;
    case TETHER__MP_FLOAT32:
    case TETHER__MP_FLOAT64:
        return TETHER_TYPE_FLOAT;
    case TETHER__MP_STR:
        return TETHER_TYPE_STR;
    case TETHER__MP_BIN:
        return TETHER_TYPE_BIN;
    case TETHER__MP_ARRAY:
        return TETHER_TYPE_ARRAY;
    case TETHER__MP_MAP:
        return TETHER_TYPE_MAP;
    default:
        return h.ext_type == TETHER__EXT_REF                             ? TETHER_TYPE_OBJECT
               : h.ext_type == TETHER__EXT_ERROR                         ? TETHER_TYPE_ERROR
               : h.ext_type == TETHER__EXT_BUFFER && buffer_at(value, 0) ? TETHER_TYPE_BUFFER
                                                                         : TETHER_TYPE_EXT;
    }
}

int
tether_value_get_count(const tether_value *value, size_t *ret_count)
{
    if (!value || !ret_count) {
        return TETHER_EINVAL;
    }
    tether__mp_reader r = {value->data, value->data + value->size};
    tether__mp_head h;
    if (tether__mp_read_head(&r, &h) < 0) {
        return TETHER_EPROTO;
    }
    switch (h.type) {
    case TETHER__MP_ARRAY:
    case TETHER__MP_MAP:
        *ret_count = h.count;
        return 0;
    case TETHER__MP_STR:
    case TETHER__MP_BIN:
        *ret_count = h.data.len;
        return 0;
    default:
        if (h.type == TETHER__MP_EXT && h.ext_type == TETHER__EXT_BUFFER && buffer_at(value, 0)) {
            *ret_count = tether_buffer_get_size(buffer_at(value, 0));
            return 0;
        }
        return TETHER_EINVAL;
    }
}

int
tether_value_get_item(const tether_value *value, size_t index, tether_value **ret_item)
{
    if (!ret_item) {
        return TETHER_EINVAL;
    }
    *ret_item = NULL;
    if (!value) {
        return TETHER_EINVAL;
    }
    tether__mp_reader r = {value->data, value->data + value->size};
    tether__mp_head h;
    if (tether__mp_read_head(&r, &h) < 0) {
        return TETHER_EPROTO;
    }
    if (h.type != TETHER__MP_ARRAY && h.type != TETHER__MP_MAP) {
        return TETHER_EINVAL;
    }
    size_t items = h.type == TETHER__MP_MAP ? 2 * (size_t)h.count : h.count;
    if (index >= items) {
        return TETHER_ENOENT;
    }
    for (size_t i = 0; i < index; i++) {
        if (tether__mp_skip(&r, NULL) < 0) {
            return TETHER_EPROTO;
        }
    }
    tether__span span;
    if (tether__mp_skip(&r, &span) < 0) {
        return TETHER_EPROTO;
    }
    return value_new_slice(value, span, ret_item);
}

/* ---- text rendering ------------------------------------------------------------ */

static int
put(tether__buf *b, const char *s)
{
    return tether__buf_append(b, s, strlen(s));
}

static int putf(tether__buf *b, const char *format, ...) TETHER_PRINTF(2, 3);

static int
putf(tether__buf *b, const char *format, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, format);
    int n = vsnprintf(tmp, sizeof(tmp), format, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        return -EINVAL;
    }
    return tether__buf_append(b, tmp, (size_t)n);
}

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static size_t
utf8_sequence(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    size_t k;
    uint32_t cp, min;
    if (c >= 0xc2 && c <= 0xdf) {
        k = 1;
        cp = c & 0x1fu;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        k = 2;
        cp = c & 0x0fu;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 3;
        cp = c & 0x07u;
        min = 0x10000;
    } else {
        return 0;
    }
    if (n <= k) {
        return 0;
    }
    for (size_t j = 1; j <= k; j++) {
        if ((s[j] & 0xc0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (s[j] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return k + 1;
}

/* Text for people: valid UTF-8 as is, controls and stray bytes escaped. */
static int
put_text(tether__buf *b, const uint8_t *s, size_t n, bool quoted)
{
    int r = 0;
    size_t i = 0;
    while (i < n && r == 0) {
        uint8_t c = s[i];
        size_t run = i;
        /* Copy runs of plain characters at once. */
        while (run < n && s[run] >= 0x20 && s[run] < 0x7f && s[run] != '"' && s[run] != '\\') {
            run++;
        }
        if (run > i) {
            r = tether__buf_append(b, s + i, run - i);
            i = run;
            continue;
        }
        if (c >= 0x80) {
            size_t k = utf8_sequence(s + i, n - i);
            if (k) {
                r = tether__buf_append(b, s + i, k);
                i += k;
            } else {
                r = putf(b, "\\x%02x", c);
                i++;
            }
            continue;
        }
        switch (c) {
        case '"':
            r = quoted ? put(b, "\\\"") : put(b, "\"");
            break;
        case '\\':
            r = quoted ? put(b, "\\\\") : put(b, "\\");
            break;
        case '\n':
            r = put(b, "\\n");
            break;
        case '\r':
            r = put(b, "\\r");
            break;
        case '\t':
            r = put(b, "\\t");
            break;
        default:
            r = putf(b, "\\u%04x", c);
            break;
        }
        i++;
    }
    return r;
}

static int
put_bytes(tether__buf *b, const uint8_t *s, size_t n)
{
    int r = put(b, "b\"");
    for (size_t i = 0; i < n && r == 0; i++) {
        uint8_t c = s[i];
        if (c == '"' || c == '\\') {
            char esc[3] = {'\\', (char)c, '\0'};
            r = put(b, esc);
        } else if (c == '\n') {
            r = put(b, "\\n");
        } else if (c == '\r') {
            r = put(b, "\\r");
        } else if (c == '\t') {
            r = put(b, "\\t");
        } else if (c >= 0x20 && c < 0x7f) {
            r = tether__buf_append(b, &c, 1);
        } else {
            r = putf(b, "\\x%02x", c);
        }
    }
    return r ? r : put(b, "\"");
}

/* The shortest text that reads back as the same number, always with a '.' or an 'e'. */
static int
put_double(tether__buf *b, double d, bool single)
{
    if (isnan(d)) {
        return put(b, "NaN");
    }
    if (isinf(d)) {
        return put(b, d < 0 ? "-Infinity" : "Infinity");
    }
    char tmp[40];
    for (int prec = single ? 6 : 15; prec <= (single ? 9 : 17); prec++) {
        snprintf(tmp, sizeof(tmp), "%.*g", prec, d);
        double back = strtod(tmp, NULL);
        /* A float32 compares as float, once back is known to fit in one. */
        if (single ? back >= -FLT_MAX && back <= FLT_MAX && (float)back == (float)d : back == d) {
            break;
        }
    }
    bool has_point = false;
    for (char *p = tmp; *p; p++) {
        if (*p == ',') {
            *p = '.'; /* a locale's decimal comma */
        }
        if (*p == '.' || *p == 'e') {
            has_point = true;
        }
    }
    int r = put(b, tmp);
    return r == 0 && !has_point ? put(b, ".0") : r;
}

/* A REF or ERROR ext payload in its short form; 1 if the payload is not as expected. */
static int
put_ext(tether__buf *b, const tether__mp_head *h)
{
    tether__mp_reader p = {h->data.ptr, h->data.ptr + h->data.len};
    uint32_t n;
    if (h->ext_type == TETHER__EXT_REF) {
        int64_t owner;
        uint64_t id;
        if (tether__mp_read_array(&p, &n) < 0 || n < 2 || tether__mp_read_int(&p, &owner) < 0 ||
            tether__mp_read_uint(&p, &id) < 0) {
            return 1;
        }
        return putf(b, "<ref %" PRIu64 ">", id);
    }
    if (h->ext_type == TETHER__EXT_BUFFER) {
        uint64_t size;
        if (tether__mp_read_array(&p, &n) < 0 || n < 1 || tether__mp_read_uint(&p, &size) < 0) {
            return 1;
        }
        return putf(b, "<buffer of %" PRIu64 " bytes>", size);
    }
    if (h->ext_type == TETHER__EXT_ERROR) {
        tether__span type, message;
        if (tether__mp_read_array(&p, &n) < 0 || n < 2 || tether__mp_read_str(&p, &type) < 0 ||
            tether__mp_read_str(&p, &message) < 0) {
            return 1;
        }
        int r = put(b, "<error ");
        if (r == 0) {
            r = put_text(b, type.ptr, type.len, false);
        }
        if (r == 0) {
            r = put(b, ": ");
        }
        if (r == 0) {
            r = put_text(b, message.ptr, message.len, false);
        }
        return r ? r : put(b, ">");
    }
    return 1;
}

static int
render(tether__buf *b, tether__mp_reader *r, unsigned depth)
{
    tether__mp_head h;
    if (depth > TETHER__MAX_DEPTH_CAP || tether__mp_read_head(r, &h) < 0) {
        return -EPROTO;
    }
    switch (h.type) {
    case TETHER__MP_NIL:
        return put(b, "null");
    case TETHER__MP_BOOL:
        return put(b, h.boolean ? "true" : "false");
    case TETHER__MP_UINT:
        return putf(b, "%" PRIu64, h.u);
    case TETHER__MP_INT:
        return putf(b, "%" PRId64, h.i);
    case TETHER__MP_FLOAT32:
    case TETHER__MP_FLOAT64:
        return put_double(b, h.f, h.type == TETHER__MP_FLOAT32);
    case TETHER__MP_STR: {
        int rr = put(b, "\"");
        if (rr == 0) {
            rr = put_text(b, h.data.ptr, h.data.len, true);
        }
        return rr ? rr : put(b, "\"");
    }
    case TETHER__MP_BIN:
        return put_bytes(b, h.data.ptr, h.data.len);
    case TETHER__MP_EXT: {
        int rr = put_ext(b, &h);
        if (rr <= 0) {
            return rr;
        }
        return putf(b, "<ext %d: %zu bytes>", h.ext_type, h.data.len);
    }
    case TETHER__MP_ARRAY:
    case TETHER__MP_MAP: {
        bool map = h.type == TETHER__MP_MAP;
        int rr = put(b, map ? "{" : "[");
        for (uint32_t i = 0; i < h.count && rr == 0; i++) {
            if (i > 0) {
                rr = put(b, ", ");
            }
            if (rr == 0) {
                rr = render(b, r, depth + 1);
            }
            if (map && rr == 0) {
                rr = put(b, ": ");
                if (rr == 0) {
                    rr = render(b, r, depth + 1);
                }
            }
        }
        return rr ? rr : put(b, map ? "}" : "]");
    }
    default:
        return -EPROTO;
    }
}

int
tether_value_to_string(const tether_value *value, char **ret_text)
{
    if (!value || !ret_text) {
        return -EINVAL;
    }
    tether__buf b = TETHER__BUF_INIT;
    tether__mp_reader r = {value->data, value->data + value->size};
    static const char nul = '\0';
    int rr = render(&b, &r, 0);
    if (rr == 0) {
        rr = tether__buf_append(&b, &nul, 1);
    }
    if (rr < 0) {
        tether__buf_done(&b);
        return rr;
    }
    *ret_text = (char *)b.data;
    return 0;
}

/* ---- buffers inline -------------------------------------------------------------- */

int
tether__value_write_inline(const tether_value *v, tether__buf *out)
{
    /* The bytes between buffers as they are; each BUFFER ext as a bin of its bytes. */
    size_t at = 0;
    for (size_t i = 0; i < v->nbufs; i++) {
        tether__mp_item it;
        const uint8_t *ext = v->data + v->buf_offs[i];
        if (tether__mp_item_at(ext, v->data + v->size, &it) < 0) {
            return -EPROTO; /* never: checked bytes */
        }
        const void *data = tether_buffer_get_data(v->bufs[i]);
        int r = tether__mp_raw(out, v->data + at, v->buf_offs[i] - at);
        if (r == 0) {
            r = tether__mp_bin(out, data ? data : "", tether_buffer_get_size(v->bufs[i]));
        }
        if (r < 0) {
            return r;
        }
        at = (size_t)(it.next - v->data);
    }
    return tether__mp_raw(out, v->data + at, v->size - at);
}

/* ---- the format engine --------------------------------------------------------- */

enum walk_mode {
    MODE_BUILD,
    MODE_CHECK,
    MODE_STORE,
    MODE_UNDO
};

struct walk {
    enum walk_mode mode;
    va_list *ap;        /* BUILD, STORE, UNDO */
    tether__buf *out;   /* BUILD */
    tether__objvec *objs; /* BUILD: objects of "o" and "v" items; NULL: none allowed */
    tether__bufvec *bufs; /* BUILD: buffers of "B" and "v" items; NULL: their bytes inline */
    size_t mark;          /* BUILD: where the build started in out, for their offsets */
    tether_value *root; /* reading */
    tether__mp_reader r;
    tether_error *reterr;
    bool args;      /* the root is an argument list */
    size_t nvalues; /* STORE: "v" and "o" outputs made; UNDO: those left to release */
    unsigned depth; /* entries of path in use */
    uint32_t max_depth; /* BUILD: nesting the result may reach (0: the format's own limit) */
    uint32_t path[TETHER__FORMAT_MAX_DEPTH + 2];
};

/*
 * Validate the items of f up to close (']', '}', or '\0' for the whole format): known
 * characters, balanced brackets, an even number of items in each map. Stores the
 * number of items and where the format continues after close.
 */
static int
fmt_scan(const char *f, char close, bool build, unsigned depth, const char **ret_end,
         size_t *ret_count)
{
    size_t n = 0;
    for (;;) {
        char c = *f;
        if (c == close) {
            break;
        }
        switch (c) {
        case 'n':
        case 'b':
        case 'i':
        case 'x':
        case 'u':
        case 'd':
        case 's':
        case 'S':
        case 'y':
        case 'v':
        case 'o':
        case 'B':
            f++;
            break;
        case '*':
            if (build) {
                return -EINVAL;
            }
            f++;
            break;
        case '[':
        case '{': {
            size_t k;
            if (depth >= TETHER__FORMAT_MAX_DEPTH) {
                return -EINVAL;
            }
            int r = fmt_scan(f + 1, c == '[' ? ']' : '}', build, depth + 1, &f, &k);
            if (r < 0) {
                return r;
            }
            if ((c == '{' && k % 2 != 0) || k > UINT32_MAX) {
                return -EINVAL;
            }
            break;
        }
        default: /* unknown, a stray closing bracket, or the end inside brackets */
            return -EINVAL;
        }
        n++;
    }
    *ret_end = close ? f + 1 : f;
    *ret_count = n;
    return 0;
}

static const char *
head_type_name(const tether__mp_head *h)
{
    switch (h->type) {
    case TETHER__MP_NIL:
        return "nil";
    case TETHER__MP_BOOL:
        return "bool";
    case TETHER__MP_UINT:
    case TETHER__MP_INT:
        return "int";
    case TETHER__MP_FLOAT32:
    case TETHER__MP_FLOAT64:
        return "float";
    case TETHER__MP_STR:
        return "str";
    case TETHER__MP_BIN:
        return "bytes";
    case TETHER__MP_ARRAY:
        return "array";
    case TETHER__MP_MAP:
        return "map";
    case TETHER__MP_EXT:
        return h->ext_type == TETHER__EXT_REF      ? "ref"
               : h->ext_type == TETHER__EXT_ERROR  ? "error"
               : h->ext_type == TETHER__EXT_BUFFER ? "buffer"
                                                   : "ext";
    default:
        return "?";
    }
}

/* Put a "TypeError" naming the current position into reterr; returns -EINVAL. */
static int type_error(struct walk *w, const char *format, ...) TETHER_PRINTF(2, 3);

static int
type_error(struct walk *w, const char *format, ...)
{
    if (!w->reterr) {
        return -EINVAL;
    }
    char where[TETHER__FORMAT_MAX_DEPTH * 11 + 16];
    size_t at = 0;
    where[0] = '\0';
    for (unsigned i = 0; i < w->depth; i++) {
        int n =
            snprintf(where + at, sizeof(where) - at, "%s%" PRIu32, i ? "." : "item ", w->path[i]);
        if (n < 0 || (size_t)n >= sizeof(where) - at) {
            break;
        }
        at += (size_t)n;
    }
    char message[256];
    va_list ap;
    va_start(ap, format);
    vsnprintf(message, sizeof(message), format, ap);
    va_end(ap);
    (void)tether_error_set(w->reterr, "TypeError", "%s%s%s", where, at ? ": " : "", message);
    return -EINVAL;
}

static int
mismatch(struct walk *w, const char *expected, const tether__mp_head *h)
{
    return type_error(w, "expected %s, got %s", expected, head_type_name(h));
}

static int walk_item(struct walk *w, const char **fp);

static int
walk_items(struct walk *w, const char **fp, size_t n)
{
    assert(w->depth < sizeof(w->path) / sizeof(w->path[0]));
    w->depth++;
    for (size_t i = 0; i < n; i++) {
        w->path[w->depth - 1] = (uint32_t)(i + 1);
        int r = walk_item(w, fp);
        if (r < 0) {
            return r;
        }
    }
    w->depth--;
    return 0;
}

/* The next output pointer: only STORE and UNDO take them from the va_list. */
#define OUT(w, type) ((w)->mode == MODE_CHECK ? (type)NULL : va_arg(*(w)->ap, type))

/* A string argument: the protocol carries valid UTF-8 only, so other bytes are the
 * caller's mistake (-EINVAL), found here rather than by the peer closing the connection. */
static int
put_string_arg(tether__buf *out, const char *s, size_t n)
{
    if (!tether__utf8_valid((const uint8_t *)s, n)) {
        return -EINVAL;
    }
    return tether__mp_str(out, s, n);
}

static int
build_scalar(struct walk *w, char c)
{
    tether__buf *out = w->out;
    switch (c) {
    case 'n':
        return tether__mp_nil(out);
    case 'b':
        return tether__mp_bool(out, va_arg(*w->ap, int) != 0);
    case 'i':
        return tether__mp_int(out, va_arg(*w->ap, int));
    case 'x':
        return tether__mp_int(out, va_arg(*w->ap, int64_t));
    case 'u':
        return tether__mp_uint(out, va_arg(*w->ap, uint64_t));
    case 'd':
        return tether__mp_double(out, va_arg(*w->ap, double));
    case 's': {
        const char *s = va_arg(*w->ap, const char *);
        return s ? put_string_arg(out, s, strlen(s)) : tether__mp_nil(out);
    }
    case 'S': {
        const char *s = va_arg(*w->ap, const char *);
        size_t n = va_arg(*w->ap, size_t);
        if (!s && n) {
            return -EINVAL;
        }
        return put_string_arg(out, s ? s : "", n);
    }
    case 'y': {
        const void *p = va_arg(*w->ap, const void *);
        size_t n = va_arg(*w->ap, size_t);
        if (!p && n) {
            return -EINVAL;
        }
        return tether__mp_bin(out, p ? p : "", n);
    }
    case 'v': {
        tether_value *v = va_arg(*w->ap, tether_value *);
        if (!v) {
            return tether__mp_nil(out);
        }
        size_t used;
        if (w->max_depth &&
            (w->depth > w->max_depth ||
             tether__msgpack_check(v->data, v->size, w->max_depth - w->depth, &used) < 0)) {
            return -EMSGSIZE;
        }
        if (v->nobjs) {
            int r = w->objs ? objects_copy_range(v, 0, v->size,
                                                 tether__buf_pending(out) - w->mark, w->objs)
                            : -EINVAL;
            if (r < 0) {
                return r;
            }
        }
        if (v->nbufs && !w->bufs) {
            return tether__value_write_inline(v, out);
        }
        if (v->nbufs) {
            int r = buffers_copy_range(v, 0, v->size, tether__buf_pending(out) - w->mark, w->bufs);
            if (r < 0) {
                return r;
            }
        }
        return tether__mp_raw(out, v->data, v->size);
    }
    case 'B': {
        tether_buffer *b = va_arg(*w->ap, tether_buffer *);
        if (!b) {
            return tether__mp_nil(out);
        }
        size_t size = tether_buffer_get_size(b);
        if (!w->bufs) {
            /* For a peer that takes no descriptors: the bytes themselves. */
            const void *data = tether_buffer_get_data(b);
            return tether__mp_bin(out, data ? data : "", size);
        }
        const uint64_t *shape;
        uint32_t ndim;
        char format = tether__buffer_array(b, &shape, &ndim);
        /* An ext whose payload is an array (two levels), holding the shape's (three). */
        if (w->max_depth && w->depth + (format ? 3 : 2) > w->max_depth) {
            return -EMSGSIZE;
        }
        int r = tether__bufvec_push(w->bufs, tether__buf_pending(out) - w->mark, b);
        return r < 0 ? r : tether__ext_buffer_write(out, size, format, shape, ndim);
    }
    case 'o': {
        tether_object *obj = va_arg(*w->ap, tether_object *);
        if (!obj) {
            return tether__mp_nil(out);
        }
        if (!w->objs) {
            return -EINVAL;
        }
        /* The reference is an ext whose payload is an array: two levels. */
        if (w->max_depth && w->depth + 2 > w->max_depth) {
            return -EMSGSIZE;
        }
        int r = tether__objvec_push(w->objs, tether__buf_pending(out) - w->mark, obj);
        return r < 0 ? r : tether__ref_encode(out, obj);
    }
    default:
        return -EINVAL;
    }
}

/* A new value of the bytes span of v, holding the objects that lie in it. */
static int
value_new_slice(const tether_value *v, tether__span span, tether_value **ret)
{
    int r = tether__value_new_copy(span.ptr, span.len, ret);
    if (r < 0 || (v->nobjs == 0 && v->nbufs == 0)) {
        return r;
    }
    size_t from = (size_t)(span.ptr - v->data);
    tether__objvec vec = TETHER__OBJVEC_INIT;
    tether__bufvec bufs = TETHER__BUFVEC_INIT;
    r = objects_copy_range(v, from, span.len, 0, &vec);
    if (r == 0) {
        r = buffers_copy_range(v, from, span.len, 0, &bufs);
    }
    if (r == 0) {
        r = tether__value_adopt(*ret, &vec);
    }
    if (r == 0) {
        r = tether__value_adopt_buffers(*ret, &bufs);
    }
    if (r < 0) {
        tether__objvec_clear(&vec);
        tether__bufvec_clear(&bufs);
        *ret = tether_value_unref(*ret);
    }
    return r;
}

/* The buffer bound to the BUFFER ext at offset off of v, or NULL. */
static tether_buffer *
buffer_at(const tether_value *v, size_t off)
{
    for (size_t i = 0; i < v->nbufs; i++) {
        if (v->buf_offs[i] == off) {
            return v->bufs[i];
        }
    }
    return NULL;
}

/* "B": the buffer bound to the BUFFER ext at offset at, or nil. */
static int
read_buffer(struct walk *w, const tether__mp_head *h, size_t at)
{
    tether_buffer **out = OUT(w, tether_buffer **);
    tether_buffer *buf = NULL;
    if (h->type != TETHER__MP_NIL) {
        if (h->type != TETHER__MP_EXT || h->ext_type != TETHER__EXT_BUFFER ||
            !(buf = buffer_at(w->root, at))) {
            return mismatch(w, "buffer", h);
        }
    }
    if (w->mode == MODE_STORE && out) {
        *out = tether_buffer_ref(buf);
        w->nvalues++;
    } else if (w->mode == MODE_UNDO && out && w->nvalues > 0) {
        *out = tether_buffer_unref(*out);
        w->nvalues--;
    }
    return 0;
}

/* The object bound to the REF ext at offset off of v, or NULL. */
static tether_object *
object_at(const tether_value *v, size_t off)
{
    size_t lo = 0, hi = v->nobjs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v->offs[mid] < off) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo < v->nobjs && v->offs[lo] == off ? v->objs[lo] : NULL;
}

/* "*" skips an item; "v" reads it as a new value holding its objects. */
static int
read_whole_item(struct walk *w, char c)
{
    tether__span span;
    if (tether__mp_skip(&w->r, &span) < 0) {
        return -EPROTO;
    }
    if (c != 'v') {
        return 0;
    }
    tether_value **out = OUT(w, tether_value **);
    if (w->mode == MODE_STORE && out) {
        int r = value_new_slice(w->root, span, out);
        if (r < 0) {
            return r;
        }
        w->nvalues++;
    } else if (w->mode == MODE_UNDO && out && w->nvalues > 0) {
        *out = tether_value_unref(*out);
        w->nvalues--;
    }
    return 0;
}

/* "o": the object bound to the REF ext at offset at, or nil. */
static int
read_object(struct walk *w, const tether__mp_head *h, size_t at)
{
    tether_object **out = OUT(w, tether_object **);
    tether_object *obj = NULL;
    if (h->type != TETHER__MP_NIL) {
        if (h->type != TETHER__MP_EXT || h->ext_type != TETHER__EXT_REF) {
            return mismatch(w, "object", h);
        }
        if (!(obj = object_at(w->root, at))) {
            return type_error(w, "object reference not bound to an object");
        }
    }
    if (w->mode == MODE_STORE && out) {
        *out = tether_object_ref(obj);
        w->nvalues++;
    } else if (w->mode == MODE_UNDO && out && w->nvalues > 0) {
        *out = tether_object_unref(*out);
        w->nvalues--;
    }
    return 0;
}

/* "i" (int) and "x" (int64): a signed integer that fits. */
static int
read_signed(struct walk *w, const tether__mp_head *h, char c)
{
    /* va_arg must name the pointer type actually passed. */
    int *out_int = c == 'i' ? OUT(w, int *) : NULL;
    int64_t *out_int64 = c == 'x' ? OUT(w, int64_t *) : NULL;
    if (h->type != TETHER__MP_UINT && h->type != TETHER__MP_INT) {
        return mismatch(w, "int", h);
    }
    if (w->mode == MODE_CHECK) {
        bool i = c == 'i';
        if (h->type == TETHER__MP_UINT && h->u > (i ? (uint64_t)INT_MAX : (uint64_t)INT64_MAX)) {
            return type_error(w, "integer %" PRIu64 " out of range for %s", h->u,
                              i ? "int" : "int64");
        }
        if (i && h->type == TETHER__MP_INT && h->i < INT_MIN) {
            return type_error(w, "integer %" PRId64 " out of range for int", h->i);
        }
    }
    if (w->mode == MODE_STORE && out_int) {
        *out_int = (int)h->i;
    }
    if (w->mode == MODE_STORE && out_int64) {
        *out_int64 = h->i;
    }
    return 0;
}

/* "u": an integer >= 0. */
static int
read_unsigned(struct walk *w, const tether__mp_head *h)
{
    uint64_t *out = OUT(w, uint64_t *);
    if (h->type == TETHER__MP_INT) {
        return type_error(w, "expected int >= 0, got %" PRId64, h->i);
    }
    if (h->type != TETHER__MP_UINT) {
        return mismatch(w, "int", h);
    }
    if (w->mode == MODE_STORE && out) {
        *out = h->u;
    }
    return 0;
}

/* "d": a float, or an integer converted. */
static int
read_double(struct walk *w, const tether__mp_head *h)
{
    double *out = OUT(w, double *);
    double d;
    if (h->type == TETHER__MP_FLOAT32 || h->type == TETHER__MP_FLOAT64) {
        d = h->f;
    } else if (h->type == TETHER__MP_UINT) {
        d = (double)h->u;
    } else if (h->type == TETHER__MP_INT) {
        d = (double)h->i;
    } else {
        return mismatch(w, "float", h);
    }
    if (w->mode == MODE_STORE && out) {
        *out = d;
    }
    return 0;
}

/* "s": a NUL-terminated copy that lives with the value, or NULL for nil. */
static int
read_cstr(struct walk *w, const tether__mp_head *h)
{
    const char **out = OUT(w, const char **);
    if (h->type != TETHER__MP_STR && h->type != TETHER__MP_NIL) {
        return mismatch(w, "str", h);
    }
    if (w->mode != MODE_STORE || !out) {
        return 0;
    }
    if (h->type == TETHER__MP_NIL) {
        *out = NULL;
        return 0;
    }
    return value_cstr(w->root, h->data.ptr, h->data.len, out);
}

/* "S" (str) and "y" (bin): pointer and length into the value's bytes. */
static int
read_span(struct walk *w, const tether__mp_head *h, char c, size_t at)
{
    const char **out_str = c == 'S' ? OUT(w, const char **) : NULL;
    const void **out_bin = c == 'y' ? OUT(w, const void **) : NULL;
    size_t *out_len = OUT(w, size_t *);
    int want = c == 'S' ? TETHER__MP_STR : TETHER__MP_BIN;
    tether__span bytes = h->data;
    tether_buffer *buf = c == 'y' && h->type == TETHER__MP_EXT && h->ext_type == TETHER__EXT_BUFFER
                             ? buffer_at(w->root, at)
                             : NULL;
    if (buf) {
        bytes = (tether__span){tether_buffer_get_data(buf), tether_buffer_get_size(buf)};
    } else if (h->type != want) {
        return mismatch(w, c == 'S' ? "str" : "bytes", h);
    }
    if (w->mode != MODE_STORE) {
        return 0;
    }
    if (out_str) {
        *out_str = (const char *)bytes.ptr;
    }
    if (out_bin) {
        *out_bin = bytes.ptr;
    }
    if (out_len) {
        *out_len = bytes.len;
    }
    return 0;
}

/* One scalar item of the format: CHECK compares, STORE writes the output, UNDO releases. */
static int
read_scalar(struct walk *w, char c)
{
    if (c == '*' || c == 'v') {
        return read_whole_item(w, c);
    }
    size_t at = (size_t)(w->r.p - w->root->data);
    tether__mp_head h;
    if (tether__mp_read_head(&w->r, &h) < 0) {
        return -EPROTO;
    }
    switch (c) {
    case 'n':
        return h.type == TETHER__MP_NIL ? 0 : mismatch(w, "nil", &h);
    case 'o':
        return read_object(w, &h, at);
    case 'b': {
        bool *out = OUT(w, bool *);
        if (h.type != TETHER__MP_BOOL) {
            return mismatch(w, "bool", &h);
        }
        if (w->mode == MODE_STORE && out) {
            *out = h.boolean;
        }
        return 0;
    }
    case 'i':
    case 'x':
        return read_signed(w, &h, c);
    case 'u':
        return read_unsigned(w, &h);
    case 'd':
        return read_double(w, &h);
    case 's':
        return read_cstr(w, &h);
    case 'S':
    case 'y':
        return read_span(w, &h, c, at);
    case 'B':
        return read_buffer(w, &h, at);
    default:
        return -EINVAL;
    }
}

/* An array or map header read against k format items. */
static int
read_container(struct walk *w, char c, size_t k)
{
    tether__mp_head h;
    if (tether__mp_read_head(&w->r, &h) < 0) {
        return -EPROTO;
    }
    if (c == '[') {
        if (h.type != TETHER__MP_ARRAY) {
            return mismatch(w, "array", &h);
        }
        if (h.count != k) {
            return type_error(w, "expected array of %zu item%s, got %" PRIu32, k, k == 1 ? "" : "s",
                              h.count);
        }
        return 0;
    }
    if (h.type != TETHER__MP_MAP) {
        return mismatch(w, "map", &h);
    }
    if (h.count != k / 2) {
        return type_error(w, "expected map of %zu entr%s, got %" PRIu32, k / 2,
                          k / 2 == 1 ? "y" : "ies", h.count);
    }
    return 0;
}

static int
walk_item(struct walk *w, const char **fp)
{
    const char *f = *fp;
    char c = *f;
    int r;
    if (c == '[' || c == '{') {
        const char *end;
        size_t k;
        r = fmt_scan(f + 1, c == '[' ? ']' : '}', w->mode == MODE_BUILD, 0, &end, &k);
        if (r < 0) {
            return r;
        }
        if (w->mode == MODE_BUILD && w->max_depth && w->depth >= w->max_depth) {
            return -EMSGSIZE;
        }
        if (w->mode == MODE_BUILD) {
            r = c == '[' ? tether__mp_array(w->out, (uint32_t)k)
                         : tether__mp_map(w->out, (uint32_t)(k / 2));
        } else {
            r = read_container(w, c, k);
        }
        if (r < 0) {
            return r;
        }
        f++;
        r = walk_items(w, &f, k);
        if (r < 0) {
            return r;
        }
        assert(f + 1 == end);
        *fp = end;
        return 0;
    }
    *fp = f + 1;
    return w->mode == MODE_BUILD ? build_scalar(w, c) : read_scalar(w, c);
}

int
tether__format_build(tether__buf *out, const char *fmt, va_list ap, bool as_array,
                     tether__objvec *objs, tether__bufvec *bufs, uint32_t max_depth)
{
    const char *f = fmt ? fmt : "";
    const char *end;
    size_t k;
    if (!out || fmt_scan(f, '\0', true, 0, &end, &k) < 0 || k > UINT32_MAX) {
        return -EINVAL;
    }
    if (!as_array) {
        if (!fmt) {
            return tether__mp_nil(out);
        }
        if (k != 1) {
            return -EINVAL;
        }
    }
    size_t mark = tether__buf_pending(out);
    size_t nobjs = objs ? objs->n : 0;
    size_t nbufs = bufs ? bufs->n : 0;
    va_list aq;
    va_copy(aq, ap);
    struct walk w = {.mode = MODE_BUILD,
                     .ap = &aq,
                     .out = out,
                     .objs = objs,
                     .bufs = bufs,
                     .mark = mark,
                     .max_depth = max_depth};
    int r;
    if (as_array) {
        r = tether__mp_array(out, (uint32_t)k);
        if (r == 0) {
            r = walk_items(&w, &f, k);
        }
    } else {
        r = walk_item(&w, &f);
    }
    va_end(aq);
    if (r < 0) {
        out->len = out->off + mark;
        while (objs && objs->n > nobjs) {
            tether_object_unref(objs->v[--objs->n].obj);
        }
        while (bufs && bufs->n > nbufs) {
            tether_buffer_unref(bufs->v[--bufs->n].buf);
        }
    }
    return r;
}

/* The root of a read: one item, or an argument list (an array of k items). */
static int
walk_root(struct walk *w, const char *f, size_t k)
{
    w->r = (tether__mp_reader){w->root->data, w->root->data + w->root->size};
    w->depth = 0;
    if (!w->args) {
        return walk_item(w, &f);
    }
    tether__mp_head h;
    if (tether__mp_read_head(&w->r, &h) < 0) {
        return -EPROTO;
    }
    if (h.type != TETHER__MP_ARRAY) {
        return type_error(w, "arguments must be an array, got %s", head_type_name(&h));
    }
    if (h.count != k) {
        return type_error(w, "takes %zu argument%s, got %" PRIu32, k, k == 1 ? "" : "s", h.count);
    }
    return walk_items(w, &f, k);
}

static int
read_value(tether_value *v, tether_error *reterr, const char *fmt, va_list ap, bool args)
{
    const char *f = fmt ? fmt : "";
    const char *end;
    size_t k;
    if (!v) {
        return -EINVAL;
    }
    if (fmt_scan(f, '\0', false, 0, &end, &k) < 0 || (!args && k != 1)) {
        if (reterr) {
            (void)tether_error_set(reterr, TETHER__ERR_GENERIC, "invalid format \"%s\"", f);
        }
        return -EINVAL;
    }
    struct walk w = {.mode = MODE_CHECK, .root = v, .reterr = reterr, .args = args};
    int r = walk_root(&w, f, k);
    if (r < 0) {
        return r;
    }
    va_list store_ap;
    va_copy(store_ap, ap);
    w.mode = MODE_STORE;
    w.ap = &store_ap;
    r = walk_root(&w, f, k);
    va_end(store_ap);
    if (r < 0 && w.nvalues > 0) {
        /* Out of memory half way: release the "v" outputs already made. */
        va_list undo_ap;
        va_copy(undo_ap, ap);
        w.mode = MODE_UNDO;
        w.ap = &undo_ap;
        (void)walk_root(&w, f, k);
        va_end(undo_ap);
    }
    return r;
}

int
tether_value_readv(tether_value *value, tether_error *reterr, const char *format, va_list ap)
{
    return read_value(value, reterr, format, ap, false);
}

int
tether_value_read(tether_value *value, tether_error *reterr, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    int r = read_value(value, reterr, format, ap, false);
    va_end(ap);
    return r;
}

int
tether__value_read_args(tether_value *v, tether_error *reterr, const char *fmt, va_list ap)
{
    return read_value(v, reterr, fmt, ap, true);
}

int
tether__value_error_fields(tether_value *v, char **type, char **message, char **traceback)
{
    if (!v) {
        return -EINVAL;
    }
    tether__error_ext e;
    if (tether__error_ext_read(v->data, v->size, &e) < 0) {
        return -EINVAL;
    }
    bool have_tb = e.traceback.ptr != NULL;
    char *t = tether__strndup((const char *)e.type.ptr, e.type.len);
    char *m = tether__strndup((const char *)e.message.ptr, e.message.len);
    char *b = have_tb ? tether__strndup((const char *)e.traceback.ptr, e.traceback.len) : NULL;
    if (!t || !m || (have_tb && !b)) {
        tether__free(t);
        tether__free(m);
        tether__free(b);
        return -ENOMEM;
    }
    if (type) {
        *type = t;
    } else {
        tether__free(t);
    }
    if (message) {
        *message = m;
    } else {
        tether__free(m);
    }
    if (traceback) {
        *traceback = b;
    } else {
        tether__free(b);
    }
    return 0;
}
