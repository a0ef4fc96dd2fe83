"""Spawning interpreters from Python: run_script, run_module, run_object, the child's
lifetime (garbage collection, terminate_daemon, with, a killed parent), its output, and
the failures, with no zombie or orphan left (checked in the process table)."""

import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import tether

from conftest import build_platform
from processes import assert_none_left, eventually, gone, is_zombie, spawned

OTHER_PYTHON = shutil.which("python3")
INTERPRETERS = ["/usr/bin/python3"]
if OTHER_PYTHON and os.path.realpath(OTHER_PYTHON) != os.path.realpath("/usr/bin/python3"):
    INTERPRETERS.append(OTHER_PYTHON)  # the second python3 on this machine's PATH


@pytest.fixture(autouse=True)
def no_process_left_behind():
    before = spawned()
    yield
    assert_none_left(before)


SCRIPT = textwrap.dedent(
    """
    import os, sys
    x = 5
    greeting = "hello"

    class Box:
        def __init__(self, v):
            self.v = v
        def get(self):
            return self.v

    box = Box([1, 2])

    def say_hello(name):
        return f"{greeting} {name}"

    def where():
        return {"cwd": os.getcwd(), "argv": sys.argv[1:], "env": os.environ.get("TETHER_T"),
                "exe": sys.executable, "version": list(sys.version_info[:2])}

    def fail():
        raise KeyError("nothing here")

    print("child says hi")
    """
)


