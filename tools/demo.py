#!/usr/bin/env python3
"""demo: what `make demo` runs once the build is done.

    tools/demo.py [--build-dir DIR] [--name NAME] [--once] [TETHER-DEMO OPTIONS...]

Starts the demo host (DIR/tether-demo, an engine-like 60 fps scene of actors) and, once
it listens, two example clients that stay until the end: examples/eval_exec_client.py,
the client "evaluator" that runs the Python the host sends it, and
examples/demo_client.py ("demo_client"), which spawns actors and walks them about for a
few seconds, has the host call it back once, then waits. All print what happens, each
line prefixed with who said it. Once demo_client is done it prints the tour to take from
another terminal: the commands of README.md's "Command line" block, which work as
written against this demo (python/tests/test_demo_tour.py runs them), and the actor
events example. It keeps all running until Ctrl-C, which stops them.

Options it does not know (--tcp, --port, --quiet, --seconds N, ...) go to tether-demo.

--once runs a bounded check instead, in a private runtime directory so that it never
meets a demo already running: first DIR/test-demo (tests/test-demo.c, also a ctest test),
which starts tether-demo and works its scene as a client over the socket while the host
calls it back, with the tether-demo options given here (none: three runs, on the Unix
socket, with --tcp 0 and with --port 0); then the host with both example clients, the
client for six seconds at most, and the tour's commands once it is done. Exit status 0
when all went well; the tests run it.
"""

import argparse
import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT = os.path.join(SOURCE_DIR, "examples", "demo_client.py")
EVALUATOR = os.path.join(SOURCE_DIR, "examples", "eval_exec_client.py")
CLIENT_DONE = "stay in the scene"  # demo_client's line when its scene is done...
CLIENT_STAYS = "staying connected as"  # ...and, with --stay, the next one
READY_TIMEOUT = 10.0  # seconds for the host to listen
STOP_TIMEOUT = 5.0  # seconds for a child to exit once told to
SELFTEST_TIMEOUT = 100.0  # seconds for test-demo: three runs of 30 s at most, and slack

_print_lock = threading.Lock()
_stopped_by = [None]  # the signal that stopped the demo


def _interrupted(signo, frame):
    """SIGINT (Ctrl-C) and SIGTERM both stop the demo."""
    if _stopped_by[0] is None:
        _stopped_by[0] = signo
        raise KeyboardInterrupt


def out(text=""):
    with _print_lock:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


