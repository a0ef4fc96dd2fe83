/*
 * handshake: the maps inside the first two frames of a connection, HELLO (client -> host)
 * and WELCOME (host -> client's hello), as docs/protocol.md "Handshake" lays them out.
 *
 * They are maps, not arrays, so that either side may add keys in later versions: unknown
 * keys are ignored, and a missing key leaves its field zero. Both directions are driven
 * by one table of keys per map, so the encoder, the decoder and the set of known keys
 * cannot drift apart.
 */
#ifndef TETHER_HANDSHAKE_H
#define TETHER_HANDSHAKE_H

#include <stdint.h>

#include "codec/msgpack.h"
#include "util/buf.h"

/* Strings are NUL-terminated here; NULL encodes as nil and the key is omitted. */
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

/* Append a whole HELLO or WELCOME frame to buf, as the encoders of codec/frame.h do. */
int tether__encode_hello(tether__buf *buf, const tether__hello *hello);
int tether__encode_welcome(tether__buf *buf, const tether__welcome *welcome);

/*
 * Parse the map of a decoded HELLO/WELCOME (frame.value). Strings are copied into
 * NUL-terminated storage appended to *strings (a buffer the caller frees); the returned
 * const char * fields point into it, so they stay valid until the buffer is freed or
 * grows: copy the pointers only after the call returns. Missing keys leave the field
 * zero/NULL. Returns 0 or -EPROTO (not a map, wrong type for a known key), -ENOMEM; on
 * failure *ret is zero and *strings as it was.
 */
int tether__decode_hello(const tether__span *map, tether__buf *strings, tether__hello *ret);
int tether__decode_welcome(const tether__span *map, tether__buf *strings, tether__welcome *ret);

#endif
