/*
 * Calls: of a service of the peer (Client.call, call_async and notify) or of a method of
 * one of its objects (the same methods of Ref, the handle of a tether.Proxy).
 *
 * Every wait on the core releases the GIL. A blocking call takes the core's synchronous
 * path, whose waiting thread reads its own reply (no thread hand-off) and runs the peer's
 * call-backs into this thread's MAIN services. On the main thread the core calls back
 * every 50 ms (tether_call_options.interrupt) to run signal handlers: Ctrl-C cancels the
 * remote call and raises KeyboardInterrupt, and the connection stays usable.
 */
#include "module.h"

#include <string.h>

typedef struct {
    const char *method;
    PyObject *method_obj;
    packbuf args, kwargs; /* packed once, copied once by the core into the frame */
    tether_msgpack_args packed;
    /* Arguments that hold buffers go as values, which carry them: args, kwargs or both
     * (either may be NULL, for none). */
    bool as_values;
    tether_value *args_value, *kwargs_value;
    tether_call_options opts;
} call_spec;

/* What a call's arguments hold besides method, args and kwargs. */
typedef enum {
    SPEC_NOTIFY,
    SPEC_CALL,
    SPEC_ASYNC
} spec_kind;

static int call_spec_parse_values(call_spec *c, module_state *st, const call_target *t,
                                  PyObject *args, PyObject *kwds, const char *format,
                                  spec_kind kind);
static int call_spec_set(call_spec *c, module_state *st, const call_target *t, PyObject *method,
                         PyObject *a, PyObject *k, PyObject *timeout, PyObject *deadline);

/* r, or -1 with NotConnectedError set when r is 0 but t has no connection. */
static int
connected(module_state *st, const call_target *t, int r)
{
    if (r == 0 && !t->conn) {
        PyErr_SetString(st->NotConnectedError, "not connected (connect() was never called)");
        return -1;
    }
    return r;
}

/* Parse method, args, kwargs (and timeout) into c, with the objects in them exported on
 * t's connection (NotConnectedError without one). On failure an exception is set; the
 * caller releases c either way. */
static int
call_spec_parse(call_spec *c, module_state *st, const call_target *t, PyObject *args,
                PyObject *kwds, const char *format, spec_kind kind)
{
    return connected(st, t, call_spec_parse_values(c, st, t, args, kwds, format, kind));
}

static int
call_spec_parse_values(call_spec *c, module_state *st, const call_target *t, PyObject *args,
                       PyObject *kwds, const char *format, spec_kind kind)
{
    static char *kwlist[] = {"method", "args", "kwargs", "timeout", "deadline", NULL};
    static char *kwlist_async[] = {"method",   "args",  "kwargs", "timeout",
                                   "deadline", "batch", NULL};
    static char *kwlist_notify[] = {"method", "args", "kwargs", NULL};
    PyObject *method = NULL, *a = Py_None, *k = Py_None, *timeout = Py_None, *deadline = Py_None;
    int batch = 0;
    char **names = kind == SPEC_NOTIFY ? kwlist_notify : kind == SPEC_ASYNC ? kwlist_async : kwlist;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, format, names, &method, &a, &k, &timeout,
                                     &deadline, &batch)) {
        memset(c, 0, sizeof(*c)); /* nothing to release */
        return -1;
    }
    int r = call_spec_set(c, st, t, method, a, k, timeout, deadline);
    c->opts.batch = batch != 0;
    return r;
}

/* The part of parsing after the arguments were told apart: method a str, a and k the
 * call's positional and keyword arguments (a sequence and a dict, or None). */
