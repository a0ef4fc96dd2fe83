/*
 * _tether: the CPython binding of libtether, imported as tether._tether.
 *
 * A thin layer over the public C API (include/tether.h); everything that can be Python
 * lives in python/tether/. Built for the stable ABI (Py_LIMITED_API 3.10: one .abi3.so
 * for every CPython from 3.10 on), with multi-phase init, all state in the module state,
 * heap types made from specs, and no static PyObject pointers.
 *
 * What it provides:
 * - Client: one tether_client (connect, close, calls, notifications, services, and the
 *   fileno()/dispatch() pair of the main-thread queue).
 * - Future: one tether_future (ready, wait, result, exception, add_done_callback,
 *   cancel; awaitable, through tether._aio).
 * - Reply: a request kept by a deferred service (one registered with deferred=True),
 *   which answers it later with set_result or set_exception.
 * - Ref: the handle of a tether.Proxy (a proxy for an object of the peer), and the
 *   export of this process's objects (see "Objects by reference").
 * - the exception classes, and one function (error_object) that turns a negative code
 *   plus a tether_error into the exception a caller sees.
 * - a msgpack encoder (Python object to bytes, for arguments and results) and a decoder
 *   (bytes to Python object). Plain data by value: None, bool, int (64-bit, signed or
 *   unsigned), float, str, bytes/bytearray/memoryview, list/tuple, dict; tuples arrive
 *   as lists, except as dict keys, where arrays become tuples so they stay hashable.
 *   Anything else by reference, in calls and results (REF exts bound by the core).
 *
 * Threads and the GIL.
 * - Every wait on the core releases the GIL. A blocking call takes the core's
 *   synchronous path, whose waiting thread reads its own reply (no thread hand-off) and
 *   runs the peer's call-backs into this thread's MAIN services. On the main thread the
 *   core calls back every 50 ms (tether_call_options.interrupt) to run signal handlers:
 *   Ctrl-C cancels the remote call and raises KeyboardInterrupt, and the connection
 *   stays usable.
 * - Services exposed by Python run in TETHER_CONTEXT_POOL (a libuv worker thread), or,
 *   added with main=True, in TETHER_CONTEXT_MAIN (inside Client.dispatch on the thread
 *   that made the Client, where the dispatch released the GIL). The handler takes the
 *   GIL with PyGILState_Ensure, converts the arguments, calls the Python callable and
 *   replies with its result or its exception; a deferred service gets a Reply as first
 *   argument instead and replies through it, maybe later. The handler's userdata is not
 *   a pointer but a handle into a process-wide table of service records, so a request
 *   that reaches a handler after its Client was freed finds nothing and replies an error
 *   instead of touching freed memory. At interpreter exit (atexit) the table is closed
 *   and the exit waits (bounded) for handlers that are already running, so none of them
 *   takes the GIL once finalization has begun.
 * - Future.add_done_callback: the core calls a TETHER_CONTEXT_IO callback on its I/O
 *   thread; that callback only appends the future to a queue (no GIL, no Python). A
 *   Python daemon thread, "tether-callbacks", started on first need, waits on the queue
 *   with the GIL released and runs the Python callbacks. So callbacks run promptly,
 *   whatever the main thread is doing, may block or make calls (the I/O thread is never
 *   held up by Python), and an exception in one is reported through
 *   sys.unraisablehook, as concurrent.futures logs it. A callback added to a future that
 *   is already complete runs at once, on the calling thread.
 */
#define Py_LIMITED_API 0x030a0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <tether.h>

/* Containers one value may nest (the core allows 63 levels under a frame's array; an
 * argument list or a reply adds one). */
#define PACK_MAX_DEPTH 60
/* How long a blocking wait on the main thread sleeps between checks for signals. */
#define SIGNAL_SLICE_USEC 50000
/* How long interpreter exit waits for service handlers that are already running. */
#define SHUTDOWN_WAIT_USEC 5000000

/* ======================================================================================
 * Module state
 * ==================================================================================== */

typedef struct hub hub;

typedef struct {
    PyTypeObject *client_type;
    PyTypeObject *future_type;
    PyTypeObject *reply_type;
    PyTypeObject *ref_type;
    PyTypeObject *host_type;
    PyTypeObject *child_type;
    PyObject *proxy_parts[4]; /* from tether._proxy, on first use: see proxy_part */
    PyObject *exports;      /* id(obj) -> address of the tether_object exported for obj */
    PyObject *classes;      /* (context, type name) -> capsule of its tether_class */
    PyObject *TetherError;
    PyObject *RemoteError;
    PyObject *NotConnectedError;
    PyObject *NoSuchServiceError;
    PyObject *CancelledError;
    hub *hub;
    unsigned long main_thread;
    bool runner_started; /* guarded by the GIL */
} module_state;

static module_state *
state_of_module(PyObject *module)
{
    return PyModule_GetState(module);
}

static module_state *
state_of_type(PyTypeObject *type)
{
    return PyType_GetModuleState(type);
}

/* ======================================================================================
 * Small helpers
 * ==================================================================================== */

/* A str from bytes that may not be valid UTF-8 (they come from a peer); None for NULL. */
static PyObject *
text_or_none(const char *s)
{
    if (!s) {
        Py_RETURN_NONE;
    }
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace");
}

/*
 * Seconds (int or float) to microseconds. None gives none_usec; infinity (or anything too
 * large) TETHER_TIMEOUT_INFINITE; a positive value never rounds down to 0. Negative and
 * NaN raise ValueError.
 */
static int
usec_from_seconds(PyObject *o, uint64_t none_usec, const char *what, uint64_t *ret)
{
    if (!o || o == Py_None) {
        *ret = none_usec;
        return 0;
    }
    double s = PyFloat_AsDouble(o);
    if (s == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (isnan(s) || s < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be a non-negative number of seconds or None", what);
        return -1;
    }
    if (s * 1e6 >= 1.8e19) {
        *ret = TETHER_TIMEOUT_INFINITE;
        return 0;
    }
    uint64_t usec = (uint64_t)(s * 1e6);
    *ret = usec == 0 && s > 0 ? 1 : usec;
    return 0;
}

/* ======================================================================================
 * Encoding: Python objects to msgpack
 * ==================================================================================== */

/*
 * Where a value goes to or comes from, for the objects in it that travel by reference
 * (see "Objects by reference" below). An xfer with no module state allows plain data
 * only.
 */
typedef struct {
    module_state *st;
    tether_conn *conn;      /* packing: a connection of the client that owns new exports */
    tether_context context; /* where methods of new exports run (MAIN or POOL), and what
                             * proxies made while unpacking use for their own calls */
} xfer;

typedef struct {
    uint8_t *data;
    size_t len, cap;
    uint8_t small[256]; /* most arguments fit: no allocation */
    const xfer *x;
    tether_object **objs; /* references, in the order their REFs were written */
    size_t nobjs, capobjs;
} packbuf;

static void
pb_init(packbuf *b, const xfer *x)
{
    b->data = b->small;
    b->len = 0;
    b->cap = sizeof(b->small);
    b->x = x && x->st ? x : NULL;
    b->objs = NULL;
    b->nobjs = b->capobjs = 0;
}

static void
pb_done(packbuf *b)
{
    if (b->data != b->small) {
        free(b->data);
    }
    b->data = NULL;
    for (size_t i = 0; i < b->nobjs; i++) {
        tether_object_unref(b->objs[i]);
    }
    free(b->objs);
    b->objs = NULL;
    b->nobjs = 0;
}

static int
pb_reserve(packbuf *b, size_t n)
{
    if (b->cap - b->len >= n) {
        return 0;
    }
    if (n > SIZE_MAX / 4 - b->len) {
        PyErr_NoMemory();
        return -1;
    }
    size_t cap = b->cap * 2;
    while (cap - b->len < n) {
        cap *= 2;
    }
    uint8_t *d = b->data == b->small ? malloc(cap) : realloc(b->data, cap);
    if (!d) {
        PyErr_NoMemory();
        return -1;
    }
    if (b->data == b->small) {
        memcpy(d, b->small, b->len);
    }
    b->data = d;
    b->cap = cap;
    return 0;
}

static int
pb_put(packbuf *b, const void *p, size_t n)
{
    if (pb_reserve(b, n) < 0) {
        return -1;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

/* A one-byte tag followed by an n-byte big-endian number. */
static int
pb_tag(packbuf *b, uint8_t tag, uint64_t v, int n)
{
    uint8_t h[9];
    h[0] = tag;
    for (int i = 0; i < n; i++) {
        h[1 + i] = (uint8_t)(v >> (8 * (n - 1 - i)));
    }
    return pb_put(b, h, (size_t)n + 1);
}

/* A header for str (fix 0xa0, 8/16/32: 0xd9), bin (-, 0xc4), array (0x90, -, 0xdc) or
 * map (0x80, -, 0xde). */
static int
pb_header(packbuf *b, uint8_t fix, size_t fix_max, uint8_t tag8, uint8_t tag16, size_t n)
{
    if (n < fix_max) {
        uint8_t c = (uint8_t)(fix | n);
        return pb_put(b, &c, 1);
    }
    if (tag8 && n <= 0xff) {
        return pb_tag(b, tag8, n, 1);
    }
    if (n <= 0xffff) {
        return pb_tag(b, tag16, n, 2);
    }
    if (n <= 0xffffffffu) {
        return pb_tag(b, (uint8_t)(tag16 + 1), n, 4);
    }
    PyErr_SetString(PyExc_OverflowError, "value too long to send (over 2**32 - 1 items)");
    return -1;
}

static int
pack_int(packbuf *b, PyObject *o)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(o);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
                PyErr_SetString(PyExc_OverflowError,
                                "int too large to send (tether sends integers from -2**63 "
                                "to 2**64 - 1)");
            }
            return -1;
        }
        return pb_tag(b, 0xcf, u, 8);
    }
    if (overflow < 0) {
        PyErr_SetString(PyExc_OverflowError,
                        "int too small to send (tether sends integers from -2**63 to "
                        "2**64 - 1)");
        return -1;
    }
    if (v >= 0) {
        if (v < 128) {
            uint8_t c = (uint8_t)v;
            return pb_put(b, &c, 1);
        }
        if (v <= 0xff) {
            return pb_tag(b, 0xcc, (uint64_t)v, 1);
        }
        if (v <= 0xffff) {
            return pb_tag(b, 0xcd, (uint64_t)v, 2);
        }
        if (v <= 0xffffffffll) {
            return pb_tag(b, 0xce, (uint64_t)v, 4);
        }
        return pb_tag(b, 0xcf, (uint64_t)v, 8);
    }
    if (v >= -32) {
        uint8_t c = (uint8_t)(int8_t)v;
        return pb_put(b, &c, 1);
    }
    if (v >= INT8_MIN) {
        return pb_tag(b, 0xd0, (uint64_t)v, 1);
    }
    if (v >= INT16_MIN) {
        return pb_tag(b, 0xd1, (uint64_t)v, 2);
    }
    if (v >= INT32_MIN) {
        return pb_tag(b, 0xd2, (uint64_t)v, 4);
    }
    return pb_tag(b, 0xd3, (uint64_t)v, 8);
}

static int
pack_bytes(packbuf *b, const char *p, size_t n)
{
    if (pb_header(b, 0, 0, 0xc4, 0xc5, n) < 0) {
        return -1;
    }
    return pb_put(b, p, n);
}

/* The name users know a type by: "int" for builtins, "module.Qualname" otherwise. */
static PyObject *
type_display_name(PyTypeObject *type)
{
    PyObject *module = PyObject_GetAttrString((PyObject *)type, "__module__");
    PyObject *qualname = PyObject_GetAttrString((PyObject *)type, "__qualname__");
    PyObject *name = NULL;
    if (!qualname) {
        PyErr_Clear();
        qualname = PyObject_GetAttrString((PyObject *)type, "__name__");
    }
    if (!module) {
        PyErr_Clear();
    }
    if (qualname && module && PyUnicode_Check(module) &&
        PyUnicode_CompareWithASCIIString(module, "builtins") != 0) {
        name = PyUnicode_FromFormat("%U.%S", module, qualname);
    } else if (qualname) {
        name = PyObject_Str(qualname);
    } else {
        PyErr_Clear();
        name = PyUnicode_FromString("?");
    }
    Py_XDECREF(module);
    Py_XDECREF(qualname);
    return name;
}

static int pack_obj(packbuf *b, PyObject *o, int depth);
static int pack_reference(packbuf *b, PyObject *o);

static int
pack_container_depth(int depth)
{
    if (depth >= PACK_MAX_DEPTH) {
        PyErr_Format(PyExc_ValueError,
                     "value nested too deeply to send (more than %d levels of lists and "
                     "dicts; is there a reference cycle?)",
                     PACK_MAX_DEPTH);
        return -1;
    }
    return 0;
}

static int
pack_sequence(packbuf *b, PyObject *o, int depth)
{
    bool is_list = PyList_Check(o);
    Py_ssize_t n = is_list ? PyList_Size(o) : PyTuple_Size(o);
    if (n < 0 || pack_container_depth(depth) < 0 ||
        pb_header(b, 0x90, 16, 0, 0xdc, (size_t)n) < 0) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        /* Nothing below runs Python code, so a list cannot change size under us. */
        PyObject *item = is_list ? PyList_GetItem(o, i) : PyTuple_GetItem(o, i);
        if (!item || pack_obj(b, item, depth + 1) < 0) {
            return -1;
        }
    }
    return 0;
}

static int
pack_dict(packbuf *b, PyObject *o, int depth)
{
    Py_ssize_t n = PyDict_Size(o);
    if (n < 0 || pack_container_depth(depth) < 0 ||
        pb_header(b, 0x80, 16, 0, 0xde, (size_t)n) < 0) {
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(o, &pos, &key, &value)) {
        if (pack_obj(b, key, depth + 1) < 0 || pack_obj(b, value, depth + 1) < 0) {
            return -1;
        }
    }
    return 0;
}

static int
pack_obj(packbuf *b, PyObject *o, int depth)
{
    if (o == Py_None) {
        uint8_t c = 0xc0;
        return pb_put(b, &c, 1);
    }
    if (PyBool_Check(o)) {
        uint8_t c = o == Py_True ? 0xc3 : 0xc2;
        return pb_put(b, &c, 1);
    }
    if (PyLong_Check(o)) {
        return pack_int(b, o);
    }
    if (PyFloat_Check(o)) {
        double d = PyFloat_AsDouble(o);
        uint64_t bits;
        memcpy(&bits, &d, sizeof(bits));
        return pb_tag(b, 0xcb, bits, 8);
    }
    if (PyUnicode_Check(o)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(o, &n);
        if (!s || pb_header(b, 0xa0, 32, 0xd9, 0xda, (size_t)n) < 0) {
            return -1;
        }
        return pb_put(b, s, (size_t)n);
    }
    if (PyBytes_Check(o)) {
        char *p;
        Py_ssize_t n;
        if (PyBytes_AsStringAndSize(o, &p, &n) < 0) {
            return -1;
        }
        return pack_bytes(b, p, (size_t)n);
    }
    if (PyByteArray_Check(o)) {
        return pack_bytes(b, PyByteArray_AsString(o), (size_t)PyByteArray_Size(o));
    }
    if (PyMemoryView_Check(o)) {
        /* The 3.10 limited API has no buffer protocol: copy through bytes. */
        PyObject *copy = PyBytes_FromObject(o);
        if (!copy) {
            return -1;
        }
        char *p;
        Py_ssize_t n;
        int r = PyBytes_AsStringAndSize(copy, &p, &n);
        r = r < 0 ? r : pack_bytes(b, p, (size_t)n);
        Py_DECREF(copy);
        return r;
    }
    if (PyList_Check(o) || PyTuple_Check(o)) {
        return pack_sequence(b, o, depth);
    }
    if (PyDict_Check(o)) {
        return pack_dict(b, o, depth);
    }
    if (b->x) {
        return pack_reference(b, o);
    }
    PyObject *name = type_display_name(Py_TYPE(o));
    if (name) {
        PyErr_Format(PyExc_TypeError,
                     "cannot send a value of type '%U' here: plain data only (None, bool, "
                     "int, float, str, bytes, list, tuple and dict); other objects travel "
                     "by reference in calls and results",
                     name);
        Py_DECREF(name);
    }
    return -1;
}

