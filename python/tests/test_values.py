"""Plain data by value: every type round-trips through the C host's echo, and what cannot
be sent fails with a clear exception before anything is sent."""

import math
import os
import threading

import pytest

import tether
from tether import _tether


@pytest.fixture(autouse=True)
def bytes_inline():
    """Bytes of any size inside the frame, as they travel over TCP: this module tests the
    frame's encoding; bytes through shared memory are test_buffers.py's."""
    before = tether.set_buffer_threshold(2**63)
    yield
    tether.set_buffer_threshold(before)

ROUND_TRIP = [
    None,
    True,
    False,
    0,
    1,
    -1,
    127,
    128,
    -32,
    -33,
    255,
    256,
    65535,
    65536,
    2**32 - 1,
    2**32,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**7),
    -(2**7) - 1,
    -(2**15) - 1,
    -(2**31) - 1,
    -(2**63),
    0.0,
    -0.0,
    1.5,
    1e300,
    -2.5e-300,
    math.inf,
    -math.inf,
    "",
    "hello",
    "x" * 31,
    "x" * 32,
    "y" * 255,
    "y" * 256,
    "z" * 70000,
    "h\u00e9llo w\u00f6rld \u2603 \U0001f600",
    b"",
    b"\x00\xff" * 10,
    b"b" * 256,
    b"b" * 70000,
    [],
    [1, "two", 3.0, None, [True, b"x"]],
    list(range(20)),
    list(range(70000)),
    {},
    {"a": 1, "b": [1, 2], "c": {"d": None}},
    {i: str(i) for i in range(20)},
    {1: "int key", None: "nil key", 2.5: "float key", b"k": "bytes key", False: "bool key"},
]


@pytest.mark.parametrize("value", ROUND_TRIP, ids=lambda v: repr(v)[:40])
def test_round_trip_through_the_host(conn, value):
    got = conn.root.echo(value)
    assert got == value
    assert type(got) is type(value)


@pytest.mark.parametrize("value", ROUND_TRIP, ids=lambda v: repr(v)[:40])
def test_round_trip_through_the_codec(value):
    got = _tether._unpack(_tether._pack(value))
    assert got == value
    assert type(got) is type(value)


def test_nan_round_trips(conn):
    assert math.isnan(conn.root.echo(math.nan))


def test_tuples_arrive_as_lists(conn):
    assert conn.root.echo((1, (2, 3), [4, (5,)])) == [1, [2, 3], [4, [5]]]


def test_tuple_keys_stay_hashable(conn):
    value = {(1, 2): "a", (3, (4, 5)): "b", ("x",): ["list", "value"]}
    assert conn.root.echo(value) == value


def test_byte_like_values_arrive_as_bytes(conn):
    assert conn.root.echo(bytearray(b"abc")) == b"abc"
    assert conn.root.echo(memoryview(b"defg")[1:3]) == b"ef"
    assert type(conn.root.echo(bytearray())) is bytes


def test_subclasses_of_plain_types_arrive_as_the_plain_type(conn):
    import collections
    import enum

    class Color(enum.IntEnum):
        RED = 1

    Point = collections.namedtuple("Point", "x y")

    class Name(str):
        pass

    assert conn.root.echo([Color.RED, Point(1, 2), Name("n")]) == [1, [1, 2], "n"]
    assert type(conn.root.echo(Color.RED)) is int


def test_arguments_and_keyword_arguments_reach_the_host(conn):
    args, kwargs = conn.root.echo_args(1, "a", [2], x=None, y={"k": b"v"})
    assert args == [1, "a", [2]]
    assert kwargs == {"x": None, "y": {"k": b"v"}}
    assert conn.root.echo_args() == [[], {}]


def test_one_mebibyte_of_bytes(conn):
    data = bytes(range(256)) * 4096
    assert conn.root.echo(data) == data


# Around the sizes where big frames change paths (64 KiB: sent from the caller's memory,
# read into a buffer the result keeps), a socket's buffer, 1 MiB, and past the 4 MiB a
# process keeps for the next big frame.
BIG_SIZES = [65535, 65536, 65537, 212992 + 3, (1 << 20) - 1, 1 << 20, (1 << 20) + 1,
             (5 << 20) + 3, 1 << 20]


@pytest.mark.parametrize("size", BIG_SIZES)
def test_big_bytes_round_trip_exactly(conn, size):
    data = os.urandom(size)
    back = conn.root.echo(data)
    assert type(back) is bytes and back == data
    # In a keyword argument and inside a list, the frame's layout differs.
    args, kwargs = conn.root.echo_args([1, data], x=data[::-1])
    assert args == [[1, data]] and kwargs == {"x": data[::-1]}


