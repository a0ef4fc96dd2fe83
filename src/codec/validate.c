/*
 * validate: one pass over untrusted bytes (see validate.h for what is checked and why).
 *
 * The walk is iterative, with an explicit nesting stack on the C stack: no recursion, no
 * allocation. Each item's head is read through the byte-type table (tether__mp_item_at(),
 * which already checks that a head and a str/bin/ext payload fit). What follows decides
 * where the walk goes next:
 * - an array or map opens a level of nesting whose items are counted down (a map's count
 *   is of pairs, so it opens 2 * count items);
 * - a REF or ERROR ext (and a BUFFER ext, on a connection of version 2) opens one level
 *   for the array that is its payload (the ext and its array are one level together),
 *   after the array's leading elements were checked for their types; the level is bounded
 *   by the payload's end, where the array must end; a BUFFER may not stand inside another
 *   ext's payload;
 * - a string must be valid UTF-8; anything else is complete at once.
 * A complete item closes every level it completes, and the walk ends when the outermost
 * value is complete.
 */
#include "codec/validate.h"

#include <errno.h>

#include "codec/ext.h"
#include "codec/msgpack.h"
#include "util/utf8.h"

/* One entry per open level: the parent's items left, and for an ext payload the bound to
 * restore when it closes (NULL for arrays and maps). */
struct level {
    size_t left;
    const uint8_t *outer;
};

struct walk {
    const uint8_t *q, *lim; /* the next item; the end of the innermost payload or input */
    size_t left;            /* items left in the innermost level */
    uint32_t depth, max_depth;
    bool buffer_exts; /* BUFFER exts are tether's (protocol version 2), else opaque */
    uint32_t in_ext;  /* open ext payloads, where a BUFFER may not stand */
    tether__ext_counts counts;
    struct level stack[TETHER__MAX_DEPTH_CAP];
};

/* An array's or map's items follow: open a level for them unless there are none. Returns
 * 1 when a level was opened, 0 when the container is complete already. */
static inline int
open_container(struct walk *w, uint64_t items)
{
    if (w->depth >= w->max_depth) {
        return -EMSGSIZE;
    }
    if (items > (uint64_t)(w->lim - w->q)) {
        return -EPROTO;
    }
    if (items == 0) {
        return 0;
    }
    w->stack[w->depth++] = (struct level){w->left, NULL};
    w->left = (size_t)items;
    return 1;
}

/*
 * The leading elements of a REF's payload [owner 0|1, object_id > 0, type_name], an
 * ERROR's [type, message, traceback or nil] or a BUFFER's [size]; elements after them are
 * walked like any others. Returns the array's element count, or -EPROTO.
 */
static int64_t
check_ext_prefix(const tether__mp_item *ext)
{
    tether__mp_reader r = {ext->data, ext->next};
    uint32_t n;
    tether__span s;
    if (tether__mp_read_array(&r, &n) < 0) {
        return -EPROTO;
    }
    if (ext->ext_type == TETHER__EXT_BUFFER) {
        uint64_t size;
        return n >= 1 && tether__mp_read_uint(&r, &size) == 0 ? (int64_t)n : -EPROTO;
    }
    if (n < 3) {
        return -EPROTO;
    }
    if (ext->ext_type == TETHER__EXT_REF) {
        int64_t owner;
        uint64_t id;
        if (tether__mp_read_int(&r, &owner) < 0 || (owner != 0 && owner != 1) ||
            tether__mp_read_uint(&r, &id) < 0 || id == 0 || tether__mp_read_str(&r, &s) < 0) {
            return -EPROTO;
        }
    } else if (tether__mp_read_str(&r, &s) < 0 || tether__mp_read_str(&r, &s) < 0 ||
               (tether__mp_read_nil(&r) < 0 && tether__mp_read_str(&r, &s) < 0)) {
        return -EPROTO;
    }
    return n;
}

