/*
 * frame: tether's messages on the stream, protocol version 1 (docs/protocol.md is the
 * spec).
 *
 * A frame is a 4-byte big-endian body length followed by the body, one msgpack array
 * whose first element is the message kind; the kind fixes the elements after it (enum
 * tether__kind). tether__frame_decode() turns a body into a tether__frame record, and the
 * tether__encode_* functions turn fields into whole frames. Neither does I/O, takes a
 * lock or allocates (encoders grow the caller's tether__buf, once), so the codec can be
 * fuzzed on its own (fuzz/fuzz-frame.c).
 *
 * Decoding never trusts a declared length: the body is validated first
 * (codec/validate.h), so a body that passes tether__frame_decode() is safe to hand to
 * msgpack_unpack_next(): its memory use is bounded by a small multiple of its size.
 * Decoded spans point into the caller's body buffer; they live as long as it does.
 *
 * The HELLO and WELCOME maps inside the first two frames are in codec/handshake.h.
 */
#ifndef TETHER_FRAME_H
#define TETHER_FRAME_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec/msgpack.h"
#include "util/buf.h"

/* The highest protocol version this code knows: 2 adds buffers (BUFFER exts, descriptors
 * beside frames). What a build offers is tether__protocol_version() (rpc/endpoint.h). */
#define TETHER__PROTOCOL_VERSION 2
#define TETHER__PROTOCOL_MIN_VERSION 1

/* Bytes of the length prefix in front of every frame body. */
#define TETHER__FRAME_HEADER_SIZE 4

/* Message kinds: element 0 of every frame body. Values are part of the protocol. */
enum tether__kind {
    TETHER__HELLO = 1,     /* [1, {hello map}] client -> host, first frame */
    TETHER__WELCOME = 2,   /* [2, {welcome map}] host -> client, answers hello */
    TETHER__REFUSE = 3,    /* [3, code:str, message:str] host -> client, then close */
    TETHER__REQUEST = 4,   /* [4, id, chain, target, method:str, args:[], kwargs:{}, timeout_ms] */
    TETHER__NOTIFY = 5,    /* [5, chain, target, method:str, args:[], kwargs:{}] */
    TETHER__RESPONSE = 6,  /* [6, id, is_error:bool, value]; value is an ERROR ext if is_error */
    TETHER__CANCEL = 7,    /* [7, id] */
    TETHER__RELEASE = 8,   /* [8, [[object_id, count], ...]] */
    TETHER__PING = 9,      /* [9, nonce] */
    TETHER__PONG = 10,     /* [10, nonce] */
    TETHER__PROGRESS = 11, /* [11, [id, ...]] ids of requests still running at the sender */
    TETHER__CONTROL = 12,  /* [12, action:str, reason:str] "reset" | "disconnect" */
    TETHER__LOG = 13,      /* [13, level:uint, logger:str, message:str] */
    /* [14, [inode, ...]] version 2: buffers the sender received and no longer maps */
    TETHER__BUFFERS_DONE = 14,
};

/* Limits applied while decoding. A zero field means the protocol default below. */
typedef struct tether__wire_limits {
    uint32_t max_frame_size; /* bytes of one body */
    uint32_t max_depth;      /* nesting of arrays/maps/ext payloads */
    bool buffer_exts;        /* BUFFER exts have their meaning (version 2): counted */
} tether__wire_limits;

#define TETHER__DEFAULT_MAX_FRAME_SIZE (16u * 1024u * 1024u)
#define TETHER__DEFAULT_MAX_DEPTH 64u

/*
 * One decoded frame. Which fields are set depends on kind (see enum tether__kind); the
 * rest are zero. Raw spans hold complete, validated msgpack values (args is an array,
 * kwargs a map, value any value, map/list the whole element); str spans hold the string
 * bytes only, not NUL-terminated.
 */
typedef struct tether__frame {
    int kind;
    uint64_t id;         /* REQUEST, RESPONSE, CANCEL; nonce for PING/PONG */
    uint64_t chain;      /* REQUEST, NOTIFY */
    uint64_t target;     /* REQUEST, NOTIFY: 0 = service table, else an object id */
    uint64_t timeout_ms; /* REQUEST: caller's silence bound, 0 = none */
    uint64_t level;      /* LOG */
    bool is_error;       /* RESPONSE */
    tether__span method; /* str: REQUEST, NOTIFY method; REFUSE code; CONTROL action; LOG logger */
    tether__span text;   /* str: REFUSE message; CONTROL reason; LOG message */
    tether__span args;   /* raw: REQUEST/NOTIFY args array */
    tether__span kwargs; /* raw: REQUEST/NOTIFY kwargs map */
    tether__span value;  /* raw: RESPONSE value; HELLO/WELCOME map; RELEASE/PROGRESS/
                          * BUFFERS_DONE list */
    size_t refs;         /* REF exts anywhere in the frame: 0 lets receivers skip a scan */
    size_t buffers;      /* BUFFER exts (limits->buffer_exts): descriptors the frame takes */
} tether__frame;

