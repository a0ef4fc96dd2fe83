"""asyncio integration: awaitable calls, and services run as tasks.

- ``wrap_future(future)`` turns a tether.Future into an asyncio future of the running loop.
  The loop's CompletionQueue (_tether) receives the future on the I/O thread when its
  call completes and makes one descriptor readable per batch; the loop, watching it with
  add_reader, settles every future queued by then in one turn: nothing polls, and no
  other Python thread takes part. Cancelling the asyncio future cancels the call.
  ``await tether_future`` and ``conn.aio.NAME(...)`` go through it.
- ``AioCall`` is what ``conn.aio.NAME(...)`` returns: the call is under way, and asyncio
  takes the object as a coroutine (create_task, TaskGroup, gather...), see its docstring.
- ``aio_getattr``, ``aio_setattr``, ``aio_delattr``: a proxy's attributes from asyncio,
  each an AioCall of the operation a proxy sends for ``proxy.name`` (tether.aio_getattr...).
- ``coroutine_service(fn)`` is the deferred form of an ``async def`` service for the main-
  thread modes (serve="loop" and "manual"): it starts fn as a task of the loop running
  dispatch() and replies when the task is done, cancelling the task if the caller
  cancels the call (or fails at once when that loop is blocked in a call it is part of).
- ``LoopServer`` makes a loop call a connection's dispatch() whenever its fd is readable.

The errors a loop reports reach the host's log through tether._loop_errors.

Imported on first use, so that ``import tether`` does not import asyncio.
"""

import asyncio
import collections.abc
import functools
import os
import threading
import weakref

from . import _tether
from ._proxy import Proxy, _ref

#: How long one dispatch() called by the loop may run queued services, in seconds: a burst
#: of host calls does not starve the loop's other work (the fd stays readable while work
#: remains, so the loop comes back to it).
DISPATCH_BUDGET = 0.01
# How long a loop leaves the reading of its connection to other threads' calls after one
# of them took it over (LoopServer), before it takes it back.
READ_RETRY = 0.02
#: Checks for a cancelled call of a running async service: first after this, in seconds,
#: then at doubling intervals up to CANCEL_POLL_MAX (the core reports cancellation only
#: by tether_request_is_cancelled).
CANCEL_POLL = 0.02
CANCEL_POLL_MAX = 0.25


class _Completions:
    """The calls a loop awaits: a CompletionQueue it reads, and the asyncio future waiting
    for each tether.Future queued there."""

    def __init__(self, loop):
        self.queue = _tether.CompletionQueue()  # settles each waiter it was given (watch)
        self.loop = loop
        # Clients whose batch calls this loop writes at the end of the turn that made them.
        self.to_flush = []
        loop.add_reader(self.queue.fileno(), self.drain)

    def batch(self, client):
        """Have the calls client starts in this turn of the loop written together, once
        the turn's other callbacks have run: a gather of many calls is a few writes, and
        the I/O thread is not woken to write each one."""
        if not self.to_flush:
            self.loop.call_soon(self.flush)
        if client not in self.to_flush:
            self.to_flush.append(client)

    def flush(self):
        clients, self.to_flush = self.to_flush, []
        for client in clients:
            client.flush()

    def drain(self):
        self.queue.drain()


#: One per loop, gone with it (a loop that cannot watch a descriptor gets None).
_completions = weakref.WeakKeyDictionary()


def _completions_of(loop):
    try:
        return _completions[loop]
    except KeyError:
        pass
    except TypeError:
        return None  # a loop that cannot be weakly referenced: done-callbacks instead
    try:
        completions = _Completions(loop)
    except (NotImplementedError, AttributeError, TypeError):
        completions = None  # no add_reader on this loop: done-callbacks instead
    _completions[loop] = completions
    return completions


_UNKNOWN = object()


def wrap_future(future, loop=None, completions=_UNKNOWN):
    """An asyncio future of loop (default: the running one) completing as the tether.Future
    future does; cancelling it cancels the call. completions: the loop's, when the caller
    looked them up already."""
    if loop is None:
        loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    waiter.add_done_callback(future._waiter_done)  # a cancelled waiter cancels the call
    if completions is _UNKNOWN:
        completions = _completions_of(loop)
    if completions is None or not completions.queue.watch(future, waiter):
        # Awaited twice, or with done-callbacks of its own: through the callback thread.
        future.add_done_callback(functools.partial(_call_done, loop, waiter))
    return waiter


