"""Child interpreters: tether.run_script, run_module and run_object.

Each starts a Python interpreter (any CPython 3.10+, ``python_exe=``) as a child process
that runs a script, a module or an object and hands back its root object by reference:
the caller gets a ``ChildProxy`` and works with the child's objects as if they were
local. The child needs nothing installed (tether's package is put on its path), finds
what this process can import (its sys.path ends with ours) and prints to this
process's stdout and stderr, each line prefixed with its pid.

The child lives as long as some proxy to one of its objects does: when the last one is
garbage collected it is terminated. ``proxy.terminate_daemon()`` ends it at once, and
``with tether.run_script(...) as p:`` on leaving the block. It never outlives this
process either (it exits at the end of its socket, and on a parent-death signal).

The children connect to a private host of this process (no listening socket), made on
first use; everything is the core's tether_host_spawn (see docs/spawning.md).
"""

import logging
import os
import sys
import threading
import weakref

from . import _proxy, _tether

__all__ = ["ChildProxy", "InstanceDefinition", "run_module", "run_object", "run_script",
           "terminate_daemon"]

_host = None
_host_lock = threading.Lock()
# The package directory children import tether from: the one this process uses.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_LOGGER = logging.getLogger("tether")
# How this process's sys.path reaches the child, which appends it to its own (_child.main).
_SYS_PATH_VARIABLE = "TETHER_CHILD_SYS_PATH"


class InstanceDefinition:
    """What run_object makes in the child: ``module.class_name(*args, **kwargs)``.

    module "builtins" names builtins; None looks class_name up in the globals of the
    script given to run_object.
    """

    __slots__ = ("module", "class_name", "args", "kwargs")

    def __init__(self, module, class_name, *args, **kwargs):
        self.module = module
        self.class_name = class_name
        self.args = args
        self.kwargs = kwargs

    def __repr__(self):
        return f"InstanceDefinition({self.module!r}, {self.class_name!r}, ...)"


