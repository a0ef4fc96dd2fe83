/*
 * tether.h: the whole public C API of libtether.
 *
 * tether lets a host application be scripted by programs in other processes. A host
 * (tether_host) serves on its own I/O thread over a Unix socket and, optionally,
 * loopback TCP; clients (tether_client) connect to it. Each side registers services
 * that the other calls through a connection (tether_conn): blocking with a timeout,
 * asynchronously through a future (tether_future), or as a notification.
 *
 * Conventions, stated once:
 * - Fallible functions return int: >= 0 on success, a negative TETHER_E* code (a
 *   negated errno value) on failure. tether_strerror() names the codes.
 * - Objects are opaque and reference counted: *_ref() returns its argument, *_unref()
 *   accepts NULL and returns NULL, so `p = tether_x_unref(p);` clears the pointer.
 * - Option structs may be zero-initialised: every zero field means the default.
 * - Output parameters come last and are named ret_*; reterr_* are filled on failure.
 * - Arguments and results are msgpack values (tether_value), built and read with
 *   format strings described above tether_value_new().
 * - Durations are relative microseconds (*_usec); deadlines are absolute
 *   CLOCK_MONOTONIC microseconds (deadline_usec, see tether_now_usec()).
 * - Each declaration ends with a Thread: line saying which threads may call it.
 * - If a function that takes a callback fails, the callback is never called; if it
 *   succeeds, the callback is called exactly once.
 * - The library never prints, exits or aborts on peer input; diagnostics go to the
 *   optional log callback.
 */
#ifndef TETHER_H
#define TETHER_H

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define TETHER_EXPORT __attribute__((visibility("default")))
#define TETHER_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define TETHER_EXPORT
#define TETHER_PRINTF(a, b)
#endif

#define TETHER_VERSION_MAJOR 0
#define TETHER_VERSION_MINOR 1
#define TETHER_VERSION_PATCH 0
#define TETHER_VERSION_STRING "0.1.0"
/* Highest wire protocol version this header knows (docs/protocol.md): 2 adds buffers.
 * What a build speaks is tether_protocol_version(). */
#define TETHER_PROTOCOL_VERSION 2

/* ---------------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------------- */

#define TETHER_EINVAL (-EINVAL)       /* bad argument, or arguments of the wrong type */
#define TETHER_ENOMEM (-ENOMEM)       /* out of memory */
#define TETHER_EPROTO (-EPROTO)       /* malformed frame or protocol violation */
#define TETHER_EMSGSIZE (-EMSGSIZE)   /* over a size limit (frame, nesting) */
#define TETHER_ENOBUFS (-ENOBUFS)     /* queue or buffer limit (in-flight, output) */
#define TETHER_ETIMEDOUT (-ETIMEDOUT) /* the peer was silent for the timeout, or deadline */
#define TETHER_ECANCELED (-ECANCELED) /* cancelled, or closed locally before completion */
#define TETHER_ECONNRESET (-ECONNRESET) /* the connection was lost during the call */
#define TETHER_ENOTCONN (-ENOTCONN)   /* not connected */
#define TETHER_ECONNREFUSED (-ECONNREFUSED) /* nothing listens at the address */
#define TETHER_EACCES (-EACCES)       /* refused: wrong token, other user, unsafe runtime dir */
#define TETHER_EPROTONOSUPPORT (-EPROTONOSUPPORT) /* no protocol version in common */
#define TETHER_EUSERS (-EUSERS)       /* refused: the host has its maximum of clients */
#define TETHER_EBUSY (-EBUSY)         /* re-entrant call where none is allowed */
#define TETHER_EPERM (-EPERM)         /* called from the wrong thread */
#define TETHER_ECHILD (-ECHILD)       /* object used in a child after fork() */
#define TETHER_ENOENT (-ENOENT)       /* unknown service, object or client */
#define TETHER_EEXIST (-EEXIST)       /* a service of that name is already registered */
#define TETHER_EALREADY (-EALREADY)   /* already done (started, completed) */
#define TETHER_EINPROGRESS (-EINPROGRESS) /* not complete yet */
#define TETHER_ENOTSUP (-ENOTSUP)     /* not supported by this build or peer */
#define TETHER_EDEADLK (-EDEADLK)     /* a blocking call on the I/O thread */
#define TETHER_ELOOP (-ELOOP)         /* call-backs nested deeper than max_call_depth */
#define TETHER_EREMOTE (-EREMOTEIO)   /* the remote side raised an error: see tether_error */

/*
 * Name a TETHER_E* code (or any negated errno) in a short sentence. Never NULL.
 * Thread: any.
 */
TETHER_EXPORT const char *tether_strerror(int code);

/*
 * Where text stops being valid UTF-8 as the protocol requires of every string (shortest
 * forms, no surrogates, nothing above U+10FFFF): the offset of the first byte that starts
 * no valid sequence, size when all of it is valid. For a binding that encodes msgpack
 * itself and wants to refuse a string with a clear error before sending it.
 * Thread: any.
 */
TETHER_EXPORT size_t tether_utf8_invalid_at(const char *text, size_t size);

/*
 * The name of a code: "ETIMEDOUT" for TETHER_ETIMEDOUT (the errno name, as uv_err_name
 * gives it), "OK" for 0, "UNKNOWN" for a code the library never returns. Never NULL.
 * Thread: any.
 */
TETHER_EXPORT const char *tether_err_name(int code);

/*
 * The type name a tether_error carries for a failure with this code that is not a
 * remote exception: "tether.Timeout" for TETHER_ETIMEDOUT, "tether.ConnectionLost" for
 * TETHER_ECONNRESET, ..., "tether.Error" for a code without a type of its own. Never
 * NULL. Thread: any.
 */
TETHER_EXPORT const char *tether_err_type(int code);

/*
 * The code a call fails with when its error has this type: the protocol's own error
 * types (docs/protocol.md, "Errors": "tether.NoSuchService", "tether.NoSuchObject",
 * "tether.MessageTooLarge", "tether.TooManyRequests", "tether.Cancelled",
 * "tether.Timeout") give their codes; anything else, a remote exception, gives
 * TETHER_EREMOTE. Thread: any.
 */
TETHER_EXPORT int tether_err_code(const char *type);

/*
 * Details of a failed call: for a remote failure, the remote exception's type name
 * (e.g. "NameError"), its message and the remote traceback text; for a local failure
 * (timeout, lost connection, cancel, unknown service), a type name of the form
 * "tether.Timeout" and a message that says what happened. Fields are NULL when unset.
 * Initialise with TETHER_ERROR_INIT; free the strings with tether_error_done().
 */
typedef struct tether_error {
    char *type;
    char *message;
    char *traceback;
} tether_error;

#define TETHER_ERROR_INIT {NULL, NULL, NULL}

/* Free the strings and reset to TETHER_ERROR_INIT. Accepts NULL. Thread: any. */
TETHER_EXPORT void tether_error_done(tether_error *error);

/*
 * Fill error with a type name and a printf-style message, replacing what it held.
 * Returns 0 or TETHER_ENOMEM. Thread: any.
 */
TETHER_EXPORT int tether_error_set(tether_error *error, const char *type, const char *format, ...)
    TETHER_PRINTF(3, 4);

/* ---------------------------------------------------------------------------------
 * Values
 *
 * A tether_value is an immutable msgpack value, reference counted. Values are built
 * and read with format strings, one character per item:
 *
 *   char  msgpack   build argument            read argument
 *   n     nil       (none)                    (none; checks nil)
 *   b     bool      int                       bool *
 *   i     int       int                       int * (range checked)
 *   x     int       int64_t                   int64_t *
 *   u     int >= 0  uint64_t                  uint64_t *
 *   d     float     double                    double * (integers convert)
 *   s     str       const char * (NULL: nil)  const char ** NUL-terminated, lives as
 *                                             long as the value (nil reads as NULL)
 *   S     str       const char *, size_t      const char **, size_t *
 *   y     bin       const void *, size_t      const void **, size_t * (a buffer's
 *                                             bytes too, read-only)
 *   B     buffer    tether_buffer * (NULL:    tether_buffer ** (a new reference): bytes
 *                   nil)                      in shared memory, see "Buffers" below
 *   v     any       tether_value *            tether_value ** (a new reference)
 *   o     REF ext   tether_object *           tether_object ** (a new reference): an
 *                   (NULL: nil)               object by reference, see "Objects" below
 *   [ ]   array     items between             items between; counts must match
 *   { }   map       key, value, ...           key, value, ...; counts must match
 *   *     any       -                         (none; skips one item)
 *
 * Strings are UTF-8 on the wire (docs/protocol.md): an "s" or "S" argument that is not
 * valid UTF-8 is refused with TETHER_EINVAL, and so is a method name; text meant for a
 * person (an error's message, a log record) is sent with each invalid byte replaced by
 * U+FFFD instead.
 *
 * ------------------------------------------------------------------------------- */

typedef struct tether_value tether_value;

/*
 * Build a value from a format describing exactly one item (use "[...]" for several).
 * Returns 0, TETHER_EINVAL (bad format, unbalanced brackets, a string not UTF-8),
 * TETHER_ENOMEM.
 * Thread: any.
 */
TETHER_EXPORT int tether_value_new(tether_value **ret, const char *format, ...);
TETHER_EXPORT int tether_value_newv(tether_value **ret, const char *format, va_list ap);

