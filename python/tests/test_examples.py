"""The Python examples and the demo run as their docstrings say: examples/asyncio_line_server.py,
examples/qt_two_way.py (under Xvfb, clicked with xdotool), examples/actor_coroutines.py with
tether-demo's actor events, examples/demo_client.py and tools/demo.py (what `make demo`
runs), against real hosts (build/tether-demo,
build/tether-testhost), over Unix sockets and loopback TCP only, each bounded in time.
The pages of two reference systems (docs/ref-engine-api.md, docs/ref-asyncio-loop.md) are
checked too: their Python compiles and their links resolve.
"""

import os
import queue
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

import tether

from conftest import BUILD_DIR, SOURCE_DIR, Host, private_runtime_dir, wait_until

EXAMPLES = os.path.join(SOURCE_DIR, "examples")
DEMO = os.path.join(BUILD_DIR, "tether-demo")
DEMO_SCRIPT = os.path.join(SOURCE_DIR, "tools", "demo.py")
# Where test_qt_two_way leaves its screenshot, for a human to look at.
OUTPUT_DIR = os.path.join(BUILD_DIR, "test-output")


def example_env(runtime_dir, **extra):
    """The environment of an example: tether importable from this build, hosts found in
    runtime_dir."""
    env = dict(os.environ, TETHER_RUNTIME_DIR=runtime_dir, PYTHONUNBUFFERED="1", **extra)
    env.pop("TETHER_ADDRESS", None)
    path = os.path.join(BUILD_DIR, "python")
    env["PYTHONPATH"] = path + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Proc:
    """A process whose output goes to a file that the test reads as it grows."""

    def __init__(self, argv, env, log_path, **kwargs):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, **kwargs)

    @property
    def pid(self):
        return self.proc.pid

    def output(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_for(self, pattern, timeout=10.0):
        """The first match of the regular expression in the output, waiting for it."""
        found = wait_until(lambda: re.search(pattern, self.output(), re.M), timeout)
        assert found, f"no {pattern!r} in the output of {self.proc.args[:2]}:\n{self.output()}"
        return found

    def wait(self, timeout=10.0):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.proc.args[:2]} still runs after {timeout} s:\n{self.output()}")

    def signal(self, signo):
        if self.proc.poll() is None:
            self.proc.send_signal(signo)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def run_example(name, args, runtime_dir, log_name=None, **env):
    log = os.path.join(runtime_dir, log_name or f"{name}.out")
    return Proc([sys.executable, os.path.join(EXAMPLES, name), *args],
                example_env(runtime_dir, **env), log)


@pytest.fixture
def runtime_dir():
    path = private_runtime_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def demo(runtime_dir):
    """build/tether-demo, serving the host "demo" in runtime_dir for at most two minutes."""
    if not os.access(DEMO, os.X_OK):
        pytest.fail(f"{DEMO} is not built (run make)")
    host = Proc([DEMO, "--seconds", "120"], example_env(runtime_dir),
                os.path.join(runtime_dir, "demo.out"))
    host.wait_for(r"TETHER_ADDRESS=unix:")
    host.address = "unix:" + os.path.join(runtime_dir, "demo.sock")
    yield host
    host.signal(signal.SIGTERM)
    assert host.wait() == 0, host.output()
    host.stop()


# ---- examples/asyncio_line_server.py -------------------------------------------------------


