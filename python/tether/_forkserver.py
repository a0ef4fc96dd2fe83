"""A fork server: an interpreter kept ready by a host for warm spawns.

A host that spawns with ``warm`` keeps one of these per interpreter, environment and
package path (tether_spawn_options.warm; tether.run_script(..., warm=True)). It starts
like a child, imports tether once, and then forks a child for each request instead of
starting a new interpreter, so a warm spawn costs a fork rather than an interpreter's
start-up.

Protocol, over the socket at $TETHER_CHILD_FD (src/endpoints/forkserver.c is the
reference): a message is exactly one msgpack map with str keys and nothing after it, at
most 64 KiB; keys a side does not know it ignores. The socket's type says how messages
are kept apart: SOCK_SEQPACKET (the host on Linux) sends each as one packet; SOCK_STREAM
(the host's portable build, for systems without Unix SOCK_SEQPACKET) sends each after
its length, 4 bytes big-endian, descriptors riding on its first byte.
- to the host, once ready: {"ready": pid}
- from the host: {"cwd": str or nil, "name": str} with three descriptors attached
  (SCM_RIGHTS): the child's end of its socket pair, and its stdout and stderr;
- to the host, for each request in order: {"pid": pid} or {"error": text};
- to the host, whenever a child exits: {"exit": pid, "status": code or -signal}.
The msgpack codec is the small one below, for exactly the types these messages use (nil,
bool, int, str, array, map): a child must need nothing installed, so no third-party
package is imported.

It stays single-threaded (a fork from a threaded process would copy held locks) and
exits at the end of its control socket: when the host goes, so does it, and each
child exits at the end of its own socket.
"""

import gc
import os
import select
import signal
import socket
import struct
import sys
import traceback

import tether  # noqa: F401  (warm: what every child imports, imported once here)

from . import _child, _tether


MAX_MESSAGE = 65536  # bytes of one packet, either way (the host agrees)
_MAX_DEPTH = 4  # messages are flat maps


class ProtocolError(ValueError):
    """A message that is not msgpack of the types the protocol uses."""


def encode(value):
    """value as msgpack bytes: None, bool, int (64 bits), str, list and dict with str keys."""
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


def _encode_head(out, n, fix, fix_max, codes):
    """A str, array or map header: the fix form when n fits, else 16 or 32 bits."""
    if n <= fix_max:
        out.append(fix | n)
    elif n <= 0xFFFF:
        out += struct.pack(">BH", codes[0], n)
    elif n <= 0xFFFFFFFF:
        out += struct.pack(">BI", codes[1], n)
    else:
        raise ProtocolError("too long for msgpack")


def _encode(value, out, depth):
    if depth > _MAX_DEPTH:
        raise ProtocolError("nested too deeply")
    if value is None or isinstance(value, bool):
        out.append({None: 0xC0, False: 0xC2, True: 0xC3}[value])
    elif type(value) is int:
        if -32 <= value <= 0x7F:
            out += struct.pack(">b" if value < 0 else ">B", value)
        elif 0 < value < 1 << 32:
            out += struct.pack(">BI", 0xCE, value)
        elif 0 < value < 1 << 64:
            out += struct.pack(">BQ", 0xCF, value)
        elif -(1 << 31) <= value < 0:
            out += struct.pack(">Bi", 0xD2, value)
        elif -(1 << 63) <= value < 0:
            out += struct.pack(">Bq", 0xD3, value)
        else:
            raise ProtocolError(f"an int over 64 bits: {value}")
    elif type(value) is str:
        data = value.encode("utf-8")
        _encode_head(out, len(data), 0xA0, 31, (0xDA, 0xDB))
        out += data
    elif type(value) is list:
        _encode_head(out, len(value), 0x90, 15, (0xDC, 0xDD))
        for item in value:
            _encode(item, out, depth + 1)
    elif type(value) is dict:
        _encode_head(out, len(value), 0x80, 15, (0xDE, 0xDF))
        for key, item in value.items():
            if type(key) is not str:
                raise ProtocolError(f"a map key that is not a str: {key!r}")
            _encode(key, out, depth + 1)
            _encode(item, out, depth + 1)
    else:
        raise ProtocolError(f"cannot encode a {type(value).__name__} (not a protocol type)")


def decode(data):
    """The one msgpack value that data holds, nothing after it; ProtocolError if not."""
    value, end = _decode(memoryview(data), 0, 0)
    if end != len(data):
        raise ProtocolError(f"{len(data) - end} bytes after the msgpack value")
    return value


