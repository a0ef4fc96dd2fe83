/*
 * test-value: tether_value building and reading with format strings, introspection
 * (type, count, items), text rendering, the internal helpers used by the connection
 * code, and the error table (tether_strerror, tether_err_*, tether_error_*).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "util/buf.h"
#include "tether.h"
#include "rpc/value.h"
#include "codec/frame.h"
#include "codec/validate.h"

/* ---- helpers ------------------------------------------------------------------- */

static void
assert_bytes(const tether_value *v, const void *want, size_t n)
{
    const void *data;
    size_t size;
    cr_assert_eq(tether_value_get_msgpack(v, &data, &size), 0);
    cr_assert_eq(size, n, "size %zu, want %zu", size, n);
    cr_assert_eq(memcmp(data, want, n), 0);
}

#define ASSERT_BYTES(v, lit) assert_bytes(v, lit, sizeof(lit) - 1)

/* Values from raw bytes, REF exts included: the public tether_value_new_msgpack refuses
 * those without their objects (test-objects.c), the renderer and reader must not. */
static tether_value *
from_bytes(const void *p, size_t n)
{
    tether_value *v = NULL;
    size_t used;
    cr_assert_eq(tether__msgpack_check(p, n, 64, &used), 0);
    cr_assert_eq(used, n);
    cr_assert_eq(tether__value_new_copy(p, n, &v), 0);
    return v;
}

#define FROM(lit) from_bytes(lit, sizeof(lit) - 1)

static void
assert_text(const tether_value *v, const char *want)
{
    char *text = NULL;
    cr_assert_eq(tether_value_to_string(v, &text), 0);
    cr_assert_str_eq(text, want);
    free(text);
}

static int
build(tether__buf *out, bool as_array, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = tether__format_build(out, fmt, ap, as_array, NULL, NULL, 0);
    va_end(ap);
    return r;
}

static int
read_args(tether_value *v, tether_error *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = tether__value_read_args(v, err, fmt, ap);
    va_end(ap);
    return r;
}

/* Expect a TypeError with exactly this message. */
static void
assert_type_error(tether_error *err, const char *message)
{
    cr_assert_str_eq(err->type, "TypeError");
    cr_assert_str_eq(err->message, message);
    cr_assert_null(err->traceback);
    tether_error_done(err);
}

/* ---- building ------------------------------------------------------------------ */

Test(value, build_scalars)
{
    tether_value *v;
    cr_assert_eq(tether_value_new(&v, "n"), 0);
    ASSERT_BYTES(v, "\xc0");
    v = tether_value_unref(v);
    cr_assert_null(v);

    cr_assert_eq(tether_value_new(&v, "b", 5), 0);
    ASSERT_BYTES(v, "\xc3");
    tether_value_unref(v);
    cr_assert_eq(tether_value_new(&v, "b", 0), 0);
    ASSERT_BYTES(v, "\xc2");
    tether_value_unref(v);

    cr_assert_eq(tether_value_new(&v, "i", -1), 0);
    ASSERT_BYTES(v, "\xff");
    tether_value_unref(v);
    cr_assert_eq(tether_value_new(&v, "i", INT_MIN), 0);
    ASSERT_BYTES(v, "\xd2\x80\x00\x00\x00");
    tether_value_unref(v);

    cr_assert_eq(tether_value_new(&v, "x", (int64_t)INT64_MIN), 0);
    ASSERT_BYTES(v, "\xd3\x80\x00\x00\x00\x00\x00\x00\x00");
    tether_value_unref(v);

    cr_assert_eq(tether_value_new(&v, "u", (uint64_t)UINT64_MAX), 0);
    ASSERT_BYTES(v, "\xcf\xff\xff\xff\xff\xff\xff\xff\xff");
    tether_value_unref(v);

    cr_assert_eq(tether_value_new(&v, "d", 1.0), 0);
    ASSERT_BYTES(v, "\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00");
    tether_value_unref(v);

    cr_assert_eq(tether_value_new(&v, "s", "abc"), 0);
    ASSERT_BYTES(v, "\xa3"
                    "abc");
    tether_value_unref(v);
    cr_assert_eq(tether_value_new(&v, "s", (const char *)NULL), 0);
    ASSERT_BYTES(v, "\xc0");
    tether_value_unref(v);

    cr_assert_eq(tether_value_new(&v, "S", "a\0b", (size_t)3), 0);
    ASSERT_BYTES(v, "\xa3"
                    "a\0b");
    tether_value_unref(v);
    cr_assert_eq(tether_value_new(&v, "S", (const char *)NULL, (size_t)0), 0);
    ASSERT_BYTES(v, "\xa0");
    tether_value_unref(v);

    cr_assert_eq(tether_value_new(&v, "y", "\x00\xff", (size_t)2), 0);
    ASSERT_BYTES(v, "\xc4\x02\x00\xff");
    tether_value_unref(v);

    /* NULL format: nil. */
    cr_assert_eq(tether_value_new(&v, NULL), 0);
    ASSERT_BYTES(v, "\xc0");
    tether_value_unref(v);
}

Test(value, build_containers)
{
    tether_value *v;
    cr_assert_eq(tether_value_new(&v, "[is{sb}[]n]", 1, "x", "k", 1), 0);
    ASSERT_BYTES(v, "\x95\x01\xa1x\x81\xa1k\xc3\x90\xc0");
    tether_value_unref(v);

    cr_assert_eq(tether_value_new(&v, "{}"), 0);
    ASSERT_BYTES(v, "\x80");
    tether_value_unref(v);

    /* 16 items: array16 header. */
    cr_assert_eq(tether_value_new(&v, "[nnnnnnnnnnnnnnnn]"), 0);
    ASSERT_BYTES(v, "\xdc\x00\x10\xc0\xc0\xc0\xc0\xc0\xc0\xc0\xc0\xc0\xc0\xc0\xc0\xc0\xc0\xc0\xc0");
    tether_value_unref(v);
}

Test(value, build_splices_values)
{
    tether_value *inner, *v;
    cr_assert_eq(tether_value_new(&inner, "[ii]", 1, 2), 0);
    cr_assert_eq(tether_value_new(&v, "{sv sv}", "a", inner, "b", (tether_value *)NULL), -EINVAL);
    cr_assert_eq(tether_value_new(&v, "{svsv}", "a", inner, "b", (tether_value *)NULL), 0);
    ASSERT_BYTES(v, "\x82\xa1"
                    "a\x92\x01\x02\xa1"
                    "b\xc0");
    tether_value_unref(v);
    tether_value_unref(inner);
}

