"""The tether command line (python/tether/_cli.py): every command and its exit statuses,
against build/tether-testhost and build/tether-demo, and the REPL (`tether repl` and
examples/repl.py) driven through a pseudo-terminal."""

import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest

import tether

from conftest import BUILD_DIR, SOURCE_DIR, Host, private_runtime_dir, wait_until
from doc_pages import blocks, shape

DEMO = os.path.join(BUILD_DIR, "tether-demo")
HELLO_HOST = os.path.join(BUILD_DIR, "example-hello_host")
EVAL_CLIENT = os.path.join(SOURCE_DIR, "examples", "eval_exec_client.py")
REPL_EXAMPLE = os.path.join(SOURCE_DIR, "examples", "repl.py")
TIMEOUT = 30  # bound on any one command


def cli_env(runtime_dir, home, **extra):
    env = dict(os.environ, TETHER_RUNTIME_DIR=runtime_dir, HOME=str(home), COLUMNS="200")
    env.pop("TETHER_ADDRESS", None)
    env.pop("TETHER_TOKEN", None)
    env["TETHER_HISTORY"] = os.path.join(str(home), "history")
    env.update(extra)
    return env


def run_cli(runtime_dir, home, *args, input=None, **extra):
    """`python -m tether ARGS` with the runtime directory given; a CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "tether", *args],
        env=cli_env(runtime_dir, home, **extra),
        input=input,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@pytest.fixture
def cli(host, tmp_path):
    """Run the command line against the test host's runtime directory."""

    def run(*args, input=None, **extra):
        return run_cli(host.runtime_dir, tmp_path, *args, input=input, **extra)

    return run


