"""Buffers in shared memory (protocol version 2) reaching a Python client: a C host's
tether_buffer arrives as a read-only memoryview of the same memory, with no copy, and
lives as long as what was made from it."""

import gc
import os
import re
import subprocess
import sys

import pytest

import tether


@pytest.fixture
def conn(conn):
    """The module's connection, once the host shows it can make buffers (the portable
    build has no shared memory for them)."""
    try:
        conn.root.make_buffer(1)
    except tether.TetherError as e:
        if "not supported" in str(e):
            pytest.skip("no shared memory on this platform")
        raise
    return conn


def test_a_buffer_arrives_as_a_read_only_memoryview(conn):
    v = conn.root.make_buffer(1_000_000)
    assert isinstance(v, memoryview)
    assert v.readonly
    assert len(v) == 1_000_000
    assert bytes(v[:4]) == bytes([0, 7, 14, 21])
    assert v[999_999] == (999_999 * 7) & 0xFF
    with pytest.raises(TypeError):
        v[0] = 1


def test_an_empty_buffer_is_an_empty_view(conn):
    v = conn.root.make_buffer(0)
    assert isinstance(v, memoryview) and len(v) == 0


def test_numpy_reads_the_shared_memory_without_a_copy(conn):
    np = pytest.importorskip("numpy")
    a = np.frombuffer(conn.root.make_buffer(1 << 20), dtype=np.uint8)
    gc.collect()  # nothing but the array holds the memory now
    assert not a.flags.writeable
    expected = (np.arange(1 << 20, dtype=np.uint64) * 7) & 0xFF
    assert (a == expected).all()



# ---- a script sending buffers -------------------------------------------------------


def test_big_bytes_travel_as_a_buffer_and_come_back_as_one(conn):
    data = bytes(range(256)) * 4096  # 1 MiB, over the default threshold
    back = conn.root.echo(data)
    assert isinstance(back, memoryview) and back.readonly
    assert back == data


def test_bytes_under_the_threshold_stay_bytes(conn):
    data = b"x" * (tether.buffer_threshold() - 1)
    assert conn.root.echo(data) == data
    assert isinstance(conn.root.echo(data), bytes)


def test_the_threshold_is_an_option(conn):
    before = tether.set_buffer_threshold(16)
    try:
        assert tether.buffer_threshold() == 16
        assert isinstance(conn.root.echo(b"0123456789abcdef"), memoryview)
        assert isinstance(conn.root.echo(b"0123456789abcde"), bytes)
    finally:
        tether.set_buffer_threshold(before)
    with pytest.raises(OverflowError):
        tether.set_buffer_threshold(-1)


def test_bytearray_and_memoryview_travel_as_buffers(conn):
    data = bytearray(b"ab" * 300_000)
    assert conn.root.echo(data) == data
    view = memoryview(bytes(range(256)) * 2048)
    assert conn.root.echo(view) == view
    # A view that is not contiguous is gathered first.
    strided = memoryview(bytes(range(256)) * 8192)[::2]
    assert conn.root.echo(strided) == strided.tobytes()


def test_64_mib_go_both_ways_over_the_frame_limit(conn):
    data = b"\x5a" * (64 << 20)  # four times the 16 MiB frame limit
    back = conn.root.echo(data)
    assert len(back) == 64 << 20 and back[0] == 0x5A and back[-1] == 0x5A
    del back


def test_buffers_in_keyword_arguments_async_and_notify(conn):
    data = b"k" * 500_000
    args, kwargs = conn.root.echo_args(1, big=data)
    assert args == [1] and kwargs["big"] == data
    assert conn.async_.echo(data).result(timeout=10) == data
    conn.notify.echo(data)  # goes, and the connection stays in order
    assert conn.root.echo(2) == 2


