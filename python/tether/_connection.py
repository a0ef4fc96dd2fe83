"""Connections to a host: tether.connect(), Connection, and the call namespaces.

A Connection wraps one tether._tether.Client. Its four namespaces turn attribute access
into remote methods:

    conn.root.NAME(*args, **kwargs)     call the host's service NAME, wait for the result
    conn.async_.NAME(*args, **kwargs)   the same call, returning a tether.Future at once
    conn.aio.NAME(*args, **kwargs)      the same call, returning a tether.AioCall to await
    conn.notify.NAME(*args, **kwargs)   send a notification: no result, no error

Names that are not identifiers are reached by item: ``conn.root["ns.method"](1)``.
Every method object is safe to use from any thread.
"""

import _thread  # not threading, which a spawned child would import for this alone
import atexit
import functools
import os
import sys

from . import _tether, _weak

__all__ = [
    "AioRemoteMethod",
    "AsyncRemoteMethod",
    "Connection",
    "NotifyMethod",
    "RemoteMethod",
    "aio",
    "async_",
    "connect",
    "connect_async",
]

#: Where services run: on tether's worker threads, or inside dispatch() on the thread that
#: made the connection, called by an asyncio loop or by the application.
SERVE_MODES = ("thread", "loop", "manual")


class RemoteMethod(_tether.Method):
    """A host service called synchronously: ``m(*args, **kwargs)`` returns its result.

    Made by ``conn.root.NAME`` (or a proxy's method). ``with_timeout(seconds)`` gives the
    same method with its own silence timeout instead of the connection's;
    ``with_deadline(seconds)`` one whose every call must end within that time, however
    alive the peer keeps it (a peer that is busy, or stuck, keeps a call alive).

    ``RemoteMethod(client, name, timeout=None, deadline=None)``; the call itself is
    tether._tether.Method's, in C: the hot path of every script.
    """

    __slots__ = ("__weakref__",)

    @property
    def name(self):
        """The service name."""
        return self._name

    def with_timeout(self, timeout):
        """The same method, timing out after timeout seconds of silence from the host."""
        return type(self)(self._client, self._name, timeout, self._deadline)

    def with_deadline(self, seconds):
        """The same method, each call failing with TimeoutError (and cancelled) if it has
        not completed within seconds."""
        return type(self)(self._client, self._name, self._timeout, seconds)

    def __repr__(self):
        return f"<tether.{type(self).__name__} {self._name!r}>"


class AsyncRemoteMethod(RemoteMethod):
    """A host service called asynchronously: ``m(*args, **kwargs)`` returns a tether.Future."""

    __slots__ = ()
    _tether_async = True  # the call is tether._tether.Method's, started asynchronously


class AioRemoteMethod(RemoteMethod):
    """A host service called from asyncio: ``m(*args, **kwargs)`` starts the call and returns
    a tether.AioCall (await it, or make it a task; cancelling it cancels the call)."""

    __slots__ = ()

    def __call__(self, *args, **kwargs):
        aio = _aio or _import_aio()
        conn = _connections.get(id(self._client))
        return aio.call(conn, self._client, self._name, args, kwargs, self._timeout,
                        self._deadline)


# tether._aio once an aio method was called: imported then (it imports asyncio), and kept
# here so that each call does not pay an import statement.
_aio = None


def _import_aio():
    global _aio
    from . import _aio as module

    _aio = module
    return module


class NotifyMethod(RemoteMethod):
    """A host service sent a notification: ``m(*args, **kwargs)`` returns None at once."""

    __slots__ = ()

    def __call__(self, *args, **kwargs):
        self._client.notify(self._name, args, kwargs)


def async_(method):
    """The asynchronous form of a remote method, as RPyC spells it.

    ``tether.async_(host.root.spawn_actor)("Bob")`` returns a tether.Future, like
    ``host.async_.spawn_actor("Bob")``.
    """
    if isinstance(method, AsyncRemoteMethod):
        return method
    if isinstance(method, RemoteMethod) and not isinstance(method, NotifyMethod):
        return AsyncRemoteMethod(method._client, method._name, method._timeout, method._deadline)
    raise TypeError(
        f"tether.async_ expects a remote method such as host.root.NAME, got {type(method).__name__!r}"
    )