def test_big_frames_back_to_back_in_one_read(conn):
    """Several big results in flight: a read ends inside one and holds the start of the
    next, which must survive the first's buffer being kept by its result."""
    payloads = [os.urandom((1 << 20) + 7 * i) for i in range(6)]
    futures = [tether.async_(conn.root.echo)(p) for p in payloads]
    assert [f.result(10) for f in futures] == payloads


def test_concurrent_big_senders_do_not_interleave(conn):
    """Threads sending big and small calls on one connection: one lends its bytes to the
    link at a time, the others copy; every frame must arrive whole and in one piece."""
    errors = []

    def worker(k):
        try:
            for i in range(8):
                data = bytes([k, i]) * ((1 << 19) + 13 * k)
                assert conn.root.echo(data) == data
                assert conn.root.echo(k * 100 + i) == k * 100 + i
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_other_values_travel_by_reference_and_come_back_as_themselves(conn):
    class Gadget:
        pass

    gadget = Gadget()
    for obj in [object(), gadget, {1, 2}, print, 1j]:
        assert conn.root.echo(obj) is obj
        assert conn.root.echo([1, {"k": obj}])[1]["k"] is obj
        assert conn.root.echo_args(key=obj) == [[], {"key": obj}]
        assert conn.async_.echo(obj).result(timeout=10) is obj
        conn.notify.note(obj)
    assert conn.root.add(1, 2) == 3


def test_values_outside_a_call_are_plain_data_only_and_name_the_type():
    with pytest.raises(TypeError, match=r"cannot send a value of type 'object' here"):
        _tether._pack(object())

    class Gadget:
        pass

    with pytest.raises(TypeError, match=r"type '.*test_values\..*Gadget'"):
        _tether._pack([1, {"k": Gadget()}])


def test_ints_beyond_64_bits_raise_overflow_error(conn):
    with pytest.raises(OverflowError, match="too large"):
        conn.root.echo(2**64)
    with pytest.raises(OverflowError, match="too small"):
        conn.root.echo(-(2**63) - 1)
    with pytest.raises(OverflowError):
        conn.root.echo({"nested": [10**30]})


def test_too_deep_and_cyclic_values_raise_value_error(conn):
    deep = []
    for _ in range(59):  # 60 levels: the limit
        deep = [deep]
    assert conn.root.echo(deep) == deep
    assert conn.root.echo_args(deep, k=deep) == [[deep], {"k": deep}]
    with pytest.raises(ValueError, match="nested too deeply"):
        conn.root.echo([deep])
    with pytest.raises(ValueError, match="nested too deeply"):
        _tether._pack([deep])
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="reference cycle"):
        conn.root.echo(cyclic)
    d = {}
    d["self"] = d
    with pytest.raises(ValueError):
        conn.root.echo(d)


def test_non_str_keyword_names_are_refused():
    client = _tether.Client("kw")
    with pytest.raises(TypeError, match="keyword argument names must be strings"):
        client.call("echo", (), {1: 2})


def test_unpack_refuses_malformed_bytes():
    with pytest.raises(ValueError):
        _tether._unpack(b"\x92\x01")  # array of 2, one item
    with pytest.raises(ValueError):
        _tether._unpack(b"\xc1")
    with pytest.raises(TypeError, match="extension value"):
        _tether._unpack(b"\xd4\x05\x00")  # fixext 1


def test_unhashable_map_keys_fail_cleanly():
    # {[1]: 2} from a peer: an array key becomes a tuple; a map key cannot be hashed.
    assert _tether._unpack(b"\x81\x91\x01\x02") == {(1,): 2}
    with pytest.raises(TypeError):
        _tether._unpack(b"\x81\x80\x02")


def test_invalid_utf8_from_a_peer_is_malformed():
    # The core checks every string of a frame (docs/protocol.md, Values): bytes that are
    # not UTF-8 never reach the decoder, as a str or as a map key.
    with pytest.raises(ValueError):
        _tether._unpack(b"\xa2\xff\xfe")
    with pytest.raises(ValueError):
        _tether._unpack(b"\x81\xa3\xed\xa0\x80\x01")
    assert _tether._unpack(b"\xa2\xc3\xa9") == "\u00e9"


def test_result_types_are_exported():
    assert tether.Future.__module__ == "tether"
