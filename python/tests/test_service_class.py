"""tether.Service classes, tether.services.EvalExec, and tether.LogHandler, exercised by
the C host (call_client calls a client's service by name; the host's log goes to the file
conftest passes it in $TETHER_TESTHOST_LOG)."""

import logging
import uuid

import pytest

import tether

from conftest import wait_until


@pytest.fixture
def client(host):
    """A connection under a name of its own, so the host can call it back."""
    c = host.connect(name=f"svcclass-{uuid.uuid4().hex[:8]}")
    yield c
    c.close()


def call_back(conn, method, *args):
    """Have the host call method(*args) on conn's client."""
    return conn.root.call_client(conn.name, method, list(args))


# ---- tether.Service -----------------------------------------------------------------


class Actors(tether.Service):
    label = "not a service"  # data attributes are not services

    def __init__(self):
        self.spawned = []

    def spawn_actor(self, name):
        self.spawned.append(name)
        return f"spawned {name}"

    def count(self):
        return len(self.spawned)

    @staticmethod
    def twice(x):
        return 2 * x

    @property
    def last(self):  # properties are not services
        return self.spawned[-1]

    def _private(self):
        return "hidden"


def test_service_methods_are_services(client):
    actors = client.register_service(Actors())
    assert isinstance(actors, Actors)
    assert call_back(client, "spawn_actor", "Bob") == "spawned Bob"
    assert call_back(client, "spawn_actor", "Ann") == "spawned Ann"
    assert call_back(client, "count") == 2
    assert call_back(client, "twice", 21) == 42
    assert actors.spawned == ["Bob", "Ann"]
    for name in ("_private", "label", "last", "prefix", "_tether_services"):
        with pytest.raises(tether.NoSuchServiceError):
            call_back(client, name)


def test_service_prefix_and_inheritance(client):
    class Editor(Actors):
        prefix = "editor"

        async def save(self, path):
            return f"saved {path}"

    client.register_service(Editor())
    assert call_back(client, "editor.spawn_actor", "Cy") == "spawned Cy"
    assert call_back(client, "editor.save", "/tmp/x") == "saved /tmp/x"
    with pytest.raises(tether.NoSuchServiceError):
        call_back(client, "spawn_actor", "Cy")


def test_service_errors_reach_the_host(client):
    class Failing(tether.Service):
        def boom(self, key):
            return {}[key]

    client.register_service(Failing())
    with pytest.raises(KeyError) as info:
        call_back(client, "boom", "k")
    assert info.value.remote_type == "KeyError"


def test_register_service_checks(client):
    with pytest.raises(TypeError):
        client.register_service(object())
    client.register_service(Actors())
    with pytest.raises(ValueError, match="registered already"):
        client.register_service(Actors())


# ---- tether.services.EvalExec ---------------------------------------------------------


def test_eval_exec_shares_one_namespace(client):
    ee = client.register_service(tether.services.EvalExec())
    assert call_back(client, "exec", "x = 5") is None
    assert call_back(client, "eval", "x") == 5
    assert call_back(client, "exec", "def f(y):\n    return x * y\n") is None
    assert call_back(client, "eval", "f(3) + 1") == 16
    assert call_back(client, "eval", "[x, 'a', None]") == [5, "a", None]
    assert ee.namespace["x"] == 5


def test_eval_before_exec_is_a_name_error(client):
    client.register_service(tether.services.EvalExec())
    # The host receives the error as type "NameError"; call_client passes it on whole,
    # so its Python caller gets a NameError back.
    with pytest.raises(NameError, match="'x' is not defined") as info:
        call_back(client, "eval", "x")
    assert info.value.remote_type == "NameError"
    with pytest.raises(SyntaxError):
        call_back(client, "exec", "x = ")


def test_eval_exec_namespaces_are_per_instance(host):
    a = host.connect(name=f"ee-a-{uuid.uuid4().hex[:8]}")
    b = host.connect(name=f"ee-b-{uuid.uuid4().hex[:8]}")
    try:
        a.register_service(tether.services.EvalExec())
        b.register_service(tether.services.EvalExec({"x": "given"}))
        call_back(a, "exec", "x = 1")
        assert call_back(a, "eval", "x") == 1
        assert call_back(b, "eval", "x") == "given"
    finally:
        a.close()
        b.close()


# ---- tether.LogHandler ----------------------------------------------------------------


def host_log_has(host, level, text):
    return wait_until(lambda: any(lv == level and text in m for lv, m in host.log_lines()))


def test_log_handler_reaches_host_log(host, client):
    logger = logging.getLogger(f"tether.test.{uuid.uuid4().hex[:8]}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = tether.LogHandler(client)
    logger.addHandler(handler)
    try:
        logger.critical("crit %d", 1)
        logger.error("err %s", "two")
        logger.warning("warn 3")
        logger.info("info 4")
        logger.debug("debug 5")
    finally:
        logger.removeHandler(handler)
    prefix = f"[{client.name} pid "
    for level, message in ((3, "crit 1"), (3, "err two"), (4, "warn 3"), (6, "info 4"),
                           (7, "debug 5")):
        assert host_log_has(host, level, f"] {logger.name}: {message}"), host.log_lines()
    assert any(m.startswith(prefix) and m.endswith(": info 4") for _, m in host.log_lines())


def test_log_handler_uses_formatter_and_survives_disconnect(host):
    conn = host.connect(name=f"logfmt-{uuid.uuid4().hex[:8]}")
    handler = tether.LogHandler(conn)
    handler.setFormatter(logging.Formatter("<%(levelname)s> %(message)s"))
    logger = logging.getLogger(f"tether.fmt.{uuid.uuid4().hex[:8]}")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("formatted")
        assert host_log_has(host, 4, f"{logger.name}: <WARNING> formatted")
        conn.close()
        logger.warning("dropped while closed")  # no exception, nothing sent
    finally:
        logger.removeHandler(handler)


def test_client_log_method(host, client):
    client.log(6, "direct message", logger="direct.logger")
    assert host_log_has(host, 6, "direct.logger: direct message")
    client.log(7, "no logger")
    assert host_log_has(host, 7, "] : no logger")  # logger None: ""
    with pytest.raises(ValueError):
        client.log(2, "bad level")
    with pytest.raises(ValueError):
        client.log(8, "bad level")


def test_service_exceptions_are_logged_while_a_log_handler_is_open(host, client):
    @client.service
    def explode(tag):
        raise RuntimeError(f"exploded {tag}")

    with pytest.raises(RuntimeError, match="exploded before"):
        call_back(client, "explode", "before")  # no LogHandler: not logged
    handler = tether.LogHandler(client)
    with pytest.raises(RuntimeError, match="exploded during"):
        call_back(client, "explode", "during")
    assert host_log_has(host, 3, "tether.service: service 'explode' raised:")
    records = [m for _, m in host.log_lines() if "tether.service:" in m and client.name in m]
    assert len(records) == 1, records
    assert "Traceback" in records[0] and "RuntimeError: exploded during" in records[0]
    handler.close()
    with pytest.raises(RuntimeError, match="exploded after"):
        call_back(client, "explode", "after")
    quiet = tether.LogHandler(client, report_service_errors=False)
    with pytest.raises(RuntimeError, match="exploded quiet"):
        call_back(client, "explode", "quiet")
    quiet.close()
    client.root.echo(1)  # the log frames, if any, were sent before this reply
    assert not any("exploded before" in m or "exploded after" in m or "exploded quiet" in m
                   for _, m in host.log_lines())