def tcp_lines(port, lines, replies):
    """Send lines to 127.0.0.1:port, read `replies` lines back; returns them."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall("".join(f"{line}\n" for line in lines).encode())
        got = b""
        while got.count(b"\n") < replies:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    return got.decode().splitlines()


def actor_names(address):
    with tether.connect(name="pytest-examples", address=address, timeout=10) as c:
        return [a.name for a in c.root.list_actors()]


def test_asyncio_line_server(demo, runtime_dir):
    args = [demo.address, "--port", "0", "--seconds", "60", "--interval", "0.2"]
    first = run_example("asyncio_line_server.py", args, runtime_dir, "first.out")
    second = None
    try:
        port = int(first.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))

        # Every line spawns an actor, and the peer hears back (in the order the calls
        # complete: each line has a task of its own).
        assert sorted(tcp_lines(port, ["Ann", "Bob"], 2)) == ["spawned Ann at (0.0, 0.0)",
                                                              "spawned Bob at (2.0, 0.0)"]
        assert {"Ann", "Bob"} <= set(actor_names(demo.address))
        demo.wait_for(r"asyncio_line_server spawned actor 'Bob' at \(2\.0, 0\.0\)")

        # The timers run: frame rates printed, actors moved.
        first.wait_for(r"host at [\d.]+ fps")
        demo.wait_for(r"asyncio_line_server calls move_actor\(")

        # A second Ann fails in a task nobody awaits: the host's log shows it.
        tcp_lines(port, ["Ann"], 0)
        demo.wait_for(r"error: \[asyncio_line_server pid %d\] asyncio: "
                      r"Task exception was never retrieved" % first.pid)
        demo.wait_for(r"^\s+ValueError: an actor named 'Ann' exists already")

        # Running it again stops the first run's tasks, and the first run exits.
        second = run_example("asyncio_line_server.py", args, runtime_dir, "second.out")
        assert first.wait(15) == 0, first.output()
        stopped = first.wait_for(r"stopped \(a new run replaces this one\): "
                                 r"cancelled (\d+) tasks \((.*)\)")
        cancelled = stopped.group(2)
        for task in ("tcp server", "wander timer", "report timer"):
            assert task in cancelled
        demo.wait_for(r"\[asyncio_line_server\] pid %d stopped \(a new run replaces this one\)"
                      % first.pid)
        # The new run was told which tasks the previous one cancelled.
        told = second.wait_for(r"replaced the previous run \(pid %d\), which cancelled "
                               r"(\d+) tasks \((.*)\)" % first.pid)
        assert told.groups() == stopped.groups()

        # The new run serves on; the host's Disconnect stops it the same way (the client
        # sends itself SIGTERM).
        port = int(second.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        assert tcp_lines(port, ["Cid"], 1) == ["spawned Cid at (0.0, 0.0)"]
        assert "Cid" in actor_names(demo.address)
        with tether.connect(name="pytest-examples", address=demo.address, timeout=10) as c:
            c.root["tether.disconnect_client"]("asyncio_line_server")
        assert second.wait(15) == 0, second.output()
        second.wait_for(r"stopped \(SIGTERM\): cancelled \d+ tasks")
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_asyncio_line_server_bounded_run(demo, runtime_dir):
    run = run_example("asyncio_line_server.py",
                      [demo.address, "--seconds", "1", "--interval", "0.2"], runtime_dir)
    try:
        assert run.wait(20) == 0, run.output()
        run.wait_for(r"stopped \(1 seconds are up\): cancelled 3 tasks")
    finally:
        run.stop()


# ---- examples/qt_two_way.py ----------------------------------------------------------------


def qt_missing():
    try:
        import PySide2.QtWidgets  # noqa: F401
    except ImportError:
        return "PySide2 is not installed (make deps installs python3-pyside2.qtwidgets)"
    for tool in ("Xvfb", "xdotool"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make deps installs xvfb and xdotool)"
    return None


@pytest.fixture
def display(runtime_dir):
    """A private X server (Xvfb) for the Qt example: its DISPLAY."""
    missing = qt_missing()
    if missing:
        pytest.skip(missing)
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", "1", "-screen", "0", "800x600x24", "-nolisten", "tcp"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    ready, _, _ = select.select([xvfb.stdout], [], [], 15)
    number = xvfb.stdout.readline().decode().strip() if ready else ""
    if not number.isdigit():
        xvfb.kill()
        xvfb.wait()
        pytest.fail("Xvfb did not start")
    yield f":{number}"
    xvfb.terminate()
    xvfb.wait(5)
    xvfb.stdout.close()


def start_qt(address, runtime_dir, display, *args):
    return run_example("qt_two_way.py", [address, "--seconds", "60", *args], runtime_dir,
                       DISPLAY=display, XDG_RUNTIME_DIR=runtime_dir)


def click(display, state, name="qt_two_way"):
    """A real click on the window's button, through the X server."""
    env = dict(os.environ, DISPLAY=display)
    out = subprocess.run(
        ["xdotool", "search", "--sync", "--onlyvisible", "--name", f"^tether: {name} "],
        env=env, capture_output=True, text=True, timeout=10)
    window = out.stdout.split()[0]
    x, y = state["button"]
    subprocess.run(["xdotool", "mousemove", "--window", window, str(x), str(y), "click", "1"],
                   env=env, check=True, timeout=10)


