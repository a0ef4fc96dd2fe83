/*
 * error: the public API's "Errors" section: tether_strerror() names a code, and a
 * tether_error carries a remote failure (type name, message, traceback) to the caller.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>

#include "tether.h"
#include "util/alloc.h"

const char *
tether_strerror(int code)
{
    if (code == 0) {
        return "success";
    }
    int e = code == INT_MIN ? 0 : code < 0 ? -code : code;
    switch (e) {
    case EINVAL:
        return "invalid argument, or an argument of the wrong type";
    case ENOMEM:
        return "out of memory";
    case EPROTO:
        return "the peer sent a malformed frame or broke the protocol";
    case EMSGSIZE:
        return "a message is over a size limit (frame size or nesting depth)";
    case ENOBUFS:
        return "a queue or buffer limit was reached (requests in flight or queued output)";
    case ETIMEDOUT:
        return "the peer was silent for longer than the timeout";
    case ECANCELED:
        return "the call was cancelled";
    case ECONNRESET:
        return "the connection was lost";
    case ENOTCONN:
        return "not connected";
    case ECONNREFUSED:
        return "the connection was refused: nothing listens at the address";
    case EACCES:
        return "access refused: wrong token, or another user's host";
    case EPROTONOSUPPORT:
        return "the peer speaks no protocol version in common with us";
    case EUSERS:
        return "the host already has its maximum number of clients";
    case EBUSY:
        return "re-entrant call where none is allowed";
    case EPERM:
        return "called from the wrong thread";
    case ECHILD:
        return "object used in a child process after fork()";
    case ENOENT:
        return "no such service, object or client";
    case EEXIST:
        return "a service of that name is already registered";
    case EALREADY:
        return "already done";
    case EINPROGRESS:
        return "not complete yet";
    case ENOTSUP:
        return "not supported by this build or by the peer";
    case EREMOTEIO:
        return "the remote side raised an error";
    case EAGAIN:
        return "resource temporarily unavailable";
    case EINTR:
        return "interrupted system call";
    case EIO:
        return "input/output error";
    case EBADF:
        return "bad file descriptor";
    case EPIPE:
        return "broken pipe: the peer closed the connection";
    case EADDRINUSE:
        return "address already in use";
    case EADDRNOTAVAIL:
        return "address not available";
    case EAFNOSUPPORT:
        return "address family not supported";
    case ENETUNREACH:
        return "network unreachable";
    case EHOSTUNREACH:
        return "host unreachable";
    case ECONNABORTED:
        return "connection aborted";
    case ESHUTDOWN:
        return "cannot send after the socket was shut down";
    case ENOTSOCK:
        return "not a socket";
    case EMFILE:
        return "too many open files in this process";
    case ENFILE:
        return "too many open files in the system";
    case ENOSPC:
        return "no space left on device";
    case ENAMETOOLONG:
        return "file name too long";
    case ENOTDIR:
        return "not a directory";
    case EISDIR:
        return "is a directory";
    case EROFS:
        return "read-only file system";
    case ESRCH:
        return "no such process";
    case ENOEXEC:
        return "exec format error";
    case E2BIG:
        return "argument list too long";
    case ENOSYS:
        return "no such system call (ENOSYS)";
    case ERANGE:
        return "result out of range";
    case EOVERFLOW:
        return "value too large for its type";
    case EFAULT:
        return "bad address";
    case EDEADLK:
        return "a blocking call on the I/O thread would wait for itself";
    case ELOOP:
        return "call-backs nested deeper than the allowed call depth";
#if defined(EOPNOTSUPP) && EOPNOTSUPP != ENOTSUP
    case EOPNOTSUPP:
        return "operation not supported";
#endif
#if defined(EWOULDBLOCK) && EWOULDBLOCK != EAGAIN
    case EWOULDBLOCK:
        return "resource temporarily unavailable";
#endif
    default:
        return "unknown error";
    }
}

void
tether_error_done(tether_error *error)
{
    if (!error) {
        return;
    }
    tether__free(error->type);
    tether__free(error->message);
    tether__free(error->traceback);
    *error = (tether_error)TETHER_ERROR_INIT;
}

static int
error_setv(tether_error *error, const char *type, const char *format, va_list ap)
{
    char *t = NULL, *m = NULL;
    if (type && !(t = tether__strdup(type))) {
        return -ENOMEM;
    }
    if (format) {
        va_list aq;
        va_copy(aq, ap);
        int n = vsnprintf(NULL, 0, format, aq);
        va_end(aq);
        if (n < 0) {
            tether__free(t);
            return -EINVAL;
        }
        m = tether__malloc((size_t)n + 1);
        if (!m) {
            tether__free(t);
            return -ENOMEM;
        }
        vsnprintf(m, (size_t)n + 1, format, ap);
    }
    tether_error_done(error);
    error->type = t;
    error->message = m;
    return 0;
}

int
tether_error_set(tether_error *error, const char *type, const char *format, ...)
{
    if (!error) {
        return -EINVAL;
    }
    va_list ap;
    va_start(ap, format);
    int r = error_setv(error, type, format, ap);
    va_end(ap);
    return r;
}
