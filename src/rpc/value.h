/*
 * value: tether_value internals and the format engine, for the connection code.
 *
 * A tether_value owns one copy of the encoded msgpack bytes of one item (or the buffer
 * of the frame it came in, for big ones); what else it
 * needs (NUL-terminated copies of strings read with "s", whether it fits in a frame) is
 * made lazily and freed with the value. Values are immutable once made, so a reference
 * may be handed to any thread; the lazy parts are made by the one thread reading it
 * (tether.h: "one thread at a time per value").
 */
#ifndef TETHER_VALUE_H
#define TETHER_VALUE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tether.h"
#include "util/buf.h"

struct tether__objvec; /* object.h */
struct tether__bufvec; /* buffer.h */

/* Deepest nesting of brackets a format string may have. */
#define TETHER__FORMAT_MAX_DEPTH 64

/*
 * Make a value holding a copy of [p, p+len), which must be one complete msgpack item
 * already checked with tether__msgpack_check() (for example a span of a decoded frame):
 * it is not checked again. Returns 0 or -ENOMEM.
 */
int tether__value_new_copy(const uint8_t *p, size_t len, tether_value **ret);
/* The same without the copy: [p, p+len) lies in block (cap bytes, from
 * tether__link_take_input), which the value gives back (tether__buf_keep) when it goes.
 * Returns 0, or -ENOMEM (block is still the caller's). */
int tether__value_new_in_block(void *block, size_t cap, const uint8_t *p, size_t len,
                               tether_value **ret);

/*
 * Append to out what fmt describes (see the table in tether.h), taking the arguments
 * from ap. as_array false: fmt describes exactly one item (NULL: nil). as_array true: an
 * array of all the items of fmt (NULL or "": an empty array). The objects of "o" items
 * and of "v" values holding objects go into objs, at offsets counted from where the
 * build starts in out; objs NULL refuses them. The buffers of "B" items and of "v" values
 * go into bufs likewise, as BUFFER exts; bufs NULL writes their bytes inline (a bin), for
 * a peer that takes no descriptors. max_depth bounds the nesting of what is
 * built as tether__msgpack_check counts it (0: only the format's own limit), so that
 * bytes built for a frame need no check afterwards. Returns 0, -EINVAL (bad format or
 * argument; out and objs are restored), -ENOMEM, -EMSGSIZE (a str/bin over 4 GiB,
 * nesting over max_depth).
 */
int tether__format_build(tether__buf *out, const char *fmt, va_list ap, bool as_array,
                         struct tether__objvec *objs, struct tether__bufvec *bufs,
                         uint32_t max_depth);
/*
 * Check msgpack bytes that may hold objects by reference: exactly one value within
 * max_depth, whose REF exts name objects[0..count) in order; with vec, the objects go
 * into it at their offsets (new references). Returns 0, -EPROTO (malformed, or not one
 * value), -EMSGSIZE (nesting over max_depth), -EINVAL (the references and objects
 * disagree, or a BUFFER ext: bytes cannot bring a buffer along), -ENOMEM.
 */
int tether__msgpack_objects_check(const uint8_t *p, size_t len, uint32_t max_depth,
                                  tether_object *const *objects, size_t count,
                                  struct tether__objvec *vec);
/* The same where BUFFER exts name buffers[0..nbuffers) in order, each of the size its
 * ext gives; with bufvec, the buffers go into it at their offsets (new references). */
int tether__msgpack_refs_check(const uint8_t *p, size_t len, uint32_t max_depth,
                               tether_object *const *objects, size_t count,
                               struct tether__objvec *vec, tether_buffer *const *buffers,
                               size_t nbuffers, struct tether__bufvec *bufvec);
/* Whether v may be sent as a frame's arguments or result (nesting at most one less than
 * a frame's): known from where it came, or found by one walk, then remembered. */
bool tether__value_sendable(tether_value *v);
/* v came out of a checked frame, so it is sendable (a received value forwarded as is). */
void tether__value_mark_sendable(tether_value *v);

/* Give v the objects of vec (whose references it takes; vec is emptied either way).
 * Returns 0 or -ENOMEM (the objects are released then). */
int tether__value_adopt(tether_value *v, struct tether__objvec *vec);

/* The objects v holds, in byte order (borrowed). */
tether_object *const *tether__value_objects(const tether_value *v, size_t *ret_count);

/* Whether v (may be NULL) holds buffers: the send paths ask before anything else. */
bool tether__value_has_buffers(const tether_value *v);
/* Give v the buffers of vec, as tether__value_adopt does objects. */
int tether__value_adopt_buffers(tether_value *v, struct tether__bufvec *vec);
/* The buffers v holds, in byte order (borrowed). */
tether_buffer *const *tether__value_buffers(const tether_value *v, size_t *ret_count);
/* Append v's bytes to out with each of its buffers as a bin of its bytes: v for a peer
 * that takes no descriptors. Returns 0 or -ENOMEM, -EMSGSIZE. */
int tether__value_write_inline(const tether_value *v, tether__buf *out);

/*
 * Read an argument array: fmt lists one item per element (as if wrapped in "[...]";
 * NULL or "" means none). A count mismatch gives "takes 2 arguments, got 3". Returns 0
 * or -EINVAL with a "TypeError" in reterr (may be NULL), -ENOMEM.
 */
int tether__value_read_args(tether_value *v, tether_error *reterr, const char *fmt, va_list ap);

/*
 * If v is an ERROR ext ([type, message, traceback]), store newly allocated copies of its
 * strings (traceback NULL when nil); any ret pointer may be NULL. Returns 0, -EINVAL (not
 * an ERROR ext, or a malformed one), -ENOMEM (nothing is stored then).
 */
int tether__value_error_fields(tether_value *v, char **type, char **message, char **traceback);

#endif
