"""Buffers in shared memory (protocol version 2) reaching a Python client: a C host's
tether_buffer arrives as a read-only memoryview of the same memory, with no copy, and
lives as long as what was made from it."""

import gc

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

