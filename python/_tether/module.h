/*
 * The internal header of tether._tether: what its files share. Only the files of this
 * folder include it.
 *
 * It holds the module state, the structures that cross files, and the functions one file
 * provides to the others, grouped by the file that defines them. Those functions are
 * named tether_py_*; everything else in the folder is static. module.c's top comment maps
 * the files; each file's own top comment explains its part.
 */
#ifndef TETHER_PY_MODULE_H
#define TETHER_PY_MODULE_H

/* The stable ABI from 3.10 on (one .abi3.so for every later CPython). Every file includes
 * this header first, so the limit is set before Python.h everywhere (buffer.c sets a
 * later one first, and says why). */
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030a0000
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <tether.h>

/* How long a blocking wait on the main thread sleeps between checks for signals. */
#define SIGNAL_SLICE_USEC 50000

/* ---- module.c: the module state ------------------------------------------------------ */

typedef struct hub hub;

/* The module's definition: what tells a type of this module from another's. */
extern struct PyModuleDef tether_py_module_def;

typedef struct {
    PyTypeObject *client_type;
    PyTypeObject *future_type;
    PyTypeObject *reply_type;
    PyTypeObject *ref_type;
    PyTypeObject *host_type;
    PyTypeObject *child_type;
    PyTypeObject *completions_type;
    PyTypeObject *method_type;
    PyObject *proxy_parts[4]; /* from tether._proxy, on first use: see proxy_part */
    PyObject *exports;        /* id(obj) -> address of the tether_object exported for obj */
    PyObject *classes;        /* (context, type name) -> capsule of its tether_class */
    PyObject *TetherError;
    PyObject *RemoteError;
    PyObject *NotConnectedError;
    PyObject *NoSuchServiceError;
    PyObject *CancelledError;
    hub *hub;
    unsigned long main_thread;
    bool runner_started; /* guarded by the GIL */
} module_state;

static inline module_state *
tether_py_state_of_module(PyObject *module)
{
    return PyModule_GetState(module);
}

static inline module_state *
tether_py_state_of_type(PyTypeObject *type)
{
    return PyType_GetModuleState(type);
}

/* ---- util.c: conversions every file uses --------------------------------------------- */

PyObject *tether_py_text_or_none(const char *s);
int tether_py_usec_from_seconds(PyObject *o, uint64_t none_usec, const char *what, uint64_t *ret);

/* ---- codec.c: Python objects to msgpack and back ------------------------------------- */

/*
 * Where a value goes to or comes from, for the objects in it that travel by reference
 * (see object.c). An xfer with no module state allows plain data only.
 */
typedef struct {
    module_state *st;
    tether_conn *conn;      /* packing: a connection of the client that owns new exports */
    tether_context context; /* where methods of new exports run (MAIN or POOL), and what
                             * proxies made while unpacking use for their own calls */
} xfer;

/* The encoder's output; object.c writes the REF exts of objects sent by reference. */
typedef struct {
    uint8_t *data;
    size_t len, cap;
    uint8_t small[256]; /* most arguments fit: no allocation */
    const xfer *x;
    tether_object **objs; /* references, in the order their REFs were written */
    size_t nobjs, capobjs;
    tether_buffer **bufs; /* buffers (buffer.c), in the order their BUFFERs were written */
    size_t nbufs, capbufs;
} packbuf;

void tether_py_pb_init(packbuf *b, const xfer *x);
void tether_py_pb_done(packbuf *b);
int tether_py_pb_put(packbuf *b, const void *p, size_t n);
int tether_py_pb_tag(packbuf *b, uint8_t tag, uint64_t v, int n);
int tether_py_pb_header(packbuf *b, uint8_t fix, size_t fix_max, uint8_t tag8, uint8_t tag16,
                        size_t n);
PyObject *tether_py_type_display_name(PyTypeObject *type);
tether_value *tether_py_value_from_object(PyObject *o, int depth, const xfer *x);
int tether_py_values_from_args(PyObject *args, PyObject *kwargs, const xfer *x,
                               tether_value **ret_args, tether_value **ret_kwargs);
