"""Where services run: serve="loop" (on the script's asyncio loop, async def services as
tasks) and serve="manual" (inside dispatch(), called by the application's own loop; here
a selectors loop). The C host calls the services back through call_client."""

import asyncio
import gc
import os
import selectors
import subprocess
import sys
import threading
import time
import weakref

import pytest

import tether

from conftest import build_platform, wait_until


def call_back(conn, method, *args):
    """Have the host call method(*args) on conn's client (blocking)."""
    return conn.root.call_client(conn.name, method, list(args))


def aio_call_back(conn, method, *args):
    return conn.aio.call_client(conn.name, method, list(args))


@pytest.fixture
def caller(host):
    """Another connection (serve="thread"), whose calls do not need this loop."""
    c = host.connect(name="serve-caller")
    yield c
    c.close()


def test_a_client_name_cannot_hold_control_characters(host):
    for name in ("two\nlines", "bell\x07", "del\x7f"):
        with pytest.raises(ValueError, match="control characters"):
            host.connect(name=name)
    with host.connect(name="caf\u00e9 \u2603") as c:
        assert "caf\u00e9 \u2603" in [info[0] for info in c.root.clients()]


def test_serve_must_be_a_known_mode(host):
    with pytest.raises(ValueError, match="serve must be one of"):
        host.connect(serve="threads")
    with host.connect(name="serve-thread") as c:
        assert c.serve == "thread"
        with pytest.raises(ValueError, match="attach_loop needs"):
            c.attach_loop(asyncio.new_event_loop())


# ---- serve="loop" -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_loop_services_run_on_the_loop_thread(host):
    with host.connect(name="loop-svc", serve="loop") as conn:

        @conn.service
        def where(x):
            return [x, threading.get_ident()]

        @conn.service
        async def later(x):
            await asyncio.sleep(0.01)
            return [x, threading.get_ident()]

        me = threading.get_ident()
        assert await aio_call_back(conn, "where", 1) == [1, me]
        assert await aio_call_back(conn, "later", 2) == [2, me]


@pytest.mark.asyncio
async def test_loop_services_are_answered_while_the_loop_runs_other_tasks(host, caller):
    with host.connect(name="loop-busy", serve="loop") as conn:
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        @conn.service
        def square(x):
            return x * x

        @conn.service
        async def slow_square(x):
            await asyncio.sleep(0.05)
            return x * x

        t = asyncio.ensure_future(ticker())
        calls = [caller.async_.call_client(conn.name, "square", [i]) for i in range(100)]
        calls += [caller.async_.call_client(conn.name, "slow_square", [i]) for i in range(100)]
        assert await asyncio.gather(*calls) == [i * i for i in range(100)] * 2
        t.cancel()
        assert ticks >= 3  # it went on while the host's calls were served


@pytest.mark.asyncio
async def test_loop_services_wait_while_the_loop_is_blocked(host, caller):
    with host.connect(name="loop-blocked", serve="loop") as conn:
        conn.register("sync", lambda: "sync")

        @conn.service
        async def coro():
            return "coro"

        futures = [caller.async_.call_client(conn.name, m, []) for m in ("sync", "coro")]
        time.sleep(0.3)  # blocks the loop: nothing may answer
        assert not any(f.done() for f in futures)
        assert await asyncio.gather(*futures) == ["sync", "coro"]


@pytest.mark.asyncio
async def test_async_service_errors_reach_the_caller(host):
    with host.connect(name="loop-errors", serve="loop") as conn:

        @conn.service
        async def broken(x):
            await asyncio.sleep(0)
            raise ValueError(f"bad {x}")

        @conn.service
        async def unsendable():
            return 2**70

        with pytest.raises(ValueError, match="bad 7") as info:
            await aio_call_back(conn, "broken", 7)
        assert "in broken" in info.value.remote_traceback
        with pytest.raises(OverflowError, match="too large"):
            await aio_call_back(conn, "unsendable")
        with pytest.raises(TypeError):
            await aio_call_back(conn, "broken")  # wrong arguments: fails before the task


