#!/usr/bin/env python3
"""asyncio_line_server: asyncio tasks scripting a host, beside a TCP server of their own.

    python3 examples/asyncio_line_server.py [HOST] [--port PORT] [--seconds N]
                                            [--name NAME] [--interval SECONDS]

HOST is a host name ("demo" for tether-demo, the default), an address ("unix:/path",
"tcp:127.0.0.1:PORT"), or "" for $TETHER_ADDRESS or the host "default". It expects
tether-demo's services (spawn_actor, move_actor, frame_stats, log).

One asyncio loop runs, concurrently and never blocking the host's frames:
- a TCP server on 127.0.0.1:PORT (0, the default: any free port; the line "listening on
  127.0.0.1:PORT" says which): every line a peer sends spawns an actor of that name in
  the host, and the peer gets "spawned NAME at (X, Y)" back. Try it with
  `nc 127.0.0.1 PORT` and type names;
- a timer that moves this run's actors a step every INTERVAL/2 seconds;
- a timer that prints the host's frame rate every INTERVAL seconds (1).

Each line is handled by a task of its own that nobody awaits, so a slow host never holds
up reading. When such a task fails (send a name twice: the host answers ValueError), the
exception is not lost: asyncio reports "Task exception was never retrieved" to the loop's
exception handler, and tether forwards the loop's errors to the host's log, where it
appears with its traceback.

Running the script again replaces the previous run: the new one finds the previous one
through a lock file beside the host's socket (RUNTIME_DIR/NAME@HOST.pid, held with
flock while a run is alive), sends it SIGUSR1 and waits for it to go. On that signal
(and on SIGINT, or SIGTERM, which is also what the host's Disconnect makes a client
send itself: `tether -H demo disconnect asyncio_line_server`) a run cancels all its
tasks, tells the host's log how many it cancelled, and exits 0.

--seconds N stops after N seconds (the tests use it), as a signal would.
"""

import argparse
import asyncio
import errno
import fcntl
import os
import re
import signal
import sys
import time

import tether

STOP_SIGNALS = {signal.SIGUSR1: "a new run replaces this one", signal.SIGINT: "SIGINT",
                signal.SIGTERM: "SIGTERM"}


def say(text):
    print(f"{os.path.basename(sys.argv[0])}[{os.getpid()}]: {text}", flush=True)


# ---- one run at a time --------------------------------------------------------------------


def runtime_dir():
    """Where hosts put their sockets, as libtether chooses it."""
    if os.environ.get("TETHER_RUNTIME_DIR"):
        return os.environ["TETHER_RUNTIME_DIR"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "tether")
    return f"/tmp/tether-{os.getuid()}"


def take_over(name, host, wait=10.0):
    """Hold the lock of this script's runs against host, stopping the run that holds it.

    Returns the open lock file (keep it open: the lock goes with the process)."""
    directory = runtime_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = re.sub(r"[^A-Za-z0-9_.-]", "_", host or os.environ.get("TETHER_ADDRESS") or "default")
    path = os.path.join(directory, f"{name}@{key}.pid")
    f = open(path, "a+")
    deadline = time.monotonic() + wait
    signalled = None
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if signalled is None:
            f.seek(0)
            text = f.read().strip()
            signalled = int(text) if text.isdigit() else 0
            if signalled:
                say(f"stopping the previous run (pid {signalled})")
                try:
                    os.kill(signalled, signal.SIGUSR1)
                except ProcessLookupError:
                    pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the previous run (pid {signalled}) holds {path} still")
        time.sleep(0.05)
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


# ---- the tasks ------------------------------------------------------------------------------