int tether_py_pack_args(PyObject *args, PyObject *kwargs, packbuf *ret_args, packbuf *ret_kwargs);
tether_msgpack_args tether_py_msgpack_args(const packbuf *args, const packbuf *kwargs);
/* b's bytes, objects and buffers as a value; what names it in the ValueError raised on
 * failure (-1). */
int tether_py_value_of_packbuf(const packbuf *b, const char *what, tether_value **ret);
/* Packed arguments as values (NULL for none), for a call whose arguments hold buffers,
 * which tether_msgpack_args cannot carry. */
int tether_py_values_of_packbufs(const packbuf *args, const packbuf *kwargs,
                                 tether_value **ret_args, tether_value **ret_kwargs);
PyObject *tether_py_object_from_value(tether_value *v, const xfer *x);
PyObject *tether_py_module_pack(PyObject *module, PyObject *obj);
PyObject *tether_py_module_unpack(PyObject *module, PyObject *data);
PyObject *tether_py_module_type_name(PyObject *module, PyObject *obj);

/* ---- buffer.c: big bytes and arrays through shared memory ---------------------------- */

/* bytes p[0..n) as a BUFFER when n is at least the threshold: 1 when written, 0 when the
 * caller writes a bin instead (small, or no shared memory here), -1 with an exception. */
int tether_py_pack_bytes_buffer(packbuf *b, const void *p, size_t n);
/* A memoryview or any other object with the buffer protocol (an array: its format and
 * shape go with it): 1 when written, 0 when o has no buffer protocol, -1. */
int tether_py_pack_buffer_object(packbuf *b, PyObject *o);
/* What a received buffer is in Python; payload is its BUFFER's [size, ...] unpacked. */
PyObject *tether_py_buffer_value(tether_buffer *b, PyObject *payload);
PyObject *tether_py_module_set_buffer_threshold(PyObject *module, PyObject *arg);
PyObject *tether_py_module_buffer_threshold(PyObject *module, PyObject *unused);
PyObject *tether_py_module_shared_memory(PyObject *module, PyObject *size);

/* ---- errors.c: negative codes and remote failures to exceptions ---------------------- */

/* Where a failure happened: a few codes mean different things at connect. */
enum {
    AT_CALL = 0,
    AT_CONNECT = 1
};

PyObject *tether_py_error_object(module_state *st, int code, const tether_error *err, int where);
PyObject *tether_py_raise_error(module_state *st, int code, const tether_error *err, int where);
int tether_py_add_exceptions(PyObject *module, module_state *st);
PyObject *tether_py_module_error(PyObject *module, PyObject *args, PyObject *kwds);
PyObject *tether_py_module_strerror(PyObject *module, PyObject *arg);

/* ---- future.c: Future, and the thread that runs its done-callbacks ------------------- */

extern PyType_Spec tether_py_future_spec;
/* For completions.c: take the future's one core callback for a CompletionQueue (NULL,
 * without an exception, if its Python done-callbacks have it), give it back if that
 * failed, and run the done-callbacks added since, once the queue drains it. */
tether_future *tether_py_future_claim_callback(PyObject *future);
void tether_py_future_unclaim_callback(PyObject *future);
void tether_py_future_fire_callbacks(PyObject *future);
/* For completions.c: settle waiter, an asyncio future, with the outcome of the ready
 * future (set_result or set_exception), unless it is done already (cancelled). Returns
 * 0, or -1 with an exception set when asyncio refused. */
int tether_py_future_settle(PyObject *future, PyObject *waiter);

/* ---- completions.c: futures completed for an asyncio loop ---------------------------- */

extern PyType_Spec tether_py_completions_spec;

hub *tether_py_hub_new(void);
void tether_py_hub_unref(hub *h);
void tether_py_hub_stop(hub *h);
PyObject *tether_py_future_new_object(module_state *st, tether_future *future, PyObject *method,
                                      tether_context context);
PyObject *tether_py_module_run_callbacks(PyObject *module, PyObject *unused);