def await_future(future):
    """tether.Future.__await__ (called by the C extension)."""
    return wrap_future(future).__await__()


def _call_done(loop, waiter, future):
    # On tether's callback thread, or on the calling thread if the call had completed.
    try:
        loop.call_soon_threadsafe(_settle, waiter, future)
    except RuntimeError:  # the loop is closed: nobody can be waiting any more
        pass


def _settle(waiter, future):
    if waiter.done():  # cancelled meanwhile
        return
    # exception() hands the call's exception over without raising it here: raised, its
    # traceback would hold this frame, which holds the waiter, which holds the exception,
    # and a task failing with it would be reported (never retrieved) only by the garbage
    # collector, not as soon as it is dropped.
    try:
        exc = future.exception()
        result = future.result() if exc is None else None
    except Exception as e:  # the outcome cannot be decoded
        exc, result = e, None
    if exc is None:
        waiter.set_result(result)
    else:
        waiter.set_exception(exc)


class AioCall:
    """A call made with ``conn.aio.NAME(...)``: it is under way already, and awaiting this
    object gives its result (or raises its exception).

    asyncio takes it wherever it takes a coroutine or a future: ``asyncio.create_task``, a
    TaskGroup's ``create_task``, ``ensure_future``, ``gather``, ``wait_for``, ``shield``,
    ``as_completed`` (there, as a future, with no task of its own); ``asyncio.wait``
    refuses coroutines, so it takes their tasks. Unlike a
    coroutine it has started before anything awaits it, may be awaited more than once,
    and is not reported if nobody awaits it. Cancelling what awaits it (a task, wait_for
    timing out, a TaskGroup failing) cancels the call, and so does ``cancel()``.
    """

    __slots__ = ("_waiter", "_name")

    # A future to asyncio too (asyncio.isfuture): ensure_future, and so gather, wait_for,
    # shield and as_completed, take it as it is instead of wrapping it in a task per call
    # (in a gather, that task cost more than the call). What else of a future they read
    # is the waiter's (__getattr__).
    _asyncio_future_blocking = False

    def __init__(self, waiter, name):
        self._waiter = waiter  # an asyncio future of the calling loop (wrap_future)
        self._name = name

    # asyncio's repr of a task shows this as the coroutine's name: "add()".
    @property
    def __name__(self):
        return self._name

    def __await__(self):
        return self._waiter.__await__()

    # The coroutine protocol, as a task drives it: yield the waiter until it is done (the
    # task sleeps on it, as on any future awaited inside a coroutine), then stop with its
    # result.
    def send(self, value):
        """Coroutine protocol: the waiter while the call runs, then StopIteration(result)."""
        waiter = self._waiter
        if not waiter.done():
            waiter._asyncio_future_blocking = True
            return waiter
        try:
            result = waiter.result()  # raises the call's exception
        finally:
            self = waiter = None  # as in throw()
        raise StopIteration(result)

    def throw(self, typ, val=None, tb=None):
        """Coroutine protocol: the awaiter gives up on the call with this exception (a
        task being cancelled, or the call's own exception): cancel the call if it still
        runs, and raise it."""
        if val is None:
            val = typ if isinstance(typ, BaseException) else typ()
        elif not isinstance(val, BaseException):
            val = typ(val)
        if tb is not None:
            val = val.with_traceback(tb)
        self._waiter.cancel()
        try:
            raise val
        finally:
            # The traceback holds this frame: no cycle through it back to the exception
            # (as asyncio's own Task.__step does).
            self = val = typ = tb = None

    def close(self):
        """Coroutine protocol: it will not be awaited; cancel the call if it still runs."""
        self._waiter.cancel()

    def done(self):
        """True once the call has completed (or was cancelled)."""
        return self._waiter.done()

    def cancelled(self):
        """True if the call was cancelled."""
        return self._waiter.cancelled()

    def cancel(self, msg=None):
        """Cancel the call (the host is told). False if it had completed already."""
        return self._waiter.cancel(msg)

    def result(self):
        """The call's result; raises its exception, or asyncio.InvalidStateError if it
        has not completed."""
        return self._waiter.result()

    def exception(self):
        """The call's exception (None if it succeeded), as result() does."""
        return self._waiter.exception()

    def add_done_callback(self, fn, *, context=None):
        """Future protocol: fn(self) once the call completes."""
        self._waiter.add_done_callback(_DoneCallback(self, fn), context=context)

    def remove_done_callback(self, fn):
        """Future protocol: remove every fn added; returns how many."""
        return self._waiter.remove_done_callback(_DoneCallback(self, fn))

    def get_loop(self):
        """Future protocol: the loop the call was made on."""
        return self._waiter.get_loop()

    def __getattr__(self, name):
        # What asyncio's own code reads of a future it holds (_cancel_message in gather,
        # _loop, ...), across Python versions: the waiter's.
        return getattr(self._waiter, name)

    def __repr__(self):
        waiter = self._waiter
        state = (
            "pending" if not waiter.done()
            else "cancelled" if waiter.cancelled()
            else "failed" if waiter.exception() is not None
            else "finished"
        )
        return f"<tether.AioCall {self._name!r} {state}>"


