/*
 * utf8: checking and repairing UTF-8, for the protocol's rule that every string is valid
 * UTF-8 (docs/protocol.md, Values).
 *
 * Identifiers and values (method names, client names, string arguments) that are not
 * valid are refused where they enter the library. Text written for a person (an error's
 * message, a log record) is repaired instead, each byte that does not belong to a valid
 * sequence becoming U+FFFD: refusing it would lose the error or the record it explains.
 * Valid means what the Unicode standard (table 3-7) and RFC 3629 say: shortest form,
 * no surrogates, nothing above U+10FFFF.
 */
#ifndef TETHER_UTF8_H
#define TETHER_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* True when [p, p+len) is valid UTF-8 (every byte of an ASCII run is checked eight at a
 * time, so the common case costs little more than reading it). */
bool tether__utf8_valid(const uint8_t *p, size_t len);
/* Where [p, p+len) stops being valid UTF-8: the offset of the first byte that starts no
 * valid sequence, len when it is valid. */
size_t tether__utf8_invalid_at(const uint8_t *p, size_t len);

/* True when s may name a client or host: not empty, valid UTF-8 and free of control
 * characters (C0 and DEL), since names are shown in lists, logs and terminals and typed
 * on command lines. */
bool tether__utf8_valid_name(const char *s);

/* Bytes of [p, p+len) once repaired: len when valid, more for each replaced byte. */
size_t tether__utf8_repaired_size(const uint8_t *p, size_t len);

/* Write [p, p+len) repaired to out, which has tether__utf8_repaired_size() bytes of room.
 * Returns the end of what was written. */
uint8_t *tether__utf8_put_repaired(uint8_t *out, const uint8_t *p, size_t len);

#endif