class Child:
    """A child process whose output is copied to ours, each line prefixed, and kept."""

    def __init__(self, label, argv, env, ready_text=None):
        self.label = label
        self.lines = []
        self.ready = threading.Event()
        self.ready_text = ready_text
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, text=True, errors="replace", bufsize=1,
        )
        self.reader = threading.Thread(target=self._copy, daemon=True)
        self.reader.start()

    def _copy(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            out(f"{self.label} | {line}")
            if self.ready_text and self.ready_text in line:
                self.ready.set()
        self.ready.set()  # at its end too: whoever waits looks at poll()

    def text(self):
        return "\n".join(self.lines)

    def wait(self, timeout=None):
        """Its exit status, or None if it still runs after timeout seconds."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.reader.join(2)
        return rc

    def stop(self, signo=signal.SIGTERM, grace=0.0):
        """Give it grace seconds to exit, then signal it unless it has exited, and wait
        (killing it after STOP_TIMEOUT). Its exit status."""
        if grace and self.wait(grace) is not None:
            return self.proc.returncode
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signo)
            except ProcessLookupError:
                pass
        rc = self.wait(STOP_TIMEOUT)
        if rc is None:
            self.proc.kill()
            rc = self.wait()
        return rc


def start_host(build_dir, name, extra, env):
    host = Child("host  ", [os.path.join(build_dir, "tether-demo"), "--name", name, *extra],
                 env, ready_text="TETHER_ADDRESS=")
    host.ready.wait(READY_TIMEOUT)
    if host.proc.poll() is not None or not host.ready.is_set():
        host.stop()
        out(f"demo: tether-demo did not start (is another host named '{name}' running? "
            "choose another name with --name)")
        return None
    return host


def start_client(name, seconds, env, stay=False):
    return Child("client", [sys.executable, CLIENT, name, "--seconds", str(seconds),
                            *(["--stay"] if stay else [])], env,
                 ready_text=CLIENT_STAYS if stay else CLIENT_DONE)


def start_evaluator(name, env):
    """examples/eval_exec_client.py, the client "evaluator" of `tether exec` and `eval`."""
    return Child("eval  ", [sys.executable, EVALUATOR, name], env, ready_text="evaluator: serving")


def tour(build_dir, name):
    """The commands of README.md's "Command line" block (its names, this demo's paths), and
    what each does."""
    cli = os.path.relpath(os.path.join(build_dir, "tether"))
    host = "" if name == "demo" else f" -H {name}"
    return [
        (f"{cli} hosts", "the hosts of this user, live or stale"),
        (f"{cli} ls{host}", "the host's clients: evaluator and demo_client"),
        (f"{cli}{host} reset demo_client", "make a client reconnect; `disconnect` ends it"),
        (f"{cli}{host} call spawn_actor Cleo 1 2", "call a service, print the result"),
        (f"{cli}{host} exec evaluator \"x = 5\"", "run Python in the client 'evaluator'"),
        (f"{cli}{host} eval evaluator x", "... and evaluate there: 5"),
        (f"{cli}{host} repl", "a console on the host's services (Ctrl-D quits)"),
    ]


def events_example(build_dir, name):
    """The command that runs examples/actor_coroutines.py against this demo."""
    python = f"PYTHONPATH={os.path.relpath(os.path.join(build_dir, 'python'))} python3"
    example = os.path.relpath(os.path.join(SOURCE_DIR, "examples", "actor_coroutines.py"))
    return f"{python} {example}" + ("" if name == "demo" else f" {name}")


def banner(build_dir, name, client_stays=True):
    lines = [
        "-" * 78,
        f"The demo host '{name}' is running, with the clients 'evaluator' "
        "(examples/eval_exec_client.py)",
        "and 'demo_client' (examples/demo_client.py): the example client is done and stays."
        if client_stays else
        "and 'demo_client' (examples/demo_client.py), which has ended: see its lines above.",
        f"In another terminal, in {os.getcwd()}, take the tour (README.md, \"Command line\"):",
    ]
    if os.environ.get("TETHER_RUNTIME_DIR"):
        lines.append(f"    export TETHER_RUNTIME_DIR={os.environ['TETHER_RUNTIME_DIR']}")
    commands = tour(build_dir, name)
    width = max(len(c) for c, _ in commands)
    lines += [f"    {c.ljust(width)}   # {what}" for c, what in commands]
    lines += ["A coroutine per actor, told when it is spawned, ticked and destroyed "
              "(docs/ref-asyncio-loop.md):", f"    {events_example(build_dir, name)}"]
    if not os.access(os.path.join(build_dir, "tether"), os.X_OK):
        cli = os.path.relpath(os.path.join(build_dir, "tether"))
        lines.append(f"    ({cli} is not built yet: use the python3 line the host printed above)")
    lines += ["Stop with Ctrl-C.", "-" * 78]
    out("\n".join(lines))


def python_env(build_dir):
    env = dict(os.environ)
    pkg = os.path.join(build_dir, "python")
    env["PYTHONPATH"] = pkg + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(build_dir, name, extra, seconds):
    """The demo, until Ctrl-C (or until the host stops, with --seconds)."""
    env = python_env(build_dir)
    host = start_host(build_dir, name, extra, env)
    if host is None:
        return 1
    client = evaluator = None
    try:
        # The evaluator first, so that it is ready (and listed first) by the time the
        # tour's commands run; both stay until the end.
        evaluator = start_evaluator(name, env)
        evaluator.ready.wait(READY_TIMEOUT)
        client = start_client(name, seconds, env, stay=True)
        client.ready.wait()  # its scene is done (or it ended)
        banner(build_dir, name, client_stays=client.proc.poll() is None)
        return host.wait()
    except KeyboardInterrupt:
        out("demo: stopping")
        return 0
    finally:
        # After Ctrl-C the children, in our process group, got SIGINT too and are on
        # their way out: give them a moment before signalling (a SIGTERM sent to this
        # script alone arrives as KeyboardInterrupt too, see main()).
        grace = 2.0 if _stopped_by[0] == signal.SIGINT else 0.0
        for child in (client, evaluator):
            if child is not None:
                child.stop(signal.SIGINT, grace)
        rc = host.stop(signal.SIGTERM, grace)
        out(f"demo: the host exited with status {rc}")


def check(ok, what, failures):
    out(f"demo --once: {'ok' if ok else 'FAILED'}: {what}")
    if not ok:
        failures.append(what)


def once(build_dir, name, extra, client_seconds):
    """The bounded run: tests/test-demo against the host, then the host with the example
    client."""
    failures = []
    base = os.environ.get("TETHER_RUNTIME_DIR")
    if not base or len(base) > 60 or not os.path.isdir(base):
        base = None  # keep socket paths short (108 bytes at most)
    rt = tempfile.mkdtemp(prefix="demo-once-", dir=base)
    os.chmod(rt, 0o700)
    env = python_env(build_dir)
    env["TETHER_RUNTIME_DIR"] = rt
    env.pop("TETHER_ADDRESS", None)
    try:
        # test-demo finds tether-demo in TETHER_BUILD_DIR; an alarm ends any of its runs
        # that takes more than 30 seconds.
        selftest = Child("selftest", [os.path.join(build_dir, "test-demo"), *extra],
                         dict(env, TETHER_BUILD_DIR=build_dir))
        rc = selftest.wait(SELFTEST_TIMEOUT)
        if rc is None:
            rc = selftest.stop(signal.SIGKILL)
        check(rc == 0 and "self-test passed" in selftest.text(),
              f"test-demo works tether-demo's scene and passes (exit {rc})", failures)

        host = start_host(build_dir, name, ["--seconds", "60", *extra], env)
        check(host is not None, "tether-demo starts", failures)
        if host is not None:
            evaluator = start_evaluator(name, env)
            client = start_client(name, client_seconds, env, stay=True)
            evaluator.ready.wait(READY_TIMEOUT)
            check(evaluator.proc.poll() is None and "evaluator: serving" in evaluator.text(),
                  "examples/eval_exec_client.py serves as 'evaluator'", failures)
            client.ready.wait(30)
            check(client.proc.poll() is None and CLIENT_STAYS in client.text(),
                  "examples/demo_client.py works the scene and stays", failures)
            take_the_tour(build_dir, name, env, failures)
            rcs = [child.stop(signal.SIGINT) for child in (client, evaluator)]
            check(rcs[0] == 0, f"examples/demo_client.py exits 0 on Ctrl-C (exit {rcs[0]})",
                  failures)
            log = host.text()
            check("demo_client spawned actor 'Ada'" in log, "the host spawned its actors",
                  failures)
            check("demo_client: spawned 3 actors" in log, "the host received its log records",
                  failures)
            rc = host.stop()
            check(rc == 0, f"the host exits 0 on SIGTERM (exit {rc})", failures)
            check(re.search(r"client 'demo_client' \(pid \d+\) left", host.text()),
                  "the host saw the client leave", failures)
    finally:
        shutil.rmtree(rt, ignore_errors=True)
    if failures:
        out(f"demo --once: FAILED: {len(failures)} checks: " + "; ".join(failures))
        return 1
    out("demo --once: passed")
    return 0


def take_the_tour(build_dir, name, env, failures):
    """Run the tour's commands (README.md's "Command line" block), each checked for exit 0."""
    if not os.access(os.path.join(build_dir, "tether"), os.X_OK):
        check(False, f"{os.path.join(build_dir, 'tether')} is built, for the tour", failures)
        return
    for command, _what in tour(build_dir, name):
        argv = shlex.split(command)
        stdin = "get_actor('Cleo').position()\n" if argv[-1] == "repl" else ""
        try:
            r = subprocess.run(argv, input=stdin, env=env, capture_output=True, text=True,
                               timeout=60)
        except subprocess.TimeoutExpired:
            check(False, f"the tour: {command} ends within 60 s", failures)
            continue
        for line in (r.stdout + r.stderr).splitlines():
            out(f"tour   | {line}")
        check(r.returncode == 0, f"the tour: {command} (exit {r.returncode})", failures)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Run tether-demo with an example client (what `make demo` does).",
        epilog="Other options are passed to tether-demo (--tcp, --port, --quiet, --seconds).")
    parser.add_argument("--build-dir", default=os.path.join(SOURCE_DIR, "build"),
                        help="where tether-demo and the Python package were built (build)")
    parser.add_argument("--name", default="demo", help="the host's name (demo)")
    parser.add_argument("--once", action="store_true",
                        help="run a bounded check instead, exit 0 when all went well")
    parser.add_argument("--client-seconds", type=float, default=8.0,
                        help="how long the example client works the scene (8)")
    args, extra = parser.parse_known_args(argv)
    build_dir = os.path.abspath(args.build_dir)

    missing = []
    if not os.access(os.path.join(build_dir, "tether-demo"), os.X_OK):
        missing.append("tether-demo")
    if args.once and not os.access(os.path.join(build_dir, "test-demo"), os.X_OK):
        missing.append("test-demo (built with the tests: TETHER_BUILD_TESTS=ON)")
    if not glob.glob(os.path.join(build_dir, "python", "tether", "_tether*.so")):
        missing.append("the Python package (build/python/tether/_tether*.so: python3-dev?)")
    if missing:
        out(f"demo: not built in {build_dir}: {', '.join(missing)} (run make)")
        return 1

    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    if args.once:
        return once(build_dir, args.name, extra, min(args.client_seconds, 6.0))
    return run(build_dir, args.name, extra, args.client_seconds)


if __name__ == "__main__":
    sys.exit(main())