/*
 * Decode one frame body (without its length prefix). The whole body must be exactly one
 * array; unknown trailing elements of a known kind are ignored (forward compatibility).
 * limits may be NULL (defaults). A REQUEST with id 0 is malformed; BUFFERS_DONE is a kind
 * of version 2 (limits->buffer_exts), unknown below. RELEASE, PROGRESS and BUFFERS_DONE
 * lists are validated ([[uint, uint, ...], ...] and [uint, ...]), so their consumers may
 * read them with the tether__mp_read_* functions without further checks; a RESPONSE with
 * is_error carries a well-formed ERROR ext (codec/ext.h).
 * Returns 0, -EPROTO (malformed, wrong type in a field, unknown kind), -EMSGSIZE (body
 * over max_frame_size, nesting too deep); *ret is all zero on failure.
 */
int tether__frame_decode(const uint8_t *body, size_t len, const tether__wire_limits *limits,
                         tether__frame *ret);

/* Read the big-endian length prefix at p (TETHER__FRAME_HEADER_SIZE bytes). */
static inline uint32_t
tether__frame_length(const uint8_t *p)
{
    return tether__load32(p);
}

/*
 * Encoders append one complete frame (length prefix included) to buf. Raw arguments
 * (args, kwargs, value) must be complete msgpack values; NULL/0 raw args encode as an
 * empty array, kwargs as an empty map, value as nil. Strings are (ptr, len); NULL
 * NUL-terminated strings encode as "". Each encoder reserves the exact frame size once.
 * Return 0, -ENOMEM, -EMSGSIZE (a string or the body over 4 GiB - 1), -EINVAL (PING/PONG
 * kind, negative log level); buf is unchanged on failure.
 */
int tether__encode_request(tether__buf *buf, uint64_t id, uint64_t chain, uint64_t target,
                           const char *method, size_t method_len, const uint8_t *args,
                           size_t args_len, const uint8_t *kwargs, size_t kwargs_len,
                           uint64_t timeout_ms);
int tether__encode_notify(tether__buf *buf, uint64_t chain, uint64_t target, const char *method,
                          size_t method_len, const uint8_t *args, size_t args_len,
                          const uint8_t *kwargs, size_t kwargs_len);
/*
 * A REQUEST or NOTIFY whose args the caller writes in place, so that they are built once,
 * straight into the frame. tether__encode_call_open appends a length prefix to be filled
 * in and every field before args, and stores where the frame starts (an offset from
 * b->off, which must not move until the close); the caller then appends exactly one
 * msgpack array; tether__encode_call_close appends kwargs (a raw map, NULL: empty) and,
 * for a REQUEST, timeout_ms, then writes the length. After a failure of either, or of
 * the caller's args, truncate with b->len = b->off + start. Same returns as above.
 */
int tether__encode_call_open(tether__buf *buf, int kind, uint64_t id, uint64_t chain,
                             uint64_t target, const char *method, size_t method_len,
                             size_t *ret_start);
int tether__encode_call_close(tether__buf *buf, size_t start, int kind, const uint8_t *kwargs,
                              size_t kwargs_len, uint64_t timeout_ms);
int tether__encode_response(tether__buf *buf, uint64_t id, bool is_error, const uint8_t *value,
                            size_t value_len);
/* The same with value_len bytes of room for the value, left unwritten at *ret_at (from
 * the buffer's head) for the sender to fill or to send from elsewhere (conn/link.h). */
int tether__encode_response_room(tether__buf *buf, uint64_t id, size_t value_len, size_t *ret_at);
/* RESPONSE with is_error and an ERROR ext built from the three strings (NULL = ""). */
int tether__encode_error_response(tether__buf *buf, uint64_t id, const char *type,
                                  const char *message, const char *traceback);
int tether__encode_cancel(tether__buf *buf, uint64_t id);
int tether__encode_ping(tether__buf *buf, int kind, uint64_t nonce); /* PING or PONG */
int tether__encode_progress(tether__buf *buf, const uint64_t *ids, size_t n);
/* BUFFERS_DONE: the same list of uints, of the buffers' inode numbers. */
int tether__encode_buffers_done(tether__buf *buf, const uint64_t *inodes, size_t n);
int tether__encode_release(tether__buf *buf, const uint64_t *object_ids, const uint64_t *counts,
                           size_t n);
int tether__encode_control(tether__buf *buf, const char *action, const char *reason);
int tether__encode_refuse(tether__buf *buf, const char *code, const char *message);
int tether__encode_log(tether__buf *buf, int level, const char *logger, const char *message);

/*
 * For the encoders of each kind (here and in handshake.c): reserve a whole frame of body
 * bytes, write its length prefix and return where the body goes, or NULL with *r set
 * (-EMSGSIZE over 4 GiB - 1, -ENOMEM). tether__frame_commit() takes the end of what was
 * put, which must be exactly body bytes, and commits the frame.
 */
static inline uint8_t *
tether__frame_begin(tether__buf *b, uint64_t body, int *r)
{
    if (body > UINT32_MAX) {
        *r = -EMSGSIZE;
        return NULL;
    }
    uint8_t *p = tether__mp_reserve(b, TETHER__FRAME_HEADER_SIZE + (size_t)body, r);
    if (!p) {
        return NULL;
    }
    return tether__store32(p, (uint32_t)body);
}

static inline int
tether__frame_commit(tether__buf *b, uint64_t body, const uint8_t *end)
{
    (void)end;
    assert(end == b->data + b->len + TETHER__FRAME_HEADER_SIZE + body);
    b->len += TETHER__FRAME_HEADER_SIZE + (size_t)body;
    return 0;
}

#endif