/*
 * A tether_value holding o. depth is -1 for an argument list or keyword dict, whose own
 * level does not count against the nesting of the values in it.
 */
static tether_value *
value_from_object(PyObject *o, int depth, const xfer *x)
{
    packbuf b;
    pb_init(&b, x);
    tether_value *v = NULL;
    if (pack_obj(&b, o, depth) == 0) {
        int r = tether_value_new_msgpack_objects(b.data, b.len, b.objs, b.nobjs, &v);
        if (r < 0) {
            PyErr_Format(PyExc_ValueError, "cannot encode the value: %s", tether_strerror(r));
            v = NULL;
        }
    }
    pb_done(&b);
    return v;
}

/* Arguments: args a tuple or list (NULL: none), kwargs a dict (NULL or empty: none). */
static int
values_from_args(PyObject *args, PyObject *kwargs, const xfer *x, tether_value **ret_args,
                 tether_value **ret_kwargs)
{
    *ret_args = NULL;
    *ret_kwargs = NULL;
    if (args && args != Py_None) {
        if (!PyTuple_Check(args) && !PyList_Check(args)) {
            PyErr_SetString(PyExc_TypeError, "args must be a tuple or a list");
            return -1;
        }
        if (PyObject_Length(args) > 0 && !(*ret_args = value_from_object(args, -1, x))) {
            return -1;
        }
    }
    if (kwargs && kwargs != Py_None) {
        if (!PyDict_Check(kwargs)) {
            PyErr_SetString(PyExc_TypeError, "kwargs must be a dict");
            goto fail;
        }
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(kwargs, &pos, &key, &value)) {
            if (!PyUnicode_Check(key)) {
                PyErr_SetString(PyExc_TypeError, "keyword argument names must be strings");
                goto fail;
            }
        }
        if (PyDict_Size(kwargs) > 0 && !(*ret_kwargs = value_from_object(kwargs, -1, x))) {
            goto fail;
        }
    }
    return 0;
fail:
    *ret_args = tether_value_unref(*ret_args);
    return -1;
}

/* ======================================================================================
 * Decoding: msgpack to Python objects
 *
 * The bytes come from tether_value_get_msgpack, which the core checked already; every
 * length is still checked against the bytes left, and nesting is bounded.
 * ==================================================================================== */

typedef struct {
    const uint8_t *p, *end;
    const xfer *x;             /* NULL: plain data only */
    tether_object *const *objs; /* the value's objects, in the order of its REFs */
    size_t nobjs, k;
} unpacker;

static PyObject *object_of_reference(const xfer *x, tether_object *obj);

static int
need(unpacker *u, size_t n)
{
    if ((size_t)(u->end - u->p) < n) {
        PyErr_SetString(PyExc_ValueError, "truncated msgpack value");
        return -1;
    }
    return 0;
}

static uint64_t
take_be(unpacker *u, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        v = v << 8 | u->p[i];
    }
    u->p += n;
    return v;
}

static PyObject *unpack_obj(unpacker *u, int depth, bool as_key);

static PyObject *
unpack_array(unpacker *u, size_t n, int depth, bool as_key)
{
    if (n > (size_t)(u->end - u->p)) { /* each item takes at least one byte */
        PyErr_SetString(PyExc_ValueError, "truncated msgpack array");
        return NULL;
    }
    PyObject *seq = as_key ? PyTuple_New((Py_ssize_t)n) : PyList_New((Py_ssize_t)n);
    if (!seq) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *item = unpack_obj(u, depth + 1, as_key);
        if (!item) {
            Py_DECREF(seq);
            return NULL;
        }
        /* Both steal the reference. */
        if (as_key) {
            PyTuple_SetItem(seq, (Py_ssize_t)i, item);
        } else {
            PyList_SetItem(seq, (Py_ssize_t)i, item);
        }
    }
    return seq;
}

static PyObject *
unpack_map(unpacker *u, size_t n, int depth)
{
    if (n > (size_t)(u->end - u->p) / 2) {
        PyErr_SetString(PyExc_ValueError, "truncated msgpack map");
        return NULL;
    }
    PyObject *d = PyDict_New();
    if (!d) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *key = unpack_obj(u, depth + 1, true);
        PyObject *value = key ? unpack_obj(u, depth + 1, false) : NULL;
        int r = value ? PyDict_SetItem(d, key, value) : -1;
        Py_XDECREF(key);
        Py_XDECREF(value);
        if (r < 0) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

static PyObject *
unpack_ext(unpacker *u, size_t n)
{
    if (need(u, n + 1) < 0) {
        return NULL;
    }
    int type = (int8_t)u->p[0];
    if (type == 1 && u->x && u->k < u->nobjs) { /* a REF: its object, bound by the core */
        u->p += n + 1;
        return object_of_reference(u->x, u->objs[u->k++]);
    }
    PyErr_Format(PyExc_TypeError, "cannot receive a msgpack extension value of type %d%s",
                 type, type == 1 ? " here (an object reference outside a call)" : "");
    return NULL;
}

static PyObject *
unpack_obj(unpacker *u, int depth, bool as_key)
{
    if (depth > PACK_MAX_DEPTH + 8) {
        PyErr_SetString(PyExc_ValueError, "received value nested too deeply");
        return NULL;
    }
    if (need(u, 1) < 0) {
        return NULL;
    }
    uint8_t c = *u->p++;
    size_t n;
    if (c <= 0x7f) {
        return PyLong_FromLong(c);
    }
    if (c >= 0xe0) {
        return PyLong_FromLong((int8_t)c);
    }
    if ((c & 0xe0) == 0xa0) {
        n = c & 0x1f;
        goto str;
    }
    if ((c & 0xf0) == 0x90) {
        return unpack_array(u, c & 0x0f, depth, as_key);
    }
    if ((c & 0xf0) == 0x80) {
        return unpack_map(u, c & 0x0f, depth);
    }
    switch (c) {
    case 0xc0:
        Py_RETURN_NONE;
    case 0xc2:
        Py_RETURN_FALSE;
    case 0xc3:
        Py_RETURN_TRUE;
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf: {
        int w = 1 << (c - 0xcc);
        if (need(u, (size_t)w) < 0) {
            return NULL;
        }
        return PyLong_FromUnsignedLongLong(take_be(u, w));
    }
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3: {
        int w = 1 << (c - 0xd0);
        if (need(u, (size_t)w) < 0) {
            return NULL;
        }
        uint64_t v = take_be(u, w);
        int64_t s = w == 1 ? (int8_t)v : w == 2 ? (int16_t)v : w == 4 ? (int32_t)v : (int64_t)v;
        return PyLong_FromLongLong(s);
    }
    case 0xca: {
        if (need(u, 4) < 0) {
            return NULL;
        }
        uint32_t bits = (uint32_t)take_be(u, 4);
        float f;
        memcpy(&f, &bits, sizeof(f));
        return PyFloat_FromDouble(f);
    }
    case 0xcb: {
        if (need(u, 8) < 0) {
            return NULL;
        }
        uint64_t bits = take_be(u, 8);
        double d;
        memcpy(&d, &bits, sizeof(d));
        return PyFloat_FromDouble(d);
    }
    case 0xd9:
    case 0xda:
    case 0xdb: {
        int w = 1 << (c - 0xd9);
        if (need(u, (size_t)w) < 0) {
            return NULL;
        }
        n = (size_t)take_be(u, w);
        goto str;
    }
    case 0xc4:
    case 0xc5:
    case 0xc6: {
        int w = 1 << (c - 0xc4);
        if (need(u, (size_t)w) < 0) {
            return NULL;
        }
        n = (size_t)take_be(u, w);
        if (need(u, n) < 0) {
            return NULL;
        }
        PyObject *bytes = PyBytes_FromStringAndSize((const char *)u->p, (Py_ssize_t)n);
        u->p += n;
        return bytes;
    }
    case 0xdc:
    case 0xdd: {
        int w = c == 0xdc ? 2 : 4;
        if (need(u, (size_t)w) < 0) {
            return NULL;
        }
        return unpack_array(u, (size_t)take_be(u, w), depth, as_key);
    }
    case 0xde:
    case 0xdf: {
        int w = c == 0xde ? 2 : 4;
        if (need(u, (size_t)w) < 0) {
            return NULL;
        }
        return unpack_map(u, (size_t)take_be(u, w), depth);
    }
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        return unpack_ext(u, (size_t)1 << (c - 0xd4));
    case 0xc7:
    case 0xc8:
    case 0xc9: {
        int w = 1 << (c - 0xc7);
        if (need(u, (size_t)w) < 0) {
            return NULL;
        }
        return unpack_ext(u, (size_t)take_be(u, w));
    }
    default:
        PyErr_Format(PyExc_ValueError, "malformed msgpack value (byte 0x%02x)", c);
        return NULL;
    }
str:
    if (need(u, n) < 0) {
        return NULL;
    }
    PyObject *s = PyUnicode_DecodeUTF8((const char *)u->p, (Py_ssize_t)n, "strict");
    u->p += n;
    return s;
}

static PyObject *
unpack_bytes(const void *data, size_t size, const xfer *x, tether_object *const *objs,
             size_t nobjs)
{
    unpacker u = {data, (const uint8_t *)data + size, x && x->st ? x : NULL, objs, nobjs, 0};
    PyObject *o = unpack_obj(&u, 0, false);
    if (o && u.p != u.end) {
        Py_DECREF(o);
        PyErr_SetString(PyExc_ValueError, "extra bytes after the msgpack value");
        return NULL;
    }
    return o;
}

/* The Python object of a value; None for NULL (a call that returned nothing). */
static PyObject *
object_from_value(tether_value *v, const xfer *x)
{
    if (!v) {
        Py_RETURN_NONE;
    }
    const void *data;
    size_t size;
    tether_object *const *objs;
    size_t nobjs;
    int r = tether_value_get_msgpack(v, &data, &size);
    if (r == 0) {
        r = tether_value_get_objects(v, &objs, &nobjs);
    }
    if (r < 0) {
        PyErr_SetString(PyExc_ValueError, tether_strerror(r));
        return NULL;
    }
    return unpack_bytes(data, size, x, objs, nobjs);
}

/* ======================================================================================
 * Errors: a negative code and a tether_error to the exception a caller sees
 * ==================================================================================== */

/* Where a failure happened: a few codes mean different things at connect. */
enum {
    AT_CALL = 0,
    AT_CONNECT = 1
};

static int
add_note(PyObject *exc, const char *header, const char *text)
{
    PyObject *note = PyUnicode_FromFormat("%s%s", header, text);
    if (!note) {
        return -1;
    }
    PyObject *r = NULL;
    PyObject *fn = PyObject_GetAttrString(exc, "add_note"); /* 3.11 and newer */
    if (fn) {
        r = PyObject_CallFunctionObjArgs(fn, note, NULL);
        Py_DECREF(fn);
    } else {
        PyErr_Clear();
        r = Py_NewRef(Py_None);
    }
    Py_DECREF(note);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/*
 * The exception of a remote failure. A type name that names a builtin Exception
 * subclass (NameError, KeyError, ...) gives that class; anything else, or a builtin that
 * cannot be made from one message, gives RemoteError(type, message, traceback).
 * Both carry remote_type and remote_traceback; the traceback is also added as a note.
 */
static PyObject *
remote_exception(module_state *st, const char *type, const char *message, const char *traceback)
{
    PyObject *type_obj = text_or_none(type ? type : "Exception");
    PyObject *message_obj = text_or_none(message ? message : "");
    if (traceback && !*traceback) {
        traceback = NULL; /* peers that have none may send "" */
    }
    PyObject *traceback_obj = text_or_none(traceback);
    PyObject *exc = NULL;
    if (!type_obj || !message_obj || !traceback_obj) {
        goto out;
    }
    if (type && *type && !strchr(type, '.')) {
        PyObject *builtins = PyImport_ImportModule("builtins");
        PyObject *cls = builtins ? PyObject_GetAttr(builtins, type_obj) : NULL;
        Py_XDECREF(builtins);
        if (cls && PyType_Check(cls) && PyObject_IsSubclass(cls, PyExc_Exception) == 1) {
            exc = PyObject_CallFunctionObjArgs(cls, message_obj, NULL);
        }
        Py_XDECREF(cls);
        PyErr_Clear();
    }
    if (!exc) {
        exc = PyObject_CallFunctionObjArgs(st->RemoteError, type_obj, message_obj, traceback_obj,
                                           NULL);
        if (!exc) {
            goto out;
        }
    }
    if (PyObject_SetAttrString(exc, "remote_type", type_obj) < 0 ||
        PyObject_SetAttrString(exc, "remote_message", message_obj) < 0 ||
        PyObject_SetAttrString(exc, "remote_traceback", traceback_obj) < 0 ||
        (traceback && add_note(exc, "Remote traceback:\n", traceback) < 0)) {
        Py_CLEAR(exc);
    }
out:
    Py_XDECREF(type_obj);
    Py_XDECREF(message_obj);
    Py_XDECREF(traceback_obj);
    return exc;
}

/* cls(errno, message) for OSError subclasses, so that .errno is set. */
static PyObject *
os_exception(PyObject *cls, int code, PyObject *message)
{
    return PyObject_CallFunction(cls, "iO", -code, message);
}

static PyObject *
error_object(module_state *st, int code, const tether_error *err, int where)
{
    if (code == TETHER_EREMOTE) {
        return remote_exception(st, err ? err->type : NULL, err ? err->message : NULL,
                                err ? err->traceback : NULL);
    }
    const char *text = err && err->message && *err->message ? err->message : tether_strerror(code);
    PyObject *message = text_or_none(text);
    if (!message) {
        return NULL;
    }
    /* Pick the class; OSError subclasses also get the errno. */
    PyObject *cls = st->TetherError;
    bool os_error = true;
    switch (code) {
    case TETHER_ETIMEDOUT:
        cls = PyExc_TimeoutError;
        break;
    case TETHER_ECONNRESET:
        cls = PyExc_ConnectionResetError;
        break;
    case TETHER_ECONNREFUSED:
        cls = PyExc_ConnectionRefusedError;
        break;
    case TETHER_EACCES:
        cls = PyExc_PermissionError;
        break;
    case TETHER_ENOENT:
    case TETHER_EUSERS:
        if (where == AT_CONNECT) {
            cls = PyExc_ConnectionRefusedError;
        } else {
            cls = st->NoSuchServiceError;
            os_error = false;
        }
        break;
    case TETHER_ENOTCONN:
        cls = st->NotConnectedError;
        os_error = false;
        break;
    case TETHER_ECANCELED:
        cls = st->CancelledError;
        os_error = false;
        break;
    case TETHER_ENOMEM:
        cls = PyExc_MemoryError;
        os_error = false;
        break;
    default:
        os_error = false;
        break;
    }
    PyObject *exc = os_error ? os_exception(cls, code, message)
                             : PyObject_CallFunctionObjArgs(cls, message, NULL);
    Py_DECREF(message);
    if (exc) {
        PyObject *code_obj = PyLong_FromLong(code);
        if (!code_obj || PyObject_SetAttrString(exc, "code", code_obj) < 0) {
            Py_CLEAR(exc);
        }
        Py_XDECREF(code_obj);
    }
    return exc;
}

/* Raise the exception of code/err; returns NULL for `return raise_error(...)`. */
static PyObject *
raise_error(module_state *st, int code, const tether_error *err, int where)
{
    PyObject *exc = error_object(st, code, err, where);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/*
 * The exception hierarchy, in Python for exact Python semantics (subclassing, pickling,
 * __str__), run once per module into the module's namespace; the classes' __module__ is
 * "tether", where the package re-exports them.
 */
static const char exceptions_source[] =
    "class TetherError(Exception):\n"
    "    \"\"\"Base class of tether's own exceptions. code is the negative TETHER_E* code\n"
    "    of the failure when it came from the core, else None.\"\"\"\n"
    "    code = None\n"
    "\n"
    "class RemoteError(TetherError):\n"
    "    \"\"\"The peer raised an exception that is not a builtin one: remote_type names\n"
    "    its type (\"module.Qualname\"), remote_message is its message and\n"
    "    remote_traceback the peer's traceback text (None if the peer sent none).\"\"\"\n"
    "    def __init__(self, remote_type, message='', traceback=None):\n"
    "        super().__init__(remote_type, message)\n"
    "        self.remote_type = remote_type\n"
    "        self.remote_message = message\n"
    "        self.remote_traceback = traceback\n"
    "    def __reduce__(self):\n"
    "        return (type(self), (self.remote_type, self.remote_message,\n"
    "                             self.remote_traceback))\n"
    "    def __str__(self):\n"
    "        return f'{self.remote_type}: {self.remote_message}'\n"
    "\n"
    "class NotConnectedError(TetherError, ConnectionError):\n"
    "    \"\"\"The connection is closed, or not connected yet, or reconnecting.\"\"\"\n"
    "\n"
    "class NoSuchServiceError(TetherError, LookupError):\n"
    "    \"\"\"The peer has no service of that name.\"\"\"\n"
    "\n"
    "class CancelledError(TetherError):\n"
    "    \"\"\"The call was cancelled (Future.cancel, or the connection closed locally).\"\"\"\n";

static int
define_exceptions(PyObject *module, module_state *st)
{
    PyObject *globals = PyDict_New();
    PyObject *code = NULL, *r = NULL;
    int result = -1;
    PyObject *module_name = PyUnicode_FromString("tether");
    int named =
        globals && module_name ? PyDict_SetItemString(globals, "__name__", module_name) : -1;
    Py_XDECREF(module_name);
    if (named < 0) {
        goto out;
    }
    PyObject *builtins = PyImport_ImportModule("builtins");
    if (!builtins) {
        goto out;
    }
    int b = PyDict_SetItemString(globals, "__builtins__", builtins);
    Py_DECREF(builtins);
    if (b < 0) {
        goto out;
    }
    code = Py_CompileString(exceptions_source, "<tether._tether exceptions>", Py_file_input);
    if (!code || !(r = PyEval_EvalCode(code, globals, globals))) {
        goto out;
    }
    static const struct {
        const char *name;
        size_t offset;
    } classes[] = {
        {"TetherError", offsetof(module_state, TetherError)},
        {"RemoteError", offsetof(module_state, RemoteError)},
        {"NotConnectedError", offsetof(module_state, NotConnectedError)},
        {"NoSuchServiceError", offsetof(module_state, NoSuchServiceError)},
        {"CancelledError", offsetof(module_state, CancelledError)},
    };
    for (size_t i = 0; i < sizeof(classes) / sizeof(classes[0]); i++) {
        PyObject *cls = PyDict_GetItemString(globals, classes[i].name); /* borrowed */
        if (!cls || PyModule_AddObjectRef(module, classes[i].name, cls) < 0) {
            goto out;
        }
        *(PyObject **)((char *)st + classes[i].offset) = Py_NewRef(cls);
    }
    result = 0;
out:
    Py_XDECREF(r);
    Py_XDECREF(code);
    Py_XDECREF(globals);
    return result;
}

/* ======================================================================================
 * The callback hub: futures whose Python done-callbacks are due, and the thread that
 * runs them
 * ==================================================================================== */

typedef struct pending_cb pending_cb;

struct hub {
    atomic_int refs;
    pthread_mutex_t lock;
    pthread_cond_t cv;
    pending_cb *head, *tail; /* guarded by lock */
    bool stopping;           /* guarded by lock */
};

/* One future waiting for its completion, then queued for the runner. */
struct pending_cb {
    hub *hub;        /* a reference */
    PyObject *owner; /* the Future object, a strong reference handed to the runner */
    pending_cb *next;
};

static hub *
hub_new(void)
{
    hub *h = calloc(1, sizeof(*h));
    if (!h) {
        return NULL;
    }
    atomic_init(&h->refs, 1);
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->cv, NULL);
    return h;
}

static hub *
hub_ref(hub *h)
{
    atomic_fetch_add(&h->refs, 1);
    return h;
}

static void
hub_unref(hub *h)
{
    if (h && atomic_fetch_sub(&h->refs, 1) == 1) {
        pthread_mutex_destroy(&h->lock);
        pthread_cond_destroy(&h->cv);
        free(h);
    }
}

/* The core's completion callback (I/O thread, or the registering thread): no Python. */
static void
hub_on_ready(tether_future *future, void *userdata)
{
    pending_cb *p = userdata;
    hub *h = p->hub;
    pthread_mutex_lock(&h->lock);
    p->next = NULL;
    if (h->tail) {
        h->tail->next = p;
    } else {
        h->head = p;
    }
    h->tail = p;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->lock);
}

/* ======================================================================================
 * Future
 * ==================================================================================== */

enum {
    CB_NONE = 0,
    CB_WAITING = 1,
    CB_FIRED = 2
};

typedef struct {
    PyObject ob_base; /* PyObject_HEAD */
    tether_future *future;
    PyObject *method;    /* str, for repr */
    PyObject *callbacks; /* list of callables not yet run, or NULL */
    int cb_state;
    bool have_outcome;
    PyObject *result;    /* once have_outcome: the result, or NULL if failed */
    PyObject *exception; /* once have_outcome: the exception, or NULL if it succeeded */
    tether_context context; /* of the caller: for proxies in the result */
} FutureObject;

static PyObject *
future_new_object(module_state *st, tether_future *future, PyObject *method,
                  tether_context context)
{
    FutureObject *self = PyObject_GC_New(FutureObject, st->future_type);
    if (!self) {
        tether_future_unref(future);
        return NULL;
    }
    self->future = future;
    self->method = Py_NewRef(method);
    self->callbacks = NULL;
    self->cb_state = CB_NONE;
    self->have_outcome = false;
    self->result = NULL;
    self->exception = NULL;
    self->context = context;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
future_traverse(FutureObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->method);
    Py_VISIT(self->callbacks);
    Py_VISIT(self->result);
    Py_VISIT(self->exception);
    return 0;
}

static int
future_clear(FutureObject *self)
{
    Py_CLEAR(self->method);
    Py_CLEAR(self->callbacks);
    Py_CLEAR(self->result);
    Py_CLEAR(self->exception);
    return 0;
}

static void
future_dealloc(FutureObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    future_clear(self);
    /* Releasing a pending future does not cancel its call. */
    self->future = tether_future_unref(self->future);
    freefunc free_fn = PyType_GetSlot(type, Py_tp_free);
    free_fn(self);
    Py_DECREF(type);
}

/*
 * Wait for future up to timeout_usec (TETHER_TIMEOUT_INFINITE: forever) with the GIL
 * released. On the main thread, wakes every SIGNAL_SLICE_USEC to run signal handlers.
 * Returns 1 when ready, 0 on timeout, -1 with an exception set (KeyboardInterrupt, or
 * whatever a signal handler raised).
 */
static int
wait_future(module_state *st, tether_future *future, uint64_t timeout_usec)
{
    bool main_thread = PyThread_get_thread_ident() == st->main_thread;
    uint64_t deadline =
        timeout_usec == TETHER_TIMEOUT_INFINITE ? UINT64_MAX : tether_now_usec() + timeout_usec;
    for (;;) {
        uint64_t now = tether_now_usec();
        uint64_t slice = deadline == UINT64_MAX ? TETHER_TIMEOUT_INFINITE
                         : now < deadline       ? deadline - now
                                                : 0;
        if (main_thread && slice > SIGNAL_SLICE_USEC) {
            slice = SIGNAL_SLICE_USEC;
        }
        int r;
        PyThreadState *save = PyEval_SaveThread();
        r = tether_future_wait(future, slice);
        PyEval_RestoreThread(save);
        if (r == 0) {
            return 1;
        }
        if (main_thread && PyErr_CheckSignals() < 0) {
            return -1;
        }
        if (deadline != UINT64_MAX && tether_now_usec() >= deadline) {
            return tether_future_is_ready(future) == 1 ? 1 : 0;
        }
    }
}

/* Fetch and keep the outcome of a ready future. Returns 0, or -1 with an exception set
 * when the outcome itself cannot be turned into Python objects. */
static int
future_load_outcome(FutureObject *self)
{
    if (self->have_outcome) {
        return 0;
    }
    module_state *st = state_of_type(Py_TYPE(self));
    tether_value *value = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_future_get_result(self->future, &value, &err);
    if (r == TETHER_EINPROGRESS) {
        PyErr_SetString(PyExc_RuntimeError, "the future is not ready");
        return -1;
    }
    PyObject *result = NULL, *exception = NULL;
    if (r == 0) {
        xfer x = {st, NULL, self->context};
        result = object_from_value(value, &x);
    } else {
        exception = error_object(st, r, &err, AT_CALL);
    }
    tether_value_unref(value);
    tether_error_done(&err);
    if (!result && !exception) {
        return -1; /* a decoding error: not kept, the caller sees it */
    }
    if (self->have_outcome) {
        /* Another thread got here first while the GIL was released (imports). */
        Py_XDECREF(result);
        Py_XDECREF(exception);
        return 0;
    }
    self->result = result;
    self->exception = exception;
    self->have_outcome = true;
    return 0;
}

/* Wait as Future.result and Future.exception do: TimeoutError if not ready in time. */
static int
future_wait_ready(FutureObject *self, PyObject *timeout_obj)
{
    module_state *st = state_of_type(Py_TYPE(self));
    uint64_t timeout;
    if (usec_from_seconds(timeout_obj, TETHER_TIMEOUT_INFINITE, "timeout", &timeout) < 0) {
        return -1;
    }
    int r = wait_future(st, self->future, timeout);
    if (r == 0) {
        PyErr_Format(PyExc_TimeoutError, "the call to '%U' has not completed in time",
                     self->method);
        return -1;
    }
    return r < 0 ? -1 : 0;
}

static PyObject *
future_result_impl(FutureObject *self, PyObject *timeout)
{
    if (future_wait_ready(self, timeout) < 0 || future_load_outcome(self) < 0) {
        return NULL;
    }
    if (self->exception) {
        PyErr_SetObject((PyObject *)Py_TYPE(self->exception), self->exception);
        return NULL;
    }
    return Py_NewRef(self->result);
}

static PyObject *
future_result(FutureObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:result", kwlist, &timeout)) {
        return NULL;
    }
    return future_result_impl(self, timeout);
}