Test(value, build_bad_formats)
{
    tether_value *v = (tether_value *)0x1;
    static const char *const bad[] = {"",   "ii", "[i", "i]",  "]",  "[i}", "{i}",
                                      "{s", "q",  "*",  "[*]", " i", "[[]"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(tether_value_new(&v, bad[i], 1, 2, 3), -EINVAL, "format \"%s\"", bad[i]);
    }
    cr_assert_eq(v, (tether_value *)0x1); /* untouched on failure */
    /* NULL pointer with a length. */
    cr_assert_eq(tether_value_new(&v, "S", (const char *)NULL, (size_t)1), -EINVAL);
    cr_assert_eq(tether_value_new(&v, "y", (const void *)NULL, (size_t)1), -EINVAL);
    /* Nesting: 64 brackets are fine, 65 are not. */
    char fmt[200];
    size_t k = 0;
    for (int i = 0; i < 64; i++) {
        fmt[k++] = '[';
    }
    for (int i = 0; i < 64; i++) {
        fmt[k++] = ']';
    }
    fmt[k] = '\0';
    cr_assert_eq(tether_value_new(&v, fmt), 0);
    tether_value_unref(v);
    memmove(fmt + 1, fmt, k + 1);
    fmt[0] = '[';
    strcat(fmt, "]");
    cr_assert_eq(tether_value_new(&v, fmt), -EINVAL);
}

Test(value, format_build_internal)
{
    tether__buf b = TETHER__BUF_INIT;
    cr_assert_eq(build(&b, true, NULL), 0);
    cr_assert_eq(build(&b, true, ""), 0);
    cr_assert_eq(build(&b, false, NULL), 0);
    cr_assert_eq(build(&b, true, "is", 7, "z"), 0);
    cr_assert_eq(b.len, 7);
    cr_assert_eq(memcmp(b.data, "\x90\x90\xc0\x92\x07\xa1z", 7), 0);
    cr_assert_eq(build(&b, false, "is", 7, "z"), -EINVAL);
    cr_assert_eq(build(&b, false, ""), -EINVAL);
    cr_assert_eq(b.len, 7);

    /* A failure half way restores the buffer, including after consumed bytes. */
    tether__buf_consume(&b, 2);
    cr_assert_eq(build(&b, true, "is[S]", 1, "abc", (const char *)NULL, (size_t)4), -EINVAL);
    cr_assert_eq(tether__buf_pending(&b), 5);
    cr_assert_eq(memcmp(tether__buf_head(&b), "\xc0\x92\x07\xa1z", 5), 0);
    tether__buf_done(&b);
}

/* ---- reading ------------------------------------------------------------------- */

Test(value, read_every_char)
{
    tether_value *inner, *v;
    cr_assert_eq(tether_value_new(&inner, "{si}", "q", 3), 0);
    cr_assert_eq(tether_value_new(&v, "[nbixudsSyvs*]", 1, -7, (int64_t)-8000000000,
                                  (uint64_t)UINT64_MAX, 2.5, "str", "b\0in", (size_t)4, "\x01\x02",
                                  (size_t)2, inner, (const char *)NULL, 0),
                 -EINVAL); /* '*' is for reading only */
    cr_assert_eq(tether_value_new(&v, "[nbixudsSyvsn]", 1, -7, (int64_t)-8000000000,
                                  (uint64_t)UINT64_MAX, 2.5, "str", "b\0in", (size_t)4, "\x01\x02",
                                  (size_t)2, inner, (const char *)NULL),
                 0);
    bool b = false;
    int i = 0;
    int64_t x = 0;
    uint64_t u = 0;
    double d = 0;
    const char *s = NULL, *S = NULL, *s2 = "set";
    size_t S_len = 0, y_len = 0;
    const void *y = NULL;
    tether_value *sub = NULL;
    tether_error err = TETHER_ERROR_INIT;
    cr_assert_eq(tether_value_read(v, &err, "[nbixudsSyvs*]", &b, &i, &x, &u, &d, &s, &S, &S_len,
                                   &y, &y_len, &sub, &s2),
                 0);
    cr_assert_null(err.type);
    cr_assert(b);
    cr_assert_eq(i, -7);
    cr_assert_eq(x, -8000000000);
    cr_assert_eq(u, UINT64_MAX);
    cr_assert_eq(d, 2.5);
    cr_assert_str_eq(s, "str");
    cr_assert_eq(S_len, 4);
    cr_assert_eq(memcmp(S, "b\0in", 4), 0);
    cr_assert_eq(y_len, 2);
    cr_assert_eq(memcmp(y, "\x01\x02", 2), 0);
    cr_assert_null(s2);
    cr_assert_not_null(sub);
    ASSERT_BYTES(sub, "\x81\xa1q\x03");
    int q = 0;
    cr_assert_eq(tether_value_read(sub, NULL, "{*i}", &q), 0);
    cr_assert_eq(q, 3);

    /* "s" copies are made once and live as long as the value. */
    const char *again = NULL;
    cr_assert_eq(tether_value_read(v, NULL, "[******s*****]", &again), 0);
    cr_assert_eq(again, s);
    tether_value_unref(sub);
    tether_value_unref(inner);
    tether_value_unref(v);
}

Test(value, read_null_outputs_skipped)
{
    tether_value *v;
    cr_assert_eq(tether_value_new(&v, "[isy]", 5, "t", "b", (size_t)1), 0);
    cr_assert_eq(tether_value_read(v, NULL, "[isy]", NULL, NULL, NULL, NULL), 0);
    tether_value_unref(v);
}

Test(value, read_d_accepts_ints_and_float32)
{
    tether_value *v = FROM("\x94\x05\xff\xca\x3f\xc0\x00\x00\xcf\xff\xff\xff\xff\xff\xff\xff\xff");
    double a, b, c, d;
    cr_assert_eq(tether_value_read(v, NULL, "[dddd]", &a, &b, &c, &d), 0);
    cr_assert_eq(a, 5.0);
    cr_assert_eq(b, -1.0);
    cr_assert_eq(c, 1.5);
    cr_assert_eq(d, 18446744073709551615.0);
    tether_value_unref(v);
}

