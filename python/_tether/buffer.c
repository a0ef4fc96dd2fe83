/*
 * Buffers: big bytes and arrays through shared memory (docs/protocol.md "Buffers").
 *
 * Sending, a bytes-like value of at least the threshold, and any other object with the
 * buffer protocol (a numpy array, an array.array) whatever its size, is copied once into
 * a tether_buffer, a sealed memfd that travels as a descriptor beside the frame; the
 * core writes its bytes inline instead on a connection that passes no descriptors. An
 * array's BUFFER also carries its element format and shape, [size, format, shape].
 *
 * Receiving, a buffer becomes a read-only memoryview of a mapping of the memfd, with no
 * copy; one with a format and shape becomes a numpy array of them when numpy can be
 * imported (else a memoryview cast to them, where memoryview can express them).
 *
 * Python's views of a buffer's memory are made by SharedMemory, an object that exports
 * the library's own mapping of it by the buffer protocol and holds the buffer: the
 * buffer lives as long as the last view or array made from it (then the peer is told it
 * may reuse the memory, BUFFERS_DONE), and the library's mapping is the one it keeps for
 * the same memory arriving again. What is made over the whole of a SharedMemory can be
 * sent on as its buffer, without a copy.
 *
 * Objects to send are read through memoryview's Python methods (PyObject_GetBuffer is
 * not in the stable ABI of 3.10), which is one copy, as a copy into the buffer is.
 */

/* The buffer protocol (Py_buffer, PyBuffer_FillInfo, the Py_bf_getbuffer slot) is named
 * by the limited API from 3.11 on, but CPython accepts the slot in a type spec from 3.9
 * on and has always exported PyBuffer_FillInfo: the extension still loads on 3.10. */
#define Py_LIMITED_API 0x030b0000
#include "module.h"

#include <stdlib.h>
#include <string.h>

/* Bytes-like values of at least this many bytes go as buffers. Read and written with
 * the GIL held. */
static size_t buffer_threshold = 256 * 1024;

/* Element formats that keep their meaning in shared memory, which never leaves the
 * machine: one native character of the struct module. */
static const char ARRAY_FORMATS[] = "bBhHiIlLqQnNefd?";

PyObject *
tether_py_module_set_buffer_threshold(PyObject *module, PyObject *arg)
{
    (void)module;
    size_t n = PyLong_AsSize_t(arg);
    if (n == (size_t)-1 && PyErr_Occurred()) {
        return NULL;
    }
    size_t old = buffer_threshold;
    buffer_threshold = n;
    return PyLong_FromSize_t(old);
}

PyObject *
tether_py_module_buffer_threshold(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromSize_t(buffer_threshold);
}

/* ---- sending ------------------------------------------------------------------------ */

static tether_buffer *registered_buffer(PyObject *o);

static int
pb_push_buffer(packbuf *b, tether_buffer *buf)
{
    if (b->nbufs == b->capbufs) {
        size_t cap = b->capbufs ? 2 * b->capbufs : 4;
        tether_buffer **v = realloc(b->bufs, cap * sizeof(*v));
        if (!v) {
            PyErr_NoMemory();
            return -1;
        }
        b->bufs = v;
        b->capbufs = cap;
    }
    b->bufs[b->nbufs++] = buf;
    return 0;
}

/* A BUFFER ext for buf (its reference moves into b), with the array's format (a str) and
 * shape (a tuple of ints) when they are not NULL. */
