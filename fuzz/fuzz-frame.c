/*
 * fuzz-frame: libFuzzer target for the frame decoder, the entry point that sees every
 * byte a peer sends. The input is one frame body (no length prefix). Rejection with
 * -EPROTO or -EMSGSIZE is a normal outcome; anything else the sanitizers or the checks
 * below object to is a bug. On success it does what the connection code would do with
 * the frame: parse HELLO/WELCOME maps, make values of the args/kwargs/value spans and
 * read, render and walk them, extract error fields, walk RELEASE/PROGRESS/BUFFERS_DONE
 * lists; and
 * it re-encodes the frame and decodes it again, which must give the same fields.
 *
 * Build: make fuzz (build-fuzz/fuzz/fuzz-frame, over the library built for fuzzing; the
 *        codec it exercises is src/codec/: frame.c, validate.c, msgpack.c, handshake.c, ext.c)
 * Run:   build-fuzz/fuzz/fuzz-frame -max_total_time=120 fuzz/corpus/frame
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-target.h"
#include "util/buf.h"
#include "tether.h"
#include "rpc/value.h"
#include "codec/ext.h"
#include "codec/frame.h"
#include "codec/handshake.h"
#include "codec/msgpack.h"


static int
read_args(tether_value *v, const char *fmt, ...)
{
    tether_error err = TETHER_ERROR_INIT;
    va_list ap;
    va_start(ap, fmt);
    int r = tether__value_read_args(v, &err, fmt, ap);
    va_end(ap);
    /* A mismatch always explains itself. */
    CHECK(r == 0 || r == -EINVAL || r == -ENOMEM);
    CHECK(r != -EINVAL || (err.type && err.message));
    tether_error_done(&err);
    return r;
}

static void
touch(const char *s, size_t n)
{
    /* Reading every byte lets ASan see a bad pointer. */
    volatile char sink = 0;
    for (size_t i = 0; i < n; i++) {
        sink ^= s[i];
    }
    (void)sink;
}

static void
exercise_value(const tether__span *span)
{
    tether_value *v = NULL;
    if (!span->ptr || tether__value_new_copy(span->ptr, span->len, &v) < 0) {
        return;
    }
    char *text = NULL;
    CHECK(tether_value_to_string(v, &text) == 0);
    touch(text, strlen(text));
    free(text);

    /* Introspection walks what the reader would: every item of the outer container. */
    CHECK(tether_value_get_type(v) >= 0);
    size_t count = 0;
    if (tether_value_get_count(v, &count) == 0 && (tether_value_get_type(v) == TETHER_TYPE_ARRAY ||
                                                   tether_value_get_type(v) == TETHER_TYPE_MAP)) {
        size_t items = tether_value_get_type(v) == TETHER_TYPE_MAP ? 2 * count : count;
        for (size_t k = 0; k < items && k < 16; k++) {
            tether_value *item = NULL;
            CHECK(tether_value_get_item(v, k, &item) == 0 && tether_value_get_type(item) >= 0);
            tether_value_unref(item);
        }
    }

    bool b;
    int i, j;
    int64_t x;
    uint64_t u;
    double d;
    const char *s1, *s2;
    const void *y;
    size_t n;
    tether_value *v1 = NULL, *v2 = NULL;
    read_args(v, "");
    read_args(v, "i", &i);
    read_args(v, "ii", &i, &j);
    read_args(v, "s", &s1);
    if (read_args(v, "ss", &s1, &s2) == 0) {
        touch(s1 ? s1 : "", s1 ? strlen(s1) : 0);
        touch(s2 ? s2 : "", s2 ? strlen(s2) : 0);
    }
    read_args(v, "xud", &x, &u, &d);
    read_args(v, "bSy", &b, &s1, &n, &y, &n);
    read_args(v, "*s*", &s1);
    read_args(v, "[i*]{si}", &i, &s1, &j);
    if (read_args(v, "vv", &v1, &v2) == 0) {
        CHECK(tether_value_to_string(v1, &text) == 0);
        free(text);
        v1 = tether_value_unref(v1);
        v2 = tether_value_unref(v2);
    }
    if (read_args(v, "v*", &v1) == 0) {
        v1 = tether_value_unref(v1);
    }
    tether_value_read(v, NULL, "*");
    tether_value_read(v, NULL, "{ss}", &s1, &s2);
    if (tether_value_read(v, NULL, "[vs]", &v1, &s1) == 0) {
        v1 = tether_value_unref(v1);
    }

    char *type = NULL, *message = NULL, *traceback = NULL;
    if (tether__value_error_fields(v, &type, &message, &traceback) == 0) {
        CHECK(type && message);
        free(type);
        free(message);
        free(traceback);
    }
    tether_value_unref(v);
}

