/*
 * Errors: a negative code and a tether_error to the exception a caller sees.
 *
 * The mapping lives in one function, tether_py_error_object: a builtin class where one
 * fits (TimeoutError, ConnectionResetError, PermissionError; a remote NameError stays a
 * NameError), tether's own otherwise. Those are Python classes, in tether/_errors.py, for
 * exact Python semantics (subclassing, pickling, __str__): module init imports them, adds
 * them to this module and keeps them in the module state.
 */
#include "module.h"

#include <limits.h>
#include <string.h>

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
    PyObject *type_obj = tether_py_text_or_none(type ? type : "Exception");
    PyObject *message_obj = tether_py_text_or_none(message ? message : "");
    if (traceback && !*traceback) {
        traceback = NULL; /* peers that have none may send "" */
    }
    PyObject *traceback_obj = tether_py_text_or_none(traceback);
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

PyObject *
tether_py_error_object(module_state *st, int code, const tether_error *err, int where)
{
    if (code == TETHER_EREMOTE) {
        return remote_exception(st, err ? err->type : NULL, err ? err->message : NULL,
                                err ? err->traceback : NULL);
    }
    const char *text = err && err->message && *err->message ? err->message : tether_strerror(code);
    PyObject *message = tether_py_text_or_none(text);
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

/* Raise the exception of code/err; returns NULL for `return tether_py_raise_error(...)`. */
PyObject *
tether_py_raise_error(module_state *st, int code, const tether_error *err, int where)
{
    PyObject *exc = tether_py_error_object(st, code, err, where);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/*
 * The exception hierarchy, from tether._errors: each class becomes an attribute of this
 * module (the package re-exports them; their __module__ is "tether") and is kept in the
 * module state. tether._errors imports nothing, so this works while the package, which
 * imports this module first, is still being imported.
 */
int
tether_py_add_exceptions(PyObject *module, module_state *st)
{
    PyObject *errors = PyImport_ImportModule("tether._errors");
    if (!errors) {
        return -1;
    }
    int result = -1;
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
        PyObject *cls = PyObject_GetAttrString(errors, classes[i].name);
        if (!cls || PyModule_AddObjectRef(module, classes[i].name, cls) < 0) {
            Py_XDECREF(cls);
            goto out;
        }
        *(PyObject **)((char *)st + classes[i].offset) = cls;
    }
    result = 0;
out:
    Py_DECREF(errors);
    return result;
}

/* _error(code, type=None, message=None, traceback=None) -> exception: what a failed call
 * with that code and tether_error raises (tests). */
PyObject *
tether_py_module_error(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"code", "type", "message", "traceback", "connect", NULL};
    int code, at_connect = 0;
    const char *type = NULL, *message = NULL, *traceback = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|zzzp:_error", kwlist, &code, &type, &message,
                                     &traceback, &at_connect)) {
        return NULL;
    }
    tether_error err = {(char *)type, (char *)message, (char *)traceback};
    return tether_py_error_object(tether_py_state_of_module(module), code, &err,
                                  at_connect ? AT_CONNECT : AT_CALL);
}

PyObject *
tether_py_module_strerror(PyObject *module, PyObject *arg)
{
    long code = PyLong_AsLong(arg);
    if (code == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return PyUnicode_FromString(tether_strerror(code < INT_MIN || code > INT_MAX ? 0 : (int)code));
}
