"""Named runs: running a script again cancels the tasks of its previous run.

In an engine that ticks one asyncio loop for every script, re-running a script cancels
the tasks its previous run started. Here each run is a process of its own, so a run
takes a name instead, and a new run of the same name stops the one before it::

    async def main():
        async with tether.named_run("line-server") as run:
            if run.previous:                       # what the stopped run said
                print(run.previous.pid, run.previous.cancelled)
            asyncio.create_task(ticker())
            await server.serve_forever()
        print(run.reason, run.cancelled)          # why it stopped, what it cancelled

Within one runtime directory (the one hosts put their sockets in), one run of a name
runs at a time. Entering the block takes the name: a run that holds it is asked to stop
and answers, once its tasks have ended, with its pid, why it stopped and the names of
the tasks it cancelled; then it lets go of the name, and the block begins. Stopping
(``run.stop(reason)``, or a new run) cancels every task of the loop, the block's own
included; the block then ends quietly once they have all finished, and the code after
it runs.

Underneath: RUNTIME_DIR/runs/KEY.lock, held with flock(2) by the run that has the name
(the kernel lets go of it when the process ends, however it ends), holding its pid; and
RUNTIME_DIR/runs/KEY.ctl, a Unix socket the holder listens on. A new run connects to it
and sends one line, {"replace": PID} in JSON; the holder answers one line,
{"pid": PID, "reason": str, "cancelled": [names]}, once its tasks have ended, and
closes. The directory is the user's own (0700), so no other user can stop a run.
"""

import asyncio
import errno
import fcntl
import hashlib
import json
import os
import re

from . import _cli

__all__ = ["NamedRun", "PreviousRun", "named_run"]

# The reason a run gives when a new run of its name stops it.
REPLACED = "a new run replaces this one"
# Longest request line the holder reads; a request is about 30 bytes.
_MAX_REQUEST = 1024
_POLL = 0.01
# Unix socket paths hold at most this many bytes on Linux (107 and a NUL; 103 on BSDs).
_SOCKET_PATH_MAX = 107
# The lock files of the runs of this process that hold or are taking their name.
_held = set()


class PreviousRun:
    """What the run that a new run stopped said: its pid, why it stopped (REPLACED, or
    another reason if it was stopping already) and the names of the tasks it cancelled."""

    __slots__ = ("pid", "reason", "cancelled")

    def __init__(self, pid, reason, cancelled):
        self.pid = pid
        self.reason = reason
        self.cancelled = cancelled

    def __repr__(self):
        return (f"PreviousRun(pid={self.pid}, reason={self.reason!r}, "
                f"cancelled={self.cancelled!r})")


def named_run(name, *, timeout=10.0):
    """A run of this script under name, to use as ``async with tether.named_run(name) as
    run:``: entering stops the run of that name that runs already, if any (within this
    runtime directory: $TETHER_RUNTIME_DIR, else $XDG_RUNTIME_DIR/tether, else
    /tmp/tether-UID), and waits for it to let go of the name, at most timeout seconds
    (TimeoutError otherwise). See NamedRun."""
    return NamedRun(name, timeout=timeout)


def _key(name):
    """The file name for a run name: its safe characters, others as %XX, and a digest
    instead of the tail when it is long (socket paths are short)."""
    text = "".join(c if re.fullmatch(r"[A-Za-z0-9_.@-]", c) else
                   "".join(f"%{b:02X}" for b in c.encode()) for c in name)
    if len(text) > 40:
        text = text[:24] + "-" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return text


