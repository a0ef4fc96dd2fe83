"""The docs' shell sessions and demo scripts run against a real tether-demo.

A block marked `<!-- runnable: demo [NAME] [with CLIENT...] -->` (see doc_pages.py) runs
in a setting made for it: build/tether-demo serving the host NAME ("demo" by default, also
on an ephemeral TCP port) alone in a private runtime directory, and for each CLIENT a
Python client of that name that exposes tether.services.EvalExec (the premise of
`tether exec`/`eval` and of the examples naming `evaluator`, `my_tool`, ...). Commands run
from a directory where `build/`, `examples/` and `python/` are this build's and this
checkout's, with `tether` and `python3` on PATH (this build's command line and this
interpreter) and the package on PYTHONPATH.

- A ```sh block runs line by line (each one with sh, standard input empty), every line
  must exit 0; a `make demo` line stands for the host the setting started.
- A ```python block runs as a script and must exit 0, except the blocks that serve
  until stopped, which DRIVERS below works as a user would and then stops.

A block marked `<!-- checked: CHECK -->` is compared with what the real programs print:
`session` blocks (`$ COMMAND` lines, each followed by its output, and `(status N)` for a
non-zero exit status) run their commands in a setting with the clients the page names,
and the output must have the documented shape: the same lines with numbers, paths and
spacing aside (doc_pages.shape). The others are named in CHECKED.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import BUILD_DIR, SOURCE_DIR, private_runtime_dir, wait_until
from doc_pages import blocks, pages, shape

DEMO = os.path.join(BUILD_DIR, "tether-demo")
ALL_PAGES = pages(SOURCE_DIR)
LINE_TIME_LIMIT = 60
CLIENT = """\
import sys, tether
host = tether.connect(name=sys.argv[1], address=sys.argv[2],
                      services=[tether.services.EvalExec()])
print("ready", flush=True)
sys.stdin.read()  # until the test ends it (or the host disconnects it: SIGTERM)
"""


class Setting:
    """A tether-demo named name with clients, and the directory and environment commands
    of the docs run in."""

    def __init__(self, tmp_path, name="demo", clients=()):
        if not os.access(DEMO, os.X_OK):
            pytest.fail(f"{DEMO} is not built (run make)")
        self.runtime_dir = private_runtime_dir()
        self.cwd = tmp_path / "cwd"
        self.cwd.mkdir()
        for entry, target in (("build", BUILD_DIR), ("examples", SOURCE_DIR + "/examples"),
                              ("python", SOURCE_DIR + "/python")):
            os.symlink(target, self.cwd / entry)
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        os.symlink(os.path.join(BUILD_DIR, "tether"), bin_dir / "tether")
        os.symlink(sys.executable, bin_dir / "python3")
        self.env = dict(os.environ, TETHER_RUNTIME_DIR=self.runtime_dir, PYTHONUNBUFFERED="1",
                        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", COLUMNS="200",
                        HOME=str(tmp_path), PYTHONPATH=os.path.join(BUILD_DIR, "python"))
        for variable in ("TETHER_ADDRESS", "TETHER_TOKEN"):
            self.env.pop(variable, None)
        self.name = name
        self.log_path = tmp_path / "demo.out"
        self.log = open(self.log_path, "wb")
        self.demo = subprocess.Popen([DEMO, "--name", name, "--tcp", "0", "--seconds", "300"],
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=self.env)
        self.clients = []
        self.address = "unix:" + os.path.join(self.runtime_dir, f"{name}.sock")
        try:
            assert wait_until(lambda: "Stop with Ctrl-C" in self.output(), 20), self.output()
            for client in clients:
                proc = subprocess.Popen([sys.executable, "-c", CLIENT, client, self.address],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=self.env, text=True)
                self.clients.append(proc)
                assert proc.stdout.readline() == "ready\n", f"client {client} did not start"
        except BaseException:
            self.stop()
            raise

    def output(self):
        return self.log_path.read_text(errors="replace")

    def run(self, command, input=None):
        return subprocess.run(["sh", "-c", command], cwd=self.cwd, env=self.env, input=input,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=LINE_TIME_LIMIT)

    def stop(self):
        for proc in self.clients:
            if proc.poll() is None:
                proc.stdin.close()
                proc.terminate()
            proc.wait(10)
        if self.demo.poll() is None:
            self.demo.send_signal(signal.SIGTERM)
            try:
                self.demo.wait(10)
            except subprocess.TimeoutExpired:
                self.demo.kill()
                self.demo.wait()
        self.log.close()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


def setting_of(block):
    """(host name, clients) that the block's `runnable: demo ...` marker asks for."""
    words = block.kind[1].split()
    assert words[0] == "demo", block.where
    name, clients = "demo", []
    rest = words[1:]
    if rest and rest[0] != "with":
        name, rest = rest[0], rest[1:]
    if rest:
        assert rest[0] == "with" and len(rest) > 1, f"{block.where}: demo [NAME] [with CLIENT...]"
        clients = rest[1:]
    return name, clients