# Heads beyond the fix forms: the struct format of what follows, and the kind of value.
_HEADS = {
    0xC0: ("", None),
    0xC2: ("", False),
    0xC3: ("", True),
    0xCC: (">B", int),
    0xCD: (">H", int),
    0xCE: (">I", int),
    0xCF: (">Q", int),
    0xD0: (">b", int),
    0xD1: (">h", int),
    0xD2: (">i", int),
    0xD3: (">q", int),
    0xD9: (">B", str),
    0xDA: (">H", str),
    0xDB: (">I", str),
    0xDC: (">H", list),
    0xDD: (">I", list),
    0xDE: (">H", dict),
    0xDF: (">I", dict),
}


def _take(data, pos, n):
    if n > len(data) - pos:
        raise ProtocolError("a truncated message")
    return data[pos : pos + n], pos + n


def _decode(data, pos, depth):
    """The value at pos, and the position after it."""
    if depth > _MAX_DEPTH:
        raise ProtocolError("nested too deeply")
    head, pos = _take(data, pos, 1)
    c = head[0]
    if c <= 0x7F or c >= 0xE0:
        return (c if c <= 0x7F else c - 0x100), pos
    if c >= 0xA0 and c <= 0xBF:
        kind, n = str, c & 0x1F
    elif c >= 0x80 and c <= 0x9F:
        kind, n = (dict if c <= 0x8F else list), c & 0x0F
    elif c in _HEADS:
        fmt, kind = _HEADS[c]
        if not fmt:
            return kind, pos
        raw, pos = _take(data, pos, struct.calcsize(fmt))
        (n,) = struct.unpack(fmt, raw)
        if kind is int:
            return n, pos
    else:
        raise ProtocolError(f"msgpack type 0x{c:02x}, not one of the protocol's")
    if kind is str:
        raw, pos = _take(data, pos, n)
        try:
            return str(raw, "utf-8"), pos
        except UnicodeDecodeError:
            raise ProtocolError("a str that is not UTF-8") from None
    if n > len(data) - pos:  # each element takes a byte at least: no count is trusted
        raise ProtocolError("a truncated message")
    if kind is list:
        items = []
        for _ in range(n):
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos
    pairs = {}
    for _ in range(n):
        key, pos = _decode(data, pos, depth + 1)
        if type(key) is not str or key in pairs:
            raise ProtocolError(f"a map key that is not a str, or given twice: {key!r}")
        pairs[key], pos = _decode(data, pos, depth + 1)
    return pairs, pos


def check_request(request):
    """The request's cwd and name, or ProtocolError when it is not a fork request."""
    if type(request) is not dict:
        raise ProtocolError("a request that is not a map")
    cwd, name = request.get("cwd"), request.get("name")
    if cwd is not None and type(cwd) is not str:
        raise ProtocolError("a cwd that is not a str or nil")
    if type(name) is not str:
        raise ProtocolError("a name that is not a str")
    return cwd, name


_PREFIX = struct.Struct(">I")  # a message's length on a SOCK_STREAM socket


def send_message(sock, data, fds=()):
    """Send one message (bytes) with descriptors attached, as sock's type wants it."""
    if sock.type == socket.SOCK_STREAM:
        data = _PREFIX.pack(len(data)) + data
    sent = socket.send_fds(sock, [data], fds) if fds else 0
    if sent < len(data):  # a stream may take part of it; the descriptors went first
        sock.sendall(data[sent:])


def _receive_exactly(sock, n, keep=True):
    """n bytes of a stream (dropped unless keep); None at its end."""
    parts = []
    while n > 0:
        part = sock.recv(min(n, MAX_MESSAGE))
        if not part:
            return None
        n -= len(part)
        if keep:
            parts.append(part)
    return b"".join(parts)


def _receive_framed(sock):
    """One message of a stream: (data, fds, flags, too_long); data is b"" at its end."""
    head, fds, flags, _ = socket.recv_fds(sock, _PREFIX.size, 3)
    rest = _receive_exactly(sock, _PREFIX.size - len(head)) if head else None
    if rest is None:
        return b"", fds, flags, False
    (size,) = _PREFIX.unpack(head + rest)
    data = _receive_exactly(sock, size, keep=size <= MAX_MESSAGE)  # skipped when too long
    return data or b"", fds, flags, data is not None and size > MAX_MESSAGE


