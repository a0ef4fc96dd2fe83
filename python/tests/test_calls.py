"""Calls to the host: sync, async (futures), notifications; connecting; errors and faults."""

import errno
import os
import signal
import sys
import threading
import time

import pytest

import tether
from tether import _tether

from conftest import wait_until


# ---- connecting ----------------------------------------------------------------------


def test_connect_and_call(host):
    with host.connect(name="adder") as conn:
        assert conn.root.add(2, 3) == 5
        assert conn.is_connected()
        assert conn.name == "adder"
        assert conn.host_name == "pyhost"
        assert "adder" in repr(conn)
    assert conn.closed
    assert not conn.is_connected()


def test_the_host_sees_name_language_and_version(host):
    import platform

    with host.connect(name="introduced") as conn:
        clients = conn.root.clients()
    assert ["introduced", "python", platform.python_version()] in clients


def test_default_name_is_the_script_name(host, monkeypatch):
    from tether._connection import _default_name

    expected = _default_name()
    assert expected and expected != "python"  # pytest's entry point: "pytest"
    with host.connect(name=None) as conn:
        assert conn.name == expected
        assert [expected, "python"] in [c[:2] for c in conn.root.clients()]
    monkeypatch.setattr(sys, "argv", ["/opt/tools/my_tool.py", "--flag"])
    assert _default_name() == "my_tool"
    monkeypatch.setattr(sys, "argv", ["-c"])
    assert _default_name() == "python"
    monkeypatch.setattr(sys, "argv", [""])
    assert _default_name() == "python"


def test_connect_through_tether_address(host, monkeypatch):
    monkeypatch.setenv("TETHER_ADDRESS", host.address)
    with tether.connect(name="by-env") as conn:
        assert conn.root.add(1, 1) == 2


def test_connect_by_host_name_in_a_runtime_dir(host):
    with tether.connect(name="by-name", address="pyhost", runtime_dir=host.runtime_dir) as conn:
        assert conn.root.add(1, 2) == 3


def test_connect_to_nothing_is_refused(tmp_path):
    with pytest.raises(ConnectionRefusedError):
        tether.connect(address=f"unix:{tmp_path}/nobody.sock")
    with pytest.raises(ConnectionRefusedError):
        tether.connect(address="nobody-here", runtime_dir=str(tmp_path))


def test_connect_with_bad_arguments():
    with pytest.raises(TypeError):
        tether.connect(name=5)
    with pytest.raises(ValueError):
        tether.connect(address="unix:/nonexistent/x.sock", timeout=-1)
    with pytest.raises(tether.TetherError):
        tether.connect(address="bogus:scheme:x")


def test_call_before_connect_raises_not_connected():
    client = _tether.Client("unconnected")
    with pytest.raises(tether.NotConnectedError):
        client.call("add", (1, 2))
    assert not client.is_connected()


def test_call_on_a_closed_connection_raises_not_connected(host):
    conn = host.connect()
    conn.close()
    conn.close()  # twice is fine
    start = time.monotonic()
    with pytest.raises(tether.NotConnectedError) as info:
        conn.root.add(1, 2)
    assert isinstance(info.value, ConnectionError)
    assert info.value.code == _tether.ENOTCONN
    with pytest.raises(tether.NotConnectedError):
        conn.async_.add(1, 2)
    with pytest.raises(tether.NotConnectedError):
        conn.notify.note(1)
    assert time.monotonic() - start < 1.0


# ---- synchronous calls -----------------------------------------------------------------


def test_namespaces(conn):
    assert conn.root.add is conn.root.add  # cached
    assert conn.root["add"](4, 5) == 9
    assert isinstance(conn.root.add, tether.RemoteMethod)
    assert conn.root.add.name == "add"
    assert "add" in dir(conn.root)
    with pytest.raises(AttributeError):
        conn.root.__wrapped__
    with pytest.raises(TypeError):
        conn.root[1]