static PyObject *
future_exception(FutureObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:exception", kwlist, &timeout) ||
        future_wait_ready(self, timeout) < 0 || future_load_outcome(self) < 0) {
        return NULL;
    }
    return Py_NewRef(self->exception ? self->exception : Py_None);
}

static PyObject *
future_wait(FutureObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout_obj = Py_None;
    uint64_t timeout;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:wait", kwlist, &timeout_obj) ||
        usec_from_seconds(timeout_obj, TETHER_TIMEOUT_INFINITE, "timeout", &timeout) < 0) {
        return NULL;
    }
    int r = wait_future(state_of_type(Py_TYPE(self)), self->future, timeout);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

static PyObject *
future_done(FutureObject *self, PyObject *unused)
{
    return PyBool_FromLong(tether_future_is_ready(self->future) == 1);
}

static PyObject *
future_get_ready(FutureObject *self, void *closure)
{
    return future_done(self, NULL);
}

static PyObject *
future_get_value(FutureObject *self, void *closure)
{
    return future_result_impl(self, Py_None);
}

static PyObject *
future_cancel(FutureObject *self, PyObject *unused)
{
    return PyBool_FromLong(tether_future_cancel(self->future) == 0);
}

static PyObject *
future_cancelled(FutureObject *self, PyObject *unused)
{
    if (tether_future_is_ready(self->future) != 1) {
        Py_RETURN_FALSE;
    }
    int r = tether_future_get_result(self->future, NULL, NULL);
    return PyBool_FromLong(r == TETHER_ECANCELED);
}

static void
call_done_callback(PyObject *fn, PyObject *future)
{
    PyObject *r = PyObject_CallFunctionObjArgs(fn, future, NULL);
    if (r) {
        Py_DECREF(r);
    } else {
        PyErr_WriteUnraisable(fn);
    }
}

/* Run (and forget) the callbacks of a completed future. GIL held. */
static void
future_run_callbacks(FutureObject *self)
{
    self->cb_state = CB_FIRED;
    PyObject *callbacks = self->callbacks;
    self->callbacks = NULL;
    if (!callbacks) {
        return;
    }
    for (Py_ssize_t i = 0; i < PyList_Size(callbacks); i++) {
        call_done_callback(PyList_GetItem(callbacks, i), (PyObject *)self);
    }
    Py_DECREF(callbacks);
}

static int
start_runner(PyObject *module, module_state *st)
{
    if (st->runner_started) {
        return 0;
    }
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *target = PyObject_GetAttrString(module, "_run_callbacks");
    PyObject *thread = NULL, *r = NULL;
    if (threading && target) {
        PyObject *cls = PyObject_GetAttrString(threading, "Thread");
        PyObject *kwargs = Py_BuildValue("{s:O,s:s,s:O}", "target", target, "name",
                                         "tether-callbacks", "daemon", Py_True);
        PyObject *noargs = PyTuple_New(0);
        if (cls && kwargs && noargs) {
            thread = PyObject_Call(cls, noargs, kwargs);
        }
        Py_XDECREF(cls);
        Py_XDECREF(kwargs);
        Py_XDECREF(noargs);
    }
    if (thread) {
        r = PyObject_CallMethod(thread, "start", NULL);
    }
    Py_XDECREF(threading);
    Py_XDECREF(target);
    Py_XDECREF(thread);
    if (!r) {
        return -1;
    }
    Py_DECREF(r);
    st->runner_started = true;
    return 0;
}