/* A REF's or ERROR's payload: its array is the level, bounded by the payload's end. */
static inline int
open_ext_payload(struct walk *w, const tether__mp_item *it)
{
    int64_t n = check_ext_prefix(it);
    if (n < 0) {
        return -EPROTO;
    }
    if (it->ext_type == TETHER__EXT_BUFFER && w->in_ext > 0) {
        return -EPROTO; /* its descriptor is bound where values are scanned, not in here */
    }
    w->counts.refs += it->ext_type == TETHER__EXT_REF;
    w->counts.buffers += it->ext_type == TETHER__EXT_BUFFER;
    if (w->depth >= w->max_depth) {
        return -EMSGSIZE;
    }
    tether__mp_item array;
    if (tether__mp_item_at(it->data, it->next, &array) < 0) {
        return -EPROTO;
    }
    w->stack[w->depth++] = (struct level){w->left, w->lim};
    w->in_ext++;
    w->lim = it->next;
    w->q = array.data;
    w->left = (size_t)n;
    return 1;
}

/* Step past the head just read: open a level, or complete the item (returns 0). */
static inline int
enter_item(struct walk *w, const tether__mp_item *it)
{
    w->q = it->data;
    if (tether__mp_is_container(it->type)) {
        return open_container(w, it->type == TETHER__MP_MAP ? 2 * it->n : it->n);
    }
    if (it->type == TETHER__MP_EXT &&
        (it->ext_type == TETHER__EXT_REF || it->ext_type == TETHER__EXT_ERROR ||
         (it->ext_type == TETHER__EXT_BUFFER && w->buffer_exts))) {
        return open_ext_payload(w, it);
    }
    if (it->type == TETHER__MP_STR && !tether__utf8_valid(it->data, (size_t)it->n)) {
        return -EPROTO;
    }
    w->q = it->next;
    return 0;
}

/* One item is complete: close every level it completes. Returns 1 when the outermost
 * value is complete, 0 to read on, -EPROTO for bytes after an ext payload's value. */
static inline int
close_levels(struct walk *w)
{
    while (--w->left == 0) {
        if (w->depth == 0) {
            return 1;
        }
        const struct level *up = &w->stack[--w->depth];
        if (up->outer) {
            if (w->q != w->lim) {
                return -EPROTO;
            }
            w->lim = up->outer;
            w->in_ext--;
        }
        w->left = up->left;
    }
    return 0;
}

int
tether__msgpack_check_exts(const uint8_t *p, size_t len, uint32_t max_depth, bool buffer_exts,
                           size_t *ret_size, tether__ext_counts *ret_counts)
{
    if (!p || len == 0) {
        return -EPROTO;
    }
    struct walk w;
    w.q = p;
    w.lim = p + len;
    w.left = 1;
    w.depth = 0;
    w.max_depth = max_depth > TETHER__MAX_DEPTH_CAP ? TETHER__MAX_DEPTH_CAP : max_depth;
    w.buffer_exts = buffer_exts;
    w.in_ext = 0;
    w.counts = (tether__ext_counts){0, 0};
    for (;;) {
        tether__mp_item it;
        if (w.q >= w.lim || tether__mp_item_at(w.q, w.lim, &it) < 0) {
            return -EPROTO;
        }
        int r = enter_item(&w, &it);
        if (r > 0) {
            continue; /* a level was opened: its first item is next */
        }
        if (r == 0) {
            r = close_levels(&w);
        }
        if (r < 0) {
            return r;
        }
        if (r > 0) {
            break;
        }
    }
    *ret_size = (size_t)(w.q - p);
    *ret_counts = w.counts;
    return 0;
}

int
tether__msgpack_check_refs(const uint8_t *p, size_t len, uint32_t max_depth, size_t *ret_size,
                           size_t *ret_refs)
{
    tether__ext_counts counts;
    int r = tether__msgpack_check_exts(p, len, max_depth, false, ret_size, &counts);
    *ret_refs = counts.refs;
    return r;
}

int
tether__msgpack_check(const uint8_t *p, size_t len, uint32_t max_depth, size_t *ret_size)
{
    size_t nrefs;
    return tether__msgpack_check_refs(p, len, max_depth, ret_size, &nrefs);
}