/* ---- service.c: services exposed by Python, and Reply -------------------------------- */

/*
 * One registered service. The core's handler gets a handle (slot index and generation),
 * never this pointer; handlers look the record up under svc_lock and hold a reference
 * while they run. The callable is read and cleared only with the GIL held.
 */
typedef struct service_rec {
    unsigned refs;          /* guarded by svc_lock */
    PyObject *callable;     /* guarded by the GIL; NULL once the Client let go */
    PyTypeObject *deferred; /* guarded by the GIL: the Reply type for a deferred service */
    uint32_t slot;
    module_state *st;       /* lives until interpreter exit, which stops handlers first */
    tether_context context; /* where it runs: MAIN or POOL */
} service_rec;

extern PyType_Spec tether_py_reply_spec;

uintptr_t tether_py_svc_register(service_rec *rec);
void tether_py_svc_unregister(service_rec *rec);
PyGILState_STATE tether_py_gil_ensure(void);
bool tether_py_svc_enter(void);
void tether_py_svc_leave(void);
void tether_py_svc_shutdown(void);
void tether_py_reply_exception(tether_request *req, PyObject *callable);
void tether_py_serve_request(tether_request *req, PyObject *callable, PyTypeObject *deferred,
                             PyObject *const *lead, size_t nlead, const xfer *x);
int tether_py_service_handler(tether_request *req, void *userdata);

/* ---- object.c: objects by reference, and Ref ----------------------------------------- */

extern PyType_Spec tether_py_ref_spec;

int tether_py_pack_reference(packbuf *b, PyObject *o);
PyObject *tether_py_ref_new(module_state *st, tether_object *obj, tether_context context);
PyObject *tether_py_object_of_reference(const xfer *x, tether_object *obj);

/* ---- call.c: calls of the peer's services and of its objects' methods ---------------- */

/* Where a call goes: a service of the peer over conn (obj NULL), or a method of the
 * peer's object obj (on its connection conn). */
typedef struct {
    tether_conn *conn;
    tether_object *obj;
    tether_context context; /* of the caller: for objects sent and proxies received */
} call_target;

PyObject *tether_py_call_target_sync(module_state *st, call_target target, PyObject *args,
                                     PyObject *kwds);
/* A synchronous call of method with the arguments of a Python call (args a tuple, kwargs
 * a dict or NULL); timeout and deadline as Client.call takes them. */
PyObject *tether_py_call_sync(module_state *st, call_target target, PyObject *method,
                              PyObject *args, PyObject *kwargs, PyObject *timeout,
                              PyObject *deadline);
PyObject *tether_py_call_target_async(module_state *st, call_target target, PyObject *args,
                                      PyObject *kwds);
/* The same as tether_py_call_sync, started asynchronously: a tether.Future. */
PyObject *tether_py_call_async(module_state *st, call_target target, PyObject *method,
                               PyObject *args, PyObject *kwargs, PyObject *timeout,
                               PyObject *deadline);
PyObject *tether_py_call_target_notify(module_state *st, call_target target, PyObject *args,
                                       PyObject *kwds);
PyObject *tether_py_module_in_blocking_call(PyObject *module, PyObject *unused);

/* ---- method.c: Method, the C core of tether.RemoteMethod ------------------------------ */

extern PyType_Spec tether_py_method_spec;

/* Where a call through ref (a Ref) goes. */
call_target tether_py_ref_target(PyObject *ref);

/* ---- client.c: Client ---------------------------------------------------------------- */

extern PyType_Spec tether_py_client_spec;

/* Where a call through client (a Client) goes. */
call_target tether_py_client_target(PyObject *client);

/* ---- spawn.c: Host and Child, and the spawned child's process settings --------------- */

extern PyType_Spec tether_py_host_spec;
extern PyType_Spec tether_py_child_spec;

PyObject *tether_py_module_set_parent_death_signal(PyObject *module, PyObject *arg);
PyObject *tether_py_module_set_process_name(PyObject *module, PyObject *arg);

#endif