@pytest.mark.asyncio
async def test_async_service_errors_are_reported_to_the_hosts_log(host):
    with host.connect(name="loop-report", serve="loop") as conn:
        handler = tether.LogHandler(conn)

        @conn.service
        async def reported():
            raise LookupError("reported from a task")

        try:
            with pytest.raises(LookupError):
                await aio_call_back(conn, "reported")
        finally:
            handler.close()
        lines = await asyncio.to_thread(
            wait_until,
            lambda: [m for _, m in host.log_lines() if "reported from a task" in m],
        )
        assert "tether.service: service 'reported' raised" in lines[0]
        assert "Traceback" in lines[0]


@pytest.mark.asyncio
async def test_cancelled_call_cancels_the_services_task(host):
    with host.connect(name="loop-cancel", serve="loop") as conn:
        started = asyncio.Event()
        cancelled = asyncio.Event()

        @conn.service
        async def forever():
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        # The host cancels its call to forever() after 100 ms.
        with pytest.raises(tether.CancelledError):
            await conn.aio.call_client_cancel(conn.name, "forever", [], 100)
        assert started.is_set()
        await asyncio.wait_for(cancelled.wait(), 5)


@pytest.mark.asyncio
async def test_blocking_calls_on_the_loop_thread_run_call_backs(host):
    with host.connect(name="loop-nested", serve="loop") as conn:
        conn.register("where", threading.get_ident)

        @conn.service
        def outer(n):
            # A blocking call from a service, which the host answers by calling back.
            return [n, call_back(conn, "where")]

        me = threading.get_ident()
        assert call_back(conn, "where") == me  # blocking, on the loop's thread
        assert await aio_call_back(conn, "outer", 3) == [3, me]


@pytest.mark.asyncio
async def test_async_service_called_back_while_its_loop_is_blocked_fails(host):
    with host.connect(name="loop-deadlock", serve="loop") as conn:

        @conn.service
        async def coro():
            return 1

        # Its task could not run before this call returns: an error, not a hang.
        with pytest.raises(RuntimeError, match="called back during a blocking call"):
            call_back(conn, "coro")
        assert await aio_call_back(conn, "coro") == 1


def test_loop_attaches_at_first_use_and_to_each_new_loop(host):
    conn = host.connect(name="loop-later", serve="loop")  # no loop runs yet
    try:
        conn.register("where", threading.get_ident)

        async def main():
            return await aio_call_back(conn, "where")

        assert asyncio.run(main()) == threading.get_ident()
        assert asyncio.run(main()) == threading.get_ident()  # a new loop: attached again

        async def explicit():
            conn.attach_loop()
            f = conn.async_.call_client(conn.name, "where", [])  # not an aio call
            return await f

        assert asyncio.run(explicit()) == threading.get_ident()
    finally:
        conn.close()


def test_loop_needs_the_connections_thread(host):
    conn = host.connect(name="loop-thread", serve="loop")
    errors = []

    def other():
        try:
            asyncio.run(_attach(conn))
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    conn.close()
    assert errors and "thread that made the connection" in str(errors[0])


async def _attach(conn):
    conn.attach_loop()


@pytest.mark.asyncio
async def test_connect_async_serves_on_the_loop(host):
    conn = await tether.connect_async(address=host.address, name="loop-async", serve="loop")
    try:
        conn.register("where", threading.get_ident)
        assert await aio_call_back(conn, "where") == threading.get_ident()
    finally:
        conn.close()


def test_dropped_loop_connection_is_collected(host, caller):
    async def main():
        conn = host.connect(name="loop-dropped", serve="loop")
        conn.register("uses_conn", lambda: conn.name)  # a cycle through the service
        assert await aio_call_back(conn, "uses_conn") == "loop-dropped"
        ref = weakref.ref(conn)
        del conn
        gc.collect()
        assert ref() is None
        await asyncio.sleep(0.05)  # the loop removes the reader, which held the client

    asyncio.run(main())
    assert wait_until(lambda: "loop-dropped" not in [c[0] for c in caller.root.clients()])


# ---- serve="manual" -----------------------------------------------------------------------


