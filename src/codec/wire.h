/*
 * wire: tether's frame codec, protocol version 1 (docs/protocol.md is the spec).
 *
 * A frame on the stream is a 4-byte big-endian body length followed by the body, one
 * msgpack array whose first element is the message kind. This module turns bodies into
 * tether__frame records and records into bytes. It does no I/O, takes no locks and
 * allocates only through tether__buf, so it can be fuzzed on its own.
 *
 * Decoding never trusts a declared length: tether__msgpack_check() walks a value and
 * checks every declared str/bin/ext length and every array/map count against the bytes
 * left before anything is allocated (msgpack-c's unpacker allocates for the declared
 * count first). A body that passes tether__frame_decode() is therefore safe to hand to
 * msgpack_unpack_next(): its memory use is bounded by a small multiple of its size.
 *
 * Decoded spans point into the caller's body buffer; they live as long as it does.
 */
#ifndef TETHER_WIRE_H
#define TETHER_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

#define TETHER__PROTOCOL_VERSION 1
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
};

/* Ext type codes carried inside values. */
enum tether__ext {
    TETHER__EXT_REF = 1,   /* payload: msgpack [owner:int, object_id:uint, type_name:str] */
    TETHER__EXT_ERROR = 2, /* payload: msgpack [type:str, message:str, traceback:str] */
};

/* Limits applied while decoding. A zero field means the protocol default below. */
typedef struct tether__wire_limits {
    uint32_t max_frame_size; /* bytes of one body */
    uint32_t max_depth;      /* nesting of arrays/maps/ext payloads */
} tether__wire_limits;

#define TETHER__DEFAULT_MAX_FRAME_SIZE (16u * 1024u * 1024u)
#define TETHER__DEFAULT_MAX_DEPTH 64u
/* The checker keeps its nesting stack on the C stack: a larger max_depth acts as this. */
#define TETHER__MAX_DEPTH_CAP 512u

typedef struct tether__span {
    const uint8_t *ptr;
    size_t len;
} tether__span;

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
    tether__span value;  /* raw: RESPONSE value; HELLO/WELCOME map; RELEASE/PROGRESS list */
    size_t refs;         /* REF exts anywhere in the frame: 0 lets receivers skip a scan */
} tether__frame;

/*
 * Check that [p, p+len) starts with one complete msgpack value within limits: every
 * declared length fits in the bytes left, nesting <= max_depth, no reserved byte 0xc1.
 * Each array, map and REF/ERROR ext payload is one level of nesting; the payload of a
 * REF or ERROR ext must itself be exactly one well-formed value (other ext types are
 * opaque bytes). On success stores the value's encoded size in *ret_size (may be < len).
 * Returns 0, -EPROTO (malformed or truncated), -EMSGSIZE (depth over limit).
 */
int tether__msgpack_check(const uint8_t *p, size_t len, uint32_t max_depth, size_t *ret_size);
/* Same, also counting the REF exts in the value into *ret_refs. */
int tether__msgpack_check_refs(const uint8_t *p, size_t len, uint32_t max_depth, size_t *ret_size,
                               size_t *ret_refs);

/*
 * Decode one frame body (without its length prefix). The whole body must be exactly one
 * array; unknown trailing elements of a known kind are ignored (forward compatibility).
 * limits may be NULL (defaults). A REQUEST with id 0 is malformed. RELEASE and PROGRESS
 * lists are validated ([[uint, uint, ...], ...] and [uint, ...]), so their consumers may
 * read them with the tether__mp_read_* functions without further checks.
 * Returns 0, -EPROTO (malformed, wrong type in a field, unknown kind), -EMSGSIZE (body
 * over max_frame_size, nesting too deep).
 */
int tether__frame_decode(const uint8_t *body, size_t len, const tether__wire_limits *limits,
                         tether__frame *ret);

/* Read the big-endian length prefix at p (TETHER__FRAME_HEADER_SIZE bytes). */
uint32_t tether__frame_length(const uint8_t *p);

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
int tether__encode_response(tether__buf *buf, uint64_t id, bool is_error, const uint8_t *value,
                            size_t value_len);
/* RESPONSE with is_error and an ERROR ext built from the three strings (NULL = ""). */
int tether__encode_error_response(tether__buf *buf, uint64_t id, const char *type,
                                  const char *message, const char *traceback);