class ChildProxy(_proxy.Proxy):
    """The proxy of a child's root object (a module, or the object run_object made),
    with the child's lifetime attached: ``pid``, ``terminate_daemon()``, ``wait()``, and
    use as a context manager (``tether.terminate_daemon(proxy)`` does the same from any
    proxy of the child). Those few names are the proxy's own; reach an object's
    attribute of the same name with ``proxy.__getattr__`` through getattr on the child,
    e.g. ``proxy["pid"]`` is not it: use a function of the child instead."""

    __slots__ = ()

    @property
    def pid(self):
        return _owner(self).pid

    def terminate_daemon(self):
        """End the child now. Proxies to its objects raise NotConnectedError afterwards."""
        terminate_daemon(self)

    def wait(self, timeout=None):
        """Wait for the child to exit: its exit status (minus the signal that ended it),
        or None if it still runs after timeout seconds."""
        return _owner(self).wait(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.terminate_daemon()


class _Child:
    """A running child and the logger that reports on it; held by every proxy to its
    objects, so the child lives exactly as long as they do."""

    __slots__ = ("child", "logger", "pid", "__weakref__")

    def __init__(self, child, logger):
        self.child = child
        self.logger = logger
        self.pid = child.pid

    def terminate(self):
        return self.child.terminate()

    def wait(self, timeout=None):
        return self.child.wait(timeout)

    def __del__(self):
        try:
            if self.child.terminate():
                self.logger.info("child %d terminated: its last proxy is gone", self.pid)
        except Exception:  # interpreter exit: the child goes with the socket anyway
            pass


# Children by the key of their connection, for the proxies made from its values.
_children = weakref.WeakValueDictionary()


def _owner(proxy):
    return object.__getattribute__(proxy, "_tether_owner")


def terminate_daemon(proxy):
    """End the child that holds proxy's object, now: the same as the root's
    ``terminate_daemon()``, from any proxy of the child (``tether.terminate_daemon(child.box)``).

    A function rather than a method, so that it never hides an attribute of the remote
    object. TypeError if proxy is not a tether.Proxy of a spawned child's object (a host's
    object, say). Ending a child that has ended already does nothing.
    """
    if not isinstance(proxy, _proxy.Proxy):
        raise TypeError(f"terminate_daemon needs a tether.Proxy, not {type(proxy).__name__}")
    child = _owner(proxy)
    if child is None:
        raise TypeError("terminate_daemon needs a proxy of a spawned child's object; "
                        "this one stands for an object of a host or client")
    if child.terminate():
        child.logger.info("terminated child %d", child.pid)


def owner_for(ref):
    """The _Child a new proxy of this reference belongs to, or None (called by
    _proxy.make_proxy)."""
    return _children.get(ref.conn_key)


def _get_host():
    global _host
    with _host_lock:
        if _host is None:
            _host = _tether.Host(f"spawner-{os.getpid()}")
        return _host


def _spawn(logger, python_exe, env, cwd, args, name, timeout, warm, **what):
    logger = logger or _DEFAULT_LOGGER
    env_entries = [k if v is None else f"{k}={v}" for k, v in (env or {}).items()]
    env_entries.append(f"{_SYS_PATH_VARIABLE}={_parent_sys_path()}")
    logger.info("spawning %s (%s%s)", python_exe or "python3", _describe(what),
                ", warm" if warm else "")
    child = _get_host().spawn(
        executable=python_exe,
        args=[str(a) for a in args] if args else None,
        env=env_entries,
        cwd=os.fspath(cwd) if cwd is not None else None,
        name=name,
        python_path=_PACKAGE_PARENT,
        start_timeout=timeout,
        warm=warm,
        **what,
    )
    owner = _Child(child, logger)
    _children[child.conn_key] = owner
    logger.info("child %d started", owner.pid)
    return _proxy.make_proxy(child.root_ref(), ChildProxy, owner)


def _parent_sys_path():
    """This process's sys.path, made absolute ("" is the current directory), for the
    child: what we can import, it can too. An entry holding os.pathsep cannot be told
    apart in the variable and is left out, as PYTHONPATH would have to."""
    entries = []
    for entry in sys.path:
        if not isinstance(entry, str) or os.pathsep in entry:
            continue
        entry = os.path.abspath(entry or os.curdir)
        if entry not in entries:
            entries.append(entry)
    return os.pathsep.join(entries)


def _describe(what):
    if what.get("object_class"):
        return f"object {what.get('object_module') or '<script>'}.{what['object_class']}"
    if what.get("module"):
        return f"module {what['module']}"
    if what.get("script_path"):
        return f"script {what['script_path']}"
    return "script"


def run_script(source=None, *, path=None, python_exe=None, env=None, cwd=None, args=None,
               logger=None, name=None, timeout=10.0, warm=False):
    """Run a script in a new interpreter and return a proxy for it as a module.

    source: Python source text, loaded as a fresh module; or path= a file. The proxy
    stands for that module: ``proxy.foo`` is the child's first-level variable foo (a
    proxy itself, containers included, unless an immutable scalar: None, bool, int,
    float, str, bytes), ``proxy.f(1)`` calls its function f there and returns its
    result (by value when plain data).
    python_exe: the interpreter (a path or a name in PATH; default python3). env: a dict
    of environment variables to set (None as value: remove). cwd, args (sys.argv[1:]).
    logger: where spawning is reported (default: the "tether" logger). timeout: seconds
    allowed to start. warm: fork the child from an interpreter kept ready for this
    python_exe and env (started on the first warm spawn), a few milliseconds instead of
    an interpreter's start-up. Errors in the child (a SyntaxError, an exception at import) are
    raised here with the child's traceback; FileNotFoundError for a missing interpreter.
    """
    if (source is None) == (path is None):
        raise TypeError("run_script needs the source or path=, not both")
    return _spawn(logger, python_exe, env, cwd, args, name, timeout, warm,
                  script=source, script_path=os.fspath(path) if path is not None else None)


def run_module(module, *, path=None, python_exe=None, env=None, cwd=None, args=None,
               logger=None, name=None, timeout=10.0, warm=False):
    """Import a module in a new interpreter ("pkg.mod"; path= a .py file to load it from)
    and return a proxy for it. Other arguments as run_script."""
    return _spawn(logger, python_exe, env, cwd, args, name, timeout, warm, module=module,
                  module_path=os.fspath(path) if path is not None else None)


def run_object(definition, *, script=None, python_exe=None, env=None, cwd=None, args=None,
               logger=None, name=None, timeout=10.0, warm=False):
    """Make ``definition.module.class_name(*args, **kwargs)`` in a new interpreter and
    return a proxy for it. With definition.module None, the class is looked up in the
    globals of script (source text). The constructor's arguments travel by value."""
    if definition.module is None and script is None:
        raise TypeError("an InstanceDefinition without a module needs script=")
    return _spawn(logger, python_exe, env, cwd, args, name, timeout, warm,
                  object_module=definition.module, object_class=definition.class_name,
                  object_args=list(definition.args), object_kwargs=dict(definition.kwargs),
                  script=script)
