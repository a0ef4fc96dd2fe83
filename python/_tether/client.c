/*
 * Client: one tether_client, a connection to a host (connect, close, calls,
 * notifications, logs, services, and the fileno()/dispatch() pair of the main-thread
 * queue). Its calls go through call.c, its services through service.c.
 */
#include "module.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
        tether_py_svc_unregister(self->services[i]);
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
    static char *kwlist[] = {"name",        "address",   "timeout",  "connect_timeout",  "token",
                             "runtime_dir", "reconnect", "language", "language_version", "fd",
                             NULL};
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
    if (tether_py_usec_from_seconds(timeout, TETHER_TIMEOUT_INFINITE, "timeout",
                                    &opts.default_timeout_usec) < 0 ||
        tether_py_usec_from_seconds(connect_timeout, 0, "connect_timeout",
                                    &opts.connect_timeout_usec) < 0) {
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
        return tether_py_raise_error(tether_py_state_of_type(type), r, NULL, AT_CONNECT);
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
        tether_py_raise_error(tether_py_state_of_type(Py_TYPE(self)), r, &err, AT_CONNECT);
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
    return tether_py_text_or_none(tether_client_get_host_name(self->client));
}

static PyObject *
client_get_registered_name(ClientObject *self, void *closure)
{
    return tether_py_text_or_none(tether_client_get_registered_name(self->client));
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
        return tether_py_raise_error(tether_py_state_of_type(Py_TYPE(self)), fd, NULL, AT_CALL);
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
        tether_py_usec_from_seconds(budget_obj, TETHER_BUDGET_UNLIMITED, "budget", &budget) < 0) {
        return NULL;
    }
    int r;
    PyThreadState *save = PyEval_SaveThread();
    r = tether_client_dispatch(self->client, budget);
    PyEval_RestoreThread(save);
    if (r < 0) {
        return tether_py_raise_error(tether_py_state_of_type(Py_TYPE(self)), r, NULL, AT_CALL);
    }
    return PyBool_FromLong(r > 0);
}

/* read_begin() -> (fd, key): the socket for the loop to watch, and what tells this
 * connection from a later one (a reconnect may reuse the fd's number; the client keeps
 * every connection it had, so their addresses are not reused); (-1, None) while this
 * thread may not read. */
static PyObject *
client_read_begin(ClientObject *self, PyObject *unused)
{
    int r = tether_client_read_begin(self->client);
    if (r == TETHER_EBUSY || r == TETHER_ENOTCONN) {
        return Py_BuildValue("(iO)", -1, Py_None);
    }
    if (r < 0) {
        return tether_py_raise_error(tether_py_state_of_type(Py_TYPE(self)), r, NULL, AT_CALL);
    }
    return Py_BuildValue("(iK)", r,
                         (unsigned long long)(uintptr_t)tether_client_get_conn(self->client));
}

static PyObject *
client_read_ready(ClientObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"budget", NULL};
    PyObject *budget_obj = Py_None;
    uint64_t budget;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:read_ready", kwlist, &budget_obj) ||
        tether_py_usec_from_seconds(budget_obj, TETHER_BUDGET_UNLIMITED, "budget", &budget) < 0) {
        return NULL;
    }
    PyThreadState *save = PyEval_SaveThread();
    int r = tether_client_read_ready(self->client, budget);
    PyEval_RestoreThread(save);
    if (r < 0) {
        return tether_py_raise_error(tether_py_state_of_type(Py_TYPE(self)), r, NULL, AT_CALL);
    }
    return PyBool_FromLong(r == 0);
}

static PyObject *
client_read_end(ClientObject *self, PyObject *unused)
{
    int r = tether_client_read_end(self->client);
    if (r < 0) {
        return tether_py_raise_error(tether_py_state_of_type(Py_TYPE(self)), r, NULL, AT_CALL);
    }
    Py_RETURN_NONE;
}