static int
call_spec_set(call_spec *c, module_state *st, const call_target *t, PyObject *method, PyObject *a,
              PyObject *k, PyObject *timeout, PyObject *deadline)
{
    memset(c, 0, sizeof(*c));
    xfer x = {st, t->conn, t->context};
    tether_py_pb_init(&c->args, &x);
    tether_py_pb_init(&c->kwargs, &x);
    c->method_obj = method;
    c->method = PyUnicode_AsUTF8AndSize(c->method_obj, NULL);
    uint64_t within = 0;
    if (!c->method ||
        tether_py_usec_from_seconds(timeout, TETHER_TIMEOUT_DEFAULT, "timeout",
                                    &c->opts.timeout_usec) < 0 ||
        tether_py_usec_from_seconds(deadline, 0, "deadline", &within) < 0) {
        return -1;
    }
    /* deadline: seconds from now that bound the whole call, however alive the callee. */
    if (deadline != Py_None && within != TETHER_TIMEOUT_INFINITE) {
        c->opts.deadline_usec = tether_now_usec() + (within ? within : 1);
    }
    if (timeout != Py_None && c->opts.timeout_usec == 0) {
        c->opts.timeout_usec = 1; /* 0 would mean the default */
    }
    int r = tether_py_pack_args(a, k, &c->args, &c->kwargs);
    c->args.x = c->kwargs.x = NULL; /* x was this function's: packing is over */
    if (r < 0) {
        return -1;
    }
    c->packed = tether_py_msgpack_args(&c->args, &c->kwargs);
    c->as_values = c->args.nbufs || c->kwargs.nbufs;
    return c->as_values ? tether_py_values_of_packbufs(&c->args, &c->kwargs, &c->args_value,
                                                       &c->kwargs_value)
                        : 0;
}

static void
call_spec_done(call_spec *c)
{
    tether_py_pb_done(&c->args);
    tether_py_pb_done(&c->kwargs);
    c->args_value = tether_value_unref(c->args_value);
    c->kwargs_value = tether_value_unref(c->kwargs_value);
}

static int
target_call(const call_target *t, call_spec *c, tether_value **result, tether_error *err)
{
    if (c->as_values) {
        return t->obj ? tether_object_call_values(t->obj, c->method, c->args_value, c->kwargs_value,
                                                  &c->opts, result, err)
                      : tether_conn_call_values(t->conn, c->method, c->args_value, c->kwargs_value,
                                                &c->opts, result, err);
    }
    return t->obj ? tether_object_call_msgpack(t->obj, c->method, &c->packed, &c->opts, result,
                                               err)
                  : tether_conn_call_msgpack(t->conn, c->method, &c->packed, &c->opts, result,
                                             err);
}

static int
target_call_async(const call_target *t, call_spec *c, tether_future **future)
{
    if (c->as_values) {
        return t->obj ? tether_object_call_async_values(t->obj, c->method, c->args_value,
                                                        c->kwargs_value, &c->opts, future)
                      : tether_conn_call_async_values(t->conn, c->method, c->args_value,
                                                      c->kwargs_value, &c->opts, future);
    }
    return t->obj ? tether_object_call_async_msgpack(t->obj, c->method, &c->packed, &c->opts,
                                                     future)
                  : tether_conn_call_async_msgpack(t->conn, c->method, &c->packed, &c->opts,
                                                   future);
}

/* Raise what a call that failed before it started (code r) raises. */
static PyObject *
raise_start_error(module_state *st, const char *method, int r)
{
    tether_error err = TETHER_ERROR_INIT;
    tether_error_set(&err, tether_err_type(r), "%s: %s", method, tether_strerror(r));
    tether_py_raise_error(st, r, &err, AT_CALL);
    tether_error_done(&err);
    return NULL;
}

/* How many synchronous calls (the core's path) this thread is waiting in; services the
 * core runs inside them see it through _in_blocking_call(). */
static _Thread_local unsigned blocking_calls;

/* A blocking call on the main thread: the core calls this every SIGNAL_SLICE_USEC
 * while it waits, so that Ctrl-C (or any signal handler raising) cancels the call. */
typedef struct {
    PyThreadState *save;
    bool raised;
} signal_watch;

static int
check_signals(void *userdata)
{
    signal_watch *w = userdata;
    PyEval_RestoreThread(w->save);
    w->raised = PyErr_CheckSignals() < 0; /* the exception stays set for the caller */
    w->save = PyEval_SaveThread();
    return w->raised;
}

static PyObject *call_sync(module_state *st, const call_target *t, call_spec *c);

PyObject *
tether_py_call_target_sync(module_state *st, call_target target, PyObject *args, PyObject *kwds)
{
    const call_target *t = &target;
    call_spec c;
    if (call_spec_parse(&c, st, t, args, kwds, "U|OOOO:call", SPEC_CALL) < 0) {
        call_spec_done(&c);
        return NULL;
    }
    return call_sync(st, t, &c);
}