/*
 * Make a value from encoded msgpack bytes (copied). The bytes must hold exactly one
 * well-formed value within the default nesting limit, its strings valid UTF-8:
 * TETHER_EPROTO otherwise. An ext of type TETHER_MSGPACK_EXT_BUFFER is refused with
 * TETHER_EINVAL: a buffer travels with a value that holds it ("B"), not as bytes.
 * Thread: any.
 */
TETHER_EXPORT int tether_value_new_msgpack(const void *data, size_t size, tether_value **ret);

/* Take a reference; drop one (accepts NULL, returns NULL). Thread: any. */
TETHER_EXPORT tether_value *tether_value_ref(tether_value *value);
TETHER_EXPORT tether_value *tether_value_unref(tether_value *value);

/*
 * Read the value according to a format describing exactly one item. On a mismatch
 * returns TETHER_EINVAL and, when reterr is not NULL, puts a "TypeError" with a message
 * naming the position and both types into it (for example "item 2: expected int, got
 * str"). Pointers read out ("s", "S", "y") stay valid while the value lives.
 * Thread: any, one thread at a time per value.
 */
TETHER_EXPORT int tether_value_read(tether_value *value, tether_error *reterr,
                                    const char *format, ...);
TETHER_EXPORT int tether_value_readv(tether_value *value, tether_error *reterr,
                                     const char *format, va_list ap);

/* The encoded msgpack bytes of the value (borrowed). Thread: any. */
TETHER_EXPORT int tether_value_get_msgpack(const tether_value *value, const void **ret_data,
                                           size_t *ret_size);

/*
 * What a value holds, without decoding its msgpack bytes: its type, the count of an
 * array (elements), map (pairs), str or bin (bytes), and the items of an array or map.
 * Scalars are read with tether_value_read(value, NULL, "i", &x) and the like.
 */
typedef enum tether_type {
    TETHER_TYPE_NIL = 0,
    TETHER_TYPE_BOOL = 1,
    TETHER_TYPE_INT = 2, /* signed or unsigned, up to 64 bits */
    TETHER_TYPE_FLOAT = 3,
    TETHER_TYPE_STR = 4,
    TETHER_TYPE_BIN = 5,
    TETHER_TYPE_ARRAY = 6,
    TETHER_TYPE_MAP = 7,
    TETHER_TYPE_OBJECT = 8, /* an object by reference: read it with "o" */
    TETHER_TYPE_ERROR = 9,  /* an error ([type, message, traceback]) */
    TETHER_TYPE_EXT = 10,   /* another msgpack ext */
    TETHER_TYPE_BUFFER = 11, /* bytes in shared memory: read with "B", or "y" for the bytes */
} tether_type;

/* The type of the value: a tether_type (>= 0), or TETHER_EINVAL for NULL. Thread: any. */
TETHER_EXPORT int tether_value_get_type(const tether_value *value);

/*
 * The number of elements of an array, of key/value pairs of a map, of bytes of a str
 * or bin. Returns 0, or TETHER_EINVAL for a value of another type. Thread: any.
 */
TETHER_EXPORT int tether_value_get_count(const tether_value *value, size_t *ret_count);

/*
 * Item index of an array, or of a map's keys and values in order (item 2k is the key of
 * pair k, item 2k + 1 its value), as a new value (release it) holding the objects inside
 * it. Each call walks the items before index: to go through a long array, read it with
 * a format or decode tether_value_get_msgpack() instead. Returns 0, TETHER_EINVAL (not
 * an array or map), TETHER_ENOENT (index past the end), TETHER_ENOMEM. Thread: any.
 */
TETHER_EXPORT int tether_value_get_item(const tether_value *value, size_t index,
                                        tether_value **ret_item);

/*
 * Render the value as JSON-like text for people (bytes as b"...", ext values by kind),
 * NUL-terminated, newly allocated; free() it. Returns 0 or TETHER_ENOMEM. Thread: any.
 */
TETHER_EXPORT int tether_value_to_string(const tether_value *value, char **ret_text);

/* ---------------------------------------------------------------------------------
 * Buffers: big data through shared memory
 *
 * A tether_buffer is bytes in shared memory (a sealed memfd on Linux) of a size fixed
 * when it is made. Sent as an argument or a result ("B" in formats, or a value holding
 * one), it travels as its descriptor beside the frame on a Unix socket or a spawned
 * child's socket pair (protocol version 2), however big: nothing is copied, and the
 * receiver maps the same memory read-only. Over TCP, or to a peer of version 1, its bytes
 * travel inline as a bin, within the frame size limit; the receiver then reads a bin,
 * not a buffer (TETHER_TYPE_BIN; "y" reads either).
 *
 * The memory is shared, not copied: the sender may write a buffer it made after sending
 * it (to fill the next frame of a stream, say), and the receiver then sees those writes.
 * Reuse a buffer only once the receiver is done with it (its reply came), or make a new
 * one. No writes of either side can make the other fault: the size is sealed.
 *
 * Making a new one each time costs little: the receiver tells the sender when it no
 * longer maps a buffer (when its last reference goes; a Python script's, when the last
 * array or view over it goes), and once nothing here references it either, its memory is
 * kept and given to the next tether_buffer_new() of the same size (up to 16 buffers and
 * 256 MiB; fresh shared memory costs a page fault per page on first write). Memory sent
 * to a peer whose connection closed before it said so is never reused. A receiver keeps
 * its mappings the same way while the connection is open, and a buffer that arrives
 * with memory it mapped before takes that mapping: a stream of buffers costs neither new
 * memory nor new mappings. A receiver
 * maps at most max_buffer_bytes (tether_host_options, tether_client_options; 1 GiB) of one
 * connection's buffers at once: a call whose buffers would pass it fails with an error
 * (TETHER_EREMOTE at the caller), and the connection goes on.
 * ------------------------------------------------------------------------------- */

typedef struct tether_buffer tether_buffer;

/* The highest wire protocol version this build speaks: TETHER_PROTOCOL_VERSION, or 1
 * on a platform without sealable shared memory (the portable build), where buffers
 * cannot travel as descriptors. Thread: any. */
TETHER_EXPORT uint32_t tether_protocol_version(void);

/*
 * Make a buffer of size bytes (0 allowed), zero-filled, writable through
 * tether_buffer_get_writable(). Returns 0, TETHER_ENOMEM, or TETHER_ENOTSUP where the
 * platform has no sealable shared memory (the portable build): send a bin there.
 * Thread: any.
 */
TETHER_EXPORT int tether_buffer_new(size_t size, tether_buffer **ret);
/*
 * The same without zeroing: the bytes are whatever they were, for a writer that fills
 * every one. Buffers of this process that no peer maps any more are reused by both (a
 * stream of same-sized buffers allocates its memory once; see "Buffers" above).
 * Thread: any.
 */
TETHER_EXPORT int tether_buffer_new_uninitialized(size_t size, tether_buffer **ret);
/* Take a reference; drop one (accepts NULL, returns NULL). The memory is unmapped with
 * the last reference, values holding the buffer included (kept for reuse, when made
 * here and no peer maps it). Thread: any. */
TETHER_EXPORT tether_buffer *tether_buffer_ref(tether_buffer *buffer);
TETHER_EXPORT tether_buffer *tether_buffer_unref(tether_buffer *buffer);
/* The bytes, valid while the buffer lives; NULL for size 0. Thread: any. */
TETHER_EXPORT const void *tether_buffer_get_data(const tether_buffer *buffer);
/* The bytes, writable, of a buffer made by tether_buffer_new; NULL for one received
 * (mapped read-only) and for size 0. Thread: any (writes are the caller's to order). */
TETHER_EXPORT void *tether_buffer_get_writable(tether_buffer *buffer);
/* The size in bytes. Thread: any. */
TETHER_EXPORT size_t tether_buffer_get_size(const tether_buffer *buffer);
/*
 * Tell the receiver what the bytes of a buffer made here are: an array of elements of
 * format, one native character of Python's struct module ('B' uint8_t, 'b' int8_t, 'H'
 * uint16_t, 'i' int32_t, 'I' uint32_t, 'q' int64_t, 'f' float, 'd' double, 'e' a half
 * float, '?' bool; also 'h', 'l', 'L', 'Q', 'n', 'N'), in C order of ndim dimensions
 * (at most TETHER_BUFFER_MAX_DIMS; 0 for one element); format 0 makes it plain bytes
 * again. The elements must fill the buffer exactly. A Python receiver gets a numpy array
 * of that dtype and shape (a memoryview of them without numpy); the BUFFER carries
 * [size, format, shape] (docs/protocol.md "Buffers"). Returns 0, TETHER_EINVAL (an
 * unknown format, a shape that does not fill the size, a buffer received). Thread: any,
 * but not while a send of the buffer is being written.
 */
#define TETHER_BUFFER_MAX_DIMS 32
TETHER_EXPORT int tether_buffer_set_array(tether_buffer *buffer, char format, const size_t *shape,
                                          size_t ndim);
/* The memory's descriptor (a memfd), borrowed: valid while the buffer lives; for a binding
 * that maps it in its own way (Python's mmap) or hands it on. Thread: any. */
TETHER_EXPORT int tether_buffer_get_fd(const tether_buffer *buffer);
/*
 * The buffers a value holds, in the order their BUFFER exts appear in its bytes
 * (borrowed, live as long as the value); for readers that decode the msgpack bytes
 * themselves, where a buffer is an ext of type TETHER_MSGPACK_EXT_BUFFER. Thread: any.
 */
TETHER_EXPORT int tether_value_get_buffers(const tether_value *value,
                                           tether_buffer *const **ret_buffers, size_t *ret_count);