static bool
span_eq(tether__span a, tether__span b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* Encode the decoded frame again; decoding that must give the same fields. */
static void
reencode(const tether__frame *f)
{
    tether__buf b = TETHER__BUF_INIT;
    int r = 0;
    switch (f->kind) {
    case TETHER__REQUEST:
        r = tether__encode_request(&b, f->id, f->chain, f->target, (const char *)f->method.ptr,
                                   f->method.len, f->args.ptr, f->args.len, f->kwargs.ptr,
                                   f->kwargs.len, f->timeout_ms);
        break;
    case TETHER__NOTIFY:
        r = tether__encode_notify(&b, f->chain, f->target, (const char *)f->method.ptr,
                                  f->method.len, f->args.ptr, f->args.len, f->kwargs.ptr,
                                  f->kwargs.len);
        break;
    case TETHER__RESPONSE:
        r = tether__encode_response(&b, f->id, f->is_error, f->value.ptr, f->value.len);
        break;
    case TETHER__CANCEL:
        r = tether__encode_cancel(&b, f->id);
        break;
    case TETHER__PING:
    case TETHER__PONG:
        r = tether__encode_ping(&b, f->kind, f->id);
        break;
    default:
        tether__buf_done(&b);
        return;
    }
    CHECK(r == 0);
    tether__frame g;
    size_t len = tether__buf_pending(&b) - TETHER__FRAME_HEADER_SIZE;
    CHECK(tether__frame_length(tether__buf_head(&b)) == len);
    /* Re-encoding never adds nesting, so the default limits hold. */
    CHECK(tether__frame_decode(tether__buf_head(&b) + TETHER__FRAME_HEADER_SIZE, len, NULL, &g) ==
          0);
    CHECK(g.kind == f->kind && g.id == f->id && g.chain == f->chain && g.target == f->target &&
          g.timeout_ms == f->timeout_ms && g.is_error == f->is_error);
    CHECK(span_eq(g.method, f->method) && span_eq(g.args, f->args) &&
          span_eq(g.kwargs, f->kwargs) && span_eq(g.value, f->value));
    tether__buf_done(&b);
}

static void
exercise_lists(const tether__frame *f)
{
    tether__mp_reader r = {f->value.ptr, f->value.ptr + f->value.len};
    uint32_t n;
    CHECK(tether__mp_read_array(&r, &n) == 0);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t a, c;
        if (f->kind == TETHER__PROGRESS || f->kind == TETHER__BUFFERS_DONE) {
            CHECK(tether__mp_read_uint(&r, &a) == 0);
            continue;
        }
        uint32_t k;
        CHECK(tether__mp_read_array(&r, &k) == 0 && k >= 2);
        CHECK(tether__mp_read_uint(&r, &a) == 0 && tether__mp_read_uint(&r, &c) == 0);
        for (uint32_t e = 2; e < k; e++) {
            CHECK(tether__mp_skip(&r, NULL) == 0);
        }
    }
    CHECK(r.p == r.end);
}