static PyObject *
future_add_done_callback(FutureObject *self, PyObject *fn)
{
    if (!PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "add_done_callback expects a callable");
        return NULL;
    }
    if (self->cb_state == CB_WAITING) {
        if (PyList_Append(self->callbacks, fn) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (self->cb_state == CB_FIRED || tether_future_is_ready(self->future) == 1) {
        call_done_callback(fn, (PyObject *)self);
        Py_RETURN_NONE;
    }
    PyObject *module = PyType_GetModule(Py_TYPE(self));
    module_state *st = module ? state_of_module(module) : NULL;
    if (!st || start_runner(module, st) < 0) {
        return NULL;
    }
    PyObject *callbacks = PyList_New(0);
    if (!callbacks || PyList_Append(callbacks, fn) < 0) {
        Py_XDECREF(callbacks);
        return NULL;
    }
    pending_cb *p = malloc(sizeof(*p));
    if (!p) {
        Py_DECREF(callbacks);
        return PyErr_NoMemory();
    }
    p->hub = hub_ref(st->hub);
    p->owner = Py_NewRef(self);
    p->next = NULL;
    self->callbacks = callbacks;
    self->cb_state = CB_WAITING;
    int r = tether_future_set_callback(self->future, TETHER_CONTEXT_IO, hub_on_ready, p);
    if (r < 0) {
        self->cb_state = CB_NONE;
        Py_CLEAR(self->callbacks);
        Py_DECREF(p->owner);
        hub_unref(p->hub);
        free(p);
        return raise_error(st, r, NULL, AT_CALL);
    }
    Py_RETURN_NONE;
}

/*
 * _run_callbacks(): the body of the "tether-callbacks" thread. Waits (GIL released) for
 * completed futures and runs their callbacks, until _shutdown.
 */
static PyObject *
module_run_callbacks(PyObject *module, PyObject *unused)
{
    hub *h = hub_ref(state_of_module(module)->hub);
    for (;;) {
        pending_cb *list;
        bool stop;
        PyThreadState *save = PyEval_SaveThread();
        pthread_mutex_lock(&h->lock);
        while (!h->head && !h->stopping) {
            pthread_cond_wait(&h->cv, &h->lock);
        }
        list = h->head;
        h->head = h->tail = NULL;
        stop = h->stopping;
        pthread_mutex_unlock(&h->lock);
        PyEval_RestoreThread(save);
        while (list) {
            pending_cb *p = list;
            list = p->next;
            future_run_callbacks((FutureObject *)p->owner);
            Py_DECREF(p->owner);
            hub_unref(p->hub);
            free(p);
        }
        if (stop) {
            break;
        }
    }
    hub_unref(h);
    Py_RETURN_NONE;
}

/* await future: the asyncio side (an asyncio future of the running loop that follows
 * this one) is Python, in tether._aio. */
static PyObject *
future_await(FutureObject *self)
{
    PyObject *aio = PyImport_ImportModule("tether._aio");
    PyObject *r = aio ? PyObject_CallMethod(aio, "await_future", "O", self) : NULL;
    Py_XDECREF(aio);
    return r;
}

static PyObject *
future_repr(FutureObject *self)
{
    const char *state = "pending";
    if (tether_future_is_ready(self->future) == 1) {
        int r = tether_future_get_result(self->future, NULL, NULL);
        state = r == 0 ? "finished" : r == TETHER_ECANCELED ? "cancelled" : "failed";
    }
    return PyUnicode_FromFormat("<tether.Future %R %s>", self->method, state);
}

static PyMethodDef future_methods[] = {
    {"wait", (PyCFunction)(void (*)(void))future_wait, METH_VARARGS | METH_KEYWORDS,
     "wait(timeout=None) -> bool\n\nWait until the call completes or timeout seconds pass "
     "(None: no limit). True if it completed. The call itself goes on either way."},
    {"result", (PyCFunction)(void (*)(void))future_result, METH_VARARGS | METH_KEYWORDS,
     "result(timeout=None)\n\nThe call's result, waiting for it; raises its exception if "
     "it failed, TimeoutError if it has not completed within timeout seconds."},
    {"exception", (PyCFunction)(void (*)(void))future_exception, METH_VARARGS | METH_KEYWORDS,
     "exception(timeout=None)\n\nThe call's exception (None if it succeeded), waiting as "
     "result() does."},
    {"done", (PyCFunction)future_done, METH_NOARGS, "done() -> bool: the call completed."},
    {"cancel", (PyCFunction)future_cancel, METH_NOARGS,
     "cancel() -> bool\n\nCancel the call: the future completes with CancelledError and "
     "the callee is told to stop. False if it had completed already."},
    {"cancelled", (PyCFunction)future_cancelled, METH_NOARGS,
     "cancelled() -> bool: the call was cancelled."},
    {"add_done_callback", (PyCFunction)future_add_done_callback, METH_O,
     "add_done_callback(fn)\n\nCall fn(future) once the call completes: on tether's "
     "callback thread, or at once on this thread if it has completed already. An "
     "exception in fn goes to sys.unraisablehook."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef future_getset[] = {
    {"ready", (getter)future_get_ready, NULL, "True once the call has completed.", NULL},
    {"value", (getter)future_get_value, NULL, "result(), as RPyC's AsyncResult.value.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot future_slots[] = {
    {Py_tp_doc, "The outcome of a call made with call_async (tether.async_, conn.async_)."},
    {Py_tp_dealloc, future_dealloc},
    {Py_tp_traverse, future_traverse},
    {Py_tp_clear, future_clear},
    {Py_tp_repr, future_repr},
    {Py_am_await, future_await},
    {Py_tp_methods, future_methods},
    {Py_tp_getset, future_getset},
    {0, NULL},
};

static PyType_Spec future_spec = {
    .name = "tether.Future",
    .basicsize = sizeof(FutureObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = future_slots,
};

/* ======================================================================================
 * Services: Python callables the peer calls, run on the core's worker pool
 * ==================================================================================== */

/*
 * One registered service. The core's handler gets a handle (slot index and generation),
 * never this pointer; handlers look the record up under svc_lock and hold a reference
 * while they run. The callable is read and cleared only with the GIL held.
 */
typedef struct service_rec {
    unsigned refs;          /* guarded by svc_lock */
    PyObject *callable;     /* guarded by the GIL; NULL once the Client let go */
    PyTypeObject *deferred; /* guarded by the GIL: the Reply type for a deferred service */
    uint32_t slot;
    module_state *st;       /* lives until interpreter exit, which stops handlers first */
    tether_context context; /* where it runs: MAIN or POOL */
} service_rec;

typedef struct {
    service_rec *rec;
    uint32_t generation;
} service_slot;

static pthread_mutex_t svc_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t svc_idle = PTHREAD_COND_INITIALIZER;
static service_slot *svc_slots; /* guarded by svc_lock */
static uint32_t svc_slot_count; /* guarded by svc_lock */
static unsigned svc_running;    /* guarded by svc_lock: handlers between lookup and exit */
static bool svc_shutdown;       /* guarded by svc_lock: interpreter exiting */

/* Handles pack a slot index (low 24 bits) and a generation; 0 is never a handle. */
#define SVC_SLOT_BITS 24
#define SVC_SLOT_MAX ((1u << SVC_SLOT_BITS) - 1)

static uintptr_t
svc_handle(uint32_t slot, uint32_t generation)
{
    return ((uintptr_t)generation << SVC_SLOT_BITS) | (slot + 1);
}

/* Register rec; fills rec->slot and returns its handle, or 0 when out of memory. */
static uintptr_t
svc_register(service_rec *rec)
{
    pthread_mutex_lock(&svc_lock);
    uint32_t slot = 0;
    while (slot < svc_slot_count && svc_slots[slot].rec) {
        slot++;
    }
    if (slot == svc_slot_count) {
        uint32_t count = svc_slot_count ? svc_slot_count * 2 : 16;
        service_slot *slots =
            count - 1 > SVC_SLOT_MAX ? NULL : realloc(svc_slots, count * sizeof(*slots));
        if (!slots) {
            pthread_mutex_unlock(&svc_lock);
            return 0;
        }
        memset(slots + svc_slot_count, 0, (count - svc_slot_count) * sizeof(*slots));
        svc_slots = slots;
        svc_slot_count = count;
    }
    uint32_t generation = (svc_slots[slot].generation + 1) & 0x7f;
    generation = generation ? generation : 1;
    svc_slots[slot].generation = generation;
    svc_slots[slot].rec = rec;
    rec->slot = slot;
    rec->refs = 1;
    pthread_mutex_unlock(&svc_lock);
    return svc_handle(slot, generation);
}

static void
svc_unref_locked(service_rec *rec)
{
    if (--rec->refs == 0) {
        free(rec);
    }
}

/* The Client lets go of rec: no new handler finds it. GIL held (clears the callable). */
static void
svc_unregister(service_rec *rec)
{
    Py_CLEAR(rec->callable);
    Py_CLEAR(rec->deferred);
    pthread_mutex_lock(&svc_lock);
    svc_slots[rec->slot].rec = NULL;
    svc_unref_locked(rec);
    pthread_mutex_unlock(&svc_lock);
}

/* A handler's lookup: a reference to the record, or NULL if gone or exiting. */
static service_rec *
svc_acquire(uintptr_t handle)
{
    uint32_t slot = (uint32_t)(handle & SVC_SLOT_MAX) - 1;
    uint32_t generation = (uint32_t)(handle >> SVC_SLOT_BITS);
    service_rec *rec = NULL;
    pthread_mutex_lock(&svc_lock);
    if (!svc_shutdown && slot < svc_slot_count && svc_slots[slot].generation == generation &&
        svc_slots[slot].rec) {
        rec = svc_slots[slot].rec;
        rec->refs++;
        svc_running++;
    }
    pthread_mutex_unlock(&svc_lock);
    return rec;
}

static void
svc_release(service_rec *rec)
{
    pthread_mutex_lock(&svc_lock);
    svc_unref_locked(rec);
    if (--svc_running == 0) {
        pthread_cond_broadcast(&svc_idle);
    }
    pthread_mutex_unlock(&svc_lock);
}

/* Enter code that takes the GIL from a core thread (object methods, releases): false
 * once the interpreter is exiting. Pair with svc_leave. */
static bool
svc_enter(void)
{
    pthread_mutex_lock(&svc_lock);
    bool ok = !svc_shutdown;
    if (ok) {
        svc_running++;
    }
    pthread_mutex_unlock(&svc_lock);
    return ok;
}

static void
svc_leave(void)
{
    pthread_mutex_lock(&svc_lock);
    if (--svc_running == 0) {
        pthread_cond_broadcast(&svc_idle);
    }
    pthread_mutex_unlock(&svc_lock);
}

/* The error type name sent for exc: the remote type of an exception that came from
 * another peer, the bare name of a builtin, else module.Qualname. */
static PyObject *
exception_type_name(PyObject *exc)
{
    PyObject *remote = PyObject_GetAttrString(exc, "remote_type");
    if (remote && PyUnicode_Check(remote)) {
        return remote;
    }
    Py_XDECREF(remote);
    PyErr_Clear();
    return type_display_name(Py_TYPE(exc));
}

/* The message sent for exc: the remote message of an exception that came from another
 * peer (passed on unchanged, not prefixed once more per hop), else str(exc). */
static PyObject *
exception_message(PyObject *exc)
{
    PyObject *remote = PyObject_GetAttrString(exc, "remote_message");
    if (remote && PyUnicode_Check(remote)) {
        return remote;
    }
    Py_XDECREF(remote);
    PyErr_Clear();
    return PyObject_Str(exc);
}

/* The formatted traceback of an exception (as traceback.format_exception), or NULL. */
static PyObject *
format_traceback(PyObject *type, PyObject *value, PyObject *tb)
{
    PyObject *module = PyImport_ImportModule("traceback");
    PyObject *lines = module ? PyObject_CallMethod(module, "format_exception", "OOO", type,
                                                   value ? value : Py_None, tb ? tb : Py_None)
                             : NULL;
    PyObject *empty = lines ? PyUnicode_FromString("") : NULL;
    PyObject *text = empty ? PyUnicode_Join(empty, lines) : NULL;
    Py_XDECREF(empty);
    Py_XDECREF(lines);
    Py_XDECREF(module);
    if (!text) {
        PyErr_Clear();
    }
    return text;
}

/*
 * Reply to req with the pending Python exception, which is cleared: its type name,
 * message and formatted traceback. For a notification, whose failure nobody hears, the
 * exception goes to sys.unraisablehook instead.
 */
static void
reply_exception(tether_request *req, PyObject *callable)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb && value) {
        PyException_SetTraceback(value, tb);
    }
    if (tether_request_is_notification(req)) {
        PyErr_Restore(type, value, tb);
        PyErr_WriteUnraisable(callable);
        return;
    }
    PyObject *name = value ? exception_type_name(value) : NULL;
    PyObject *message = value ? exception_message(value) : NULL;
    PyObject *text = type ? format_traceback(type, value, tb) : NULL;
    const char *name_s = name ? PyUnicode_AsUTF8AndSize(name, NULL) : NULL;
    const char *message_s = message ? PyUnicode_AsUTF8AndSize(message, NULL) : NULL;
    const char *text_s = text ? PyUnicode_AsUTF8AndSize(text, NULL) : NULL;
    PyErr_Clear();
    tether_error error = {
        .type = (char *)(name_s ? name_s : "Exception"),
        .message = (char *)(message_s ? message_s : "(the exception could not be shown)"),
        .traceback = (char *)text_s,
    };
    tether_request_reply_error_full(req, &error);
    Py_XDECREF(name);
    Py_XDECREF(message);
    Py_XDECREF(text);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

/* Reply to req with result, or when result is NULL (or cannot be sent) with the pending
 * exception. GIL held. */
static void
reply_outcome(tether_request *req, PyObject *result, PyObject *callable, const xfer *x)
{
    tether_value *v = result ? value_from_object(result, 0, x) : NULL;
    if (v) {
        tether_request_reply_value(req, v);
        tether_value_unref(v);
    } else {
        reply_exception(req, callable);
    }
}

/* The request of a deferred service, which the service answers when it is done (an
 * asyncio task, for instance), from any thread holding the GIL. */
typedef struct {
    PyObject ob_base;    /* PyObject_HEAD */
    tether_request *req; /* a reference, until replied */
    PyObject *callable;  /* the service: what a notification's failure is reported against */
    xfer x;              /* for objects in the result (x.conn unused: the request's) */
} ReplyObject;

static PyObject *
reply_new(PyTypeObject *type, tether_request *req, PyObject *callable, const xfer *x)
{
    ReplyObject *self = PyObject_GC_New(ReplyObject, type);
    if (!self) {
        return NULL;
    }
    self->req = tether_request_ref(req);
    self->callable = Py_NewRef(callable);
    self->x = *x;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
reply_traverse(ReplyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->callable);
    return 0;
}

static int
reply_clear(ReplyObject *self)
{
    Py_CLEAR(self->callable);
    return 0;
}

static void
reply_dealloc(ReplyObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    reply_clear(self);
    /* Never replied: the core answers "handler dropped the request". */
    self->req = tether_request_unref(self->req);
    freefunc free_fn = PyType_GetSlot(type, Py_tp_free);
    free_fn(self);
    Py_DECREF(type);
}

/* Reply with result (NULL: the pending exception) and let the request go. */
static PyObject *
reply_finish(ReplyObject *self, PyObject *result)
{
    if (!self->req) {
        PyErr_SetString(PyExc_RuntimeError, "this request has been replied to already");
        return NULL;
    }
    tether_request *req = self->req;
    self->req = NULL;
    xfer x = self->x;
    x.conn = tether_request_get_conn(req);
    reply_outcome(req, result, self->callable ? self->callable : Py_None, &x);
    tether_request_unref(req);
    Py_RETURN_NONE;
}

static PyObject *
reply_set_result(ReplyObject *self, PyObject *value)
{
    return reply_finish(self, value);
}

static PyObject *
reply_set_exception(ReplyObject *self, PyObject *exc)
{
    if (!PyExceptionInstance_Check(exc)) {
        PyErr_SetString(PyExc_TypeError, "set_exception expects an exception instance");
        return NULL;
    }
    if (!self->req) {
        return reply_finish(self, NULL); /* its RuntimeError, without exc pending */
    }
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), Py_NewRef(exc),
                  PyException_GetTraceback(exc));
    return reply_finish(self, NULL);
}

static PyObject *
reply_cancelled(ReplyObject *self, PyObject *unused)
{
    return PyBool_FromLong(self->req && tether_request_is_cancelled(self->req) == 1);
}

static PyObject *
reply_done(ReplyObject *self, PyObject *unused)
{
    return PyBool_FromLong(!self->req);
}

static PyMethodDef reply_methods[] = {
    {"set_result", (PyCFunction)reply_set_result, METH_O,
     "set_result(value)\n\nReply with value (a TypeError for the caller if it cannot be "
     "sent). RuntimeError if replied already."},
    {"set_exception", (PyCFunction)reply_set_exception, METH_O,
     "set_exception(exc)\n\nReply with the exception exc, its traceback included (for a "
     "notification, exc goes to sys.unraisablehook). RuntimeError if replied already."},
    {"cancelled", (PyCFunction)reply_cancelled, METH_NOARGS,
     "cancelled() -> bool: the caller cancelled the call, or its connection is gone."},
    {"done", (PyCFunction)reply_done, METH_NOARGS, "done() -> bool: replied already."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot reply_slots[] = {
    {Py_tp_doc, "The request of a deferred service (Client.add_service(..., deferred=True)), "
                "replied to once with set_result or set_exception. Dropped unreplied once "
                "the service returned, the call fails (\"the handler dropped the request\")."},
    {Py_tp_dealloc, reply_dealloc},
    {Py_tp_traverse, reply_traverse},
    {Py_tp_clear, reply_clear},
    {Py_tp_methods, reply_methods},
    {0, NULL},
};

static PyType_Spec reply_spec = {
    .name = "tether._tether.Reply",
    .basicsize = sizeof(ReplyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = reply_slots,
};

/*
 * Convert req's arguments, call callable, reply. GIL held. A deferred service (deferred:
 * the Reply type) is called with a Reply first and answers through it; only an
 * exception it raises before answering is replied here. lead (nlead items, may be 0)
 * go before the request's own arguments. x tells where objects come from and go.
 */
static void
serve_request(tether_request *req, PyObject *callable, PyTypeObject *deferred,
              PyObject *const *lead, size_t nlead, const xfer *x)
{
    PyObject *reply = NULL;
    PyObject *args_list = object_from_value(tether_request_get_args(req), x);
    PyObject *kwargs = args_list ? object_from_value(tether_request_get_kwargs(req), x) : NULL;
    PyObject *args = NULL, *result = NULL;
    if (kwargs && (!PyList_Check(args_list) || !PyDict_Check(kwargs))) {
        PyErr_SetString(PyExc_TypeError, "malformed arguments");
    } else if (kwargs) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(kwargs, &pos, &key, &value)) {
            if (!PyUnicode_Check(key)) {
                PyErr_SetString(PyExc_TypeError, "keyword argument names must be strings");
                break;
            }
        }
        if (!PyErr_Occurred() && deferred && (reply = reply_new(deferred, req, callable, x)) &&
            PyList_Insert(args_list, 0, reply) < 0) {
            Py_CLEAR(reply);
        }
        for (size_t i = nlead; i > 0 && !PyErr_Occurred(); i--) {
            PyList_Insert(args_list, 0, lead[i - 1]);
        }
        if (!PyErr_Occurred()) {
            args = PyList_AsTuple(args_list);
        }
    }
    if (args) {
        result = PyObject_Call(callable, args, PyDict_Size(kwargs) ? kwargs : NULL);
    }
    if (!reply) {
        reply_outcome(req, result, callable, x);
    } else if (!result) {
        PyObject *r = ((ReplyObject *)reply)->req ? reply_finish((ReplyObject *)reply, NULL) : NULL;
        if (r) {
            Py_DECREF(r);
        } else {
            PyErr_WriteUnraisable(callable); /* it failed after it had replied */
        }
    }
    Py_XDECREF(reply);
    Py_XDECREF(args_list);
    Py_XDECREF(kwargs);
    Py_XDECREF(args);
    Py_XDECREF(result);
}

/* The core's handler of every Python service (a worker-pool thread, or the Client's
 * main thread inside its dispatch). */
static int
service_handler(tether_request *req, void *userdata)
{
    service_rec *rec = svc_acquire((uintptr_t)userdata);
    if (!rec) {
        return tether_request_reply_error(req, "tether.Cancelled",
                                          "the service is gone (its client was closed, or "
                                          "the interpreter is exiting)");
    }
    if (tether_request_is_cancelled(req)) {
        svc_release(rec);
        return 0;
    }
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *callable = rec->callable ? Py_NewRef(rec->callable) : NULL;
    PyObject *deferred = rec->deferred ? Py_NewRef(rec->deferred) : NULL;
    if (callable) {
        xfer x = {rec->st, tether_request_get_conn(req), rec->context};
        serve_request(req, callable, (PyTypeObject *)deferred, NULL, 0, &x);
        Py_DECREF(callable);
    } else {
        tether_request_reply_error(req, "tether.Cancelled", "the service is gone");
    }
    Py_XDECREF(deferred);
    PyGILState_Release(gil);
    svc_release(rec);
    return 0;
}

/* ======================================================================================
 * Objects by reference
 *
 * Values that are not plain data travel by reference (tether.h, "Objects").
 * - Sending: an object of ours becomes a local tether_object, one per Python object
 *   while it is exported (st->exports maps id(obj) to it, without holding it; a stale
 *   entry whose object is being released is replaced). Its class is made once per type
 *   name and context; its fallback handler runs what the peer asks of the object
 *   through tether._proxy.serve, in the context of the client that exported it: POOL
 *   for serve="thread", MAIN otherwise. Its release (POOL) drops the Python object.
 *   A tether.Proxy sent back to its owner goes as its own reference.
 * - Receiving: a REF of the peer becomes a Ref (the proxy's handle, holding the core's
 *   proxy) wrapped by tether._proxy.make_proxy, which keeps one tether.Proxy per remote
 *   object; a REF of ours comes back as the original Python object.
 * ==================================================================================== */

#define EXPORT_MAGIC 0x74657870u /* "texp": marks the userdata of objects made here */

typedef struct pyexport {
    uint32_t magic;
    PyObject *obj;       /* a strong reference: the peer holds the object through us */
    PyObject *key;       /* id(obj), the key in exports */
    PyObject *exports;   /* st->exports (a strong reference: it outlives the module state) */
    module_state *st;    /* for the handler, which runs only before interpreter exit */
    tether_context context;
    tether_object *self; /* not a reference: the core's object that carries this */
} pyexport;

typedef struct {
    tether_class cls;
    char name[];
} class_rec;

typedef struct {
    PyObject ob_base; /* PyObject_HEAD */
    tether_object *obj;     /* a proxy (remote object) */
    tether_context context; /* for objects of ours sent in calls made through it */
} RefObject;

/* What this module uses of tether._proxy (which imports this module, so it is looked up
 * on first use and kept: objects by reference go through here on every call). */
enum {
    PART_PROXY,        /* the Proxy class */
    PART_BY_REFERENCE, /* the ByReference class */
    PART_MAKE_PROXY,   /* make_proxy(ref) */
    PART_SERVE,        /* serve(obj, method, *args, **kwargs) */
};

static PyObject *
proxy_part(module_state *st, int part)
{
    static const char *const names[] = {"Proxy", "ByReference", "make_proxy", "serve"};
    if (!st->proxy_parts[part]) {
        PyObject *module = PyImport_ImportModule("tether._proxy");
        st->proxy_parts[part] = module ? PyObject_GetAttrString(module, names[part]) : NULL;
        Py_XDECREF(module);
    }
    return Py_XNewRef(st->proxy_parts[part]);
}

static int object_handler(tether_request *req, void *userdata);
static void export_release(void *userdata);

/* The class of exported objects of o's type running in context, made on first use.
 * Classes are never freed: the core may use them until the process ends. */
static const tether_class *
class_for(module_state *st, PyObject *o, tether_context context)
{
    PyObject *name = type_display_name(Py_TYPE(o));
    PyObject *key = name ? Py_BuildValue("(iO)", (int)context, name) : NULL;
    PyObject *found = key ? PyDict_GetItemWithError(st->classes, key) : NULL;
    const tether_class *cls = NULL;
    if (found) {
        cls = PyCapsule_GetPointer(found, NULL);
    } else if (key && !PyErr_Occurred()) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(name, &n);
        class_rec *rec = s ? calloc(1, sizeof(*rec) + (size_t)n + 1) : NULL;
        PyObject *capsule = rec ? PyCapsule_New(rec, NULL, NULL) : NULL;
        if (capsule && PyDict_SetItem(st->classes, key, capsule) == 0) {
            memcpy(rec->name, s, (size_t)n);
            rec->cls = (tether_class){
                .name = rec->name,
                .fallback = object_handler,
                .fallback_context = context,
                .release = export_release,
                .release_context = TETHER_CONTEXT_POOL, /* it takes the GIL */
            };
            cls = &rec->cls;
        } else {
            if (s && !rec) {
                PyErr_NoMemory();
            }
            free(rec); /* the capsule never owned it */
        }
        Py_XDECREF(capsule);
    }
    Py_XDECREF(key);
    Py_XDECREF(name);
    return cls;
}

/* The local object exported for o, a new reference; NULL with an exception set. */
static tether_object *
export_object(const xfer *x, PyObject *o)
{
    module_state *st = x->st;
    PyObject *key = PyLong_FromVoidPtr(o);
    if (!key) {
        return NULL;
    }
    PyObject *found = PyDict_GetItemWithError(st->exports, key);
    if (found) {
        tether_object *obj = tether_object_ref_live(PyLong_AsVoidPtr(found));
        if (obj) {
            Py_DECREF(key);
            return obj;
        }
    } else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    if (!x->conn) {
        Py_DECREF(key);
        PyErr_SetString(st->NotConnectedError, "cannot send an object: not connected");
        return NULL;
    }
    const tether_class *cls = class_for(st, o, x->context);
    pyexport *pe = cls ? calloc(1, sizeof(*pe)) : NULL;
    if (!pe) {
        Py_DECREF(key);
        return cls ? (tether_object *)PyErr_NoMemory() : NULL;
    }
    *pe = (pyexport){EXPORT_MAGIC, Py_NewRef(o), key, Py_NewRef(st->exports), st, x->context,
                     NULL};
    tether_object *obj = NULL;
    int r = tether_conn_new_object(x->conn, cls, pe, &obj);
    PyObject *address = r == 0 ? PyLong_FromVoidPtr(obj) : NULL;
    if (address && PyDict_SetItem(st->exports, key, address) == 0) {
        Py_DECREF(address);
        pe->self = obj;
        return obj;
    }
    Py_XDECREF(address);
    if (r < 0) {
        PyErr_Format(PyExc_ValueError, "cannot export the object: %s", tether_strerror(r));
        Py_DECREF(pe->obj);
        Py_DECREF(pe->key);
        Py_DECREF(pe->exports);
        free(pe);
        return NULL;
    }
    tether_object_unref(obj); /* its release frees pe */
    return NULL;
}

/* An unsigned integer in its shortest msgpack form. */
static int
pb_uint(packbuf *b, uint64_t u)
{
    if (u < 128) {
        uint8_t c = (uint8_t)u;
        return pb_put(b, &c, 1);
    }
    return u <= 0xff ? pb_tag(b, 0xcc, u, 1)
           : u <= 0xffff ? pb_tag(b, 0xcd, u, 2)
           : u <= 0xffffffffu ? pb_tag(b, 0xce, u, 4)
                              : pb_tag(b, 0xcf, u, 8);
}

/* o as a REF ext, its object kept in b->objs for tether_value_new_msgpack_objects. */
static int
pack_reference(packbuf *b, PyObject *o)
{
    module_state *st = b->x->st;
    tether_object *obj = NULL;
    /* tether._proxy.ByReference(x): x itself, by reference even if it is plain data. */
    PyObject *by_reference = proxy_part(st, PART_BY_REFERENCE);
    int wrapped = by_reference ? PyObject_IsInstance(o, by_reference) : -1;
    Py_XDECREF(by_reference);
    if (wrapped < 0) {
        return -1;
    }
    PyObject *inner = wrapped ? PyObject_GetAttrString(o, "obj") : NULL;
    if (wrapped && !inner) {
        return -1;
    }
    if (inner) {
        o = inner; /* borrowed below: b keeps the export, which holds it */
        Py_DECREF(inner);
    }
    PyObject *proxy_type = proxy_part(st, PART_PROXY);
    int is_proxy = proxy_type ? PyObject_IsInstance(o, proxy_type) : -1;
    Py_XDECREF(proxy_type);
    if (is_proxy < 0) {
        return -1;
    }
    if (is_proxy) {
        PyObject *ref = PyObject_GetAttrString(o, "_tether_ref");
        tether_object *theirs = ref && Py_TYPE(ref) == st->ref_type ? ((RefObject *)ref)->obj
                                                                    : NULL;
        if (theirs && tether_object_get_conn(theirs) == b->x->conn) {
            obj = tether_object_ref(theirs);
        } else if (theirs) {
            PyErr_Format(PyExc_TypeError,
                         "cannot send a tether.Proxy (of a '%s') over another connection: a "
                         "proxy goes back only to the connection it came from",
                         tether_object_get_type_name(theirs));
        } else if (ref) {
            PyErr_SetString(PyExc_TypeError, "a broken tether.Proxy");
        }
        Py_XDECREF(ref);
    } else {
        obj = export_object(b->x, o);
    }
    if (!obj) {
        return -1;
    }
    if (b->nobjs == b->capobjs) {
        size_t cap = b->capobjs ? 2 * b->capobjs : 4;
        tether_object **objs = realloc(b->objs, cap * sizeof(*objs));
        if (!objs) {
            tether_object_unref(obj);
            PyErr_NoMemory();
            return -1;
        }
        b->objs = objs;
        b->capobjs = cap;
    }
    b->objs[b->nobjs++] = obj;

    /* [owner, id, type]: owner 0 for ours, 1 for the peer's own object going back. */
    packbuf payload;
    pb_init(&payload, NULL);
    const char *type = tether_object_get_type_name(obj);
    size_t type_len = strlen(type);
    uint8_t head[2] = {0x93, tether_object_is_remote(obj) ? 1 : 0};
    int r = pb_put(&payload, head, 2);
    r = r < 0 ? r : pb_uint(&payload, tether_object_get_id(obj));
    r = r < 0 ? r : pb_header(&payload, 0xa0, 32, 0xd9, 0xda, type_len);
    r = r < 0 ? r : pb_put(&payload, type, type_len);
    size_t n = payload.len;
    if (r == 0) {
        uint8_t fix = n == 1 ? 0xd4 : n == 2 ? 0xd5 : n == 4 ? 0xd6 : n == 8 ? 0xd7 : n == 16 ? 0xd8 : 0;
        uint8_t ext_type = 1;
        r = fix ? pb_put(b, &fix, 1)
            : n <= 0xff ? pb_tag(b, 0xc7, n, 1)
            : n <= 0xffff ? pb_tag(b, 0xc8, n, 2)
                          : pb_tag(b, 0xc9, n, 4);
        r = r < 0 ? r : pb_put(b, &ext_type, 1);
        r = r < 0 ? r : pb_put(b, payload.data, n);
    }
    pb_done(&payload);
    return r;
}

static PyObject *
ref_new(module_state *st, tether_object *obj, tether_context context)
{
    RefObject *self = PyObject_New(RefObject, st->ref_type);
    if (!self) {
        tether_object_unref(obj);
        return NULL;
    }
    self->obj = obj;
    self->context = context;
    return (PyObject *)self;
}

/* The Python object for an object of a received value (borrowed obj). */
static PyObject *
object_of_reference(const xfer *x, tether_object *obj)
{
    if (!tether_object_is_remote(obj)) {
        pyexport *pe = tether_object_get_userdata(obj);
        if (!pe || pe->magic != EXPORT_MAGIC) {
            PyErr_SetString(PyExc_TypeError, "received a reference to an object of this "
                                             "process that Python did not export");
            return NULL;
        }
        return Py_NewRef(pe->obj);
    }
    PyObject *ref = ref_new(x->st, tether_object_ref(obj), x->context);
    PyObject *make = ref ? proxy_part(x->st, PART_MAKE_PROXY) : NULL;
    PyObject *proxy = make ? PyObject_CallFunctionObjArgs(make, ref, NULL) : NULL;
    Py_XDECREF(make);
    Py_XDECREF(ref);
    return proxy;
}

/* The fallback handler of exported objects: any method or operation of the peer. */
static int
object_handler(tether_request *req, void *userdata)
{
    pyexport *pe = userdata;
    if (!svc_enter()) {
        return tether_request_reply_error(req, "tether.Cancelled", "the interpreter is exiting");
    }
    if (!tether_request_is_cancelled(req)) {
        PyGILState_STATE gil = PyGILState_Ensure();
        PyObject *serve = proxy_part(pe->st, PART_SERVE);
        PyObject *method = serve ? PyUnicode_FromString(tether_request_get_method(req)) : NULL;
        if (method) {
            PyObject *lead[2] = {pe->obj, method};
            xfer x = {pe->st, tether_request_get_conn(req), pe->context};
            serve_request(req, serve, NULL, lead, 2, &x);
        } else {
            reply_exception(req, Py_None);
        }
        Py_XDECREF(method);
        Py_XDECREF(serve);
        PyGILState_Release(gil);
    }
    svc_leave();
    return 0;
}

/* The last reference to an exported object went (a worker thread). */
static void
export_release(void *userdata)
{
    pyexport *pe = userdata;
    if (!svc_enter()) {
        return; /* the interpreter is exiting: the object goes with it */
    }
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *current = PyDict_GetItemWithError(pe->exports, pe->key);
    if (current && PyLong_AsVoidPtr(current) == pe->self) {
        PyDict_DelItem(pe->exports, pe->key);
    }
    PyErr_Clear();
    Py_DECREF(pe->obj);
    Py_DECREF(pe->key);
    Py_DECREF(pe->exports);
    PyGILState_Release(gil);
    svc_leave();
    free(pe);
}

/* ======================================================================================
 * Client
 * ==================================================================================== */

typedef struct {
    PyObject ob_base; /* PyObject_HEAD */
    tether_client *client;
    service_rec **services;
    size_t service_count;
    bool main_services; /* some services run in TETHER_CONTEXT_MAIN */
    bool main_objects;  /* objects it exports serve in TETHER_CONTEXT_MAIN (serve_main) */
    PyObject *name;     /* str */
} ClientObject;

static int
client_traverse(ClientObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->name);
    for (size_t i = 0; i < self->service_count; i++) {
        Py_VISIT(self->services[i]->callable);
        Py_VISIT(self->services[i]->deferred);
    }
    return 0;
}

static int
client_clear(ClientObject *self)
{
    for (size_t i = 0; i < self->service_count; i++) {
        svc_unregister(self->services[i]);
    }
    free(self->services);
    self->services = NULL;
    self->service_count = 0;
    Py_CLEAR(self->name);
    return 0;
}

static void
client_dealloc(ClientObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->client) {
        tether_client *client = self->client;
        self->client = NULL;
        /* Closing may wait for the I/O thread, which may wait for a handler that waits
         * for the GIL. */
        PyThreadState *save = PyEval_SaveThread();
        tether_client_unref(client);
        PyEval_RestoreThread(save);
    }
    client_clear(self);
    freefunc free_fn = PyType_GetSlot(type, Py_tp_free);
    free_fn(self);
    Py_DECREF(type);
}

