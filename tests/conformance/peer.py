"""A tether peer written from docs/protocol.md alone, for the conformance suite.

It speaks the wire format with Debian's python3-msgpack and nothing of the tether
package: frames (section 3), values and the REF/ERROR exts (section 4), the messages
(section 5) and the handshake (section 6). It does exactly what a test tells it, so that
a test can also send what a conforming peer never would.
"""

import os
import socket
import struct
import time

import msgpack

HELLO, WELCOME, REFUSE, REQUEST, NOTIFY, RESPONSE, CANCEL, RELEASE = 1, 2, 3, 4, 5, 6, 7, 8
PING, PONG, PROGRESS, CONTROL, LOG = 9, 10, 11, 12, 13
BUFFERS_DONE = 14  # version 2
EXT_REF, EXT_ERROR = 1, 2
MAX_FRAME = 16 * 1024 * 1024


class Closed(Exception):
    """The other side closed the connection."""


class Ref:
    """A REF ext: [owner, object_id, type_name]; owner 0 is the sender's object."""

    def __init__(self, owner, object_id, type_name):
        self.owner, self.object_id, self.type_name = owner, object_id, type_name

    def __eq__(self, other):
        return isinstance(other, Ref) and (self.owner, self.object_id) == (
            other.owner,
            other.object_id,
        )

    def __repr__(self):
        return f"Ref({self.owner}, {self.object_id}, {self.type_name!r})"


class Error:
    """An ERROR ext: [type, message, traceback]."""

    def __init__(self, type, message, traceback=None):
        self.type, self.message, self.traceback = type, message, traceback

    def __repr__(self):
        return f"Error({self.type!r}, {self.message!r})"


def _default(obj):
    if isinstance(obj, Ref):
        payload = msgpack.packb([obj.owner, obj.object_id, obj.type_name])
        return msgpack.ExtType(EXT_REF, payload)
    if isinstance(obj, Error):
        payload = msgpack.packb([obj.type, obj.message, obj.traceback])
        return msgpack.ExtType(EXT_ERROR, payload)
    raise TypeError(f"cannot pack {obj!r}")


def _ext_hook(code, data):
    if code == EXT_REF:
        owner, object_id, type_name = msgpack.unpackb(data)[:3]
        return Ref(owner, object_id, type_name)
    if code == EXT_ERROR:
        return Error(*msgpack.unpackb(data, raw=False)[:3])
    return msgpack.ExtType(code, data)


def pack(value):
    """One value as MessagePack bytes (REF and ERROR as their exts)."""
    return msgpack.packb(value, default=_default, use_bin_type=True)


def frame(body):
    """A frame: body (bytes, sent as they are, or a list, packed) behind its length."""
    if not isinstance(body, (bytes, bytearray)):
        body = pack(body)
    return struct.pack(">I", len(body)) + bytes(body)