@pytest.fixture
def setting(tmp_path):
    made = []

    def make(name="demo", clients=()):
        made.append(Setting(tmp_path, name, clients))
        return made[-1]

    yield make
    for s in made:
        s.stop()


def marked(kind, arg=None, languages=None):
    return [b for path in ALL_PAGES for b in blocks(path) if b.kind[0] == kind
            and (arg is None or b.kind[1] == arg or b.kind[1].startswith(arg + " "))
            and (languages is None or b.language in languages)]


def ids(found):
    return [b.where for b in found]


# ---- runnable blocks ------------------------------------------------------------------------

SH_BLOCKS = marked("runnable", "demo", ("sh",))


def test_the_shell_blocks_are_found():
    assert len(SH_BLOCKS) >= 5, ids(SH_BLOCKS)


@pytest.mark.parametrize("block", SH_BLOCKS, ids=ids(SH_BLOCKS))
def test_shell_block(block, setting):
    s = setting(*setting_of(block))
    for line in block.source.splitlines():
        command = line.split("#", 1)[0].strip() if line.lstrip().startswith("make ") else line
        if not command.strip() or command.strip().startswith("#"):
            continue
        if command.strip() == "make demo":
            continue  # the setting's host
        r = s.run(command)
        assert r.returncode == 0, f"{block.where}: `{line.strip()}` exited {r.returncode}:\n{r.stdout}"


def drive_the_line_server(s, proc, out):
    """ref-asyncio-loop.md's script with tasks: every line it is sent spawns an actor, a
    name taken fails in a task nobody awaits, and the host's log shows that."""
    port = wait_until(lambda: re.search(r"listening on port (\d+)", out()), 20)
    assert port, out()
    with socket.create_connection(("127.0.0.1", int(port[1])), timeout=10) as peer:
        peer.sendall(b"Ann\nBob\nAnn\n")
        assert wait_until(lambda: "Task exception was never retrieved" in s.output(), 20), (
            s.output() + out())
    assert wait_until(lambda: "the host runs at" in out(), 10), out()
    r = s.run("tether call list_actors")
    assert "'Ann'" in r.stdout and "'Bob'" in r.stdout, r.stdout


def drive_the_followers(s, proc, out):
    """ref-asyncio-loop.md's coroutine per actor: an actor spawned gets a coroutine, which
    ends when the actor is destroyed."""
    assert wait_until(lambda: "followers subscribed to actor events" in s.output(), 20), (
        s.output() + out())
    assert s.run("tether call spawn_actor Dot 1 1").returncode == 0
    time.sleep(0.5)  # a few of its ticks
    assert s.run("tether call delete_actor Dot").returncode == 0
    assert wait_until(lambda: re.search(r"^Dot destroyed after \d+ ticks", out(), re.M), 20), (
        out())


