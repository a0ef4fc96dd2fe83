/*
 * log: see log.h.
 *
 * Lines carry text from peers (a client's name, a script's log record, a traceback), so
 * nothing reaches the application's callback that could pass for a line the library did
 * not write, or drive a terminal: control characters are written as \xHH, and each line
 * after the first of a multi-line message is indented, so it reads as a continuation.
 */
#include "util/log.h"

#include <stdbool.h>
#include <stdio.h>

#define CONTINUATION "    "

static bool
is_control(unsigned char c)
{
    return (c < 0x20 && c != '\t') || c == 0x7f;
}

static bool
needs_escaping(const char *s)
{
    for (; *s; s++) {
        if (is_control((unsigned char)*s)) {
            return true;
        }
    }
    return false;
}

/* Copy s into out (size bytes, NUL-terminated, cut short if need be) escaped. */
static void
escape_line(char *out, size_t size, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char piece[8];
        size_t k = 0;
        if (c == '\n') {
            piece[k++] = '\n';
            for (const char *i = CONTINUATION; *i; i++) {
                piece[k++] = *i;
            }
        } else if (is_control(c)) {
            piece[k++] = '\\';
            piece[k++] = 'x';
            piece[k++] = hex[c >> 4];
            piece[k++] = hex[c & 15];
        } else {
            piece[k++] = (char)c;
        }
        if (n + k >= size) {
            break;
        }
        for (size_t i = 0; i < k; i++) {
            out[n++] = piece[i];
        }
    }
    out[n] = '\0';
}

void
tether__logger_writev(const tether__logger *lg, int level, const char *format, va_list ap)
{
    if (!tether__logger_enabled(lg, level)) {
        return;
    }
    char line[1024];
    vsnprintf(line, sizeof(line), format, ap);
    if (!needs_escaping(line)) {
        lg->fn(lg->userdata, level, line);
        return;
    }
    char escaped[2048];
    escape_line(escaped, sizeof(escaped), line);
    lg->fn(lg->userdata, level, escaped);
}

void
tether__logger_write(const tether__logger *lg, int level, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    tether__logger_writev(lg, level, format, ap);
    va_end(ap);
}