def receive_message(sock):
    """One message and up to three descriptors; b"" at the end of the socket.
    ProtocolError for a message over 64 KiB (a stream skips it, staying in step)."""
    if sock.type == socket.SOCK_STREAM:
        data, fds, flags, too_long = _receive_framed(sock)
    else:
        data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE + 1, 3)
        too_long = len(data) > MAX_MESSAGE or bool(flags & socket.MSG_TRUNC)
    if too_long or (data and flags & socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise ProtocolError("a message over 64 KiB, or with too many descriptors")
    return data, fds


def _leave_server(control, wakeup):
    """In a new child: nothing of the server's survives but the interpreter and its
    imports."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    control.close()
    for fd in wakeup:
        os.close(fd)


class _Spare:
    """A child forked ahead of the next request, waiting for it on a socket of its own:
    a request then costs handing it over, not a fork and the child's first steps (its
    scheduling, the copies of the pages it touches first)."""

    def __init__(self, control, wakeup):
        ours, theirs = socket.socketpair(socket.AF_UNIX, control.type)
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            ours.close()
            _leave_server(control, wakeup)
            _tether._set_process_name("tether-spare")  # ps tells it from children at work
            data, fds = receive_message(theirs)
            theirs.close()
            if not data:
                os._exit(0)  # the server ended before a request came
            _run_child(check_request(decode(data)), fds)
        theirs.close()
        self.sock = ours

    def hand(self, data, fds):
        """Give the spare a request; False if it is gone (the caller forks instead)."""
        try:
            send_message(self.sock, data, fds)
            return True
        except OSError:
            return False
        finally:
            self.sock.close()


def _fork_child(request, fds, control, wakeup):
    """Fork a child for request (its cwd and name) in the parent; the pid."""
    pid = os.fork()
    if pid:
        return pid
    _leave_server(control, wakeup)
    _run_child(request, fds)


def _run_child(request, fds):
    """The child's life from its request (cwd and name) on; never returns."""
    cwd, name = request
    conn_fd, out_fd, err_fd = fds
    code = 1
    try:
        _tether._set_process_name(os.path.basename(sys.executable)[:15])
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(out_fd)
        os.close(err_fd)
        if cwd:
            os.chdir(cwd)
        os.environ["TETHER_CHILD_FD"] = str(conn_fd)
        os.environ["TETHER_CHILD_NAME"] = name or "child"
        os.environ["TETHER_CHILD_PARENT"] = str(os.getppid())
        _child.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _send(control, message):
    send_message(control, encode(message))


def _reap(control):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _send(control, {"exit": pid, "status": code})


def main():
    control = socket.socket(fileno=int(os.environ.pop("TETHER_CHILD_FD")))
    os.environ.pop("TETHER_CHILD_NAME", None)
    _child._die_with_parent(int(os.environ.pop("TETHER_CHILD_PARENT", "0") or 0))
    # SIGCHLD wakes the select through this pipe; children are reaped in the loop.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    # What is imported now stays shared with every child: keep the collector from
    # touching (and so copying) those pages in each of them.
    gc.collect()
    gc.freeze()
    spare = _Spare(control, (wake_r, wake_w))
    _send(control, {"ready": os.getpid()})
    while True:
        try:
            readable, _, _ = select.select([control, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in readable:
            try:
                os.read(wake_r, 512)
            except BlockingIOError:
                pass
            _reap(control)
        if control not in readable:
            continue
        fds = []
        try:
            data, fds = receive_message(control)
            if not data:
                break  # the host is gone
            request = check_request(decode(data))
            if len(fds) != 3:
                raise ProtocolError(f"expected 3 descriptors, got {len(fds)}")
            used, spare = spare, None  # handed the request, or given up if that fails
            if used is not None and used.hand(data, fds):
                pid = used.pid
            else:
                sys.stdout.flush()
                sys.stderr.flush()
                pid = _fork_child(request, fds, control, (wake_r, wake_w))
            _send(control, {"pid": pid})
        except Exception as e:  # a bad request costs that request only
            _send(control, {"error": f"{type(e).__name__}: {e}"[:1024]})
        finally:
            for fd in fds:
                os.close(fd)
        if spare is None:
            spare = _Spare(control, (wake_r, wake_w))  # ready for the next request
    os._exit(0)