# Blocks that serve until stopped, by the heading they stand under: how a user works them.
DRIVERS = {"A script with tasks": drive_the_line_server,
           "A coroutine per actor": drive_the_followers}
PY_BLOCKS = marked("runnable", "demo", ("python",))


def test_the_python_blocks_are_found():
    assert len(PY_BLOCKS) >= 2, ids(PY_BLOCKS)


@pytest.mark.parametrize("block", PY_BLOCKS, ids=ids(PY_BLOCKS))
def test_python_block(block, setting, tmp_path):
    s = setting(*setting_of(block))
    script = tmp_path / "block.py"
    script.write_text("\n" * (block.line - 1) + block.source)
    log_path = tmp_path / "block.out"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(script)], cwd=s.cwd, env=s.env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    out = lambda: log_path.read_text(errors="replace")  # noqa: E731
    try:
        driver = DRIVERS.get(block.heading)
        if driver:
            driver(s, proc, out)
            assert proc.poll() is None, f"{block.where} ended:\n{out()}"
        else:
            assert proc.wait(LINE_TIME_LIMIT) == 0, f"{block.where}:\n{out()}"
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


# ---- checked blocks -------------------------------------------------------------------------


def is_subsequence(wanted, lines):
    """Whether the wanted lines match lines in order (others may come between); a wanted
    "..." inside a line matches anything there, and a wanted line "..." matches no line."""
    patterns = [re.compile(re.escape(w).replace(re.escape("..."), ".*"))
                for w in wanted if w != "..."]
    it = iter(lines)
    return all(any(p.fullmatch(line) for line in it) for p in patterns)


SESSIONS = marked("checked", "session")
STATUS = re.compile(r"\s{2,}\((status (\d+)|code from stdin)\)$")


def session_steps(source):
    """[(command, expected output lines, expected status)] of a `$ COMMAND` transcript."""
    steps = []
    for line in source.splitlines():
        m = STATUS.search(line)
        status = int(m[2]) if m and m[2] else None
        line = STATUS.sub("", line)
        if line.startswith("$ "):
            steps.append([line[2:], [], status or 0])
        else:
            steps[-1][1].append(line)
            if status is not None:
                steps[-1][2] = status
    return steps


def clients_named(source):
    """The clients a transcript acts on (the names its commands give)."""
    names = set(re.findall(r"^\$ tether (?:reset|disconnect|exec|eval) (\w+)", source, re.M))
    names |= set(re.findall(r"^(\w+)\s+\d+\s+python", source, re.M))  # the rows of tether ls
    return sorted(names - {"nobody"})


def test_the_sessions_are_found():
    assert len(SESSIONS) >= 6, ids(SESSIONS)


@pytest.mark.parametrize("block", SESSIONS, ids=ids(SESSIONS))
def test_session(block, setting):
    s = setting("demo", clients_named(block.source))
    if "old.sock" in block.source:  # a stale socket, left by a host that ended
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(os.path.join(s.runtime_dir, "old.sock"))
        stale.close()
    (s.cwd / "setup.py").write_text("y = 1\n")  # what `exec NAME - < setup.py` reads
    for command, expected, status in session_steps(block.source):
        repl = command.startswith("tether repl")
        stdin = None
        if repl:  # the console's input: its `>>> ` lines, read from a pipe
            stdin = "".join(line[4:] + "\n" for line in expected if line.startswith(">>> "))
            expected = [line for line in expected if not line.startswith(">>> ")]
        r = s.run(command, input=stdin)
        real = r.stdout.replace(">>> ", "") if repl else r.stdout
        assert r.returncode == status, f"{block.where}: `{command}` exited {r.returncode}:\n{real}"
        assert shape("\n".join(expected)) == shape(real), (
            f"{block.where}: `{command}` printed\n{real}\ninstead of\n" + "\n".join(expected))


