/*
 * Objects by reference, and Ref, the handle of a tether.Proxy.
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
 * - Ref's call, call_async and notify call methods of the peer's object (call.c).
 */
#include "module.h"

#include <stdlib.h>
#include <string.h>

#define EXPORT_MAGIC 0x74657870u /* "texp": marks the userdata of objects made here */

typedef struct pyexport {
    uint32_t magic;
    PyObject *obj;     /* a strong reference: the peer holds the object through us */
    PyObject *key;     /* id(obj), the key in exports */
    PyObject *exports; /* st->exports (a strong reference: it outlives the module state) */
    module_state *st;  /* for the handler, which runs only before interpreter exit */
    tether_context context;
    tether_object *self; /* not a reference: the core's object that carries this */
} pyexport;

typedef struct {
    tether_class cls;
    char name[];
} class_rec;

typedef struct {
    PyObject ob_base;       /* PyObject_HEAD */
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
    PyObject *name = tether_py_type_display_name(Py_TYPE(o));
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
    *pe = (pyexport){EXPORT_MAGIC, Py_NewRef(o), key, Py_NewRef(st->exports), st, x->context, NULL};
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

/* o by reference, its object kept in b->objs for tether_value_new_msgpack_objects. */
int
tether_py_pack_reference(packbuf *b, PyObject *o)
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
        tether_object *theirs =
            ref && Py_TYPE(ref) == st->ref_type ? ((RefObject *)ref)->obj : NULL;
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

    /* The core writes the reference; its bytes are the core's business. */
    uint8_t small[64];
    size_t n;
    int r = tether_object_get_msgpack(obj, small, sizeof(small), &n);
    if (r == 0) {
        return tether_py_pb_put(b, small, n);
    }
    uint8_t *big = r == TETHER_EMSGSIZE ? malloc(n) : NULL;
    if (big && (r = tether_object_get_msgpack(obj, big, n, &n)) == 0) {
        r = tether_py_pb_put(b, big, n);
        free(big);
        return r;
    }
    free(big);
    tether_py_raise_error(st, r == TETHER_EMSGSIZE ? TETHER_ENOMEM : r, NULL, AT_CALL);
    return -1;
}

PyObject *
tether_py_ref_new(module_state *st, tether_object *obj, tether_context context)
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
PyObject *
tether_py_object_of_reference(const xfer *x, tether_object *obj)
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
    PyObject *ref = tether_py_ref_new(x->st, tether_object_ref(obj), x->context);
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
    if (!tether_py_svc_enter()) {
        return tether_request_reply_error(req, tether_err_type(TETHER_ECANCELED), "the interpreter is exiting");
    }
    if (!tether_request_is_cancelled(req)) {
        PyGILState_STATE gil = tether_py_gil_ensure();
        const char *name = tether_request_get_method(req);
        xfer x = {pe->st, tether_request_get_conn(req), pe->context};
        if (name[0] != '_') {
            /* A public method, the common case: getattr(obj, name)(*args, **kwargs), what
             * serve() would do for it, without serve()'s Python frames. */
            PyObject *method = PyObject_GetAttrString(pe->obj, name);
            if (method) {
                tether_py_serve_request(req, method, NULL, NULL, 0, &x);
                Py_DECREF(method);
            } else {
                tether_py_reply_exception(req, Py_None);
            }
        } else {
            /* An operation (__getattr__, __call__...) or a private name that serve()
             * refuses. */
            PyObject *serve = proxy_part(pe->st, PART_SERVE);
            PyObject *method = serve ? PyUnicode_FromString(name) : NULL;
            if (method) {
                PyObject *lead[2] = {pe->obj, method};
                tether_py_serve_request(req, serve, NULL, lead, 2, &x);
            } else {
                tether_py_reply_exception(req, Py_None);
            }
            Py_XDECREF(method);
            Py_XDECREF(serve);
        }
        PyGILState_Release(gil);
    }
    tether_py_svc_leave();
    return 0;
}

/* The last reference to an exported object went (a worker thread). */
static void
export_release(void *userdata)
{
    pyexport *pe = userdata;
    if (!tether_py_svc_enter()) {
        return; /* the interpreter is exiting: the object goes with it */
    }
    PyGILState_STATE gil = tether_py_gil_ensure();
    PyObject *current = PyDict_GetItemWithError(pe->exports, pe->key);
    if (current && PyLong_AsVoidPtr(current) == pe->self) {
        PyDict_DelItem(pe->exports, pe->key);
    }
    PyErr_Clear();
    Py_DECREF(pe->obj);
    Py_DECREF(pe->key);
    Py_DECREF(pe->exports);
    PyGILState_Release(gil);
    tether_py_svc_leave();
    free(pe);
}

/* ---- Ref: the handle of a tether.Proxy ----------------------------------------------- */

call_target
tether_py_ref_target(PyObject *ref)
{
    RefObject *self = (RefObject *)ref;
    return (call_target){
        .conn = tether_object_get_conn(self->obj),
        .obj = self->obj,
        .context = self->context,
    };
}

static PyObject *
ref_call(RefObject *self, PyObject *args, PyObject *kwds)
{
    return tether_py_call_target_sync(tether_py_state_of_type(Py_TYPE(self)),
                                      tether_py_ref_target((PyObject *)self), args, kwds);
}

static PyObject *
ref_call_async(RefObject *self, PyObject *args, PyObject *kwds)
{
    return tether_py_call_target_async(tether_py_state_of_type(Py_TYPE(self)),
                                       tether_py_ref_target((PyObject *)self), args, kwds);
}

static PyObject *
ref_notify(RefObject *self, PyObject *args, PyObject *kwds)
{
    return tether_py_call_target_notify(tether_py_state_of_type(Py_TYPE(self)),
                                        tether_py_ref_target((PyObject *)self), args, kwds);
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
    return tether_py_text_or_none(tether_object_get_type_name(self->obj));
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

PyType_Spec tether_py_ref_spec = {
    .name = "tether._tether.Ref",
    .basicsize = sizeof(RefObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = ref_slots,
};