static int
pack_buffer_ext(packbuf *b, tether_buffer *buf, PyObject *format, PyObject *shape)
{
    packbuf payload;
    tether_py_pb_init(&payload, NULL);
    int r = tether_py_pb_header(&payload, 0x90, 16, 0, 0xdc, format ? 3 : 1);
    r = r < 0 ? r : tether_py_pb_tag(&payload, 0xcf, tether_buffer_get_size(buf), 8);
    if (r == 0 && format) {
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(format, &len);
        Py_ssize_t ndim = PyTuple_Size(shape);
        r = s && ndim >= 0 ? 0 : -1;
        r = r < 0 ? r : tether_py_pb_header(&payload, 0xa0, 32, 0xd9, 0xda, (size_t)len);
        r = r < 0 ? r : tether_py_pb_put(&payload, s, (size_t)len);
        r = r < 0 ? r : tether_py_pb_header(&payload, 0x90, 16, 0, 0xdc, (size_t)ndim);
        for (Py_ssize_t i = 0; r == 0 && i < ndim; i++) {
            size_t dim = PyLong_AsSize_t(PyTuple_GetItem(shape, i));
            r = dim == (size_t)-1 && PyErr_Occurred() ? -1
                                                      : tether_py_pb_tag(&payload, 0xcf, dim, 8);
        }
    }
    /* An ext 8 head, or ext 16 for an array of many dimensions: valid msgpack for any
     * length (a fixext would save a byte for payloads of 1, 2, 4, 8 or 16 bytes). */
    size_t n = payload.len;
    uint8_t head8[3] = {0xc7, (uint8_t)n, TETHER_MSGPACK_EXT_BUFFER};
    uint8_t head16[4] = {0xc8, (uint8_t)(n >> 8), (uint8_t)n, TETHER_MSGPACK_EXT_BUFFER};
    r = r < 0       ? r
        : n <= 0xff ? tether_py_pb_put(b, head8, sizeof(head8))
                    : tether_py_pb_put(b, head16, sizeof(head16));
    r = r < 0 ? r : tether_py_pb_put(b, payload.data, payload.len);
    tether_py_pb_done(&payload);
    if (r < 0 || pb_push_buffer(b, buf) < 0) {
        tether_buffer_unref(buf);
        return -1;
    }
    return 0;
}

/* A new buffer of n bytes: 1, or 0 where this platform has none (the caller sends the
 * bytes inline), -1 with an exception. */
static int
buffer_new(size_t n, tether_buffer **ret)
{
    int r = tether_buffer_new_uninitialized(n, ret); /* every byte is written */
    if (r == TETHER_ENOTSUP) {
        return 0;
    }
    if (r < 0) {
        PyErr_Format(PyExc_MemoryError, "cannot make a shared-memory buffer of %zu bytes: %s", n,
                     tether_strerror(r));
        return -1;
    }
    return 1;
}

int
tether_py_pack_bytes_buffer(packbuf *b, const void *p, size_t n)
{
    if (n < buffer_threshold) {
        return 0;
    }
    tether_buffer *buf;
    int r = buffer_new(n, &buf);
    if (r <= 0) {
        return r;
    }
    memcpy(tether_buffer_get_writable(buf), p, n);
    return pack_buffer_ext(b, buf, NULL, NULL) < 0 ? -1 : 1;
}

/* Whether view is C-contiguous: 1, 0, or -1 with an exception. */
static int
is_c_contiguous(PyObject *view)
{
    PyObject *contiguous = PyObject_GetAttrString(view, "c_contiguous");
    int is_c = contiguous ? PyObject_IsTrue(contiguous) : -1;
    Py_XDECREF(contiguous);
    return is_c;
}

/* Copy the bytes of view (nbytes of them, C order) into buf. */
static int
copy_view(tether_buffer *buf, PyObject *view, size_t nbytes)
{
    if (nbytes == 0) {
        return 0;
    }
    PyObject *dst =
        PyMemoryView_FromMemory(tether_buffer_get_writable(buf), (Py_ssize_t)nbytes, PyBUF_WRITE);
    int is_c = is_c_contiguous(view);
    /* A C-contiguous view is copied as it is; any other is gathered by tobytes first. */
    PyObject *src = is_c < 0 ? NULL
                    : is_c   ? PyObject_CallMethod(view, "cast", "s", "B")
                             : PyObject_CallMethod(view, "tobytes", NULL);
    PyObject *all = PySlice_New(NULL, NULL, NULL);
    int r = dst && src && all ? PyObject_SetItem(dst, all, src) : -1;
    Py_XDECREF(all);
    Py_XDECREF(src);
    Py_XDECREF(dst);
    return r;
}

/* The format of an array's view, checked to be one that travels; NULL with TypeError. */
static PyObject *
array_format(PyObject *view, PyObject *o)
{
    PyObject *format = PyObject_GetAttrString(view, "format");
    Py_ssize_t len;
    const char *s = format ? PyUnicode_AsUTF8AndSize(format, &len) : NULL;
    if (!s) {
        Py_XDECREF(format);
        return NULL;
    }
    const char *item = len == 2 && s[0] == '@' ? s + 1 : s; /* '@': native, as bare */
    if (item != s && strchr(ARRAY_FORMATS, *item)) {
        PyObject *bare = PyUnicode_FromStringAndSize(item, 1);
        Py_DECREF(format);
        format = bare;
    } else if (item != s || len != 1 || !strchr(ARRAY_FORMATS, s[0])) {
        PyObject *name = tether_py_type_display_name(Py_TYPE(o));
        if (name) {
            PyErr_Format(PyExc_TypeError,
                         "cannot send a '%U' of element format '%s': arrays travel with elements "
                         "of one native struct character (%s); convert it (for numpy, "
                         "astype or view) or send its bytes",
                         name, s, ARRAY_FORMATS);
            Py_DECREF(name);
        }
        Py_CLEAR(format);
    }
    return format;
}

