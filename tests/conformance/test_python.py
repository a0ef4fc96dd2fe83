"""The rules of docs/protocol.md that name the Python package: error type names of
Python exceptions (section 8), and what its objects describe (section 9). A script using
the package built in build/python connects to the suite's raw peer acting as host."""

import os
import subprocess
import sys

import pytest
from conftest import BUILD_DIR
from peer import NOTIFY, REQUEST, RESPONSE, Error

SCRIPT = r'''
import sys
import time

import tether


class QuotaExceeded(Exception):
    pass


class Outer:
    class Inner(Exception):
        pass


class Box:
    def __len__(self):
        return 0

    def put(self, item):
        pass

    def _private(self):
        pass


host = tether.connect(name="py-conformance", address=sys.argv[1], reconnect=False)


@host.service
def quota():
    raise QuotaExceeded("over quota")


@host.service
def nested():
    raise Outer.Inner("deep")


@host.service
def builtin():
    raise KeyError("k")


@host.service
def relay():
    return host.root.fail()


@host.service
def box():
    return Box()


host.notify.started()
while host.is_connected():
    time.sleep(0.05)
'''


@pytest.fixture
def python_client(listener, tmp_path):
    script = tmp_path / "py_conformance.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.path.join(BUILD_DIR, "python"))
    proc = subprocess.Popen(
        [sys.executable, str(script), listener.address],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        p, hello = listener.accept_client()
        assert hello["language"] == "python"
        f = p.recv_kind(NOTIFY)
        while f[3] == "tether.announce":  # one per service registered while connected
            f = p.recv_kind(NOTIFY)
        assert f[3] == "started"
        yield p
    finally:
        proc.kill()
        proc.communicate()


def error_of(p, method):
    f = p.call(1, method)
    assert f[2] is True and isinstance(f[3], Error), f
    return f[3]


def test_python_builtin_exception_travels_by_its_bare_name(python_client):
    assert error_of(python_client, "builtin").type == "KeyError"


def test_python_other_exception_travels_as_module_and_qualified_name(python_client):
    assert error_of(python_client, "quota").type == "__main__.QuotaExceeded"
    assert error_of(python_client, "nested").type == "__main__.Outer.Inner"


def test_python_relayed_error_keeps_its_original_type_name(python_client):
    p = python_client
    p.send([REQUEST, 1, 0, 0, "relay", [], {}, 0])
    f = p.recv_kind(REQUEST)  # relay() calls our fail()
    assert f[4] == "fail"
    p.send([RESPONSE, f[1], True, Error("app.Special", "from the far side", None)])
    r = p.recv_kind(RESPONSE)
    assert r[1] == 1 and r[2] is True
    assert (r[3].type, r[3].message) == ("app.Special", "from the far side")


def test_python_describe_lists_methods_without_operations(python_client):
    p = python_client
    ref = p.call(1, "box")[3]
    assert ref.owner == 0 and ref.type_name == "__main__.Box"
    info = p.call(2, "__tether_describe__", target=ref.object_id)[3]
    assert info == {"type": "__main__.Box", "methods": ["put"], "per_type": True}
