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

Running the script again replaces the previous run: a run takes the name NAME@HOST with
tether.named_run, so a new run stops the one before it, which cancels all its tasks and
tells the new one which ("replaced the previous run (pid N), which cancelled 3 tasks
(...)"). Stopped that way, or on SIGINT, or SIGTERM (also what the host's Disconnect
makes a client send itself: `tether -H demo disconnect asyncio_line_server`), a run
cancels all its tasks, tells the host's log how many it cancelled, and exits 0.

--seconds N stops after N seconds (the tests use it), as a signal would.
"""

import argparse
import asyncio
import os
import signal
import sys

import tether

STOP_SIGNALS = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


def say(text):
    print(f"{os.path.basename(sys.argv[0])}[{os.getpid()}]: {text}", flush=True)


# ---- the tasks ------------------------------------------------------------------------------


class Run:
    def __init__(self, host, interval):
        self.host = host  # the tether.Connection
        self.interval = interval
        self.tasks = set()  # the tasks this run started, held while they run
        self.actors = []  # proxies of the actors this run spawned
        self.spawned = 0

    def start(self, coro, name):
        """A task of this run that nobody awaits: it leaves the set when done, so its
        exception, if any, is reported as never retrieved."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # A TCP peer: each line spawns an actor, in a task of its own.
    async def serve_peer(self, reader, writer):
        asyncio.current_task().set_name(
            "tcp peer {}:{}".format(*writer.get_extra_info("peername")[:2]))
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
    # One run per name and host: entering stops the previous run, which cancels its tasks.
    address = args.host or os.environ.get("TETHER_ADDRESS") or "default"
    host = None
    async with tether.named_run(f"{args.name}@{address}") as named:
        if named.previous:
            say(f"replaced the previous run (pid {named.previous.pid}), which cancelled "
                f"{len(named.previous.cancelled)} tasks ({', '.join(named.previous.cancelled)})")
        loop = asyncio.get_running_loop()
        for signo, reason in STOP_SIGNALS.items():
            loop.add_signal_handler(signo, named.stop, reason)
        if args.seconds:
            loop.call_later(args.seconds, named.stop, f"{args.seconds:g} seconds are up")
        host = await tether.connect_async(name=args.name, address=args.host or None,
                                          serve="loop")
        run = Run(host, args.interval)
        server = await asyncio.start_server(run.serve_peer, "127.0.0.1", args.port)
        port = server.sockets[0].getsockname()[1]
        say(f"listening on 127.0.0.1:{port}")
        run.start(server.serve_forever(), "tcp server")
        run.start(run.wander(), "wander timer")
        run.start(run.report(), "report timer")
        await host.aio.log(f"pid {os.getpid()} started: tcp 127.0.0.1:{port}")
        await named.wait()  # until stopped: every task of the loop is cancelled then
    text = (f"pid {os.getpid()} stopped ({named.reason}): cancelled {len(named.cancelled)} "
            f"tasks ({', '.join(named.cancelled)})")
    say(text)
    if host is not None:
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
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