/* ---------------------------------------------------------------------------------
 * Time and logging
 * ------------------------------------------------------------------------------- */

/* CLOCK_MONOTONIC now, in microseconds: the clock of every deadline_usec. Thread: any. */
TETHER_EXPORT uint64_t tether_now_usec(void);

/* Timeout values with special meaning wherever a timeout_usec is taken. */
#define TETHER_TIMEOUT_DEFAULT 0            /* the object's configured default */
#define TETHER_TIMEOUT_INFINITE UINT64_MAX  /* never time out */

/* syslog-compatible levels. */
enum {
    TETHER_LOG_ERROR = 3,
    TETHER_LOG_WARNING = 4,
    TETHER_LOG_NOTICE = 5,
    TETHER_LOG_INFO = 6,
    TETHER_LOG_DEBUG = 7,
};

/*
 * A log callback: one line of text, no trailing newline, borrowed for the call. Called
 * from the I/O thread or from the thread that made the API call being logged, never
 * with a library lock held.
 */
typedef void (*tether_log_fn)(void *userdata, int level, const char *message);

/* ---------------------------------------------------------------------------------
 * Services, requests and execution contexts
 * ------------------------------------------------------------------------------- */

/* Where a service handler or a completion callback runs. Values never change. */
typedef enum tether_context {
    /* On the I/O thread, as soon as the request is read. Must not block. */
    TETHER_CONTEXT_IO = 1,
    /* On the owner's main thread, inside tether_host_dispatch / tether_client_dispatch. */
    TETHER_CONTEXT_MAIN = 2,
    /* On one of tether's worker threads (TETHER_POOL_SIZE, else UV_THREADPOOL_SIZE, else
     * 4 at most); may block. */
    TETHER_CONTEXT_POOL = 3,
    /* Future callbacks only: on whichever thread completes the future, the I/O thread or
     * one that reads the connection (a synchronous caller, a main thread waiting for its
     * work). Must not block; for a callback that only hands the result on. */
    TETHER_CONTEXT_ANY = 4,
} tether_context;

typedef struct tether_conn tether_conn;
typedef struct tether_request tether_request;

/*
 * A service handler. It reads the arguments from req, and replies with one of the
 * tether_request_reply*() functions, either before returning or later, from any thread,
 * after taking a reference with tether_request_ref(). If it returns without replying
 * and without holding a reference: a return of 0 replies nil; a negative code replies
 * an error (a "TypeError" with the reader's message after a failed
 * tether_request_read(), otherwise "tether.Error" with tether_strerror(code)).
 * Notifications reach the same handler; their replies are discarded.
 */
typedef int (*tether_handler_fn)(tether_request *req, void *userdata);

/*
 * Read the request's positional arguments with a format listing one item per argument
 * (as if wrapped in "[...]"): the argument count must match. On a mismatch returns
 * TETHER_EINVAL and remembers a TypeError message that a handler returning this code
 * sends back. Thread: whichever thread holds the request.
 */
TETHER_EXPORT int tether_request_read(tether_request *req, const char *format, ...);

/*
 * The positional arguments (an array) and keyword arguments (a map), borrowed; made on
 * first use. Thread: whichever thread holds the request, one at a time.
 */
TETHER_EXPORT tether_value *tether_request_get_args(tether_request *req);
TETHER_EXPORT tether_value *tether_request_get_kwargs(tether_request *req);
/* How many keyword arguments the request has, without making the value (a handler that
 * takes none refuses them cheaply). Thread: any. */
TETHER_EXPORT int tether_request_get_kwargs_count(const tether_request *req);
/* The service or method name, NUL-terminated, borrowed. Thread: any. */
TETHER_EXPORT const char *tether_request_get_method(const tether_request *req);
/* The connection the request came from, borrowed. Thread: any. */
TETHER_EXPORT tether_conn *tether_request_get_conn(const tether_request *req);
/* For a method call on an exported object, that object (borrowed); NULL for services.
 * Thread: any. */
TETHER_EXPORT struct tether_object *tether_request_get_object(const tether_request *req);
/* 1 for a notification (no reply is sent), 0 for a call. Thread: any. */
TETHER_EXPORT int tether_request_is_notification(const tether_request *req);
/* 1 once the caller has cancelled the call or its connection is gone, else 0.
 * Thread: any. */
TETHER_EXPORT int tether_request_is_cancelled(const tether_request *req);

/*
 * Reply with a value built from a format describing one item (NULL format: nil),
 * with a built value (NULL: nil), or with an error of the given type name and printf
 * message. A request is replied to once: a second reply returns TETHER_EALREADY.
 * Replying to a cancelled call or a notification succeeds and sends nothing.
 * Returns 0, TETHER_EALREADY, TETHER_EINVAL, TETHER_ENOMEM. Thread: any.
 */
TETHER_EXPORT int tether_request_reply(tether_request *req, const char *format, ...);
TETHER_EXPORT int tether_request_reply_value(tether_request *req, tether_value *result);
TETHER_EXPORT int tether_request_reply_error(tether_request *req, const char *type,
                                             const char *format, ...) TETHER_PRINTF(3, 4);

/*
 * Reply with an error given as a tether_error: type (required), message and traceback
 * text (either may be NULL), for example one received from another call that the
 * handler passes on, or a script's exception with its traceback. Same returns as
 * tether_request_reply_error. Thread: any.
 */
TETHER_EXPORT int tether_request_reply_error_full(tether_request *req, const tether_error *error);

/*
 * Keep a request beyond the handler's return, to reply later. While a request is held
 * and unreplied, the library tells the caller that the call is alive, so the caller's
 * silence timeout does not expire. Unref'ing an unreplied request replies an error
 * "tether.Error: handler dropped the request". Thread: any.
 */
TETHER_EXPORT tether_request *tether_request_ref(tether_request *req);
TETHER_EXPORT tether_request *tether_request_unref(tether_request *req);

/* ---------------------------------------------------------------------------------
 * Calls and futures
 * ------------------------------------------------------------------------------- */

typedef struct tether_future tether_future;

typedef struct tether_call_options {
    /*
     * Bound on silence: the call fails with TETHER_ETIMEDOUT when nothing about it has
     * been heard from the callee for this long. A callee that is still working sends
     * progress, so a long live call is not cut off. 0: the connection's default
     * (30 s unless configured); TETHER_TIMEOUT_INFINITE: none.
     */
    uint64_t timeout_usec;
    /* Absolute CLOCK_MONOTONIC bound on the whole call; 0: none. */
    uint64_t deadline_usec;
    /*
     * On a client's connection while it is reconnecting to its host: wait (up to the
     * timeout) for the host to be back instead of failing at once with
     * TETHER_ENOTCONN.
     */
    bool wait_for_connection;
    /*
     * Synchronous calls only: while the call waits, interrupt(interrupt_userdata) is
     * called on the waiting thread about every interrupt_interval_usec (0: 50 ms),
     * never with a library lock held; a nonzero return cancels the call (the callee is
     * told), which then fails with TETHER_ECANCELED. For callers that must notice
     * signals (an interpreter's Ctrl-C) without leaving the synchronous path. NULL: none.
     */
    int (*interrupt)(void *interrupt_userdata);
    void *interrupt_userdata;
    uint64_t interrupt_interval_usec;
    /*
     * Asynchronous calls only: leave the request in the connection's output for this
     * thread to send with others, in one write, with tether_conn_flush() (a
     * tether_future_wait() on a future of the connection flushes first, and so does
     * any call or notification sent without batch). A pipelining caller then writes
     * once per batch and wakes nobody, where each request would otherwise wake the I/O
     * thread to write it. A call alone in flight goes out at once all the same, and
     * over 64 KiB held the I/O thread writes them. Forgetting to flush leaves the
     * requests unsent (their timeouts run).
     */
    bool batch;
} tether_call_options;

/*
 * Call method on the peer and wait for the result. The format lists the positional
 * arguments, one item each (as if wrapped in "[...]"); NULL or "" means none.
 * On success returns 0 and stores a new reference to the result in *ret_result
 * (release with tether_value_unref; pass NULL to discard it). On failure returns:
 * TETHER_EREMOTE (the handler failed: *reterr holds type, message, traceback),
 * TETHER_ENOENT (no such service), TETHER_ETIMEDOUT, TETHER_ECONNRESET (connection lost
 * during the call), TETHER_ENOTCONN, TETHER_EMSGSIZE (arguments over the frame limit),
 * TETHER_ENOBUFS (calls waiting for room in the peer's in-flight window, or output
 * queued for the peer, would pass max_output_bytes; a call beyond the peer's window
 * waits on this side for room, its timeout running), TETHER_ELOOP (nested too deep),
 * TETHER_EDEADLK (made from an IO handler, which would block the I/O thread),
 * TETHER_EINVAL; reterr (may be NULL) is then filled with a type name and a message for
 * every failure.
 * Thread: any (several threads may call concurrently on one connection).
 */
TETHER_EXPORT int tether_conn_call(tether_conn *conn, const char *method,
                                   const tether_call_options *options, tether_value **ret_result,
                                   tether_error *reterr, const char *format, ...);

/* Same with prebuilt arguments: args an array (NULL: none), kwargs a map (NULL: none).
 * Thread: any. */
TETHER_EXPORT int tether_conn_call_values(tether_conn *conn, const char *method,
                                          tether_value *args, tether_value *kwargs,
                                          const tether_call_options *options,
                                          tether_value **ret_result, tether_error *reterr);

