"""tether: script a host application from another process.

A script connects to a host (a game engine, an editor, any program that links
libtether) and calls the services the host registered::

    import tether

    host = tether.connect(name="my-tool")   # address=, else $TETHER_ADDRESS, else "default"
    host.root.spawn_actor("Bob")            # blocks for the result
    f = host.async_.spawn_actor("Bob")      # a tether.Future
    f.result(timeout=5)
    host.notify.log("hi")                   # fire and forget

    @host.service
    def greet(name):                        # the host may call greet("Ann")
        return f"Hello, {name}!"

    class Actors(tether.Service):           # every public method is a service
        def spawn_actor(self, name): ...
    host.register_service(Actors())

    logging.getLogger().addHandler(tether.LogHandler(host))   # records to the host's log

In asyncio, ``await host.aio.spawn_actor("Bob")`` (or ``await tether.aio(method)(...)``,
or ``await future``) waits without blocking the loop, and cancelling the awaiting task
cancels the call. Services run on tether's worker threads by default; with
``tether.connect(serve="loop")`` they run on the script's asyncio loop (``async def``
ones as tasks), and with ``serve="manual"`` inside ``host.dispatch()``, which another
event loop calls when ``host.fileno()`` is readable. While connected, errors the script's
loops report (a task's exception nobody retrieved) also reach the host's log. ``async with
tether.named_run("my-script") as run:`` makes running the script again cancel the tasks
of this run, as an engine's loop does when a script is re-run.

Plain data (None, bool, int, float, str, bytes, list, tuple, dict) travels by value;
tuples arrive as lists. Over a Unix socket, bytes-like values of at least
``tether.buffer_threshold()`` bytes (256 KiB unless ``tether.set_buffer_threshold(n)``)
and arrays (numpy's, any object with the buffer protocol) go through shared memory, and
arrive as read-only memoryviews (arrays as numpy arrays of the same dtype and shape). Failures raise builtin exceptions where one fits (TimeoutError,
ConnectionResetError, a remote NameError stays a NameError) and tether's own otherwise
(RemoteError, NotConnectedError, NoSuchServiceError, CancelledError, all TetherError).
"""

__version__ = "0.1.0"

try:
    from . import _tether
except ImportError as e:  # pragma: no cover - depends on how the package was built
    raise ImportError(
        "tether's C extension (tether._tether) cannot be imported: "
        f"{e}. Build it with `make` and use PYTHONPATH=build/python, "
        "or install the package with `pip install --no-build-isolation ./python`."
    ) from e

from ._tether import (  # noqa: E402
    CancelledError,
    Future,
    NoSuchServiceError,
    NotConnectedError,
    RemoteError,
    TetherError,
    buffer_threshold,
    set_buffer_threshold,
    shared_memory,
)
from ._connection import (  # noqa: E402
    Connection,
    RemoteMethod,
    aio,
    async_,
    connect,
    connect_async,
)
from ._proxy import Proxy, is_proxy  # noqa: E402

# Loaded on first use: a spawned child, which needs none of them, starts faster.
_LAZY = {
    "AioCall": "._aio",
    "aio_delattr": "._aio",
    "aio_getattr": "._aio",
    "aio_setattr": "._aio",
    "ChildProxy": "._spawn",
    "InstanceDefinition": "._spawn",
    "run_module": "._spawn",
    "run_object": "._spawn",
    "run_script": "._spawn",
    "terminate_daemon": "._spawn",
    "services": ".services",
    "Service": ".services",
    "LogHandler": "._logging",
    "shared_array": "._buffers",
    "named_run": "._run",
    "NamedRun": "._run",
    "PreviousRun": "._run",
}


def __getattr__(name):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'tether' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(module_name, __name__)
    value = module if name == module_name[1:] else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


#: Version of libtether inside the extension, and the wire protocol version it speaks.
core_version = _tether.core_version
protocol_version = _tether.protocol_version

__all__ = [
    "AioCall",
    "CancelledError",
    "ChildProxy",
    "InstanceDefinition",
    "Connection",
    "Future",
    "LogHandler",
    "NamedRun",
    "NoSuchServiceError",
    "NotConnectedError",
    "PreviousRun",
    "Proxy",
    "RemoteError",
    "RemoteMethod",
    "Service",
    "TetherError",
    "__version__",
    "aio",
    "aio_delattr",
    "aio_getattr",
    "aio_setattr",
    "async_",
    "buffer_threshold",
    "connect",
    "is_proxy",
    "named_run",
    "run_module",
    "run_object",
    "run_script",
    "set_buffer_threshold",
    "shared_array",
    "shared_memory",
    "terminate_daemon",
    "connect_async",
    "core_version",
    "protocol_version",
    "services",
]
