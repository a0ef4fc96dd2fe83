/*
 * validate: one pass over untrusted bytes (see validate.h for what is checked and why).
 *
 * The walk is iterative, with an explicit nesting stack on the C stack: no recursion, no
 * allocation. Each item's head is read through the byte-type table (tether__mp_item_at(),
 * which already checks that a head and a str/bin/ext payload fit). What follows decides
 * where the walk goes next:
 * - an array or map opens a level of nesting whose items are counted down (a map's count
 *   is of pairs, so it opens 2 * count items);
 * - a REF or ERROR ext opens a level too, whose bound is the end of the payload: its one
 *   value must end exactly there;
 * - anything else is complete at once.
 * A complete item closes every level it completes, and the walk ends when the outermost
 * value is complete.
 */
#include "codec/validate.h"

#include <errno.h>

#include "codec/ext.h"
#include "codec/msgpack.h"

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
    size_t refs;
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

/* A REF or ERROR ext's payload is one nested value bounded by the payload's end. */
static inline int
open_ext_payload(struct walk *w, const tether__mp_item *it)
{
    w->refs += it->ext_type == TETHER__EXT_REF;
    if (w->depth >= w->max_depth) {
        return -EMSGSIZE;
    }
    w->stack[w->depth++] = (struct level){w->left, w->lim};
    w->lim = it->next;
    w->left = 1;
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
        (it->ext_type == TETHER__EXT_REF || it->ext_type == TETHER__EXT_ERROR)) {
        return open_ext_payload(w, it);
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
        }
        w->left = up->left;
    }
    return 0;
}

int
tether__msgpack_check_refs(const uint8_t *p, size_t len, uint32_t max_depth, size_t *ret_size,
                           size_t *ret_refs)
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
    w.refs = 0;
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
    *ret_refs = w.refs;
    return 0;
}

int
tether__msgpack_check(const uint8_t *p, size_t len, uint32_t max_depth, size_t *ret_size)
{
    size_t nrefs;
    return tether__msgpack_check_refs(p, len, max_depth, ret_size, &nrefs);
}