def test_unknown_service_raises_no_such_service(conn):
    with pytest.raises(tether.NoSuchServiceError, match="no service 'missing'") as info:
        conn.root.missing()
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, tether.TetherError)


def test_wrong_arguments_give_the_host_type_error(conn):
    with pytest.raises(TypeError):
        conn.root.add("a", "b")
    with pytest.raises(TypeError):
        conn.root.add(1)


def test_calls_from_many_threads(conn):
    results = {}

    def work(i):
        results[i] = [conn.root.add(i, j) for j in range(50)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {i: [i + j for j in range(50)] for i in range(8)}


def test_a_long_call_is_not_cut_off_by_the_timeout(host):
    # The host keeps a live call alive with progress: 0.6 s of work, 0.25 s timeout.
    with host.connect(timeout=0.25) as conn:
        assert conn.root.slow(600) == 600


# ---- remote errors ----------------------------------------------------------------------


def test_builtin_remote_errors_come_back_as_themselves(conn):
    with pytest.raises(NameError, match="name 'x' is not defined") as info:
        conn.root.fail("NameError", "name 'x' is not defined")
    assert type(info.value) is NameError
    assert info.value.remote_type == "NameError"
    assert info.value.remote_traceback is None  # a C host sends none
    for name, cls in [
        ("ValueError", ValueError),
        ("KeyError", KeyError),
        ("ZeroDivisionError", ZeroDivisionError),
        ("FileNotFoundError", FileNotFoundError),
        ("TimeoutError", TimeoutError),
    ]:
        with pytest.raises(cls) as info:
            conn.root.fail(name, "boom")
        assert type(info.value) is cls


def test_other_remote_errors_are_remote_error(conn):
    with pytest.raises(tether.RemoteError) as info:
        conn.root.fail("mygame.ActorError", "no actor Bob")
    e = info.value
    assert e.remote_type == "mygame.ActorError"
    assert e.remote_message == "no actor Bob"
    assert str(e) == "mygame.ActorError: no actor Bob"
    assert isinstance(e, tether.TetherError)
    # Not subclasses of Exception, and unknown names, are not re-created.
    for name in ["SystemExit", "KeyboardInterrupt", "NoSuchBuiltin", "tether.Error", "print"]:
        with pytest.raises(tether.RemoteError) as info:
            conn.root.fail(name, "m")
        assert info.value.remote_type == name


def test_remote_traceback_is_attached():
    tb = 'Traceback (most recent call last):\n  File "x.py", line 1\nNameError: x\n'
    e = _tether._error(_tether.EREMOTE, "NameError", "name 'x' is not defined", tb)
    assert type(e) is NameError
    assert e.remote_traceback == tb
    assert e.remote_type == "NameError"
    if sys.version_info >= (3, 11):
        assert e.__notes__ == ["Remote traceback:\n" + tb]
    e = _tether._error(_tether.EREMOTE, "pkg.Custom", "bad", tb)
    assert type(e) is tether.RemoteError
    assert (e.remote_type, e.remote_message, e.remote_traceback) == ("pkg.Custom", "bad", tb)
    e = _tether._error(_tether.EREMOTE, "UnicodeDecodeError", "needs five arguments", None)
    assert type(e) is tether.RemoteError  # cannot be made from a message: kept as remote


def test_remote_error_pickles():
    import pickle

    e = tether.RemoteError("pkg.Custom", "bad", "tb")
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.remote_type, e2.remote_message, e2.remote_traceback) == ("pkg.Custom", "bad", "tb")


