/*
 * log: see log.h.
 */
#include "util/log.h"

#include <stdio.h>

void
tether__logger_writev(const tether__logger *lg, int level, const char *format, va_list ap)
{
    if (!tether__logger_enabled(lg, level)) {
        return;
    }
    char line[1024];
    vsnprintf(line, sizeof(line), format, ap);
    lg->fn(lg->userdata, level, line);
}

void
tether__logger_write(const tether__logger *lg, int level, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    tether__logger_writev(lg, level, format, ap);
    va_end(ap);
}
