/*
 * _tether: the CPython binding of libtether, imported as tether._tether.
 *
 * A thin layer over the public C API (include/tether.h, the only header of the library
 * these files include); everything that can be Python lives in python/tether/. Built for
 * the stable ABI (Py_LIMITED_API 3.10, set in module.h: one .abi3.so for every CPython
 * from 3.10 on), with multi-phase init, all state in the module state, heap types made
 * from specs, and no static PyObject pointers.
 *
 * The binding is split the way CPython splits _sqlite and _io: a file per concept, and
 * one internal header, module.h, with the module state and what the files share.
 * - module.c: the module: its state's life (exec, traverse, clear, free), its method
 *   table, and interpreter-exit cleanup (_shutdown).
 * - util.c: conversions every file uses (seconds to microseconds, text from a peer).
 * - codec.c: a msgpack encoder (Python object to bytes, for arguments and results) and a
 *   decoder (bytes to Python object); _pack, _unpack and type_name.
 * - buffer.c: big bytes and arrays through shared memory (tether_buffer): sent from a
 *   copy in a memfd, received as a mapping of it (a memoryview, or a numpy array);
 *   buffer_threshold and set_buffer_threshold.
 * - errors.c: the exception classes (Python, from tether/_errors.py), and one function
 *   (tether_py_error_object) that turns a negative code plus a tether_error into the
 *   exception a caller sees; _error and strerror.
 * - future.c: Future, one tether_future (ready, wait, result, exception,
 *   add_done_callback, cancel; awaitable, through tether._aio), and the thread that runs
 *   done-callbacks.
 * - service.c: services exposed by Python, the table that keeps their handlers safe from
 *   freed clients and interpreter exit, and Reply, the request kept by a deferred service.
 * - object.c: objects by reference: the export of this process's objects, and Ref, the
 *   handle of a tether.Proxy (a proxy for an object of the peer).
 * - call.c: calls, blocking, asynchronous or notifications, of a service of the peer or
 *   of a method of one of its objects.
 * - client.c: Client, one tether_client (connect, close, calls, notifications, services,
 *   and the fileno()/dispatch() pair of the main-thread queue).
 * - spawn.c: Host and Child, for spawning child interpreters, and the process settings a
 *   spawned child makes on itself.
 *
 * Threads and the GIL: every wait on the core releases the GIL; call.c says how a
 * blocking call waits, service.c where services run, future.c where done-callbacks run.
 */
#include "module.h"

/* ======================================================================================
 * Module functions (each defined in the file of its concept)
 * ==================================================================================== */

/*
 * _shutdown(): called at interpreter exit (atexit). Stops the callback thread, refuses
 * new service requests, and waits (bounded) for handlers that are running.
 */
static PyObject *
module_shutdown(PyObject *module, PyObject *unused)
{
    module_state *st = tether_py_state_of_module(module);
    tether_py_hub_stop(st->hub);
    PyThreadState *save = PyEval_SaveThread();
    tether_py_svc_shutdown();
    PyEval_RestoreThread(save);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_run_callbacks", tether_py_module_run_callbacks, METH_NOARGS,
     "The body of the tether-callbacks thread (internal)."},
    {"_shutdown", module_shutdown, METH_NOARGS, "Interpreter-exit cleanup (internal)."},
    {"set_buffer_threshold", tether_py_module_set_buffer_threshold, METH_O,
     "Send bytes-like values of at least this many bytes through shared memory; returns "
     "the threshold before."},
    {"buffer_threshold", tether_py_module_buffer_threshold, METH_NOARGS,
     "The size from which bytes-like values go through shared memory."},
    {"shared_memory", tether_py_module_shared_memory, METH_O,
     "shared_memory(size): a writable memoryview of size zeroed bytes of shared memory; "
     "what is made over the whole of it (a numpy array) is sent without a copy."},
    {"_pack", tether_py_module_pack, METH_O, "_pack(obj) -> bytes: obj as tether sends it."},
    {"_unpack", tether_py_module_unpack, METH_O,
     "_unpack(data) -> obj: msgpack bytes as received."},
    {"_error", (PyCFunction)(void (*)(void))tether_py_module_error, METH_VARARGS | METH_KEYWORDS,
     "_error(code, type=None, message=None, traceback=None, connect=False) -> exception"},
    {"strerror", tether_py_module_strerror, METH_O,
     "strerror(code) -> str: the core's name of a code."},
    {"_set_parent_death_signal", tether_py_module_set_parent_death_signal, METH_O,
     "_set_parent_death_signal(signum) -> bool: signum to this process when its parent "
     "dies (False: the system has no such signal)."},
    {"_set_process_name", tether_py_module_set_process_name, METH_O,
     "_set_process_name(name) -> bool: this process's name in ps (False: it cannot be "
     "set)."},
    {"type_name", tether_py_module_type_name, METH_O,
     "type_name(obj) -> str: the name peers see for obj's type ('int', 'mod.Class')."},
    {"_in_blocking_call", tether_py_module_in_blocking_call, METH_NOARGS,
     "_in_blocking_call() -> bool: this thread waits in a blocking call (internal)."},
    {NULL, NULL, 0, NULL},
};

