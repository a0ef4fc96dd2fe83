/*
 * CompletionQueue: calls completed for one asyncio loop, behind one readable fd.
 *
 * An awaited call used to complete through the done-callback thread ("tether-callbacks"),
 * which took the GIL and called loop.call_soon_threadsafe: two thread hops and a write
 * to the loop's self-pipe per call. Here the core's completion callback, on the I/O
 * thread and without Python, appends the future to the queue and writes one byte to a
 * pipe only when the queue was empty; the loop reads the pipe (add_reader) and settles
 * every future queued by then in one turn. One wake-up of the loop per batch of
 * completions, and none of another Python thread. While the loop's own thread reads the
 * connection (serve="loop", hold()), what it completes is queued without the pipe, and
 * it settles those futures as soon as it has read (release(), then drain()).
 */
#define _GNU_SOURCE
#include "module.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct queue queue;

typedef struct node {
    queue *q;        /* a reference */
    PyObject *owner; /* the Future, a strong reference taken with the GIL */
    PyObject *waiter; /* the asyncio future that drain() settles, or NULL */
    struct node *next;
} node;

/* Shared by the Python object and every node still waiting for its call. */
struct queue {
    atomic_int refs;
    pthread_mutex_t lock;
    node *head, *tail; /* guarded by lock */
    bool raised;       /* guarded by lock: a byte is in the pipe */
    bool held;         /* guarded by lock: holder drains after it reads (hold()) */
    bool held_queued;  /* guarded by lock: holder queued some meanwhile */
    pthread_t holder;  /* guarded by lock, while held */
    int rfd, wfd;
};

static queue *
queue_ref(queue *q)
{
    atomic_fetch_add(&q->refs, 1);
    return q;
}

static void
queue_unref(queue *q)
{
    if (q && atomic_fetch_sub(&q->refs, 1) == 1) {
        close(q->rfd);
        close(q->wfd);
        pthread_mutex_destroy(&q->lock);
        free(q);
    }
}

/* The core's completion callback: on the thread that read the reply (the I/O thread,
 * a loop's own thread reading the connection, a synchronous caller), or the
 * registering thread. */
static void
on_ready(tether_future *future, void *userdata)
{
    (void)future;
    node *n = userdata;
    queue *q = n->q;
    pthread_mutex_lock(&q->lock);
    n->next = NULL;
    if (q->tail) {
        q->tail->next = n;
    } else {
        q->head = n;
    }
    q->tail = n;
    bool raise = !q->raised;
    if (q->held && pthread_equal(q->holder, pthread_self())) {
        raise = false; /* the loop's own thread, which drains once it has read */
        q->held_queued = true;
    }
    q->raised |= raise;
    pthread_mutex_unlock(&q->lock);
    if (raise) {
        char byte = 1;
        while (write(q->wfd, &byte, 1) < 0 && errno == EINTR) {
        }
    }
}

typedef struct {
    PyObject ob_base; /* PyObject_HEAD */
    queue *q;
} QueueObject;

static PyObject *
queue_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (!PyArg_ParseTuple(args, ":CompletionQueue") || (kwds && PyDict_Size(kwds) > 0)) {
        PyErr_SetString(PyExc_TypeError, "CompletionQueue() takes no arguments");
        return NULL;
    }
    queue *q = calloc(1, sizeof(*q));
    int fds[2];
    if (!q || pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        free(q);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    atomic_init(&q->refs, 1);
    pthread_mutex_init(&q->lock, NULL);
    q->rfd = fds[0];
    q->wfd = fds[1];
    QueueObject *self = (QueueObject *)PyType_GenericAlloc(type, 0);
    if (!self) {
        queue_unref(q);
        return NULL;
    }
    self->q = q;
    return (PyObject *)self;
}

/* Take the queued nodes and lower the pipe. GIL not needed. */
static node *
take_all(queue *q)
{
    pthread_mutex_lock(&q->lock);
    node *list = q->head;
    q->head = q->tail = NULL;
    if (q->raised) {
        char buf[64];
        while (read(q->rfd, buf, sizeof(buf)) > 0) {
        }
        q->raised = false;
    }
    pthread_mutex_unlock(&q->lock);
    return list;
}

static void
queue_dealloc(QueueObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    if (self->q) {
        /* What completed and was never drained: the futures go. Calls still running keep
         * the queue (their nodes hold it) and their futures until they complete. */
        for (node *n = take_all(self->q), *next; n; n = next) {
            next = n->next;
            Py_DECREF(n->owner);
            Py_XDECREF(n->waiter);
            queue_unref(n->q);
            free(n);
        }
        queue_unref(self->q);
    }
    freefunc free_fn = PyType_GetSlot(type, Py_tp_free);
    free_fn(self);
    Py_DECREF(type);
}