static int
count_buffer(void *arg, size_t off, uint64_t size)
{
    (void)off;
    (void)size;
    (*(size_t *)arg)++;
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The same bytes as a value: only well-formed ones are accepted. */
    tether_value *raw = NULL;
    if (tether_value_new_msgpack(data, size, &raw) == 0) {
        char *text = NULL;
        CHECK(tether_value_to_string(raw, &text) == 0);
        free(text);
        tether_value_unref(raw);
    }

    tether__frame f;
    int r = tether__frame_decode(data, size, NULL, &f);
    CHECK(r == 0 || r == -EPROTO || r == -EMSGSIZE);
    /* A small limit must never turn a rejection into an acceptance. */
    tether__wire_limits tight = {.max_frame_size = 64, .max_depth = 3};
    tether__frame t;
    int rt = tether__frame_decode(data, size, &tight, &t);
    CHECK(rt == 0 || rt == -EPROTO || rt == -EMSGSIZE);
    CHECK(r == 0 || rt != 0);
    /* Version 2 gives BUFFER exts a meaning: the same bytes, checked the stricter way,
     * and every BUFFER it counts found again by the scan that binds descriptors. */
    tether__wire_limits v2 = {.buffer_exts = true};
    tether__frame b;
    int rb = tether__frame_decode(data, size, &v2, &b);
    CHECK(rb == 0 || rb == -EPROTO || rb == -EMSGSIZE);
    /* Stricter, except for the kind version 2 adds. */
    CHECK(r == 0 || rb != 0 || b.kind == TETHER__BUFFERS_DONE);
    if (rb == 0) {
        size_t found = 0;
        const tether__span *spans[] = {&b.args, &b.kwargs, &b.value};
        for (size_t i = 0; i < sizeof(spans) / sizeof(spans[0]); i++) {
            if (spans[i]->len) {
                CHECK(tether__buffers_scan(spans[i]->ptr, spans[i]->len, count_buffer, &found) == 0);
            }
        }
        CHECK(found <= b.buffers);
        /* BUFFERS_DONE is a kind of version 2 only. */
        CHECK(b.kind != TETHER__BUFFERS_DONE || r != 0);
        if (b.kind == TETHER__BUFFERS_DONE) {
            exercise_lists(&b);
        }
    }
    if (r < 0) {
        return 0;
    }

    tether__buf strings = TETHER__BUF_INIT;
    switch (f.kind) {
    case TETHER__HELLO: {
        tether__hello h;
        if (tether__decode_hello(&f.value, &strings, &h) == 0) {
            const char *s[] = {h.name, h.language, h.language_version, h.token};
            for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++) {
                if (s[i]) {
                    touch(s[i], strlen(s[i]) + 1);
                }
            }
        }
        break;
    }
    case TETHER__WELCOME: {
        tether__welcome w;
        if (tether__decode_welcome(&f.value, &strings, &w) == 0) {
            if (w.name) {
                touch(w.name, strlen(w.name) + 1);
            }
            if (w.client_name) {
                touch(w.client_name, strlen(w.client_name) + 1);
            }
        }
        break;
    }
    case TETHER__REQUEST:
    case TETHER__NOTIFY:
        touch((const char *)f.method.ptr, f.method.len);
        exercise_value(&f.args);
        exercise_value(&f.kwargs);
        break;
    case TETHER__RESPONSE: {
        exercise_value(&f.value);
        if (f.is_error) {
            /* The decoder promised a well-formed ERROR ext. */
            tether_value *v = NULL;
            CHECK(tether__value_new_copy(f.value.ptr, f.value.len, &v) == 0);
            char *type = NULL, *message = NULL, *traceback = NULL;
            CHECK(tether__value_error_fields(v, &type, &message, &traceback) == 0);
            free(type);
            free(message);
            free(traceback);
            tether_value_unref(v);
        }
        break;
    }
    case TETHER__RELEASE:
    case TETHER__PROGRESS:
        exercise_lists(&f);
        break;
    case TETHER__REFUSE:
    case TETHER__CONTROL:
    case TETHER__LOG:
        touch((const char *)f.method.ptr, f.method.len);
        touch((const char *)f.text.ptr, f.text.len);
        break;
    default:
        break;
    }
    reencode(&f);
    tether__buf_done(&strings);
    return 0;
}