def aio(method):
    """The asyncio form of a remote method.

    ``await tether.aio(host.root.spawn_actor)("Bob")``, like
    ``await host.aio.spawn_actor("Bob")``.
    """
    if isinstance(method, AioRemoteMethod):
        return method
    if isinstance(method, RemoteMethod) and not isinstance(method, NotifyMethod):
        return AioRemoteMethod(method._client, method._name, method._timeout, method._deadline)
    raise TypeError(
        f"tether.aio expects a remote method such as host.root.NAME, got {type(method).__name__!r}"
    )


class _Namespace:
    """Attribute access to remote methods of one kind (see the module docstring)."""

    __slots__ = ("_client", "_kind", "_methods")

    def __init__(self, client, kind):
        self._client = client
        self._kind = kind
        self._methods = {}

    def __getitem__(self, name):
        if not isinstance(name, str):
            raise TypeError(f"service names are str, not {type(name).__name__!r}")
        method = self._methods.get(name)
        if method is None:
            method = self._methods.setdefault(name, self._kind(self._client, name))
        return method

    def __getattr__(self, name):
        # Dunder lookups (copy, pickle, inspect) are not services.
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self[name]

    def __dir__(self):
        return sorted(self._methods)

    def __repr__(self):
        return f"<tether namespace of {self._kind.__name__} on {self._client!r}>"


def _wrap_coroutine_function(fn):
    """A sync callable running the coroutine function fn to completion in a new event loop,
    for serve="thread": a worker thread has no event loop."""
    import asyncio

    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return run