def test_qt_two_way(display, runtime_dir):
    host = Host("qthost").start()
    screenshot = os.path.join(OUTPUT_DIR, "qt_two_way-testhost.png")
    os.makedirs(OUTPUT_DIR, exist_ok=True)
    if os.path.exists(screenshot):
        os.unlink(screenshot)
    app = start_qt(host.address, runtime_dir, display, "--service", "echo",
                   "--screenshot", screenshot)
    try:
        conn = host.connect(name="pytest-qt")

        def state():
            try:
                return conn.root.call_client("qt_two_way", "state", [])
            except LookupError:  # not connected yet, or its services not registered yet
                return None

        first = wait_until(state, timeout=20)
        assert first, f"the Qt example did not connect:\n{app.output()}"
        assert first["clicks"] == 0 and first["messages"] == []

        # Host to script: a call and a notification, run on the Qt thread.
        assert conn.root.call_client("qt_two_way", "show", ["hello from the host"]) == 1
        conn.root.notify_client("qt_two_way", "show", ["and a notification"])
        assert wait_until(lambda: len(state()["messages"]) == 2)
        assert state()["messages"] == ["hello from the host", "and a notification"]

        # Script to host: a click calls the host's echo, and the window shows the reply.
        calls_before = conn.root.client_calls("qt_two_way")
        click(display, first)
        assert wait_until(lambda: state()["replies"], timeout=10), app.output()
        now = state()
        assert now["clicks"] == 1
        assert now["replies"] == ["echo('qt-1') -> 'qt-1'"]
        assert now["reply_label"] == "echo('qt-1') -> 'qt-1'"
        assert conn.root.client_calls("qt_two_way") >= calls_before + 1

        # The host closes the window; its picture is saved.
        conn.root.call_client("qt_two_way", "quit", [])
        assert app.wait(15) == 0, app.output()
        assert "clicks 1, messages from the host 2" in app.output()
        with open(screenshot, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(screenshot) > 1000
        conn.close()
    finally:
        app.stop()
        host.stop()


def test_qt_two_way_with_the_demo(demo, display, runtime_dir):
    screenshot = os.path.join(OUTPUT_DIR, "qt_two_way-demo.png")
    os.makedirs(OUTPUT_DIR, exist_ok=True)
    if os.path.exists(screenshot):
        os.unlink(screenshot)
    app = start_qt(demo.address, runtime_dir, display, "--screenshot", screenshot)
    try:
        demo.wait_for(r"client 'qt_two_way' \(pid \d+, python")
        with tether.connect(name="pytest-qt", address=demo.address, timeout=10) as conn:
            # The demo calls its clients for anyone through tether.call_client.
            call_client = conn.root["tether.call_client"]

            def state():
                try:
                    return call_client("qt_two_way", "state", [])
                except tether.NoSuchServiceError:  # connected, services not registered yet
                    return None

            first = wait_until(state)
            assert first, app.output()
            assert call_client("qt_two_way", "show", ["hello from the demo"]) == 1

            # Each click spawns an actor.
            click(display, first)
            demo.wait_for(r"qt_two_way spawned actor 'qt-1'")
            click(display, first)
            demo.wait_for(r"qt_two_way spawned actor 'qt-2'")
            assert wait_until(lambda: len(state()["replies"]) == 2)
            now = state()
            assert now["replies"] == [
                "spawn_actor('qt-1') -> <Actor 'qt-1' at (0.0, 0.0)>",
                "spawn_actor('qt-2') -> <Actor 'qt-2' at (0.0, 0.0)>",
            ]
            assert now["messages"] == ["hello from the demo"]
            assert {"qt-1", "qt-2"} <= {a.name for a in conn.root.list_actors()}
            call_client("qt_two_way", "quit", [])
        assert app.wait(15) == 0, app.output()
        assert os.path.getsize(screenshot) > 1000
    finally:
        app.stop()


# ---- tether-demo's actor events, and examples/actor_coroutines.py --------------------------


class Events:
    """A service receiving tether-demo's actor events, and what it received, in order."""

    def __init__(self):
        self.queue = queue.Queue()

    def __call__(self, event, info):
        self.queue.put((event, info))

    def next(self, timeout=10.0):
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no actor event within {timeout} s")

    def next_not_ticked(self, timeout=10.0):
        while True:
            event, info = self.next(timeout)
            if event != "ticked":
                return event, info

    def quiet(self, seconds):
        """True if nothing arrives for that long."""
        try:
            got = self.queue.get(timeout=seconds)
        except queue.Empty:
            return True
        pytest.fail(f"an unexpected event: {got}")


def test_demo_actor_events(demo):
    events = Events()
    with tether.connect(name="pytest-scene", address=demo.address, timeout=10) as other, \
            tether.connect(name="pytest-watcher", address=demo.address, timeout=10,
                           services={"on_actor_event": events}) as watcher:
        other.root.spawn_actor("Pre", 1, 2, label="old")
        sub = watcher.root.subscribe_actor_events(every=0)
        assert sub == {"actors": 1, "every": 0, "fps": 60}
        # First a call, before the reply, then the actors of the scene.
        assert events.next() == ("subscribed", {"actors": 1, "every": 0, "fps": 60})
        event, pre = events.next()
        assert event == "spawned" and pre["existing"] is True
        assert {k: pre[k] for k in ("name", "x", "y", "label")} == \
            {"name": "Pre", "x": 1.0, "y": 2.0, "label": "old"}
        assert repr(pre["actor"]) == "<Actor 'Pre' at (1.0, 2.0)>"  # by reference
        demo.wait_for(r"pytest-watcher subscribed to actor events \(on_actor_event\(\) is told; "
                      r"no ticks\)")

        new = other.root.spawn_actor("New", 3, 4)
        event, info = events.next()
        assert event == "spawned" and info["existing"] is False and info["name"] == "New"
        assert info["id"] == pre["id"] + 1 and info["frame"] >= pre["frame"]
        other.root.rename_actor("Pre", "Renamed")
        other.root.delete_actor("Renamed")
        event, info = events.next()
        assert (event, info["id"], info["name"]) == ("destroyed", pre["id"], "Renamed")
        assert "actor" not in info and "existing" not in info
        assert events.quiet(0.3)  # every=0: no ticks

        # Subscribing again replaces the subscription, existing actors told again.
        assert watcher.root.subscribe_actor_events("on_actor_event", 1)["every"] == 1
        assert events.next_not_ticked() == ("subscribed", {"actors": 1, "every": 1, "fps": 60})
        assert events.next_not_ticked()[1]["name"] == "New"
        frames = []
        while len(frames) < 5:
            event, info = events.next()
            assert (event, info["name"]) == ("ticked", "New")
            frames.append(info["frame"])
        # Every frame; sorted, since two ticks may run on two pool threads (serve="thread").
        assert sorted(frames) == list(range(min(frames), min(frames) + 5))
        new.move(1, 1)
        assert wait_until(lambda: events.next()[1]["x"] == 4.0, 5)

        # Bad subscriptions: clear errors, and the subscription in place goes on.
        with pytest.raises(ValueError, match="client 'pytest-watcher' has no service 'nope' "
                           "to receive actor events: register it before subscribing"):
            watcher.root.subscribe_actor_events("nope")
        with pytest.raises(ValueError, match=r"'every': 0 \(no ticks\) to 3600 frames, not -1"):
            watcher.root.subscribe_actor_events(every=-1)
        with pytest.raises(TypeError, match="'every': expected int, got str"):
            watcher.root.subscribe_actor_events(every="6")
        with pytest.raises(ValueError, match="'method': the name of a service of yours"):
            watcher.root.subscribe_actor_events("")
        with pytest.raises(TypeError, match="unexpected keyword argument 'often'"):
            watcher.root.subscribe_actor_events(often=1)

        @watcher.service
        def refuses(event, info):
            raise RuntimeError(f"not now ({event})")

        with pytest.raises(RuntimeError, match=r"not now \(subscribed\)"):
            watcher.root.subscribe_actor_events("refuses")
        while not events.queue.empty():
            events.queue.get()
        assert events.next()[0] == "ticked"  # still subscribed, to on_actor_event

        assert watcher.root.unsubscribe_actor_events() is True
        assert watcher.root.unsubscribe_actor_events() is False
        time.sleep(0.2)  # ticks sent before the unsubscription may still be on their way
        while not events.queue.empty():
            events.queue.get()
        assert events.quiet(0.5)
        demo.wait_for(r"pytest-watcher unsubscribed from actor events")


def test_demo_actor_events_outlive_a_reconnection(demo):
    # The same process, under the same name, coming back: a reset, as the host sees it.
    first, second = Events(), Events()
    with tether.connect(name="pytest-scene", address=demo.address, timeout=10) as other:
        other.root.spawn_actor("Stays")
        other.root.spawn_actor("Goes")
        watcher = tether.connect(name="pytest-watcher", address=demo.address, timeout=10,
                                 services={"on_actor_event": first})
        watcher.root.subscribe_actor_events(every=0)
        assert [first.next()[0] for _ in range(3)] == ["subscribed", "spawned", "spawned"]
        watcher.close()
        demo.wait_for(r"client 'pytest-watcher' \(pid \d+\) left")
        other.root.delete_actor("Goes")      # known to it: told when it is back
        other.root.spawn_actor("Brief")      # spawned and destroyed meanwhile: never told
        other.root.delete_actor("Brief")
        other.root.spawn_actor("Arrives")    # told when it is back
        with tether.connect(name="pytest-watcher", address=demo.address, timeout=10,
                            services={"on_actor_event": second}):
            # Sent in this order; serve="thread" runs the two notifications on two pool
            # threads, so they may land in either (tests/test-demo.c checks the order).
            told = sorted((event, info["name"], info.get("existing"))
                          for event, info in (second.next(), second.next()))
            assert told == [("destroyed", "Goes", None), ("spawned", "Arrives", False)]
            assert second.quiet(0.3)
            demo.wait_for(r"actor events to 'pytest-watcher' go on after its reconnection "
                          r"\(4 missed\)")
            other.root.delete_actor("Stays")
            assert second.next()[1]["name"] == "Stays"
        assert first.quiet(0)


def test_actor_coroutines(demo, runtime_dir):
    with tether.connect(name="pytest-scene", address=demo.address, timeout=10) as scene:
        scene.root.spawn_actor("Ann")
        example = run_example("actor_coroutines.py",
                              [demo.address, "--every", "2", "--report", "5", "--seconds", "60"],
                              runtime_dir)
        try:
            example.wait_for(r"subscribed to 'demo': 1 actors in the scene, a tick every 2 frames")
            example.wait_for(r"^following 'Ann' \(id \d+\) from \(0\.0, 0\.0\), "
                             r"in the scene already$")
            example.wait_for(r"'Ann' tick 5 \(frame \d+\) at \(0\.0, 0\.0\)")
            scene.root.spawn_actor("Dot", 1, 1)
            example.wait_for(r"^following 'Dot' \(id \d+\) from \(1\.0, 1\.0\)$")
            scene.root.rename_actor("Dot", "Dottie")
            scene.root.move_actor("Dottie", 1, 0)
            example.wait_for(r"'Dot' is now called 'Dottie'")
            example.wait_for(r"'Dottie' tick \d+ \(frame \d+\) at \(2\.0, 1\.0\)")
            # A reset: the client reconnects, its subscription goes on.
            scene.root["tether.reset_client"]("actor_coroutines")
            demo.wait_for(r"actor events to 'actor_coroutines' go on after its reconnection")
            scene.root.delete_actor("Ann")
            example.wait_for(r"^'Ann' destroyed at frame \d+ after \d+ ticks: its coroutine ends$")
            demo.wait_for(r"\[actor_coroutines pid \d+\] actor_coroutines: 'Ann' destroyed at "
                          r"frame \d+ after \d+ ticks")
            example.signal(signal.SIGTERM)  # also what the host's Disconnect sends
            assert example.wait(15) == 0, example.output()
        finally:
            example.stop()
    out = example.output()
    assert "stopped following 'Dottie' after" in out
    assert "done: cancelled 1 coroutines" in out
    assert "Traceback" not in out, out
    demo.wait_for(r"actor_coroutines unsubscribed from actor events")
    demo.wait_for(r"\[actor_coroutines pid \d+\] actor_coroutines: following 'Dot' ")


def test_actor_coroutines_bad_input(demo, runtime_dir):
    refused = run_example("actor_coroutines.py", [demo.address, "--every", "-3"], runtime_dir)
    assert refused.wait(15) == 2, refused.output()
    assert ("the host refused the subscription: ValueError: subscribe_actor_events() "
            "argument 'every': 0 (no ticks) to 3600 frames, not -3") in refused.output()
    nohost = run_example("actor_coroutines.py", ["nohost"], runtime_dir, "nohost.out")
    assert nohost.wait(15) == 2, nohost.output()
    assert "cannot connect to 'nohost': " in nohost.output()
    assert "Traceback" not in refused.output() + nohost.output()
    refused.stop()
    nohost.stop()


# ---- examples/demo_client.py and tools/demo.py (make demo) --------------------------------


def test_demo_client(demo, runtime_dir):
    client = run_example("demo_client.py", [demo.address, "--seconds", "4"], runtime_dir)
    try:
        assert client.wait(30) == 0, client.output()
    finally:
        client.stop()
    out = client.output()
    assert "spawned <Actor 'Ada' at (0.0, 0.0)>" in out
    assert "get_actor('Nobody') raised KeyError" in out
    assert "renamed 'Ada' to 'Ada the Great'" in out
    assert "Ada the Great, Grace stay in the scene" in out
    assert sorted(actor_names(demo.address)) == ["Ada the Great", "Grace"]
    demo.wait_for(r"demo_client deleted actor 'Linus'")
    demo.wait_for(r"\[demo_client pid \d+\] demo_client: spawned 3 actors")
    # A second run finds the names taken and picks others.
    again = run_example("demo_client.py", [demo.address, "--seconds", "0.5"], runtime_dir,
                        "again.out")
    try:
        assert again.wait(30) == 0, again.output()
    finally:
        again.stop()
    assert "spawned <Actor 'Ada' at" in again.output()
    assert "<Actor 'Grace-2' at (3.0, 0.0)>" in again.output()


def test_make_demo_passes_args_to_the_demo_script():
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(["make", "-n", "demo", "ARGS=--once --tcp", "TETHER_SKIP_DEPS=1"],
                         cwd=SOURCE_DIR, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^\S*python\S* tools/demo.py --build-dir build --once --tcp$",
                     out.stdout, re.M), out.stdout


def test_demo_once(runtime_dir):
    # What `make demo ARGS=--once` runs after building.
    out = subprocess.run([sys.executable, DEMO_SCRIPT, "--build-dir", BUILD_DIR, "--once"],
                         env=example_env(runtime_dir), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "demo --once: passed" in out.stdout
    assert "selftest | " in out.stdout and "self-test passed" in out.stdout
    assert re.search(r"^client \| done after \d+ steps", out.stdout, re.M)
    assert "demo --once: ok: the tour: " in out.stdout  # the README's command-line block
    assert re.search(r"^tour   \| 5$", out.stdout, re.M)  # eval evaluator x
    assert "FAILED" not in out.stdout


def test_demo_runs_until_ctrl_c(runtime_dir):
    # Ctrl-C reaches the whole foreground process group: the script, the host, the client.
    demo_run = Proc([sys.executable, DEMO_SCRIPT, "--build-dir", BUILD_DIR,
                     "--client-seconds", "1"], example_env(runtime_dir),
                    os.path.join(runtime_dir, "demo-run.out"), start_new_session=True)
    try:
        demo_run.wait_for(r"^host   \| .*demo_client spawned actor 'Ada'", 20)
        demo_run.wait_for(r"the example client is done and stays", 20)
        cli = os.path.relpath(os.path.join(BUILD_DIR, "tether"))
        demo_run.wait_for(r"^    export TETHER_RUNTIME_DIR=%s$" % re.escape(runtime_dir))
        demo_run.wait_for(r"^    %s repl +# a console" % re.escape(cli))
        demo_run.wait_for(r"^    %s ls +# the host's clients" % re.escape(cli))
        demo_run.wait_for(r"^    PYTHONPATH=\S+ python3 \S*examples/actor_coroutines\.py$")
        demo_run.wait_for(r"^eval   \| evaluator: serving exec and eval for the host 'demo'")
        assert os.path.exists(os.path.join(runtime_dir, "demo.sock"))
        os.killpg(demo_run.pid, signal.SIGINT)
        assert demo_run.wait(15) == 0, demo_run.output()
        demo_run.wait_for(r"demo: the host exited with status 0")
        assert not os.path.exists(os.path.join(runtime_dir, "demo.sock"))
        assert re.search(r"^client \| interrupted", demo_run.output(), re.M)
    finally:
        demo_run.stop()


def test_demo_stops_on_sigterm(runtime_dir):
    # SIGTERM to the script alone (a supervisor): it stops the host and the client.
    demo_run = Proc([sys.executable, DEMO_SCRIPT, "--build-dir", BUILD_DIR],
                    example_env(runtime_dir), os.path.join(runtime_dir, "demo-run.out"))
    try:
        demo_run.wait_for(r"^client \| spawned ", 20)
        demo_run.signal(signal.SIGTERM)
        assert demo_run.wait(15) == 0, demo_run.output()
        demo_run.wait_for(r"demo: the host exited with status 0")
        assert re.search(r"^client \| (interrupted|done after)", demo_run.output(), re.M)
        assert not os.path.exists(os.path.join(runtime_dir, "demo.sock"))
    finally:
        demo_run.stop()


# ---- docs/ref-*.md ---------------------------------------------------------------------------

# The spawner's page is docs/from-spawny.md, which test_spawn_docs.py keeps true.
REF_PAGES = ["ref-engine-api.md", "ref-asyncio-loop.md"]


@pytest.mark.parametrize("page", REF_PAGES)
def test_reference_pages(page):
    from doc_pages import broken_links, fenced_blocks

    path = os.path.join(SOURCE_DIR, "docs", page)
    for line, _marker, source in fenced_blocks(path):
        compile("\n" * (line - 1) + source, path, "exec")
    broken = broken_links(path)
    assert not broken, f"{page}: broken links {broken}"
    with open(os.path.join(SOURCE_DIR, "README.md"), encoding="utf-8") as f:
        assert f"](docs/{page})" in f.read(), f"README.md does not link docs/{page}"
