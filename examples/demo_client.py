#!/usr/bin/env python3
"""demo_client: the script `make demo` runs against tether-demo, where you can watch it.

    python3 examples/demo_client.py [HOST] [--seconds N] [--name NAME] [--stay]

HOST is a host name (default "demo") or an address ("unix:/path", "tcp:127.0.0.1:PORT").
For N seconds (default 8) it works the host's scene the ways a script can: it spawns
three actors and walks them in circles through their proxies, renames one (at 40% of
the time), deletes another (at 70%), asks for the frame timing through a future, sends
notifications and log records, and shows what a remote error looks like. It also offers
a service, report(), and has the host call it (tether-demo's tether.call_client calls a
client on anyone's behalf): calls go both ways. While it runs, so can you:

    build/tether -H demo call tether.call_client demo_client report

The actors it leaves behind stay in the scene for you to find (`root.list_actors()` in a
REPL). Ctrl-C stops it early. With --stay (what `make demo` passes) it stays connected
once its scene is done, serving report(), until Ctrl-C or until the host disconnects it
(`build/tether disconnect demo_client`); `build/tether reset demo_client` makes it
reconnect at once.
"""

import argparse
import logging
import math
import signal
import sys
import threading
import time

import tether

NAMES = ["Ada", "Grace", "Linus"]
STEP_SECONDS = 0.25


def say(text):
    print(text, flush=True)


def where(actor):
    """The actor's position as "(x, y)", to a tenth."""
    x, y = (round(v, 1) + 0.0 for v in actor.position())  # + 0.0: no "-0.0"
    return f"({x}, {y})"


def spawn(host, name, x, y, label):
    """spawn_actor, with a suffix when the name is taken (a previous run's actor)."""
    for n in range(1, 100):
        candidate = name if n == 1 else f"{name}-{n}"
        try:
            return host.root.spawn_actor(candidate, x, y, label=label)
        except ValueError:  # the host's ValueError: the name is taken
            continue
    raise RuntimeError(f"no free name like {name!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Work tether-demo's scene for a while.")
    parser.add_argument("host", nargs="?", default="demo", help='host name or address ("demo")')
    parser.add_argument("--seconds", type=float, default=8.0, help="how long (8)")
    parser.add_argument("--name", default="demo_client", help="this client's name")
    parser.add_argument("--stay", action="store_true",
                        help="stay connected when done, until Ctrl-C or the host's Disconnect")
    args = parser.parse_args(argv)

    state = {"step": 0, "actors": []}

    # A service the host may call; it runs on one of tether's worker threads. Registered
    # as the connection is made, so it is there as soon as the host sees this client.
    def report():
        say("the host calls report()")
        return {"step": state["step"], "actors": [a.name for a in list(state["actors"])]}

    host = tether.connect(name=args.name, address=args.host, services=[report])
    log = logging.getLogger("demo_client")
    log.setLevel(logging.INFO)
    log.addHandler(tether.LogHandler(host))  # records go to the host's log
    say(f"connected to {host.host_name!r} as {host.name!r}")

    # The host's Disconnect makes the library send this process SIGTERM: leave cleanly.
    signal.signal(signal.SIGTERM, stopped_by_sigterm)
    stopped = False
    try:
        work(host, log, args, state)
    except (KeyboardInterrupt, Stopped) as e:
        stopped = True
        say(str(e) or "interrupted")
    names = [a.name for a in state["actors"]]
    log.info("done after %d steps; leaving %s in the scene", state["step"], ", ".join(names))
    say(f"done after {state['step']} steps; {', '.join(names)} stay in the scene")
    if args.stay and not stopped:
        say(f"staying connected as {host.name!r} until Ctrl-C "
            f"(or `tether disconnect {host.name}`)")
        try:
            threading.Event().wait()
        except (KeyboardInterrupt, Stopped) as e:
            say(str(e) or "interrupted")
    host.close()
    return 0


class Stopped(Exception):
    """SIGTERM arrived: the host's Disconnect, or someone's kill."""


def stopped_by_sigterm(signum, frame):
    raise Stopped("stopped by SIGTERM (the host's Disconnect?)")


def work(host, log, args, state):
    actors = state["actors"]
    # Three actors, by reference: the proxies' methods run on the host's main thread.
    for i, name in enumerate(NAMES):
        actors.append(spawn(host, name, 3.0 * i, 0.0, "walker"))
    say("spawned " + ", ".join(repr(a) for a in actors))
    log.info("spawned %d actors", len(actors))

    # A remote error arrives as the Python exception of the same name.
    try:
        host.root.get_actor("Nobody")
    except KeyError as e:
        say(f"get_actor('Nobody') raised KeyError: {e}")

    start = time.monotonic()
    renamed = deleted = called_back = False
    while (elapsed := time.monotonic() - start) < args.seconds:
        state["step"] = step = state["step"] + 1
        # Walk each actor a step along a circle of its own.
        for i, actor in enumerate(actors):
            angle = (step + 4 * i) * math.pi / 8
            actor.move(round(math.cos(angle), 3), round(math.sin(angle), 3))
        if step % 8 == 0:
            # A future: the call goes on while this script does something else.
            stats = host.async_.frame_stats()
            positions = ", ".join(f"{a.name} at {where(a)}" for a in actors)
            say(f"step {step}: {positions}")
            s = stats.result(timeout=5)
            say(f"host at {s['fps']:.1f} fps, {s['late_frames']} late frames, "
                f"{s['calls']} calls served")
        if not renamed and elapsed >= 0.4 * args.seconds:
            renamed = True
            old = actors[0].name
            try:
                actors[0].rename(old + " the Great")
                actors[0].set_label("renamed")
                say(f"renamed {old!r} to {actors[0].name!r}")
                host.notify.log(f"{args.name} renamed {old}")  # a notification: no reply
            except ValueError as e:  # the name is taken
                say(f"could not rename {old!r}: {e}")
        if not called_back and elapsed >= 0.55 * args.seconds:
            # Host to script: the host calls our report() and hands us its result.
            called_back = True
            got = host.root["tether.call_client"](host.name, "report", [])
            say(f"the host called report() back: {got}")
        if not deleted and elapsed >= 0.7 * args.seconds:
            deleted = True
            gone = actors.pop()
            say(f"deleting {gone!r}")
            gone.delete()
        time.sleep(STEP_SECONDS)


if __name__ == "__main__":
    sys.exit(main())