class Connection:
    """A connection to a host, made by tether.connect().

    Attributes: ``root``, ``async_``, ``aio`` and ``notify`` (the call namespaces),
    ``name`` (this client's name), ``registered_name``, ``host_name``, ``serve``. A Connection is a context
    manager that closes it.
    """

    def __init__(self, client, serve="thread"):
        self._client = client
        self._closed = False
        self._serve = serve
        # Objects this script hands out serve where its services do.
        client.serve_main = serve != "thread"
        # The thread that made the client: the core dispatches main-thread work only there.
        self._thread = _thread.get_ident()
        self._loop = None  # the last loop _use_loop saw
        self._server = None  # _aio.LoopServer, while attached to a loop
        self._detach = None  # weakref.finalize detaching _server, also if self is dropped
        self.root = _Namespace(client, RemoteMethod)
        self.async_ = _Namespace(client, AsyncRemoteMethod)
        self.aio = _Namespace(client, AioRemoteMethod)
        self.notify = _Namespace(client, NotifyMethod)
        # LogHandlers made for this connection that report service exceptions.
        self._log_handlers = _weak.WeakMembers()
        _connections[id(client)] = self

    @property
    def name(self):
        """The name this client asked the host for (see registered_name)."""
        return self._client.name

    @property
    def registered_name(self):
        """The name the host lists this client under: ``name``, or ``name#2``,
        ``name#3``... when another client of the host already had that name. The host's
        services (``tether.call_client``, ``tether reset NAME``) know it by this name."""
        return self._client.registered_name

    @property
    def host_name(self):
        """The host's name from its handshake."""
        return self._client.host_name

    @property
    def closed(self):
        """True once close() was called."""
        return self._closed

    @property
    def serve(self):
        """Where services run: "thread", "loop" or "manual" (see tether.connect)."""
        return self._serve

    def is_connected(self):
        """True while connected (False once closed, or while reconnecting)."""
        return self._client.is_connected()

    def register(self, name, fn):
        """Let the host call ``fn(*args, **kwargs)`` as the service name.

        Its result is sent back (plain data only) and an exception it raises reaches the
        host as an error of the same type name and message. With serve="thread", fn runs on
        one of tether's worker threads, holding the GIL, and an ``async def`` function runs
        to completion in a new event loop for each call. With serve="loop" or "manual", fn
        runs inside dispatch() on the thread that made the connection, and an ``async def``
        function runs as a task of the loop running there (replying when the task is done,
        and cancelled if the caller cancels), or without one to completion in a new loop.
        """
        if not callable(fn):
            raise TypeError(f"a service must be callable, not {type(fn).__name__!r}")
        import inspect  # here: a spawned child that registers nothing never pays for it

        fn = self._reporting(name, fn)
        if self._serve == "thread":
            if inspect.iscoroutinefunction(fn):
                fn = _wrap_coroutine_function(fn)
            self._client.add_service(name, fn)
        elif inspect.iscoroutinefunction(fn):
            from . import _aio

            self._client.add_service(name, _aio.coroutine_service(fn), main=True, deferred=True)
        else:
            self._client.add_service(name, fn, main=True)
        if self._serve == "loop":
            self._use_running_loop()

    def _reporting(self, name, fn):
        """fn (a coroutine function stays one), also reporting an exception it raises to the
        host's log while a LogHandler of this connection is open."""
        import inspect

        conn_ref = _weak.ref(self)

        def report(e):
            conn = conn_ref()
            if conn is not None and conn._log_handlers:
                conn._report_service_error(name, e)

        if inspect.iscoroutinefunction(fn):

            async def service(*args, **kwargs):
                try:
                    return await fn(*args, **kwargs)
                except Exception as e:
                    report(e)
                    raise

        else:

            def service(*args, **kwargs):
                try:
                    return fn(*args, **kwargs)
                except Exception as e:
                    report(e)
                    raise

        return functools.wraps(fn)(service)

    def _report_service_error(self, name, exc):
        import traceback

        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            self._client.log(3, "tether.service", f"service {name!r} raised:\n{text.rstrip()}")
        except Exception:  # best effort: the error reply is what the caller relies on
            pass

    def service(self, fn=None, *, name=None):
        """Decorator registering a function as a service (see register).

        ``@conn.service``, ``@conn.service("name")`` or ``@conn.service(name="name")``;
        the function is returned unchanged.
        """
        if isinstance(fn, str):
            fn, name = None, fn

        def decorate(f):
            self.register(name or f.__name__, f)
            return f

        return decorate if fn is None else decorate(fn)

    def register_service(self, obj):
        """Register every service of a tether.Service instance (see tether.Service): its
        public methods, under their names or "PREFIX.NAME". Returns obj.

        A name taken already raises ValueError (the methods before it stay registered).
        """
        from .services import Service

        if not isinstance(obj, Service):
            raise TypeError(
                f"register_service expects a tether.Service instance, not {type(obj).__name__!r}"
            )
        for name, fn in obj._tether_services():
            self.register(name, fn)
        return obj

    def log(self, level, message, logger=None):
        """Send a log record to the host's log (see tether.LogHandler): level is a syslog
        number from 3 (error) to 7 (debug). Returns once queued."""
        self._client.log(level, logger, message)

    def fileno(self):
        """A file descriptor readable while main-thread work is queued (see dispatch)."""
        return self._client.fileno()

    def dispatch(self, budget=None):
        """Run queued main-thread work for up to budget seconds (None: all of it): with
        serve="manual" (or "loop"), the host's calls of this script's services. Only on the
        thread that made the connection.

        Returns True if work remains.
        """
        return self._client.dispatch(budget)

    def wait(self, timeout=None):
        """Wait up to timeout seconds (None: no limit) for main-thread work and run all of
        it: with serve="manual", a script with nothing else to do serves the host's calls
        this way. Meanwhile this thread reads the connection itself, so a call of one of
        its services wakes only this thread. Only on the thread that made the connection.

        Returns True if work ran, False on timeout.
        """
        return self._client.wait(timeout)

    def attach_loop(self, loop=None):
        """Serve on the asyncio loop (default: the running one): it calls dispatch() while
        fileno() is readable, and forwards its errors to the host's log (see tether.connect).

        For serve="loop" (which attaches by itself to a loop running on the connection's
        thread) or "manual"; loop must run on the thread that made the connection.
        Attaching to another loop detaches from the previous one.
        """
        if self._serve == "thread":
            raise ValueError('attach_loop needs a connection made with serve="loop" or "manual"')
        if _thread.get_ident() != self._thread:
            raise RuntimeError("attach_loop must be called on the thread that made the connection")
        import asyncio

        from . import _aio, _loop_errors

        if loop is None:
            loop = asyncio.get_running_loop()
        if self._server is not None and self._server.loop is loop and not loop.is_closed():
            return
        self._detach_loop()
        _loop_errors.hook_loop_errors(loop, self)
        self._loop = loop
        self._server = _aio.LoopServer(self._client, loop)
        # The server, not self, holds the client, so a dropped connection is still
        # collected; its reader goes with it.
        import weakref  # here only: a spawned child never attaches a loop

        self._detach = weakref.finalize(self, self._server.detach)

    def _detach_loop(self):
        if self._detach is not None:
            self._detach()
        self._server = self._detach = None

    def _use_loop(self, loop):
        """This connection is used on loop (made, or an aio call): forward the loop's errors
        to the host's log, and with serve="loop" serve there if it runs on our thread."""
        if loop is self._loop:
            return
        from . import _loop_errors

        _loop_errors.hook_loop_errors(loop, self)
        self._loop = loop
        if self._serve == "loop" and not self._closed and _thread.get_ident() == self._thread:
            self.attach_loop(loop)

    def _use_running_loop(self):
        loop = _running_loop()
        if loop is not None:
            self._use_loop(loop)

    def close(self):
        """Close the connection: pending calls fail with CancelledError, later calls
        raise NotConnectedError. Closing twice does nothing."""
        self._closed = True
        _open.discard(self)
        self._detach_loop()
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        state = "closed" if self._closed else "connected" if self.is_connected() else "disconnected"
        return f"<tether.Connection {self.name!r} to {self.host_name!r} {state}>"