/*
 * Start a call and return at once with a future for its outcome (release with
 * tether_future_unref; unref'ing a pending future does not cancel the call, use
 * tether_future_cancel). Errors found before sending are returned here and no future
 * is made. Thread: any.
 */
TETHER_EXPORT int tether_conn_call_async(tether_conn *conn, const char *method,
                                         const tether_call_options *options,
                                         tether_future **ret_future, const char *format, ...);
TETHER_EXPORT int tether_conn_call_async_values(tether_conn *conn, const char *method,
                                                tether_value *args, tether_value *kwargs,
                                                const tether_call_options *options,
                                                tether_future **ret_future);

/*
 * Write the requests of batch calls (tether_call_options.batch) held for this
 * connection now. Returns 0, TETHER_ENOTCONN, TETHER_ECONNRESET (the write failed: the
 * connection closed), TETHER_EINVAL. Thread: any.
 */
TETHER_EXPORT int tether_conn_flush(tether_conn *conn);

/*
 * Send a notification: the peer runs method and sends nothing back. Returns once the
 * frame is queued: 0, TETHER_ENOTCONN, TETHER_EMSGSIZE, TETHER_ENOBUFS (output to a
 * peer that does not read is over max_output_bytes), TETHER_EINVAL. Thread: any.
 */
TETHER_EXPORT int tether_conn_notify(tether_conn *conn, const char *method, const char *format,
                                     ...);
TETHER_EXPORT int tether_conn_notify_values(tether_conn *conn, const char *method,
                                            tether_value *args, tether_value *kwargs);

/*
 * Arguments as msgpack bytes, for bindings that encode their own (the Python package
 * does): args one array, kwargs one map (NULL: none), with any object by reference
 * written by tether_object_get_msgpack() and listed, in the order they appear, in
 * args_objects or kwargs_objects. The bytes are checked once (well formed, nested no
 * deeper than a frame allows, references matching the objects) and copied once, into
 * the frame (a synchronous call's args of 64 KiB or more are sent from where they are,
 * and what is unsent when it returns is copied then); nothing is kept after the call
 * returns. Borrowed for the call.
 */
typedef struct tether_msgpack_args {
    const void *args;
    size_t args_size;
    const void *kwargs;
    size_t kwargs_size;
    struct tether_object *const *args_objects;
    size_t args_object_count;
    struct tether_object *const *kwargs_objects;
    size_t kwargs_object_count;
} tether_msgpack_args;

/*
 * tether_conn_call, tether_conn_call_async and tether_conn_notify (and the same for a
 * proxied object's method) with arguments as msgpack bytes; args may be NULL (none).
 * Same returns, plus TETHER_EPROTO for malformed bytes and TETHER_EINVAL when args is
 * not an array, kwargs not a map, or references and objects disagree. Thread: any.
 */
TETHER_EXPORT int tether_conn_call_msgpack(tether_conn *conn, const char *method,
                                           const tether_msgpack_args *args,
                                           const tether_call_options *options,
                                           tether_value **ret_result, tether_error *reterr);
TETHER_EXPORT int tether_conn_call_async_msgpack(tether_conn *conn, const char *method,
                                                 const tether_msgpack_args *args,
                                                 const tether_call_options *options,
                                                 tether_future **ret_future);
TETHER_EXPORT int tether_conn_notify_msgpack(tether_conn *conn, const char *method,
                                             const tether_msgpack_args *args);

/*
 * Send a log record to the peer, which passes it to its log callback as
 * "[NAME pid PID] LOGGER: MESSAGE" at that level (TETHER_LOG_ERROR..TETHER_LOG_DEBUG).
 * logger may be NULL (""). Returns once queued: 0, TETHER_ENOTCONN, TETHER_EINVAL,
 * TETHER_EMSGSIZE, TETHER_ENOBUFS. Thread: any.
 */
TETHER_EXPORT int tether_conn_log(tether_conn *conn, int level, const char *logger,
                                  const char *message);

/* 1 once the future has its outcome, else 0. Thread: any. */
TETHER_EXPORT int tether_future_is_ready(tether_future *future);

/*
 * Wait until the future is ready or timeout_usec passes (TETHER_TIMEOUT_INFINITE:
 * forever; 0: do not wait), after writing the requests batch calls hold for its
 * connection (tether_call_options.batch). While no other thread reads the connection,
 * the waiting thread reads the answers itself (of every call, not only this one), so
 * that pipelined calls waited for in turn wake no other thread. Returns 0 when ready,
 * TETHER_ETIMEDOUT otherwise; the call itself goes on. Thread: any.
 */
TETHER_EXPORT int tether_future_wait(tether_future *future, uint64_t timeout_usec);

/*
 * The outcome of a ready future, with the same codes as tether_conn_call:
 * 0 and a new reference in *ret_result (may be NULL), or a negative code and reterr
 * (may be NULL) filled. TETHER_EINPROGRESS if not ready. Thread: any.
 */
TETHER_EXPORT int tether_future_get_result(tether_future *future, tether_value **ret_result,
                                           tether_error *reterr);

/*
 * Cancel a pending call: the future completes at once with TETHER_ECANCELED and the
 * callee is told to stop. Returns 0, or TETHER_EALREADY if it had completed.
 * Thread: any.
 */
TETHER_EXPORT int tether_future_cancel(tether_future *future);

typedef void (*tether_future_fn)(tether_future *future, void *userdata);

/*
 * Have fn called once the future is ready. TETHER_CONTEXT_IO: on the I/O thread (must
 * not block), or at once on the calling thread if the future is already ready.
 * TETHER_CONTEXT_ANY: on the thread that completes it (must not block), or at once.
 * TETHER_CONTEXT_MAIN: inside the dispatch of the host or client that made the call,
 * on its main thread, even if the future is ready already. TETHER_CONTEXT_POOL is not
 * accepted (TETHER_EINVAL). The future is borrowed for the callback. One callback per
 * future: TETHER_EALREADY for a second one. Thread: any.
 */
TETHER_EXPORT int tether_future_set_callback(tether_future *future, tether_context context,
                                             tether_future_fn fn, void *userdata);

typedef void (*tether_future_discard_fn)(void *userdata);

/*
 * tether_future_set_callback, and discard(userdata) called instead of fn when fn will
 * never run: a TETHER_CONTEXT_MAIN callback still queued when its host stops or its
 * client goes (tether_host_stop, tether_client_close, the last unref), on the thread
 * that stops it. Exactly one of fn and discard runs, so that what userdata holds can be
 * freed by either. discard may be NULL. Thread: any.
 */
TETHER_EXPORT int tether_future_set_callback_full(tether_future *future, tether_context context,
                                                  tether_future_fn fn, void *userdata,
                                                  tether_future_discard_fn discard);

/* Take a reference; drop one (unref cancels nothing; accepts NULL, returns NULL). Thread: any. */
TETHER_EXPORT tether_future *tether_future_ref(tether_future *future);
TETHER_EXPORT tether_future *tether_future_unref(tether_future *future);

/* ---------------------------------------------------------------------------------
 * Objects: values that travel by reference
 *
 * Plain data travels by value; an object travels by reference. A tether_object is
 * either a local object this process exports, made from a class description with
 * tether_host_new_object() or tether_client_new_object(), or a proxy for an object of
 * the peer, received in a value. Both go into values with the format character "o"
 * (tether_value_new, call arguments, replies) and come out of them with "o" as well.
 *
 * - A local object sent to a peer stays alive (the library holds a reference for it)
 *   until the peer has released every proxy it holds, or the connection closes. The
 *   class's release callback runs once the last reference anywhere is gone: the
 *   application's own, those of values holding it, and the peers'.
 * - The peer calls methods on it (tether_object_call on a proxy, a method call on a
 *   Python proxy): the request reaches the class's handler for that method, in that
 *   method's context, with the object's userdata; tether_request_get_object() names it.
 * - A proxy received back by its owner resolves to the original local object.
 * - A proxy can be passed back to its own connection only; sending it elsewhere fails
 *   with TETHER_EINVAL. When the last reference to a proxy goes, the library tells the
 *   peer (releases are batched).
 * ------------------------------------------------------------------------------- */

typedef struct tether_object tether_object;

/* One method of a class: called with the object's userdata. */
typedef struct tether_method {
    const char *name;
    tether_context context; /* where it runs; 0 means TETHER_CONTEXT_IO */
    tether_handler_fn handler;
} tether_method;

/* Called once, when the last reference to a local object is gone. */
typedef void (*tether_release_fn)(void *userdata);

/*
 * A class description. The library keeps pointers into it (not a copy): it must
 * outlive every object of the class, as a static const struct does.
 */
typedef struct tether_class {
    /* The type name peers see (a Python proxy's repr shows it). */
    const char *name;
    /* Methods, in an array ended by an entry whose name is NULL; NULL: none. */
    const tether_method *methods;
    /*
     * Handler for any method not in the table (tether_request_get_method names it), in
     * fallback_context; NULL: such a call fails with an "AttributeError". Without a
     * fallback the library itself answers "__tether_describe__" (docs/protocol.md),
     * listing the table's methods but not its "__name__" operations.
     */
    tether_handler_fn fallback;
    tether_context fallback_context;
    /*
     * Where release runs: 0 (or TETHER_CONTEXT_IO) on the thread that drops the last
     * reference, which may be the I/O thread (must not block); TETHER_CONTEXT_MAIN
     * inside the owner's dispatch; TETHER_CONTEXT_POOL on a worker thread. NULL release:
     * nothing to do.
     */
    tether_release_fn release;
    tether_context release_context;
} tether_class;

