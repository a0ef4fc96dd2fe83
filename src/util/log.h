/*
 * log: where the library's diagnostics go. The library never prints; an endpoint holds
 * the application's log callback and level, and every layer that has something to say
 * is handed a pointer to that logger instead of reaching up for the endpoint.
 */
#ifndef TETHER_LOG_H
#define TETHER_LOG_H

#include <stdarg.h>

#include "tether.h"

typedef struct tether__logger {
    tether_log_fn fn; /* NULL: nothing is logged */
    void *userdata;
    int level; /* the most verbose level passed on */
} tether__logger;

#define tether__logger_enabled(lg, lvl) ((lg)->fn && (lvl) <= (lg)->level)

/* Format one line (at most 1 KiB) and hand it to the logger if level is enabled. */
void tether__logger_write(const tether__logger *lg, int level, const char *format, ...)
    TETHER_PRINTF(3, 4);
void tether__logger_writev(const tether__logger *lg, int level, const char *format, va_list ap);

#endif