class Run:
    def __init__(self, host, interval):
        self.host = host  # the tether.Connection
        self.interval = interval
        self.tasks = set()  # every task of this run, so that stop() can cancel them
        self.actors = []  # proxies of the actors this run spawned
        self.spawned = 0
        self.stopping = asyncio.Event()
        self.reason = None

    def start(self, coro, name):
        """A task of this run that nobody awaits: it leaves the set when done, so its
        exception, if any, is reported as never retrieved."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def stop(self, reason):
        if self.reason is None:
            self.reason = reason
        self.stopping.set()

    # A TCP peer: each line spawns an actor, in a task of its own.
    async def serve_peer(self, reader, writer):
        task = asyncio.current_task()  # started by the server: one of ours too
        task.set_name("tcp peer {}:{}".format(*writer.get_extra_info("peername")[:2]))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        try:
            while line := await reader.readline():
                name = line.decode("utf-8", "replace").strip()
                if name:
                    self.start(self.spawn(name, writer), f"spawn {name!r}")
        finally:
            writer.close()

    async def spawn(self, name, writer):
        x, y = (self.spawned % 10) * 2.0, (self.spawned // 10) * 2.0
        self.spawned += 1
        # ValueError if the name is taken: nobody awaits this task, so the host's log
        # gets the exception.
        actor = await self.host.aio.spawn_actor(name, x, y, label="from TCP")
        self.actors.append(actor)
        if not writer.is_closing():  # the peer may have gone meanwhile
            writer.write(f"spawned {name} at ({x}, {y})\n".encode())
            await writer.drain()

    async def wander(self):
        """Timer: move this run's actors a step, back and forth."""
        step = 0
        while True:
            await asyncio.sleep(self.interval / 2)
            step += 1
            dx = 0.5 if step % 4 < 2 else -0.5
            for actor in list(self.actors):
                try:
                    await self.host.aio.move_actor(actor, dx, 0.0)
                except ReferenceError:  # deleted by someone else meanwhile
                    self.actors.remove(actor)

    async def report(self):
        """Timer: the host's frame rate."""
        while True:
            await asyncio.sleep(self.interval)
            stats = await self.host.aio.frame_stats()
            say(f"host at {stats['fps']:.1f} fps, frame max {stats['frame_ms_max']:.1f} ms, "
                f"{len(self.actors)} actors of ours, {len(self.tasks)} tasks")


async def main_async(args):
    host = await tether.connect_async(name=args.name, address=args.host or None,
                                      serve="loop")
    run = Run(host, args.interval)
    loop = asyncio.get_running_loop()
    for signo, reason in STOP_SIGNALS.items():
        loop.add_signal_handler(signo, run.stop, reason)
    if args.seconds:
        loop.call_later(args.seconds, run.stop, f"{args.seconds:g} seconds are up")

    server = await asyncio.start_server(run.serve_peer, "127.0.0.1", args.port)
    port = server.sockets[0].getsockname()[1]
    say(f"listening on 127.0.0.1:{port}")
    run.start(server.serve_forever(), "tcp server")
    run.start(run.wander(), "wander timer")
    run.start(run.report(), "report timer")
    await host.aio.log(f"pid {os.getpid()} started: tcp 127.0.0.1:{port}")

    await run.stopping.wait()
    tasks = sorted(run.tasks, key=lambda t: t.get_name())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    text = (f"pid {os.getpid()} stopped ({run.reason}): cancelled {len(tasks)} tasks "
            f"({', '.join(t.get_name() for t in tasks)})")
    say(text)
    try:
        await host.aio.log(text)
    except tether.TetherError:  # the host went first
        pass
    host.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description="asyncio tasks and a TCP server scripting a host.")
    parser.add_argument("host", nargs="?", default="demo",
                        help='host name or address (default "demo"; "" for $TETHER_ADDRESS)')
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free one)")
    parser.add_argument("--seconds", type=float, help="stop after this long")
    parser.add_argument("--name", default="asyncio_line_server", help="this client's name")
    parser.add_argument("--interval", type=float, default=1.0, help="timer period, seconds")
    args = parser.parse_args(argv)
    lock = take_over(args.name, args.host)
    try:
        asyncio.run(main_async(args))
    finally:
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