def test_the_readme_tour_outputs(setting):
    s = setting()
    (client_output,) = marked("checked", "hello_client output")
    (demo_log,) = marked("checked", "demo log")
    r = s.run("build/example-hello_client demo")
    assert r.returncode == 0 and r.stdout == client_output.source, (
        f"{client_output.where}:\n{r.stdout}")
    assert wait_until(lambda: "example-hello_client' (pid" in s.output().split("connected")[-1], 10)
    assert is_subsequence(shape(demo_log.source), shape(s.output())), (
        f"{demo_log.where}:\n{demo_log.source}\nnot in\n{s.output()}")


def test_the_eval_exec_example(setting):
    (block,) = marked("checked", "eval_exec")
    s = setting()
    (step,) = session_steps(block.source)
    command, expected, status = step
    r = s.run(command)
    assert r.returncode == status, r.stdout
    # Two processes print: their lines interleave as they may.
    assert sorted(shape("\n".join(expected))) == sorted(shape(r.stdout)), (
        f"{block.where}:\n{r.stdout}")


def test_the_line_server_reports_as_shown(setting):
    # examples/asyncio_line_server.py, whose log lines ref-asyncio-loop.md shows: a name
    # taken fails in a task nobody awaits, and a new run stops the first one.
    (exception,) = marked("checked", "task exception")
    (stopped,) = marked("checked", "line server stopped")
    s = setting()
    args = "--port 0 --seconds 60 --interval 0.2"
    first = subprocess.Popen(
        ["sh", "-c", f"exec python3 examples/asyncio_line_server.py demo {args}"],
        cwd=s.cwd, env=s.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        while not port:
            line = first.stdout.readline()
            assert line, "asyncio_line_server ended before it listened"
            port = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        with socket.create_connection(("127.0.0.1", int(port[1])), timeout=10) as peer:
            peer.sendall(b"Ann\nAnn\n")
            # The script prints the error too: wait for the host's whole record.
            assert wait_until(
                lambda: is_subsequence(shape(exception.source), shape(s.output())), 20), (
                f"{exception.where}:\n{exception.source}\nnot in\n{s.output()}")
        second = s.run("python3 examples/asyncio_line_server.py demo --seconds 1")
        assert second.returncode == 0 and first.wait(20) == 0, second.stdout
        assert any(shape(stopped.source)[0] in line for line in shape(s.output())), (
            f"{stopped.where}:\n{stopped.source}\nnot in\n{s.output()}")
    finally:
        if first.poll() is None:
            first.terminate()
            first.wait(10)


def test_the_actor_coroutines_session_prints_as_shown(setting):
    # ref-asyncio-loop.md's session with examples/actor_coroutines.py: shell 2 runs the
    # example until Ctrl-C, shell 3 spawns and deletes Dot; the lines the page shows for
    # Dot and for the end are printed (the other actors are the demo's, whatever they are).
    (commands,) = marked("checked", "actor coroutines", ("sh",))
    (printed,) = [b for b in marked("checked", "actor coroutines output")]
    lines = [line.split("#", 1)[0].strip() for line in commands.source.splitlines()]
    s = setting()
    example = subprocess.Popen(["sh", "-c", "exec env " + lines[0]], cwd=s.cwd, env=s.env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        line = example.stdout.readline()
        while line and "subscribed to" not in line:
            seen.append(line)
            line = example.stdout.readline()
        assert line, "".join(seen)
        for command in lines[1:]:
            r = s.run(command)
            assert r.returncode == 0, f"{commands.where}: `{command}`:\n{r.stdout}"
        time.sleep(0.5)
        example.send_signal(signal.SIGINT)
        rest, _ = example.communicate(timeout=20)
    finally:
        if example.poll() is None:
            example.kill()
            example.wait()
    real = shape("".join(seen) + line + rest)
    # (Dot's tick line comes after ten ticks, a second: whether it shows is timing.)
    wanted = [w for w in shape(printed.source)
              if ("'Dot'" in w and " tick " not in w) or w.startswith("done:")]
    assert len(wanted) == 3 and is_subsequence(wanted, real), (
        f"{printed.where}:\n{printed.source}\nnot in\n{rest}")
