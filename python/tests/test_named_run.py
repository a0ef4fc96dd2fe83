"""tether.named_run: running a script again cancels the tasks of its previous run. Real
processes take a name in a private runtime directory; a new run stops the old one, which
cancels its tasks and tells the new one which; runs that are stuck, killed or of another
name; stop() within one process; the errors."""

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import tether

from conftest import BUILD_DIR, private_runtime_dir, wait_until

RUN_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, signal, sys, time
    import tether

    name, mode = sys.argv[1], sys.argv[2]

    async def ticker(label):
        try:
            while True:
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            print(f"{label} saw its cancel", flush=True)
            raise

    async def main():
        loop = asyncio.get_running_loop()
        timeout = float(os.environ.get("RUN_TIMEOUT", "10"))
        async with tether.named_run(name, timeout=timeout) as run:
            loop.add_signal_handler(signal.SIGTERM, run.stop, "SIGTERM")
            p = run.previous
            print("previous", "none" if p is None else
                  f"{p.pid} ({p.reason}) {','.join(p.cancelled)}", flush=True)
            for label in ("alpha", "beta"):
                asyncio.create_task(ticker(label), name=label)
            print("ready", flush=True)
            if mode == "stuck":
                time.sleep(30)  # the loop cannot answer
            await run.wait()
            print("never printed", flush=True)
        print(f"stopped ({run.reason}) by {run.replaced_by}: {','.join(run.cancelled)}",
              flush=True)

    asyncio.run(main())
    print("exit", flush=True)
    """
)


@pytest.fixture
def runtime_dir():
    path = private_runtime_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Run:
    """A process running RUN_SCRIPT, its output in a file."""

    def __init__(self, tmp_path, runtime_dir, name, mode="wait", label="run", **env):
        script = tmp_path / "run_script.py"
        if not script.exists():
            script.write_text(RUN_SCRIPT)
        self.log_path = tmp_path / f"{label}.out"
        self.log = open(self.log_path, "wb")
        path = os.path.join(BUILD_DIR, "python")
        environment = dict(os.environ, TETHER_RUNTIME_DIR=runtime_dir, PYTHONPATH=path, **env)
        self.proc = subprocess.Popen([sys.executable, str(script), name, mode],
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=environment)
        self.pid = self.proc.pid

    def output(self):
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern, timeout=15.0):
        found = wait_until(lambda: re.search(pattern, self.output(), re.M), timeout)
        assert found, f"no {pattern!r} in the output of run {self.pid}:\n{self.output()}"
        return found

    def wait(self, timeout=15.0):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"run {self.pid} still runs after {timeout} s:\n{self.output()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def runs(tmp_path, runtime_dir):
    started = []

    def start(name, mode="wait", **env):
        run = Run(tmp_path, runtime_dir, name, mode, f"run{len(started)}", **env)
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop()


def test_a_new_run_cancels_the_previous_runs_tasks_and_is_told_which(runs):
    first = runs("line-server")
    first.wait_for(r"^ready")
    assert "previous none" in first.output()

    second = runs("line-server")
    # The first run's tasks saw their cancel, its block ended quietly, and it exited.
    assert first.wait() == 0, first.output()
    first.wait_for(r"^alpha saw its cancel")
    first.wait_for(r"^beta saw its cancel")
    first.wait_for(r"^stopped \(a new run replaces this one\) by %d: alpha,beta$" % second.pid)
    first.wait_for(r"^exit")
    assert "never printed" not in first.output()
    # The second was told, and runs.
    second.wait_for(r"^previous %d \(a new run replaces this one\) alpha,beta$" % first.pid)
    second.wait_for(r"^ready")

    # Another name is another run: it stops nothing.
    other = runs("other-script")
    other.wait_for(r"^previous none")
    other.wait_for(r"^ready")
    assert second.proc.poll() is None

    # A third run of the first name stops the second the same way.
    third = runs("line-server")
    assert second.wait() == 0, second.output()
    third.wait_for(r"^previous %d \(a new run replaces this one\) alpha,beta$" % second.pid)

    # A run stopped otherwise (SIGTERM through loop.add_signal_handler) says so.
    other.proc.send_signal(signal.SIGTERM)
    assert other.wait() == 0, other.output()
    other.wait_for(r"^stopped \(SIGTERM\) by None: alpha,beta$")


def test_a_killed_run_leaves_its_name_free(runs):
    first = runs("job")
    first.wait_for(r"^ready")
    first.proc.kill()
    first.wait()
    second = runs("job")
    second.wait_for(r"^previous none")  # nobody to stop: the lock went with the process
    second.wait_for(r"^ready")


def test_a_run_that_cannot_answer_makes_the_new_one_time_out(runs):
    stuck = runs("stuck-job", "stuck")
    stuck.wait_for(r"^ready")
    started = time.monotonic()
    second = runs("stuck-job", RUN_TIMEOUT="0.5")
    assert second.wait() != 0
    second.wait_for(r"TimeoutError: the previous run of 'stuck-job' \(pid %d\) did not stop "
                    r"within 0.5 s" % stuck.pid)
    assert time.monotonic() - started < 10
    assert stuck.proc.poll() is None  # untouched


# ---- within one process -------------------------------------------------------------------


def cancelling(task):
    """Task.cancelling() where there is one (Python 3.11+)."""
    return task.cancelling() if hasattr(task, "cancelling") else 0


@pytest.fixture
def own_runtime_dir(runtime_dir, monkeypatch):
    monkeypatch.setenv("TETHER_RUNTIME_DIR", runtime_dir)
    return runtime_dir


def test_stop_cancels_every_task_and_the_block_ends_quietly(own_runtime_dir):
    seen = []

    async def worker(label):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append(label)
            await asyncio.sleep(0.01)  # cleanup that awaits: the block waits for it
            seen.append(label + " done")
            raise

    async def main():
        async with tether.named_run("in-process") as run:
            assert run.previous is None and run.reason is None
            asyncio.create_task(worker("w1"), name="w1")
            asyncio.create_task(worker("w2"), name="w2")
            asyncio.get_running_loop().call_later(0.05, run.stop, "enough")
            await asyncio.sleep(60)  # cancelled by the stop
        seen.append("after the block")
        assert cancelling(asyncio.current_task()) == 0  # the cancel was taken back
        return run

    run = asyncio.run(main())
    assert run.reason == "enough" and run.replaced_by is None
    assert run.cancelled == ["w1", "w2"]
    assert seen[-1] == "after the block" and {"w1 done", "w2 done"} <= set(seen)
    assert repr(run) == "<tether.NamedRun 'in-process' stopped (enough)>"


def test_stop_from_the_block_itself_and_the_name_is_free_afterwards(own_runtime_dir):
    async def main():
        async with tether.named_run("self-stop") as run:
            run.stop("done here")
            run.stop("a second call changes nothing")
        after = cancelling(asyncio.current_task())
        await asyncio.sleep(0)  # no cancel is left pending
        async with tether.named_run("self-stop") as again:
            assert again.previous is None  # the first let go of the name
        return run, after

    run, after = asyncio.run(main())
    assert run.reason == "done here" and run.cancelled == [] and after == 0

    async def after_the_block():
        async with tether.named_run("ended") as run:
            pass
        bystander = asyncio.create_task(asyncio.sleep(0.05))
        run.stop("too late")  # the block is over: nothing of the loop is touched
        await bystander
        return run.reason

    assert asyncio.run(after_the_block()) is None
    with pytest.raises(RuntimeError, match="has not been entered"):
        tether.named_run("unentered").stop()


def test_an_exception_in_the_block_goes_through_and_frees_the_name(own_runtime_dir):
    async def main():
        with pytest.raises(KeyError):
            async with tether.named_run("failing"):
                raise KeyError("mine")
        async with tether.named_run("failing") as run:
            return run.previous

    assert asyncio.run(main()) is None
    assert not os.path.exists(os.path.join(own_runtime_dir, "runs", "failing.ctl"))


def test_names_and_misuse(own_runtime_dir, monkeypatch):
    for bad in ("", None, 3):
        with pytest.raises(ValueError, match="non-empty str"):
            tether.named_run(bad)
    for bad in (-1, "5", None, float("nan")):
        with pytest.raises(ValueError, match="timeout is a number"):
            tether.named_run("job", timeout=bad)
    with pytest.raises(TypeError, match="async with"):
        with tether.named_run("sync"):
            pass

    async def odd_names():
        # Slashes, spaces and long names are names like others, each its own.
        names = ["a/b", "a_b", "a b", "x" * 300, "x" * 299 + "y"]
        runs = [tether.named_run(n) for n in names]
        for run in runs:
            await run.__aenter__()
        for run in runs:
            await run.__aexit__(None, None, None)
        run = runs[0]
        with pytest.raises(RuntimeError, match="entered already"):
            await run.__aenter__()
        return sorted(os.listdir(os.path.join(own_runtime_dir, "runs")))

    files = asyncio.run(odd_names())
    assert len([f for f in files if f.endswith(".lock")]) == 5
    assert all("/" not in f and len(f) < 60 for f in files)

    async def twice():
        async with tether.named_run("once"):
            with pytest.raises(RuntimeError, match="runs in this process already"):
                async with tether.named_run("once"):
                    pass
        async with tether.named_run("once") as run:  # free again
            return run.previous

    assert asyncio.run(twice()) is None

    # Whoever reaches a run's socket can stop it: the directory must be ours alone.
    os.chmod(os.path.join(own_runtime_dir, "runs"), 0o755)
    with pytest.raises(PermissionError, match="mode 0700"):
        asyncio.run(tether.named_run("exposed").__aenter__())
    os.chmod(os.path.join(own_runtime_dir, "runs"), 0o700)

    monkeypatch.setenv("TETHER_RUNTIME_DIR", "/tmp/" + "d" * 120)
    with pytest.raises(ValueError, match="longer than 107 bytes"):
        tether.named_run("job")
