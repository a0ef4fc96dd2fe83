"""Arrays in shared memory that travel without a copy."""

import math

from . import _tether


def shared_array(shape, dtype="uint8"):
    """A writable numpy array of shape and dtype (zeroed) in shared memory: sent as an
    argument or a result over a Unix socket, the peer maps the same memory, and nothing
    is copied. Writing into it after sending is allowed, and the peer sees the writes;
    a new array per message is cheap (memory the peer is done with is reused)."""
    import numpy

    dtype = numpy.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    size = dtype.itemsize * math.prod(shape)
    if size == 0:
        return numpy.zeros(shape, dtype)
    return numpy.frombuffer(_tether.shared_memory(size), dtype).reshape(shape)
