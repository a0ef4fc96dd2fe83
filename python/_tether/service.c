/*
 * Services: Python callables the peer calls, and Reply, the request of a deferred service.
 *
 * Services exposed by Python run in TETHER_CONTEXT_POOL (one of the core's worker threads), or,
 * added with main=True, in TETHER_CONTEXT_MAIN (inside Client.dispatch on the thread that
 * made the Client, where the dispatch released the GIL). The handler takes the GIL with
 * PyGILState_Ensure, converts the arguments, calls the Python callable and replies with
 * its result or its exception; a deferred service (one registered with deferred=True)
 * gets a Reply as first argument instead and replies through it, maybe later, with
 * set_result or set_exception. The handler's userdata is not a pointer but a handle into
 * a process-wide table of service records, so a request that reaches a handler after its
 * Client was freed finds nothing and replies an error instead of touching freed memory.
 * At interpreter exit (atexit) the table is closed and the exit waits (bounded) for
 * handlers that are already running, so none of them takes the GIL once finalization has
 * begun; the handlers and releases of exported objects (object.c) enter and leave the
 * same count.
 */
#include "module.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How long interpreter exit waits for service handlers that are already running. */
#define SHUTDOWN_WAIT_USEC 5000000

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
uintptr_t
tether_py_svc_register(service_rec *rec)
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
void
tether_py_svc_unregister(service_rec *rec)
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

/* A thread Python did not make (the core's worker and I/O threads) has no thread state:
 * PyGILState_Ensure would make one and PyGILState_Release delete it again, on every
 * call (the most of a pool-served call's CPU time). Such a thread keeps the first one
 * instead, the GIL released at once; every later Ensure finds it. Calls come only while
 * the interpreter runs (tether_py_svc_enter), so a kept state is never used after it. */
PyGILState_STATE
tether_py_gil_ensure(void)
{
    static _Thread_local bool kept;
    if (!kept && !PyGILState_GetThisThreadState()) {
        kept = true;
        PyGILState_Ensure();
        PyEval_SaveThread();
    }
    return PyGILState_Ensure();
}

/* Enter code that takes the GIL from a core thread (object methods, releases): false
 * once the interpreter is exiting. Pair with tether_py_svc_leave. */
bool
tether_py_svc_enter(void)
{
    pthread_mutex_lock(&svc_lock);
    bool ok = !svc_shutdown;
    if (ok) {
        svc_running++;
    }
    pthread_mutex_unlock(&svc_lock);
    return ok;
}

void
tether_py_svc_leave(void)
{
    pthread_mutex_lock(&svc_lock);
    if (--svc_running == 0) {
        pthread_cond_broadcast(&svc_idle);
    }
    pthread_mutex_unlock(&svc_lock);
}

/* Interpreter exit (_shutdown, GIL released): refuse new requests, and wait (bounded)
 * for the handlers that are running. */
void
tether_py_svc_shutdown(void)
{
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
    return tether_py_type_display_name(Py_TYPE(exc));
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
void
tether_py_reply_exception(tether_request *req, PyObject *callable)
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
    tether_value *v = result ? tether_py_value_from_object(result, 0, x) : NULL;
    if (v) {
        tether_request_reply_value(req, v);
        tether_value_unref(v);
    } else {
        tether_py_reply_exception(req, callable);
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

PyType_Spec tether_py_reply_spec = {
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
void
tether_py_serve_request(tether_request *req, PyObject *callable, PyTypeObject *deferred,
                        PyObject *const *lead, size_t nlead, const xfer *x)
{
    PyObject *reply = NULL;
    PyObject *args_list = tether_py_object_from_value(tether_request_get_args(req), x);
    PyObject *kwargs =
        args_list ? tether_py_object_from_value(tether_request_get_kwargs(req), x) : NULL;
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
int
tether_py_service_handler(tether_request *req, void *userdata)
{
    service_rec *rec = svc_acquire((uintptr_t)userdata);
    if (!rec) {
        return tether_request_reply_error(req, tether_err_type(TETHER_ECANCELED),
                                          "the service is gone (its client was closed, or "
                                          "the interpreter is exiting)");
    }
    if (tether_request_is_cancelled(req)) {
        svc_release(rec);
        return 0;
    }
    PyGILState_STATE gil = tether_py_gil_ensure();
    PyObject *callable = rec->callable ? Py_NewRef(rec->callable) : NULL;
    PyObject *deferred = rec->deferred ? Py_NewRef(rec->deferred) : NULL;
    if (callable) {
        xfer x = {rec->st, tether_request_get_conn(req), rec->context};
        tether_py_serve_request(req, callable, (PyTypeObject *)deferred, NULL, 0, &x);
        Py_DECREF(callable);
    } else {
        tether_request_reply_error(req, tether_err_type(TETHER_ECANCELED), "the service is gone");
    }
    Py_XDECREF(deferred);
    PyGILState_Release(gil);
    svc_release(rec);
    return 0;
}
