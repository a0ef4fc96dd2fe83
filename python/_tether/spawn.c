/*
 * Spawning child interpreters (tether.run_script and its siblings, tether/_spawn.py)
 *
 * A Python parent needs a host for its children to connect to: Host is a private one
 * (no listening socket; children come through socket pairs). Host.spawn wraps
 * tether_host_spawn and gives a Child, whose last reference ends the process. What a
 * child prints reaches this process's stdout and stderr, line by line, prefixed with its
 * pid, written by the I/O thread (no GIL needed).
 *
 * A spawned child sets its own process up through _set_parent_death_signal and
 * _set_process_name, which call the core's tether_process_* functions: what differs
 * between systems stays in the core's platform layer, and these say False where the
 * system (or a TETHER_PLATFORM=posix build) has no way.
 */
#include "module.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

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
    ssize_t written =
        writev(stream == TETHER_CHILD_STDERR ? STDERR_FILENO : STDOUT_FILENO, parts, 3);
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
        return tether_py_raise_error(tether_py_state_of_type(type), r, NULL, AT_CALL);
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
    static char *kwlist[] = {"executable",   "script",      "script_path",
                             "module",       "module_path", "object_module",
                             "object_class", "object_args", "object_kwargs",
                             "args",         "env",         "cwd",
                             "name",         "python_path", "start_timeout",
                             "warm",         NULL};
    tether_spawn_options o = {.output = child_output};
    PyObject *object_args = Py_None, *object_kwargs = Py_None, *argv = Py_None, *env = Py_None;
    PyObject *start_timeout = Py_None;
    int warm = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$zzzzzzzOOOOzzzOp:spawn", kwlist, &o.executable,
                                     &o.script, &o.script_path, &o.module, &o.module_path,
                                     &o.object_module, &o.object_class, &object_args,
                                     &object_kwargs, &argv, &env, &o.cwd, &o.name, &o.python_path,
                                     &start_timeout, &warm)) {
        return NULL;
    }
    o.warm = warm;
    module_state *st = tether_py_state_of_type(Py_TYPE(self));
    if (tether_py_usec_from_seconds(start_timeout, 0, "start_timeout", &o.start_timeout_usec) < 0) {
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
        tether_py_values_from_args(object_args == Py_None ? NULL : object_args,
                                   object_kwargs == Py_None ? NULL : object_kwargs, &x, &cargs,
                                   &ckwargs);
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
            tether_py_raise_error(st, r, &err, AT_CALL);
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

PyType_Spec tether_py_host_spec = {
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
    module_state *st = tether_py_state_of_type(Py_TYPE(self));
    return tether_py_ref_new(st, tether_object_ref(tether_child_get_root(self->child)),
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
        tether_py_usec_from_seconds(timeout_obj, TETHER_TIMEOUT_INFINITE, "timeout", &timeout) <
            0) {
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

PyType_Spec tether_py_child_spec = {
    .name = "tether._tether.Child",
    .basicsize = sizeof(ChildObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = child_slots,
};

/* What a tether_process_* function returned, for Python: True, False when the system
 * has no way (TETHER_ENOTSUP), OSError otherwise. */
static PyObject *
process_result(int r)
{
    if (r == TETHER_ENOTSUP) {
        Py_RETURN_FALSE;
    }
    if (r < 0) {
        errno = -r;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_TRUE;
}

/* _set_parent_death_signal(signum) -> bool: the kernel sends signum to this process
 * when its parent dies (a spawned child's second guard); False where it cannot. */
PyObject *
tether_py_module_set_parent_death_signal(PyObject *module, PyObject *arg)
{
    long signum = PyLong_AsLong(arg);
    if (signum == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (signum < 0 || signum > INT_MAX) {
        errno = EINVAL;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return process_result(tether_process_set_parent_death_signal((int)signum));
}

/* _set_process_name(name) -> bool: this process's name in ps (15 bytes); False where
 * it cannot be set. */
PyObject *
tether_py_module_set_process_name(PyObject *module, PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8AndSize(arg, NULL);
    if (!name) {
        return NULL;
    }
    return process_result(tether_process_set_name(name));
}
