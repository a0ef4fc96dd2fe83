#!/usr/bin/env python3
"""actor_coroutines: a coroutine per actor of the host's scene, living as long as its actor.

    python3 examples/actor_coroutines.py [HOST] [--every N] [--report N] [--seconds N]
                                         [--name NAME]

HOST is a host name ("demo" for tether-demo, the default) or an address ("unix:/path",
"tcp:127.0.0.1:PORT"). It expects tether-demo's subscribe_actor_events service.

An engine's asyncio integration lets a script attach a coroutine to each actor and wake it
on the actor's ticks. Here the script is a process of its own, under asyncio.run() with
serve="loop": it offers the service on_actor_event(event, info), registered before it
connects, and calls subscribe_actor_events("on_actor_event", every=N). The host then tells
it, through that service, of each actor in the scene, of each one spawned later, of each
one's tick every N frames (6 by default: ten a second at 60 frames a second) and of each
one destroyed (docs/ref-asyncio-loop.md, "A coroutine per actor").

For each actor it starts a task, follow(), which awaits that actor's events from a queue
of its own: it logs that it starts, reports the actor's position every --report ticks
(10), and ends, saying how many ticks it saw, when the actor is destroyed. Its start and
end also go to the host's log (tether.LogHandler). Spawn and delete actors while it
runs, with `build/tether call spawn_actor Dot 1 1` and `build/tether call delete_actor Dot`
or in `build/tether repl`, and watch the coroutines come and go.

Ctrl-C (or SIGTERM, the host's Disconnect, or --seconds N) unsubscribes, cancels the
coroutines still running and exits 0. The subscription outlives a reset
(`build/tether reset actor_coroutines`): the client reconnects at once, and the host tells
it which actors were destroyed and spawned meanwhile, so every coroutine still ends with
its actor. Exit status 0, or 2 when there is no host or it refuses the subscription
(a bad --every, or a host without subscribe_actor_events).
"""

import argparse
import asyncio
import logging
import os
import signal
import sys

import tether

log = logging.getLogger("actor_coroutines")


def say(text):
    print(f"actor_coroutines: {text}", flush=True)


def where(info):
    """The actor's position as "(x, y)", to a tenth."""
    return f"({round(info['x'], 1) + 0.0}, {round(info['y'], 1) + 0.0})"


async def follow(info, events, report):
    """The coroutine of one actor: await its events until it is destroyed. Returns the
    number of ticks it saw."""
    name, ticks = info["name"], 0
    log.info("following '%s' (id %d) from %s%s", name, info["id"], where(info),
             ", in the scene already" if info.get("existing") else "")
    try:
        while True:
            event, info = await events.get()
            if info["name"] != name:
                say(f"'{name}' is now called '{info['name']}'")
                name = info["name"]
            if event == "destroyed":
                log.info("'%s' destroyed at frame %d after %d ticks: its coroutine ends",
                         name, info["frame"], ticks)
                return ticks
            ticks += 1
            if ticks % report == 0:
                say(f"'{name}' tick {ticks} (frame {info['frame']}) at {where(info)}")
    except asyncio.CancelledError:
        say(f"stopped following '{name}' after {ticks} ticks")
        raise


class Scene:
    """What this script knows of the host's scene: a queue and a task per actor, by id."""

    def __init__(self, report):
        self.report = report
        self.queues = {}  # actor id -> the queue its coroutine awaits
        self.tasks = {}   # actor id -> its coroutine's task

    def on_actor_event(self, event, info):
        """The service the host notifies. With serve="loop" it runs on this script's
        loop, so it may start tasks and fill queues directly; it must not block."""
        if event == "subscribed":
            return None  # the host's first call, before the events
        actor_id = info["id"]
        if event == "spawned":
            if actor_id not in self.queues:  # (a second subscription repeats them)
                self.queues[actor_id] = asyncio.Queue()
                task = asyncio.create_task(follow(info, self.queues[actor_id], self.report),
                                           name=f"follow {info['name']!r}")
                self.tasks[actor_id] = task
                task.add_done_callback(lambda t, i=actor_id: self.tasks.pop(i, None))
        elif actor_id in self.queues:
            self.queues[actor_id].put_nowait((event, info))
            if event == "destroyed":
                del self.queues[actor_id]
        return None

    def following(self):
        return sorted(t.get_name()[len("follow "):] for t in self.tasks.values())


async def subscribe(host, every):
    sub = await host.aio.subscribe_actor_events("on_actor_event", every=every)
    rate = f"a tick every {sub['every']} frames" if sub["every"] else "no ticks"
    say(f"subscribed to {host.host_name!r}: {sub['actors']} actors in the scene, {rate}")


async def main(args):
    scene = Scene(args.report)
    try:
        host = await tether.connect_async(name=args.name, address=args.host, serve="loop",
                                          services={"on_actor_event": scene.on_actor_event})
    except (OSError, tether.TetherError) as e:  # no host there, refused, timed out
        say(f"cannot connect to {args.host!r}: {e}")
        return 2
    handler = tether.LogHandler(host)
    log.addHandler(handler)
    log.addHandler(logging.StreamHandler(sys.stdout))
    log.setLevel(logging.INFO)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signo in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signo, stop.set)
    if args.seconds:
        loop.call_later(args.seconds, stop.set)

    try:
        await subscribe(host, args.every)
    except (ValueError, TypeError, tether.NoSuchServiceError) as e:
        say(f"the host refused the subscription: {type(e).__name__}: {e}")
        host.close()
        return 2
    await stop.wait()

    try:
        await host.aio.unsubscribe_actor_events()
    except tether.TetherError as e:  # the host went away: nothing to unsubscribe from
        say(f"could not unsubscribe: {e}")
    tasks = list(scene.tasks.values())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    log.info("done: cancelled %d coroutines", len(tasks))
    log.removeHandler(handler)
    handler.close()
    host.close()
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="A coroutine per actor of tether-demo's scene, woken by its ticks.")
    parser.add_argument("host", nargs="?", default="demo", help='host name or address ("demo")')
    parser.add_argument("--every", type=int, default=6,
                        help="a tick every N frames; 0: none (6: ten a second at 60 fps)")
    parser.add_argument("--report", type=int, default=10,
                        help="report an actor's position every N of its ticks (10)")
    parser.add_argument("--seconds", type=float, default=0, help="stop after N seconds")
    parser.add_argument("--name", default=os.path.splitext(os.path.basename(__file__))[0],
                        help="this client's name (actor_coroutines)")
    args = parser.parse_args(argv)
    if args.report < 1:
        parser.error("--report needs a number of ticks of 1 or more")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