def _default_name():
    """The script's name: the stem of sys.argv[0], else 'python'."""
    path = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
    name = os.path.splitext(os.path.basename(path))[0]
    if name == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        name = spec.parent if spec is not None and spec.parent else ""
    return name or "python"


def connect(
    name=None,
    address=None,
    timeout=30.0,
    *,
    connect_timeout=5.0,
    token=None,
    runtime_dir=None,
    reconnect=True,
    serve="thread",
    services=None,
):
    """Connect to a host and return a Connection.

    name: the name the host lists this client under (default: the script's name).
    address: "unix:/path", "tcp:127.0.0.1:PORT" or a host name (its socket in the runtime
    directory); None: $TETHER_ADDRESS, else the host named "default".
    timeout: default silence timeout of calls, in seconds (None: none). A host that is
    still working on a call keeps it alive, so this catches dead or stuck hosts only.
    connect_timeout: bound on connecting and the handshake, in seconds.
    token: the host's token for TCP (None: $TETHER_TOKEN, else its token file).
    runtime_dir: where host sockets are (None: $TETHER_RUNTIME_DIR, else the default).
    reconnect: after a lost connection, reconnect in the background (calls made
    meanwhile raise NotConnectedError).
    serve: where the services this script registers run when the host calls them.
    "thread": on tether's worker threads, whatever the script is doing. "loop": on the
    asyncio loop of the thread calling connect, inside its dispatch(), which the loop calls
    when fileno() is readable; the connection attaches to the loop running on this thread
    now (connect inside a coroutine, or ``await tether.connect_async(...)``), else when a
    service is registered or an aio call made there, else at ``attach_loop()``.
    "manual": inside dispatch(), which the application calls on this thread when
    fileno() is readable (a Qt QSocketNotifier, a Tk file handler, a select loop). In
    both, a blocking call made on this thread runs the host's call-backs into these
    services while it waits, and Ctrl-C waits for it to return.

    services: registered before the connection is made, so the host can call them as
    soon as it sees the script: a dict {name: callable}, or an iterable of functions
    (registered under their __name__) and tether.Service instances.

    While the connection is open, the errors the script's asyncio loops report (a task's
    exception nobody retrieved, an exception in a callback) also go to the host's log:
    those asyncio logs, from any loop (asyncio.run() after connect included), and every
    error of a loop the connection was made, attached or made aio calls in, even where
    the script installed an exception handler of its own (tether's calls it next).

    Raises ConnectionRefusedError (no host there), PermissionError (refused),
    TimeoutError, or TetherError.
    """
    conn = _unopened(name, address, timeout, connect_timeout, token, runtime_dir, reconnect,
                     serve, services)
    conn._client.connect()
    return _watched(_opened(conn))