Test(value, read_int_range)
{
    tether_error err = TETHER_ERROR_INIT;
    int i = 42;
    tether_value *v = FROM("\xce\x80\x00\x00\x00"); /* 2^31 */
    cr_assert_eq(tether_value_read(v, &err, "i", &i), -EINVAL);
    assert_type_error(&err, "integer 2147483648 out of range for int");
    cr_assert_eq(i, 42);
    int64_t x;
    cr_assert_eq(tether_value_read(v, &err, "x", &x), 0);
    cr_assert_eq(x, 2147483648);
    tether_value_unref(v);

    v = FROM("\xd3\xff\xff\xff\xff\x7f\xff\xff\xff"); /* -2^31 - 1 */
    cr_assert_eq(tether_value_read(v, &err, "[i]", &i), -EINVAL);
    assert_type_error(&err, "expected array, got int");
    cr_assert_eq(tether_value_read(v, &err, "i", &i), -EINVAL);
    assert_type_error(&err, "integer -2147483649 out of range for int");
    tether_value_unref(v);

    v = FROM("\x92\xd2\x80\x00\x00\x00\xce\x7f\xff\xff\xff"); /* [INT_MIN, INT_MAX] */
    int lo, hi;
    cr_assert_eq(tether_value_read(v, &err, "[ii]", &lo, &hi), 0);
    cr_assert_eq(lo, INT_MIN);
    cr_assert_eq(hi, INT_MAX);
    tether_value_unref(v);

    v = FROM("\xcf\x80\x00\x00\x00\x00\x00\x00\x00"); /* 2^63 */
    cr_assert_eq(tether_value_read(v, &err, "x", &x), -EINVAL);
    assert_type_error(&err, "integer 9223372036854775808 out of range for int64");
    uint64_t u;
    cr_assert_eq(tether_value_read(v, &err, "u", &u), 0);
    cr_assert_eq(u, 9223372036854775808u);
    tether_value_unref(v);

    v = FROM("\xfb");
    cr_assert_eq(tether_value_read(v, &err, "u", &u), -EINVAL);
    assert_type_error(&err, "expected int >= 0, got -5");
    tether_value_unref(v);
}

Test(value, read_mismatch_messages)
{
    tether_error err = TETHER_ERROR_INIT;
    tether_value *v;
    cr_assert_eq(tether_value_new(&v, "[is[bn{si}]]", 1, "two", 1, "k", 9), 0);
    int i = 0;
    const char *s = NULL;
    bool b = false;
    int k = 0;
    cr_assert_eq(tether_value_read(v, &err, "[ii[bn{si}]]", &i, &i, &b, &s, &k), -EINVAL);
    assert_type_error(&err, "item 2: expected int, got str");
    cr_assert_eq(tether_value_read(v, &err, "[is[nn{si}]]", &i, &s, &s, &k), -EINVAL);
    assert_type_error(&err, "item 3.1: expected nil, got bool");
    cr_assert_eq(tether_value_read(v, &err, "[is[bn{ss}]]", &i, &s, &b, &s, &s), -EINVAL);
    assert_type_error(&err, "item 3.3.2: expected str, got int");
    cr_assert_eq(tether_value_read(v, &err, "[is[bn]]", &i, &s, &b), -EINVAL);
    assert_type_error(&err, "item 3: expected array of 2 items, got 3");
    cr_assert_eq(tether_value_read(v, &err, "[is[bn{sisi}]]", &i, &s, &b, &s, &k, &s, &k), -EINVAL);
    assert_type_error(&err, "item 3.3: expected map of 2 entries, got 1");
    cr_assert_eq(tether_value_read(v, &err, "[is]", &i, &s), -EINVAL);
    assert_type_error(&err, "expected array of 2 items, got 3");
    cr_assert_eq(tether_value_read(v, &err, "[is[b*[]]]", &i, &s, &b), -EINVAL);
    assert_type_error(&err, "item 3.3: expected array, got map");
    cr_assert_eq(tether_value_read(v, &err, "{}"), -EINVAL);
    assert_type_error(&err, "expected map, got array");
    /* Outputs are untouched by a failed read, even those before the mismatch. */
    cr_assert_eq(i, 0);
    cr_assert_null(s);
    cr_assert_eq(b, false);
    /* reterr may be NULL. */
    cr_assert_eq(tether_value_read(v, NULL, "i", &i), -EINVAL);
    /* The right format reads. */
    cr_assert_eq(tether_value_read(v, &err, "[is[bn{si}]]", &i, &s, &b, &s, &k), 0);
    cr_assert_eq(i, 1);
    cr_assert_eq(k, 9);
    cr_assert_str_eq(s, "k");
    tether_value_unref(v);
}

Test(value, read_type_names)
{
    static const struct {
        const char *bytes;
        size_t len;
        const char *got;
    } cases[] = {
        {"\xc0", 1, "nil"},
        {"\xc2", 1, "bool"},
        {"\xcb\0\0\0\0\0\0\0\0", 9, "float"},
        {"\xc4\x00", 2, "bytes"},
        {"\x90", 1, "array"},
        {"\x80", 1, "map"},
        {"\xc7\x04\x01\x93\x00\x07\xa0", 7, "ref"},
        {"\xd4\x09\x00", 3, "ext"},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        tether_value *v = from_bytes(cases[c].bytes, cases[c].len);
        tether_error err = TETHER_ERROR_INIT;
        const char *s = "unset";
        if (cases[c].len == 1 && cases[c].bytes[0] == '\xc0') {
            /* nil reads as NULL with "s", and is a mismatch for "S". */
            cr_assert_eq(tether_value_read(v, &err, "s", &s), 0);
            cr_assert_null(s);
            size_t n;
            cr_assert_eq(tether_value_read(v, &err, "S", &s, &n), -EINVAL);
        } else {
            cr_assert_eq(tether_value_read(v, &err, "s", &s), -EINVAL);
        }
        char want[64];
        snprintf(want, sizeof(want), "expected str, got %s", cases[c].got);
        assert_type_error(&err, want);
        tether_value_unref(v);
    }
}

