"""Objects by reference, both ways, against the C test host: proxies for the host's C
objects (a class description with methods), proxies the host holds for this script's
objects, identity, reference counting across the connection, and the errors."""

import asyncio
import gc
import threading
import time
import weakref

import pytest

import tether
from tether import _tether

from processes import eventually


# ---- the host's objects --------------------------------------------------------------


def test_a_host_object_arrives_as_a_proxy_with_methods(conn):
    c = conn.root.make_counter(5)
    assert isinstance(c, tether.Proxy) and tether.is_proxy(c)
    assert c.add(2) == 7
    assert c.add() == 8
    assert c.get() == 8  # a method the host runs on a worker thread
    assert repr(c) == "<Counter 8>"
    assert len(c) == 8


def test_attributes_of_a_host_object(conn):
    c = conn.root.make_counter(3)
    assert c.value == 3
    c.label = "hits"
    assert c.label == "hits"
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        c.nope
    with pytest.raises(AttributeError, match="can only set 'label'"):
        c.value = 4
    with pytest.raises(AttributeError, match="underscore"):
        c._private


def test_remote_method_errors_carry_the_remote_type(conn):
    c = conn.root.make_counter()
    with pytest.raises(ValueError, match="broken on purpose"):
        c.fail("broken on purpose")
    # A name that is neither a method nor an attribute of the object.
    with pytest.raises(AttributeError):
        c.explode()


def test_a_method_call_is_one_round_trip(conn):
    # The description is fetched once per type and connection; after that a method call
    # is a single request, counted by the host (each count query is one more).
    def received():
        return conn.root.client_calls(conn.name)

    c = conn.root.make_counter()
    c.add(1)
    before = received()
    for _ in range(10):
        c.add(1)
    assert received() - before == 10 + 1
    d = conn.root.make_counter()
    before = received()
    d.add(1)  # a new proxy of a known type: no description needed
    assert received() - before == 1 + 1


def test_async_and_aio_forms_of_a_proxy_method(conn):
    c = conn.root.make_counter(10)
    assert tether.async_(c.add)(5).result(timeout=10) == 15

    async def main():
        return await tether.aio(c.add)(1)

    assert asyncio.run(main()) == 16


def test_a_proxy_passed_back_is_the_hosts_object_again(conn):
    c = conn.root.make_counter()
    d = conn.root.make_counter()
    assert conn.root.same(c, c) == [True, False]
    assert conn.root.same(c, d) == [False, False]
    assert conn.root.echo(c) is c
    assert conn.root.echo([c, {"k": c}]) == [c, {"k": c}]


def test_the_host_releases_its_object_when_the_last_proxy_goes(conn):
    released = conn.root.counters_released()
    c = conn.root.make_counter()
    also = conn.root.echo(c)  # the same proxy
    assert also is c
    del c
    gc.collect()
    time.sleep(0.1)
    assert conn.root.counters_released() == released  # `also` still holds it
    del also
    eventually(lambda: conn.root.counters_released() == released + 1, what="release")


def test_many_proxies_are_released_in_batches(conn):
    released = conn.root.counters_released()
    proxies = [conn.root.make_counter(i) for i in range(200)]
    assert [p.get() for p in proxies[:3]] == [0, 1, 2]
    del proxies
    eventually(lambda: conn.root.counters_released() == released + 200, what="200 releases")


def test_a_proxy_after_its_connection_closed(host):
    conn = host.connect(name="short-lived")
    c = conn.root.make_counter()
    conn.close()
    with pytest.raises(tether.NotConnectedError):
        c.add(1)


def test_a_proxy_cannot_travel_over_another_connection(host, conn):
    c = conn.root.make_counter()
    with host.connect(name="other") as other:
        with pytest.raises(TypeError, match="only to the connection it came from"):
            other.root.echo(c)
        assert other.root.add(1, 2) == 3


def test_proxies_from_many_threads(conn):
    c = conn.root.make_counter()
    errors = []

    def work():
        try:
            for _ in range(100):
                c.add(1)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert c.get() == 400


# ---- this script's objects, held by the host -----------------------------------------------


class Greeter:
    def __init__(self, greeting):
        self.greeting = greeting
        self._secret = "hidden"

    def greet(self, name, punctuation="!"):
        return f"{self.greeting}, {name}{punctuation}"

    def boom(self):
        raise KeyError("no such greeting")


