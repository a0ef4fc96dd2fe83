"""Services a script exposes to the host as a group: the tether.Service base class, and
ready-made services such as EvalExec.

    class Actors(tether.Service):
        prefix = "actors"                     # optional: services "actors.spawn", ...

        def spawn(self, name):
            ...

    conn.register_service(Actors())
"""

import threading

__all__ = ["EvalExec", "Service"]


class Service:
    """Base class of an object whose public methods are services.

    Registering an instance with ``conn.register_service(obj)`` lets the host call each of
    its public methods (names not starting with "_", defined on the class or inherited
    from it, ``async def`` ones included) as a service of the same name. With a class
    attribute ``prefix = "ns"``, the service names are ``"ns.METHOD"`` instead; the default
    ``prefix = None`` uses the bare method names.
    """

    #: None: services are named after the methods; "ns": they are named "ns.METHOD".
    prefix = None

    def _tether_services(self):
        """The (service name, bound method) pairs register_service registers, sorted."""
        prefix = type(self).prefix
        if prefix is not None and not isinstance(prefix, str):
            raise TypeError(f"{type(self).__name__}.prefix must be a str or None")
        services = []
        for name in sorted(dir(type(self))):
            if name.startswith("_"):
                continue
            import inspect  # only when a Service is registered

            attr = inspect.getattr_static(self, name)
            if not isinstance(attr, (staticmethod, classmethod)) and not inspect.isfunction(attr):
                continue  # data, properties, nested classes: not services
            services.append((f"{prefix}.{name}" if prefix else name, getattr(self, name)))
        return services


class EvalExec(Service):
    """Opt-in ``exec(code)`` and ``eval(expr)`` services for the host.

    ``conn.register_service(tether.services.EvalExec())`` lets the host run Python source
    in this process: ``exec(code)`` executes statements and returns None, ``eval(expr)``
    returns the value of an expression. Both use one namespace per EvalExec instance (the
    dict ``namespace``, which may be given), so names bound by exec are seen by later
    calls; errors reach the host with their type (a NameError as "NameError").

    This hands the host the full power of this process: register it only for hosts you
    trust.
    """

    def __init__(self, namespace=None):
        self.namespace = {} if namespace is None else namespace
        self._lock = threading.RLock()  # one call at a time on the shared namespace

    def exec(self, code):
        """Execute the statements code in the namespace; returns None."""
        if not isinstance(code, str):
            raise TypeError(f"exec expects source code as str, not {type(code).__name__!r}")
        with self._lock:
            exec(compile(code, "<tether exec>", "exec"), self.namespace)

    def eval(self, expr):
        """Evaluate the expression expr in the namespace and return its value."""
        if not isinstance(expr, str):
            raise TypeError(f"eval expects an expression as str, not {type(expr).__name__!r}")
        with self._lock:
            return eval(compile(expr, "<tether eval>", "eval"), self.namespace)