Test(value, read_bad_format)
{
    tether_value *v = FROM("\x01");
    tether_error err = TETHER_ERROR_INIT;
    int i;
    cr_assert_eq(tether_value_read(v, &err, "ii", &i, &i), -EINVAL);
    cr_assert_str_eq(err.type, "tether.Error");
    tether_error_done(&err);
    cr_assert_eq(tether_value_read(v, &err, "[i", &i), -EINVAL);
    tether_error_done(&err);
    cr_assert_eq(tether_value_read(v, &err, NULL), -EINVAL);
    tether_error_done(&err);
    cr_assert_eq(tether_value_read(NULL, &err, "i", &i), -EINVAL);
    cr_assert_eq(tether_value_read(v, &err, "*"), 0);
    tether_value_unref(v);
}

Test(value, read_v_references_survive_the_parent)
{
    tether_value *v;
    cr_assert_eq(tether_value_new(&v, "[s[ii]]", "a", 1, 2), 0);
    tether_value *a = NULL, *b = NULL;
    cr_assert_eq(tether_value_read(v, NULL, "[vv]", &a, &b), 0);
    tether_value_unref(v);
    ASSERT_BYTES(a, "\xa1"
                    "a");
    ASSERT_BYTES(b, "\x92\x01\x02");
    cr_assert_eq(tether_value_ref(a), a);
    tether_value_unref(a);
    tether_value_unref(a);
    tether_value_unref(b);
    cr_assert_null(tether_value_unref(NULL));
    cr_assert_null(tether_value_ref(NULL));
}

Test(value, read_args)
{
    tether_value *v;
    tether_error err = TETHER_ERROR_INIT;
    cr_assert_eq(tether_value_new(&v, "[isd]", 2, "x", 0.5), 0);
    int i = 0;
    const char *s = NULL;
    double d = 0;
    cr_assert_eq(read_args(v, &err, "isd", &i, &s, &d), 0);
    cr_assert_eq(i, 2);
    cr_assert_str_eq(s, "x");
    cr_assert_eq(d, 0.5);
    cr_assert_eq(read_args(v, &err, "is", &i, &s), -EINVAL);
    assert_type_error(&err, "takes 2 arguments, got 3");
    cr_assert_eq(read_args(v, &err, "i", &i), -EINVAL);
    assert_type_error(&err, "takes 1 argument, got 3");
    cr_assert_eq(read_args(v, &err, NULL), -EINVAL);
    assert_type_error(&err, "takes 0 arguments, got 3");
    cr_assert_eq(read_args(v, &err, "iid", &i, &i, &d), -EINVAL);
    assert_type_error(&err, "item 2: expected int, got str");
    cr_assert_eq(read_args(v, &err, "**[d]", &d), -EINVAL);
    assert_type_error(&err, "item 3: expected array, got float");
    tether_value_unref(v);

    cr_assert_eq(tether_value_new(&v, "[]"), 0);
    cr_assert_eq(read_args(v, &err, ""), 0);
    cr_assert_eq(read_args(v, &err, NULL), 0);
    tether_value_unref(v);

    cr_assert_eq(tether_value_new(&v, "{}"), 0);
    cr_assert_eq(read_args(v, &err, ""), -EINVAL);
    assert_type_error(&err, "arguments must be an array, got map");
    tether_value_unref(v);
}

/* ---- msgpack bytes in ---------------------------------------------------------- */

Test(value, new_msgpack_rejects_bad_bytes)
{
    tether_value *v = NULL;
    static const struct {
        const char *bytes;
        size_t len;
    } bad[] = {
        {"", 0},
        {"\xc1", 1},
        {"\x92\x01", 2},             /* truncated */
        {"\x01\x02", 2},             /* two values */
        {"\xdd\xff\xff\xff\xff", 5}, /* lying count */
        {"\xa5"
         "abc",
         4},
        {"\xc7\x01\x02\x01", 4},                 /* ERROR whose payload is not an array */
        {"\xc7\x03\x02\x92\xa0\xa0", 6},         /* ERROR of two elements */
        {"\xc7\x04\x02\x93\x01\xa0\xc0", 7},     /* ERROR whose type is not a str */
        {"\xc7\x04\x01\x93\x00\x00\xa0", 7},     /* REF with id 0 */
        {"\xc7\x04\x01\x93\x02\x07\xa0", 7},     /* REF owned by neither side */
        {"\xc7\x05\x01\x93\x00\x07\xa0\x01", 8}, /* REF payload with a trailing byte */
        {"\xa2\xc3\x28", 3},                     /* a str that is not UTF-8 */
        {"\xa3\xed\xa0\x80", 4},                 /* a UTF-16 surrogate in UTF-8 */
        {"\xa2\xc0\x80", 3},                     /* an overlong NUL */
        {"\x81\xa1\xff\x01", 4},                 /* a map key that is not UTF-8 */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(tether_value_new_msgpack(bad[i].bytes, bad[i].len, &v), -EPROTO, "case %zu",
                     i);
    }
    cr_assert_null(v);
    /* An ERROR is [type, message, traceback or nil, ...]: elements after those are kept. */
    cr_assert_eq(tether_value_new_msgpack("\xc7\x05\x02\x94\xa0\xa0\xc0\x90", 8, &v), 0);
    tether_value_unref(v);
    cr_assert_eq(tether_value_new_msgpack("\xa7\xe2\x82\xac\xf0\x9f\x98\x80", 8, &v), 0);
    tether_value_unref(v);
    cr_assert_eq(tether_value_new_msgpack(NULL, 3, &v), -EINVAL);

    /* 64 levels of nesting are allowed, 65 are not. */
    uint8_t deep[70];
    memset(deep, 0x91, sizeof(deep));
    deep[63] = 0x90;
    cr_assert_eq(tether_value_new_msgpack(deep, 64, &v), 0);
    tether_value_unref(v);
    memset(deep, 0x91, sizeof(deep));
    deep[64] = 0x90;
    cr_assert_eq(tether_value_new_msgpack(deep, 65, &v), -EPROTO);
}

/* ---- introspection ----------------------------------------------------------- */

/* Item i of v, checked to be of type. */
static tether_value *
item_of(tether_value *v, size_t i, int type)
{
    tether_value *item = NULL;
    cr_assert_eq(tether_value_get_item(v, i, &item), 0, "item %zu", i);
    cr_assert_eq(tether_value_get_type(item), type, "item %zu", i);
    return item;
}

