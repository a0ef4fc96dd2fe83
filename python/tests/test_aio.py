"""asyncio calls: conn.aio, tether.aio, awaiting a tether.Future, cancellation, and the
loop's errors in the host's log (pytest-asyncio runs each test in a loop of its own)."""

import asyncio
import gc
import sys
import time

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
async def test_aio_returns_a_call_started_at_once(conn):
    f = conn.aio.slow(50)
    assert isinstance(f, tether.AioCall)
    # Both: create_task drives it as a coroutine; gather and the others take it as a future,
    # without a task of its own.
    assert asyncio.iscoroutine(f) and asyncio.isfuture(f)
    assert repr(f) == "<tether.AioCall 'slow' pending>"
    for _ in range(500):  # the call goes on without being awaited
        if f.done():
            break
        await asyncio.sleep(0.01)
    assert f.result() == 50 and f.exception() is None and not f.cancelled()
    assert repr(f) == "<tether.AioCall 'slow' finished>"
    assert await f == 50 and await f == 50  # awaited twice: the same result
    with pytest.raises(asyncio.InvalidStateError):
        conn.aio.slow(1000).result()


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


# ---- aio calls wherever asyncio takes an awaitable --------------------------------------


async def _stuck_calls(conn, n):
    """n calls of the host's service "stuck" started; returns them and a coroutine that
    waits until the host has seen all n cancelled."""
    kept, cancelled = await conn.aio.stuck_state()
    calls = [conn.aio.stuck() for _ in range(n)]
    assert await asyncio.wait_for(_until(conn, lambda s: s[0] == kept + n), 5)
    return calls, asyncio.wait_for(_until(conn, lambda s: s[1] == cancelled + n), 5)


@pytest.mark.asyncio
async def test_create_task(conn):
    task = asyncio.create_task(conn.aio.add(2, 3), name="sum")
    assert "coro=<add()" in repr(task)
    assert await task == 5
    failing = asyncio.create_task(conn.aio.fail("ValueError", "in a task"))
    with pytest.raises(ValueError, match="in a task"):
        await failing
    (call,), host_saw_cancel = await _stuck_calls(conn, 1)
    task = asyncio.create_task(call)
    await asyncio.sleep(0.01)  # the task waits on the call
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.cancelled()
    assert await host_saw_cancel


@pytest.mark.asyncio
async def test_a_task_cancelled_before_it_ran_cancels_the_call(conn):
    (call,), host_saw_cancel = await _stuck_calls(conn, 1)
    task = asyncio.create_task(call)
    task.cancel()  # the task throws CancelledError into the call before its first step
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await host_saw_cancel


@pytest.mark.asyncio
async def test_gather_of_more_calls_than_the_hosts_window(conn):
    # The host runs 1024 of them at a time; the others wait on this side, and the
    # gather simply takes longer.
    calls = 100_000
    results = await asyncio.gather(*(conn.aio.add(i, 1) for i in range(calls)))
    assert results == list(range(1, calls + 1))


@pytest.mark.asyncio
async def test_ensure_future_and_gather(conn):
    call = conn.aio.add(1, 1)
    future = asyncio.ensure_future(call)  # a future already: no task of its own
    assert future is call and await future == 2
    assert await asyncio.gather(conn.aio.add(1, 2), conn.aio.echo("x")) == [3, "x"]
    results = await asyncio.gather(conn.aio.add(1, 1), conn.aio.fail("KeyError", "k"),
                                   return_exceptions=True)
    assert results[0] == 2 and isinstance(results[1], KeyError)
    calls, host_saw_cancel = await _stuck_calls(conn, 2)
    gathered = asyncio.gather(*calls)
    await asyncio.sleep(0.01)
    gathered.cancel()  # cancels each call
    with pytest.raises(asyncio.CancelledError):
        await gathered
    assert await host_saw_cancel


@pytest.mark.asyncio
async def test_wait_for(conn):
    assert await asyncio.wait_for(conn.aio.add(4, 4), 5) == 8
    (call,), host_saw_cancel = await _stuck_calls(conn, 1)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(call, 0.05)
    assert await host_saw_cancel