static PyObject *
queue_fileno(QueueObject *self, PyObject *unused)
{
    return PyLong_FromLong(self->q->rfd);
}

static PyObject *
queue_watch(QueueObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "watch(future, waiter=None)");
        return NULL;
    }
    PyObject *future = args[0];
    PyObject *waiter = nargs > 1 && args[1] != Py_None ? args[1] : NULL;
    tether_future *f = tether_py_future_claim_callback(future);
    if (!f) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_FALSE; /* it has done-callbacks of its own: the caller falls back */
    }
    node *n = malloc(sizeof(*n));
    if (!n) {
        tether_py_future_unclaim_callback(future);
        return PyErr_NoMemory();
    }
    n->q = queue_ref(self->q);
    n->owner = Py_NewRef(future);
    n->waiter = Py_XNewRef(waiter);
    n->next = NULL;
    int r = tether_future_set_callback(f, TETHER_CONTEXT_ANY, on_ready, n);
    if (r < 0) {
        tether_py_future_unclaim_callback(future);
        Py_DECREF(n->owner);
        Py_XDECREF(n->waiter);
        queue_unref(n->q);
        free(n);
        return tether_py_raise_error(tether_py_state_of_type(Py_TYPE(self)), r, NULL, AT_CALL);
    }
    Py_RETURN_TRUE;
}

static PyObject *
queue_drain(QueueObject *self, PyObject *unused)
{
    node *list = take_all(self->q);
    PyObject *done = PyList_New(0);
    for (node *n = list, *next; n; n = next) {
        next = n->next;
        if (n->waiter) {
            /* Settled here, without a Python frame per call; asyncio refusing is a bug
             * of ours that the loop's exception handler should hear of. */
            if (tether_py_future_settle(n->owner, n->waiter) < 0) {
                PyErr_WriteUnraisable(n->waiter);
            }
        } else if (done && PyList_Append(done, n->owner) < 0) {
            Py_CLEAR(done);
        }
        tether_py_future_fire_callbacks(n->owner);
        Py_DECREF(n->owner);
        Py_XDECREF(n->waiter);
        queue_unref(n->q);
        free(n);
    }
    return done;
}

static PyObject *
queue_hold(QueueObject *self, PyObject *unused)
{
    queue *q = self->q;
    pthread_mutex_lock(&q->lock);
    q->held = true;
    q->held_queued = false;
    q->holder = pthread_self();
    pthread_mutex_unlock(&q->lock);
    Py_RETURN_NONE;
}

static PyObject *
queue_release(QueueObject *self, PyObject *unused)
{
    queue *q = self->q;
    pthread_mutex_lock(&q->lock);
    bool queued = q->held && q->held_queued && pthread_equal(q->holder, pthread_self());
    q->held = q->held_queued = false;
    pthread_mutex_unlock(&q->lock);
    return PyBool_FromLong(queued);
}

static PyMethodDef queue_methods[] = {
    {"fileno", (PyCFunction)queue_fileno, METH_NOARGS,
     "fileno() -> int\n\nA descriptor readable while completed futures wait to be drained."},
    {"watch", (PyCFunction)(void (*)(void))queue_watch, METH_FASTCALL,
     "watch(future, waiter=None) -> bool\n\nQueue future here once its call completes (at "
     "once if it has); drain() settles waiter, an asyncio future, with its outcome. False "
     "if it has done-callbacks already: use add_done_callback then."},
    {"hold", (PyCFunction)queue_hold, METH_NOARGS,
     "hold()\n\nUntil release(), futures that this thread completes are queued without "
     "making the descriptor readable: it drains them itself."},
    {"release", (PyCFunction)queue_release, METH_NOARGS,
     "release() -> bool\n\nEnd hold(); True if this thread queued futures meanwhile "
     "(drain() them)."},
    {"drain", (PyCFunction)queue_drain, METH_NOARGS,
     "drain() -> list\n\nSettle the waiters of the futures completed since the last drain, "
     "in order, and return those watched without one; lowers the descriptor. "
     "Done-callbacks added to them meanwhile run here."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot queue_slots[] = {
    {Py_tp_doc, "Futures completed for one asyncio loop, behind a readable descriptor "
                "(tether._aio)."},
    {Py_tp_new, queue_new},
    {Py_tp_dealloc, queue_dealloc},
    {Py_tp_methods, queue_methods},
    {0, NULL},
};

PyType_Spec tether_py_completions_spec = {
    .name = "tether._tether.CompletionQueue",
    .basicsize = sizeof(QueueObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = queue_slots,
};