def test_the_host_calls_methods_of_a_script_object(conn):
    g = Greeter("Hello")
    slot = conn.root.hold(g)
    try:
        assert conn.root.held_call(slot, "greet", ["Bob"], {}) == "Hello, Bob!"
        assert conn.root.held_call(slot, "greet", ["Ann"], {"punctuation": "?"}) == "Hello, Ann?"
        assert conn.root.held_call(slot, "__getattr__", ["greeting"], {}) == "Hello"
        conn.root.held_call(slot, "__setattr__", ["greeting", "Hi"], {})
        assert g.greeting == "Hi"
        with pytest.raises(KeyError, match="no such greeting") as info:
            conn.root.held_call(slot, "boom", [], {})
        assert "in boom" in info.value.remote_traceback
        with pytest.raises(AttributeError, match="underscore|_secret"):
            conn.root.held_call(slot, "__getattr__", ["_secret"], {})
        assert conn.root.get_held(slot) is g  # back home: the object itself
        assert conn.root.same(g, g) == [True, True]
    finally:
        conn.root.drop(slot)


def test_operations_on_script_objects(conn):
    data = {"a": 1}

    class Box:
        def __len__(self):
            return len(data)

        def __getitem__(self, key):
            return data[key]

        def __setitem__(self, key, value):
            data[key] = value

        def __contains__(self, key):
            return key in data

        def __iter__(self):
            return iter(sorted(data))

        def __repr__(self):
            return "<Box>"

    slot = conn.root.hold(Box())
    try:
        call = lambda m, *a: conn.root.held_call(slot, m, list(a), {})  # noqa: E731
        assert call("__len__") == 1
        call("__setitem__", "b", 2)
        assert call("__getitem__", "b") == 2
        assert call("__contains__", "a") is True
        assert call("__repr__") == "<Box>"
        assert call("__bool__") is True
        with pytest.raises(KeyError):
            call("__getitem__", "zzz")
        it = call("__iter__")  # our own iterator, by reference there and back
        assert next(it) == "a"
        info = call("__tether_describe__")
        assert info["type"].endswith("Box") and info["per_type"] is True
    finally:
        conn.root.drop(slot)


def test_functions_and_lambdas_travel_by_reference(conn):
    slot = conn.root.hold(lambda x: x * 2)
    try:
        assert conn.root.held_call(slot, "__call__", [21], {}) == 42
    finally:
        conn.root.drop(slot)


def test_a_script_object_lives_while_the_host_holds_it(conn):
    g = Greeter("Hey")
    ref = weakref.ref(g)
    slot = conn.root.hold(g)
    del g
    gc.collect()
    time.sleep(0.1)
    assert ref() is not None, "the host's reference keeps it alive"
    assert conn.root.held_call(slot, "greet", ["you"], {}) == "Hey, you!"
    conn.root.drop(slot)
    eventually(lambda: ref() is None, what="the object to be released")


def test_the_same_object_is_one_reference(conn):
    g = Greeter("Yo")
    a = conn.root.hold(g)
    b = conn.root.hold(g)
    try:
        assert conn.root.same(g, g) == [True, True]
    finally:
        conn.root.drop(a)
        conn.root.drop(b)


def test_closing_the_connection_releases_what_the_host_held(host):
    g = Greeter("Bye")
    ref = weakref.ref(g)
    conn = host.connect(name="closing")
    conn.root.hold(g)  # never dropped by the host
    del g
    conn.close()
    eventually(lambda: ref() is None, what="release at close")


def test_objects_in_results_of_script_services(conn, host):
    # The host calls a service of this script that returns an object; the host then
    # holds it and calls it, all through proxies.
    g = Greeter("Hi")
    conn.register("greeter", lambda: g)
    proxy_back = conn.root.call_client(conn.name, "greeter", [])
    assert proxy_back is g


def test_proxies_from_a_serve_loop_connection(host):
    async def main():
        conn = await tether.connect_async(
            name="loop-objects", address=host.address, serve="loop"
        )
        try:
            loop_thread = threading.get_ident()
            seen = []

            class Probe:
                def where(self):
                    seen.append(threading.get_ident())
                    return "here"

            slot = await conn.aio.hold(Probe())
            assert await conn.aio.held_call(slot, "where", [], {}) == "here"
            assert seen == [loop_thread], "methods run on the loop's thread with serve='loop'"
            await conn.aio.drop(slot)
        finally:
            conn.close()

    asyncio.run(main())


def test_pack_outside_a_call_refuses_objects():
    with pytest.raises(TypeError, match="plain data only"):
        _tether._pack(Greeter("x"))
