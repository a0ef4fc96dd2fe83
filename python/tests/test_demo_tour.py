"""README.md's "Command line" block works as written against `make demo`.

The demo is started the way `make demo` starts it (tools/demo.py, in a runtime directory
of its own); then each line of the block is taken from README.md and run verbatim, in
order, from the repository's root, as a newcomer would in another terminal. Only the
build directory is mapped, when the tests use another one than the README's `build/`.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import BUILD_DIR, SOURCE_DIR, private_runtime_dir, wait_until

DEMO_SCRIPT = os.path.join(SOURCE_DIR, "tools", "demo.py")
README = os.path.join(SOURCE_DIR, "README.md")

# What each command of the block must print (a regular expression searched in its
# standard output), by its first word after `build/tether`.
EXPECTED = {
    "hosts": r"^demo\s+unix:\S+/demo\.sock\s+live$",
    "ls": r"^host 'demo' at unix:\S+: 2 clients\n.*\nevaluator\s+\d+\s+python.*\ndemo_client\s+\d+",
    "reset": r"^reset client 'demo_client' on host 'demo'$",
    "call": r"^<Actor '(\w+)' at \(1\.0, 2\.0\)>$",
    "exec": r"^$",  # None: nothing printed, as Python's exec
    "eval": r"^5$",
    "repl": r"REPL on host 'demo'.*\n.*spawn_actor.*\n(.*\n)*\[globals\] actors=.*'Ada the Great'",
}


def readme_block():
    """The commands of the fenced sh block under "## Command line", comments dropped."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```sh\n(.*?)^```", section, re.M | re.S).group(1)
    commands = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words)
    return commands


def demo_env(runtime_dir):
    env = dict(os.environ, TETHER_RUNTIME_DIR=runtime_dir, PYTHONUNBUFFERED="1",
               HOME=runtime_dir)  # the REPL's history file stays in here
    env.pop("TETHER_ADDRESS", None)
    path = os.path.join(BUILD_DIR, "python")
    env["PYTHONPATH"] = path + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def as_run_here(words):
    """The README's `build/...` is this test's build directory."""
    if words[0].startswith("build/") and os.path.realpath(BUILD_DIR) != os.path.realpath(
            os.path.join(SOURCE_DIR, "build")):
        return [os.path.join(BUILD_DIR, words[0][len("build/"):]), *words[1:]]
    return words


@pytest.fixture
def runtime_dir():
    path = private_runtime_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_readme_block_has_the_tour():
    commands = readme_block()
    assert [c[1] for c in commands] == ["hosts", "ls", "reset", "call", "exec", "eval", "repl"]
    assert all(c[0] == "build/tether" for c in commands)


def test_readme_command_line_block_against_make_demo(runtime_dir):
    env = demo_env(runtime_dir)
    log_path = os.path.join(runtime_dir, "demo.out")
    with open(log_path, "wb") as log:
        demo = subprocess.Popen(
            [sys.executable, DEMO_SCRIPT, "--build-dir", BUILD_DIR, "--client-seconds", "1"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            cwd=SOURCE_DIR, start_new_session=True)

    def output():
        with open(log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    try:
        assert wait_until(lambda: "Stop with Ctrl-C.\n---" in output(), 30), output()
        banner = output()
        # The demo prints the block's commands itself, and that both clients stay.
        cli = os.path.relpath(os.path.join(BUILD_DIR, "tether"), SOURCE_DIR)
        for words in readme_block():
            printed = shlex.join([cli, *words[1:]])
            assert printed in banner.replace('"x = 5"', "'x = 5'"), banner
        assert "client | staying connected as 'demo_client'" in banner
        assert "eval   | evaluator: serving exec and eval for the host 'demo'" in banner

        seen = {}
        for words in readme_block():
            stdin = 'get_actor("Cleo").position()\n' if words[1] == "repl" else ""
            r = subprocess.run(as_run_here(words), input=stdin, cwd=SOURCE_DIR, env=env,
                               capture_output=True, text=True, timeout=60)
            what = f"{shlex.join(words)}: exit {r.returncode}\n{r.stdout}{r.stderr}"
            assert r.returncode == 0, what + "\n" + output()
            assert re.search(EXPECTED[words[1]], r.stdout, re.M), what
            seen[words[1]] = r.stdout
        assert seen["exec"] == "" and seen["eval"] == "5\n"
        # The REPL's line ran: the actor the block's `call` made is where it said.
        assert ">>> [1.0, 2.0]\n" in seen["repl"], seen["repl"]
        # demo_client came back after the reset, and is still there.
        log = output()
        assert len(re.findall(r"client 'demo_client' \(pid \d+, python", log)) == 2, log
        assert "tether-cli spawned actor 'Cleo' at (1.0, 2.0)" in log
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C in the demo's terminal
        try:
            rc = demo.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
            raise
    assert rc == 0, output()
    assert "demo: the host exited with status 0" in output()
    assert not os.path.exists(os.path.join(runtime_dir, "demo.sock"))