@pytest.mark.asyncio
async def test_shield(conn):
    assert await asyncio.shield(conn.aio.add(5, 5)) == 10
    inner = asyncio.ensure_future(conn.aio.slow(200))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(inner), 0.02)
    assert await inner == 200  # the shielded call went on


@pytest.mark.asyncio
async def test_wait(conn):
    # asyncio.wait refuses whatever is a coroutine, aio calls too: it takes their tasks.
    with pytest.raises(TypeError, match="coroutines is forbidden"):
        await asyncio.wait([conn.aio.add(1, 1)])
    (call,), host_saw_cancel = await _stuck_calls(conn, 1)
    quick = asyncio.create_task(conn.aio.slow(10))
    stuck = asyncio.create_task(call)
    done, pending = await asyncio.wait({quick, stuck}, return_when=asyncio.FIRST_COMPLETED)
    assert done == {quick} and pending == {stuck} and quick.result() == 10
    done, pending = await asyncio.wait(pending, timeout=0.02)
    assert not done
    stuck.cancel()
    assert await host_saw_cancel


@pytest.mark.asyncio
async def test_as_completed(conn):
    results = []
    for next_done in asyncio.as_completed([conn.aio.slow(300), conn.aio.slow(10)]):
        results.append(await next_done)
    assert results == [10, 300]
    calls = [conn.aio.slow(200), conn.aio.fail("ValueError", "first")]
    outcomes = []
    for next_done in asyncio.as_completed(calls):
        try:
            outcomes.append(await next_done)
        except ValueError as e:
            outcomes.append(str(e))
    assert outcomes == ["first", 200]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is new in 3.11")
@pytest.mark.asyncio
async def test_task_group(conn):
    async with asyncio.TaskGroup() as group:
        a = group.create_task(conn.aio.add(1, 2))
        b = group.create_task(conn.aio.slow(20))
    assert (a.result(), b.result()) == (3, 20)
    # One call failing cancels the group's other tasks, and so their calls.
    (call,), host_saw_cancel = await _stuck_calls(conn, 1)
    with pytest.raises(ExceptionGroup) as info:
        async with asyncio.TaskGroup() as group:
            group.create_task(call)
            group.create_task(conn.aio.fail("ValueError", "one failed"))
    assert [type(e) for e in info.value.exceptions] == [ValueError]
    assert await host_saw_cancel


@pytest.mark.asyncio
async def test_cancel_and_close_cancel_the_call(conn):
    calls, host_saw_cancel = await _stuck_calls(conn, 2)
    assert calls[0].cancel() and calls[0].cancelled()
    assert repr(calls[0]) == "<tether.AioCall 'stuck' cancelled>"
    calls[1].close()  # a coroutine closed unawaited: nobody wants its result
    assert calls[1].cancelled()
    assert await host_saw_cancel
    with pytest.raises(asyncio.CancelledError):
        await calls[0]
    done = conn.aio.add(1, 1)
    assert await done == 2
    assert not done.cancel()  # completed already
    done.close()
    assert done.result() == 2


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
    assert len(messages) == 1  # the loop's handler sent it; asyncio's logger does not again
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


def test_a_loop_started_after_connect_reports_to_the_hosts_log(host):
    # The common script: connect, then asyncio.run(); the loop makes no tether call.
    c = host.connect(name="pytest-run-after")

    async def lost():
        raise RuntimeError("lost in asyncio.run")

    async def main():
        asyncio.get_running_loop().create_task(lost())
        await asyncio.sleep(0.05)

    try:
        asyncio.run(main())
        messages = wait_until(lambda: _logged(host, "lost in asyncio.run"))
        assert len(messages) == 1
        assert messages[0].startswith("[pytest-run-after pid ")
        assert "asyncio: Task exception was never retrieved" in messages[0]
        assert 'raise RuntimeError("lost in asyncio.run")' in messages[0]
    finally:
        c.close()
    asyncio.run(main())  # closed: no longer sent
    time.sleep(0.2)
    assert len(_logged(host, "lost in asyncio.run")) == 1