@pytest.mark.parametrize(
    "code, connect, cls",
    [
        (_tether.ETIMEDOUT, False, TimeoutError),
        (_tether.ECONNRESET, False, ConnectionResetError),
        (_tether.ENOTCONN, False, tether.NotConnectedError),
        (_tether.ECONNREFUSED, True, ConnectionRefusedError),
        (_tether.ENOENT, True, ConnectionRefusedError),
        (_tether.EUSERS, True, ConnectionRefusedError),
        (_tether.EACCES, True, PermissionError),
        (_tether.ENOENT, False, tether.NoSuchServiceError),
        (_tether.ECANCELED, False, tether.CancelledError),
        (_tether.EPROTO, False, tether.TetherError),
        (_tether.EMSGSIZE, False, tether.TetherError),
    ],
)
def test_error_mapping(code, connect, cls):
    e = _tether._error(code, "tether.X", "what happened", None, connect)
    assert type(e) is cls
    assert e.code == code
    assert "what happened" in str(e)
    if isinstance(e, OSError) and cls is not tether.NotConnectedError:
        assert e.errno == -code
    e = _tether._error(code)
    assert _tether.strerror(code) in str(e)


def test_exception_hierarchy():
    assert issubclass(tether.NotConnectedError, ConnectionError)
    assert issubclass(tether.NoSuchServiceError, LookupError)
    for cls in [tether.RemoteError, tether.NotConnectedError, tether.NoSuchServiceError,
                tether.CancelledError]:
        assert issubclass(cls, tether.TetherError)
        assert cls.__module__ == "tether"


# ---- futures ----------------------------------------------------------------------------


def test_async_spellings(conn):
    f = conn.async_.add(2, 3)
    assert isinstance(f, tether.Future)
    assert f.result(timeout=5) == 5
    g = tether.async_(conn.root.add)(4, 5)
    assert g.result(timeout=5) == 9
    assert tether.async_(conn.async_.add) is conn.async_.add
    with pytest.raises(TypeError):
        tether.async_(print)
    with pytest.raises(TypeError):
        tether.async_(conn.notify.note)


def test_async_methods_carry_arguments_timeouts_and_any_target(host, conn):
    # The async call goes from the method's fields to the core, as a sync call does:
    # keyword arguments, with_timeout and with_deadline travel with it.
    assert conn.async_.echo_args(1, x=2).result(5) == [[1], {"x": 2}]
    assert conn.async_.slow.with_timeout(5)(10).result(5) == 10
    f = conn.async_.slow.with_deadline(0.05)(2000)
    with pytest.raises(TimeoutError):
        f.result(5)
    closed = host.connect(name="closing")
    m = closed.async_.add  # made on a live connection, called after it closed
    closed.close()
    with pytest.raises(tether.NotConnectedError):
        m(1, 2)

    class Target:  # anything with call_async(method, args, kwargs, timeout, deadline)
        def call_async(self, method, args, kwargs, timeout, deadline):
            return (method, args, kwargs, timeout, deadline)

    AsyncRemoteMethod = type(conn.async_.add)
    assert AsyncRemoteMethod(Target(), "m", 3)(1, k=2) == ("m", (1,), {"k": 2}, 3, None)


def test_future_wait_ready_result(conn):
    f = conn.async_.slow(300)
    assert not f.ready
    assert not f.done()
    assert "pending" in repr(f)
    assert f.wait(0.05) is False
    assert f.wait(0) is False
    with pytest.raises(TimeoutError):
        f.result(timeout=0.01)
    assert f.wait(10) is True
    assert f.ready and f.done()
    assert f.result() == 300
    assert f.result() == 300
    assert f.value == 300
    assert f.exception() is None
    assert not f.cancelled()
    assert "finished" in repr(f)


def test_future_of_a_failed_call(conn):
    f = conn.async_.fail("KeyError", "k")
    e = f.exception(timeout=5)
    assert type(e) is KeyError
    assert f.exception() is e  # the same object every time
    with pytest.raises(KeyError):
        f.result()
    assert "failed" in repr(f)
    f = conn.async_.no_such_thing()
    assert isinstance(f.exception(5), tether.NoSuchServiceError)


def test_many_futures_in_flight(conn):
    # The host admits 1024 requests in flight by default (its max_in_flight).
    for _ in range(3):
        futures = [conn.async_.add(i, i) for i in range(1000)]
        assert [f.result(10) for f in futures] == [2 * i for i in range(1000)]