@pytest.mark.parametrize("python_exe", INTERPRETERS)
def test_run_script_gives_a_proxy_for_the_module(python_exe, capfd):
    with tether.run_script(SCRIPT, python_exe=python_exe) as p:
        assert isinstance(p, tether.Proxy) and isinstance(p, tether.ChildProxy)
        assert p.say_hello("earthling") == "hello earthling"
        assert p.x == 5
        box = p.box  # a first-level variable that is an object: a proxy itself
        assert isinstance(box, tether.Proxy)
        assert box.get() == [1, 2]
        assert p.Box(7).get() == 7
        info = p.where()
        expected = subprocess.run(
            [python_exe, "-c", "import sys; print(sys.executable)"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        assert info["exe"] == expected  # that interpreter, not this one
        eventually(lambda: "child says hi" in capfd.readouterr().out + "", what="output")


FIRST_LEVEL = textwrap.dedent(
    """
    import collections, enum
    odct = collections.OrderedDict([("b", 2), ("a", 1)])
    names = ["a", "b"]
    table = {"k": [1, 2]}
    pair = (1, [2])
    count, ratio, title, blob, nothing, flag = 41, 0.5, "t", b"b", None, True

    class Color(enum.IntEnum):
        RED = 1

    red = Color.RED

    class Job:
        def __init__(self):
            self.items = [1, 2]

    job = Job()

    def get(name):
        return globals()[name]
    """
)


@pytest.mark.parametrize("kind", ["script", "module"])
def test_first_level_variables_are_proxies_results_plain_values(kind, tmp_path):
    if kind == "script":
        child = tether.run_script(FIRST_LEVEL)
    else:
        (tmp_path / "first_level_mod.py").write_text(FIRST_LEVEL)
        child = tether.run_module("first_level_mod", path=tmp_path / "first_level_mod.py")
    with child:
        # Containers, subclasses included, stay in the child: their type and identity kept.
        odct = child.odct
        assert tether.is_proxy(odct)
        assert repr(odct) == "OrderedDict([('b', 2), ('a', 1)])"
        assert list(odct) == ["b", "a"] and odct["a"] == 1
        odct["c"] = 3
        child.names.append("c")
        child.table["k"].append(3)  # an item of a proxy: a copy, as a call's result
        assert child.get("names") == ["a", "b", "c"]
        assert child.get("odct") == {"b": 2, "a": 1, "c": 3}
        assert child.get("table") == {"k": [1, 2]}
        pair = child.pair
        assert tether.is_proxy(pair) and str(pair) == "(1, [2])" and len(pair) == 2
        assert child.get("pair") == [1, [2]]  # a call's result: a plain copy, a list
        assert tether.is_proxy(child.red) and str(child.red) == "1"  # an int subclass
        # Immutable scalars are values.
        assert child.count + 1 == 42
        assert (child.ratio, child.title, child.blob, child.nothing, child.flag) == (
            0.5, "t", b"b", None, True)
        # The attributes of other proxies are plain data by value.
        job = child.job
        assert tether.is_proxy(job) and job.items == [1, 2]
        items = job.items
        items.append(3)
        assert job.items == [1, 2]
        # Setting a first-level variable sends the value; reading it gives a proxy.
        child.names = ["z"]
        assert tether.is_proxy(child.names) and child.get("names") == ["z"]

    # The root of run_object is an object, not a namespace: its attributes are values.
    with tether.run_object(tether.InstanceDefinition(None, "Job"), script=FIRST_LEVEL) as job:
        assert job.items == [1, 2] and not tether.is_proxy(job.items)


def test_output_is_prefixed_with_the_childs_pid(capfd):
    p = tether.run_script("import sys\nprint('out line')\nprint('err line', file=sys.stderr)\n")
    pid = p.pid
    text = {"out": "", "err": ""}

    def seen():
        captured = capfd.readouterr()
        text["out"] += captured.out
        text["err"] += captured.err
        return "err line" in text["err"] and "out line" in text["out"]

    eventually(seen, what="the child's output")
    assert f"[pid {pid}] out line" in text["out"]
    assert f"[pid {pid}] err line" in text["err"]
    p.terminate_daemon()


def test_env_cwd_and_args(tmp_path):
    with tether.run_script(SCRIPT, env={"TETHER_T": "42"}, cwd=tmp_path, args=["a", 1]) as p:
        info = p.where()
    assert info["env"] == "42"
    assert info["cwd"] == str(tmp_path)
    assert info["argv"] == ["a", "1"]


def thread_switches(pid, name):
    """Context switches so far of the threads of process pid called name; None if it
    has none."""
    total = None
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                total = (total or 0) + sum(int(line.split()[1]) for line in f if line.startswith(
                    ("voluntary_ctxt", "nonvoluntary_ctxt")))
        except FileNotFoundError:
            pass
    return total


@pytest.mark.skipif(build_platform() != "linux",
                    reason="the portable build's I/O thread may wake for input a caller reads")
def test_a_child_reads_and_serves_calls_on_its_main_thread():
    # The child's main thread waits holding the reader role: it reads each call itself
    # and runs it, and its I/O thread sleeps (one wake-up per call, as in a raw
    # ping-pong). A count of switches, not a time: without the role its I/O thread woke
    # at least once for every call.
    with tether.run_script("import threading\n"
                           "def on_main():\n"
                           "    return threading.current_thread() is threading.main_thread()\n",
                           python_exe=sys.executable) as p:
        assert p.on_main()
        calls, woken = 2000, []
        # The I/O thread reads only a call that comes while the main thread is not back in
        # its wait yet (preempted, on a loaded machine): the best of three rounds counts.
        # Without the role it woke at least once per call, every round.
        for _ in range(3):
            before = thread_switches(p.pid, "tether-io")
            assert before is not None, "no thread called tether-io in the child"
            assert all(p.on_main() for _ in range(calls))
            woken.append(thread_switches(p.pid, "tether-io") - before)
            if woken[-1] < calls // 2:
                break
        assert min(woken) < calls // 2, f"the I/O thread woke {woken} times for {calls} calls"


def test_a_child_starts_without_threading_or_signal():
    # A cold spawn's cost beyond the interpreter's own start is mostly imports: the child
    # serves with _thread and _signal, so threading, signal and its enum stay out unless
    # the interpreter's start loads them anyway, and keeps its weak tables with _weakref
    # (tether._weak), so weakref stays out too (docs/spawning.md, "Performance").
    listing = "import sys; print(' '.join(sorted(sys.modules)))"
    bare = set(subprocess.run([sys.executable, "-c", listing], capture_output=True, text=True,
                              check=True).stdout.split())
    with tether.run_script("import sys\nloaded = ' '.join(sorted(sys.modules))\n",
                           python_exe=sys.executable) as p:
        added = set(p.loaded.split()) - bare
    assert not added & {"threading", "signal", "enum", "weakref"}, sorted(added)


@pytest.mark.skipif(build_platform() != "linux",
                    reason="the portable build starts children with libuv's uv_spawn (fork)")
def test_a_child_is_started_without_a_copy_of_the_parent():
    # On Linux a child starts with posix_spawn, which does not copy the parent (a fork of
    # a Python interpreter copies its page tables, then faults its pages back in: 8 ms
    # against 1.7 for a fork and exec here, docs/spawning.md): its stdout and stderr are
    # then tether's pipes, where libuv's uv_spawn gives it a socket pair.
    with tether.run_script("import os, stat\n"
                           "fifos = all(stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in (1, 2))\n",
                           python_exe=sys.executable) as p:
        assert p.fifos is True


def test_a_long_call_to_a_child_outlasts_its_silence_timeout():
    # The child's main thread reads the call itself and asks the I/O thread for progress
    # while the call runs: a call of 1 s with a silence bound of 0.3 s completes.
    with tether.run_script("import time\n"
                           "def sleep(s):\n"
                           "    time.sleep(s)\n"
                           "    return s\n", python_exe=sys.executable) as p:
        assert p.sleep.with_timeout(0.3)(1.0) == 1.0
        with pytest.raises(TimeoutError):  # and a bound still bounds
            p.sleep.with_deadline(0.3)(1.0)


def test_run_script_from_a_path(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text("def double(v):\n    return 2 * v\n")
    with tether.run_script(path=script) as p:
        assert p.double(21) == 42


def test_run_module_by_name_and_by_path(tmp_path):
    with tether.run_module("json") as json_proxy:
        assert json_proxy.dumps({"a": [1]}) == '{"a": [1]}'
    mod = tmp_path / "mymod.py"
    mod.write_text("VALUE = 'from a file'\ndef get():\n    return VALUE\n")
    with tether.run_module("mymod", path=mod) as p:
        assert p.get() == "from a file"
        assert p.VALUE == "from a file"


PATH_PROBE = """
import os, sys
def where():
    return __file__
def path():
    return sys.path
def stdlib():
    return os.path.dirname(os.__file__)
"""


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_the_child_imports_what_the_parent_can(tmp_path, monkeypatch, warm):
    here = tmp_path / "absolute"
    here.mkdir()
    (here / "parent_only_mod.py").write_text(PATH_PROBE)
    relative = tmp_path / "relative"
    relative.mkdir()
    (relative / "relative_only_mod.py").write_text(PATH_PROBE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # Not on the parent's path: the child cannot import it either.
    with pytest.raises(ModuleNotFoundError, match="parent_only_mod"):
        tether.run_module("parent_only_mod", warm=warm)

    monkeypatch.syspath_prepend(str(here))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend("relative")  # relative to this process's directory
    with tether.run_module("parent_only_mod", cwd=elsewhere, warm=warm) as m:
        assert m.where() == str(here / "parent_only_mod.py")
        path = m.path()
        # The parent's entries come after the child's own: its standard library first.
        assert path.index(str(here)) > path.index(m.stdlib())
        assert path.count(str(here)) == 1
    with tether.run_module("relative_only_mod", cwd=elsewhere, warm=warm) as m:
        assert m.where() == str(relative / "relative_only_mod.py")
    with tether.run_object(tether.InstanceDefinition("parent_only_mod", "where"),
                           warm=warm) as where:
        assert str(where) == str(here / "parent_only_mod.py")  # the root: a proxy of a str


def test_run_object_from_a_module_builtins_and_a_script():
    with tether.run_object(tether.InstanceDefinition("io", "StringIO", "hello, world!")) as s:
        assert s.getvalue() == "hello, world!"
        s.write("!!")
    with tether.run_object(tether.InstanceDefinition("builtins", "dict", a=1)) as d:
        assert d["a"] == 1
        assert len(d) == 1
    with tether.run_object(tether.InstanceDefinition(None, "Box", 9), script=SCRIPT) as b:
        assert b.get() == 9


def test_the_child_ends_with_its_last_proxy():
    p = tether.run_script(SCRIPT)
    pid = p.pid
    box = p.box
    del p
    gc.collect()
    time.sleep(0.2)
    assert not gone(pid), "the box proxy still keeps the child"
    assert box.get() == [1, 2]
    del box
    eventually(lambda: gone(pid), what="the child to end with its last proxy")


def test_terminate_daemon_and_with():
    p = tether.run_script(SCRIPT)
    pid = p.pid
    p.terminate_daemon()
    eventually(lambda: gone(pid), what="terminate_daemon")
    with pytest.raises(tether.NotConnectedError):
        p.say_hello("anyone")
    with tether.run_script(SCRIPT) as q:
        pid = q.pid
    eventually(lambda: gone(pid), what="the end of the with block")


def test_terminate_daemon_from_any_proxy_of_the_child(caplog, conn):
    logger = logging.getLogger("test.spawner.any")
    with caplog.at_level(logging.INFO, logger="test.spawner.any"):
        p = tether.run_script(SCRIPT, logger=logger)
        pid = p.pid
        box = p.box
        del p
        gc.collect()
        assert not isinstance(box, tether.ChildProxy)  # an object's proxy, not the root
        tether.terminate_daemon(box)
        eventually(lambda: gone(pid), what="terminate_daemon from a sub-object's proxy")
        with pytest.raises(tether.NotConnectedError):
            box.get()
        tether.terminate_daemon(box)  # once ended, nothing more to do
    messages = [r.getMessage() for r in caplog.records if r.name == "test.spawner.any"]
    assert messages.count(f"terminated child {pid}") == 1

    # The root's proxy works too.
    with tether.run_script("x = 1") as q:
        tether.terminate_daemon(q)
        assert q.wait(timeout=5) is not None

    # Anything else is refused, and the remote object keeps its own terminate_daemon.
    with pytest.raises(TypeError, match="needs a tether.Proxy, not int"):
        tether.terminate_daemon(3)
    with pytest.raises(TypeError, match="spawned child"):
        tether.terminate_daemon(conn.root.make_counter(1))
    with tether.run_script("class Job:\n    def terminate_daemon(self):\n"
                           "        return 'its own'\njob = Job()\n") as r:
        assert r.job.terminate_daemon() == "its own"


def test_the_spawner_reports_to_its_logger(caplog):
    logger = logging.getLogger("test.spawner")
    with caplog.at_level(logging.INFO, logger="test.spawner"):
        p = tether.run_script("x = 1", logger=logger)
        pid = p.pid
        p.terminate_daemon()
    messages = [r.getMessage() for r in caplog.records if r.name == "test.spawner"]
    assert any("spawning" in m for m in messages)
    assert f"child {pid} started" in messages
    assert any(f"terminated child {pid}" in m for m in messages)


def test_errors_in_the_child_arrive_with_its_traceback():
    with pytest.raises(SyntaxError) as info:
        tether.run_script("def broken(:\n")
    assert info.value.remote_traceback
    with pytest.raises(ModuleNotFoundError, match="no_such_module_anywhere"):
        tether.run_module("no_such_module_anywhere")
    with pytest.raises(ZeroDivisionError) as info:
        tether.run_script("x = 1 / 0\n")
    assert "ZeroDivisionError" in info.value.remote_traceback
    with tether.run_script(SCRIPT) as p:
        with pytest.raises(KeyError, match="nothing here") as info:
            p.fail()
        assert "in fail" in info.value.remote_traceback


def test_bad_interpreters():
    with pytest.raises(FileNotFoundError, match="/nonexistent/python: no such file or directory"):
        tether.run_script("x = 1", python_exe="/nonexistent/python")
    with pytest.raises(ConnectionResetError, match="exited before connecting"):
        tether.run_script("x = 1", python_exe="/bin/true")


def test_a_script_that_exits_at_once():
    with pytest.raises(ConnectionResetError):
        tether.run_script("import os\nos._exit(3)\n")


def test_a_child_that_crashes_mid_call():
    with tether.run_script("import ctypes\ndef crash():\n    ctypes.string_at(0)\n") as p:
        with pytest.raises(ConnectionResetError):
            p.crash()
        assert p.wait(timeout=5) == -signal.SIGSEGV
    # The parent goes on.
    with tether.run_script(SCRIPT) as q:
        assert q.x == 5


def test_a_child_that_never_answers_times_out():
    with tether.run_script("import time\ndef hang():\n    time.sleep(60)\n") as p:
        with pytest.raises(TimeoutError):
            p.hang.with_deadline(0.3)()


def test_a_child_that_prints_megabytes(capfd):
    with tether.run_script("print('x' * 3_000_000)\nprint('done')\ndef ok():\n    return 1\n") as p:
        assert p.ok() == 1
        out = ""
        deadline = time.monotonic() + 20
        while "] done" not in out and time.monotonic() < deadline:
            out += capfd.readouterr().out
            time.sleep(0.05)
    assert "] done" in out
    # Long lines arrive in pieces of at most 4 KiB after the prefix.
    longest = max(len(line) for line in out.splitlines())
    assert longest <= 4096 + len(f"[pid {p.pid}] ")


PARENT = """
import sys, time
sys.path.insert(0, sys.argv[1])
import tether
p = tether.run_script("import time\\ndef pid():\\n    import os\\n    return os.getpid()\\n")
print(p.pid, flush=True)
time.sleep(60)
"""


def test_a_child_does_not_outlive_a_killed_parent():
    package_dir = os.path.dirname(os.path.dirname(tether.__file__))
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, package_dir], stdout=subprocess.PIPE, text=True
    )
    try:
        child_pid = int(parent.stdout.readline())
        assert not gone(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        eventually(lambda: gone(child_pid) or is_zombie(child_pid), what="the orphan to exit")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_the_child_side_asks_the_platform_layer():
    # A parent-death signal where the build has one: the portable build says False, and
    # its children exit at the end of their socket alone (the test above, on both). A
    # name for ps on both builds here (pthread_setname_np on the portable one).
    package_dir = os.path.dirname(os.path.dirname(tether.__file__))
    code = (
        "import signal, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from tether import _tether\n"
        "print(_tether._set_parent_death_signal(signal.SIGTERM),"
        " _tether._set_process_name('tether-named'))\n"
        "print(open('/proc/self/comm').read().strip())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, package_dir], capture_output=True,
                         text=True, check=True, timeout=30).stdout.split()
    assert out == [str(build_platform() == "linux"), "True", "tether-named"]


def test_warm_spawns_fork_from_a_kept_interpreter(tmp_path):
    pids = []
    for _ in range(3):
        with tether.run_script(SCRIPT, warm=True, cwd=tmp_path, args=["w"]) as p:
            assert p.say_hello("warm") == "hello warm"
            info = p.where()
            assert info["cwd"] == str(tmp_path) and info["argv"] == ["w"]
            pids.append(p.pid)
    assert len(set(pids)) == 3
    for pid in pids:
        eventually(lambda: gone(pid) or is_zombie(pid), what="warm children to end")
    # A different environment needs another interpreter: still correct.
    with tether.run_script(SCRIPT, warm=True, env={"TETHER_T": "other"}) as p:
        assert p.where()["env"] == "other"
