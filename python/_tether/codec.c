/*
 * Values: Python objects to msgpack and back, the encoding a tether_value carries for
 * arguments and results.
 *
 * Plain data travels by value: None, bool, int (64-bit, signed or unsigned), float, str,
 * bytes/bytearray/memoryview, list/tuple, dict; tuples arrive as lists, except as dict
 * keys, where arrays become tuples so they stay hashable. Anything else travels by
 * reference, in calls and results (REF exts bound by the core): the encoder hands such an
 * object to object.c (tether_py_pack_reference), and the decoder asks object.c for the
 * Python object of each REF (tether_py_object_of_reference).
 */
#include "module.h"

#include <stdlib.h>
#include <string.h>

/* Containers one value may nest (the core allows 63 levels under a frame's array; an
 * argument list or a reply adds one). */
#define PACK_MAX_DEPTH 60

/* ======================================================================================
 * Encoding: Python objects to msgpack
 * ==================================================================================== */

void
tether_py_pb_init(packbuf *b, const xfer *x)
{
    b->data = b->small;
    b->len = 0;
    b->cap = sizeof(b->small);
    b->x = x && x->st ? x : NULL;
    b->objs = NULL;
    b->nobjs = b->capobjs = 0;
    b->bufs = NULL;
    b->nbufs = b->capbufs = 0;
}

void
tether_py_pb_done(packbuf *b)
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
    for (size_t i = 0; i < b->nbufs; i++) {
        tether_buffer_unref(b->bufs[i]);
    }
    free(b->bufs);
    b->bufs = NULL;
    b->nbufs = 0;
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

