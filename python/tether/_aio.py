"""asyncio integration: awaitable calls, services run as tasks, and loop errors sent to the
host's log.

- ``wrap_future(future)`` turns a tether.Future into an asyncio future of the running loop.
  The tether future's done-callback (on tether's callback thread) hands its outcome to the
  loop with call_soon_threadsafe, so nothing polls; cancelling the asyncio future cancels
  the call. ``await tether_future`` and ``conn.aio.NAME(...)`` go through it.
- ``coroutine_service(fn)`` is the deferred form of an ``async def`` service for the main-
  thread modes (serve="loop" and "manual"): it starts fn as a task of the loop running
  dispatch() and replies when the task is done, cancelling the task if the caller
  cancels the call (or fails at once when that loop is blocked in a call it is part of).
- ``LoopServer`` makes a loop call a connection's dispatch() whenever its fd is readable.
- ``hook_loop_errors(loop, conn)`` sends the errors the loop reports (an exception in a
  task nobody awaited, in a callback) to the host's log, then to the handler that was there.

Imported on first use, so that ``import tether`` does not import asyncio.
"""

import asyncio
import functools
import threading
import traceback
import weakref

from . import _tether

#: How long one dispatch() called by the loop may run queued services, in seconds: a burst
#: of host calls does not starve the loop's other work (the fd stays readable while work
#: remains, so the loop comes back to it).
DISPATCH_BUDGET = 0.01
#: Checks for a cancelled call of a running async service: first after this, in seconds,
#: then at doubling intervals up to CANCEL_POLL_MAX (the core reports cancellation only
#: by tether_request_is_cancelled).
CANCEL_POLL = 0.02
CANCEL_POLL_MAX = 0.25


def wrap_future(future, loop=None):
    """An asyncio future of loop (default: the running one) completing as the tether.Future
    future does; cancelling it cancels the call."""
    if loop is None:
        loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    waiter.add_done_callback(functools.partial(_cancel_call, future))
    future.add_done_callback(functools.partial(_call_done, loop, waiter))
    return waiter


def await_future(future):
    """tether.Future.__await__ (called by the C extension)."""
    return wrap_future(future).__await__()


def _cancel_call(future, waiter):
    if waiter.cancelled():
        future.cancel()


def _call_done(loop, waiter, future):
    # On tether's callback thread, or on the calling thread if the call had completed.
    try:
        loop.call_soon_threadsafe(_settle, waiter, future)
    except RuntimeError:  # the loop is closed: nobody can be waiting any more
        pass


def _settle(waiter, future):
    if waiter.done():  # cancelled meanwhile
        return
    try:
        waiter.set_result(future.result())
    except Exception as e:
        waiter.set_exception(e)


def call(conn, client, method, args, kwargs, timeout, deadline=None):
    """conn.aio.METHOD(*args, **kwargs): start the call, return an asyncio future.

    conn (may be None, once the Connection is gone) learns which loop it is used on.
    """
    loop = asyncio.get_running_loop()  # before the call starts: nobody could await it
    if conn is not None:
        conn._use_loop(loop)
    return wrap_future(client.call_async(method, args, kwargs, timeout, deadline), loop)


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
    """Has loop call client.dispatch() while client's fd is readable. Holds the client
    (not the Connection), so the fd stays open until the reader is removed."""

    def __init__(self, client, loop):
        self.client = client
        self.loop = loop
        self.thread = threading.get_ident()
        self.fd = client.fileno()
        loop.add_reader(self.fd, self._dispatch)

    def _dispatch(self):
        try:
            self.client.dispatch(DISPATCH_BUDGET)
        except BaseException:
            # Its causes last (wrong thread, forked) and the fd stays readable: report
            # the error once, not on every turn of the loop.
            self.loop.remove_reader(self.fd)
            raise

    def detach(self):
        """Remove the reader; from any thread (a finalizer may run on any)."""
        if self.loop.is_closed():  # its selector, and our reader with it, are gone
            return
        if threading.get_ident() == self.thread:
            self.loop.remove_reader(self.fd)
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.remove_reader, self.fd)
        except RuntimeError:  # closed meanwhile
            pass


# ---- loop errors to the host's log -------------------------------------------------------


class _ErrorForwarder:
    """A loop's exception handler: sends each error to the host's log of every hooked
    connection, then hands it on to the handler installed before (or the default one)."""

    def __init__(self, previous):
        self.previous = previous
        self.conns = weakref.WeakSet()

    def __call__(self, loop, context):
        text = None
        for conn in list(self.conns):
            if text is None:
                text = _describe(context)
            try:
                conn.log(3, text, logger="asyncio")
            except Exception:  # not connected, closed: the local report below still happens
                pass
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)


def _describe(context):
    """The text of a loop error: its message, the task or callback, the traceback."""
    lines = [context.get("message") or "Unhandled exception in event loop"]
    for key in ("task", "future", "handle"):
        if key in context:
            lines.append(f"{key}: {context[key]!r}")
    exc = context.get("exception")
    if exc is not None:
        lines.append("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return "\n".join(lines).rstrip().replace("\0", "\\0")


def hook_loop_errors(loop, conn):
    """Send the errors loop reports to conn's host log too (see _ErrorForwarder)."""
    handler = loop.get_exception_handler()
    if not isinstance(handler, _ErrorForwarder):
        handler = _ErrorForwarder(handler)
        loop.set_exception_handler(handler)
    handler.conns.add(conn)
