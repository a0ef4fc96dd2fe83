"""asyncio calls: conn.aio, tether.aio, awaiting a tether.Future, cancellation, and the
loop's errors in the host's log (pytest-asyncio runs each test in a loop of its own)."""

import asyncio
import gc

import pytest

import tether

from conftest import wait_until


@pytest.mark.asyncio
async def test_await_results(conn):
    assert await conn.aio.add(2, 3) == 5
    assert await conn.aio.echo_args(1, k="v") == [[1], {"k": "v"}]
    assert await conn.aio["echo"]([1, (2,)]) == [1, [2]]
    assert await tether.aio(conn.root.add)(4, 5) == 9
    assert await conn.aio.add.with_timeout(5)(1, 1) == 2
    assert await conn.async_.add(6, 7) == 13  # a tether.Future is awaitable


@pytest.mark.asyncio
async def test_aio_returns_an_asyncio_future_started_at_once(conn):
    f = conn.aio.slow(50)
    assert isinstance(f, asyncio.Future)
    for _ in range(500):  # the call goes on without being awaited
        if f.done():
            break
        await asyncio.sleep(0.01)
    assert f.result() == 50


@pytest.mark.asyncio
async def test_remote_exceptions(conn):
    with pytest.raises(ValueError, match="bad value"):
        await conn.aio.fail("ValueError", "bad value")
    with pytest.raises(tether.RemoteError) as info:
        await conn.aio.fail("game.ActorError", "no actor")
    assert info.value.remote_type == "game.ActorError"
    with pytest.raises(tether.NoSuchServiceError):
        await conn.aio.nope()
    with pytest.raises(OverflowError, match="too large"):
        conn.aio.echo(2**70)  # raised before anything is sent
    with pytest.raises(ValueError):
        await conn.async_.fail("ValueError", "from a future")


@pytest.mark.asyncio
async def test_await_does_not_block_the_loop(conn):
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    t = asyncio.ensure_future(ticker())
    assert await conn.aio.slow(300) == 300
    t.cancel()
    assert ticks >= 10


@pytest.mark.asyncio
async def test_cancelling_the_awaiting_task_cancels_the_remote_call(conn):
    kept, cancelled = await conn.aio.stuck_state()

    async def caller():
        return await conn.aio.stuck()

    task = asyncio.ensure_future(caller())
    assert await asyncio.wait_for(_until(conn, lambda s: s[0] == kept + 1), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The host sees its request cancelled.
    assert await asyncio.wait_for(_until(conn, lambda s: s[1] == cancelled + 1), 5)


@pytest.mark.asyncio
async def test_cancelling_an_awaited_tether_future_cancels_the_call(conn):
    _, cancelled = await conn.aio.stuck_state()
    future = conn.async_.stuck()
    task = asyncio.ensure_future(asyncio.wait_for(future, 0.1))
    with pytest.raises(asyncio.TimeoutError):
        await task
    assert future.cancelled()
    assert await asyncio.wait_for(_until(conn, lambda s: s[1] == cancelled + 1), 5)


async def _until(conn, predicate):
    while not predicate(await conn.aio.stuck_state()):
        await asyncio.sleep(0.01)
    return True


@pytest.mark.asyncio
async def test_many_concurrent_awaits(conn):
    # 1000: the host lets a client have up to 1024 calls in flight (max_in_flight).
    results = await asyncio.gather(*(conn.aio.add(i, i) for i in range(1000)))
    assert results == [2 * i for i in range(1000)]
    slow = await asyncio.gather(*(conn.aio.slow(100) for _ in range(50)))
    assert slow == [100] * 50


@pytest.mark.asyncio
async def test_closing_fails_pending_awaits(host):
    c = host.connect()
    f = c.aio.stuck()
    c.close()
    with pytest.raises(tether.CancelledError):
        await f


def test_aio_calls_need_a_running_loop(conn):
    with pytest.raises(RuntimeError, match="no running event loop"):
        conn.aio.add(1, 2)


def test_aio_of_other_things_is_a_type_error(conn):
    assert isinstance(tether.aio(conn.async_.add), tether.RemoteMethod)
    aio_add = conn.aio.add
    assert tether.aio(aio_add) is aio_add
    with pytest.raises(TypeError):
        tether.aio(conn.notify.add)
    with pytest.raises(TypeError):
        tether.aio(print)


# ---- the loop's errors in the host's log ---------------------------------------------


def _logged(host, text):
    return [m for level, m in host.log_lines() if level == 3 and text in m]


@pytest.mark.asyncio
async def test_unawaited_task_exception_reaches_the_hosts_log(host, conn):
    await conn.aio.add(1, 1)  # an aio call hooks the loop

    async def lost():
        raise RuntimeError("nobody awaited lost()")

    asyncio.get_running_loop().create_task(lost())
    await asyncio.sleep(0.05)
    gc.collect()  # the task is reported when it is collected
    messages = await asyncio.to_thread(wait_until, lambda: _logged(host, "nobody awaited lost()"))
    assert messages
    text = messages[0]
    assert "asyncio: Task exception was never retrieved" in text
    assert "Traceback (most recent call last)" in text
    assert 'raise RuntimeError("nobody awaited lost()")' in text


@pytest.mark.asyncio
async def test_loop_errors_go_on_to_the_previous_handler(host):
    seen = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: seen.append(context["message"]))
    with host.connect() as c:  # made in a running loop: hooks it

        def broken_callback():
            raise KeyError("in a callback")

        loop.call_soon(broken_callback)
        await asyncio.sleep(0.05)
        assert seen and seen[0].startswith("Exception in callback")
        messages = await asyncio.to_thread(wait_until, lambda: _logged(host, "in a callback"))
        assert "KeyError: 'in a callback'" in messages[0]
        await c.aio.add(1, 1)  # the handler is installed once per loop
        loop.call_exception_handler({"message": "once"})
        assert seen[-1] == "once"
        assert len(seen) == 2


@pytest.mark.asyncio
async def test_connect_async(host):
    c = await tether.connect_async(address=host.address, name="pytest-async", timeout=10)
    try:
        assert await c.aio.add(20, 22) == 42
    finally:
        c.close()
    with pytest.raises((ConnectionRefusedError, FileNotFoundError)):
        await tether.connect_async(address="unix:/nonexistent/tether.sock")


def test_await_future_works_without_a_connection_in_the_loop(conn):
    # A future made outside any loop, awaited in one started later.
    f = conn.async_.slow(20)

    async def main():
        return await f

    assert asyncio.run(main()) == 20