def test_manual_services_run_in_dispatch_called_by_a_selectors_loop(host, caller):
    with host.connect(name="manual-svc", serve="manual") as conn:
        conn.register("where", lambda x: [x, threading.get_ident()])

        @conn.service
        async def coro(x):  # no asyncio loop runs here: it runs to completion in one
            await asyncio.sleep(0)
            return x + 1

        futures = [caller.async_.call_client(conn.name, "where", [i]) for i in range(20)]
        futures.append(caller.async_.call_client(conn.name, "coro", [41]))
        time.sleep(0.2)
        assert not any(f.done() for f in futures)  # nobody dispatches yet

        sel = selectors.DefaultSelector()
        sel.register(conn.fileno(), selectors.EVENT_READ)
        deadline = time.monotonic() + 10
        while not all(f.done() for f in futures) and time.monotonic() < deadline:
            for _key, _events in sel.select(0.05):
                conn.dispatch(0.01)
        sel.close()
        me = threading.get_ident()
        assert [f.result(0) for f in futures] == [[i, me] for i in range(20)] + [42]
        assert not conn.dispatch()  # nothing left


def test_manual_blocking_call_back_runs_on_the_waiting_thread(host):
    with host.connect(name="manual-nested", serve="manual") as conn:
        conn.register("where", threading.get_ident)
        # Nobody dispatches: the call-back of this very call runs inside the wait.
        assert call_back(conn, "where") == threading.get_ident()


def test_manual_services_from_a_thread_that_made_the_connection(host, caller):
    results = []
    ready = threading.Event()

    def worker():
        with host.connect(name="manual-thread", serve="manual") as conn:
            conn.register("where", threading.get_ident)
            ready.set()
            deadline = time.monotonic() + 10
            while not results and time.monotonic() < deadline:
                conn.dispatch(0.01)
                time.sleep(0.005)

    t = threading.Thread(target=worker)
    t.start()
    assert ready.wait(10)
    results.append(caller.root.call_client("manual-thread", "where", []))
    t.join(10)
    assert results == [t.ident]


# ---- the extension's deferred replies, without asyncio ------------------------------------


def test_deferred_service_replies_later_from_another_thread(host, caller):
    with host.connect(name="deferred") as conn:
        replies = []

        def keep(reply, x):
            replies.append((reply, x))

        conn._client.add_service("keep", keep, deferred=True)
        conn._client.add_service("drop", lambda reply: None, deferred=True)
        conn._client.add_service("fails", lambda reply: 1 / 0, deferred=True)
        f = caller.async_.call_client("deferred", "keep", [20])
        g = caller.async_.call_client("deferred", "keep", [21])
        assert wait_until(lambda: len(replies) == 2)
        assert not f.wait(0.1)  # the service returned; the call goes on
        (rf, xf), (rg, xg) = sorted(replies, key=lambda r: r[1])
        assert not rf.done() and not rf.cancelled()
        threading.Thread(target=rf.set_result, args=(xf + 1,)).start()
        assert f.result(5) == 21
        assert rf.done()
        with pytest.raises(RuntimeError, match="replied to already"):
            rf.set_result(0)
        try:
            raise KeyError("later")
        except KeyError as e:
            rg.set_exception(e)
        with pytest.raises(KeyError) as info:
            g.result(5)
        assert "raise KeyError" in info.value.remote_traceback
        # Dropped before the service returned: the core replies None.
        assert caller.root.call_client("deferred", "drop", []) is None
        with pytest.raises(ZeroDivisionError):
            caller.root.call_client("deferred", "fails", [])
        h = caller.async_.call_client("deferred", "keep", [0])
        assert wait_until(lambda: len(replies) == 3)
        replies.clear()  # dropped after it returned
        with pytest.raises(tether.TetherError, match="dropped the request"):
            h.result(5)


def thread_switches(name):
    """Context switches so far of this process's threads called name."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/self/task/{tid}/status") as f:
                total += sum(int(line.split()[1]) for line in f
                             if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")))
        except FileNotFoundError:
            pass
    return total


# The host calls the service of `name` n times, asked by another process (a caller in
# this one would run the call-backs itself: they are of the chain it waits in).
CALL_BACKS = """
import sys, tether
conn = tether.connect(address=sys.argv[1], name="pool-caller")
for _ in range(int(sys.argv[3])):
    conn.root.call_client(sys.argv[2], "noop", [])