int
tether_py_pack_buffer_object(packbuf *b, PyObject *o)
{
    bool is_view = PyMemoryView_Check(o);
    if (!is_view && !PyType_GetSlot(Py_TYPE(o), Py_bf_getbuffer)) {
        return 0;
    }
    PyObject *view = PyMemoryView_FromObject(o);
    if (!view) {
        return -1;
    }
    PyObject *nbytes_obj = PyObject_GetAttrString(view, "nbytes");
    size_t nbytes = nbytes_obj ? PyLong_AsSize_t(nbytes_obj) : (size_t)-1;
    Py_XDECREF(nbytes_obj);
    PyObject *format = NULL, *shape = NULL;
    int r = nbytes == (size_t)-1 && PyErr_Occurred() ? -1 : 0;
    if (r == 0 && !is_view) { /* an array: its elements and dimensions go with it */
        format = array_format(view, o);
        shape = format ? PyObject_GetAttrString(view, "shape") : NULL;
        r = shape ? 0 : -1;
    }
    tether_buffer *buf = NULL;
    tether_buffer *shared = r == 0 ? registered_buffer(o) : NULL;
    if (shared && nbytes == tether_buffer_get_size(shared) && nbytes > 0 &&
        is_c_contiguous(view) == 1) {
        /* Over the whole of a buffer's mapping (shared_memory(), a buffer received):
         * that buffer goes, with no copy. */
        r = pack_buffer_ext(b, tether_buffer_ref(shared), format, shape);
        r = r < 0 ? r : 1;
    } else if (r == 0 && (format || nbytes >= buffer_threshold)) {
        r = buffer_new(nbytes, &buf);
    }
    if (r > 0 && buf) {
        r = copy_view(buf, view, nbytes);
        r = r < 0 ? r : pack_buffer_ext(b, buf, format, shape);
        buf = NULL;
        r = r < 0 ? r : 1;
    } else if (r == 0) { /* small, or no shared memory here: its bytes inline */
        PyObject *copy = PyObject_CallMethod(view, "tobytes", NULL);
        char *p;
        Py_ssize_t n;
        r = copy && PyBytes_AsStringAndSize(copy, &p, &n) == 0 ? 0 : -1;
        r = r < 0 ? r : tether_py_pb_header(b, 0, 0, 0xc4, 0xc5, (size_t)n);
        r = r < 0 ? r : tether_py_pb_put(b, p, (size_t)n);
        r = r < 0 ? r : 1;
        Py_XDECREF(copy);
    }
    tether_buffer_unref(buf);
    Py_XDECREF(shape);
    Py_XDECREF(format);
    Py_DECREF(view);
    return r;
}

/* ---- SharedMemory: Python's views of a buffer ----------------------------------- */

typedef struct {
    PyObject_HEAD tether_buffer *buf; /* a reference */
    bool writable;                    /* made here by shared_memory() */
} shared_memory_object;

static PyTypeObject *shared_memory_type; /* made on first use; the GIL guards it */

static int
shared_memory_getbuffer(PyObject *self, Py_buffer *view, int flags)
{
    static char empty;
    shared_memory_object *s = (shared_memory_object *)self;
    void *p =
        s->writable ? tether_buffer_get_writable(s->buf) : (void *)tether_buffer_get_data(s->buf);
    return PyBuffer_FillInfo(view, self, p ? p : &empty, (Py_ssize_t)tether_buffer_get_size(s->buf),
                             !s->writable, flags);
}

static void
shared_memory_dealloc(PyObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    tether_buffer_unref(((shared_memory_object *)self)->buf);
    freefunc free_self = (freefunc)PyType_GetSlot(type, Py_tp_free);
    free_self(self);
    Py_DECREF(type);
}

static PyType_Slot shared_memory_slots[] = {
    {Py_bf_getbuffer, shared_memory_getbuffer},
    {Py_tp_dealloc, shared_memory_dealloc},
    {Py_tp_doc, "Memory shared with a peer (a tether buffer), exported by the buffer "
                "protocol; what is made over all of it is sent without a copy."},
    {0, NULL},
};