def test_a_numpy_array_keeps_its_dtype_and_shape(conn):
    np = pytest.importorskip("numpy")
    frame = np.arange(1080 * 1920 * 4, dtype=np.uint32).astype(np.uint8).reshape(1080, 1920, 4)
    back = conn.root.echo(frame)
    assert isinstance(back, np.ndarray)
    assert back.dtype == np.uint8 and back.shape == (1080, 1920, 4)
    assert not back.flags.writeable
    assert (back == frame).all()
    for dtype in ("i1", "u2", "i4", "i8", "u8", "f2", "f4", "f8", "?"):
        small = np.ones((2, 3), dtype=dtype)  # arrays go as buffers whatever their size
        back = conn.root.echo(small)
        assert back.dtype == small.dtype and back.shape == (2, 3) and (back == small).all()
    scalar = conn.root.echo(np.array(2.5))
    assert scalar.shape == () and scalar == 2.5
    deep = np.arange(2**5, dtype="i2").reshape((2,) * 5 + (1,) * 27)  # 32 dimensions
    assert conn.root.echo(deep).shape == deep.shape  # a payload over 255 bytes: ext 16
    empty = conn.root.echo(np.zeros((0, 3), dtype="f4"))
    assert empty.shape == (0, 3) and empty.dtype == np.float32
    # Not contiguous: gathered in C order.
    strided = np.arange(100, dtype="f8").reshape(10, 10)[:, ::3]
    assert (conn.root.echo(strided) == strided).all()


def test_an_array_of_a_format_that_cannot_travel_is_refused_clearly(conn):
    np = pytest.importorskip("numpy")
    with pytest.raises(TypeError, match="element format 'Zd'"):
        conn.root.echo(np.zeros(3, dtype=complex))
    assert conn.root.echo(1) == 1  # nothing was sent; the connection goes on


def test_array_array_arrives_as_an_array(conn):
    import array

    a = array.array("d", [1.5, 2.5, 3.5])
    back = conn.root.echo(a)
    try:
        import numpy

        assert isinstance(back, numpy.ndarray) and list(back) == [1.5, 2.5, 3.5]
    except ImportError:
        assert back.format == "d" and back.tolist() == [1.5, 2.5, 3.5]


CHILD = """
def total(data):
    return sum(memoryview(data).cast("B")[::4096])

def frame(height, width):
    import numpy
    return numpy.full((height, width, 4), 7, dtype=numpy.uint8)

def mean_per_channel(frame):
    return [float(frame[..., c].mean()) for c in range(frame.shape[-1])]
"""


def needs_shared_memory():
    if tether.protocol_version < 2:
        pytest.skip("no shared memory in this build (the portable one)")


def test_a_spawned_child_gets_and_returns_buffers():
    needs_shared_memory()
    np = pytest.importorskip("numpy")
    data = bytes(range(256)) * 65536  # 16 MiB
    with tether.run_script(CHILD) as child:
        assert child.total(data) == sum(data[::4096])
        f = child.frame(1080, 1920)  # a child's array, through shared memory
        assert isinstance(f, np.ndarray) and f.shape == (1080, 1920, 4) and (f == 7).all()
        rgba = np.zeros((1080, 1920, 4), dtype=np.uint8)
        rgba[..., 2] = 200
        assert child.mean_per_channel(rgba) == [0.0, 0.0, 200.0, 0.0]


def test_a_service_of_the_script_returns_a_buffer_to_the_host(conn):
    np = pytest.importorskip("numpy")

    @conn.service
    def make_array(n):
        return np.arange(n, dtype=np.float64)

    back = conn.root.call_client(conn.registered_name, "make_array", [100_000])
    assert isinstance(back, np.ndarray) and back.dtype == np.float64
    assert back[-1] == 99_999.0


def test_a_c_hosts_array_buffer_arrives_as_a_numpy_array(conn):
    np = pytest.importorskip("numpy")
    image = conn.root.make_image(1080, 1920)
    assert isinstance(image, np.ndarray) and not image.flags.writeable
    assert image.dtype == np.uint8 and image.shape == (1080, 1920, 4)
    assert image[0, 1, 3] == (7 * 7) & 0xFF
    assert conn.root.make_image(0, 5).shape == (0, 5, 4)