"""


@pytest.mark.skipif(build_platform() != "linux",
                    reason="the portable build's I/O thread may wake for input a caller reads")
def test_an_idle_worker_reads_the_hosts_calls_of_thread_services(host):
    # With serve="thread" an idle worker waits by reading the connection: a call of the
    # host wakes that worker alone, which runs the service and replies, and the I/O
    # thread sleeps. A count of switches, not a time: before, the I/O thread read every
    # request and handed it to a worker.
    served = host.connect(name="pool-served", serve="thread", services={"noop": lambda: None})
    try:
        def call_backs(n):
            subprocess.run([sys.executable, "-c", CALL_BACKS, host.address, served.name,
                            str(n)], check=True, timeout=60)

        call_backs(10)  # starts a worker
        woken = io_thread_wakes(call_backs, 2000)
        assert min(woken) < 1000, f"the I/O thread woke {woken} times for 2000 calls"
    finally:
        served.close()


def io_thread_wakes(call_backs, calls):
    """The I/O thread's wake-ups during call_backs(calls), up to three rounds until one
    stays under half the calls: a call that comes while the serving thread is not back in
    its wait yet (preempted, on a loaded machine) is read by the I/O thread."""
    woken = []
    for _ in range(3):
        before = thread_switches("tether-io")
        call_backs(calls)
        woken.append(thread_switches("tether-io") - before)
        if woken[-1] < calls // 2:
            break
    return woken


@pytest.mark.skipif(build_platform() != "linux",
                    reason="the portable build's I/O thread may wake for input a caller reads")
def test_a_loop_reads_the_hosts_calls_itself(host):
    # With serve="loop" the loop's thread reads the connection while the loop is idle: a
    # call of the host wakes that thread alone, which runs the service and replies, and
    # the I/O thread sleeps (before, it read every request and woke the loop). A blocking
    # call made on the loop's thread leaves the reading with it.
    async def main():
        conn = host.connect(name="loop-reader", serve="loop", services={"noop": lambda: None})
        try:
            def call_backs(n):
                subprocess.run([sys.executable, "-c", CALL_BACKS, host.address, conn.name,
                                str(n)], check=True, timeout=60)

            await asyncio.to_thread(call_backs, 10)
            assert conn.root.echo("blocking") == "blocking"
            woken = await asyncio.to_thread(io_thread_wakes, call_backs, 2000)
            assert min(woken) < 1000, f"the I/O thread woke {woken} times for 2000 calls"
        finally:
            conn.close()

    asyncio.run(main())


def test_a_busy_loop_does_not_hold_up_other_threads_calls(host):
    # While the loop's thread holds the reading of its connection, another thread's
    # calls complete even if the loop is blocked: a synchronous caller takes the reading
    # over, and a thread waiting for a future, or starting an asynchronous call, hands
    # it to the I/O thread. After them the loop reads again.
    async def main():
        conn = host.connect(name="loop-busy-reader", serve="loop",
                            services={"where": threading.get_ident})
        try:
            assert await aio_call_back(conn, "where") == threading.get_ident()
            done = threading.Event()
            results = []

            def other():
                results.append(tether.async_(conn.root.slow)(50).result(timeout=10))
                results.append(tether.async_(conn.root.echo)("future").result(timeout=10))
                results.append(conn.root.echo("sync"))
                done.set()

            t = threading.Thread(target=other)
            t.start()
            # Blocks the loop (and its thread) until the other thread is done: with the
            # reading left to this loop, that thread's answers would never be read.
            assert done.wait(5), "another thread's calls waited for a blocked loop"
            t.join(10)
            assert results == [50, "future", "sync"]
            await asyncio.sleep(0.1)  # the loop takes the reading back
            assert await aio_call_back(conn, "where") == threading.get_ident()
        finally:
            conn.close()

    asyncio.run(main())