static PyType_Spec shared_memory_spec = {
    .name = "tether._tether.SharedMemory",
    .basicsize = sizeof(shared_memory_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = shared_memory_slots,
};

/* A memoryview of b's memory (read-only unless writable), which holds b. */
static PyObject *
shared_memory_view(tether_buffer *b, bool writable)
{
    if (!shared_memory_type &&
        !(shared_memory_type = (PyTypeObject *)PyType_FromSpec(&shared_memory_spec))) {
        return NULL;
    }
    allocfunc alloc = (allocfunc)PyType_GetSlot(shared_memory_type, Py_tp_alloc);
    shared_memory_object *s = (shared_memory_object *)alloc(shared_memory_type, 0);
    if (!s) {
        return NULL;
    }
    s->buf = tether_buffer_ref(b);
    s->writable = writable;
    PyObject *view = PyMemoryView_FromObject((PyObject *)s);
    Py_DECREF(s);
    return view;
}

/* The buffer of the SharedMemory that o is made over (a numpy array, a memoryview,
 * through .base and .obj), borrowed; NULL (no exception) for none. */
static tether_buffer *
registered_buffer(PyObject *o)
{
    if (!shared_memory_type) {
        return NULL;
    }
    PyObject *x = Py_NewRef(o);
    tether_buffer *found = NULL;
    for (int depth = 0; x && x != Py_None && depth < 8; depth++) {
        if (Py_IS_TYPE(x, shared_memory_type)) {
            found = ((shared_memory_object *)x)->buf;
            break;
        }
        PyObject *next = PyObject_GetAttrString(x, PyMemoryView_Check(x) ? "obj" : "base");
        Py_DECREF(x);
        x = next;
    }
    Py_XDECREF(x);
    PyErr_Clear(); /* no .base: not ours */
    return found;
}

PyObject *
tether_py_module_shared_memory(PyObject *module, PyObject *arg)
{
    (void)module;
    size_t n = PyLong_AsSize_t(arg);
    if (n == (size_t)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "shared memory of 0 bytes");
        return NULL;
    }
    tether_buffer *b;
    int r = tether_buffer_new(n, &b);
    if (r == TETHER_ENOTSUP) {
        PyErr_SetString(PyExc_NotImplementedError,
                        "no shared memory on this platform (the portable build)");
        return NULL;
    }
    if (r < 0) {
        PyErr_Format(PyExc_MemoryError, "cannot make a shared-memory buffer of %zu bytes: %s", n,
                     tether_strerror(r));
        return NULL;
    }
    PyObject *view = shared_memory_view(b, true);
    tether_buffer_unref(b); /* the view holds it */
    return view;
}

/* ---- receiving ---------------------------------------------------------------------- */

/* numpy, or NULL (no exception) where it cannot be imported; tried once. */
static PyObject *
numpy_module(void)
{
    static bool missing;
    if (missing) {
        return NULL;
    }
    PyObject *np = PyImport_ImportModule("numpy");
    if (!np) {
        PyErr_Clear();
        missing = true;
    }
    return np;
}

/* view as an array of format and shape: numpy's, else a memoryview cast to them, else
 * view itself (a format or shape that memoryview cannot express). */
static PyObject *
array_of_view(PyObject *view, PyObject *format, PyObject *shape)
{
    PyObject *np = numpy_module();
    if (np) {
        PyObject *flat = PyObject_CallMethod(np, "frombuffer", "OO", view, format);
        PyObject *array = flat ? PyObject_CallMethod(flat, "reshape", "(O)", shape) : NULL;
        Py_XDECREF(flat);
        Py_DECREF(np);
        return array;
    }
    PyObject *cast = PyObject_CallMethod(view, "cast", "OO", format, shape);
    if (!cast) {
        PyErr_Clear();
        return Py_NewRef(view);
    }
    return cast;
}

PyObject *
tether_py_buffer_value(tether_buffer *b, PyObject *payload)
{
    PyObject *view = shared_memory_view(b, false);
    if (!view || !PyList_Check(payload) || PyList_Size(payload) < 3) {
        return view;
    }
    PyObject *format = PyList_GetItem(payload, 1);
    PyObject *shape = PyList_GetItem(payload, 2);
    if (!PyUnicode_Check(format) || !PyList_Check(shape)) {
        return view; /* a later version's fields: the bytes still stand */
    }
    PyObject *dims = PyList_AsTuple(shape);
    PyObject *array = dims ? array_of_view(view, format, dims) : NULL;
    Py_XDECREF(dims);
    Py_DECREF(view);
    if (!array && PyErr_ExceptionMatches(PyExc_ValueError)) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError,
                     "received a buffer of %zu bytes that is no array of format %R and shape %R",
                     tether_buffer_get_size(b), format, shape);
    }
    return array;
}