int tether__encode_cancel(tether__buf *buf, uint64_t id);
int tether__encode_ping(tether__buf *buf, int kind, uint64_t nonce); /* PING or PONG */
int tether__encode_progress(tether__buf *buf, const uint64_t *ids, size_t n);
int tether__encode_release(tether__buf *buf, const uint64_t *object_ids, const uint64_t *counts,
                           size_t n);
int tether__encode_control(tether__buf *buf, const char *action, const char *reason);
int tether__encode_refuse(tether__buf *buf, const char *code, const char *message);
int tether__encode_log(tether__buf *buf, int level, const char *logger, const char *message);

/*
 * HELLO and WELCOME carry a map so that either side may add keys in later versions;
 * unknown keys are ignored. Strings are NUL-terminated here; NULL encodes as nil and the
 * key is omitted.
 */
typedef struct tether__hello {
    uint32_t min_version, max_version; /* "versions": [min, max] */
    const char *name;                  /* "name" */
    int64_t pid;                       /* "pid" */
    const char *language;              /* "language", e.g. "c", "python" */
    const char *language_version;      /* "language_version", e.g. "3.11.2" */
    const char *token;                 /* "token", NULL when none */
} tether__hello;

typedef struct tether__welcome {
    uint32_t version;        /* "version": the one chosen */
    const char *name;        /* "name": the host's name */
    int64_t pid;             /* "pid" */
    uint32_t max_frame_size; /* "max_frame_size" */
    uint32_t max_in_flight;  /* "max_in_flight" */
    const char *client_name; /* "client_name": the name the host registered the client under */
} tether__welcome;

int tether__encode_hello(tether__buf *buf, const tether__hello *hello);
int tether__encode_welcome(tether__buf *buf, const tether__welcome *welcome);

/*
 * Parse the map of a decoded HELLO/WELCOME (frame.value). Strings are copied into
 * NUL-terminated storage appended to *strings (a buffer the caller frees); the returned
 * const char * fields point into it, so they stay valid until the buffer is freed or
 * grows: copy the pointers only after the call returns. Missing keys leave the field
 * zero/NULL. Returns 0 or -EPROTO (not a map, wrong type for a known key), -ENOMEM.
 */
int tether__decode_hello(const tether__span *map, tether__buf *strings, tether__hello *ret);
int tether__decode_welcome(const tether__span *map, tether__buf *strings, tether__welcome *ret);

/*
 * Minimal msgpack writers used by the encoders above and by value building. Return 0,
 * -ENOMEM, or -EMSGSIZE for a str/bin/ext over 4 GiB - 1 (buf unchanged on failure).
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

/*
 * Minimal msgpack reader over a checked value: each call reads one element at *p and
 * advances it. Return 0, or -EPROTO on a type mismatch or truncation (never reads
 * past end).
 */
typedef struct tether__mp_reader {
    const uint8_t *p, *end;
} tether__mp_reader;

int tether__mp_read_uint(tether__mp_reader *r, uint64_t *ret);
int tether__mp_read_int(tether__mp_reader *r, int64_t *ret);
int tether__mp_read_bool(tether__mp_reader *r, bool *ret);
int tether__mp_read_str(tether__mp_reader *r, tether__span *ret);
int tether__mp_read_array(tether__mp_reader *r, uint32_t *ret_count);
int tether__mp_read_map(tether__mp_reader *r, uint32_t *ret_count);
/* Skip one whole value (already known to be well formed); ret_span may be NULL. */
int tether__mp_skip(tether__mp_reader *r, tether__span *ret_span);

/* Item types as read by tether__mp_read_head(). */
enum tether__mp_type {
    TETHER__MP_NIL = 1,
    TETHER__MP_BOOL,
    TETHER__MP_UINT, /* an int >= 0, whatever its encoding */
    TETHER__MP_INT,  /* an int < 0 */
    TETHER__MP_FLOAT32,
    TETHER__MP_FLOAT64,
    TETHER__MP_STR,
    TETHER__MP_BIN,
    TETHER__MP_ARRAY,
    TETHER__MP_MAP,
    TETHER__MP_EXT,
};

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
