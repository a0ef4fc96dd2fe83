"""Services a Python client exposes, called by the C host (through its call_client and
notify_client services, which call the client named in their first argument)."""

import gc
import sys
import threading
import time

import pytest

import tether

from conftest import wait_until


@pytest.fixture
def client(host):
    """A connection under a name of its own, so the host can call it back."""
    c = host.connect(name="svc-client")
    yield c
    c.close()


def call_back(conn, method, *args):
    """Have the host call method(*args) on conn's client."""
    return conn.root.call_client(conn.name, method, list(args))


def test_decorated_service(client):
    @client.service
    def multiply(a, b):
        return a * b

    assert multiply(2, 3) == 6  # the function is returned unchanged
    assert call_back(client, "multiply", 6, 7) == 42


def test_service_names(client):
    @client.service("named.one")
    def f():
        return 1

    @client.service(name="named.two")
    def g():
        return 2

    client.register("named.three", lambda: 3)
    assert [call_back(client, f"named.{n}") for n in ("one", "two", "three")] == [1, 2, 3]


def test_services_see_every_value_type(client):
    @client.service
    def describe(*args):
        return [type(a).__name__ for a in args] + [list(args)]

    values = [None, True, 7, -(2**63), 2**64 - 1, 1.5, "s", b"b", [1, [2]], {"k": {1: None}}]
    result = call_back(client, "describe", *values)
    assert result[:-1] == ["NoneType", "bool", "int", "int", "int", "float", "str", "bytes",
                           "list", "dict"]
    assert result[-1] == values


def test_service_errors_reach_the_caller(client):
    @client.service
    def divide(a, b):
        return a / b

    with pytest.raises(ZeroDivisionError, match="division by zero"):
        call_back(client, "divide", 1, 0)


class ActorError(Exception):
    pass


def test_service_errors_of_user_types_carry_module_and_name(client):
    @client.service
    def spawn(name):
        raise ActorError(f"no actor {name}")

    with pytest.raises(tether.RemoteError) as info:
        call_back(client, "spawn", "Bob")
    assert info.value.remote_type == "test_services.ActorError"
    assert info.value.remote_message == "no actor Bob"
    # The service's own traceback travels with the error.
    assert "in spawn" in info.value.remote_traceback
    assert "ActorError: no actor Bob" in info.value.remote_traceback


def test_wrong_arguments_to_a_service_raise_type_error(client):
    client.register("one_arg", lambda x: x)
    with pytest.raises(TypeError):
        call_back(client, "one_arg", 1, 2)


def test_unsendable_result_is_an_error_for_the_caller(client):
    client.register("gives_huge_int", lambda: 2**70)
    with pytest.raises(OverflowError, match="too large"):
        call_back(client, "gives_huge_int")


def test_an_object_result_goes_by_reference_and_comes_back_as_itself(client):
    mine = object()
    client.register("gives_object", lambda: mine)
    assert call_back(client, "gives_object") is mine


def test_unknown_service_of_the_client(client):
    with pytest.raises(tether.NoSuchServiceError, match="no service 'nope'"):
        call_back(client, "nope")


def test_registering_twice_or_non_callables_fails(client):
    client.register("once", lambda: 1)
    with pytest.raises(ValueError, match="registered already"):
        client.register("once", lambda: 2)
    with pytest.raises(TypeError):
        client.register("not_callable", 5)
    with pytest.raises(ValueError):
        client.register("", lambda: 1)


def test_async_def_service(client):
    import asyncio

    @client.service
    async def later(x):
        await asyncio.sleep(0.01)
        return x + 1

    assert call_back(client, "later", 1) == 2


def test_service_may_call_the_host_back(client):
    @client.service
    def add_via_host(a, b):
        return client.root.add(a, b) * 10

    assert call_back(client, "add_via_host", 2, 3) == 50


def test_services_run_concurrently_with_the_main_thread(client):
    started = threading.Event()
    release = threading.Event()

    @client.service
    def block():
        started.set()
        release.wait(5)
        return "released"

    f = client.async_.call_client(client.name, "block", [])
    assert started.wait(5)
    assert client.root.add(1, 1) == 2  # the main thread is not held up
    release.set()
    assert f.result(5) == "released"


def test_service_called_by_notification(client):
    got = []
    done = threading.Event()

    @client.service
    def event(kind, data):
        got.append((kind, data))
        done.set()

    # The notification belongs to the conversation of the blocking call that asked for
    # it: it may run on a worker thread, or on this thread while it waits in that call.
    assert client.root.notify_client(client.name, "event", ["spawned", {"id": 1}]) is None
    assert done.wait(5)
    assert got == [("spawned", {"id": 1})]