/*
 * Local objects are made with tether_host_new_object() and tether_client_new_object(),
 * or with tether_conn_new_object(), owned by the host or client of a connection (for
 * code that has only the connection at hand, such as a handler). Same returns.
 * Thread: any.
 */
TETHER_EXPORT int tether_conn_new_object(tether_conn *conn, const tether_class *cls,
                                         void *userdata, tether_object **ret_object);

/* Take a reference; drop one (accepts NULL, returns NULL). Thread: any. */
TETHER_EXPORT tether_object *tether_object_ref(tether_object *object);
TETHER_EXPORT tether_object *tether_object_unref(tether_object *object);

/*
 * A new reference to object, unless its last reference is already gone and its
 * release is under way: then NULL. For caches that map application objects to
 * tether objects without holding a reference themselves. Thread: any.
 */
TETHER_EXPORT tether_object *tether_object_ref_live(tether_object *object);

/* 1 for a proxy to a peer's object, 0 for a local object. Thread: any. */
TETHER_EXPORT int tether_object_is_remote(const tether_object *object);
/* A local object's userdata; NULL for a proxy. Thread: any. */
TETHER_EXPORT void *tether_object_get_userdata(const tether_object *object);
/* The class name (local) or the type name the owner sent (proxy), borrowed.
 * Thread: any. */
TETHER_EXPORT const char *tether_object_get_type_name(const tether_object *object);
/* The object's id on the wire: unique in its owner's process. Thread: any. */
TETHER_EXPORT uint64_t tether_object_get_id(const tether_object *object);
/* A proxy's connection (borrowed), NULL for a local object. Thread: any. */
TETHER_EXPORT tether_conn *tether_object_get_conn(const tether_object *object);

/*
 * Call a method of a proxied object, as tether_conn_call does for a service (same
 * arguments, returns and threads). method NULL calls the object itself ("__call__").
 * On a local object returns TETHER_EINVAL. A proxy whose connection is gone fails
 * with TETHER_ENOTCONN: the object it named is gone with it (a client's reconnect does
 * not carry proxies over). An object the peer no longer has gives TETHER_ENOENT.
 * tether_object_call_async and tether_object_notify are tether_conn_call_async and
 * tether_conn_notify for a proxied object's method, the _values and _msgpack forms the
 * same with prebuilt arguments. Thread: any.
 */
TETHER_EXPORT int tether_object_call(tether_object *object, const char *method,
                                     const tether_call_options *options,
                                     tether_value **ret_result, tether_error *reterr,
                                     const char *format, ...);
TETHER_EXPORT int tether_object_call_values(tether_object *object, const char *method,
                                            tether_value *args, tether_value *kwargs,
                                            const tether_call_options *options,
                                            tether_value **ret_result, tether_error *reterr);
TETHER_EXPORT int tether_object_call_async_values(tether_object *object, const char *method,
                                                  tether_value *args, tether_value *kwargs,
                                                  const tether_call_options *options,
                                                  tether_future **ret_future);
TETHER_EXPORT int tether_object_call_async(tether_object *object, const char *method,
                                           const tether_call_options *options,
                                           tether_future **ret_future, const char *format, ...);
TETHER_EXPORT int tether_object_notify(tether_object *object, const char *method,
                                       const char *format, ...);
TETHER_EXPORT int tether_object_notify_values(tether_object *object, const char *method,
                                              tether_value *args, tether_value *kwargs);
TETHER_EXPORT int tether_object_call_msgpack(tether_object *object, const char *method,
                                             const tether_msgpack_args *args,
                                             const tether_call_options *options,
                                             tether_value **ret_result, tether_error *reterr);
TETHER_EXPORT int tether_object_call_async_msgpack(tether_object *object, const char *method,
                                                   const tether_msgpack_args *args,
                                                   const tether_call_options *options,
                                                   tether_future **ret_future);
TETHER_EXPORT int tether_object_notify_msgpack(tether_object *object, const char *method,
                                               const tether_msgpack_args *args);

/*
 * The objects a value holds, in the order their REF exts appear in its bytes
 * (borrowed, live as long as the value); for readers that decode the msgpack bytes
 * themselves. Thread: any.
 */
TETHER_EXPORT int tether_value_get_objects(const tether_value *value,
                                           tether_object *const **ret_objects,
                                           size_t *ret_count);

/*
 * In the msgpack bytes of a value, an object by reference is one msgpack ext of this
 * type; what its payload holds is the library's business. Readers of the bytes take the
 * objects in order from tether_value_get_objects(); writers get the bytes of an object
 * from tether_object_get_msgpack().
 */
#define TETHER_MSGPACK_EXT_OBJECT 1
/* A buffer (protocol version 2): read it with tether_value_get_buffers(). */
#define TETHER_MSGPACK_EXT_BUFFER 3

/*
 * The msgpack bytes that stand for object inside a value, written to buf (size bytes);
 * *ret_len gets their length, also when buf is too small. Returns 0, TETHER_EINVAL,
 * TETHER_EMSGSIZE (buf too small: call again with *ret_len bytes), TETHER_ENOMEM.
 * Thread: any.
 */
TETHER_EXPORT int tether_object_get_msgpack(const tether_object *object, void *buf, size_t size,
                                            size_t *ret_len);

/*
 * Make a value from msgpack bytes that contain objects by reference, written with
 * tether_object_get_msgpack(), giving the objects in the order they appear (the value
 * takes its own references). tether_value_new_msgpack refuses such bytes, which would
 * name objects nobody holds. Returns 0, TETHER_EPROTO (malformed bytes), TETHER_EINVAL
 * (the references and objects disagree), TETHER_ENOMEM. Thread: any.
 */
TETHER_EXPORT int tether_value_new_msgpack_objects(const void *data, size_t size,
                                                   tether_object *const *objects, size_t count,
                                                   tether_value **ret);
/*
 * The same for bytes that also hold buffers (protocol version 2): each BUFFER ext,
 * written as docs/protocol.md "Buffers" gives it, names the next of buffers, whose size it
 * must give (the value takes its own references). Returns as above; TETHER_EINVAL also
 * when the BUFFER exts and the buffers disagree. Thread: any.
 */
TETHER_EXPORT int tether_value_new_msgpack_buffers(const void *data, size_t size,
                                                   tether_object *const *objects, size_t count,
                                                   tether_buffer *const *buffers,
                                                   size_t buffer_count, tether_value **ret);

/* ---------------------------------------------------------------------------------
 * Connections
 * ------------------------------------------------------------------------------- */

/* Take a reference; drop one (accepts NULL, returns NULL). Thread: any. */
TETHER_EXPORT tether_conn *tether_conn_ref(tether_conn *conn);
TETHER_EXPORT tether_conn *tether_conn_unref(tether_conn *conn);

/* The peer's name as sent in its handshake, borrowed (lives with conn). Thread: any. */
TETHER_EXPORT const char *tether_conn_get_peer_name(const tether_conn *conn);
/* The peer's process id as sent in its handshake. Thread: any. */
TETHER_EXPORT int64_t tether_conn_get_peer_pid(const tether_conn *conn);
/* The peer's language and its version ("c", "python" / "3.11.2"), borrowed.
 * Thread: any. */
TETHER_EXPORT const char *tether_conn_get_peer_language(const tether_conn *conn);
TETHER_EXPORT const char *tether_conn_get_peer_language_version(const tether_conn *conn);
/* 1 while the connection is open, 0 once closed or lost. Thread: any. */
TETHER_EXPORT int tether_conn_is_connected(const tether_conn *conn);

/*
 * Close the connection: pending calls on both sides fail (TETHER_ECANCELED here,
 * a lost connection at the peer). Returns 0 or TETHER_EALREADY. Thread: any.
 */
TETHER_EXPORT int tether_conn_close(tether_conn *conn);

/* ---------------------------------------------------------------------------------
 * Hosts
 * ------------------------------------------------------------------------------- */

typedef struct tether_host tether_host;

/* Events of tether_host_options.on_client. */
enum {
    TETHER_CLIENT_CONNECTED = 1, /* finished its handshake */
    TETHER_CLIENT_LEFT = 2,      /* its connection closed, for whatever reason */
};

/* Called on the host's main thread (inside its dispatch); conn is borrowed. */
typedef void (*tether_client_event_fn)(void *userdata, tether_conn *conn, int event);

/*
 * Called on the host's main thread (inside its dispatch) when a client announced a
 * service: one registered before it connected (announced as it connects) or after;
 * conn and name are borrowed.
 */
typedef void (*tether_client_service_fn)(void *userdata, tether_conn *conn, const char *name);

/* Built-in services (tether_host_options.builtin_services), all on the I/O thread. */
enum {
    /* tether.services() -> sorted names; tether.clients() -> [{"name", "pid",
     * "language", "language_version", "connected_since" (unix seconds),
     * "calls_in_flight", "calls_in", "calls_out", "bytes_in", "bytes_out", "services"
     * (the names it announced, sorted)}] */
    TETHER_BUILTIN_CLIENTS = 1 << 0,
    /* tether.reset_client(name), tether.disconnect_client(name): the client of that
     * name (names are unique, see tether_host_get_client), not the caller; LookupError
     * if none. */
    TETHER_BUILTIN_MANAGE = 1 << 1,
    /* tether.call_client(name, method, args=[], kwargs={}) -> that client's answer (its
     * error passed on, type included). Lets any client drive any other. The forwarded
     * call has the caller's silence timeout, and the caller's cancel (its deadline
     * passing included) cancels it; a notification is forwarded as a notification. */
    TETHER_BUILTIN_CALL_CLIENT = 1 << 2,
    TETHER_BUILTIN_ALL = TETHER_BUILTIN_CLIENTS | TETHER_BUILTIN_MANAGE | TETHER_BUILTIN_CALL_CLIENT,
};