collections.abc.Coroutine.register(AioCall)


class _DoneCallback:
    """fn(call) for the waiter's callbacks: asyncio finds its futures by identity (as_completed
    removes the one a callback names from its set). Equal when call and fn are, as
    remove_done_callback compares them."""

    __slots__ = ("call", "fn")

    def __init__(self, call, fn):
        self.call = call
        self.fn = fn

    def __call__(self, waiter):
        self.fn(self.call)

    def __eq__(self, other):
        return isinstance(other, _DoneCallback) and other.call is self.call and other.fn == self.fn

    __hash__ = None


def call(conn, client, method, args, kwargs, timeout, deadline=None):
    """conn.aio.METHOD(*args, **kwargs): start the call, return its AioCall.

    conn (may be None, once the Connection is gone) learns which loop it is used on.
    """
    loop = asyncio.get_running_loop()  # before the call starts: nobody could await it
    if conn is not None and conn._loop is not loop:
        conn._use_loop(loop)
    completions = _completions_of(loop)
    if completions is None or type(client) is not _tether.Client:
        future = client.call_async(method, args, kwargs, timeout, deadline)
        return AioCall(wrap_future(future, loop, completions), method)
    # wrap_future's work, inline: this runs once per call of a gather of thousands.
    future = client.call_async(method, args, kwargs, timeout, deadline, True)
    if client not in completions.to_flush:
        completions.batch(client)
    waiter = loop.create_future()
    waiter.add_done_callback(future._waiter_done)
    if not completions.queue.watch(future, waiter):
        future.add_done_callback(functools.partial(_call_done, loop, waiter))
    return AioCall(waiter, method)


# ---- attributes of proxies ---------------------------------------------------------------


def aio_getattr(proxy, name):
    """``await tether.aio_getattr(proxy, "name")``: the attribute's value, as ``proxy.name``
    reads a plain attribute, without blocking the loop: returns the call's AioCall.

    It always asks the owner (one round trip), even for a method's name, which a Python
    owner answers with the bound method by reference; call methods with
    ``await tether.aio(proxy.method)(...)``.
    """
    return call(None, _attribute_ref("aio_getattr", proxy, name), "__getattr__", (name,), None,
                None)


def aio_setattr(proxy, name, value):
    """``await tether.aio_setattr(proxy, "name", value)``: ``proxy.name = value`` without
    blocking the loop; returns the call's AioCall (its result is None)."""
    return call(None, _attribute_ref("aio_setattr", proxy, name), "__setattr__", (name, value),
                None, None)


def aio_delattr(proxy, name):
    """``await tether.aio_delattr(proxy, "name")``: ``del proxy.name`` without blocking the
    loop; returns the call's AioCall (its result is None)."""
    return call(None, _attribute_ref("aio_delattr", proxy, name), "__delattr__", (name,), None,
                None)


def _attribute_ref(function, proxy, name):
    """The reference behind proxy, once proxy and name are fit for an attribute call."""
    if not isinstance(proxy, Proxy):
        raise TypeError(f"tether.{function} expects a tether.Proxy, not {type(proxy).__name__!r}")
    if not isinstance(name, str):
        raise TypeError(f"attribute name must be str, not {type(name).__name__!r}")
    if name.startswith("_"):  # as the proxy itself refuses them, before anything is sent
        raise AttributeError(
            f"{name!r}: names starting with an underscore are not reachable through a proxy"
        )
    return _ref(proxy)


# ---- services on the loop -------------------------------------------------------------