def test_a_scripts_handler_that_logs_is_chained(host):
    seen = []

    def handler(loop, context):
        seen.append(context["message"])
        loop.default_exception_handler(context)

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(handler)
        loop.call_soon(lambda: 1 / 0)
        await asyncio.sleep(0.05)

    with host.connect(name="pytest-own-handler"):
        asyncio.run(main())
        messages = wait_until(lambda: _logged(host, "pytest-own-handler"))
    assert seen and seen[0].startswith("Exception in callback")
    assert "ZeroDivisionError" in messages[0]


# A script importing asyncio only after connecting: connect must not import logging, and
# the loop's errors still reach the host's log, and the terminal (stderr) as before.
LATE_ASYNCIO = """
import sys
import tether
conn = tether.connect(name="late-asyncio", address=sys.argv[1], timeout=10)
assert "logging" not in sys.modules and "asyncio" not in sys.modules
import asyncio

async def lost():
    raise ValueError("imported after connect")

async def main():
    asyncio.get_running_loop().create_task(lost())
    await asyncio.sleep(0.05)

asyncio.run(main())
conn.close()
print("done", flush=True)
"""


def run_script(source, *args):
    """Run Python source in a process of its own, with this tether package."""
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(tether.__file__)))
    return subprocess.run([sys.executable, "-c", source, *args], capture_output=True,
                          text=True, timeout=60, env=env)


def test_asyncio_imported_after_connect_reports_to_the_hosts_log(host):
    out = run_script(LATE_ASYNCIO, host.address)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "done\n"
    assert "Task exception was never retrieved" in out.stderr  # still printed locally
    messages = wait_until(lambda: _logged(host, "imported after connect"))
    assert len(messages) == 1
    assert "[late-asyncio pid " in messages[0]
    assert "ValueError: imported after connect" in messages[0]


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