def test_more_futures_than_the_hosts_window(conn):
    # 100,000 calls started at once, 1024 at a time at the host: the rest wait on this
    # side and go out as answers come back; none fails.
    calls = 100_000
    futures = [tether.async_(conn.root.add)(i, 1) for i in range(calls)]
    assert [f.result(60) for f in futures] == list(range(1, calls + 1))
    assert conn.root.add(2, 2) == 4


def test_future_cancel(host, conn):
    kept_before, cancelled_before = conn.root.stuck_state()
    f = conn.async_.stuck()
    assert f.wait(0.1) is False
    assert f.cancel() is True
    assert f.ready
    assert f.cancelled()
    assert f.cancel() is False
    with pytest.raises(tether.CancelledError):
        f.result()
    assert isinstance(f.exception(), tether.CancelledError)
    assert "cancelled" in repr(f)
    # The host was told.
    assert wait_until(lambda: conn.root.stuck_state() == [kept_before + 1, cancelled_before + 1])
    done = conn.async_.add(1, 1)
    assert done.result(5) == 2
    assert done.cancel() is False
    assert not done.cancelled()


def test_closing_the_connection_fails_pending_futures(host):
    conn = host.connect()
    f = conn.async_.stuck()
    conn.close()
    assert f.wait(5)
    with pytest.raises(tether.CancelledError):
        f.result()


def test_add_done_callback_runs_on_completion(conn):
    done = threading.Event()
    seen = []

    def callback(fut):
        seen.append((fut.result(), threading.current_thread().name))
        done.set()

    f = conn.async_.slow(100)
    f.add_done_callback(callback)
    f.add_done_callback(lambda fut: seen.append("second"))
    assert done.wait(5)
    assert wait_until(lambda: len(seen) == 2)
    assert seen == [(100, "tether-callbacks"), "second"]


def test_add_done_callback_on_a_completed_future_runs_at_once(conn):
    f = conn.async_.add(1, 2)
    f.wait(5)
    seen = []
    f.add_done_callback(lambda fut: seen.append((fut.result(), threading.current_thread())))
    assert seen == [(3, threading.current_thread())]


def test_done_callbacks_may_call_the_host(conn):
    results = []
    done = threading.Event()

    def callback(fut):
        results.append(conn.root.add(fut.result(), 1))  # a blocking call in a callback
        done.set()

    conn.async_.slow(50).add_done_callback(callback)
    assert done.wait(5)
    assert results == [51]


def test_done_callback_exception_goes_to_unraisablehook(conn, monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_value))

    def bad(fut):
        raise RuntimeError("callback failed")

    f = conn.async_.slow(50)
    f.add_done_callback(bad)
    assert wait_until(lambda: reported)
    assert isinstance(reported[0], RuntimeError)
    with pytest.raises(TypeError):
        f.add_done_callback("not callable")


def test_done_callbacks_of_cancelled_and_failed_calls(conn):
    seen = []
    f = conn.async_.stuck()
    f.add_done_callback(lambda fut: seen.append(type(fut.exception())))
    f.cancel()
    assert wait_until(lambda: seen == [tether.CancelledError])


def test_futures_cannot_be_made_directly():
    with pytest.raises(TypeError):
        tether.Future()


# ---- notifications ----------------------------------------------------------------------


def test_notify(conn):
    conn.root.notes()  # forget earlier ones
    assert conn.notify.note("hi", 1) is None
    conn.notify.note(b"two", k="ignored")
    assert conn.root.notes() == [["hi", 1], [b"two"]]


def test_notify_unknown_service_is_silent(conn):
    conn.notify.nothing_here(1)
    assert conn.root.add(1, 1) == 2


# ---- timeouts and faults -----------------------------------------------------------------