class NamedRun:
    """A named run (made by tether.named_run), used as an asynchronous context manager.

    Attributes: ``name``; ``previous``, the PreviousRun this run stopped (None if no run
    of the name was running); once stopped, ``reason`` (what stop() was given, REPLACED
    when a new run stopped it), ``replaced_by`` (the new run's pid, or None) and
    ``cancelled`` (the names of the tasks that were cancelled, sorted; the block's own
    task is not counted).
    """

    def __init__(self, name, *, timeout=10.0):
        if not isinstance(name, str) or not name:
            raise ValueError(f"a run's name is a non-empty str, not {name!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
            raise ValueError(f"timeout is a number of seconds, 0 or more, not {timeout!r}")
        self.name = name
        self.timeout = timeout
        self.previous = None
        self.reason = None
        self.replaced_by = None
        self.cancelled = []
        directory = os.path.join(_cli.runtime_dir(), "runs")
        self._directory = directory
        self._lock_path = os.path.join(directory, _key(name) + ".lock")
        self._control_path = os.path.join(directory, _key(name) + ".ctl")
        if len(os.fsencode(self._control_path)) > _SOCKET_PATH_MAX:
            raise ValueError(f"the run's socket path {self._control_path!r} is longer than "
                             f"{_SOCKET_PATH_MAX} bytes: set TETHER_RUNTIME_DIR to a shorter "
                             "directory")
        self._lock_fd = None
        self._server = None
        self._loop = None
        self._task = None  # the task of the block
        self._cancelled_tasks = []
        self._cancelled_block = False
        self._waiting = []  # transports of new runs waiting for our answer
        self._entered = False
        self._over = False  # the block has ended

    def __repr__(self):
        state = "running" if self.reason is None else f"stopped ({self.reason})"
        return f"<tether.NamedRun {self.name!r} {state}>"

    def __enter__(self):
        raise TypeError("a named run is entered with 'async with tether.named_run(...)'")

    def __exit__(self, *exc_info):  # pragma: no cover - __enter__ refused already
        return None

    # ---- entering: take the name ----------------------------------------------------------

    async def __aenter__(self):
        if self._entered:
            raise RuntimeError(f"the named run {self.name!r} was entered already")
        self._entered = True
        if self._lock_path in _held:
            raise RuntimeError(f"a run named {self.name!r} runs in this process already")
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        _private_directory(self._directory)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            await self._take(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            try:
                os.unlink(self._control_path)  # a run that died left it: we hold the lock
            except FileNotFoundError:
                pass
            self._server = await self._loop.create_unix_server(
                lambda: _Control(self), self._control_path)
        except BaseException:
            os.close(fd)  # lets go of the lock, if taken
            _held.discard(self._lock_path)
            raise
        self._lock_fd = fd
        return self

    async def _take(self, fd):
        """Take the lock, asking each run that holds it in turn to stop."""
        deadline = self._loop.time() + self.timeout
        asked = None  # the pid of the holder we asked
        _held.add(self._lock_path)  # another run of this process would ask us, its own
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            holder = _holder(fd)
            if holder and holder != asked and await self._ask(holder, deadline):
                asked = holder
            if self._loop.time() >= deadline:
                raise TimeoutError(f"the previous run of {self.name!r} (pid {holder or '?'}) "
                                   f"did not stop within {self.timeout:g} s")
            await asyncio.sleep(_POLL)

    async def _ask(self, holder, deadline):
        """Ask the holder to stop and wait for its answer. False if it does not listen
        (yet, or any more): the caller tries again."""
        try:
            reader, writer = await asyncio.open_unix_connection(self._control_path)
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        try:
            writer.write(json.dumps({"replace": os.getpid()}).encode() + b"\n")
            remaining = max(deadline - self._loop.time(), 0)
            try:
                line = await asyncio.wait_for(reader.readline(), remaining)
            except asyncio.TimeoutError:
                raise TimeoutError(f"the previous run of {self.name!r} (pid {holder}) did "
                                   f"not stop within {self.timeout:g} s") from None
            except ConnectionError:
                line = b""
        finally:
            writer.close()
        if line:  # nothing: it ended without answering (its block was over already)
            try:
                answer = json.loads(line)
            except ValueError:
                answer = {}
            self.previous = PreviousRun(answer.get("pid", holder), answer.get("reason"),
                                        list(answer.get("cancelled", [])))
        return True

    # ---- stopping -------------------------------------------------------------------------

    def stop(self, reason="stopped"):
        """Stop the run: cancel every task of its loop, the block's own included; the block
        ends quietly once they have finished. Call it on the loop's thread (a callback, a
        task, a handler of loop.add_signal_handler); a second call, or one after the block,
        changes nothing. RuntimeError before the block is entered."""
        if self._task is None:
            raise RuntimeError(f"the named run {self.name!r} has not been entered")
        if self.reason is not None or self._over:
            return
        self.reason = reason
        for task in asyncio.all_tasks(self._loop):
            if task is not self._task and not task.done():
                task.cancel()
                self._cancelled_tasks.append(task)
        if not self._task.done():
            self._task.cancel()
            self._cancelled_block = True

    async def wait(self):
        """Wait until the run is stopped: stop() cancels this wait with the rest of the
        block, which then ends quietly. For a block that has nothing else to await."""
        if self.reason is None and not self._over:
            await self._loop.create_future()  # never set: only the stop's cancel ends it

    def _replace(self, pid, transport):
        """A new run asks us to stop (from _Control)."""
        self._waiting.append(transport)
        if self.reason is None:
            self.replaced_by = pid
            self.stop(REPLACED)

    # ---- leaving: let go of the name ------------------------------------------------------

    async def __aexit__(self, exc_type, exc, tb):
        absorbed = False
        try:
            if self._cancelled_block:
                if exc_type is None:
                    # The block ended before our cancel reached it: take it here.
                    try:
                        await asyncio.sleep(0)
                    except asyncio.CancelledError:
                        pass
                    absorbed = True
                elif issubclass(exc_type, asyncio.CancelledError):
                    absorbed = True
                uncancel = getattr(self._task, "uncancel", None)  # Python 3.11+
                if absorbed and uncancel is not None and self._task.cancelling():
                    # Another cancel besides ours (asyncio.run ending, say) goes through.
                    absorbed = uncancel() == 0
            if self._cancelled_tasks:
                await asyncio.gather(*self._cancelled_tasks, return_exceptions=True)
                self.cancelled = sorted(t.get_name() for t in self._cancelled_tasks)
        finally:
            self._let_go()
        return absorbed

    def _let_go(self):
        """Answer the runs waiting for us, stop listening, and release the name."""
        self._over = True
        if self._server is not None:
            self._server.close()
        answer = json.dumps({"pid": os.getpid(), "reason": self.reason or "ended",
                             "cancelled": self.cancelled}).encode() + b"\n"
        for transport in self._waiting:
            if not transport.is_closing():
                transport.write(answer)
                transport.close()  # after what it buffered is written
        self._waiting.clear()
        try:
            os.unlink(self._control_path)
        except FileNotFoundError:
            pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            _held.discard(self._lock_path)


def _private_directory(path):
    """Make path (and the runtime directory above it) 0700 if missing; refuse one that
    another user owns or others may enter, since whoever can reach a run's socket can
    stop the run."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.stat(path)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path} must belong to this user with mode 0700 (it has "
                              f"uid {st.st_uid}, mode {st.st_mode & 0o777:o})")


def _holder(fd):
    """The pid the holder wrote in the lock file, or None while it has not yet."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


class _Control(asyncio.Protocol):
    """One connection to a run's socket: a new run's request to stop."""

    def __init__(self, run):
        self.run = run
        self.transport = None
        self.buffer = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.buffer is None:
            return  # answered already
        self.buffer += data
        line, newline, _ = self.buffer.partition(b"\n")
        if not newline:
            if len(self.buffer) > _MAX_REQUEST:
                self.transport.close()
            return
        self.buffer = None
        try:
            request = json.loads(line)
            pid = int(request["replace"])
        except (ValueError, KeyError, TypeError):
            self.transport.close()  # not a run of ours: nothing to answer
            return
        self.run._replace(pid, self.transport)

    def connection_lost(self, exc):
        if self.transport in self.run._waiting:
            self.run._waiting.remove(self.transport)