PyObject *
tether_py_call_sync(module_state *st, call_target target, PyObject *method, PyObject *args,
                    PyObject *kwargs, PyObject *timeout, PyObject *deadline)
{
    const call_target *t = &target;
    call_spec c;
    int r = call_spec_set(&c, st, t, method, args, kwargs ? kwargs : Py_None, timeout, deadline);
    if (connected(st, t, r) < 0) {
        call_spec_done(&c);
        return NULL;
    }
    return call_sync(st, t, &c);
}

/* Make the call c, which this releases; its result, or NULL with an exception set. */
static PyObject *
call_sync(module_state *st, const call_target *t, call_spec *c)
{
    tether_value *result = NULL;
    tether_error err = TETHER_ERROR_INIT;
    /* The core's synchronous path, whose waiting thread reads its own reply and runs
     * the peer's call-backs into this thread's services. Only the main thread receives
     * signals: there the core asks check_signals between slices of the wait. */
    signal_watch watch = {NULL, false};
    if (PyThread_get_thread_ident() == st->main_thread) {
        c->opts.interrupt = check_signals;
        c->opts.interrupt_userdata = &watch;
        c->opts.interrupt_interval_usec = SIGNAL_SLICE_USEC;
    }
    blocking_calls++;
    watch.save = PyEval_SaveThread();
    int r = target_call(t, c, &result, &err);
    PyEval_RestoreThread(watch.save);
    blocking_calls--;
    call_spec_done(c);
    PyObject *o;
    if (watch.raised) {
        o = NULL; /* KeyboardInterrupt or whatever the handler raised; the call is cancelled */
    } else if (r < 0) {
        o = tether_py_raise_error(st, r, &err, AT_CALL);
    } else {
        xfer x = {st, t->conn, t->context};
        o = tether_py_object_from_value(result, &x);
    }
    tether_value_unref(result);
    tether_error_done(&err);
    return o;
}

PyObject *
tether_py_call_target_async(module_state *st, call_target target, PyObject *args, PyObject *kwds)
{
    const call_target *t = &target;
    call_spec c;
    if (call_spec_parse(&c, st, t, args, kwds, "U|OOOOp:call_async", SPEC_ASYNC) < 0) {
        call_spec_done(&c);
        return NULL;
    }
    tether_future *future = NULL;
    int r = target_call_async(t, &c, &future);
    call_spec_done(&c);
    if (r < 0) {
        return raise_start_error(st, c.method, r);
    }
    return tether_py_future_new_object(st, future, c.method_obj, t->context);
}

PyObject *
tether_py_call_async(module_state *st, call_target target, PyObject *method, PyObject *args,
                     PyObject *kwargs, PyObject *timeout, PyObject *deadline)
{
    const call_target *t = &target;
    call_spec c;
    int r = connected(st, t,
                      call_spec_set(&c, st, t, method, args, kwargs ? kwargs : Py_None, timeout,
                                    deadline));
    tether_future *future = NULL;
    if (r == 0) {
        r = target_call_async(t, &c, &future);
        if (r < 0) {
            raise_start_error(st, c.method, r);
        }
    }
    call_spec_done(&c);
    return r < 0 ? NULL : tether_py_future_new_object(st, future, c.method_obj, t->context);
}

PyObject *
tether_py_call_target_notify(module_state *st, call_target target, PyObject *args, PyObject *kwds)
{
    const call_target *t = &target;
    call_spec c;
    if (call_spec_parse(&c, st, t, args, kwds, "U|OO:notify", SPEC_NOTIFY) < 0) {
        call_spec_done(&c);
        return NULL;
    }
    int r =
        c.as_values
            ? (t->obj ? tether_object_notify_values(t->obj, c.method, c.args_value, c.kwargs_value)
                      : tether_conn_notify_values(t->conn, c.method, c.args_value, c.kwargs_value))
        : t->obj ? tether_object_notify_msgpack(t->obj, c.method, &c.packed)
                 : tether_conn_notify_msgpack(t->conn, c.method, &c.packed);
    call_spec_done(&c);
    if (r < 0) {
        return raise_start_error(st, c.method, r);
    }
    Py_RETURN_NONE;
}

/* _in_blocking_call() -> bool: this thread waits in a blocking call; a service running
 * now was called back during it (so an event loop of this thread cannot run meanwhile). */
PyObject *
tether_py_module_in_blocking_call(PyObject *module, PyObject *unused)
{
    return PyBool_FromLong(blocking_calls > 0);
}