# ---- attributes of proxies -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_proxy_attributes_of_a_host_object(conn):
    counter = await conn.aio.make_counter(5)
    assert tether.is_proxy(counter)
    assert await tether.aio_getattr(counter, "value") == 5
    assert await tether.aio_setattr(counter, "label", "hits") is None
    read = asyncio.create_task(tether.aio_getattr(counter, "label"))
    values = await asyncio.gather(tether.aio_getattr(counter, "value"), read)
    assert values == [5, "hits"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        await tether.aio_getattr(counter, "nope")
    with pytest.raises(AttributeError, match="can only set 'label'"):
        await tether.aio_setattr(counter, "value", 1)
    # Refused before anything is sent, as the proxy itself refuses them.
    with pytest.raises(AttributeError, match="underscore"):
        tether.aio_getattr(counter, "_secret")
    with pytest.raises(TypeError, match="attribute name must be str"):
        tether.aio_setattr(counter, 3, 1)
    with pytest.raises(TypeError, match="expects a tether.Proxy"):
        tether.aio_getattr(conn, "name")
    assert await tether.aio_getattr(counter, "value") == 5  # the failures changed nothing


def test_proxy_attributes_need_a_running_loop(conn):
    counter = conn.root.make_counter()
    with pytest.raises(RuntimeError, match="no running event loop"):
        tether.aio_getattr(counter, "value")


# A child whose attribute can be read only once the reading loop has run on: reading it
# with a blocking proxy.when_ready would wait for a file that nothing would ever write.
CHILD = """
import os, sys, time

class Box:
    def __init__(self):
        self.v = 1

    @property
    def when_ready(self):
        deadline = time.monotonic() + 20
        while not os.path.exists(sys.argv[1]):
            if time.monotonic() > deadline:
                raise TimeoutError("the reader's loop did not run meanwhile")
            time.sleep(0.01)
        return "ready"

box = Box()
pid = "the child's variable"
"""


def test_proxy_attributes_of_a_spawned_child(tmp_path):
    flag = tmp_path / "flag"

    async def main(child):
        box = await tether.aio_getattr(child, "box")
        assert tether.is_proxy(box) and box is child.box

        async def write_flag():
            await asyncio.sleep(0.05)
            flag.write_text("go")

        writer = asyncio.create_task(write_flag())
        assert await tether.aio_getattr(box, "when_ready") == "ready"
        await writer

        await tether.aio_setattr(box, "v", [1, (2, 3)])
        assert await tether.aio_getattr(box, "v") == [1, [2, 3]]
        await tether.aio_delattr(box, "v")
        with pytest.raises(AttributeError):
            await tether.aio_getattr(box, "v")
        # Names a ChildProxy keeps for itself (pid) are the child's own here.
        assert await tether.aio_getattr(child, "pid") == "the child's variable"
        assert child.pid != "the child's variable"

    with tether.run_script(CHILD, args=[str(flag)]) as child:
        asyncio.run(main(child))


AWAIT_ONLY = """
import asyncio, sys, threading
import tether

async def main():
    conn = await tether.connect_async(address=sys.argv[1], name="await-only")
    results = [await conn.aio.add(i, 1) for i in range(200)]
    results += await asyncio.gather(*(conn.aio.add(i, 2) for i in range(2000)))
    f = conn.async_.slow(50)
    task = asyncio.ensure_future(f)
    await asyncio.sleep(0)  # the task awaits f: the loop's queue has it
    seen = []
    f.add_done_callback(lambda fut: seen.append(threading.current_thread().name))
    results.append(await task)
    conn.close()
    return results, seen

results, seen = asyncio.run(main())
assert results == [i + 1 for i in range(200)] + [i + 2 for i in range(2000)] + [50], results
print(sorted(t.name for t in threading.enumerate()), seen)
"""


def test_awaited_calls_complete_on_the_loop_without_a_callback_thread(host):
    # A completion goes from tether's I/O thread to the loop through the loop's queue: no
    # other Python thread takes part (the done-callback thread is never started), and a
    # done-callback added to an awaited future runs on the loop's thread when it drains.
    out = run_script(AWAIT_ONLY, host.address)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "['MainThread'] ['MainThread']\n"


@pytest.mark.asyncio
async def test_a_future_awaited_twice_and_with_callbacks(conn):
    done = []
    f = conn.async_.add(2, 3)
    f.add_done_callback(done.append)         # its own callback first: awaited through it
    assert await f == 5 and await f == 5
    g = conn.async_.add(1, 1)
    assert await g == 2 and await g == 2      # the second await falls back the same way
    assert await asyncio.wait_for(conn.async_.add(4, 4), 5) == 8
    assert wait_until(lambda: done == [f])


def test_a_completion_queue_held_by_its_reader_stays_quiet_until_drained(conn):
    # What the loop's own thread completes while it reads (serve="loop") is queued without
    # making the descriptor readable: it drains at once itself. Another thread's completion
    # still raises the descriptor.
    import select
    import threading

    from tether import _tether

    q = _tether.CompletionQueue()

    def readable():
        return bool(select.select([q.fileno()], [], [], 0)[0])

    f = conn.async_.add(1, 2)
    assert f.result(5) == 3
    q.hold()
    assert q.watch(f) is True      # complete already: queued at once, on this thread
    assert not readable()
    assert q.release() is True
    assert q.drain() == [f] and not readable()

    g = conn.async_.add(2, 2)
    assert g.result(5) == 4
    q.hold()
    other = threading.Thread(target=lambda: q.watch(g))
    other.start()
    other.join()
    assert readable()               # not the holder's: the descriptor says so
    assert q.release() is False
    assert q.drain() == [g] and not readable()


def test_a_loop_reading_its_connection_settles_its_awaits_itself(host):
    # serve="loop": the answers of the loop's aio calls are read by its thread, which
    # settles them in the same turn; sequential, gathered and cancelled calls alike.
    async def main():
        c = host.connect(serve="loop")
        try:
            for i in range(300):
                assert await c.aio.add(i, 1) == i + 1
            assert await asyncio.gather(*(c.aio.add(i, i) for i in range(500))) == [
                2 * i for i in range(500)]
            task = asyncio.ensure_future(c.aio.slow(2000))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await c.aio.add(20, 22) == 42
        finally:
            c.close()

    asyncio.run(main())