/* Default loopback TCP port when TCP is enabled without a port. */
#define TETHER_DEFAULT_TCP_PORT 18861
/* tcp_port value asking the system for a free port (read it with tether_host_get_tcp_port). */
#define TETHER_PORT_EPHEMERAL (-1)

typedef struct tether_host_options {
    /* The host's name: its socket is <runtime_dir>/<name>.sock. NULL: "default". */
    const char *name;
    /* Directory for sockets and the token file, made 0700. NULL: $TETHER_RUNTIME_DIR,
     * else $XDG_RUNTIME_DIR/tether, else /tmp/tether-<uid>. */
    const char *runtime_dir;
    /* Unix socket path instead of <runtime_dir>/<name>.sock. */
    const char *unix_path;
    /* Do not listen on a Unix socket (TCP only, or socket pairs only). */
    bool no_unix;
    /* Also listen on TCP. tcp_port: 0 means 18861, TETHER_PORT_EPHEMERAL a free one. */
    bool tcp;
    int tcp_port;
    /* Address to bind: NULL means 127.0.0.1. Anything not loopback also needs
     * tcp_allow_remote, since the token is then the only protection. */
    const char *tcp_bind;
    bool tcp_allow_remote;

    /* Limits; 0 means the default in parentheses. */
    uint32_t max_frame_size;        /* bytes of one frame (16 MiB) */
    uint32_t max_in_flight;         /* requests a client may have running here (1024) */
    uint32_t max_clients;           /* connected clients (1024) */
    uint64_t handshake_timeout_usec; /* from accept to hello (5 s) */
    uint64_t max_output_bytes;      /* bytes queued to one slow reader (64 MiB) */
    /* Shared memory of one client's buffers mapped here at once (1 GiB): a frame whose
     * buffers would pass it is refused (the call fails), the connection stays. */
    uint64_t max_buffer_bytes;
    /* Default silence timeout of calls made to clients (30 s). */
    uint64_t default_timeout_usec;
    /* Synchronous calls one thread may have open inside each other through call-backs
     * (64); one more fails with TETHER_ELOOP. */
    uint32_t max_call_depth;
    /* How long tether_host_reset_client and tether_host_disconnect_client let the
     * client's calls in flight finish before they fail with tether.Closing (5 s). */
    uint64_t control_grace_usec;
    /*
     * Each client costs the host three file descriptors, so tether_host_start raises
     * the process's soft RLIMIT_NOFILE to its hard limit (a soft limit of 1024 would
     * admit about 330 clients). true: leave the limit as it is. Either way a peer that
     * arrives when descriptors run out is refused with "busy", not left unanswered.
     */
    bool keep_fd_limit;

    /*
     * Built-in services to offer every client (TETHER_BUILTIN_* flags; 0: none), for
     * tools such as the `tether` command line. Any client may call them: offer the
     * management ones only where every client is trusted to manage the others.
     */
    uint32_t builtin_services;

    /* Told when clients arrive and leave, on the main thread; NULL: not told. */
    tether_client_event_fn on_client;
    void *on_client_userdata;
    /* Told, on the main thread, of each service a client announces; NULL: not told
     * (tether_conn_has_service and tether_conn_wait_service know them either way). */
    tether_client_service_fn on_client_service;
    void *on_client_service_userdata;

    /* Diagnostics; NULL: none. */
    tether_log_fn log;
    void *log_userdata;
    /* Most verbose level passed to log (TETHER_LOG_INFO). */
    int log_level;
} tether_host_options;

/*
 * Make a host (not yet listening). The calling thread becomes the host's main thread.
 * Returns 0 and a host in *ret_host, TETHER_EINVAL, TETHER_ENOMEM. Thread: any.
 */
TETHER_EXPORT int tether_host_new(const tether_host_options *options, tether_host **ret_host);

/* Take a reference; drop one (accepts NULL, returns NULL). The last unref stops the host
 * as tether_host_stop does. Thread: any but a handler's (as tether_host_stop). */
TETHER_EXPORT tether_host *tether_host_ref(tether_host *host);
TETHER_EXPORT tether_host *tether_host_unref(tether_host *host);

/*
 * Register a service that clients call by name; context says where its handler runs.
 * Services may be added before or after start. Returns 0, TETHER_EEXIST, TETHER_EINVAL
 * (bad name or context), TETHER_ENOMEM. Thread: any.
 */
TETHER_EXPORT int tether_host_add_service(tether_host *host, const char *name,
                                          tether_context context, tether_handler_fn handler,
                                          void *userdata);

/*
 * Make a local object of class cls with userdata (see "Objects"), owned by the host:
 * its MAIN methods and a MAIN release run in the host's dispatch. Returns 0 and a new
 * reference in *ret_object, TETHER_EINVAL (no class or class name), TETHER_ENOMEM.
 * Thread: any.
 */
TETHER_EXPORT int tether_host_new_object(tether_host *host, const tether_class *cls,
                                         void *userdata, tether_object **ret_object);

/*
 * Start listening and serving on the I/O thread. Returns 0, TETHER_EALREADY,
 * TETHER_EADDRINUSE-like negated errno from bind (for example -EADDRINUSE when another
 * live host has the name), TETHER_EINVAL (tcp_bind not loopback without
 * tcp_allow_remote). A stale socket file of a dead host is replaced. Once listening,
 * a host on its socket in the runtime directory or on TCP writes its host file,
 * <runtime dir>/NAME.host (docs/protocol.md, section 2), by which clients find it by
 * name; failing to write it is logged, not fatal. Thread: any.
 */
TETHER_EXPORT int tether_host_start(tether_host *host);

/*
 * Stop listening, close every client connection (their pending calls fail) and remove
 * the host file, the socket file and the token file. No handler of the host's services
 * and objects starts after it, and it returns once those running on other threads have
 * returned: the userdata of its services may be freed then. Returns 0 or
 * TETHER_EALREADY. Thread: any but a handler's (from one, it does not wait).
 */
TETHER_EXPORT int tether_host_stop(tether_host *host);

/* "unix:/path" of the Unix listener, NULL if none; borrowed. Thread: any. */
TETHER_EXPORT const char *tether_host_get_address(const tether_host *host);
/* The TCP port listened on, TETHER_ENOTCONN if no TCP listener. Thread: any. */
TETHER_EXPORT int tether_host_get_tcp_port(const tether_host *host);
/* The path of the 0600 file holding the token TCP clients must present; borrowed.
 * Thread: any. */
TETHER_EXPORT const char *tether_host_get_token_path(const tether_host *host);

/*
 * Find a connected client by the name the host registered it under. Names are unique
 * among connected clients: a client asking for a name another one has is registered
 * as "NAME#2" (or #3, ...: the smallest number free), which its welcome tells it
 * (tether_client_get_registered_name). Returns 0 and a new reference in *ret_conn, or
 * TETHER_ENOENT. Thread: any.
 */
TETHER_EXPORT int tether_host_get_client(tether_host *host, const char *name,
                                         tether_conn **ret_conn);

/*
 * Serve an already-connected stream socket (for example one end of a socketpair given
 * to a child process). The host takes ownership of fd on success; on failure the
 * caller still owns it. The peer must still send hello; no token is needed, since only
 * the creator of the pair can reach it. Returns 0, TETHER_EUSERS, TETHER_EINVAL.
 * Thread: any.
 */
TETHER_EXPORT int tether_host_adopt_fd(tether_host *host, int fd);

/* Number of connected clients. Thread: any. */
TETHER_EXPORT int tether_host_get_client_count(const tether_host *host);

/* One connected client, as tether_host_list_clients describes it. */
typedef struct tether_client_info {
    tether_conn *conn;            /* a reference, released by tether_client_infos_free */
    const char *name;             /* as in its hello */
    int64_t pid;
    const char *language;         /* "c", "python" */
    const char *language_version; /* "3.11.2" */
    int64_t connected_unix_usec;  /* wall clock (CLOCK_REALTIME) of its handshake */
    uint32_t calls_in_flight;     /* its calls running here plus ours waiting on it */
    uint64_t calls_in, calls_out; /* requests and notifications received, sent */
    uint64_t bytes_in, bytes_out;
    const char *const *services; /* the names it announced, in order, service_count */
    size_t service_count;
} tether_client_info;

/*
 * A snapshot of the connected clients, oldest first, in a newly allocated array of
 * *ret_count entries (strings live with the array). Free with tether_client_infos_free.
 * Returns 0 or TETHER_ENOMEM. Thread: any.
 */
TETHER_EXPORT int tether_host_list_clients(tether_host *host, tether_client_info **ret_infos,
                                           size_t *ret_count);
TETHER_EXPORT void tether_client_infos_free(tether_client_info *infos, size_t count);

/*
 * Whether the client at the other end of conn (a host's connection to a client) has
 * announced a service of that name: a client announces its services as it connects and
 * each one it registers later (docs/protocol.md, "Service announcements"); a client of
 * an older library announces none. Returns 1 or 0, TETHER_EINVAL, TETHER_ENOTSUP for a
 * client's own connection to its host. Thread: any.
 */
TETHER_EXPORT int tether_conn_has_service(tether_conn *conn, const char *name);