class Process:
    """A process of the test's (a host, a client); its output goes to a file."""

    def __init__(self, argv, env, log_path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def output(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_output(self, text, timeout=10):
        assert wait_until(lambda: text in self.output() or self.proc.poll() is not None,
                          timeout), f"no {text!r} in {self.output()!r}"
        assert text in self.output(), self.output()

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


def start_demo(runtime_dir, tmp_path, *args, name="demo"):
    if not os.access(DEMO, os.X_OK):
        pytest.fail(f"{DEMO} is not built (run make)")
    env = dict(os.environ, TETHER_RUNTIME_DIR=runtime_dir)
    env.pop("TETHER_ADDRESS", None)
    demo = Process([DEMO, "--name", name, *args], env, os.path.join(str(tmp_path), f"{name}.out"))
    sock = os.path.join(runtime_dir, f"{name}.sock")
    assert wait_until(lambda: os.path.exists(sock), 10), demo.output()
    demo.wait_output("Stop with Ctrl-C")
    return demo


@pytest.fixture
def demo(tmp_path):
    """A tether-demo named "demo", also on TCP, alone in a runtime directory of its own."""
    runtime_dir = private_runtime_dir()
    d = start_demo(runtime_dir, tmp_path, "--tcp", "0")
    d.runtime_dir = runtime_dir
    yield d
    assert d.stop() == 0, d.output()
    shutil.rmtree(runtime_dir, ignore_errors=True)


def start_evaluator(address, tmp_path, env=None):
    """examples/eval_exec_client.py connected to address, serving exec and eval."""
    client = Process([sys.executable, EVAL_CLIENT, address], env or dict(os.environ),
                     os.path.join(str(tmp_path), "evaluator.out"))
    client.wait_output("evaluator: serving exec and eval")
    return client


@pytest.fixture
def evaluator(host, tmp_path):
    client = start_evaluator(host.address, tmp_path)
    yield client
    client.stop()


def client_rows(cli, *args):
    r = cli("ls", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# ---- the program -----------------------------------------------------------------------


def test_help_lists_the_commands_and_exit_statuses(cli):
    r = cli("--help")
    assert r.returncode == 0
    for command in ("hosts", "ls", "reset", "disconnect", "call", "exec", "eval", "repl"):
        assert re.search(rf"^\s+{command}\s", r.stdout, re.M), command
    assert "Exit status:" in r.stdout and "$TETHER_ADDRESS" in r.stdout
    r = cli("repl", "--help")
    assert r.returncode == 0 and "globals" in r.stdout and "Exit status:" in r.stdout


def test_no_command_is_a_usage_error(cli):
    r = cli()
    assert r.returncode == 2
    assert "usage: tether" in r.stderr
    r = cli("frobnicate")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_version_still_works(cli):
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("tether ")


def test_the_build_has_a_tether_command(host, tmp_path):
    wrapper = os.path.join(BUILD_DIR, "tether")
    assert os.access(wrapper, os.X_OK), f"{wrapper} is not built (run make)"
    env = cli_env(host.runtime_dir, tmp_path)
    env.pop("PYTHONPATH", None)  # the wrapper finds the build's package by itself
    r = subprocess.run([wrapper, "ls", "-H", host.name], env=env, capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert f"host '{host.name}'" in r.stdout


# ---- hosts -------------------------------------------------------------------------------


def test_hosts_lists_live_and_stale_hosts(host, cli):
    stale = os.path.join(host.runtime_dir, "gone.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)  # bound, never listening, closed: what a host that died leaves
    s.close()
    try:
        r = cli("hosts")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split() == ["HOST", "PID", "ADDRESS", "STATE"]
        mine = [host.name, str(host.pid), host.address, "live"]
        assert any(l.split()[:4] == mine for l in lines), r.stdout
        assert any(l.split()[:4] == ["gone", "-", f"unix:{stale}", "stale"] for l in lines), r.stdout
        hosts = json.loads(cli("hosts", "--json").stdout)
        me = {"name": host.name, "address": host.address, "kind": "unix", "state": "live",
              "pid": host.pid}
        assert me in hosts
    finally:
        os.unlink(stale)


def test_hosts_names_tcp_listeners(demo, tmp_path):
    r = run_cli(demo.runtime_dir, tmp_path, "hosts")
    assert r.returncode == 0, r.stderr
    pid = demo.proc.pid
    assert re.search(rf"^demo\s+{pid}\s+unix:\S+/demo\.sock\s+live$", r.stdout, re.M), r.stdout
    assert re.search(rf"^demo\s+{pid}\s+tcp:127\.0\.0\.1:\d+\s+live$", r.stdout, re.M), r.stdout


def test_the_host_file_is_as_protocol_md_shows(demo):
    """The example of docs/protocol.md (section 2) has the shape of the demo's own file."""
    (block,) = [b for b in blocks(os.path.join(SOURCE_DIR, "docs", "protocol.md"))
                if b.kind == ("checked", "host file")]
    with open(os.path.join(demo.runtime_dir, "demo.host")) as f:
        real = f.read()
    assert shape(block.source) == shape(real), real


def test_a_tcp_only_host_is_found_by_its_host_file(tmp_path):
    """A host without a Unix socket, on a port of the system's choosing: its host file
    names it, for `tether hosts` and for connecting by name."""
    runtime_dir = private_runtime_dir()
    h = Host("tcponly", runtime_dir=runtime_dir, env={"TETHER_TESTHOST_TCP_ONLY": "1"}).start()
    try:
        assert h.address.startswith("tcp:127.0.0.1:")
        path = os.path.join(runtime_dir, "tcponly.host")
        with open(path) as f:
            lines = f.read().splitlines()
        port = int(h.address.rsplit(":", 1)[1])
        assert lines == ["tether-host 1", "name tcponly", f"pid {h.pid}", f"versions 1 {tether.protocol_version}",
                         f"tcp {h.address[4:]}",
                         f"token {os.path.join(runtime_dir, f'tcp-{port}.token')}"]
        assert os.stat(path).st_mode & 0o777 == 0o600
        hosts = json.loads(run_cli(runtime_dir, tmp_path, "hosts", "--json").stdout)
        assert hosts == [{"name": "tcponly", "address": h.address, "kind": "tcp",
                          "state": "live", "pid": h.pid}]
        # By name, and as the only host running.
        r = run_cli(runtime_dir, tmp_path, "call", "-H", "tcponly", "add", "2", "3")
        assert (r.returncode, r.stdout.strip()) == (0, "5"), r.stderr
        r = run_cli(runtime_dir, tmp_path, "ls")
        assert r.returncode == 0 and "host 'tcponly'" in r.stdout, r.stderr
    finally:
        h.stop()
    assert not os.path.exists(path), "the host file outlived its host"


def test_hosts_marks_a_host_file_of_a_dead_process_stale(host, cli):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = os.path.join(host.runtime_dir, "ghost.host")
    with open(path, "w") as f:
        f.write(f"tether-host 1\nname ghost\npid {dead.pid}\nversions 1 1\n"
                "tcp 127.0.0.1:1\ntoken /nonexistent\n")
    try:
        r = cli("hosts")
        assert r.returncode == 0, r.stderr
        row = [l for l in r.stdout.splitlines() if l.startswith("ghost ")]
        assert len(row) == 1 and row[0].split()[:4] == ["ghost", str(dead.pid),
                                                         "tcp:127.0.0.1:1", "stale"], r.stdout
        assert "its process ended" in row[0]
        # Not a host to choose: the test host is still the only one running.
        r = cli("ls")
        assert r.returncode == 0 and f"host '{host.name}'" in r.stdout, r.stderr
        r = cli("ls", "-H", "ghost")
        assert r.returncode == 2 and "no host at" in r.stderr, r.stderr
    finally:
        os.unlink(path)


def test_hosts_without_any_host(tmp_path):
    empty = private_runtime_dir()
    try:
        r = run_cli(empty, tmp_path, "hosts")
        assert r.returncode == 2
        assert r.stderr.strip() == f"tether: no host running in {empty}"
    finally:
        shutil.rmtree(empty, ignore_errors=True)


# ---- choosing the host, and no host ---------------------------------------------------------


def test_the_only_running_host_is_the_default(host, cli):
    r = cli("ls")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"host '{host.name}' at {host.address}: ")


def test_tether_address_names_the_host(host, cli):
    r = cli("ls", TETHER_ADDRESS=host.address)
    assert r.returncode == 0 and f"host '{host.name}'" in r.stdout
    r = cli("ls", TETHER_ADDRESS="nobody")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"tether: no host at unix:{host.runtime_dir}/nobody.sock (is it running?)"
    )


def test_several_hosts_need_a_choice(host, tmp_path):
    env = dict(os.environ, TETHER_RUNTIME_DIR=host.runtime_dir)
    other = subprocess.Popen([os.path.join(BUILD_DIR, "tether-testhost"), "second"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        assert other.stdout.readline().startswith(b"ready ")
        r = run_cli(host.runtime_dir, tmp_path, "ls")
        assert r.returncode == 2
        assert "several hosts are running" in r.stderr and "-H NAME" in r.stderr
        r = run_cli(host.runtime_dir, tmp_path, "ls", "second")  # ls HOST, as -H HOST
        assert r.returncode == 0 and r.stdout.startswith("host 'second'")
        r = run_cli(host.runtime_dir, tmp_path, "-H", "second", "ls")  # before the command
        assert r.returncode == 0 and r.stdout.startswith("host 'second'")
    finally:
        other.stdin.close()
        other.wait(10)
        other.stdout.close()


def test_no_host_exits_2(cli, host):
    for args in (["-H", "nothere", "ls"], ["call", "-H", "nothere", "add", "1", "2"],
                 ["eval", "-H", "nothere", "evaluator", "x"], ["repl", "-H", "nothere"]):
        r = cli(*args)
        assert r.returncode == 2, args
        assert r.stderr.strip() == (
            f"tether: no host at unix:{host.runtime_dir}/nothere.sock (is it running?)"
        )
    r = cli("ls", "-H", "tcp:127.0.0.1:1")
    assert r.returncode == 2 and "no host at tcp:127.0.0.1:1" in r.stderr
    r = cli("ls", "-H", "not a name!")
    assert r.returncode == 2 and "bad host address" in r.stderr


def test_no_host_at_all(tmp_path):
    empty = private_runtime_dir()
    try:
        r = run_cli(empty, tmp_path, "ls")
        assert r.returncode == 2
        assert r.stderr.startswith(f"tether: no host at unix:{empty}/default.sock (is it running?)")
    finally:
        shutil.rmtree(empty, ignore_errors=True)


def test_a_refused_connection_exits_5(demo, tmp_path):
    r = run_cli(demo.runtime_dir, tmp_path, "hosts", "--json")
    tcp = [h["address"] for h in json.loads(r.stdout) if h["kind"] == "tcp"]
    assert tcp, r.stdout
    r = run_cli(demo.runtime_dir, tmp_path, "ls", "-H", tcp[0], TETHER_TOKEN="0" * 64)
    assert r.returncode == 5, r.stderr
    assert r.stderr.startswith(f"tether: the host at {tcp[0]} refused the connection")
    r = run_cli(demo.runtime_dir, tmp_path, "ls", "-H", tcp[0])  # its token file: admitted
    assert r.returncode == 0 and r.stdout.startswith("host 'demo'")


def test_a_host_without_the_tether_services(tmp_path):
    runtime_dir = private_runtime_dir()
    env = dict(os.environ, TETHER_RUNTIME_DIR=runtime_dir)
    hello = Process([HELLO_HOST, "30"], env, os.path.join(str(tmp_path), "hello.out"))
    try:
        hello.wait_output("serving on")
        r = run_cli(runtime_dir, tmp_path, "ls")
        assert r.returncode == 4
        assert ("has no service tether.clients: tether ls needs the host's tether.* services"
                in r.stderr)
        r = run_cli(runtime_dir, tmp_path, "call", "add", "2", "3")
        assert r.returncode == 0 and r.stdout == "5\n"
    finally:
        hello.stop()
        shutil.rmtree(runtime_dir, ignore_errors=True)


# ---- ls ------------------------------------------------------------------------------------


def test_ls_shows_each_client(host, cli):
    with host.connect(name="lister-target", services={"ping": lambda: "pong"}) as conn:
        conn.register("later", lambda: None)  # announced to the host as it is registered
        conn.root.add(1, 2)
        conn.root.add(3, 4)
        r = cli("ls")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == f"host '{host.name}' at {host.address}: 1 client"
        assert lines[1].split()[:4] == ["NAME", "PID", "LANGUAGE", "CONNECTED"]
        assert lines[1].split()[-1] == "SERVICES"
        row = lines[2].split()
        assert row[:4] == ["lister-target", str(os.getpid()), "python",
                           ".".join(map(str, sys.version_info[:3]))]
        assert row[-1] == "later,ping"
        rows = client_rows(cli)
        assert [c["name"] for c in rows] == ["lister-target"]
        c = rows[0]
        assert set(c) == {"name", "pid", "language", "language_version", "connected_since",
                          "calls_in_flight", "calls_in", "calls_out", "bytes_in", "bytes_out",
                          "services"}
        assert c["services"] == ["later", "ping"]
        assert c["pid"] == os.getpid() and c["language"] == "python"
        assert abs(c["connected_since"] - time.time()) < 60
        assert c["calls_in"] == 2 and c["calls_out"] == 0 and c["calls_in_flight"] == 0
        assert c["bytes_in"] > 0 and c["bytes_out"] > 0
        # --all adds this command's own connection.
        names = [c["name"] for c in client_rows(cli, "--all")]
        assert names == ["lister-target", "tether-cli"]
    r = cli("ls")
    assert r.stdout == f"host '{host.name}' at {host.address}: 0 clients\n"


def test_ls_counts_calls_in_flight(host, cli):
    with host.connect(name="busy") as conn:
        future = conn.async_.slow(3000)
        assert wait_until(lambda: [c["calls_in_flight"] for c in client_rows(cli)] == [1])
        future.cancel()


# ---- reset and disconnect ------------------------------------------------------------------------


def test_reset_makes_the_client_reconnect(host, cli):
    with host.connect(name="victim") as conn:
        conn.root.add(1, 1)
        assert [c["calls_in"] for c in client_rows(cli)] == [1]
        r = cli("reset", "victim")
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"reset client 'victim' on host '{host.name}'\n"
        # Back by itself, on a new connection (its counters start again).
        assert wait_until(lambda: [c["calls_in"] for c in client_rows(cli)] == [0])
        assert wait_until(conn.is_connected)
        assert conn.root.add(2, 2) == 4


def test_a_reset_lets_the_call_in_flight_finish(host, cli):
    """A reset is graceful: the client's call in flight gets its answer, a call made
    meanwhile fails with tether.Closing without running, then the client comes back."""
    with host.connect(name="busy") as conn:
        go_on = threading.Event()

        @conn.service
        def wait_here():
            go_on.wait(20)
            return "done"

        # A call in flight that lasts until the test says: the host calls the client back.
        call = conn.async_.call_client(conn.registered_name, "wait_here", [])
        assert wait_until(lambda: [c["calls_in_flight"] for c in client_rows(cli)] == [2])
        r = cli("reset", "busy")
        assert r.returncode == 0, r.stderr
        with pytest.raises(ConnectionResetError, match="not run"):
            conn.root.add(1, 1)
        assert not call.done()
        go_on.set()
        assert call.result(timeout=10) == "done"
        assert wait_until(lambda: [c["calls_in"] for c in client_rows(cli)] == [0])
        assert wait_until(conn.is_connected)
        assert conn.root.add(2, 2) == 4


def test_disconnect_ends_the_client(host, cli, evaluator):
    r = cli("disconnect", "evaluator")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"disconnected client 'evaluator' on host '{host.name}'\n"
    evaluator.proc.wait(10)
    assert evaluator.proc.returncode == 0
    assert "evaluator: disconnected by the host" in evaluator.output()
    assert client_rows(cli) == []


def test_reset_or_disconnect_no_such_client_exits_3(host, cli):
    for command in ("reset", "disconnect"):
        r = cli(command, "nobody")
        assert r.returncode == 3
        assert r.stderr.strip() == (
            f"tether: no client named 'nobody' on host '{host.name}' (tether ls lists them)"
        )


def test_a_command_never_acts_on_itself(host, cli):
    r = cli("disconnect", "tether-cli")  # the only tether-cli is this very command
    assert r.returncode == 3


# ---- call ------------------------------------------------------------------------------


def test_call_prints_the_result(cli):
    assert cli("call", "add", "2", "3").stdout == "5\n"
    assert cli("call", "echo", "[1, 'a', None, 2.5]").stdout == "[1, 'a', None, 2.5]\n"
    assert cli("call", "echo", "hello world").stdout == "'hello world'\n"  # not a literal: str
    assert cli("call", "echo", "{'k': [1]}").stdout == "{'k': [1]}\n"
    r = cli("call", "echo_args", "1", "two", "key=3", "name='x'")
    assert r.stdout == "[[1, 'two'], {'key': 3, 'name': 'x'}]\n"
    r = cli("call", "echo", "None")  # None: nothing printed, as in a REPL
    assert r.returncode == 0 and r.stdout == ""


def test_call_prints_proxies_by_their_repr(cli):
    r = cli("call", "make_counter", "7")
    assert r.returncode == 0 and r.stdout == "<Counter 7>\n"


def test_call_notify(host, cli):
    with host.connect() as conn:
        conn.root.notes()
        r = cli("call", "--notify", "note", "1", "two")
        assert r.returncode == 0 and r.stdout == ""
        assert wait_until(lambda: conn.root.notes() == [[1, "two"]] or None)


def test_call_errors(cli, host):
    r = cli("call", "fail", "ValueError", "boom")
    assert r.returncode == 1
    assert r.stderr.strip() == "tether: fail raised ValueError: boom"
    r = cli("call", "fail", "mygame.ActorError", "no actor Bob")
    assert r.returncode == 1
    assert r.stderr.strip() == "tether: fail raised mygame.ActorError: no actor Bob"
    r = cli("call", "no_such_service")
    assert r.returncode == 4
    assert r.stderr.strip() == f"tether: host '{host.name}' has no service 'no_such_service'"
    r = cli("call", "add", "a=1", "2")
    assert r.returncode == 2 and "after keyword arguments" in r.stderr
    r = cli("call")
    assert r.returncode == 2


# ---- exec and eval ---------------------------------------------------------------------------


def test_eval_exec(cli, evaluator):
    r = cli("eval", "evaluator", "x")  # nothing set x yet
    assert r.returncode == 1
    assert r.stderr.strip() == "tether: NameError: name 'x' is not defined"
    r = cli("exec", "evaluator", "x = 5")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    r = cli("eval", "evaluator", "x")
    assert r.returncode == 0 and r.stdout == "5\n"
    code = "import os\ny = [x, os.getpid()]\nprint('from stdin')\n"
    r = cli("exec", "evaluator", "-", input=code)
    assert r.returncode == 0
    assert cli("eval", "evaluator", "y").stdout == f"[5, {evaluator.proc.pid}]\n"
    assert "from stdin" in evaluator.output()  # printed where the code ran
    r = cli("eval", "evaluator", "{}['missing']")  # the client's KeyError is no missing client
    assert r.returncode == 1 and r.stderr.strip() == "tether: KeyError: \"'missing'\""
    r = cli("exec", "evaluator", "def f(:")
    assert r.returncode == 1 and r.stderr.startswith("tether: SyntaxError: ")


def test_call_client_passes_the_timeout_on(host, tmp_path, evaluator):
    """tether.call_client gives the client the caller's --timeout: a stopped client (it
    sends nothing, not even progress) times the command out after about that long, not
    after the host's own default of 30 s."""
    os.kill(evaluator.proc.pid, signal.SIGSTOP)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "tether", "--timeout", "1", "call", "tether.call_client",
             "evaluator", "eval", "['1 + 1']"],
            env=cli_env(host.runtime_dir, tmp_path), capture_output=True, text=True,
            timeout=20,
        )
    finally:
        os.kill(evaluator.proc.pid, signal.SIGCONT)
    assert r.returncode == 1, r.stderr
    assert "in time (--timeout)" in r.stderr, r.stderr


def test_eval_verbose_shows_the_remote_traceback(cli, evaluator):
    r = cli("exec", "-v", "evaluator", "1 / 0")
    assert r.returncode == 1
    assert r.stderr.startswith("tether: ZeroDivisionError: division by zero\nTraceback")
    assert 'File "<tether exec>", line 1' in r.stderr
    r = cli("exec", "evaluator", "1 / 0")
    assert r.stderr == "tether: ZeroDivisionError: division by zero\n"


def test_eval_no_such_client_exits_3(host, cli):
    r = cli("eval", "nobody", "1")
    assert r.returncode == 3
    assert r.stderr.strip() == (
        f"tether: no client named 'nobody' on host '{host.name}' (tether ls lists them)"
    )


def test_eval_on_a_client_without_eval_exits_4(host, cli):
    with host.connect(name="plain"):
        r = cli("eval", "plain", "1")
        assert r.returncode == 4
        assert r.stderr.strip() == (
            "tether: client 'plain' has no service 'eval': it must register "
            "tether.services.EvalExec"
        )


def test_eval_exec_against_the_demo(demo, tmp_path):
    env = dict(os.environ, TETHER_RUNTIME_DIR=demo.runtime_dir)
    client = start_evaluator("demo", tmp_path, env)
    try:
        r = run_cli(demo.runtime_dir, tmp_path, "exec", "evaluator", "x = 5")
        assert r.returncode == 0, r.stderr
        r = run_cli(demo.runtime_dir, tmp_path, "eval", "evaluator", "x * 2")
        assert r.stdout == "10\n"
    finally:
        client.stop()


# ---- the REPL ------------------------------------------------------------------------------


class Terminal:
    """A program on a pseudo-terminal, typed at (what a person would see and do)."""

    def __init__(self, argv, env):
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        env = dict(env, TERM="xterm")
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True)
        os.close(slave)
        self.fd = master
        self.seen = ""  # everything read so far
        self.pending = ""  # read, not yet matched by expect

    def expect(self, text, timeout=15):
        """Read until text appears; what came before it, and it."""
        deadline = time.monotonic() + timeout
        while text not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {text!r} after {self.pending!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 65536).decode(errors="replace")
            except OSError:  # EIO: the program ended
                data = ""
            if not data:
                raise AssertionError(f"the program ended before {text!r}: {self.pending!r}")
            self.seen += data
            self.pending += data
        i = self.pending.index(text) + len(text)
        out, self.pending = self.pending[:i], self.pending[i:]
        return out

    def line(self, text):
        """Type a line and return what the program printed before its next prompt."""
        os.write(self.fd, text.encode() + b"\r")
        return self.expect(">>> ")

    def type(self, keys):
        os.write(self.fd, keys.encode())

    def wait(self, timeout=10):
        """The exit status, reading (and keeping) what is left meanwhile."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                try:
                    self.seen += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:
                    pass
        if self.proc.poll() is None:
            self.proc.kill()
        status = self.proc.wait(5)
        while select.select([self.fd], [], [], 0.05)[0]:  # what it wrote last
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: nothing more
                break
            if not data:
                break
            self.seen += data.decode(errors="replace")
        return status

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.fd)


UP = "\x1b[A"


def test_repl_on_the_demo(demo, tmp_path):
    env = cli_env(demo.runtime_dir, tmp_path)
    term = Terminal([sys.executable, "-m", "tether", "repl", "-H", "demo"], env)
    try:
        banner = term.expect(">>> ")
        assert "REPL on host 'demo'" in banner
        assert "spawn_actor" in banner and "list_actors" in banner
        assert "[globals] actors=[]  frame=" in banner  # printed once before the first line

        out = term.line('spawn_actor("Bob", 1, 2)')
        assert "<Actor 'Bob' at (1.0, 2.0)>\r\n" in out  # the line's value
        assert "[globals] actors=[<Actor 'Bob' at (1.0, 2.0)>]  frame=" in out  # then the globals

        out = term.line("actors[0].move(1, 1)")  # the globals are names here too
        assert "[2.0, 3.0]" in out and "actors=[<Actor 'Bob' at (2.0, 3.0)>]" in out

        term.type(UP)  # history: the last line again
        out = term.line("")
        assert "[3.0, 4.0]" in out and "actors=[<Actor 'Bob' at (3.0, 4.0)>]" in out

        out = term.line("bob = get_actor('Bob'); bob.rename('Robert'); bob.name")
        assert "'Robert'" in out and "actors=[<Actor 'Robert' at (3.0, 4.0)>]" in out

        term.type("for a in list_actors():\r")
        term.expect("... ")
        term.type("  print('each', a.name)\r")
        term.expect("... ")
        out = term.line("")
        assert "each Robert" in out

        out = term.line('get_actor("Nobody")')  # the host's error, without tether's frames
        assert 'KeyError: "no actor named \'Nobody\'"' in out
        assert "_connection.py" not in out

        out = term.line("nosuch")  # not a service of the host: a NameError
        assert "NameError: name 'nosuch' is not defined" in out

        term.line('actors = "mine"')  # a name the console binds stays its own
        out = term.line("actors")
        assert "'mine'\r\n[globals] actors=[<Actor 'Robert'" in out

        out = term.line("add(20, 22)")
        assert "42" in out
        term.type("\x04")  # Ctrl-D
        assert term.wait() == 0
    finally:
        term.close()
    demo.wait_output("tether-repl spawned actor 'Bob' at (1.0, 2.0)")
    with open(env["TETHER_HISTORY"]) as f:
        history = f.read().splitlines()
    assert 'spawn_actor("Bob", 1, 2)' in history and history[-1] == "add(20, 22)"

    # A new session has the history of the last one.
    term = Terminal([sys.executable, "-m", "tether", "repl", "-H", "demo", "--no-globals"], env)
    try:
        banner = term.expect(">>> ")
        assert "[globals]" not in banner
        term.type(UP)
        out = term.line("")
        assert "42" in out and "[globals]" not in out
        term.type("\x04")
        assert term.wait() == 0
    finally:
        term.close()


def test_repl_ends_when_the_host_disconnects_it(demo, tmp_path):
    env = cli_env(demo.runtime_dir, tmp_path)
    term = Terminal([sys.executable, "-m", "tether", "repl", "-H", "demo"], env)
    try:
        term.expect(">>> ")
        r = run_cli(demo.runtime_dir, tmp_path, "disconnect", "tether-repl")
        assert r.returncode == 0, r.stderr
        assert term.wait() == 1
        assert "tether: host 'demo' disconnected this console" in term.seen
    finally:
        term.close()


def test_repl_with_piped_input_on_a_host_that_lists_no_services(tmp_path):
    runtime_dir = private_runtime_dir()
    env = dict(os.environ, TETHER_RUNTIME_DIR=runtime_dir)
    hello = Process([HELLO_HOST, "30"], env, os.path.join(str(tmp_path), "hello.out"))
    try:
        hello.wait_output("serving on")
        lines = 'add(2, 3)\ngreet("you")\nprint(len("abc"))\n'
        r = run_cli(runtime_dir, tmp_path, "repl", input=lines)
        assert r.returncode == 0, r.stderr
        assert "5\n" in r.stdout and "'Hello, you!'\n" in r.stdout and "3\n" in r.stdout
        assert "[globals]" not in r.stdout  # it has none
    finally:
        hello.stop()
        shutil.rmtree(runtime_dir, ignore_errors=True)


def test_repl_example(demo, tmp_path):
    env = dict(os.environ, TETHER_RUNTIME_DIR=demo.runtime_dir, HOME=str(tmp_path))
    term = Terminal([sys.executable, REPL_EXAMPLE, "demo"], env)
    try:
        assert "Connected to 'demo'" in term.expect(">>> ")
        out = term.line('spawn_actor("Ann", label="hero")')
        assert "<Actor 'Ann' at (0.0, 0.0)>" in out
        assert "actors=[<Actor 'Ann' at (0.0, 0.0)>]  frame=" in out
        out = term.line("actors[0].label")
        assert "'hero'" in out
        term.type(UP + UP)
        out = term.line("")
        assert "ValueError: an actor named 'Ann' exists already" in out
        term.type("\x04")
        assert term.wait() == 0
    finally:
        term.close()


def test_the_cli_page_links_resolve():
    page = os.path.join(SOURCE_DIR, "docs", "cli.md")
    with open(page, encoding="utf-8") as f:
        text = f.read()
    links = re.findall(r"\]\(([\w./-]+\.\w+)(?:#[\w-]*)?\)", text)  # relative file links
    assert len(links) > 5
    for link in links:
        assert os.path.exists(os.path.join(os.path.dirname(page), link)), link
    headings = re.findall(r"^### (.*)$", text, re.M)
    for command in ("hosts", "ls", "reset", "disconnect", "call", "exec", "eval", "repl"):
        assert any(command in h.split() for h in headings), command
