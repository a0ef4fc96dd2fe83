"""Objects by reference: proxies for the peer's objects, and serving our own.

Plain data travels by value; any other object travels by reference. The receiver gets
a ``tether.Proxy`` that forwards what Python does with it to the object's owner, each in
one round trip:

    proxy.method(*args)      one call; the owner runs getattr(obj, "method")(*args)
    proxy.attr               the attribute's value (by value or, again, by reference)
    proxy.attr = v, del proxy.attr
    proxy(*args), proxy[k], proxy[k] = v, del proxy[k], len(proxy), k in proxy,
    iter(proxy), repr(proxy), str(proxy), dir(proxy), bool(proxy)

To tell a method from a plain attribute without asking every time, a proxy fetches its
object's description once ("__tether_describe__": the type name and its methods); for
objects of ordinary classes that description is kept per type and connection, so the
first proxy of a type pays one extra round trip and every later method call costs one.

Names that start with an underscore are not reachable through a proxy, apart from the
operations above: the owner exposes an object's public face only.

The owner keeps the object alive while any proxy to it lives anywhere; when the last one
is garbage collected, the owner's reference goes (references are counted across the
connection by the core, see docs/protocol.md, "Remote references").
"""

import _thread
import operator
import types

from . import _tether, _weak
from ._connection import RemoteMethod

__all__ = ["Proxy", "is_proxy"]

DESCRIBE = "__tether_describe__"

# Operations a proxy forwards under their dunder names; any other name calls a method.
OPERATIONS = frozenset(
    {
        "__getattr__",
        "__setattr__",
        "__delattr__",
        "__call__",
        "__getitem__",
        "__setitem__",
        "__delitem__",
        "__len__",
        "__contains__",
        "__iter__",
        "__next__",
        "__repr__",
        "__str__",
        "__dir__",
        "__bool__",
        DESCRIBE,
    }
)

# (connection key, type name) -> frozenset of method names, for per-type descriptions.
_type_methods = {}
_type_methods_lock = _thread.allocate_lock()

# One proxy per remote object: the core hands out one reference per (connection, id),
# and its key finds the proxy that already stands for it.
_live = _weak.WeakValues()


_get = object.__getattribute__


def _ref(proxy):
    return _get(proxy, "_tether_ref")


class ByReference:
    """Sends obj by reference even if it is plain data (a dict, a list): the extension
    exports the object inside. Used for a spawned child's root object."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj


def is_proxy(obj):
    """True if obj is a tether.Proxy."""
    return isinstance(obj, Proxy)


class Proxy:
    """Stands for an object of the peer; see the module docstring."""

    # _tether_owner: for a spawned child's objects, what keeps the child running.
    # _tether_methods: the object's method names, None until fetched.
    # _tether_bound: name -> RemoteMethod, the methods this proxy has handed out.
    __slots__ = ("_tether_ref", "_tether_methods", "_tether_bound", "_tether_owner",
                 "__weakref__")

    # Public names a subclass defines itself (ChildProxy's pid, wait...): the proxy's own,
    # not the remote object's. Filled in by __init_subclass__.
    _tether_local = frozenset()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._tether_local = frozenset(
            name for klass in cls.__mro__ if klass is not Proxy and klass is not object
            for name in vars(klass) if not name.startswith("_"))

    # __getattribute__ rather than __getattr__: a __getattr__ runs only after the ordinary
    # look-up has failed, and that failure builds an AttributeError (its message, its
    # name and obj) on every p.f() before throwing it away.
    def __getattribute__(self, name):
        if name[:1] == "_" or name in _get(self, "_tether_local"):
            try:
                return _get(self, name)
            except AttributeError:
                if name[:1] != "_":
                    raise
            raise AttributeError(
                f"{name!r}: names starting with an underscore are not reachable through a proxy"
            ) from None
        bound = _get(self, "_tether_bound")
        method = bound.get(name)
        if method is not None:
            return method
        ref = _get(self, "_tether_ref")
        if name in _methods(self):
            method = bound[name] = RemoteMethod(ref, name)
            return method
        return ref.call("__getattr__", (name,), None, None)

    def __setattr__(self, name, value):
        if name in Proxy.__slots__:
            object.__setattr__(self, name, value)
        else:
            _ref(self).call("__setattr__", (name, value), None, None)

    def __delattr__(self, name):
        _ref(self).call("__delattr__", (name,), None, None)

    def __call__(self, *args, **kwargs):
        return _ref(self).call("__call__", args, kwargs, None)

    def __getitem__(self, key):
        return _ref(self).call("__getitem__", (key,), None, None)

    def __setitem__(self, key, value):
        _ref(self).call("__setitem__", (key, value), None, None)

    def __delitem__(self, key):
        _ref(self).call("__delitem__", (key,), None, None)

    def __len__(self):
        return _ref(self).call("__len__", (), None, None)

    def __contains__(self, item):
        return _ref(self).call("__contains__", (item,), None, None)

    def __iter__(self):
        it = _ref(self).call("__iter__", (), None, None)
        return _RemoteIterator(it) if isinstance(it, Proxy) else iter(it)

    def __bool__(self):
        return _ref(self).call("__bool__", (), None, None)

    def __repr__(self):
        ref = _ref(self)
        try:
            return ref.call("__repr__", (), None, None)
        except Exception:  # the owner cannot say: describe the proxy itself
            return f"<tether.Proxy {ref.type_name} #{ref.id}>"

    def __str__(self):
        return _ref(self).call("__str__", (), None, None)

    def __dir__(self):
        return _ref(self).call("__dir__", (), None, None)

    def __reduce__(self):
        raise TypeError("a tether.Proxy cannot be pickled: it stands for an object of the peer")


class _RemoteIterator:
    """Iterates a remote iterator: one round trip per item."""

    __slots__ = ("_proxy",)

    def __init__(self, proxy):
        self._proxy = proxy

    def __iter__(self):
        return self

    def __next__(self):
        return _ref(self._proxy).call("__next__", (), None, None)


def _methods(proxy):
    """The method names of the proxy's object, fetched once (per type when allowed)."""
    methods = _get(proxy, "_tether_methods")
    if methods is not None:
        return methods
    ref = _ref(proxy)
    key = (ref.conn_key, ref.type_name)
    with _type_methods_lock:
        methods = _type_methods.get(key)
    if methods is None:
        try:
            info = ref.call(DESCRIBE, (), None, None)
            methods = frozenset(info.get("methods", ()))
            per_type = bool(info.get("per_type"))
        except (AttributeError, KeyError, TypeError, _tether.RemoteError):
            methods, per_type = frozenset(), False  # every name goes through __getattr__
        if per_type:
            with _type_methods_lock:
                _type_methods[key] = methods
    object.__setattr__(proxy, "_tether_methods", methods)
    return methods