static const char *
optional_utf8(PyObject *o, const char *what)
{
    if (!o || o == Py_None) {
        return NULL;
    }
    if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str or None", what);
        return NULL;
    }
    return PyUnicode_AsUTF8AndSize(o, NULL);
}

static PyObject *
client_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name",      "address",  "timeout",          "connect_timeout",
                             "token",     "runtime_dir", "reconnect",   "language",
                             "language_version", "fd", NULL};
    PyObject *name = Py_None, *address = Py_None, *timeout = Py_None;
    PyObject *connect_timeout = Py_None, *token = Py_None, *runtime_dir = Py_None;
    PyObject *language = Py_None, *language_version = Py_None;
    int reconnect = 1, fd = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO$OOOOpOOi:Client", kwlist, &name, &address,
                                     &timeout, &connect_timeout, &token, &runtime_dir, &reconnect,
                                     &language, &language_version, &fd)) {
        return NULL;
    }
    /* fd: an already-connected socket to use instead of an address (a spawned child's). */
    tether_client_options opts = {.no_reconnect = !reconnect, .fd = fd};
    /* Py_GetVersion(): "3.11.2 (main, ...". */
    char version[32];
    const char *full = Py_GetVersion();
    size_t n = strcspn(full, " ");
    snprintf(version, sizeof(version), "%.*s", (int)(n < sizeof(version) ? n : sizeof(version) - 1),
             full);
    if ((!(opts.name = optional_utf8(name, "name")) && PyErr_Occurred()) ||
        (!(opts.address = optional_utf8(address, "address")) && PyErr_Occurred()) ||
        (!(opts.token = optional_utf8(token, "token")) && PyErr_Occurred()) ||
        (!(opts.runtime_dir = optional_utf8(runtime_dir, "runtime_dir")) && PyErr_Occurred()) ||
        (!(opts.language = optional_utf8(language, "language")) && PyErr_Occurred()) ||
        (!(opts.language_version = optional_utf8(language_version, "language_version")) &&
         PyErr_Occurred())) {
        return NULL;
    }
    opts.language = opts.language ? opts.language : "python";
    opts.language_version = opts.language_version ? opts.language_version : version;
    /* timeout=None: calls never time out (0 would mean the core's default). */
    if (usec_from_seconds(timeout, TETHER_TIMEOUT_INFINITE, "timeout", &opts.default_timeout_usec) <
            0 ||
        usec_from_seconds(connect_timeout, 0, "connect_timeout", &opts.connect_timeout_usec) < 0) {
        return NULL;
    }
    if (timeout != Py_None && opts.default_timeout_usec == 0) {
        opts.default_timeout_usec = 1;
    }
    if (connect_timeout != Py_None && opts.connect_timeout_usec == 0) {
        opts.connect_timeout_usec = 1;
    }
    ClientObject *self = PyObject_GC_New(ClientObject, type);
    if (!self) {
        return NULL;
    }
    self->client = NULL;
    self->services = NULL;
    self->service_count = 0;
    self->main_services = false;
    self->name = NULL;
    PyObject_GC_Track(self);
    int r = tether_client_new(&opts, &self->client);
    if (r < 0) {
        Py_DECREF(self);
        return raise_error(state_of_type(type), r, NULL, AT_CONNECT);
    }
    self->name = name == Py_None ? PyUnicode_FromString("") : Py_NewRef(name);
    if (!self->name) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *
client_connect(ClientObject *self, PyObject *unused)
{
    tether_error err = TETHER_ERROR_INIT;
    int r;
    PyThreadState *save = PyEval_SaveThread();
    r = tether_client_connect(self->client, &err);
    PyEval_RestoreThread(save);
    if (r < 0 && r != TETHER_EALREADY) {
        raise_error(state_of_type(Py_TYPE(self)), r, &err, AT_CONNECT);
        tether_error_done(&err);
        return NULL;
    }
    tether_error_done(&err);
    Py_RETURN_NONE;
}

static PyObject *
client_close(ClientObject *self, PyObject *unused)
{
    PyThreadState *save = PyEval_SaveThread();
    tether_client_close(self->client);
    PyEval_RestoreThread(save);
    Py_RETURN_NONE;
}

static PyObject *
client_is_connected(ClientObject *self, PyObject *unused)
{
    return PyBool_FromLong(tether_client_is_connected(self->client) == 1);
}

static PyObject *
client_get_host_name(ClientObject *self, void *closure)
{
    return text_or_none(tether_client_get_host_name(self->client));
}

static PyObject *
client_get_name(ClientObject *self, void *closure)
{
    return Py_NewRef(self->name);
}

static PyObject *
client_fileno(ClientObject *self, PyObject *unused)
{
    int fd = tether_client_get_fd(self->client);
    if (fd < 0) {
        return raise_error(state_of_type(Py_TYPE(self)), fd, NULL, AT_CALL);
    }
    return PyLong_FromLong(fd);
}

static PyObject *
client_dispatch(ClientObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"budget", NULL};
    PyObject *budget_obj = Py_None;
    uint64_t budget;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:dispatch", kwlist, &budget_obj) ||
        usec_from_seconds(budget_obj, TETHER_BUDGET_UNLIMITED, "budget", &budget) < 0) {
        return NULL;
    }
    int r;
    PyThreadState *save = PyEval_SaveThread();
    r = tether_client_dispatch(self->client, budget);
    PyEval_RestoreThread(save);
    if (r < 0) {
        return raise_error(state_of_type(Py_TYPE(self)), r, NULL, AT_CALL);
    }
    return PyBool_FromLong(r > 0);
}

/* The current connection, or NULL with NotConnectedError set. */
static tether_conn *
client_conn(ClientObject *self, module_state *st)
{
    tether_conn *conn = tether_client_get_conn(self->client);
    if (!conn) {
        PyErr_SetString(st->NotConnectedError, "not connected (connect() was never called)");
    }
    return conn;
}

typedef struct {
    const char *method;
    PyObject *method_obj;
    tether_value *args, *kwargs;
    tether_call_options opts;
} call_spec;

/* Where a call goes: a service of the peer over conn (obj NULL), or a method of the
 * peer's object obj (on its connection conn). */
typedef struct {
    tether_conn *conn;
    tether_object *obj;
    tether_context context; /* of the caller: for objects sent and proxies received */
} call_target;

static int call_spec_parse_values(call_spec *c, module_state *st, const call_target *t,
                                  PyObject *args, PyObject *kwds, const char *format,
                                  bool with_timeout);

/* Parse method, args, kwargs (and timeout) into c, with the objects in them exported on
 * t's connection (NotConnectedError without one). On failure an exception is set; the
 * caller releases c either way. */
static int
call_spec_parse(call_spec *c, module_state *st, const call_target *t, PyObject *args,
                PyObject *kwds, const char *format, bool with_timeout)
{
    int r = call_spec_parse_values(c, st, t, args, kwds, format, with_timeout);
    if (r == 0 && !t->conn) {
        PyErr_SetString(st->NotConnectedError, "not connected (connect() was never called)");
        r = -1;
    }
    return r;
}

static int
call_spec_parse_values(call_spec *c, module_state *st, const call_target *t, PyObject *args,
                       PyObject *kwds, const char *format, bool with_timeout)
{
    static char *kwlist[] = {"method", "args", "kwargs", "timeout", "deadline", NULL};
    static char *kwlist_notify[] = {"method", "args", "kwargs", NULL};
    PyObject *a = Py_None, *k = Py_None, *timeout = Py_None, *deadline = Py_None;
    memset(c, 0, sizeof(*c));
    if (!PyArg_ParseTupleAndKeywords(args, kwds, format, with_timeout ? kwlist : kwlist_notify,
                                     &c->method_obj, &a, &k, &timeout, &deadline)) {
        return -1;
    }
    c->method = PyUnicode_AsUTF8AndSize(c->method_obj, NULL);
    uint64_t within = 0;
    if (!c->method ||
        usec_from_seconds(timeout, TETHER_TIMEOUT_DEFAULT, "timeout", &c->opts.timeout_usec) < 0 ||
        usec_from_seconds(deadline, 0, "deadline", &within) < 0) {
        return -1;
    }
    /* deadline: seconds from now that bound the whole call, however alive the callee. */
    if (deadline != Py_None && within != TETHER_TIMEOUT_INFINITE) {
        c->opts.deadline_usec = tether_now_usec() + (within ? within : 1);
    }
    if (timeout != Py_None && c->opts.timeout_usec == 0) {
        c->opts.timeout_usec = 1; /* 0 would mean the default */
    }
    xfer x = {st, t->conn, t->context};
    return values_from_args(a, k, &x, &c->args, &c->kwargs);
}

static void
call_spec_done(call_spec *c)
{
    c->args = tether_value_unref(c->args);
    c->kwargs = tether_value_unref(c->kwargs);
}

static int
target_call(const call_target *t, call_spec *c, tether_value **result, tether_error *err)
{
    return t->obj ? tether_object_call_values(t->obj, c->method, c->args, c->kwargs, &c->opts,
                                              result, err)
                  : tether_conn_call_values(t->conn, c->method, c->args, c->kwargs, &c->opts,
                                            result, err);
}

static int
target_call_async(const call_target *t, call_spec *c, tether_future **future)
{
    return t->obj ? tether_object_call_async_values(t->obj, c->method, c->args, c->kwargs,
                                                    &c->opts, future)
                  : tether_conn_call_async_values(t->conn, c->method, c->args, c->kwargs,
                                                  &c->opts, future);
}

/* Raise what a call that failed before it started (code r) raises. */
static PyObject *
raise_start_error(module_state *st, const char *method, int r)
{
    tether_error err = TETHER_ERROR_INIT;
    tether_error_set(&err, "tether.Error", "%s: %s", method, tether_strerror(r));
    raise_error(st, r, &err, AT_CALL);
    tether_error_done(&err);
    return NULL;
}

/* How many synchronous calls (the core's path) this thread is waiting in; services the
 * core runs inside them see it through _in_blocking_call(). */
static _Thread_local unsigned blocking_calls;

/* A blocking call on the main thread: the core calls this every SIGNAL_SLICE_USEC
 * while it waits, so that Ctrl-C (or any signal handler raising) cancels the call. */
typedef struct {
    PyThreadState *save;
    bool raised;
} signal_watch;

static int
check_signals(void *userdata)
{
    signal_watch *w = userdata;
    PyEval_RestoreThread(w->save);
    w->raised = PyErr_CheckSignals() < 0; /* the exception stays set for the caller */
    w->save = PyEval_SaveThread();
    return w->raised;
}

static PyObject *
call_target_sync(module_state *st, call_target target, PyObject *args, PyObject *kwds)
{
    const call_target *t = &target;
    call_spec c;
    if (call_spec_parse(&c, st, t, args, kwds, "U|OOOO:call", true) < 0) {
        call_spec_done(&c);
        return NULL;
    }
    tether_value *result = NULL;
    tether_error err = TETHER_ERROR_INIT;
    /* The core's synchronous path, whose waiting thread reads its own reply and runs
     * the peer's call-backs into this thread's services. Only the main thread receives
     * signals: there the core asks check_signals between slices of the wait. */
    signal_watch watch = {NULL, false};
    if (PyThread_get_thread_ident() == st->main_thread) {
        c.opts.interrupt = check_signals;
        c.opts.interrupt_userdata = &watch;
        c.opts.interrupt_interval_usec = SIGNAL_SLICE_USEC;
    }
    blocking_calls++;
    watch.save = PyEval_SaveThread();
    int r = target_call(t, &c, &result, &err);
    PyEval_RestoreThread(watch.save);
    blocking_calls--;
    call_spec_done(&c);
    PyObject *o;
    if (watch.raised) {
        o = NULL; /* KeyboardInterrupt or whatever the handler raised; the call is cancelled */
    } else if (r < 0) {
        o = raise_error(st, r, &err, AT_CALL);
    } else {
        xfer x = {st, t->conn, t->context};
        o = object_from_value(result, &x);
    }
    tether_value_unref(result);
    tether_error_done(&err);
    return o;
}

static PyObject *
call_target_async(module_state *st, call_target target, PyObject *args, PyObject *kwds)
{
    const call_target *t = &target;
    call_spec c;
    if (call_spec_parse(&c, st, t, args, kwds, "U|OOOO:call_async", true) < 0) {
        call_spec_done(&c);
        return NULL;
    }
    tether_future *future = NULL;
    int r = target_call_async(t, &c, &future);
    call_spec_done(&c);
    if (r < 0) {
        return raise_start_error(st, c.method, r);
    }
    return future_new_object(st, future, c.method_obj, t->context);
}

static PyObject *
call_target_notify(module_state *st, call_target target, PyObject *args, PyObject *kwds)
{
    const call_target *t = &target;
    call_spec c;
    if (call_spec_parse(&c, st, t, args, kwds, "U|OO:notify", false) < 0) {
        call_spec_done(&c);
        return NULL;
    }
    int r = t->obj ? tether_object_notify_values(t->obj, c.method, c.args, c.kwargs)
                   : tether_conn_notify_values(t->conn, c.method, c.args, c.kwargs);
    call_spec_done(&c);
    if (r < 0) {
        return raise_start_error(st, c.method, r);
    }
    Py_RETURN_NONE;
}

/* A call of the host's services through this client (conn NULL before connect). */
static call_target
client_target(ClientObject *self)
{
    return (call_target){
        .conn = tether_client_get_conn(self->client),
        .context = self->main_objects ? TETHER_CONTEXT_MAIN : TETHER_CONTEXT_POOL,
    };
}

static PyObject *
client_call(ClientObject *self, PyObject *args, PyObject *kwds)
{
    return call_target_sync(state_of_type(Py_TYPE(self)), client_target(self), args, kwds);
}

static PyObject *
client_call_async(ClientObject *self, PyObject *args, PyObject *kwds)
{
    return call_target_async(state_of_type(Py_TYPE(self)), client_target(self), args, kwds);
}

static PyObject *
client_notify(ClientObject *self, PyObject *args, PyObject *kwds)
{
    return call_target_notify(state_of_type(Py_TYPE(self)), client_target(self), args, kwds);
}

/* ---- Ref: the handle of a tether.Proxy ----------------------------------------------- */