def test_exception_in_a_notified_service_goes_to_unraisablehook(client, monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_value))

    @client.service
    def broken():
        raise RuntimeError("nobody hears this")

    client.root.notify_client(client.name, "broken", [])
    assert wait_until(lambda: reported)
    assert isinstance(reported[0], RuntimeError)


def test_services_survive_many_calls_from_threads(client):
    client.register("square", lambda x: x * x)
    results = {}

    def work(i):
        results[i] = [call_back(client, "square", i * 10 + j) for j in range(10)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {i: [(i * 10 + j) ** 2 for j in range(10)] for i in range(6)}


def test_dropped_client_with_a_service_cycle_is_collected(host):
    conn = host.connect(name="cyclic")

    @conn.service
    def uses_conn():
        return conn.name  # the service refers to its connection: a cycle

    assert call_back(conn, "uses_conn") == "cyclic"
    caller = host.connect(name="caller")
    del conn, uses_conn
    gc.collect()
    # The host no longer finds the client (or finds it gone): an error, never a crash.
    with pytest.raises(Exception):
        caller.root.call_client("cyclic", "uses_conn", [])
    assert caller.root.add(1, 1) == 2
    caller.close()


def test_closing_a_client_while_its_service_runs(host):
    conn = host.connect(name="closing")
    caller = host.connect(name="closing-caller")
    started = threading.Event()

    @conn.service
    def slow_service():
        started.set()
        time.sleep(0.3)
        return 1

    f = caller.async_.call_client("closing", "slow_service", [])
    assert started.wait(5)
    conn.close()
    e = f.exception(timeout=5)
    assert e is not None  # the host lost its callee mid-call
    assert caller.root.add(2, 2) == 4
    caller.close()


EXIT_WHILE_SERVING = r"""
import sys, threading, time, tether
conn = tether.connect(name="exiting", address=sys.argv[1])
caller = tether.connect(name="exiting-caller", address=sys.argv[1])

@conn.service
def work(i):
    time.sleep(0.01)
    return i

# Keep the host calling this client's service (from its I/O thread, into our worker
# threads) and completing futures with callbacks, then exit in the middle of it.
futures = [caller.async_.call_client("exiting", "work", [i]) for i in range(200)]
for f in futures:
    f.add_done_callback(lambda f: None)
time.sleep(0.3)
print("exiting", flush=True)
"""


def test_interpreter_exit_while_the_host_calls_services(host):
    import os
    import subprocess

    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(tether.__file__))
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", EXIT_WHILE_SERVING, host.address],
            capture_output=True, text=True, timeout=60, env=env,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == "exiting\n"
        assert "Fatal" not in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_an_error_passed_on_keeps_its_type_and_message(client):
    # A service lets the host's error through: the caller sees the original type and
    # message, not one prefixed again at each hop.
    client.register("relay", lambda t, m: client.root.fail(t, m))
    with pytest.raises(tether.RemoteError) as info:
        call_back(client, "relay", "game.ActorError", "no actor Bob")
    assert info.value.remote_type == "game.ActorError"
    assert info.value.remote_message == "no actor Bob"
    with pytest.raises(KeyError) as info:
        call_back(client, "relay", "KeyError", "'k'")
    assert info.value.remote_message == "'k'"


def test_services_registered_before_connecting(host):
    # The host may call them as soon as it sees the script: no window without them.
    class Greeter(tether.Service):
        def greet(self, name):
            return f"hi {name}"

    def double(x):
        return 2 * x

    with host.connect(name="early", services=[double, Greeter()]) as conn:
        assert call_back(conn, "double", 21) == 42
        assert call_back(conn, "greet", "Ann") == "hi Ann"
    with host.connect(name="early2", services={"triple": lambda x: 3 * x}) as conn:
        assert call_back(conn, "triple", 3) == 9


def test_a_service_registered_after_connecting_is_announced(host):
    """The host waits (tether_conn_wait_service) for a service the script registers only
    after connecting, and calls it as soon as the announcement arrives; the script's
    services registered before connecting were announced as it connected."""
    with host.connect(name="announcer", services={"early": lambda: "early"}) as conn:
        assert conn.root.call_when_offered("announcer", "early", [], 10.0) == "early"
        pending = conn.async_.call_when_offered("announcer", "late", [20], 10.0)
        time.sleep(0.2)  # the host is waiting for it by now
        assert not pending.done()

        @conn.service
        def late(x):
            return x + 1

        assert pending.result(timeout=10) == 21
        # A service never registered: the host's wait runs out.
        with pytest.raises(TimeoutError):
            conn.root.call_when_offered("announcer", "never", [], 0.1)