def coroutine_service(fn):
    """The deferred service (Client.add_service(..., deferred=True)) running the coroutine
    function fn: as a task of the loop running this thread's dispatch(), replying when it
    is done; without a running loop (serve="manual"), to completion in a new one."""

    @functools.wraps(fn)
    def start(reply, *args, **kwargs):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            reply.set_result(asyncio.run(fn(*args, **kwargs)))
            return
        if _tether._in_blocking_call():
            # A call-back of a blocking call made on the loop's thread: a task would wait
            # for the loop, which waits for that call, which waits for this reply.
            raise RuntimeError(
                f"the async service {fn.__name__!r} was called back during a blocking call "
                "on its event loop's thread; make that call with 'await conn.aio.NAME(...)'"
            )
        task = loop.create_task(fn(*args, **kwargs))
        task.add_done_callback(functools.partial(_reply_from_task, reply))
        loop.call_later(CANCEL_POLL, _watch_cancel, loop, reply, task, CANCEL_POLL)

    return start


def _reply_from_task(reply, task):
    if reply.done():
        return
    if task.cancelled():
        reply.set_exception(asyncio.CancelledError("the service's task was cancelled"))
    elif task.exception() is not None:
        reply.set_exception(task.exception())
    else:
        reply.set_result(task.result())


def _watch_cancel(loop, reply, task, delay):
    if task.done():
        return
    if reply.cancelled():
        task.cancel()
        return
    delay = min(delay * 2, CANCEL_POLL_MAX)
    loop.call_later(delay, _watch_cancel, loop, reply, task, delay)


class LoopServer:
    """Serves client's main-thread work on loop. While the loop is idle its thread reads
    the connection itself (client.read_begin: the loop watches the socket), so a call of
    one of our services wakes this thread alone; the client's queue fd (dispatch()) is
    watched as well, for work the I/O thread reads while another thread holds the
    reading. Holds the client (not the Connection), so the fds stay open until the
    readers are removed."""

    def __init__(self, client, loop):
        self.client = client
        self.loop = loop
        self.thread = threading.get_ident()
        self.fd = client.fileno()
        self.sock = -1  # our dup of the connection's socket, while this thread reads it
        self.sock_key = None
        self.retry = None
        loop.add_reader(self.fd, self._dispatch)
        self._read_begin()

    def _dispatch(self):
        try:
            self.client.dispatch(DISPATCH_BUDGET)
        except BaseException:
            # Its causes last (wrong thread, forked) and the fd stays readable: report
            # the error once, not on every turn of the loop.
            self._stop()
            raise
        if self.sock < 0 and self.retry is None:
            self._read_begin()

    def _read_begin(self):
        self.retry = None
        fd, key = self.client.read_begin()
        if fd < 0:  # another thread reads now, or no connection: the queue's fd serves
            self._unwatch()
        elif key != self.sock_key:  # first, or a new connection
            self._unwatch()
            self.sock = os.dup(fd)
            self.sock_key = key
            self.loop.add_reader(self.sock, self._read)

    def _read(self):
        # The answers this thread reads settle their awaiting futures here and now, not
        # at the loop's next turn through the completion queue's descriptor.
        try:
            completions = _completions.get(self.loop)  # none yet: no aio call awaits here
        except TypeError:
            completions = None
        if completions is not None:
            completions.queue.hold()
        try:
            reading = self.client.read_ready(DISPATCH_BUDGET)
        except BaseException:
            self._stop()
            raise
        finally:
            if completions is not None and completions.queue.release():
                completions.drain()
        if not reading:
            # Another thread's call took the reading, or the connection went: leave it
            # to callers a while rather than take it back after each of their calls.
            self._unwatch()
            self.retry = self.loop.call_later(READ_RETRY, self._read_begin)

    def _unwatch(self):
        if self.sock >= 0:
            self.loop.remove_reader(self.sock)
            os.close(self.sock)
            self.sock, self.sock_key = -1, None

    def _stop(self):
        """Remove the readers and give the reading back; on the loop's thread."""
        self.loop.remove_reader(self.fd)
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        self._unwatch()
        try:
            self.client.read_end()
        except Exception:  # forked, or another thread: the connection is not ours to read
            pass

    def detach(self):
        """Remove the readers; from any thread (a finalizer may run on any)."""
        if self.loop.is_closed():  # its selector, and our readers with it, are gone
            if self.sock >= 0:
                os.close(self.sock)
                self.sock = -1
            return
        if threading.get_ident() == self.thread:
            self._stop()
            return
        try:
            self.loop.call_soon_threadsafe(self._stop)
        except RuntimeError:  # closed meanwhile
            pass