static call_target
ref_target(RefObject *self)
{
    return (call_target){
        .conn = tether_object_get_conn(self->obj),
        .obj = self->obj,
        .context = self->context,
    };
}

static PyObject *
ref_call(RefObject *self, PyObject *args, PyObject *kwds)
{
    return call_target_sync(state_of_type(Py_TYPE(self)), ref_target(self), args, kwds);
}

static PyObject *
ref_call_async(RefObject *self, PyObject *args, PyObject *kwds)
{
    return call_target_async(state_of_type(Py_TYPE(self)), ref_target(self), args, kwds);
}

static PyObject *
ref_notify(RefObject *self, PyObject *args, PyObject *kwds)
{
    return call_target_notify(state_of_type(Py_TYPE(self)), ref_target(self), args, kwds);
}

static void
ref_dealloc(RefObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    /* The core tells the owner (batched) once no reference to the proxy is left. */
    tether_object_unref(self->obj);
    freefunc free_fn = PyType_GetSlot(type, Py_tp_free);
    free_fn(self);
    Py_DECREF(type);
}

static PyObject *
ref_get_key(RefObject *self, void *closure)
{
    return PyLong_FromVoidPtr(self->obj);
}

static PyObject *
ref_get_id(RefObject *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(tether_object_get_id(self->obj));
}

static PyObject *
ref_get_type_name(RefObject *self, void *closure)
{
    return text_or_none(tether_object_get_type_name(self->obj));
}

static PyObject *
ref_get_conn_key(RefObject *self, void *closure)
{
    return PyLong_FromVoidPtr(tether_object_get_conn(self->obj));
}

static PyObject *
ref_get_connected(RefObject *self, void *closure)
{
    return PyBool_FromLong(tether_conn_is_connected(tether_object_get_conn(self->obj)));
}

