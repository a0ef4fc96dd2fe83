"""The package as installed and run: python -m tether, pip install, other interpreters."""

import os
import re
import shutil
import subprocess
import sys

import pytest

import tether
from tether import _tether

from conftest import SOURCE_DIR

# A script run by other interpreters: import, connect to the host, call it.
CLIENT_SCRIPT = r"""
import sys, tether
conn = tether.connect(name="other-python", address=sys.argv[1])
print(tether._tether.__file__)
print(conn.root.add(40, 2), conn.root.echo([b"x", {"k": (1, 2)}]))
conn.close()
"""


def child_env(pythonpath):
    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath
    env.pop("PYTHONHOME", None)
    return env


def test_versions():
    assert re.fullmatch(r"\d+\.\d+\.\d+", tether.__version__)
    assert tether.core_version == _tether.core_version
    assert re.fullmatch(r"\d+\.\d+\.\d+", tether.core_version)
    assert tether.protocol_version >= 1


def test_python_m_tether_version():
    out = subprocess.run(
        [sys.executable, "-m", "tether", "--version"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert f"tether {tether.__version__}" in out.stdout
    assert f"core {tether.core_version}" in out.stdout
    assert f"protocol {tether.protocol_version}" in out.stdout


def test_the_extension_is_a_stable_abi_module():
    assert _tether.__file__.endswith(".abi3.so")


def test_public_names():
    for name in tether.__all__:
        assert hasattr(tether, name), name


def _other_python():
    """A python3 on PATH that is not /usr/bin/python3 (pyenv's, on this machine)."""
    system = os.path.realpath("/usr/bin/python3")
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or os.path.realpath(directory) in ("/usr/bin", "/bin"):
            continue
        candidate = shutil.which("python3", path=directory)
        if not candidate or os.path.realpath(candidate) == system:
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.executable, sys.version_info >= (3, 10))"],
            capture_output=True, text=True, timeout=30,
        )
        if probe.returncode != 0 or not probe.stdout.strip().endswith("True"):
            continue
        if os.path.realpath(probe.stdout.split()[0]) == system:
            continue
        return candidate
    return None


def test_the_other_python_imports_the_built_extension(host):
    python = _other_python()
    if python is None:
        pytest.skip("no other python3 (3.10 or newer) on PATH")
    pkg_parent = os.path.dirname(os.path.dirname(tether.__file__))
    out = subprocess.run(
        [python, "-c", CLIENT_SCRIPT, host.address],
        capture_output=True, text=True, timeout=60, env=child_env(pkg_parent),
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == _tether.__file__
    assert lines[1] == "42 [b'x', {'k': [1, 2]}]"


def test_pip_install_without_build_isolation(host, tmp_path):
    """pip builds the extension from the library's sources and installs a working package."""
    check = subprocess.run(
        ["/usr/bin/python3", "-m", "pip", "--version"], capture_output=True, timeout=60
    )
    if check.returncode != 0:
        pytest.skip("pip is not available for /usr/bin/python3")
    # Build from a copy, so the checkout gets no build/ or egg-info directories.
    tree = tmp_path / "tree"
    for part in ("python", "src", "include"):
        shutil.copytree(
            os.path.join(SOURCE_DIR, part), tree / part,
            ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__", "*.so"),
        )
    target = tmp_path / "site"
    env = dict(os.environ, PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        ["/usr/bin/python3", "-m", "pip", "install", "--no-build-isolation", "--no-index",
         "--no-deps", "--quiet", "--target", str(target), str(tree / "python")],
        capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    so = list((target / "tether").glob("_tether*.so"))
    assert [p.name for p in so] == ["_tether.abi3.so"]
    wheel = next(target.glob("tether-*.dist-info")) / "WHEEL"
    assert re.search(r"^Tag: cp310-abi3-", wheel.read_text(), re.M), wheel.read_text()
    run = subprocess.run(
        ["/usr/bin/python3", "-c", CLIENT_SCRIPT, host.address],
        capture_output=True, text=True, timeout=60, env=child_env(str(target)), cwd=str(tmp_path),
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == str(target / "tether" / "_tether.abi3.so")
    assert run.stdout.splitlines()[1] == "42 [b'x', {'k': [1, 2]}]"
    version = subprocess.run(
        ["/usr/bin/python3", "-m", "tether", "--version"],
        capture_output=True, text=True, timeout=60, env=child_env(str(target)), cwd=str(tmp_path),
    )
    assert f"core {tether.core_version}" in version.stdout


def test_weak_tables_forget_collected_objects():
    # tether._weak's tables, which stand in for weakref's in what a spawned child imports.
    import gc

    from tether import _weak

    class Thing:
        pass

    values, members = _weak.WeakValues(), _weak.WeakMembers()
    a, b = Thing(), Thing()
    values["a"], values["b"] = a, b
    members.add(a)
    members.add(b)
    members.add(a)
    assert values.get("a") is a and values.get("missing", 7) == 7
    assert len(values) == 2 and len(members) == 2 and members
    assert sorted(map(id, members)) == sorted([id(a), id(b)])
    del a
    gc.collect()
    assert values.get("a") is None and len(values) == 1
    assert list(members) == [b]
    members.discard(b)
    members.discard(Thing())  # not a member: nothing happens
    assert not members and len(members) == 0
    values["b"] = c = Thing()  # a new object under a key whose old one lives on
    del b
    gc.collect()
    assert values.get("b") is c  # the old one's going did not take the new entry