/*
 * Wait up to timeout_usec (0: do not wait; TETHER_TIMEOUT_INFINITE: forever) until the
 * client at the other end of conn has announced a service of that name, so that the
 * host can call it. Returns 0, TETHER_ETIMEDOUT, TETHER_ECONNRESET (the client left
 * first), TETHER_EINVAL, TETHER_ENOTSUP (a client's own connection), TETHER_EDEADLK (on
 * the I/O thread, where the announcement itself is read). Main-thread work is not
 * dispatched while it waits. Thread: any but the I/O thread.
 */
TETHER_EXPORT int tether_conn_wait_service(tether_conn *conn, const char *name,
                                           uint64_t timeout_usec);

/*
 * Reset a client: tell it to disconnect and reconnect (its services and state stay),
 * and close its connection, gracefully (docs/protocol.md, CONTROL). From now on the
 * client's new requests are answered with the error tether.Closing (its calls fail
 * with TETHER_ECONNRESET, error type "tether.Closing") and are not run; its requests in
 * flight, and the host's calls to it, go on until they finish or control_grace_usec
 * is over, when those still running are answered with tether.Closing (replies their
 * handlers make later are dropped). Then CONTROL goes out and the connection closes.
 * Does not wait for calls in flight (with none, the connection is closed when it
 * returns). Returns 0, TETHER_ENOENT (not a client of this host, or gone),
 * TETHER_EALREADY (a reset or disconnect of it is under way), TETHER_ENOMEM.
 * Thread: any.
 */
TETHER_EXPORT int tether_host_reset_client(tether_host *host, tether_conn *client);

/*
 * Disconnect a client: tell it to disconnect and not come back (by default it shuts
 * down, see tether_client_options.on_disconnect), and close its connection, as
 * gracefully as tether_host_reset_client. Returns as it does. Thread: any.
 */
TETHER_EXPORT int tether_host_disconnect_client(tether_host *host, tether_conn *client);

/* ---------------------------------------------------------------------------------
 * Spawning interpreters
 *
 * A host starts a Python interpreter as a child process that runs a script, a module or
 * an object there and connects back as a client through an inherited socket pair (no
 * listening socket is involved). The host holds a proxy to the child's root object: the
 * script's or module's module object, or the object made. The child needs nothing
 * installed: tether's Python package is put on its path. It exits when its connection
 * closes, and when the host process dies (end of file on its socket; on Linux a
 * parent-death signal as a second guard).
 * ------------------------------------------------------------------------------- */

typedef struct tether_child tether_child;

/* Streams of tether_child_output_fn. */
enum {
    TETHER_CHILD_STDOUT = 1,
    TETHER_CHILD_STDERR = 2,
};

/* One line the child wrote (no newline; lines over 4 KiB arrive in pieces), borrowed.
 * Called on the I/O thread: must not block. */
typedef void (*tether_child_output_fn)(void *userdata, tether_child *child, int stream,
                                       const char *line);
/* The child exited: status is its exit code (>= 0) or minus the signal that ended it.
 * Called on the host's main thread, inside its dispatch. */
typedef void (*tether_child_exit_fn)(void *userdata, tether_child *child, int status);

typedef struct tether_spawn_options {
    /* The interpreter: a path, or a name looked up in PATH. NULL: $TETHER_PYTHON, else
     * "python3". Any CPython 3.10 or newer. */
    const char *executable;
    /* What the child runs, exactly one of:
     * script          Python source, run as a fresh module (root: the module);
     * script_path     a file, run as a fresh module (root: the module);
     * module          a module imported by name (root: the module), from module_path
     *                 (a .py file) when given;
     * object_class    a class (or any callable) called with object_args/object_kwargs
     *                 (an array and a map; NULL: none), found in object_module
     *                 ("builtins" for builtins; NULL: the globals of script or
     *                 script_path when one is given as well). Root: the object made. */
    const char *script;
    const char *script_path;
    const char *module;
    const char *module_path;
    const char *object_module;
    const char *object_class;
    tether_value *object_args;
    tether_value *object_kwargs;
    /* sys.argv[1:] of the child, ended by NULL; NULL: none. */
    const char *const *args;
    /* Environment changes, ended by NULL: "NAME=value" sets, "NAME" removes; the rest
     * is the host's environment. NULL: the host's environment unchanged. */
    const char *const *env;
    /* Working directory; NULL: the host's. */
    const char *cwd;
    /* The child's name as a client. NULL: "child". */
    const char *name;
    /* Directory holding tether's Python package, put first on the child's sys.path.
     * NULL: $TETHER_PYTHONPATH, else the directory the library was built or installed
     * with (TETHER_PYTHON_DIR). */
    const char *python_path;
    /* Time allowed from start to a usable root object (10 s). */
    uint64_t start_timeout_usec;
    /*
     * Fork the child from an interpreter the host keeps ready instead of starting one: a
     * fork server per executable, python_path and env, started on first use (about as
     * long as a cold spawn) and kept until the host stops; it keeps a spare child forked
     * ahead of each request. A warm spawn then costs a hand-over and a connection. The
     * child differs from a cold one in what the fork server imported before (tether) and
     * its parent process (the fork server); cwd applies.
     */
    bool warm;
    /* Where the child's output goes: NULL sends each line to the host's log callback
     * ("[NAME pid PID] line": stdout at INFO, stderr at WARNING). */
    tether_child_output_fn output;
    void *output_userdata;
    /* Told when the child exits; NULL: not told (tether_child_wait says). */
    tether_child_exit_fn on_exit;
    void *on_exit_userdata;
} tether_spawn_options;

/*
 * Start a child and wait (up to start_timeout_usec) until it is connected and has made
 * its root object. Returns 0 and a new reference in *ret_child; on failure no child is
 * left running and reterr (may be NULL) says why: TETHER_EINVAL (options: not exactly one
 * of script, script_path, module, object_class), TETHER_ENOENT (no such executable),
 * TETHER_EREMOTE (the child raised: a SyntaxError in the script, an ImportError, an
 * exception in the constructor; type, message and the child's traceback in reterr),
 * TETHER_ECONNRESET (the child exited or was not a tether-capable Python before
 * connecting), TETHER_ETIMEDOUT. Blocks: not from an IO handler (TETHER_EDEADLK).
 * Thread: any.
 */
TETHER_EXPORT int tether_host_spawn(tether_host *host, const tether_spawn_options *options,
                                    tether_child **ret_child, tether_error *reterr);

/* Take a reference; drop one (accepts NULL, returns NULL). The last unref terminates the
 * child if it still runs (tether_child_terminate). Thread: any. */
TETHER_EXPORT tether_child *tether_child_ref(tether_child *child);
TETHER_EXPORT tether_child *tether_child_unref(tether_child *child);

/* The child's process id. Thread: any. */
TETHER_EXPORT int64_t tether_child_get_pid(const tether_child *child);
/* Its connection (borrowed): call its services, or see it in tether_host_list_clients.
 * Thread: any. */
TETHER_EXPORT tether_conn *tether_child_get_conn(const tether_child *child);
/* The proxy of its root object (borrowed; take a reference to keep it beyond the
 * child). Thread: any. */
TETHER_EXPORT tether_object *tether_child_get_root(const tether_child *child);

/*
 * End the child: close its connection (it exits on its own) and send SIGTERM, then
 * SIGKILL if it is still there after a second. Returns 0, or TETHER_EALREADY if it has
 * exited already. Thread: any.
 */
TETHER_EXPORT int tether_child_terminate(tether_child *child);

/*
 * Wait up to timeout_usec (0: do not wait; TETHER_TIMEOUT_INFINITE: forever) for the
 * child to exit. Returns 0 and its status in *ret_status (exit code, or minus the
 * signal), or TETHER_ETIMEDOUT while it runs. Thread: any.
 */
TETHER_EXPORT int tether_child_wait(tether_child *child, uint64_t timeout_usec, int *ret_status);

/*
 * The child's side: what a spawned interpreter does to itself (tether's Python package
 * calls these; any program may). They hold what differs between systems, so that the
 * package needs no system calls of its own.
 *
 * tether_process_set_parent_death_signal: the kernel sends signum to this process when
 * its parent process dies. Returns 0, TETHER_ENOTSUP where the system has no such thing
 * (every system but Linux, and builds with TETHER_PLATFORM=posix; a spawned child then
 * relies on the end of its socket alone), or a negated errno (TETHER_EINVAL for a bad
 * signal). Thread: any.
 *
 * tether_process_set_name: name the calling thread, so the process when it is the main
 * thread, as ps shows it; the first 15 bytes count. Returns 0, TETHER_ENOTSUP where the
 * system has no way, or a negated errno. Thread: any.
 */
TETHER_EXPORT int tether_process_set_parent_death_signal(int signum);
TETHER_EXPORT int tether_process_set_name(const char *name);

/* ---------------------------------------------------------------------------------
 * Main-thread integration (hosts and clients alike)
 *
 * Handlers of TETHER_CONTEXT_MAIN services and TETHER_CONTEXT_MAIN future callbacks
 * are queued for the owner's main thread (the thread that created the host or client)
 * and run inside its dispatch call. A program with its own loop polls the fd; a game
 * calls dispatch once a frame with a budget; a program without a loop calls wait.
 * ------------------------------------------------------------------------------- */

/* Dispatch budget meaning "until the queue is empty". */
#define TETHER_BUDGET_UNLIMITED UINT64_MAX

/*
 * A file descriptor, stable for the object's lifetime, readable exactly while main-
 * thread work is queued (level-triggered). Poll it for readability; never read, write
 * or close it. Thread: any.
 */