Test(value, introspection)
{
    tether_value *v;
    cr_assert_eq(tether_value_new(&v, "[nbixdsy{s[]si}v]", 1, -3, (int64_t)1 << 40, 0.25, "str",
                                  "\x01", (size_t)1, "a", "b", 7, (tether_value *)NULL),
                 0);
    size_t n = 0;
    cr_assert_eq(tether_value_get_type(v), TETHER_TYPE_ARRAY);
    cr_assert_eq(tether_value_get_count(v, &n), 0);
    cr_assert_eq(n, 9);
    static const int types[] = {TETHER_TYPE_NIL,   TETHER_TYPE_BOOL, TETHER_TYPE_INT,
                                TETHER_TYPE_INT,   TETHER_TYPE_FLOAT, TETHER_TYPE_STR,
                                TETHER_TYPE_BIN,   TETHER_TYPE_MAP,  TETHER_TYPE_NIL};
    for (size_t i = 0; i < 9; i++) {
        tether_value_unref(item_of(v, i, types[i]));
    }
    int64_t x;
    uint64_t u;
    tether_value *item = item_of(v, 2, TETHER_TYPE_INT);
    cr_assert_eq(tether_value_read(item, NULL, "x", &x), 0);
    cr_assert_eq(x, -3);
    tether_value_unref(item);
    item = item_of(v, 3, TETHER_TYPE_INT);
    cr_assert_eq(tether_value_read(item, NULL, "u", &u), 0);
    cr_assert_eq(u, (uint64_t)1 << 40);
    tether_value_unref(item);
    item = item_of(v, 5, TETHER_TYPE_STR);
    cr_assert_eq(tether_value_get_count(item, &n), 0);
    cr_assert_eq(n, 3);
    tether_value_unref(item);

    /* A map's items are its keys and values in order. */
    tether_value *map = item_of(v, 7, TETHER_TYPE_MAP);
    cr_assert_eq(tether_value_get_count(map, &n), 0);
    cr_assert_eq(n, 2);
    tether_value *key = item_of(map, 0, TETHER_TYPE_STR);
    const char *text;
    cr_assert_eq(tether_value_read(key, NULL, "s", &text), 0);
    cr_assert_str_eq(text, "a");
    tether_value_unref(key);
    tether_value *val = item_of(map, 1, TETHER_TYPE_ARRAY);
    cr_assert_eq(tether_value_get_count(val, &n), 0);
    cr_assert_eq(n, 0);
    tether_value_unref(val);
    val = item_of(map, 3, TETHER_TYPE_INT);
    cr_assert_eq(tether_value_read(val, NULL, "u", &u), 0);
    cr_assert_eq(u, 7);
    tether_value_unref(val);
    cr_assert_eq(tether_value_get_item(map, 4, &val), TETHER_ENOENT);
    cr_assert_null(val);
    tether_value_unref(map);

    /* Scalars have no items or count; NULL has no type. */
    item = item_of(v, 1, TETHER_TYPE_BOOL);
    cr_assert_eq(tether_value_get_count(item, &n), TETHER_EINVAL);
    cr_assert_eq(tether_value_get_item(item, 0, &val), TETHER_EINVAL);
    tether_value_unref(item);
    cr_assert_eq(tether_value_get_type(NULL), TETHER_EINVAL);
    cr_assert_eq(tether_value_get_item(v, 9, &val), TETHER_ENOENT);
    tether_value_unref(v);

    /* Ext values: an error, another ext; a float32. */
    v = FROM("\x93\xd6\x05\x01\x02\x03\x04\xca\x3f\xc0\x00\x00\xd0\x05");
    tether_value_unref(item_of(v, 0, TETHER_TYPE_EXT));
    tether_value_unref(item_of(v, 1, TETHER_TYPE_FLOAT));
    tether_value_unref(item_of(v, 2, TETHER_TYPE_INT));
    tether_value_unref(v);
    v = FROM("\xc7\x04\x02\x93\xa0\xa0\xc0");
    cr_assert_eq(tether_value_get_type(v), TETHER_TYPE_ERROR);
    tether_value_unref(v);
}

Test(value, introspection_of_deep_values)
{
    uint8_t deep[64];
    memset(deep, 0x91, sizeof(deep));
    deep[63] = 0x2a;
    tether_value *v = from_bytes(deep, sizeof(deep));
    for (int i = 0; i < 63; i++) {
        tether_value *inner = item_of(v, 0, i == 62 ? TETHER_TYPE_INT : TETHER_TYPE_ARRAY);
        tether_value_unref(v);
        v = inner;
    }
    uint64_t u;
    cr_assert_eq(tether_value_read(v, NULL, "u", &u), 0);
    cr_assert_eq(u, 42);
    tether_value_unref(v);
}

/* ---- text ---------------------------------------------------------------------- */

Test(value, to_string)
{
    tether_value *v;
    cr_assert_eq(tether_value_new(&v, "[nbbixd{sS}y[]{}]", 1, 0, -12, (int64_t)INT64_MIN, 1.5, "k",
                                  "q\"\\\n\t\x01", (size_t)6, "a\x00\xff\"", (size_t)4),
                 0);
    assert_text(v, "[null, true, false, -12, -9223372036854775808, 1.5, {\"k\": "
                   "\"q\\\"\\\\\\n\\t\\u0001\"}, b\"a\\x00\\xff\\\"\", [], {}]");
    tether_value_unref(v);

    /* Floats print as the shortest text that reads back, with a point. */
    static const struct {
        double d;
        const char *text;
    } floats[] = {{1.0, "1.0"},
                  {0.1, "0.1"},
                  {-2.5e-300, "-2.5e-300"},
                  {1e22, "1e+22"},
                  {123456789.0, "123456789.0"},
                  {1.0 / 3, "0.3333333333333333"}};
    for (size_t i = 0; i < sizeof(floats) / sizeof(floats[0]); i++) {
        cr_assert_eq(tether_value_new(&v, "d", floats[i].d), 0);
        assert_text(v, floats[i].text);
        tether_value_unref(v);
    }
    cr_assert_eq(tether_value_new(&v, "[ddd]", NAN, INFINITY, -INFINITY), 0);
    assert_text(v, "[NaN, Infinity, -Infinity]");
    tether_value_unref(v);
    v = FROM("\xca\x3d\xcc\xcc\xcd"); /* 0.1f */
    assert_text(v, "0.1");
    tether_value_unref(v);
    v = FROM("\xca\x7f\x7f\xff\xff"); /* FLT_MAX: 8 digits would read back above it */
    assert_text(v, "3.40282347e+38");
    tether_value_unref(v);

    /* UTF-8 passes; a str argument that is not UTF-8 is refused, and the renderer (which
     * also sees bytes nobody checked) escapes broken sequences byte by byte. */
    cr_assert_eq(tether_value_new(&v, "s", "caf\xc3\xa9 \xc3"), -EINVAL);
    cr_assert_eq(tether_value_new(&v, "S", "\xed\xa0\x80", (size_t)3), -EINVAL);
    static const char broken[] = "\xb4" "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xc3 \xed\xa0\x80";
    cr_assert_eq(tether__value_new_copy((const uint8_t *)broken, sizeof(broken) - 1, &v), 0);
    assert_text(v, "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \\xc3 \\xed\\xa0\\x80\"");
    tether_value_unref(v);

    /* Ext values by kind. */
    v = FROM("\x93"
             "\xc7\x07\x01\x93\x00\x07\xa3Obj"         /* REF [0, 7, "Obj"] */
             "\xc7\x0f\x02\x93\xa9NameError\xa2hi\xc0" /* ERROR */
             "\xc7\x03\x05\x01\x02\x03");               /* ext 5 */
    assert_text(v, "[<ref 7>, <error NameError: hi>, <ext 5: 3 bytes>]");
    tether_value_unref(v);
    /* A REF holding 5 never passes the check; the renderer copes with it all the same. */
    cr_assert_eq(tether__value_new_copy((const uint8_t *)"\x91\xd4\x01\x05", 4, &v), 0);
    assert_text(v, "[<ext 1: 1 bytes>]");
    tether_value_unref(v);

    /* Nested maps and keys of any type. */
    v = FROM("\x82\x01\x81\xa1x\x90\xc3\xc0");
    assert_text(v, "{1: {\"x\": []}, true: null}");
    tether_value_unref(v);
}

