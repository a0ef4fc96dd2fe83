"""tether's exception classes: TetherError and its subclasses.

The C extension (tether._tether) imports this module when it is initialised, adds the
classes to itself and raises them (its errors.c maps the core's negative codes and remote
failures to them); the package re-exports them as tether.TetherError and so on. They are
Python, not C, for exact Python semantics (subclassing, pickling, __str__).

This module imports nothing: the extension imports it while the package, which imports
the extension first, is still being imported.
"""


class TetherError(Exception):
    """Base class of tether's own exceptions. code is the negative TETHER_E* code
    of the failure when it came from the core, else None."""

    code = None


class RemoteError(TetherError):
    """The peer raised an exception that is not a builtin one: remote_type names
    its type ("module.Qualname"), remote_message is its message and
    remote_traceback the peer's traceback text (None if the peer sent none)."""

    def __init__(self, remote_type, message="", traceback=None):
        super().__init__(remote_type, message)
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_traceback = traceback

    def __reduce__(self):
        return (type(self), (self.remote_type, self.remote_message, self.remote_traceback))

    def __str__(self):
        return f"{self.remote_type}: {self.remote_message}"


class NotConnectedError(TetherError, ConnectionError):
    """The connection is closed, or not connected yet, or reconnecting."""


class NoSuchServiceError(TetherError, LookupError):
    """The peer has no service of that name."""


class CancelledError(TetherError):
    """The call was cancelled (Future.cancel, or the connection closed locally)."""


# Users meet these classes as tether.X, where the package re-exports them: repr, tracebacks
# and pickles name them so, and unpickling finds them there.
for _cls in (TetherError, RemoteError, NotConnectedError, NoSuchServiceError, CancelledError):
    _cls.__module__ = "tether"
del _cls