TETHER_EXPORT int tether_host_get_fd(const tether_host *host);

/*
 * Run queued main-thread work until the queue is empty or budget_usec has passed; the
 * clock is checked after each item and at least one item runs if any is queued. Work
 * from different clients is taken round-robin. Returns 0 when the queue is drained,
 * 1 when work remains (call again, next frame), TETHER_EBUSY when called from inside a
 * dispatched handler, TETHER_EPERM from another thread than the main thread,
 * TETHER_ECHILD after fork(). Thread: main.
 */
TETHER_EXPORT int tether_host_dispatch(tether_host *host, uint64_t budget_usec);

/*
 * Wait up to timeout_usec (TETHER_TIMEOUT_INFINITE: forever) for main-thread work, then
 * dispatch all of it. Returns 1 if it ran something, 0 on timeout, or the errors of
 * tether_host_dispatch. While the host has one connection (one script, or the child it
 * spawned), the waiting thread reads it itself, so that a call of a MAIN service wakes
 * that thread alone. Thread: main.
 */
TETHER_EXPORT int tether_host_wait(tether_host *host, uint64_t timeout_usec);

/* ---------------------------------------------------------------------------------
 * Clients
 * ------------------------------------------------------------------------------- */

typedef struct tether_client tether_client;

/* Called on the client's main thread (inside its dispatch) when the host disconnected
 * it; reason is borrowed. */
typedef void (*tether_client_disconnect_fn)(void *userdata, const char *reason);

typedef struct tether_client_options {
    /* The name the host lists this client under: UTF-8 without control characters
     * (tether_client_new refuses others with TETHER_EINVAL). NULL: the program's name. */
    const char *name;
    /*
     * Where the host is: "unix:/path", "tcp:127.0.0.1:PORT", or a host name (its socket
     * in the runtime directory). NULL: $TETHER_ADDRESS, else the host named "default".
     */
    const char *address;
    /* Token for TCP. NULL: $TETHER_TOKEN, else the host's token file in the runtime
     * directory (same user on the same machine). */
    const char *token;
    /* As in tether_host_options. */
    const char *runtime_dir;
    /* Already-connected socket to use instead of an address (>= 3 to take effect; the
     * client takes ownership on successful connect). */
    int fd;
    /* Reported in the handshake: NULL means "c" and "" respectively. */
    const char *language;
    const char *language_version;

    /* Limits and timeouts; 0 means the default in parentheses. */
    uint32_t max_frame_size;         /* (16 MiB) */
    uint32_t max_in_flight;          /* requests the host may have running here (1024) */
    uint64_t connect_timeout_usec;   /* connect + handshake (5 s) */
    uint64_t default_timeout_usec;   /* silence timeout of calls (30 s) */
    uint64_t max_output_bytes;       /* (64 MiB) */
    uint64_t max_buffer_bytes;       /* as in tether_host_options (1 GiB) */
    uint32_t max_call_depth;         /* as in tether_host_options (64) */

    /*
     * Once connected, a client whose connection is lost (the host restarted, or reset
     * it) reconnects by itself, with a backoff from 50 ms doubling up to 5 s; its
     * services stay registered and calls on its connection go to the new one. Set
     * no_reconnect to stay disconnected instead.
     */
    bool no_reconnect;
    /*
     * What to do when the host disconnects this client (the troubleshooting view's
     * Disconnect): NULL means shut down, by sending SIGTERM to this process, which
     * terminates it unless the application handles that signal; otherwise
     * on_disconnect runs on the client's main thread at its next dispatch. Either way
     * the client does not reconnect.
     */
    tether_client_disconnect_fn on_disconnect;
    void *on_disconnect_userdata;

    tether_log_fn log;
    void *log_userdata;
    int log_level;
} tether_client_options;

/* Make a client (not yet connected). Returns 0, TETHER_EINVAL, TETHER_ENOMEM. Thread: any. */
TETHER_EXPORT int tether_client_new(const tether_client_options *options,
                                    tether_client **ret_client);

/* Take a reference; drop one (accepts NULL, returns NULL). The last unref closes the
 * connection for good and returns once the handlers of the client's services and objects
 * running on other threads have returned: their userdata may be freed then.
 * Thread: any but a handler's (from one, it does not wait for the others). */
TETHER_EXPORT tether_client *tether_client_ref(tether_client *client);
TETHER_EXPORT tether_client *tether_client_unref(tether_client *client);

/* Register a service the host may call, as tether_host_add_service. Register services
 * before connecting, so that they are there when the host greets the client; one
 * registered while connected is announced to the host, which may be waiting for it
 * (tether_conn_wait_service). Thread: any. */
TETHER_EXPORT int tether_client_add_service(tether_client *client, const char *name,
                                            tether_context context,
                                            tether_handler_fn handler, void *userdata);

/* Make a local object owned by the client, as tether_host_new_object. Thread: any. */
TETHER_EXPORT int tether_client_new_object(tether_client *client, const tether_class *cls,
                                           void *userdata, tether_object **ret_object);

/*
 * Connect and complete the handshake, blocking up to connect_timeout_usec. Returns 0,
 * TETHER_ECONNREFUSED / -ENOENT (nothing at the address), TETHER_EACCES (token
 * refused), TETHER_EPROTONOSUPPORT, TETHER_EUSERS, TETHER_ETIMEDOUT, TETHER_EALREADY,
 * TETHER_EINVAL (unparsable address); reterr (may be NULL) gets the host's reason.
 * Thread: any.
 */
TETHER_EXPORT int tether_client_connect(tether_client *client, tether_error *reterr);

/*
 * The current connection to the host, borrowed: valid as long as the client, including
 * after a reconnect replaced it (calls made on a replaced connection go to the current
 * one). NULL before the first connect. Thread: any.
 */
TETHER_EXPORT tether_conn *tether_client_get_conn(tether_client *client);

/* 1 while connected to the host, 0 while disconnected or reconnecting. Thread: any. */
TETHER_EXPORT int tether_client_is_connected(const tether_client *client);

/* The host's name from its welcome, borrowed; NULL before connecting. Thread: any. */
TETHER_EXPORT const char *tether_client_get_host_name(const tether_client *client);

/* The name the host registered this client under, from its welcome, borrowed; NULL
 * before connecting. The name the client asked for, unless another client of the host
 * already had it: then that name with a suffix "#2", "#3", ... (docs/protocol.md,
 * section 6). It may change at a reconnect. Thread: any. */
TETHER_EXPORT const char *tether_client_get_registered_name(const tether_client *client);

/* Close the connection, without reconnecting; pending calls fail with
 * TETHER_ECANCELED. tether_client_connect may connect it again. Thread: any. */
TETHER_EXPORT int tether_client_close(tether_client *client);

/* As tether_host_get_fd, tether_host_dispatch and tether_host_wait, for a client whose
 * own main thread (the one that created it) runs its MAIN services. Thread: any for
 * get_fd; main for dispatch and wait. While tether_client_wait waits, the main thread
 * reads the connection itself (when no other thread is reading it), so a call of a
 * MAIN service wakes that thread alone, not the I/O thread as well. */
TETHER_EXPORT int tether_client_get_fd(const tether_client *client);
TETHER_EXPORT int tether_client_dispatch(tether_client *client, uint64_t budget_usec);
TETHER_EXPORT int tether_client_wait(tether_client *client, uint64_t timeout_usec);

/*
 * For a main thread that runs an event loop (asyncio, GLib, Qt) rather than waiting in
 * tether_client_wait: while the loop is idle, its thread reads the connection itself,
 * so that a call of a MAIN service wakes that thread alone, not the I/O thread too.
 * - tether_client_read_begin makes the main thread the connection's reader and returns
 *   the socket's descriptor, for the loop to watch for input (not to read, write or
 *   close: dup() it to keep it past tether_client_read_end). TETHER_EBUSY while another
 *   thread reads the connection, TETHER_ENOTCONN while not connected: keep watching
 *   tether_client_get_fd, and begin again later (at the next dispatch, say).
 * - tether_client_read_ready, when that descriptor is readable: reads what came and runs
 *   the MAIN work it brought, as tether_client_dispatch does within budget_usec (work
 *   left over raises tether_client_get_fd). Returns 0 while this thread still reads, 1
 *   once it does not (another thread's call took the reading over, the connection
 *   closed or was replaced): stop watching the descriptor, and begin again later.
 * - tether_client_read_end gives the reading back to the I/O thread.
 * A blocking call made from inside the loop's thread reads its own reply and leaves
 * the reading with that thread. Thread: main (TETHER_EPERM elsewhere).
 */
TETHER_EXPORT int tether_client_read_begin(tether_client *client);
TETHER_EXPORT int tether_client_read_ready(tether_client *client, uint64_t budget_usec);
TETHER_EXPORT int tether_client_read_end(tether_client *client);

/*
 * Resolve an address as tether_client_connect would, into "unix:/path" or
 * "tcp:HOST:PORT" (newly allocated, free() it). A host name resolves through its
 * running host's file, <runtime dir>/NAME.host (docs/protocol.md, section 2): to its
 * Unix socket, or to its TCP address when it has none; without one, to NAME.sock.
 * Returns 0, TETHER_EINVAL, TETHER_ENOMEM.
 * Thread: any.
 */
TETHER_EXPORT int tether_resolve_address(const char *address, const char *runtime_dir,
                                         char **ret_address);

#ifdef __cplusplus
}
#endif

#endif