/* ---- errors from the peer ------------------------------------------------------ */

Test(value, error_fields)
{
    tether__buf b = TETHER__BUF_INIT;
    cr_assert_eq(tether__encode_error_response(&b, 1, "NameError", "name 'x' is not defined",
                                               "Traceback (most recent call last): ..."),
                 0);
    tether__frame f;
    cr_assert_eq(tether__frame_decode(tether__buf_head(&b) + 4, tether__buf_pending(&b) - 4, NULL,
                                      &f),
                 0);
    tether_value *v;
    cr_assert_eq(tether__value_new_copy(f.value.ptr, f.value.len, &v), 0);
    char *type = NULL, *message = NULL, *traceback = NULL;
    cr_assert_eq(tether__value_error_fields(v, &type, &message, &traceback), 0);
    cr_assert_str_eq(type, "NameError");
    cr_assert_str_eq(message, "name 'x' is not defined");
    cr_assert_str_eq(traceback, "Traceback (most recent call last): ...");
    free(type);
    free(message);
    free(traceback);
    assert_text(v, "<error NameError: name 'x' is not defined>");
    tether_value_unref(v);
    tether__buf_done(&b);

    /* Traceback nil; NULL outputs; not an error. */
    v = FROM("\xc7\x06\x02\x93\xa1T\xa1m\xc0");
    cr_assert_eq(tether__value_error_fields(v, &type, NULL, &traceback), 0);
    cr_assert_str_eq(type, "T");
    cr_assert_null(traceback);
    free(type);
    tether_value_unref(v);
    /* A payload of two elements does not pass the check; the reader refuses it anyway. */
    size_t used;
    cr_assert_eq(tether__msgpack_check((const uint8_t *)"\xc7\x05\x02\x92\xa1T\xa1m", 8, 64, &used),
                 -EPROTO);
    cr_assert_eq(tether__value_new_copy((const uint8_t *)"\xc7\x05\x02\x92\xa1T\xa1m", 8, &v), 0);
    cr_assert_eq(tether__value_error_fields(v, &type, &message, &traceback), -EINVAL);
    tether_value_unref(v);
    v = FROM("\x93\xa1T\xa1m\xc0");
    cr_assert_eq(tether__value_error_fields(v, &type, &message, &traceback), -EINVAL);
    tether_value_unref(v);
    cr_assert_eq(tether__value_error_fields(NULL, &type, &message, &traceback), -EINVAL);
}

Test(value, new_copy)
{
    tether_value *v;
    cr_assert_eq(tether__value_new_copy((const uint8_t *)"\x92\x01\x02", 3, &v), 0);
    ASSERT_BYTES(v, "\x92\x01\x02");
    int a, b;
    cr_assert_eq(tether_value_read(v, NULL, "[ii]", &a, &b), 0);
    cr_assert_eq(a + b, 3);
    tether_value_unref(v);
}

/* ---- errors and time ----------------------------------------------------------- */

Test(value, strerror)
{
    cr_assert_str_eq(tether_strerror(TETHER_ETIMEDOUT),
                     "the peer was silent for longer than the timeout");
    cr_assert_str_eq(tether_strerror(TETHER_ECONNRESET), "the connection was lost");
    cr_assert_str_eq(tether_strerror(TETHER_ENOENT), "no such service, object or client");
    cr_assert_str_eq(tether_strerror(TETHER_EREMOTE), "the remote side raised an error");
    cr_assert_str_eq(tether_strerror(TETHER_ECANCELED), "the call was cancelled");
    cr_assert_str_eq(tether_strerror(0), "success");
    cr_assert_str_eq(tether_strerror(ETIMEDOUT), tether_strerror(-ETIMEDOUT));
    cr_assert_str_eq(tether_strerror(INT_MIN), "unknown error");
    cr_assert_str_eq(tether_strerror(-100000), "unknown error");
    static const int codes[] = {TETHER_EINVAL,
                                TETHER_ENOMEM,
                                TETHER_EPROTO,
                                TETHER_EMSGSIZE,
                                TETHER_ENOBUFS,
                                TETHER_ENOTCONN,
                                TETHER_ECONNREFUSED,
                                TETHER_EACCES,
                                TETHER_EPROTONOSUPPORT,
                                TETHER_EUSERS,
                                TETHER_EBUSY,
                                TETHER_EPERM,
                                TETHER_ECHILD,
                                TETHER_EEXIST,
                                TETHER_EALREADY,
                                TETHER_EINPROGRESS,
                                TETHER_ENOTSUP,
                                -EADDRINUSE,
                                -EPIPE,
                                -EAGAIN};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        const char *s = tether_strerror(codes[i]);
        cr_assert_not_null(s);
        cr_assert_str_neq(s, "unknown error", "code %d", codes[i]);
    }
}