/* ======================================================================================
 * Module init
 * ==================================================================================== */

static int
module_exec(PyObject *module)
{
    module_state *st = tether_py_state_of_module(module);
    st->hub = tether_py_hub_new();
    if (!st->hub) {
        PyErr_NoMemory();
        return -1;
    }
    st->client_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &tether_py_client_spec, NULL);
    if (!st->client_type || PyModule_AddType(module, st->client_type) < 0) {
        return -1;
    }
    st->future_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &tether_py_future_spec, NULL);
    if (!st->future_type || PyModule_AddType(module, st->future_type) < 0) {
        return -1;
    }
    st->reply_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &tether_py_reply_spec, NULL);
    if (!st->reply_type || PyModule_AddType(module, st->reply_type) < 0) {
        return -1;
    }
    st->ref_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &tether_py_ref_spec, NULL);
    if (!st->ref_type || PyModule_AddType(module, st->ref_type) < 0) {
        return -1;
    }
    st->host_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &tether_py_host_spec, NULL);
    if (!st->host_type || PyModule_AddType(module, st->host_type) < 0) {
        return -1;
    }
    st->child_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &tether_py_child_spec, NULL);
    if (!st->child_type || PyModule_AddType(module, st->child_type) < 0) {
        return -1;
    }
    st->completions_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &tether_py_completions_spec, NULL);
    if (!st->completions_type || PyModule_AddType(module, st->completions_type) < 0) {
        return -1;
    }
    st->method_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &tether_py_method_spec, NULL);
    if (!st->method_type || PyModule_AddType(module, st->method_type) < 0) {
        return -1;
    }
    st->exports = PyDict_New();
    st->classes = PyDict_New();
    if (!st->exports || !st->classes) {
        return -1;
    }
    if (tether_py_add_exceptions(module, st) < 0) {
        return -1;
    }
    if (PyModule_AddStringConstant(module, "core_version", TETHER_VERSION_STRING) < 0 ||
        PyModule_AddIntConstant(module, "protocol_version", (long)tether_protocol_version()) < 0) {
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

    /* The main thread: the only one that receives signals. threading.main_thread() is
     * the thread that first imported threading; until something has, that is the thread
     * importing us, the answer threading would give, without the import that a spawned
     * child would otherwise pay for this alone. */
    PyObject *name = PyUnicode_FromString("threading");
    PyObject *threading = name ? PyImport_GetModule(name) : NULL;
    Py_XDECREF(name);
    if (PyErr_Occurred()) {
        Py_XDECREF(threading);
        return -1;
    }
    if (threading) {
        PyObject *main_thread = PyObject_CallMethod(threading, "main_thread", NULL);
        PyObject *ident = main_thread ? PyObject_GetAttrString(main_thread, "ident") : NULL;
        Py_DECREF(threading);
        Py_XDECREF(main_thread);
        if (!ident) {
            return -1;
        }
        st->main_thread = PyLong_AsUnsignedLong(ident);
        Py_DECREF(ident);
        if (PyErr_Occurred()) {
            return -1;
        }
    } else {
        st->main_thread = PyThread_get_thread_ident();
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
    module_state *st = tether_py_state_of_module(module);
    Py_VISIT(st->client_type);
    Py_VISIT(st->future_type);
    Py_VISIT(st->reply_type);
    Py_VISIT(st->ref_type);
    Py_VISIT(st->host_type);
    Py_VISIT(st->child_type);
    Py_VISIT(st->completions_type);
    Py_VISIT(st->method_type);
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
    module_state *st = tether_py_state_of_module(module);
    Py_CLEAR(st->client_type);
    Py_CLEAR(st->future_type);
    Py_CLEAR(st->reply_type);
    Py_CLEAR(st->ref_type);
    Py_CLEAR(st->host_type);
    Py_CLEAR(st->child_type);
    Py_CLEAR(st->completions_type);
    Py_CLEAR(st->method_type);
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
    module_state *st = tether_py_state_of_module(module);
    tether_py_hub_unref(st->hub);
    st->hub = NULL;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

struct PyModuleDef tether_py_module_def = {
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
    return PyModuleDef_Init(&tether_py_module_def);
}