async def connect_async(
    name=None,
    address=None,
    timeout=30.0,
    *,
    connect_timeout=5.0,
    token=None,
    runtime_dir=None,
    reconnect=True,
    serve="thread",
    services=None,
):
    """tether.connect for coroutines: connecting and the handshake run in the loop's default
    executor while the loop goes on. The connection belongs to the thread of the running
    loop, so serve="loop" serves on that loop."""
    import asyncio

    loop = asyncio.get_running_loop()
    conn = _unopened(name, address, timeout, connect_timeout, token, runtime_dir, reconnect,
                     serve, services)
    await loop.run_in_executor(None, conn._client.connect)
    return _watched(_opened(conn))


def _unopened(name, address, timeout, connect_timeout, token, runtime_dir, reconnect, serve,
              services):
    """A Connection not connected yet, with its initial services registered."""
    conn = Connection(_new_client(name, address, timeout, connect_timeout, token,
                                  runtime_dir, reconnect, serve), serve)
    if isinstance(services, dict):
        for service_name, fn in services.items():
            conn.register(service_name, fn)
    elif services is not None:
        from .services import Service

        for item in services:
            if isinstance(item, Service):
                conn.register_service(item)
            else:
                conn.register(item.__name__, item)
    return conn


def _new_client(name, address, timeout, connect_timeout, token, runtime_dir, reconnect, serve):
    if serve not in SERVE_MODES:
        raise ValueError(f"serve must be one of {', '.join(map(repr, SERVE_MODES))}, not {serve!r}")
    if name is not None and any(c < " " or c == "\x7f" for c in name):
        # The host lists, logs and prints the name (docs/protocol.md, HELLO map).
        raise ValueError(f"a client name cannot hold control characters: {name!r}")
    return _tether.Client(
        name if name is not None else _default_name(),
        address,
        timeout=timeout,
        connect_timeout=connect_timeout,
        token=token,
        runtime_dir=runtime_dir,
        reconnect=reconnect,
    )


def _opened(conn):
    _open.add(conn)
    conn._use_running_loop()
    return conn


def _watched(conn):
    """conn, which now receives the errors asyncio logs (a script's connection)."""
    from . import _loop_errors

    _loop_errors.watch(conn)
    return conn


def _running_loop():
    """The asyncio loop running on this thread, or None (without importing asyncio)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# Connections by id() of their Client, for aio methods, which hold only the Client (so
# that they do not keep a dropped Connection alive). A Connection holds its Client, so an
# id is not reused while its entry exists.
_connections = _weak.WeakValues()

# Connections still open at interpreter exit are closed before the extension's own exit
# hook runs (atexit runs hooks last-registered first), so no host request reaches Python
# while the interpreter finalizes.
_open = _weak.WeakMembers()
_open_lock = _thread.allocate_lock()


def _close_all():
    with _open_lock:
        conns = list(_open)
    for conn in conns:
        try:
            conn.close()
        except Exception:  # pragma: no cover - best effort at exit
            pass


atexit.register(_close_all)