def make_proxy(ref, cls=Proxy, owner=None):
    """The proxy for a reference the extension received (called by the decoder)."""
    proxy = _live.get(ref.key)
    if proxy is None:
        if owner is None:
            from . import _spawn

            owner = _spawn.owner_for(ref)
        proxy = object.__new__(cls)
        object.__setattr__(proxy, "_tether_ref", ref)
        object.__setattr__(proxy, "_tether_owner", owner)
        object.__setattr__(proxy, "_tether_methods", None)
        object.__setattr__(proxy, "_tether_bound", {})
        _live[ref.key] = proxy
    return proxy


# ---- the owner's side ------------------------------------------------------------------

_NAMESPACE_TYPES = (types.ModuleType, type)

# A spawned child's script or module, set by tether._child: its first-level variables
# travel by reference whatever their type (a dict, an OrderedDict, a list), as spawny's
# do, so that the parent sees and changes the child's own; immutable scalars of these
# exact types stay values, since a proxy of one could not even be compared.
first_level = None
_SCALAR_TYPES = frozenset({type(None), bool, int, float, str, bytes})


def _public(name):
    if name.startswith("_"):
        raise AttributeError(f"{name!r} is not reachable through a proxy (it starts with '_')")
    return name


def describe(obj):
    """What a proxy needs to know: the type's name and which public names are methods.

    For instances of ordinary classes the methods come from the class, so the peer may
    keep them per type; modules and classes list their own callables."""
    if isinstance(obj, _NAMESPACE_TYPES):
        source, per_type = obj, False
    else:
        source, per_type = type(obj), True
    methods = []
    for name in dir(source):
        if name.startswith("_"):
            continue
        try:
            if callable(getattr(source, name)):
                methods.append(name)
        except Exception:  # a failing descriptor is simply not a method
            continue
    return {"type": _tether.type_name(obj), "methods": methods, "per_type": per_type}


def _get_attribute(obj, name):
    value = getattr(obj, _public(name))
    if obj is first_level and type(value) not in _SCALAR_TYPES:
        return ByReference(value)
    return value


def _next(obj):
    return next(obj)  # StopIteration reaches the peer as itself


_OPERATION_HANDLERS = {
    "__getattr__": _get_attribute,
    "__setattr__": lambda obj, name, value: setattr(obj, _public(name), value),
    "__delattr__": lambda obj, name: delattr(obj, _public(name)),
    "__call__": lambda obj, *a, **k: obj(*a, **k),
    "__getitem__": operator.getitem,
    "__setitem__": operator.setitem,
    "__delitem__": operator.delitem,
    "__len__": len,
    "__contains__": operator.contains,
    "__iter__": iter,
    "__next__": _next,
    "__repr__": repr,
    "__str__": str,
    "__dir__": lambda obj: [n for n in dir(obj) if not n.startswith("_")],
    "__bool__": bool,
    DESCRIBE: describe,
}


def serve(obj, method, *args, **kwargs):
    """Run what a proxy asked of obj (called by the extension, GIL held)."""
    handler = _OPERATION_HANDLERS.get(method)
    if handler is not None:
        return handler(obj, *args, **kwargs)
    return getattr(obj, _public(method))(*args, **kwargs)