Test(value, error_table_names_types_and_codes)
{
    cr_assert_str_eq(tether_err_name(TETHER_ETIMEDOUT), "ETIMEDOUT");
    cr_assert_str_eq(tether_err_name(ETIMEDOUT), "ETIMEDOUT");
    cr_assert_str_eq(tether_err_name(TETHER_EREMOTE), "EREMOTEIO");
    cr_assert_str_eq(tether_err_name(0), "OK");
    cr_assert_str_eq(tether_err_name(-100000), "UNKNOWN");
    cr_assert_str_eq(tether_err_name(INT_MIN), "UNKNOWN");
    cr_assert_str_eq(tether_err_type(TETHER_ETIMEDOUT), "tether.Timeout");
    cr_assert_str_eq(tether_err_type(TETHER_ECONNRESET), "tether.ConnectionLost");
    cr_assert_str_eq(tether_err_type(TETHER_ECANCELED), "tether.Cancelled");
    cr_assert_str_eq(tether_err_type(TETHER_ENOMEM), "tether.Error");
    cr_assert_str_eq(tether_err_type(-100000), "tether.Error");
    /* The protocol's own error types come back as their codes, anything else is remote. */
    cr_assert_eq(tether_err_code("tether.NoSuchService"), TETHER_ENOENT);
    cr_assert_eq(tether_err_code("tether.NoSuchObject"), TETHER_ENOENT);
    cr_assert_eq(tether_err_code("tether.MessageTooLarge"), TETHER_EMSGSIZE);
    cr_assert_eq(tether_err_code("tether.TooManyRequests"), TETHER_ENOBUFS);
    cr_assert_eq(tether_err_code("tether.Cancelled"), TETHER_ECANCELED);
    /* A callee that forwards the call (tether.call_client) passes its timeout on. */
    cr_assert_eq(tether_err_code("tether.Timeout"), TETHER_ETIMEDOUT);
    cr_assert_eq(tether_err_code("NameError"), TETHER_EREMOTE);
    cr_assert_eq(tether_err_code(NULL), TETHER_EREMOTE);
    /* Every code the header names has a name and a sentence of its own. */
    static const int codes[] = {
        TETHER_EINVAL,    TETHER_ENOMEM,      TETHER_EPROTO,          TETHER_EMSGSIZE,
        TETHER_ENOBUFS,   TETHER_ETIMEDOUT,   TETHER_ECANCELED,       TETHER_ECONNRESET,
        TETHER_ENOTCONN,  TETHER_ECONNREFUSED, TETHER_EACCES,         TETHER_EPROTONOSUPPORT,
        TETHER_EUSERS,    TETHER_EBUSY,       TETHER_EPERM,           TETHER_ECHILD,
        TETHER_ENOENT,    TETHER_EEXIST,      TETHER_EALREADY,        TETHER_EINPROGRESS,
        TETHER_ENOTSUP,   TETHER_EDEADLK,     TETHER_ELOOP,           TETHER_EREMOTE,
    };
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        cr_assert_str_neq(tether_err_name(codes[i]), "UNKNOWN", "code %d", codes[i]);
        cr_assert_str_neq(tether_strerror(codes[i]), "unknown error", "code %d", codes[i]);
    }
}

Test(value, error_set_and_done)
{
    tether_error err = TETHER_ERROR_INIT;
    cr_assert_eq(tether_error_set(&err, "tether.Timeout", "no answer in %d s", 30), 0);
    cr_assert_str_eq(err.type, "tether.Timeout");
    cr_assert_str_eq(err.message, "no answer in 30 s");
    err.traceback = malloc(4);
    strcpy(err.traceback, "tb!");
    cr_assert_eq(tether_error_set(&err, "E", "%s", "again"), 0);
    cr_assert_str_eq(err.type, "E");
    cr_assert_str_eq(err.message, "again");
    cr_assert_null(err.traceback);
    tether_error_done(&err);
    cr_assert_null(err.type);
    cr_assert_null(err.message);
    tether_error_done(&err);
    tether_error_done(NULL);
    cr_assert_eq(tether_error_set(NULL, "E", "x"), -EINVAL);
}

Test(value, now_usec)
{
    uint64_t a = tether_now_usec();
    uint64_t b = tether_now_usec();
    cr_assert_geq(b, a);
    cr_assert_gt(a, 0);
}

/* Buffers in values: built with "B", read back with "B" and "y", carried by slices,
 * written inline (a bin) for a peer that takes no descriptors. */