def test_timeout_when_the_host_is_stuck(fresh_host):
    with fresh_host.connect(timeout=0.3) as conn:
        assert conn.root.add(1, 1) == 2
        fresh_host.suspend()
        try:
            start = time.monotonic()
            with pytest.raises(TimeoutError) as info:
                conn.root.add(1, 2)
            assert 0.25 < time.monotonic() - start < 3
            assert info.value.errno == errno.ETIMEDOUT
            f = conn.async_.add(1, 2)
            assert isinstance(f.exception(timeout=5), TimeoutError)
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                conn.root.add.with_timeout(0.1)(1, 2)
            assert time.monotonic() - start < 2
        finally:
            fresh_host.resume()
        assert conn.root.add(2, 2) == 4


def test_the_host_dies_mid_call(fresh_host):
    conn = fresh_host.connect(reconnect=False)
    pending = conn.async_.stuck()
    killer = threading.Timer(0.2, fresh_host.kill)
    killer.start()
    start = time.monotonic()
    with pytest.raises(ConnectionResetError):
        conn.root.stuck()
    assert time.monotonic() - start < 3
    killer.join()
    assert isinstance(pending.exception(timeout=5), ConnectionResetError)
    with pytest.raises(tether.NotConnectedError):
        conn.root.add(1, 2)
    conn.close()


def test_the_host_dies_mid_call_with_reconnect(fresh_host):
    conn = fresh_host.connect()
    killer = threading.Timer(0.2, fresh_host.kill)
    killer.start()
    with pytest.raises(ConnectionResetError):
        conn.root.slow(10000)
    killer.join()
    start = time.monotonic()
    with pytest.raises(tether.NotConnectedError):
        conn.root.add(1, 2)
    assert time.monotonic() - start < 1
    conn.close()


def test_calls_from_other_threads_fail_when_the_host_dies(fresh_host):
    conn = fresh_host.connect(reconnect=False)
    errors = []

    def call():
        try:
            conn.root.stuck()
        except Exception as e:
            errors.append(e)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.2)
    fresh_host.kill()
    t.join(5)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ConnectionResetError)
    conn.close()


def _interrupt_main_after(delay):
    main = threading.main_thread().ident
    timer = threading.Timer(delay, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    return timer


def test_keyboard_interrupt_cancels_a_blocked_call(conn):
    assert threading.current_thread() is threading.main_thread()
    kept_before, cancelled_before = conn.root.stuck_state()
    timer = _interrupt_main_after(0.2)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        conn.root.stuck()
    timer.join()
    assert time.monotonic() - start < 2
    # The remote call was cancelled, and the connection still works.
    assert wait_until(lambda: conn.root.stuck_state() == [kept_before + 1, cancelled_before + 1])
    assert conn.root.add(20, 22) == 42
    assert conn.is_connected()


def test_keyboard_interrupt_in_future_wait(conn):
    f = conn.async_.stuck()
    timer = _interrupt_main_after(0.2)
    with pytest.raises(KeyboardInterrupt):
        f.wait()
    timer.join()
    assert not f.ready  # waiting was interrupted, the call was not cancelled
    assert f.cancel()
    assert conn.root.add(1, 2) == 3


def test_signal_handlers_run_while_blocked(conn):
    seen = []
    old = signal.signal(signal.SIGUSR1, lambda *a: seen.append(time.monotonic()))
    try:
        main = threading.main_thread().ident
        threading.Timer(0.1, signal.pthread_kill, (main, signal.SIGUSR1)).start()
        start = time.monotonic()
        assert conn.root.slow(400) == 400
        assert seen and seen[0] - start < 0.35  # handled during the call, not after
    finally:
        signal.signal(signal.SIGUSR1, old)


# ---- lifetime ----------------------------------------------------------------------------


def test_dropping_a_connection_closes_it(host):
    import gc

    conn = host.connect(name="dropped")
    f = conn.async_.stuck()
    del conn
    gc.collect()
    # The future keeps no connection alive; its call completes (closed locally).
    assert f.wait(5)
    assert isinstance(f.exception(), tether.CancelledError)


def test_fileno_and_dispatch(conn):
    fd = conn.fileno()
    assert isinstance(fd, int) and fd >= 0
    assert conn.dispatch(0.001) is False
    assert conn.dispatch() is False
