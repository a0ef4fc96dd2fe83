"""The child side of a spawned interpreter (tether_host_spawn in C, tether.run_script and
its siblings in Python).

The parent starts ``python -c <bootstrap>`` with one end of a socket pair as the fd named
by $TETHER_CHILD_FD; the bootstrap puts tether's package on sys.path and calls main(),
which connects through that fd, offers ``__tether_start__`` and serves on the main
thread until the connection closes, then exits. ``__tether_start__(spec)`` loads what
the parent asked for and answers its root object, which travels by reference: the
parent holds a proxy to it. Everything the parent then asks of that proxy runs here on
the main thread, as in a script of one's own.

A child never outlives its parent: the parent's end of the socket closes when the
parent dies (end of file here), and on Linux the kernel sends SIGTERM on the parent's
death as a second guard (the parent-death signal; other systems, and builds with
TETHER_PLATFORM=posix, have only the end of file).
"""

import _signal  # not signal: its enums cost a child's start more than the rest of tether
import importlib
import os
import sys
import types

def _die_with_parent(parent):
    from . import _tether

    _tether._set_parent_death_signal(_signal.SIGTERM)  # False where there is none
    if parent and os.getppid() != parent:
        os._exit(1)  # the parent died before the guard was set


def _append_parent_sys_path(value):
    """A Python parent's sys.path entries (tether._spawn), after our own: modules the
    parent can import import here too, while this interpreter's standard library and
    packages come first (it may be another Python than the parent's)."""
    for entry in value.split(os.pathsep):
        if entry and entry not in sys.path:
            sys.path.append(entry)


def _fresh_module(name, source, filename):
    """A new module holding the result of running source."""
    module = types.ModuleType(name)
    module.__file__ = filename
    module.__builtins__ = __builtins__
    sys.modules[name] = module  # classes defined there can be found by name
    exec(compile(source, filename, "exec"), module.__dict__)
    return module


def _load_script(spec):
    if spec.get("script") is not None:
        return _fresh_module("__tether_script__", spec["script"], "<tether script>")
    path = spec["script_path"]
    with open(path, encoding="utf-8") as f:
        source = f.read()
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    return _fresh_module("__tether_script__", source, path)


def _load_module(spec):
    name = spec["module"]
    path = spec.get("module_path")
    if path is None:
        return importlib.import_module(name)
    from importlib import util  # only for a path: it costs every child otherwise

    file_spec = util.spec_from_file_location(name, path)
    if file_spec is None:
        raise ImportError(f"cannot load module {name!r} from {path!r}", name=name, path=path)
    module = util.module_from_spec(file_spec)
    sys.modules[name] = module
    file_spec.loader.exec_module(module)
    return module


def start(spec):
    """What the parent asked for: the root object it gets a proxy to (by reference even
    when it is plain data, such as a dict). A script's or module's first-level variables
    go by reference too (see _proxy.first_level)."""
    from . import _proxy

    root = _root(spec)
    if spec["kind"] != "object":
        _proxy.first_level = root
    return _proxy.ByReference(root)


def _root(spec):
    sys.argv = [spec.get("script_path") or spec.get("module") or "-c"] + list(spec.get("argv") or [])
    kind = spec["kind"]
    if kind in ("script", "script_path"):
        return _load_script(spec)
    if kind == "module":
        return _load_module(spec)
    if kind == "object":
        if spec.get("object_module") is not None:
            namespace = importlib.import_module(spec["object_module"])
        else:
            namespace = _load_script(spec)
        cls = getattr(namespace, spec["object_class"])
        return cls(*(spec.get("object_args") or ()), **(spec.get("object_kwargs") or {}))
    raise ValueError(f"unknown kind of start: {kind!r}")


def main():
    fd = int(os.environ.pop("TETHER_CHILD_FD"))
    name = os.environ.pop("TETHER_CHILD_NAME", "child")
    _die_with_parent(int(os.environ.pop("TETHER_CHILD_PARENT", "0") or 0))
    _append_parent_sys_path(os.environ.pop("TETHER_CHILD_SYS_PATH", ""))
    # Output goes to a pipe: line buffering makes each print reach the parent at once.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except AttributeError:
            pass

    from . import _connection, _tether

    client = _tether.Client(name, fd=fd, reconnect=False, timeout=None)
    # Registered before connecting: the parent calls it as soon as we are there.
    client.add_service("__tether_start__", start, main=True)
    client.connect()
    conn = _connection._opened(_connection.Connection(client, "manual"))
    # Serve on the main thread until the parent goes: the script's code and every call
    # into its objects run here, in order. wait() reads the socket on this thread, so a
    # call wakes this thread alone; the timeout lets Ctrl-C and the parent's end be seen.
    while conn.is_connected():
        conn.wait(0.25)
    conn.close()