int
tether_py_pb_put(packbuf *b, const void *p, size_t n)
{
    if (pb_reserve(b, n) < 0) {
        return -1;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

/* A one-byte tag followed by an n-byte big-endian number. */
int
tether_py_pb_tag(packbuf *b, uint8_t tag, uint64_t v, int n)
{
    uint8_t h[9];
    h[0] = tag;
    for (int i = 0; i < n; i++) {
        h[1 + i] = (uint8_t)(v >> (8 * (n - 1 - i)));
    }
    return tether_py_pb_put(b, h, (size_t)n + 1);
}

/* A header for str (fix 0xa0, 8/16/32: 0xd9), bin (-, 0xc4), array (0x90, -, 0xdc) or
 * map (0x80, -, 0xde). */
int
tether_py_pb_header(packbuf *b, uint8_t fix, size_t fix_max, uint8_t tag8, uint8_t tag16, size_t n)
{
    if (n < fix_max) {
        uint8_t c = (uint8_t)(fix | n);
        return tether_py_pb_put(b, &c, 1);
    }
    if (tag8 && n <= 0xff) {
        return tether_py_pb_tag(b, tag8, n, 1);
    }
    if (n <= 0xffff) {
        return tether_py_pb_tag(b, tag16, n, 2);
    }
    if (n <= 0xffffffffu) {
        return tether_py_pb_tag(b, (uint8_t)(tag16 + 1), n, 4);
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
        return tether_py_pb_tag(b, 0xcf, u, 8);
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
            return tether_py_pb_put(b, &c, 1);
        }
        if (v <= 0xff) {
            return tether_py_pb_tag(b, 0xcc, (uint64_t)v, 1);
        }
        if (v <= 0xffff) {
            return tether_py_pb_tag(b, 0xcd, (uint64_t)v, 2);
        }
        if (v <= 0xffffffffll) {
            return tether_py_pb_tag(b, 0xce, (uint64_t)v, 4);
        }
        return tether_py_pb_tag(b, 0xcf, (uint64_t)v, 8);
    }
    if (v >= -32) {
        uint8_t c = (uint8_t)(int8_t)v;
        return tether_py_pb_put(b, &c, 1);
    }
    if (v >= INT8_MIN) {
        return tether_py_pb_tag(b, 0xd0, (uint64_t)v, 1);
    }
    if (v >= INT16_MIN) {
        return tether_py_pb_tag(b, 0xd1, (uint64_t)v, 2);
    }
    if (v >= INT32_MIN) {
        return tether_py_pb_tag(b, 0xd2, (uint64_t)v, 4);
    }
    return tether_py_pb_tag(b, 0xd3, (uint64_t)v, 8);
}

/* Bytes as a bin, or a BUFFER when big (buffer.c). */
static int
pack_bytes(packbuf *b, const char *p, size_t n)
{
    int as_buffer = tether_py_pack_bytes_buffer(b, p, n);
    if (as_buffer != 0) {
        return as_buffer < 0 ? -1 : 0;
    }
    if (tether_py_pb_header(b, 0, 0, 0xc4, 0xc5, n) < 0) {
        return -1;
    }
    return tether_py_pb_put(b, p, n);
}

/* The name users know a type by: "int" for builtins, "module.Qualname" otherwise. */
PyObject *
tether_py_type_display_name(PyTypeObject *type)
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
        tether_py_pb_header(b, 0x90, 16, 0, 0xdc, (size_t)n) < 0) {
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
        tether_py_pb_header(b, 0x80, 16, 0, 0xde, (size_t)n) < 0) {
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
        return tether_py_pb_put(b, &c, 1);
    }
    if (PyBool_Check(o)) {
        uint8_t c = o == Py_True ? 0xc3 : 0xc2;
        return tether_py_pb_put(b, &c, 1);
    }
    if (PyLong_Check(o)) {
        return pack_int(b, o);
    }
    if (PyFloat_Check(o)) {
        double d = PyFloat_AsDouble(o);
        uint64_t bits;
        memcpy(&bits, &d, sizeof(bits));
        return tether_py_pb_tag(b, 0xcb, bits, 8);
    }
    if (PyUnicode_Check(o)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(o, &n);
        if (!s || tether_py_pb_header(b, 0xa0, 32, 0xd9, 0xda, (size_t)n) < 0) {
            return -1;
        }
        return tether_py_pb_put(b, s, (size_t)n);
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
    if (PyList_Check(o) || PyTuple_Check(o)) {
        return pack_sequence(b, o, depth);
    }
    if (PyDict_Check(o)) {
        return pack_dict(b, o, depth);
    }
    int as_buffer = tether_py_pack_buffer_object(b, o); /* memoryview, numpy arrays */
    if (as_buffer != 0) {
        return as_buffer < 0 ? -1 : 0;
    }
    if (b->x) {
        return tether_py_pack_reference(b, o);
    }
    PyObject *name = tether_py_type_display_name(Py_TYPE(o));
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
tether_value *
tether_py_value_from_object(PyObject *o, int depth, const xfer *x)
{
    packbuf b;
    tether_py_pb_init(&b, x);
    tether_value *v = NULL;
    if (pack_obj(&b, o, depth) == 0) {
        (void)tether_py_value_of_packbuf(&b, "value", &v);
    }
    tether_py_pb_done(&b);
    return v;
}

int
tether_py_value_of_packbuf(const packbuf *b, const char *what, tether_value **ret)
{
    *ret = NULL;
    int r = tether_value_new_msgpack_buffers(b->data, b->len, b->objs, b->nobjs, b->bufs, b->nbufs,
                                             ret);
    if (r < 0) {
        PyErr_Format(PyExc_ValueError, "cannot encode the %s: %s", what, tether_strerror(r));
        return -1;
    }
    return 0;
}

/*
 * Arguments packed as msgpack: args a tuple or list (NULL: none), kwargs a dict (NULL or
 * empty: none), into the caller's packbufs, left empty for none. On failure an exception
 * is set; the caller releases the packbufs either way.
 */
int
tether_py_pack_args(PyObject *args, PyObject *kwargs, packbuf *ret_args, packbuf *ret_kwargs)
{
    if (args && args != Py_None) {
        if (!PyTuple_Check(args) && !PyList_Check(args)) {
            PyErr_SetString(PyExc_TypeError, "args must be a tuple or a list");
            return -1;
        }
        if (PyObject_Length(args) > 0 && pack_obj(ret_args, args, -1) < 0) {
            return -1;
        }
    }
    if (kwargs && kwargs != Py_None) {
        if (!PyDict_Check(kwargs)) {
            PyErr_SetString(PyExc_TypeError, "kwargs must be a dict");
            return -1;
        }
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(kwargs, &pos, &key, &value)) {
            if (!PyUnicode_Check(key)) {
                PyErr_SetString(PyExc_TypeError, "keyword argument names must be strings");
                return -1;
            }
        }
        if (PyDict_Size(kwargs) > 0 && pack_obj(ret_kwargs, kwargs, -1) < 0) {
            return -1;
        }
    }
    return 0;
}

/* The core's view of packed arguments (borrowed from the packbufs). */
tether_msgpack_args
tether_py_msgpack_args(const packbuf *args, const packbuf *kwargs)
{
    return (tether_msgpack_args){
        .args = args->len ? args->data : NULL,
        .args_size = args->len,
        .kwargs = kwargs->len ? kwargs->data : NULL,
        .kwargs_size = kwargs->len,
        .args_objects = args->objs,
        .args_object_count = args->nobjs,
        .kwargs_objects = kwargs->objs,
        .kwargs_object_count = kwargs->nobjs,
    };
}

int
tether_py_values_of_packbufs(const packbuf *args, const packbuf *kwargs, tether_value **ret_args,
                             tether_value **ret_kwargs)
{
    *ret_kwargs = NULL;
    if (args->len ? tether_py_value_of_packbuf(args, "arguments", ret_args)
                  : (*ret_args = NULL, 0)) {
        return -1;
    }
    if (kwargs->len && tether_py_value_of_packbuf(kwargs, "arguments", ret_kwargs) < 0) {
        *ret_args = tether_value_unref(*ret_args);
        return -1;
    }
    return 0;
}

