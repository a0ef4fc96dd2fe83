/*
 * Future: the outcome of a call made with call_async, over one tether_future (ready,
 * wait, result, exception, add_done_callback, cancel; awaitable, through tether._aio).
 *
 * Future.add_done_callback: the core calls a TETHER_CONTEXT_IO callback on its I/O
 * thread; that callback only appends the future to a queue, the hub (no GIL, no Python).
 * A Python daemon thread, "tether-callbacks", started on first need, waits on the queue
 * with the GIL released and runs the Python callbacks. So callbacks run promptly,
 * whatever the main thread is doing, may block or make calls (the I/O thread is never
 * held up by Python), and an exception in one is reported through sys.unraisablehook, as
 * concurrent.futures logs it. A callback added to a future that is already complete runs
 * at once, on the calling thread.
 */
#include "module.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

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

hub *
tether_py_hub_new(void)
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

void
tether_py_hub_unref(hub *h)
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

/* Stop the runner (_shutdown): it runs the callbacks queued already, then returns. */
void
tether_py_hub_stop(hub *h)
{
    pthread_mutex_lock(&h->lock);
    h->stopping = true;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->lock);
}

/* ======================================================================================
 * Future
 * ==================================================================================== */

enum {
    CB_NONE = 0,
    CB_WAITING = 1, /* the hub runs the callbacks */
    CB_FIRED = 2,
    CB_QUEUED = 3 /* a CompletionQueue has the core callback; it runs them when drained */
};

typedef struct {
    PyObject ob_base; /* PyObject_HEAD */
    tether_future *future;
    PyObject *method;    /* str, for repr */
    PyObject *callbacks; /* list of callables not yet run, or NULL */
    int cb_state;
    bool have_outcome;
    PyObject *result;       /* once have_outcome: the result, or NULL if failed */
    PyObject *exception;    /* once have_outcome: the exception, or NULL if it succeeded */
    tether_context context; /* of the caller: for proxies in the result */
} FutureObject;

PyObject *
tether_py_future_new_object(module_state *st, tether_future *future, PyObject *method,
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
    if (tether_future_is_ready(future) == 1) {
        return 1; /* the common case of a pipelining caller: no GIL hand-off, no clock */
    }
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
    module_state *st = tether_py_state_of_type(Py_TYPE(self));
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
        result = tether_py_object_from_value(value, &x);
    } else {
        exception = tether_py_error_object(st, r, &err, AT_CALL);
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

/* Names of the asyncio future methods called here for every awaited call, interned once
 * (with the GIL); the last one set says all are. */
static PyObject *name_done, *name_cancelled, *name_set_result, *name_set_exception;

static int
intern_asyncio_names(void)
{
    if (name_set_exception) {
        return 0;
    }
    PyObject **slots[] = {&name_done, &name_cancelled, &name_set_result, &name_set_exception};
    const char *names[] = {"done", "cancelled", "set_result", "set_exception"};
    for (size_t i = 0; i < sizeof(slots) / sizeof(slots[0]); i++) {
        if (!*slots[i] && !(*slots[i] = PyUnicode_InternFromString(names[i]))) {
            return -1;
        }
    }
    return 0;
}

int
tether_py_future_settle(PyObject *future, PyObject *waiter)
{
    if (intern_asyncio_names() < 0) {
        return -1;
    }
    PyObject *done = PyObject_CallMethodObjArgs(waiter, name_done, NULL);
    int is_done = done ? PyObject_IsTrue(done) : -1;
    Py_XDECREF(done);
    if (is_done != 0) {
        return is_done < 0 ? -1 : 0; /* cancelled meanwhile */
    }
    FutureObject *self = (FutureObject *)future;
    PyObject *r;
    if (future_load_outcome(self) < 0) {
        /* The outcome cannot be decoded: that is what the awaiter gets. */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        r = PyObject_CallMethodObjArgs(waiter, name_set_exception, value, NULL);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    } else if (self->exception) {
        r = PyObject_CallMethodObjArgs(waiter, name_set_exception, self->exception, NULL);
    } else {
        r = PyObject_CallMethodObjArgs(waiter, name_set_result, self->result, NULL);
    }
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* Wait as Future.result and Future.exception do: TimeoutError if not ready in time. */
static int
future_wait_ready(FutureObject *self, PyObject *timeout_obj)
{
    module_state *st = tether_py_state_of_type(Py_TYPE(self));
    uint64_t timeout;
    if (tether_py_usec_from_seconds(timeout_obj, TETHER_TIMEOUT_INFINITE, "timeout", &timeout) <
        0) {
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
        tether_py_usec_from_seconds(timeout_obj, TETHER_TIMEOUT_INFINITE, "timeout", &timeout) <
            0) {
        return NULL;
    }
    int r = wait_future(tether_py_state_of_type(Py_TYPE(self)), self->future, timeout);
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

/* A done-callback of the asyncio future awaiting this call: a cancelled awaiter cancels
 * the call. */
static PyObject *
future_waiter_done(FutureObject *self, PyObject *waiter)
{
    PyObject *cancelled = intern_asyncio_names() == 0
                              ? PyObject_CallMethodObjArgs(waiter, name_cancelled, NULL)
                              : NULL;
    int yes = cancelled ? PyObject_IsTrue(cancelled) : -1;
    Py_XDECREF(cancelled);
    if (yes < 0) {
        return NULL;
    }
    if (yes) {
        tether_future_cancel(self->future);
    }
    Py_RETURN_NONE;
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
    if (self->cb_state == CB_WAITING || self->cb_state == CB_QUEUED) {
        if (!self->callbacks && !(self->callbacks = PyList_New(0))) {
            return NULL;
        }
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
    module_state *st = module ? tether_py_state_of_module(module) : NULL;
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
        tether_py_hub_unref(p->hub);
        free(p);
        return tether_py_raise_error(st, r, NULL, AT_CALL);
    }
    Py_RETURN_NONE;
}

tether_future *
tether_py_future_claim_callback(PyObject *future)
{
    FutureObject *self = (FutureObject *)future;
    if (!PyObject_TypeCheck(future, tether_py_state_of_type(Py_TYPE(future))->future_type)) {
        PyErr_SetString(PyExc_TypeError, "expected a tether.Future");
        return NULL;
    }
    if (self->cb_state != CB_NONE) {
        return NULL;
    }
    self->cb_state = CB_QUEUED;
    return self->future;
}

void
tether_py_future_unclaim_callback(PyObject *future)
{
    ((FutureObject *)future)->cb_state = CB_NONE;
}

void
tether_py_future_fire_callbacks(PyObject *future)
{
    future_run_callbacks((FutureObject *)future);
}

/*
 * _run_callbacks(): the body of the "tether-callbacks" thread. Waits (GIL released) for
 * completed futures and runs their callbacks, until _shutdown.
 */
PyObject *
tether_py_module_run_callbacks(PyObject *module, PyObject *unused)
{
    hub *h = hub_ref(tether_py_state_of_module(module)->hub);
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
            tether_py_hub_unref(p->hub);
            free(p);
        }
        if (stop) {
            break;
        }
    }
    tether_py_hub_unref(h);
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
    {"_waiter_done", (PyCFunction)future_waiter_done, METH_O,
     "_waiter_done(waiter)\n\nA done-callback for the asyncio future awaiting this call "
     "(tether._aio): cancel the call if waiter was cancelled."},
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

PyType_Spec tether_py_future_spec = {
    .name = "tether.Future",
    .basicsize = sizeof(FutureObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = future_slots,
};