Test(value, buffers_in_values)
{
    tether_buffer *buf = NULL;
    int r = tether_buffer_new(5000, &buf);
    if (r == TETHER_ENOTSUP) {
        cr_skip_test("no shared memory on this platform");
    }
    cr_assert_eq(r, 0);
    cr_assert_eq(tether_buffer_get_size(buf), 5000);
    uint8_t *w = tether_buffer_get_writable(buf);
    cr_assert_not_null(w);
    for (size_t i = 0; i < 5000; i++) {
        cr_assert_eq(w[i], 0);
        w[i] = (uint8_t)i;
    }
    tether_value *v = NULL;
    cr_assert_eq(tether_value_new(&v, "[iB{sB}]", 7, buf, "k", (tether_buffer *)NULL), 0);
    tether_buffer_unref(buf); /* the value holds it */
    int seven = 0;
    tether_buffer *got = NULL;
    const void *bytes = NULL;
    size_t len = 0;
    cr_assert_eq(tether_value_read(v, NULL, "[iB{sB}]", &seven, &got, NULL, NULL), 0);
    cr_assert_eq(seven, 7);
    cr_assert_eq(tether_buffer_get_data(got), w);
    cr_assert_eq(tether_value_read(v, NULL, "[*y{s*}]", &bytes, &len, NULL), 0);
    cr_assert_eq(bytes, w);
    cr_assert_eq(len, 5000);
    /* An item holds its buffer. */
    tether_value *item = NULL;
    cr_assert_eq(tether_value_get_item(v, 1, &item), 0);
    cr_assert_eq(tether_value_get_type(item), TETHER_TYPE_BUFFER);
    size_t count = 0;
    cr_assert_eq(tether_value_get_count(item, &count), 0);
    cr_assert_eq(count, 5000);
    tether_buffer *again = NULL;
    cr_assert_eq(tether_value_read(item, NULL, "B", &again), 0);
    cr_assert_eq(again, got);
    tether_buffer_unref(again);
    tether_value_unref(item);
    char *text = NULL;
    cr_assert_eq(tether_value_to_string(v, &text), 0);
    cr_assert_not_null(strstr(text, "<buffer of 5000 bytes>"), "%s", text);
    free(text);
    /* Wrong types say what was expected. */
    tether_error err = TETHER_ERROR_INIT;
    cr_assert_eq(tether_value_read(v, &err, "[BB{sB}]", &got, &got, NULL, NULL), TETHER_EINVAL);
    cr_assert_not_null(strstr(err.message, "expected buffer, got int"), "%s", err.message);
    tether_error_done(&err);
    /* Inline: [7, bin of the bytes, {"k": nil}]. */
    tether__buf out = TETHER__BUF_INIT;
    cr_assert_eq(tether__value_write_inline(v, &out), 0);
    tether_value *flat = NULL;
    cr_assert_eq(tether_value_new_msgpack(tether__buf_head(&out), tether__buf_pending(&out), &flat),
                 0);
    cr_assert_eq(tether_value_read(flat, NULL, "[iy{sn}]", &seven, &bytes, &len, NULL), 0);
    cr_assert_eq(len, 5000);
    cr_assert_eq(memcmp(bytes, w, 5000), 0);
    tether_value_unref(flat);
    tether__buf_done(&out);
    /* Bytes alone cannot name a buffer: refused where a value is made from them. */
    tether_value *raw = NULL;
    cr_assert_eq(tether_value_new_msgpack("\x91\xd5\x03\x91\x05", 5, &raw), TETHER_EINVAL);
    cr_assert_null(raw);
    /* A value inside another brings its buffer along. */
    tether_value *outer = NULL;
    cr_assert_eq(tether_value_new(&outer, "[vv]", v, v), 0);
    tether_value_unref(v);
    tether_buffer *a = NULL, *b = NULL;
    cr_assert_eq(tether_value_read(outer, NULL, "[[iB{s*}][iB{s*}]]", NULL, &a, NULL, NULL, &b,
                                   NULL),
                 0);
    cr_assert_eq(a, got);
    cr_assert_eq(b, got);
    tether_buffer_unref(a);
    tether_buffer_unref(b);
    tether_buffer_unref(got);
    tether_value_unref(outer);
}

Test(value, msgpack_with_buffers_and_arrays)
{
    tether_buffer *buf = NULL;
    int r = tether_buffer_new(24, &buf);
    if (r == TETHER_ENOTSUP) {
        cr_skip_test("no shared memory on this platform");
    }
    cr_assert_eq(r, 0);
    /* An array's shape must fill the buffer, with a format that travels. */
    const size_t shape[2] = {2, 3}, wrong[2] = {2, 4};
    cr_assert_eq(tether_buffer_set_array(buf, 'f', wrong, 2), TETHER_EINVAL);
    cr_assert_eq(tether_buffer_set_array(buf, 'Z', shape, 2), TETHER_EINVAL);
    cr_assert_eq(tether_buffer_set_array(buf, 'f', shape, TETHER_BUFFER_MAX_DIMS + 1),
                 TETHER_EINVAL);
    cr_assert_eq(tether_buffer_set_array(buf, 'f', shape, 2), 0);
    /* Its BUFFER carries [size, format, shape]. */
    tether_value *v = NULL;
    cr_assert_eq(tether_value_new(&v, "[B]", buf), 0);
    const void *bytes = NULL;
    size_t len = 0;
    cr_assert_eq(tether_value_get_msgpack(v, &bytes, &len), 0);
    static const uint8_t expected[] = {0x91, 0xc7, 7, 3, 0x93, 24, 0xa1, 'f', 0x92, 2, 3};
    cr_assert_eq(len, sizeof(expected));
    cr_assert_eq(memcmp(bytes, expected, len), 0);
    /* Bytes and buffers make a value again; the buffers must match the exts. */
    tether_value *again = NULL;
    tether_buffer *bufs[2] = {buf, buf};
    cr_assert_eq(tether_value_new_msgpack_buffers(bytes, len, NULL, 0, bufs, 1, &again), 0);
    tether_buffer *got = NULL;
    cr_assert_eq(tether_value_read(again, NULL, "[B]", &got), 0);
    cr_assert_eq(got, buf);
    tether_buffer_unref(got);
    again = tether_value_unref(again);
    cr_assert_eq(tether_value_new_msgpack_buffers(bytes, len, NULL, 0, bufs, 2, &again),
                 TETHER_EINVAL);
    cr_assert_eq(tether_value_new_msgpack_buffers(bytes, len, NULL, 0, NULL, 0, &again),
                 TETHER_EINVAL);
    tether_buffer *small = NULL;
    cr_assert_eq(tether_buffer_new(23, &small), 0);
    cr_assert_eq(tether_value_new_msgpack_buffers(bytes, len, NULL, 0, &small, 1, &again),
                 TETHER_EINVAL, "a buffer of another size than its ext gives");
    cr_assert_null(again);
    tether_buffer_unref(small);
    /* Plain bytes again: format 0. */
    cr_assert_eq(tether_buffer_set_array(buf, 0, NULL, 0), 0);
    tether_value_unref(v);
    cr_assert_eq(tether_value_new(&v, "B", buf), 0);
    cr_assert_eq(tether_value_get_msgpack(v, &bytes, &len), 0);
    cr_assert_eq(len, 4); /* fixext 2: [24] */
    tether_value_unref(v);
    tether_buffer_unref(buf);
}

Test(value, utf8_invalid_at_names_the_first_bad_byte)
{
    static const struct {
        const char *text;
        size_t size, at;
    } cases[] = {
        {"", 0, 0},
        {"plain ascii, longer than a word", 31, 31},
        {"caf\xc3\xa9", 5, 5},
        {"\xff", 1, 0},
        {"abc\xc0\x80", 5, 3},          /* overlong NUL */
        {"ab\xed\xa0\x80", 5, 2},       /* a surrogate */
        {"\xf4\x90\x80\x80", 4, 0},     /* above U+10FFFF */
        {"0123456789\xe2\x82", 12, 10}, /* cut short */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cr_assert_eq(tether_utf8_invalid_at(cases[i].text, cases[i].size), cases[i].at, "case %zu",
                     i);
    }
    cr_assert_eq(tether_utf8_invalid_at(NULL, 3), 0);
}