def test_without_numpy_an_array_is_a_memoryview_of_its_format_and_shape(host, conn):
    script = (
        "import sys; sys.modules['numpy'] = None\n"  # as if numpy were not installed
        "import tether\n"
        f"c = tether.connect(address={host.address!r}, name='no-numpy')\n"
        "image = c.root.make_image(3, 5)\n"
        "print(type(image).__name__, image.format, image.shape, image.readonly)\n"
        "import array\n"
        "back = c.root.echo(array.array('h', [1, -2]))\n"
        "print(back.format, back.tolist())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["memoryview B (3, 5, 4) True", "h [1, -2]"]


def test_the_frame_stream_example_streams_frames_to_numpy():
    """examples/frame_stream.c spawns examples/frame_stream.py and hands it 30 frames of
    1920x1080 RGBA, a new buffer each; every answer must be right, and the frames must
    have reused their memory (the script's side says when it is done with each)."""
    needs_shared_memory()
    pytest.importorskip("numpy")
    from conftest import BUILD_DIR, SOURCE_DIR

    env = dict(os.environ, TETHER_PYTHON=sys.executable,
               TETHER_PYTHONPATH=os.path.join(BUILD_DIR, "python"))
    out = subprocess.run(
        [os.path.join(BUILD_DIR, "example-frame_stream"), "30"], cwd=SOURCE_DIR, env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "30 frames of 1920x1080 RGBA (7.9 MiB each)" in lines[1]
    assert "the transfer" in lines[2]
    pieces = int(re.search(r"took (\d+) pieces of shared memory", lines[3])[1])
    assert 1 <= pieces <= 3, lines[3]
    assert lines[4].endswith("B 128.00 A 255.00 (as expected)")


def shared_memories():
    """This process's descriptors of tether's shared memory."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:tether-buffer")
        except OSError:
            pass
    return n


def test_a_stream_of_sends_reuses_its_memory(conn):
    for i in range(10):  # warm: what the stream needs at once
        assert conn.root.echo(bytes([i]) * 300_000)[-1] == i
    before = shared_memories()
    for i in range(40):
        assert conn.root.echo(bytes([i]) * 300_000)[-1] == i
    # A buffer comes back once both sides said done, which may take a send or two:
    # a few more in flight, not one per send.
    assert shared_memories() - before <= 8, "each send made new shared memory"


def test_memory_a_script_still_holds_is_not_reused(conn):
    kept = conn.root.echo(b"a" * 300_000)  # maps the memory this process sent
    for _ in range(5):
        conn.root.echo(b"b" * 300_000)  # would take that memory if it were free
    assert kept == b"a" * 300_000
    np = pytest.importorskip("numpy")
    arrays = [conn.root.echo(np.full(100_000, i, dtype=np.int32)) for i in range(5)]
    for _ in range(5):
        conn.root.echo(np.zeros(100_000, dtype=np.int32))
    assert [int(a[0]) for a in arrays] == [0, 1, 2, 3, 4]


def test_shared_memory_and_arrays_travel_without_a_copy(conn):
    np = pytest.importorskip("numpy")
    frame = tether.shared_array((1080, 1920, 4), np.uint8)
    assert frame.flags.writeable and frame.shape == (1080, 1920, 4) and not frame.any()
    frame[..., 0] = 9
    back = conn.root.echo(frame)  # the same memory there and back
    assert back.dtype == np.uint8 and back.shape == (1080, 1920, 4)
    frame[0, 0, 0] = 77  # the sender's writes show through: one memory, no copies
    assert back[0, 0, 0] == 77 and back[1, 1, 0] == 9
    raw = tether.shared_memory(1000)  # below the threshold, and still shared
    raw[:5] = b"hello"
    echoed = conn.root.echo(raw)
    assert isinstance(echoed, memoryview) and bytes(echoed[:5]) == b"hello"
    raw[0] = ord("j")
    assert bytes(echoed[:5]) == b"jello"
    # A part of it is copied, as any other view would be.
    assert conn.root.echo(frame[:10]).shape == (10, 1920, 4)
    # A received buffer sent on goes as itself too.
    again = conn.root.echo(back)
    frame[0, 0, 0] = 78
    assert again[0, 0, 0] == 78
    with pytest.raises(ValueError):
        tether.shared_memory(0)


def test_shared_memory_where_the_build_has_none():
    if tether.protocol_version >= 2:
        pytest.skip("this build has shared memory (see the tests above)")
    with pytest.raises(NotImplementedError, match="no shared memory on this platform"):
        tether.shared_memory(100)
