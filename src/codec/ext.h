/*
 * ext: the two msgpack ext types tether defines inside values (docs/protocol.md, "Values").
 *
 * - REF (type 1) names an object by reference. Its payload is the msgpack array
 *   [owner:int, object_id:uint, type_name:str, ...]: owner 0 means the sender's own object,
 *   1 an object of the receiver's that goes back to it; object_id is never 0.
 * - ERROR (type 2) is a raised exception: [type:str, message:str, traceback:str|nil, ...].
 * - BUFFER (type 3, protocol version 2) is bytes in shared memory: [size:uint, ...]; the
 *   descriptor of the memory travels beside the frame (conn/link.h).
 *
 * Later versions may append elements to either payload; readers ignore them. The
 * validator (codec/validate.h) already checks that each payload is one well-formed value;
 * the readers here check the shape inside it. Every other ext type is opaque to tether
 * (BUFFER's too, on a connection of version 1).
 */
#ifndef TETHER_EXT_H
#define TETHER_EXT_H

#include <stddef.h>
#include <stdint.h>

#include "codec/msgpack.h"
#include "util/buf.h"

/* Ext type codes carried inside values. Values are part of the protocol. */
enum tether__ext {
    TETHER__EXT_REF = 1,   /* payload: msgpack [owner:int, object_id:uint, type_name:str] */
    TETHER__EXT_ERROR = 2, /* payload: msgpack [type:str, message:str, traceback:str|nil] */
    /* Protocol version 2: bytes in shared memory, whose descriptor travels beside the
     * frame (docs/protocol.md, "Buffers"). payload: msgpack [size:uint, ...] */
    TETHER__EXT_BUFFER = 3,
};

/*
 * Append a REF ext for (owner, id, type): [owner, id, type] as the payload. Returns 0,
 * -ENOMEM, -EMSGSIZE (the type name or payload over 4 GiB - 1); out is unchanged on failure.
 */
int tether__ext_ref_write(tether__buf *out, int64_t owner, uint64_t id, const char *type,
                          size_t type_len);

/* One REF ext found in checked msgpack bytes. */
typedef struct tether__ref {
    size_t off;      /* of the ext's first byte */
    size_t owner_at; /* of the last byte of the owner's integer */
    int64_t owner;
    uint64_t id;
    tether__span type;
} tether__ref;

/*
 * Call fn for each REF ext in the checked msgpack bytes [p, p+len), in order (REFs inside
 * another ext's payload are not visited). Stops at the first nonzero return of fn and
 * returns it; returns -EPROTO for a REF whose payload is not [owner:0|1, id:uint > 0,
 * type:str, ...], else 0.
 */
int tether__refs_scan(const uint8_t *p, size_t len, int (*fn)(void *arg, const tether__ref *ref),
                      void *arg);

/* Append a BUFFER ext for a buffer of size bytes: [size] as the payload, or [size,
 * format, shape] for an array (format not 0: one struct character; shape[0..ndim)).
 * Returns 0 or -ENOMEM; out is unchanged on failure. */
int tether__ext_buffer_write(tether__buf *out, uint64_t size, char format, const uint64_t *shape,
                             uint32_t ndim);

/* The BUFFER exts of checked msgpack bytes (their payloads checked, see validate.h) in
 * order: calls fn(arg, offset of the ext's first byte, size) for each; stops at the first
 * nonzero return of fn and returns it, else 0. */
int tether__buffers_scan(const uint8_t *p, size_t len,
                         int (*fn)(void *arg, size_t off, uint64_t size), void *arg);

/* The fields of an ERROR ext; traceback.ptr is NULL when the traceback is nil. */
typedef struct tether__error_ext {
    tether__span type, message, traceback;
} tether__error_ext;

/*
 * Read the ERROR ext that starts at p (one value; bytes after it are not looked at).
 * Spans point into [p, p+len). Returns 0 or -EPROTO (not an ERROR ext, or its payload is
 * not [str, str, str|nil, ...]).
 */
int tether__error_ext_read(const uint8_t *p, size_t len, tether__error_ext *ret);

#endif
