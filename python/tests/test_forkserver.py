"""The fork server's side of its protocol (tether._forkserver): its own small msgpack codec,
strict about the types the messages use, and a server that answers a malformed request
with an error and keeps serving. The host's side is tests/test-spawn.c."""

import os
import socket
import subprocess
import sys

import pytest

import tether
from tether import _forkserver as fs

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(tether.__file__)))


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, 127, 128, 255, 65536, 2**32 - 1, 2**32, 2**64 - 1, -1, -32, -33,
     -(2**31), -(2**31) - 1, -(2**63), "", "é", "x" * 31, "x" * 32, "x" * 65536, [], [1] * 15,
     [1] * 16, {}, {str(i): i for i in range(16)}, {"cwd": None, "name": "child", "a": [True]}],
)
def test_values_of_the_protocol_types_come_back_as_they_went(value):
    assert fs.decode(fs.encode(value)) == value


def test_a_request_as_the_host_encodes_it():
    # {"cwd": nil, "name": "x"}, as src/endpoints/forkserver.c writes it.
    data = b"\x82\xa3cwd\xc0\xa4name\xa1x"
    assert fs.decode(data) == {"cwd": None, "name": "x"}
    assert fs.encode({"cwd": None, "name": "x"}) == data
    assert fs.check_request(fs.decode(data)) == (None, "x")
    assert fs.check_request({"cwd": "/tmp", "name": "n", "later": 1}) == ("/tmp", "n")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "truncated"),
        (b"\xc1", "type 0xc1"),
        (b"\xcb" + bytes(8), "type 0xcb"),  # float 64
        (b"\xc4\x01a", "type 0xc4"),  # bin
        (b"\xd4\x01\x00", "type 0xd4"),  # fixext
        (b"\xa3ab", "truncated"),
        (b"\xdb\xff\xff\xff\xff", "truncated"),  # a str longer than the message
        (b"\xdd\xff\xff\xff\xff", "truncated"),  # an array count no message can hold
        (b"\x01\x02", "1 bytes after"),
        (b"\x81\x01\x02", "not a str"),
        (b"\x82\xa1a\x01\xa1a\x02", "given twice"),
        (b"\xa1\xff", "not UTF-8"),
        (b"\x91" * 10 + b"\x90", "nested too deeply"),
    ],
)
def test_the_decoder_refuses_what_the_protocol_does_not_use(data, message):
    with pytest.raises(fs.ProtocolError, match=message):
        fs.decode(data)


@pytest.mark.parametrize("value", [1.5, b"x", (1,), {1: 2}, 2**64, -(2**63) - 1, {"a": {1.0}}])
def test_the_encoder_refuses_other_types(value):
    with pytest.raises(fs.ProtocolError):
        fs.encode(value)


@pytest.mark.parametrize(
    "request_, message",
    [([], "not a map"), ({"name": 1}, "name"), ({"cwd": 1, "name": "x"}, "cwd"), ({}, "name")],
)
def test_a_request_of_the_wrong_shape_is_refused(request_, message):
    with pytest.raises(fs.ProtocolError, match=message):
        fs.check_request(request_)


def receive(sock):
    sock.settimeout(30)
    data, fds = fs.receive_message(sock)
    assert not fds
    return fs.decode(data)


# The host makes the control socket SOCK_SEQPACKET on Linux and SOCK_STREAM on its
# portable build (src/platform/platform.h, "message sockets"): the server speaks both.
@pytest.mark.parametrize("kind", [socket.SOCK_SEQPACKET, socket.SOCK_STREAM], ids=["packets", "stream"])
def test_the_server_answers_a_malformed_request_with_an_error_and_goes_on(kind):
    ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
    env = dict(os.environ, TETHER_CHILD_FD=str(theirs.fileno()),
               TETHER_CHILD_PARENT=str(os.getpid()), PYTHONPATH=PACKAGE_PARENT)
    server = subprocess.Popen(
        [sys.executable, "-c", "from tether import _forkserver; _forkserver.main()"],
        env=env, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
    theirs.close()
    fds = [os.open(os.devnull, os.O_RDWR) for _ in range(3)]
    try:
        assert receive(ours) == {"ready": server.pid}
        bad = [
            (b"\xc1", fds, "ProtocolError: msgpack type 0xc1"),
            (b"\x82\xa3cwd\xca\0\0\0\0\xa4name\xa1x", fds, "ProtocolError: msgpack type 0xca"),
            (fs.encode({"cwd": 5, "name": "x"}), fds, "ProtocolError: a cwd"),
            (fs.encode({"cwd": None, "name": "x"}), fds[:1], "ProtocolError: expected 3 desc"),
        ]
        for data, attached, message in bad:
            fs.send_message(ours, data, attached)
            answer = receive(ours)
            assert list(answer) == ["error"] and answer["error"].startswith(message), answer
        # Too long for a message of the protocol: refused, not cut; a stream skips it.
        fs.send_message(ours, b"\xa1x" * (fs.MAX_MESSAGE // 2 + 1), fds)
        assert receive(ours)["error"].startswith("ProtocolError: a message over 64 KiB")
        fs.send_message(ours, b"\xc1", fds)
        assert receive(ours)["error"].startswith("ProtocolError: msgpack type 0xc1")
    finally:
        for fd in fds:
            os.close(fd)
        ours.close()  # the end of its control socket: the server exits
        assert server.wait(30) == 0
