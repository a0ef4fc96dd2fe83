/*
 * Method: the C core of tether.RemoteMethod (conn.root.NAME, a proxy's method).
 *
 * Calling a remote method synchronously is the hot path of every script. Written in
 * Python, RemoteMethod.__call__ cost a frame of its own and a call of Client.call whose
 * five arguments were then parsed back out of a tuple; here the call goes straight from
 * the method's fields to the core. A subclass whose _tether_async is true (async_) starts
 * the call and returns its tether.Future the same way, for pipelining scripts; the others
 * that call differently (aio, notify) stay in Python and override __call__.
 *
 * The target is a Client (a service of the peer) or a Ref (a method of one of its
 * objects); any other object with a call(method, args, kwargs, timeout, deadline)
 * method works too, through that method.
 */
#include "module.h"

#include <structmember.h>

typedef struct {
    PyObject ob_base;    /* PyObject_HEAD */
    PyObject *target;    /* Client, Ref, or anything with call() */
    PyObject *name;      /* str */
    PyObject *timeout;   /* seconds of silence, or None: the connection's */
    PyObject *deadline;  /* seconds for the whole call, or None */
    module_state *st;    /* when target is a Client or a Ref of this module, else NULL */
    bool is_async;       /* the class's _tether_async: calls return a tether.Future */
} MethodObject;

/* Whether type's calls start asynchronously (its _tether_async, looked up once per
 * method made). */
static bool
type_is_async(PyTypeObject *type)
{
    PyObject *flag = PyObject_GetAttrString((PyObject *)type, "_tether_async");
    if (!flag) {
        PyErr_Clear();
        return false;
    }
    int on = PyObject_IsTrue(flag);
    Py_DECREF(flag);
    if (on < 0) {
        PyErr_Clear();
    }
    return on > 0;
}

/* The module state, if target is a Client or a Ref of this module. */
static module_state *
state_of_target(PyObject *target)
{
    PyObject *module = PyType_GetModule(Py_TYPE(target));
    if (!module) {
        PyErr_Clear(); /* not a type of an extension module */
        return NULL;
    }
    if (PyModule_GetDef(module) != &tether_py_module_def) {
        return NULL;
    }
    module_state *st = tether_py_state_of_module(module);
    bool ours = Py_TYPE(target) == st->client_type || Py_TYPE(target) == st->ref_type;
    return ours ? st : NULL;
}

static PyObject *
method_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"client", "name", "timeout", "deadline", NULL};
    PyObject *target, *name, *timeout = Py_None, *deadline = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OU|OO:RemoteMethod", kwlist, &target, &name,
                                     &timeout, &deadline)) {
        return NULL;
    }
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    MethodObject *self = (MethodObject *)alloc(type, 0);
    if (!self) {
        return NULL;
    }
    self->target = Py_NewRef(target);
    self->name = Py_NewRef(name);
    self->timeout = Py_NewRef(timeout);
    self->deadline = Py_NewRef(deadline);
    self->st = state_of_target(target);
    self->is_async = type_is_async(type);
    return (PyObject *)self;
}

static int
method_traverse(MethodObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->target);
    Py_VISIT(self->name);
    Py_VISIT(self->timeout);
    Py_VISIT(self->deadline);
    return 0;
}

static int
method_clear(MethodObject *self)
{
    Py_CLEAR(self->target);
    Py_CLEAR(self->name);
    Py_CLEAR(self->timeout);
    Py_CLEAR(self->deadline);
    return 0;
}

static void
method_dealloc(MethodObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    method_clear(self);
    freefunc free_self = (freefunc)PyType_GetSlot(type, Py_tp_free);
    free_self(self);
    Py_DECREF(type);
}

static PyObject *
method_call(MethodObject *self, PyObject *args, PyObject *kwargs)
{
    if (!self->target) {
        PyErr_SetString(PyExc_ValueError, "the method was cleared");
        return NULL;
    }
    module_state *st = self->st;
    if (st) {
        call_target t = Py_TYPE(self->target) == st->client_type
                            ? tether_py_client_target(self->target)
                            : tether_py_ref_target(self->target);
        return self->is_async ? tether_py_call_async(st, t, self->name, args, kwargs, self->timeout,
                                                     self->deadline)
                              : tether_py_call_sync(st, t, self->name, args, kwargs, self->timeout,
                                                    self->deadline);
    }
    return PyObject_CallMethod(self->target, self->is_async ? "call_async" : "call", "OOOOO",
                               self->name, args, kwargs ? kwargs : Py_None, self->timeout,
                               self->deadline);
}

static PyMemberDef method_members[] = {
    {"_client", T_OBJECT, offsetof(MethodObject, target), READONLY,
     "what the call goes through: a Client, or the Ref of a proxy"},
    {"_name", T_OBJECT, offsetof(MethodObject, name), READONLY, "the method's name"},
    {"_timeout", T_OBJECT, offsetof(MethodObject, timeout), READONLY,
     "seconds of silence a call waits for, or None"},
    {"_deadline", T_OBJECT, offsetof(MethodObject, deadline), READONLY,
     "seconds a whole call may take, or None"},
    {NULL},
};

static PyType_Slot method_slots[] = {
    {Py_tp_doc, "The C core of tether.RemoteMethod: Method(client, name, timeout=None, "
                "deadline=None); calling it makes a synchronous call."},
    {Py_tp_new, method_new},
    {Py_tp_call, method_call},
    {Py_tp_traverse, method_traverse},
    {Py_tp_clear, method_clear},
    {Py_tp_dealloc, method_dealloc},
    {Py_tp_members, method_members},
    {0, NULL},
};

PyType_Spec tether_py_method_spec = {
    .name = "tether._tether.Method",
    .basicsize = sizeof(MethodObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = method_slots,
};
