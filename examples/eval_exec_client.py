"""eval_exec_client: a script that lets its host run Python code in it.

    PYTHONPATH=build/python python3 examples/eval_exec_client.py [ADDRESS]

Connects to the host ADDRESS (default: the host "eval_exec", examples/eval_exec.c) as
the client "evaluator", exposes the services exec(code) and eval(expr) of
tether.services.EvalExec, tells the host it is ready (if the host has a ready service),
and serves until the host disconnects it (or Ctrl-C). The host's code runs in one
namespace, so what exec binds, a later eval sees, also after a reset (the client
reconnects and keeps its state).

From the command line, against a host with the tether.* services (tools/tether-demo,
which `make demo` runs with this client connected as "evaluator" until it stops):

    tether exec evaluator "x = 5"
    tether eval evaluator x
"""

import signal
import sys
import threading

import tether


def say(line):
    """Print line with one write: the host it serves may print to the same terminal, and
    print() writes the newline apart (unbuffered), so their lines could run together."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main():
    address = sys.argv[1] if len(sys.argv) > 1 else "eval_exec"
    # A host that disconnects this client makes the library send this process SIGTERM.
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: done.set())

    # EvalExec hands the host the power of this process: only for a host you trust. It is
    # registered as the connection is made, so the host can call it as soon as it sees us.
    evaluator = tether.services.EvalExec()
    with tether.connect(name="evaluator", address=address, services=[evaluator]) as host:
        try:
            host.root.ready()
        except tether.NoSuchServiceError:
            pass  # a host that does not wait for it
        say(f"evaluator: serving exec and eval for the host '{host.host_name}'")
        try:
            done.wait()
        except KeyboardInterrupt:
            return 130
    say("evaluator: disconnected by the host")
    return 0


if __name__ == "__main__":
    sys.exit(main())
