/*
 * validate: checking untrusted msgpack bytes before anything trusts them.
 *
 * A peer's bytes are read twice: once here, then by whatever takes them apart (the frame
 * decoder's readers, the value readers, a binding's own decoder behind
 * tether_value_get_msgpack()). The readers are bounds-checked, but a decoder that
 * allocates for a declared count before it reads the elements (as msgpack-c's does)
 * would let a 6-byte "array of 4 billion" cost gigabytes. The check
 * therefore compares every declared str/bin/ext length and every array/map count with the
 * bytes left before anything is allocated (an element takes at least one byte, so a count
 * larger than the bytes left is already a lie), and bounds nesting. Bytes that pass are
 * safe to unpack: memory use is bounded by a small multiple of their size.
 *
 * Every string must be valid UTF-8 (util/utf8.h). tether's own ext types (codec/ext.h)
 * are checked inside: the payload of a REF or ERROR ext (and of a BUFFER ext, where the
 * connection's protocol version gives it a meaning) must be exactly one array that fills
 * it, whose leading elements have the types docs/protocol.md gives (a REF's owner 0 or 1
 * and a nonzero id among them); the ext and its array are one level of nesting. Other
 * ext types are opaque bytes.
 */
#ifndef TETHER_VALIDATE_H
#define TETHER_VALIDATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The checker keeps its nesting stack on the C stack: a larger max_depth acts as this. */
#define TETHER__MAX_DEPTH_CAP 512u

/*
 * Check that [p, p+len) starts with one complete msgpack value within limits: every
 * declared length fits in the bytes left, nesting <= max_depth, no reserved byte 0xc1,
 * strings valid UTF-8, REF and ERROR payloads well formed. Each array and map is one
 * level of nesting, and so is a REF or ERROR ext with the array inside it. On success stores
 * the value's encoded size in *ret_size (may be < len).
 * Returns 0, -EPROTO (malformed or truncated), -EMSGSIZE (depth over limit).
 */
int tether__msgpack_check(const uint8_t *p, size_t len, uint32_t max_depth, size_t *ret_size);
/* Same, also counting the REF exts in the value into *ret_refs. */
int tether__msgpack_check_refs(const uint8_t *p, size_t len, uint32_t max_depth, size_t *ret_size,
                               size_t *ret_refs);

/* tether's exts found in a value. */
typedef struct tether__ext_counts {
    size_t refs, buffers;
} tether__ext_counts;

/* Same, counting REF and BUFFER exts. With buffer_exts false (a connection of protocol
 * version 1), BUFFER's ext type is opaque bytes and never counted; with it true, a BUFFER
 * payload must be an array that fills it, led by a uint (the buffer's size). */
int tether__msgpack_check_exts(const uint8_t *p, size_t len, uint32_t max_depth, bool buffer_exts,
                               size_t *ret_size, tether__ext_counts *ret_counts);

#endif
