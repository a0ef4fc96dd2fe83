/*
 * utf8: see utf8.h.
 *
 * One decoder step, sequence_length(), says how long the valid sequence at p is (0 when
 * the byte there starts none); checking and repairing are both loops over it. The second
 * byte's allowed range depends on the first (E0: A0..BF against overlong forms, ED:
 * 80..9F against surrogates, F0: 90..BF, F4: 80..8F against values above U+10FFFF); the
 * later ones are always 80..BF.
 */
#include "util/utf8.h"

#include <string.h>

#include "tether.h"

/* Bytes of ASCII at the front of [p, p+len). */
static size_t
ascii_prefix(const uint8_t *p, size_t len)
{
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t word;
        memcpy(&word, p + i, 8);
        if (word & UINT64_C(0x8080808080808080)) {
            break;
        }
    }
    while (i < len && p[i] < 0x80) {
        i++;
    }
    return i;
}

static inline bool
continuation(uint8_t c)
{
    return (c & 0xc0) == 0x80;
}

/* The length of the valid sequence at p (p < end), or 0. */
static size_t
sequence_length(const uint8_t *p, const uint8_t *end)
{
    uint8_t c = p[0];
    size_t n;
    uint8_t lo = 0x80, hi = 0xbf;
    if (c < 0x80) {
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        lo = c == 0xe0 ? 0xa0 : 0x80;
        hi = c == 0xed ? 0x9f : 0xbf;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        lo = c == 0xf0 ? 0x90 : 0x80;
        hi = c == 0xf4 ? 0x8f : 0xbf;
    } else {
        return 0; /* 80..C1 (a continuation, or an overlong two-byte lead) and F5..FF */
    }
    if ((size_t)(end - p) < n || p[1] < lo || p[1] > hi) {
        return 0;
    }
    for (size_t i = 2; i < n; i++) {
        if (!continuation(p[i])) {
            return 0;
        }
    }
    return n;
}

size_t
tether__utf8_invalid_at(const uint8_t *p, size_t len)
{
    const uint8_t *start = p, *end = p + len;
    p += ascii_prefix(p, len);
    while (p < end) {
        size_t n = sequence_length(p, end);
        if (n == 0) {
            return (size_t)(p - start);
        }
        p += n;
        if (n == 1) {
            p += ascii_prefix(p, (size_t)(end - p));
        }
    }
    return len;
}

bool
tether__utf8_valid(const uint8_t *p, size_t len)
{
    return tether__utf8_invalid_at(p, len) == len;
}

size_t
tether_utf8_invalid_at(const char *text, size_t size)
{
    return text ? tether__utf8_invalid_at((const uint8_t *)text, size) : 0;
}

bool
tether__utf8_valid_name(const char *s)
{
    if (!s || !*s) {
        return false;
    }
    size_t n = 0;
    for (; s[n]; n++) {
        if ((unsigned char)s[n] < 0x20 || s[n] == 0x7f) {
            return false;
        }
    }
    return tether__utf8_valid((const uint8_t *)s, n);
}

static const uint8_t replacement[3] = {0xef, 0xbf, 0xbd}; /* U+FFFD */

size_t
tether__utf8_repaired_size(const uint8_t *p, size_t len)
{
    const uint8_t *end = p + len;
    size_t size = 0;
    while (p < end) {
        size_t n = sequence_length(p, end);
        size += n ? n : sizeof(replacement);
        p += n ? n : 1;
    }
    return size;
}

uint8_t *
tether__utf8_put_repaired(uint8_t *out, const uint8_t *p, size_t len)
{
    const uint8_t *end = p + len;
    while (p < end) {
        size_t n = sequence_length(p, end);
        if (n) {
            memcpy(out, p, n);
            out += n;
            p += n;
        } else {
            memcpy(out, replacement, sizeof(replacement));
            out += sizeof(replacement);
            p++;
        }
    }
    return out;
}
