/*
 * error: the public API's "Errors" section: the table of codes, with their names, the
 * type names a tether_error gets for them and their sentences (tether_strerror,
 * tether_err_name, tether_err_type, tether_err_code); and tether_error itself, which
 * carries a failure's type name, message and remote traceback to the caller.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "tether.h"
#include "util/alloc.h"
#include "util/error.h"

/*
 * The one table of error codes: each code's name, the type name a tether_error gets for
 * it when the failure is local (TETHER__ERR_TIMEOUT), and its sentence. Rows flagged WIRE
 * name error types that the protocol itself sends (docs/protocol.md, "Errors"): a
 * response carrying one of those types completes the call with the row's code instead
 * of TETHER_EREMOTE. A code may have several rows; the first is its own.
 */
enum { WIRE = 1 };

static const struct error_row {
    int code; /* positive errno */
    const char *name;
    const char *type; /* NULL: TETHER__ERR_GENERIC */
    unsigned flags;
    const char *message;
} rows[] = {
    {EINVAL, "EINVAL", TETHER__ERR_INVALID_ARGUMENT, 0,
     "invalid argument, or an argument of the wrong type"},
    {ENOMEM, "ENOMEM", NULL, 0,
     "out of memory"},
    {EPROTO, "EPROTO", TETHER__ERR_PROTOCOL, 0,
     "the peer sent a malformed frame or broke the protocol"},
    {EMSGSIZE, "EMSGSIZE", TETHER__ERR_MESSAGE_TOO_LARGE, 0,
     "a message is over a size limit (frame size or nesting depth)"},
    {ENOBUFS, "ENOBUFS", TETHER__ERR_OVERLOADED, 0,
     "a queue or buffer limit was reached (requests in flight or queued output)"},
    {ETIMEDOUT, "ETIMEDOUT", TETHER__ERR_TIMEOUT, 0,
     "the peer was silent for longer than the timeout"},
    {ECANCELED, "ECANCELED", TETHER__ERR_CANCELLED, 0,
     "the call was cancelled"},
    {ECONNRESET, "ECONNRESET", TETHER__ERR_CONNECTION_LOST, 0,
     "the connection was lost"},
    {ENOTCONN, "ENOTCONN", TETHER__ERR_NOT_CONNECTED, 0,
     "not connected"},
    {ECONNREFUSED, "ECONNREFUSED", TETHER__ERR_CONNECTION_REFUSED, 0,
     "the connection was refused: nothing listens at the address"},
    {EACCES, "EACCES", TETHER__ERR_REFUSED, 0,
     "access refused: a wrong token, another user's host, or a runtime directory that is not ours or is open to others"},
    {EPROTONOSUPPORT, "EPROTONOSUPPORT", TETHER__ERR_REFUSED, 0,
     "the peer speaks no protocol version in common with us"},
    {EUSERS, "EUSERS", TETHER__ERR_REFUSED, 0,
     "the host already has its maximum number of clients"},
    {EBUSY, "EBUSY", NULL, 0,
     "re-entrant call where none is allowed"},
    {EPERM, "EPERM", NULL, 0,
     "called from the wrong thread"},
    {ECHILD, "ECHILD", NULL, 0,
     "object used in a child process after fork()"},
    {ENOENT, "ENOENT", NULL, 0,
     "no such service, object or client"},
    {EEXIST, "EEXIST", NULL, 0,
     "a service of that name is already registered"},
    {EALREADY, "EALREADY", NULL, 0,
     "already done"},
    {EINPROGRESS, "EINPROGRESS", NULL, 0,
     "not complete yet"},
    {ENOTSUP, "ENOTSUP", NULL, 0,
     "not supported by this build or by the peer"},
    {EREMOTEIO, "EREMOTEIO", NULL, 0,
     "the remote side raised an error"},
    {EAGAIN, "EAGAIN", NULL, 0,
     "resource temporarily unavailable"},
    {EINTR, "EINTR", NULL, 0,
     "interrupted system call"},
    {EIO, "EIO", NULL, 0,
     "input/output error"},
    {EBADF, "EBADF", NULL, 0,
     "bad file descriptor"},
    {EPIPE, "EPIPE", NULL, 0,
     "broken pipe: the peer closed the connection"},
    {EADDRINUSE, "EADDRINUSE", NULL, 0,
     "address already in use"},
    {EADDRNOTAVAIL, "EADDRNOTAVAIL", NULL, 0,
     "address not available"},
    {EAFNOSUPPORT, "EAFNOSUPPORT", NULL, 0,
     "address family not supported"},
    {ENETUNREACH, "ENETUNREACH", NULL, 0,
     "network unreachable"},
    {EHOSTUNREACH, "EHOSTUNREACH", NULL, 0,
     "host unreachable"},
    {ECONNABORTED, "ECONNABORTED", NULL, 0,
     "connection aborted"},
    {ESHUTDOWN, "ESHUTDOWN", NULL, 0,
     "cannot send after the socket was shut down"},
    {ENOTSOCK, "ENOTSOCK", NULL, 0,
     "not a socket"},
    {EMFILE, "EMFILE", NULL, 0,
     "too many open files in this process"},
    {ENFILE, "ENFILE", NULL, 0,
     "too many open files in the system"},
    {ENOSPC, "ENOSPC", NULL, 0,
     "no space left on device"},
    {ENAMETOOLONG, "ENAMETOOLONG", NULL, 0,
     "file name too long"},
    {ENOTDIR, "ENOTDIR", NULL, 0,
     "not a directory"},
    {EISDIR, "EISDIR", NULL, 0,
     "is a directory"},
    {EROFS, "EROFS", NULL, 0,
     "read-only file system"},
    {ESRCH, "ESRCH", NULL, 0,
     "no such process"},
    {ENOEXEC, "ENOEXEC", NULL, 0,
     "exec format error"},
    {E2BIG, "E2BIG", NULL, 0,
     "argument list too long"},
    {ENOSYS, "ENOSYS", NULL, 0,
     "no such system call (ENOSYS)"},
    {ERANGE, "ERANGE", NULL, 0,
     "result out of range"},
    {EOVERFLOW, "EOVERFLOW", NULL, 0,
     "value too large for its type"},
    {EFAULT, "EFAULT", NULL, 0,
     "bad address"},
    {EDEADLK, "EDEADLK", NULL, 0,
     "a blocking call on the I/O thread would wait for itself"},
    {ELOOP, "ELOOP", TETHER__ERR_TOO_DEEP, 0,
     "call-backs nested deeper than the allowed call depth"},
    {ENOENT, "ENOENT", TETHER__ERR_NO_SUCH_SERVICE, WIRE, "no such service"},
    {ENOENT, "ENOENT", TETHER__ERR_NO_SUCH_OBJECT, WIRE, "no such object"},
    {EMSGSIZE, "EMSGSIZE", TETHER__ERR_MESSAGE_TOO_LARGE, WIRE, "a message over a size limit"},
    {ENOBUFS, "ENOBUFS", TETHER__ERR_TOO_MANY_REQUESTS, WIRE, "too many requests in flight"},
    {ECANCELED, "ECANCELED", TETHER__ERR_CANCELLED, WIRE, "the call was cancelled"},
    {ETIMEDOUT, "ETIMEDOUT", TETHER__ERR_TIMEOUT, WIRE, "the call timed out"},
};


static const struct error_row *
row_of(int code)
{
    int e = code == INT_MIN ? 0 : code < 0 ? -code : code;
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        if (rows[i].code == e) {
            return &rows[i];
        }
    }
    return NULL;
}

const char *
tether_strerror(int code)
{
    if (code == 0) {
        return "success";
    }
    const struct error_row *row = row_of(code);
    return row ? row->message : "unknown error";
}

const char *
tether_err_name(int code)
{
    if (code == 0) {
        return "OK";
    }
    const struct error_row *row = row_of(code);
    return row ? row->name : "UNKNOWN";
}

const char *
tether_err_type(int code)
{
    const struct error_row *row = row_of(code);
    return row && row->type ? row->type : TETHER__ERR_GENERIC;
}

int
tether_err_code(const char *type)
{
    for (size_t i = 0; type && i < sizeof(rows) / sizeof(rows[0]); i++) {
        if ((rows[i].flags & WIRE) && strcmp(rows[i].type, type) == 0) {
            return -rows[i].code;
        }
    }
    return TETHER_EREMOTE;
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