/* Arguments as values (for the calls that keep them, such as a spawn's object). */
int
tether_py_values_from_args(PyObject *args, PyObject *kwargs, const xfer *x, tether_value **ret_args,
                           tether_value **ret_kwargs)
{
    *ret_args = NULL;
    *ret_kwargs = NULL;
    packbuf a, k;
    tether_py_pb_init(&a, x);
    tether_py_pb_init(&k, x);
    int r = tether_py_pack_args(args, kwargs, &a, &k);
    if (r == 0) {
        r = tether_py_values_of_packbufs(&a, &k, ret_args, ret_kwargs);
    }
    tether_py_pb_done(&a);
    tether_py_pb_done(&k);
    return r;
}

/* ======================================================================================
 * Decoding: msgpack to Python objects
 *
 * The bytes come from tether_value_get_msgpack, which the core checked already; every
 * length is still checked against the bytes left, and nesting is bounded.
 * ==================================================================================== */

typedef struct {
    const uint8_t *p, *end;
    const xfer *x;              /* NULL: plain data only */
    tether_object *const *objs; /* the value's objects, in the order of its REFs */
    size_t nobjs, k;
    tether_buffer *const *bufs; /* the value's buffers, in the order of its BUFFERs */
    size_t nbufs, kb;
} unpacker;

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
    if (type == TETHER_MSGPACK_EXT_OBJECT && u->x && u->k < u->nobjs) { /* bound by the core */
        u->p += n + 1;
        return tether_py_object_of_reference(u->x, u->objs[u->k++]);
    }
    if (type == TETHER_MSGPACK_EXT_BUFFER && u->kb < u->nbufs) { /* shared memory */
        unpacker sub = {u->p + 1, u->p + 1 + n, NULL, NULL, 0, 0, NULL, 0, 0};
        u->p += n + 1;
        PyObject *payload = unpack_obj(&sub, 0, false);
        PyObject *value = payload ? tether_py_buffer_value(u->bufs[u->kb++], payload) : NULL;
        Py_XDECREF(payload);
        return value;
    }
    PyErr_Format(PyExc_TypeError, "cannot receive a msgpack extension value of type %d%s", type,
                 type == TETHER_MSGPACK_EXT_OBJECT ? " here (an object reference outside a call)" : "");
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
unpack_bytes(const void *data, size_t size, const xfer *x, tether_object *const *objs, size_t nobjs,
             tether_buffer *const *bufs, size_t nbufs)
{
    unpacker u = {
        data, (const uint8_t *)data + size, x && x->st ? x : NULL, objs, nobjs, 0, bufs, nbufs, 0};
    PyObject *o = unpack_obj(&u, 0, false);
    if (o && u.p != u.end) {
        Py_DECREF(o);
        PyErr_SetString(PyExc_ValueError, "extra bytes after the msgpack value");
        return NULL;
    }
    return o;
}

/* The Python object of a value; None for NULL (a call that returned nothing). */
PyObject *
tether_py_object_from_value(tether_value *v, const xfer *x)
{
    if (!v) {
        Py_RETURN_NONE;
    }
    const void *data;
    size_t size;
    tether_object *const *objs;
    size_t nobjs;
    tether_buffer *const *bufs;
    size_t nbufs;
    int r = tether_value_get_msgpack(v, &data, &size);
    if (r == 0) {
        r = tether_value_get_objects(v, &objs, &nobjs);
    }
    if (r == 0) {
        r = tether_value_get_buffers(v, &bufs, &nbufs);
    }
    if (r < 0) {
        PyErr_SetString(PyExc_ValueError, tether_strerror(r));
        return NULL;
    }
    return unpack_bytes(data, size, x, objs, nobjs, bufs, nbufs);
}

/* _pack(obj) -> bytes: the msgpack encoding the module sends for obj (tests, tools). */
PyObject *
tether_py_module_pack(PyObject *module, PyObject *obj)
{
    packbuf b;
    tether_py_pb_init(&b, NULL);
    PyObject *r = NULL;
    if (pack_obj(&b, obj, 0) == 0) {
        r = PyBytes_FromStringAndSize((const char *)b.data, (Py_ssize_t)b.len);
    }
    tether_py_pb_done(&b);
    return r;
}

/* _unpack(bytes) -> obj: the inverse, through the core's validation. */
PyObject *
tether_py_module_unpack(PyObject *module, PyObject *data)
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
    PyObject *o = tether_py_object_from_value(v, NULL);
    tether_value_unref(v);
    return o;
}

/* type_name(obj) -> str: the name peers see for obj's type. */
PyObject *
tether_py_module_type_name(PyObject *module, PyObject *obj)
{
    return tether_py_type_display_name(Py_TYPE(obj));
}
