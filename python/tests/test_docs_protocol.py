"""The bytes of docs/protocol.md are the bytes on the wire.

Each ```block marked `<!-- checked: bytes -->` is a frame of the worked examples, in hex:
on each line, the bytes (two hex digits each, or "text" for a string's UTF-8 after its
header) come before the comment. Every one must hold a length prefix that counts its body
and a body that is one MessagePack value. Then, against a real host (tether-testhost,
named "demo" like the host of the examples) over a raw Unix socket, with no tether code
on the client's side:

- the documented HELLO is sent as it stands, and the host accepts it;
- the host's WELCOME is, byte for byte, the documented one with the host's real pid;
- the HELLO the Python package really sends is the documented one with its real pid and
  Python version, byte for byte;
- the documented REQUEST add(2, 3) is sent as it stands, and the host's RESPONSE is the
  documented one, byte for byte; so is the error RESPONSE to the same request made to a
  service that fails with NameError("name 'x' is not defined").

Re-encoding uses the library's encoder (tether._tether._pack), the decoding the package's
msgpack-free decoder (tether._forkserver.decode).
"""

import os
import platform
import re
import socket
import struct
import subprocess
import sys
import threading

import pytest

import tether
from tether import _forkserver, _tether

from conftest import SOURCE_DIR, Host, private_runtime_dir
from doc_pages import blocks

PROTOCOL_MD = os.path.join(SOURCE_DIR, "docs", "protocol.md")
BYTE = re.compile(r'\s*(?:([0-9a-f]{2})(?=\s|$)|"([^"]*)")')


def frame_bytes(text):
    """The bytes a documented dump shows: each line's leading hex, and a "string" right
    after its fixstr header (of its length) standing for its UTF-8 bytes. The comment
    column starts at the first thing that is neither (a quoted word there is a comment)."""
    out = bytearray()
    for line in text.splitlines():
        pos, last = 0, None
        while m := BYTE.match(line, pos):
            if m[1]:
                last = int(m[1], 16)
                out.append(last)
            else:
                text_bytes = m[2].encode()
                if last is None or not 0xA0 <= last <= 0xBF or last & 0x1F != len(text_bytes):
                    break
                out += text_bytes
                last = None
            pos = m.end()
    return bytes(out)


def documented():
    """{heading: frame bytes} of the checked blocks, the answers named after their question."""
    frames = {}
    for b in blocks(PROTOCOL_MD):
        if b.kind == ("checked", "bytes"):
            key = b.heading
            while key in frames:
                key += "+"
            frames[key] = (b, frame_bytes(b.source))
    return frames


FRAMES = documented()
HELLO = "HELLO from a Python REPL client over a Unix socket (no token)"
WELCOME = "The host's WELCOME"
CALL = "A call of `add(2, 3)` and its answer"
ANSWER, ERROR = CALL + "+", CALL + "++"


def test_the_examples_are_found():
    assert sorted(FRAMES) == sorted([HELLO, WELCOME, CALL, ANSWER, ERROR]), sorted(FRAMES)


@pytest.mark.parametrize("key", sorted(FRAMES))
def test_a_frame_is_its_length_and_one_value(key):
    block, frame = FRAMES[key]
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4, f"{block.where}: the prefix says {length}, " \
                                     f"the body has {len(frame) - 4} bytes"
    if key != ERROR:  # an ERROR ext: the wire test below decodes that one
        value = _forkserver.decode(frame[4:])
        assert _tether._pack(value) == frame[4:], f"{block.where}: not as tether encodes it"


# ---- against a real host ------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_host():
    h = Host("demo").start()
    yield h
    h.stop()


def read_frame(sock):
    def exactly(n):
        got = b""
        while len(got) < n:
            chunk = sock.recv(n - len(got))
            assert chunk, f"the connection closed after {got!r}"
            got += chunk
        return got

    head = exactly(4)
    return head + exactly(struct.unpack(">I", head)[0])


def raw_connection(host):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(host.address[len("unix:"):])
    return sock


def frame_of(value):
    body = _tether._pack(value)
    return struct.pack(">I", len(body)) + body


def test_the_documented_handshake_is_the_real_one(demo_host):
    with raw_connection(demo_host) as sock:
        sock.sendall(FRAMES[HELLO][1])
        welcome = read_frame(sock)
    documented = _forkserver.decode(FRAMES[WELCOME][1][4:])
    assert documented[1]["pid"] == 1000
    documented[1]["pid"] = demo_host.pid  # the one thing that differs
    documented[1]["version"] = tether.protocol_version  # 1 on a build without shared memory
    assert welcome == frame_of(documented), (
        f"{FRAMES[WELCOME][0].where}: the host sent {_forkserver.decode(welcome[4:])}")


def test_the_documented_hello_is_what_the_package_sends(tmp_path):
    # A listener that takes the package's first frame and closes.
    runtime_dir = private_runtime_dir()
    path = os.path.join(runtime_dir, "demo.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(20)
    got = {}

    def take_hello():
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            got["hello"] = read_frame(conn)

    taker = threading.Thread(target=take_hello)
    taker.start()
    script = ("import sys, tether\n"
              "try:\n"
              "    tether.connect(name='repl', address=sys.argv[1], connect_timeout=5)\n"
              "except Exception as e:\n"
              "    print(type(e).__name__)\n")
    client = subprocess.run([sys.executable, "-c", script, "unix:" + path],
                            capture_output=True, text=True, timeout=60)
    taker.join(30)
    listener.close()
    os.unlink(path)
    os.rmdir(runtime_dir)
    assert "hello" in got, client.stdout + client.stderr
    real = _forkserver.decode(got["hello"][4:])
    documented = _forkserver.decode(FRAMES[HELLO][1][4:])
    assert (documented[1]["pid"], documented[1]["language_version"]) == (4242, "3.11.2")
    documented[1]["pid"] = real[1]["pid"]
    documented[1]["language_version"] = platform.python_version()
    if tether.protocol_version < 2:  # a build without shared memory offers version 1 only
        documented[1]["versions"] = [1, tether.protocol_version]
    assert got["hello"] == frame_of(documented), (
        f"{FRAMES[HELLO][0].where}: the package sent {real}")


def call_raw(host, frame):
    with raw_connection(host) as sock:
        sock.sendall(FRAMES[HELLO][1])
        read_frame(sock)  # WELCOME
        sock.sendall(frame)
        return read_frame(sock)


def test_the_documented_call_gets_the_documented_answer(demo_host):
    assert call_raw(demo_host, FRAMES[CALL][1]) == FRAMES[ANSWER][1]


def test_the_documented_error_answer_is_the_real_one(demo_host):
    # The same call, made to the test host's service that fails as it is told.
    request = _forkserver.decode(FRAMES[CALL][1][4:])
    request[4:6] = ["fail", ["NameError", "name 'x' is not defined"]]
    assert call_raw(demo_host, frame_of(request)) == FRAMES[ERROR][1], FRAMES[ERROR][0].where