static PyMethodDef ref_methods[] = {
    {"call", (PyCFunction)(void (*)(void))ref_call, METH_VARARGS | METH_KEYWORDS,
     "call(method, args=None, kwargs=None, timeout=None): call a method of the object."},
    {"call_async", (PyCFunction)(void (*)(void))ref_call_async, METH_VARARGS | METH_KEYWORDS,
     "call_async(method, args=None, kwargs=None, timeout=None) -> tether.Future"},
    {"notify", (PyCFunction)(void (*)(void))ref_notify, METH_VARARGS | METH_KEYWORDS,
     "notify(method, args=None, kwargs=None): call a method, expecting no answer."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ref_getset[] = {
    {"key", (getter)ref_get_key, NULL, "Identifies the core's proxy while it lives.", NULL},
    {"id", (getter)ref_get_id, NULL, "The object's id in its owner.", NULL},
    {"type_name", (getter)ref_get_type_name, NULL, "The type name the owner gave.", NULL},
    {"conn_key", (getter)ref_get_conn_key, NULL, "Identifies the connection.", NULL},
    {"connected", (getter)ref_get_connected, NULL, "Its connection is open.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot ref_slots[] = {
    {Py_tp_doc, "The handle of a tether.Proxy: a reference to an object of the peer."},
    {Py_tp_dealloc, ref_dealloc},
    {Py_tp_methods, ref_methods},
    {Py_tp_getset, ref_getset},
    {0, NULL},
};

static PyType_Spec ref_spec = {
    .name = "tether._tether.Ref",
    .basicsize = sizeof(RefObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = ref_slots,
};

static PyObject *
client_log(ClientObject *self, PyObject *args)
{
    module_state *st = state_of_type(Py_TYPE(self));
    int level;
    const char *logger, *message;
    if (!PyArg_ParseTuple(args, "izs:log", &level, &logger, &message)) {
        return NULL;
    }
    if (level < TETHER_LOG_ERROR || level > TETHER_LOG_DEBUG) {
        PyErr_Format(PyExc_ValueError, "log level must be from %d (error) to %d (debug), not %d",
                     TETHER_LOG_ERROR, TETHER_LOG_DEBUG, level);
        return NULL;
    }
    tether_conn *conn = client_conn(self, st);
    if (!conn) {
        return NULL;
    }
    /* Only queues: no need to release the GIL. */
    int r = tether_conn_log(conn, level, logger, message);
    if (r < 0) {
        tether_error err = TETHER_ERROR_INIT;
        tether_error_set(&err, "tether.Error", "log: %s", tether_strerror(r));
        raise_error(st, r, &err, AT_CALL);
        tether_error_done(&err);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
client_add_service(ClientObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "callable", "main", "deferred", NULL};
    PyObject *name_obj, *callable;
    int main = 0, deferred = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UO|$pp:add_service", kwlist, &name_obj, &callable,
                                     &main, &deferred)) {
        return NULL;
    }
    if (!PyCallable_Check(callable)) {
        PyErr_SetString(PyExc_TypeError, "add_service expects a callable");
        return NULL;
    }
    const char *name = PyUnicode_AsUTF8AndSize(name_obj, NULL);
    if (!name) {
        return NULL;
    }
    service_rec **services = realloc(self->services, (self->service_count + 1) * sizeof(*services));
    if (!services) {
        return PyErr_NoMemory();
    }
    self->services = services;
    service_rec *rec = calloc(1, sizeof(*rec));
    if (!rec) {
        return PyErr_NoMemory();
    }
    rec->callable = Py_NewRef(callable);
    rec->st = state_of_type(Py_TYPE(self));
    rec->context = main ? TETHER_CONTEXT_MAIN : TETHER_CONTEXT_POOL;
    if (deferred) {
        rec->deferred = (PyTypeObject *)Py_NewRef(state_of_type(Py_TYPE(self))->reply_type);
    }
    uintptr_t handle = svc_register(rec);
    if (!handle) {
        Py_DECREF(rec->callable);
        Py_XDECREF(rec->deferred);
        free(rec);
        return PyErr_NoMemory();
    }
    int r = tether_client_add_service(self->client, name,
                                      main ? TETHER_CONTEXT_MAIN : TETHER_CONTEXT_POOL,
                                      service_handler, (void *)handle);
    if (r < 0) {
        svc_unregister(rec);
        if (r == TETHER_EEXIST) {
            PyErr_Format(PyExc_ValueError, "a service named '%s' is registered already", name);
        } else if (r == TETHER_EINVAL) {
            PyErr_Format(PyExc_ValueError, "invalid service name '%s'", name);
        } else {
            raise_error(state_of_type(Py_TYPE(self)), r, NULL, AT_CALL);
        }
        return NULL;
    }
    self->services[self->service_count++] = rec;
    self->main_services = self->main_services || main;
    Py_RETURN_NONE;
}

static PyObject *
client_repr(ClientObject *self)
{
    const char *host = tether_client_get_host_name(self->client);
    if (tether_client_is_connected(self->client) == 1) {
        return PyUnicode_FromFormat("<tether._tether.Client %R connected to '%s'>", self->name,
                                    host ? host : "?");
    }
    return PyUnicode_FromFormat("<tether._tether.Client %R not connected>", self->name);
}

static PyMethodDef client_methods[] = {
    {"connect", (PyCFunction)client_connect, METH_NOARGS,
     "connect()\n\nConnect and complete the handshake (blocking up to connect_timeout)."},
    {"close", (PyCFunction)client_close, METH_NOARGS,
     "close()\n\nClose the connection without reconnecting; pending calls fail with "
     "CancelledError. connect() may connect again."},
    {"is_connected", (PyCFunction)client_is_connected, METH_NOARGS, "is_connected() -> bool"},
    {"fileno", (PyCFunction)client_fileno, METH_NOARGS,
     "fileno() -> int\n\nA file descriptor readable while main-thread work is queued: poll "
     "it and call dispatch()."},
    {"dispatch", (PyCFunction)(void (*)(void))client_dispatch, METH_VARARGS | METH_KEYWORDS,
     "dispatch(budget=None) -> bool\n\nRun queued main-thread work for up to budget seconds "
     "(None: until the queue is empty). True if work remains."},
    {"call", (PyCFunction)(void (*)(void))client_call, METH_VARARGS | METH_KEYWORDS,
     "call(method, args=(), kwargs=None, timeout=None)\n\nCall a service of the host and "
     "return its result. timeout: seconds of silence from the host before TimeoutError "
     "(None: the client's default)."},
    {"call_async", (PyCFunction)(void (*)(void))client_call_async, METH_VARARGS | METH_KEYWORDS,
     "call_async(method, args=(), kwargs=None, timeout=None) -> Future"},
    {"notify", (PyCFunction)(void (*)(void))client_notify, METH_VARARGS | METH_KEYWORDS,
     "notify(method, args=(), kwargs=None)\n\nSend a notification: no answer, no error "
     "from the host."},
    {"log", (PyCFunction)client_log, METH_VARARGS,
     "log(level, logger, message)\n\nSend a log record to the host's log: level is a syslog "
     "number from 3 (error) to 7 (debug); logger may be None. Returns once queued."},
    {"add_service", (PyCFunction)(void (*)(void))client_add_service, METH_VARARGS | METH_KEYWORDS,
     "add_service(name, callable, *, main=False, deferred=False)\n\nLet the host call "
     "callable(*args, **kwargs) as name. It runs on a worker thread, with the GIL; with "
     "main=True, inside dispatch() on the thread that made this Client, which then also "
     "makes its blocking calls through the core's synchronous path (so that call-backs "
     "into those services run while it waits, but Ctrl-C waits for the call). deferred=True: "
     "callable(reply, *args, **kwargs) answers through reply, a Reply, maybe later; an "
     "exception it raises before answering is the answer."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
client_get_serve_main(ClientObject *self, void *closure)
{
    return PyBool_FromLong(self->main_objects);
}

static int
client_set_serve_main(ClientObject *self, PyObject *value, void *closure)
{
    int on = value ? PyObject_IsTrue(value) : 0;
    if (on < 0) {
        return -1;
    }
    self->main_objects = on;
    return 0;
}

static PyGetSetDef client_getset[] = {
    {"host_name", (getter)client_get_host_name, NULL, "The host's name, None before connect.",
     NULL},
    {"serve_main", (getter)client_get_serve_main, (setter)client_set_serve_main,
     "Objects this client exports serve in dispatch() (True) or on worker threads (False).",
     NULL},
    {"name", (getter)client_get_name, NULL, "The name given at creation ('' for the default).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot client_slots[] = {
    {Py_tp_doc, "Client(name=None, address=None, *, timeout=None, connect_timeout=None, "
                "token=None, runtime_dir=None, reconnect=True, language=None, "
                "language_version=None)\n\nOne connection to a tether host (not yet "
                "connected: call connect())."},
    {Py_tp_new, client_new},
    {Py_tp_dealloc, client_dealloc},
    {Py_tp_traverse, client_traverse},
    {Py_tp_clear, client_clear},
    {Py_tp_repr, client_repr},
    {Py_tp_methods, client_methods},
    {Py_tp_getset, client_getset},
    {0, NULL},
};

static PyType_Spec client_spec = {
    .name = "tether._tether.Client",
    .basicsize = sizeof(ClientObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = client_slots,
};

/* ======================================================================================
 * Spawning child interpreters (tether.run_script and its siblings, tether/_spawn.py)
 *
 * A Python parent needs a host for its children to connect to: Host is a private one
 * (no listening socket; children come through socket pairs). Host.spawn wraps
 * tether_host_spawn and gives a Child, whose last reference ends the process. What a
 * child prints reaches this process's stdout and stderr, line by line, prefixed with its
 * pid, written by the I/O thread (no GIL needed).
 * ==================================================================================== */

typedef struct {
    PyObject ob_base; /* PyObject_HEAD */
    tether_host *host;
} HostObject;

typedef struct {
    PyObject ob_base; /* PyObject_HEAD */
    tether_child *child;
} ChildObject;

static void
child_output(void *userdata, tether_child *child, int stream, const char *line)
{
    (void)userdata;
    char prefix[32];
    int n = snprintf(prefix, sizeof(prefix), "[pid %lld] ", (long long)tether_child_get_pid(child));
    struct iovec parts[3] = {{prefix, (size_t)n}, {(void *)line, strlen(line)}, {"\n", 1}};
    /* One writev per line keeps lines whole when children print at once. */
    ssize_t written = writev(stream == TETHER_CHILD_STDERR ? STDERR_FILENO : STDOUT_FILENO, parts, 3);
    (void)written; /* nowhere to report a failed write of a child's output */
}

static PyObject *
host_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", NULL};
    const char *name = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|z:Host", kwlist, &name)) {
        return NULL;
    }
    HostObject *self = PyObject_New(HostObject, type);
    if (!self) {
        return NULL;
    }
    self->host = NULL;
    tether_host_options opts = {.name = name, .no_unix = true};
    int r = tether_host_new(&opts, &self->host);
    if (r == 0) {
        r = tether_host_start(self->host);
    }
    if (r < 0) {
        Py_DECREF(self);
        return raise_error(state_of_type(type), r, NULL, AT_CALL);
    }
    return (PyObject *)self;
}

static void
host_dealloc(HostObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    if (self->host) {
        PyThreadState *save = PyEval_SaveThread(); /* stopping waits for the I/O thread */
        tether_host_unref(self->host);
        PyEval_RestoreThread(save);
    }
    freefunc free_fn = PyType_GetSlot(type, Py_tp_free);
    free_fn(self);
    Py_DECREF(type);
}

/* A NULL-terminated array of UTF-8 strings from a sequence of str (None: NULL), kept
 * alive by *ret_keep. */
static const char **
string_array(PyObject *seq, const char *what, PyObject **ret_keep)
{
    *ret_keep = NULL;
    if (!seq || seq == Py_None) {
        return NULL;
    }
    PyObject *list = PySequence_List(seq);
    if (!list) {
        return NULL;
    }
    Py_ssize_t n = PyList_Size(list);
    const char **v = PyMem_Calloc((size_t)n + 1, sizeof(*v));
    for (Py_ssize_t i = 0; v && i < n; i++) {
        PyObject *item = PyList_GetItem(list, i);
        if (!PyUnicode_Check(item) || !(v[i] = PyUnicode_AsUTF8AndSize(item, NULL))) {
            if (!PyErr_Occurred()) {
                PyErr_Format(PyExc_TypeError, "%s must be strings", what);
            }
            PyMem_Free(v);
            Py_DECREF(list);
            return NULL;
        }
    }
    if (!v) {
        Py_DECREF(list);
        PyErr_NoMemory();
        return NULL;
    }
    *ret_keep = list;
    return v;
}

static PyObject *
host_spawn(HostObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"executable",    "script",       "script_path", "module",
                             "module_path",   "object_module", "object_class", "object_args",
                             "object_kwargs", "args",          "env",         "cwd",
                             "name",          "python_path",   "start_timeout", "warm", NULL};
    tether_spawn_options o = {.output = child_output};
    PyObject *object_args = Py_None, *object_kwargs = Py_None, *argv = Py_None, *env = Py_None;
    PyObject *start_timeout = Py_None;
    int warm = 0;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "|$zzzzzzzOOOOzzzOp:spawn", kwlist, &o.executable, &o.script,
            &o.script_path, &o.module, &o.module_path, &o.object_module, &o.object_class,
            &object_args, &object_kwargs, &argv, &env, &o.cwd, &o.name, &o.python_path,
            &start_timeout, &warm)) {
        return NULL;
    }
    o.warm = warm;
    module_state *st = state_of_type(Py_TYPE(self));
    if (usec_from_seconds(start_timeout, 0, "start_timeout", &o.start_timeout_usec) < 0) {
        return NULL;
    }
    PyObject *keep_args = NULL, *keep_env = NULL;
    o.args = string_array(argv, "args", &keep_args);
    o.env = PyErr_Occurred() ? NULL : string_array(env, "env entries", &keep_env);
    tether_value *cargs = NULL, *ckwargs = NULL;
    if (!PyErr_Occurred()) {
        /* The constructor's arguments travel by value (objects of ours by reference,
         * owned by this host). */
        xfer x = {st, NULL, TETHER_CONTEXT_POOL};
        values_from_args(object_args == Py_None ? NULL : object_args,
                         object_kwargs == Py_None ? NULL : object_kwargs, &x, &cargs, &ckwargs);
    }
    PyObject *result = NULL;
    if (!PyErr_Occurred()) {
        o.object_args = cargs;
        o.object_kwargs = ckwargs;
        tether_child *child = NULL;
        tether_error err = TETHER_ERROR_INIT;
        PyThreadState *save = PyEval_SaveThread();
        int r = tether_host_spawn(self->host, &o, &child, &err);
        PyEval_RestoreThread(save);
        if (r == TETHER_ENOENT) {
            PyErr_SetString(PyExc_FileNotFoundError, err.message ? err.message : "no interpreter");
        } else if (r < 0) {
            raise_error(st, r, &err, AT_CALL);
        } else if ((result = (PyObject *)PyObject_New(ChildObject, st->child_type))) {
            ((ChildObject *)result)->child = child;
        } else {
            tether_child_unref(child);
        }
        tether_error_done(&err);
    }
    tether_value_unref(cargs);
    tether_value_unref(ckwargs);
    PyMem_Free((void *)o.args);
    PyMem_Free((void *)o.env);
    Py_XDECREF(keep_args);
    Py_XDECREF(keep_env);
    return result;
}

static PyMethodDef host_methods[] = {
    {"spawn", (PyCFunction)(void (*)(void))host_spawn, METH_VARARGS | METH_KEYWORDS,
     "spawn(*, executable=None, script=None, script_path=None, module=None, "
     "module_path=None, object_module=None, object_class=None, object_args=None, "
     "object_kwargs=None, args=None, env=None, cwd=None, name=None, python_path=None, "
     "start_timeout=None, warm=False) -> Child (tether_host_spawn)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot host_slots[] = {
    {Py_tp_doc, "A private host (no listening socket) for the children this process spawns."},
    {Py_tp_new, host_new},
    {Py_tp_dealloc, host_dealloc},
    {Py_tp_methods, host_methods},
    {0, NULL},
};

static PyType_Spec host_spec = {
    .name = "tether._tether.Host",
    .basicsize = sizeof(HostObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = host_slots,
};

static void
child_dealloc(ChildObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    tether_child_unref(self->child); /* the last reference ends the process */
    freefunc free_fn = PyType_GetSlot(type, Py_tp_free);
    free_fn(self);
    Py_DECREF(type);
}

static PyObject *
child_get_pid(ChildObject *self, void *closure)
{
    return PyLong_FromLongLong(tether_child_get_pid(self->child));
}

/* root_ref() -> Ref: the handle of the child's root object (tether._spawn wraps it). */
static PyObject *
child_root_ref(ChildObject *self, PyObject *unused)
{
    module_state *st = state_of_type(Py_TYPE(self));
    return ref_new(st, tether_object_ref(tether_child_get_root(self->child)),
                   TETHER_CONTEXT_POOL);
}

static PyObject *
child_terminate(ChildObject *self, PyObject *unused)
{
    return PyBool_FromLong(tether_child_terminate(self->child) == 0);
}

/* wait(timeout=None) -> status, or None if it still runs after timeout seconds. */
static PyObject *
child_wait(ChildObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout_obj = Py_None;
    uint64_t timeout;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:wait", kwlist, &timeout_obj) ||
        usec_from_seconds(timeout_obj, TETHER_TIMEOUT_INFINITE, "timeout", &timeout) < 0) {
        return NULL;
    }
    int status = 0;
    PyThreadState *save = PyEval_SaveThread();
    int r = tether_child_wait(self->child, timeout, &status);
    PyEval_RestoreThread(save);
    if (r < 0) {
        Py_RETURN_NONE;
    }
    return PyLong_FromLong(status);
}

static PyObject *
child_get_conn_key(ChildObject *self, void *closure)
{
    return PyLong_FromVoidPtr(tether_child_get_conn(self->child));
}

static PyMethodDef child_methods[] = {
    {"root_ref", (PyCFunction)child_root_ref, METH_NOARGS,
     "root_ref() -> Ref: the handle of the child's root object."},
    {"terminate", (PyCFunction)child_terminate, METH_NOARGS,
     "terminate() -> bool: end the child (False if it had exited already)."},
    {"wait", (PyCFunction)(void (*)(void))child_wait, METH_VARARGS | METH_KEYWORDS,
     "wait(timeout=None) -> int or None: its exit status (minus the signal), None if it "
     "still runs after timeout seconds."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef child_getset[] = {
    {"pid", (getter)child_get_pid, NULL, "The child's process id.", NULL},
    {"conn_key", (getter)child_get_conn_key, NULL, "Identifies its connection (Ref.conn_key).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot child_slots[] = {
    {Py_tp_doc, "A spawned interpreter; dropping the last reference ends it."},
    {Py_tp_dealloc, child_dealloc},
    {Py_tp_methods, child_methods},
    {Py_tp_getset, child_getset},
    {0, NULL},
};

static PyType_Spec child_spec = {
    .name = "tether._tether.Child",
    .basicsize = sizeof(ChildObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = child_slots,
};

/* ======================================================================================
 * Module functions
 * ==================================================================================== */

/*
 * _shutdown(): called at interpreter exit (atexit). Stops the callback thread, refuses
 * new service requests, and waits (bounded) for handlers that are running.
 */
static PyObject *
module_shutdown(PyObject *module, PyObject *unused)
{
    module_state *st = state_of_module(module);
    pthread_mutex_lock(&st->hub->lock);
    st->hub->stopping = true;
    pthread_cond_broadcast(&st->hub->cv);
    pthread_mutex_unlock(&st->hub->lock);
    PyThreadState *save = PyEval_SaveThread();
    pthread_mutex_lock(&svc_lock);
    svc_shutdown = true;
    uint64_t deadline = tether_now_usec() + SHUTDOWN_WAIT_USEC;
    while (svc_running > 0 && tether_now_usec() < deadline) {
        /* svc_idle uses CLOCK_REALTIME: wait in short steps instead of converting. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&svc_idle, &svc_lock, &ts);
    }
    pthread_mutex_unlock(&svc_lock);
    PyEval_RestoreThread(save);
    Py_RETURN_NONE;
}

/* _pack(obj) -> bytes: the msgpack encoding the module sends for obj (tests, tools). */
static PyObject *
module_pack(PyObject *module, PyObject *obj)
{
    packbuf b;
    pb_init(&b, NULL);
    PyObject *r = NULL;
    if (pack_obj(&b, obj, 0) == 0) {
        r = PyBytes_FromStringAndSize((const char *)b.data, (Py_ssize_t)b.len);
    }
    pb_done(&b);
    return r;
}

/* _unpack(bytes) -> obj: the inverse, through the core's validation. */
static PyObject *
module_unpack(PyObject *module, PyObject *data)
{
    char *p;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(data, &p, &n) < 0) {
        return NULL;
    }
    tether_value *v = NULL;
    int r = tether_value_new_msgpack(p, (size_t)n, &v);
    if (r < 0) {
        PyErr_Format(PyExc_ValueError, "invalid msgpack: %s", tether_strerror(r));
        return NULL;
    }
    PyObject *o = object_from_value(v, NULL);
    tether_value_unref(v);
    return o;
}

/* _error(code, type=None, message=None, traceback=None) -> exception: what a failed call
 * with that code and tether_error raises (tests). */
static PyObject *
module_error(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"code", "type", "message", "traceback", "connect", NULL};
    int code, at_connect = 0;
    const char *type = NULL, *message = NULL, *traceback = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|zzzp:_error", kwlist, &code, &type, &message,
                                     &traceback, &at_connect)) {
        return NULL;
    }
    tether_error err = {(char *)type, (char *)message, (char *)traceback};
    return error_object(state_of_module(module), code, &err, at_connect ? AT_CONNECT : AT_CALL);
}

/* _in_blocking_call() -> bool: this thread waits in a blocking call; a service running
 * now was called back during it (so an event loop of this thread cannot run meanwhile). */
static PyObject *
module_in_blocking_call(PyObject *module, PyObject *unused)
{
    return PyBool_FromLong(blocking_calls > 0);
}

/* _set_parent_death_signal(signum): the kernel sends signum to this process when its
 * parent dies (a spawned child's second guard; Linux). */
static PyObject *
module_set_parent_death_signal(PyObject *module, PyObject *arg)
{
    long signum = PyLong_AsLong(arg);
    if (signum == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)signum) < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* _set_process_name(name): this process's name in ps and /proc/PID/comm (15 bytes). */
static PyObject *
module_set_process_name(PyObject *module, PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8AndSize(arg, NULL);
    if (!name) {
        return NULL;
    }
    if (prctl(PR_SET_NAME, (unsigned long)name) < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* type_name(obj) -> str: the name peers see for obj's type. */
static PyObject *
module_type_name(PyObject *module, PyObject *obj)
{
    return type_display_name(Py_TYPE(obj));
}

static PyObject *
module_strerror(PyObject *module, PyObject *arg)
{
    long code = PyLong_AsLong(arg);
    if (code == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return PyUnicode_FromString(tether_strerror(code < INT_MIN || code > INT_MAX ? 0 : (int)code));
}

static PyMethodDef module_methods[] = {
    {"_run_callbacks", module_run_callbacks, METH_NOARGS,
     "The body of the tether-callbacks thread (internal)."},
    {"_shutdown", module_shutdown, METH_NOARGS, "Interpreter-exit cleanup (internal)."},
    {"_pack", module_pack, METH_O, "_pack(obj) -> bytes: obj as tether sends it."},
    {"_unpack", module_unpack, METH_O, "_unpack(data) -> obj: msgpack bytes as received."},
    {"_error", (PyCFunction)(void (*)(void))module_error, METH_VARARGS | METH_KEYWORDS,
     "_error(code, type=None, message=None, traceback=None, connect=False) -> exception"},
    {"strerror", module_strerror, METH_O, "strerror(code) -> str: the core's name of a code."},
    {"_set_parent_death_signal", module_set_parent_death_signal, METH_O,
     "_set_parent_death_signal(signum): signum to this process when its parent dies."},
    {"_set_process_name", module_set_process_name, METH_O,
     "_set_process_name(name): this process's name in ps (/proc/PID/comm)."},
    {"type_name", module_type_name, METH_O,
     "type_name(obj) -> str: the name peers see for obj's type ('int', 'mod.Class')."},
    {"_in_blocking_call", module_in_blocking_call, METH_NOARGS,
     "_in_blocking_call() -> bool: this thread waits in a blocking call (internal)."},
    {NULL, NULL, 0, NULL},
};

/* ======================================================================================
 * Module init
 * ==================================================================================== */

static int
module_exec(PyObject *module)
{
    module_state *st = state_of_module(module);
    st->hub = hub_new();
    if (!st->hub) {
        PyErr_NoMemory();
        return -1;
    }
    st->client_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &client_spec, NULL);
    if (!st->client_type || PyModule_AddType(module, st->client_type) < 0) {
        return -1;
    }
    st->future_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &future_spec, NULL);
    if (!st->future_type || PyModule_AddType(module, st->future_type) < 0) {
        return -1;
    }
    st->reply_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &reply_spec, NULL);
    if (!st->reply_type || PyModule_AddType(module, st->reply_type) < 0) {
        return -1;
    }
    st->ref_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &ref_spec, NULL);
    if (!st->ref_type || PyModule_AddType(module, st->ref_type) < 0) {
        return -1;
    }
    st->host_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &host_spec, NULL);
    if (!st->host_type || PyModule_AddType(module, st->host_type) < 0) {
        return -1;
    }
    st->child_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &child_spec, NULL);
    if (!st->child_type || PyModule_AddType(module, st->child_type) < 0) {
        return -1;
    }
    st->exports = PyDict_New();
    st->classes = PyDict_New();
    if (!st->exports || !st->classes) {
        return -1;
    }
    if (define_exceptions(module, st) < 0) {
        return -1;
    }
    if (PyModule_AddStringConstant(module, "core_version", TETHER_VERSION_STRING) < 0 ||
        PyModule_AddIntConstant(module, "protocol_version", TETHER_PROTOCOL_VERSION) < 0) {
        return -1;
    }
    static const struct {
        const char *name;
        int code;
    } codes[] = {
        {"EINVAL", TETHER_EINVAL},       {"ETIMEDOUT", TETHER_ETIMEDOUT},
        {"ECANCELED", TETHER_ECANCELED}, {"ECONNRESET", TETHER_ECONNRESET},
        {"ENOTCONN", TETHER_ENOTCONN},   {"ECONNREFUSED", TETHER_ECONNREFUSED},
        {"EACCES", TETHER_EACCES},       {"ENOENT", TETHER_ENOENT},
        {"EMSGSIZE", TETHER_EMSGSIZE},   {"ENOBUFS", TETHER_ENOBUFS},
        {"EPROTO", TETHER_EPROTO},       {"EREMOTE", TETHER_EREMOTE},
        {"EUSERS", TETHER_EUSERS},       {"ELOOP", TETHER_ELOOP},
    };
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        if (PyModule_AddIntConstant(module, codes[i].name, codes[i].code) < 0) {
            return -1;
        }
    }

    /* The main thread: the only one that receives signals. */
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *main_thread = threading ? PyObject_CallMethod(threading, "main_thread", NULL) : NULL;
    PyObject *ident = main_thread ? PyObject_GetAttrString(main_thread, "ident") : NULL;
    Py_XDECREF(threading);
    Py_XDECREF(main_thread);
    if (!ident) {
        return -1;
    }
    st->main_thread = PyLong_AsUnsignedLong(ident);
    Py_DECREF(ident);
    if (PyErr_Occurred()) {
        return -1;
    }

    PyObject *atexit = PyImport_ImportModule("atexit");
    PyObject *shutdown = PyObject_GetAttrString(module, "_shutdown");
    PyObject *r =
        atexit && shutdown ? PyObject_CallMethod(atexit, "register", "O", shutdown) : NULL;
    Py_XDECREF(atexit);
    Py_XDECREF(shutdown);
    if (!r) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    module_state *st = state_of_module(module);
    Py_VISIT(st->client_type);
    Py_VISIT(st->future_type);
    Py_VISIT(st->reply_type);
    Py_VISIT(st->ref_type);
    Py_VISIT(st->host_type);
    Py_VISIT(st->child_type);
    for (size_t i = 0; i < sizeof(st->proxy_parts) / sizeof(st->proxy_parts[0]); i++) {
        Py_VISIT(st->proxy_parts[i]);
    }
    Py_VISIT(st->exports);
    Py_VISIT(st->classes);
    Py_VISIT(st->TetherError);
    Py_VISIT(st->RemoteError);
    Py_VISIT(st->NotConnectedError);
    Py_VISIT(st->NoSuchServiceError);
    Py_VISIT(st->CancelledError);
    return 0;
}

static int
module_clear(PyObject *module)
{
    module_state *st = state_of_module(module);
    Py_CLEAR(st->client_type);
    Py_CLEAR(st->future_type);
    Py_CLEAR(st->reply_type);
    Py_CLEAR(st->ref_type);
    Py_CLEAR(st->host_type);
    Py_CLEAR(st->child_type);
    for (size_t i = 0; i < sizeof(st->proxy_parts) / sizeof(st->proxy_parts[0]); i++) {
        Py_CLEAR(st->proxy_parts[i]);
    }
    Py_CLEAR(st->exports);
    Py_CLEAR(st->classes);
    Py_CLEAR(st->TetherError);
    Py_CLEAR(st->RemoteError);
    Py_CLEAR(st->NotConnectedError);
    Py_CLEAR(st->NoSuchServiceError);
    Py_CLEAR(st->CancelledError);
    return 0;
}

static void
module_free(void *module)
{
    module_clear(module);
    module_state *st = state_of_module(module);
    hub_unref(st->hub);
    st->hub = NULL;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef tether_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tether._tether",
    .m_doc = "The C extension of the tether package: libtether's client side for Python.",
    .m_size = sizeof(module_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__tether(void)
{
    return PyModuleDef_Init(&tether_module);
}
