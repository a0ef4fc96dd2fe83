"""Fixtures: a real C host process (build/tether-testhost, from testhost.c) per test module,
a private runtime directory for it, and connections to it.

Run through `make test` (which sets TETHER_BUILD_DIR, TETHER_RUNTIME_DIR and
PYTHONPATH=build/python), or by hand:
    PYTHONPATH=build/python python3 -m pytest python/tests
"""

import os
import select
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import tether

SOURCE_DIR = os.environ.get("TETHER_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..")
)
BUILD_DIR = os.environ.get("TETHER_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")
TESTHOST = os.path.join(BUILD_DIR, "tether-testhost")


def build_platform():
    """The platform layer of the build under test (CMake's TETHER_PLATFORM): "linux" or
    "posix"; "linux" when the build says nothing (pip builds Linux's on Linux)."""
    try:
        with open(os.path.join(BUILD_DIR, "CMakeCache.txt"), encoding="utf-8") as f:
            for line in f:
                if line.startswith("TETHER_PLATFORM:"):
                    return line.strip().split("=", 1)[1]
    except OSError:
        pass
    return "linux"


def private_runtime_dir():
    """A new 0700 directory for one host's socket: under $TETHER_RUNTIME_DIR when that
    keeps socket paths short (Unix socket paths are limited to 108 bytes, and a named
    run's socket is runs/ and a key of up to 45 bytes below it), else in /tmp."""
    base = os.environ.get("TETHER_RUNTIME_DIR")
    if not base or len(base) > 40 or not os.path.isdir(base):
        base = None
    path = tempfile.mkdtemp(prefix="tpy-", dir=base)
    os.chmod(path, 0o700)
    return path


class Host:
    """One tether-testhost process. It exits when its stdin closes, so it never outlives
    the test run."""

    def __init__(self, name="pyhost", runtime_dir=None, env=None):
        self.name = name
        self.runtime_dir = runtime_dir or private_runtime_dir()
        self.env = env or {}
        self.proc = None
        self.address = None
        self.log_path = os.path.join(self.runtime_dir, "host.log")

    def log_lines(self):
        """The host's log so far: a list of (level, message), level the syslog number."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return []
        lines = []
        for line in text.splitlines():
            level, _, message = line.partition(" ")
            if level.isdigit():
                lines.append((int(level), message))
            elif lines:  # a multi-line record (a traceback) continues the previous one
                lines[-1] = (lines[-1][0], lines[-1][1] + "\n" + line)
        return lines

    def start(self, timeout=10.0):
        if not os.access(TESTHOST, os.X_OK):
            pytest.fail(f"{TESTHOST} is not built (run make)")
        env = dict(
            os.environ, TETHER_RUNTIME_DIR=self.runtime_dir, TETHER_TESTHOST_LOG=self.log_path,
            **self.env
        )
        env.pop("TETHER_ADDRESS", None)
        self.proc = subprocess.Popen(
            [TESTHOST, self.name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("ready "):
            self.kill()
            pytest.fail(f"tether-testhost did not start (said {line!r})")
        self.address = line.split(" ", 1)[1].strip()
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def state(self):
        """The process state letter from /proc ("T" once stopped), or None."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return None

    def suspend(self):
        """SIGSTOP, and wait until it took effect (a signal is delivered asynchronously)."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while self.state() not in ("T", "t") and time.monotonic() < deadline:
            time.sleep(0.001)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:  # killed and reaped by another thread meanwhile
                pass
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            if f and not f.closed:
                f.close()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def connect(self, **kwargs):
        kwargs.setdefault("name", "pytest")
        kwargs.setdefault("timeout", 10.0)
        return tether.connect(address=self.address, **kwargs)


@pytest.fixture(scope="module")
def host():
    """A host shared by the tests of one module."""
    h = Host().start()
    yield h
    h.stop()


@pytest.fixture
def fresh_host():
    """A host of its own, for tests that stop, suspend or kill it."""
    h = Host("pyfresh").start()
    yield h
    h.stop()


@pytest.fixture
def conn(host):
    c = host.connect()
    yield c
    c.close()


def wait_until(predicate, timeout=5.0, interval=0.01):
    """Poll predicate until it is true; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
