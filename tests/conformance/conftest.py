"""Fixtures of the conformance suite: a real C host (build/tether-testhost) with a private
runtime directory, raw connections to it, and a listening peer for the C client
(build/tether-conformance-client). Nothing here imports the tether Python package.

Run through `make test`, or by hand from the source tree:
    TETHER_BUILD_DIR=$PWD/build /usr/bin/python3 -m pytest -q tests/conformance
"""

import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from peer import Listener, Peer  # noqa: E402

SOURCE_DIR = os.environ.get("TETHER_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..")
)
BUILD_DIR = os.environ.get("TETHER_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")
TESTHOST = os.path.join(BUILD_DIR, "tether-testhost")
CLIENT = os.path.join(BUILD_DIR, "tether-conformance-client")


def private_dir():
    """A new 0700 directory, short enough for a Unix socket path."""
    base = os.environ.get("TETHER_RUNTIME_DIR")
    if not base or len(base) > 60 or not os.path.isdir(base):
        base = None
    path = tempfile.mkdtemp(prefix="tconf-", dir=base)
    os.chmod(path, 0o700)
    return path


class Host:
    """One tether-testhost process; it exits when its stdin closes."""

    def __init__(self):
        self.runtime_dir = private_dir()
        self.log_path = os.path.join(self.runtime_dir, "host.log")
        if not os.access(TESTHOST, os.X_OK):
            pytest.fail(f"{TESTHOST} is not built (run make)")
        env = dict(
            os.environ, TETHER_RUNTIME_DIR=self.runtime_dir, TETHER_TESTHOST_LOG=self.log_path
        )
        self.proc = subprocess.Popen(
            [TESTHOST, "conformance"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("ready "):
            self.stop()
            pytest.fail(f"tether-testhost did not start (said {line!r})")
        self.address = line.split(" ", 1)[1].strip()

    def connect(self):
        """A raw connection, before any frame."""
        return Peer.connect(self.address)

    def open(self, **hello):
        """A raw connection after a successful handshake."""
        p = self.connect()
        p.welcome = p.handshake(**hello)
        return p

    def log_text(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_log(self, text, timeout=5.0):
        """Whether text shows up in the host's log within timeout."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def log_level_of(self, text):
        """The syslog level of the host's first log line that holds text, or None."""
        for line in self.log_text().splitlines():
            if text in line:
                return int(line.split(" ", 1)[0])
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stdout.close()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def host():
    h = Host()
    yield h
    h.stop()


@pytest.fixture
def conn(host):
    p = host.open()
    yield p
    p.close()


class Client:
    """build/tether-conformance-client run against a Listener of ours."""

    def __init__(self, listener, mode):
        if not os.access(CLIENT, os.X_OK):
            pytest.fail(f"{CLIENT} is not built (run make)")
        self.proc = subprocess.Popen(
            [CLIENT, listener.address, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )

    def finish(self, timeout=10.0):
        """(exit status, stdout, stderr) once it exits."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out.decode(), err.decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@pytest.fixture
def listener():
    d = private_dir()
    lst = Listener(d)
    yield lst
    lst.close()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def client_of(listener):
    """client_of(mode): a started C client of listener; killed at the end if still running."""
    started = []

    def start(mode):
        c = Client(listener, mode)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()