def unpack(body):
    """A frame body as a list (raises on anything msgpack cannot read)."""
    return msgpack.unpackb(body, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def hello(name="conformance", versions=(1, 1), **extra):
    """A HELLO frame's body."""
    fields = {
        "versions": list(versions),
        "name": name,
        "pid": os.getpid(),
        "language": "python-raw",
        "language_version": "",
    }
    fields.update(extra)
    return [HELLO, {k: v for k, v in fields.items() if v is not None}]


def request(id, method, args=(), kwargs=None, target=0, chain=0, timeout_ms=30000):
    return [REQUEST, id, chain, target, method, list(args), kwargs or {}, timeout_ms]


def notify(method, args=(), kwargs=None, target=0, chain=0):
    return [NOTIFY, chain, target, method, list(args), kwargs or {}]


class Peer:
    """One end of a connection: send frames, read them back one at a time."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.fds = []  # descriptors that came beside frames (protocol version 2)

    @classmethod
    def connect(cls, address, timeout=10.0):
        path = address[len("unix:") :] if address.startswith("unix:") else address
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(path)
        return cls(s)

    def close(self):
        self.sock.close()
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def send(self, *bodies):
        """Send frames in one write (bodies: lists, or raw bytes as a body)."""
        self.sock.sendall(b"".join(frame(b) for b in bodies))

    def send_raw(self, data):
        self.sock.sendall(data)

    def send_with_fds(self, body, fds):
        """Send one frame with descriptors beside it, in a write of its own that starts
        with it (docs/protocol.md, "Buffers")."""
        data = frame(body)
        sent = socket.send_fds(self.sock, [data], list(fds))
        if sent < len(data):
            self.sock.sendall(data[sent:])

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no frame within the time (have {len(self.buf)} bytes)")
            self.sock.settimeout(left)
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 65536, 64)
                self.fds += fds
            except ConnectionResetError:
                data = b""
            if not data:
                raise Closed(f"closed with {len(self.buf)} bytes pending")
            self.buf += data

    def recv(self, timeout=10.0):
        """The next frame's body, decoded: a list [kind, ...]."""
        deadline = time.monotonic() + timeout
        self._fill(4, deadline)
        (length,) = struct.unpack(">I", self.buf[:4])
        assert length <= MAX_FRAME, f"frame of {length} bytes"
        self._fill(4 + length, deadline)
        body, self.buf = self.buf[4 : 4 + length], self.buf[4 + length :]
        return unpack(body)

    def recv_kind(self, kinds, timeout=10.0, skip=(PROGRESS, LOG, BUFFERS_DONE)):
        """The next frame of one of kinds, skipping PROGRESS, LOG and BUFFERS_DONE frames on
        the way."""
        kinds = (kinds,) if isinstance(kinds, int) else tuple(kinds)
        deadline = time.monotonic() + timeout
        while True:
            f = self.recv(max(0.0, deadline - time.monotonic()))
            if f[0] in kinds:
                return f
            assert f[0] in skip, f"expected kind {kinds}, got {f!r}"

    def quiet(self, seconds):
        """Whether nothing at all arrives within seconds (True) or a frame does (False)."""
        try:
            self.recv(seconds)
        except TimeoutError:
            return True
        return False

    def closed(self, timeout=5.0):
        """Whether the other side closes within timeout, skipping what it sends first."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.recv(max(0.0, deadline - time.monotonic()))
        except Closed:
            return True
        except TimeoutError:
            return False

    def handshake(self, **kwargs):
        """HELLO, then the WELCOME map (fails on anything else)."""
        self.send(hello(**kwargs))
        f = self.recv()
        assert f[0] == WELCOME, f"expected WELCOME, got {f!r}"
        return f[1]

    def call(self, id, method, args=(), kwargs=None, **kw):
        """Send a REQUEST and return its RESPONSE [6, id, is_error, value]."""
        self.send(request(id, method, args, kwargs, **kw))
        f = self.recv_kind(RESPONSE)
        assert f[1] == id, f"response to {f[1]}, expected {id}"
        return f

    def alive(self, nonce=4242):
        """Whether the connection still answers a PING (frames before the PONG skipped)."""
        try:
            self.send([PING, nonce])
            while True:
                f = self.recv(5.0)
                if f[0] == PONG and f[1] == nonce:
                    return True
        except (Closed, TimeoutError, BrokenPipeError, ConnectionResetError):
            return False


class Listener:
    """A host's side of the protocol, for testing clients: a Unix socket in a directory."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "peer.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(4)
        self.address = "unix:" + self.path

    def accept(self, timeout=10.0):
        self.sock.settimeout(timeout)
        s, _ = self.sock.accept()
        return Peer(s)

    def accept_client(self, timeout=10.0, **welcome):
        """Accept, read the HELLO, answer WELCOME: (peer, hello map)."""
        p = self.accept(timeout)
        f = p.recv(timeout)
        assert f[0] == HELLO, f"expected HELLO, got {f!r}"
        fields = {
            "version": 1,
            "name": "conformance-host",
            "pid": os.getpid(),
            "max_frame_size": MAX_FRAME,
            "max_in_flight": 1024,
            "client_name": f[1].get("name", ""),
        }
        fields.update(welcome)
        p.send([WELCOME, fields])
        return p, f[1]

    def close(self):
        self.sock.close()