static PyObject *
client_wait(ClientObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout_obj = Py_None;
    uint64_t timeout;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:wait", kwlist, &timeout_obj) ||
        tether_py_usec_from_seconds(timeout_obj, UINT64_MAX, "timeout", &timeout) < 0) {
        return NULL;
    }
    PyThreadState *save = PyEval_SaveThread();
    int r = tether_client_wait(self->client, timeout);
    PyEval_RestoreThread(save);
    if (r < 0) {
        return tether_py_raise_error(tether_py_state_of_type(Py_TYPE(self)), r, NULL, AT_CALL);
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

/* A call of the host's services through this client (conn NULL before connect). */
call_target
tether_py_client_target(PyObject *client)
{
    ClientObject *self = (ClientObject *)client;
    return (call_target){
        .conn = tether_client_get_conn(self->client),
        .context = self->main_objects ? TETHER_CONTEXT_MAIN : TETHER_CONTEXT_POOL,
    };
}

static PyObject *
client_call(ClientObject *self, PyObject *args, PyObject *kwds)
{
    return tether_py_call_target_sync(tether_py_state_of_type(Py_TYPE(self)),
                                      tether_py_client_target((PyObject *)self), args, kwds);
}

static PyObject *
client_call_async(ClientObject *self, PyObject *args, PyObject *kwds)
{
    return tether_py_call_target_async(tether_py_state_of_type(Py_TYPE(self)),
                                       tether_py_client_target((PyObject *)self), args, kwds);
}

static PyObject *
client_flush(ClientObject *self, PyObject *Py_UNUSED(ignored))
{
    tether_conn *conn = tether_client_get_conn(self->client);
    int r = conn ? tether_conn_flush(conn) : TETHER_ENOTCONN;
    if (r < 0 && r != TETHER_ENOTCONN) {
        return tether_py_raise_error(tether_py_state_of_type(Py_TYPE(self)), r, NULL, AT_CALL);
    }
    Py_RETURN_NONE; /* not connected: nothing held to write */
}

static PyObject *
client_notify(ClientObject *self, PyObject *args, PyObject *kwds)
{
    return tether_py_call_target_notify(tether_py_state_of_type(Py_TYPE(self)),
                                        tether_py_client_target((PyObject *)self), args, kwds);
}

static PyObject *
client_log(ClientObject *self, PyObject *args)
{
    module_state *st = tether_py_state_of_type(Py_TYPE(self));
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
        tether_error_set(&err, tether_err_type(r), "log: %s", tether_strerror(r));
        tether_py_raise_error(st, r, &err, AT_CALL);
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
    rec->st = tether_py_state_of_type(Py_TYPE(self));
    rec->context = main ? TETHER_CONTEXT_MAIN : TETHER_CONTEXT_POOL;
    if (deferred) {
        rec->deferred =
            (PyTypeObject *)Py_NewRef(tether_py_state_of_type(Py_TYPE(self))->reply_type);
    }
    uintptr_t handle = tether_py_svc_register(rec);
    if (!handle) {
        Py_DECREF(rec->callable);
        Py_XDECREF(rec->deferred);
        free(rec);
        return PyErr_NoMemory();
    }
    int r = tether_client_add_service(self->client, name,
                                      main ? TETHER_CONTEXT_MAIN : TETHER_CONTEXT_POOL,
                                      tether_py_service_handler, (void *)handle);
    if (r < 0) {
        tether_py_svc_unregister(rec);
        if (r == TETHER_EEXIST) {
            PyErr_Format(PyExc_ValueError, "a service named '%s' is registered already", name);
        } else if (r == TETHER_EINVAL) {
            PyErr_Format(PyExc_ValueError, "invalid service name '%s'", name);
        } else {
            tether_py_raise_error(tether_py_state_of_type(Py_TYPE(self)), r, NULL, AT_CALL);
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
    {"wait", (PyCFunction)(void (*)(void))client_wait, METH_VARARGS | METH_KEYWORDS,
     "wait(timeout=None) -> bool\n\nWait up to timeout seconds (None: no limit) for "
     "main-thread work and run all of it, reading the connection meanwhile so that a call "
     "of a main-thread service wakes only this thread. True if work ran."},
    {"read_begin", (PyCFunction)client_read_begin, METH_NOARGS,
     "read_begin() -> (fd, key)\n\nOn the main thread, for its event loop: read the "
     "connection from this thread while the loop is idle. The socket's fd to watch for "
     "input (not to read or close: dup it) and a key that changes with the connection; "
     "(-1, None) while another thread reads it or none is connected (try again later)."},
    {"read_ready", (PyCFunction)(void (*)(void))client_read_ready, METH_VARARGS | METH_KEYWORDS,
     "read_ready(budget=None) -> bool\n\nThe fd of read_begin() is readable: read, and run "
     "the main-thread work that came. False once this thread no longer reads the "
     "connection: stop watching that fd."},
    {"read_end", (PyCFunction)client_read_end, METH_NOARGS,
     "read_end()\n\nGive the reading of the connection back to the I/O thread."},
    {"call", (PyCFunction)(void (*)(void))client_call, METH_VARARGS | METH_KEYWORDS,
     "call(method, args=(), kwargs=None, timeout=None)\n\nCall a service of the host and "
     "return its result. timeout: seconds of silence from the host before TimeoutError "
     "(None: the client's default)."},
    {"call_async", (PyCFunction)(void (*)(void))client_call_async, METH_VARARGS | METH_KEYWORDS,
     "call_async(method, args=(), kwargs=None, timeout=None, deadline=None, batch=False) -> "
     "Future\n\nbatch: leave the request for flush() to write with others (a call alone in "
     "flight goes out at once)."},
    {"flush", (PyCFunction)client_flush, METH_NOARGS,
     "flush()\n\nWrite the requests of batch calls now."},
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
    {"registered_name", (getter)client_get_registered_name, NULL,
     "The name the host registered this client under (name, or name#N when taken), None "
     "before connect.",
     NULL},
    {"serve_main", (getter)client_get_serve_main, (setter)client_set_serve_main,
     "Objects this client exports serve in dispatch() (True) or on worker threads (False).", NULL},
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

PyType_Spec tether_py_client_spec = {
    .name = "tether._tether.Client",
    .basicsize = sizeof(ClientObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = client_slots,
};
