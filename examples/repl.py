"""repl: an interactive console whose lines run against a host.

    build/tether-demo                                          # shell 1
    PYTHONPATH=build/python python3 examples/repl.py demo      # shell 2
    >>> bob = spawn_actor("Bob", 1, 2)
    >>> bob.move(1, 1)

Each of the host's services is a Python callable in the console's namespace, and after
each line the console prints the values the host publishes as its globals (the demo's
actors, frame count and rate), which are names in the namespace too. Line editing and
history come from readline. This is the whole idea in a page; `tether repl` (docs/cli.md)
is the same with history kept across sessions, completion and more.
"""

import code
import sys

import tether


class HostConsole(code.InteractiveConsole):
    def __init__(self, host):
        self.host = host
        namespace = {"host": host, "tether": tether}
        for name in host.root["tether.services"]():  # the names the host registered
            if name.isidentifier():
                namespace[name] = host.root[name]  # spawn_actor(...) calls the host
        super().__init__(namespace)

    def runcode(self, compiled):
        super().runcode(compiled)  # the line runs here, printing its errors itself
        values = self.host.root.globals()  # {"actors": [...], "frame": n, "fps": x}
        self.locals.update(values)
        print("  ".join(f"{k}={v!r}" for k, v in values.items()))


def main():
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    address = sys.argv[1] if len(sys.argv) > 1 else None  # None: $TETHER_ADDRESS, "default"
    with tether.connect(name="repl", address=address) as host:
        HostConsole(host).interact(
            banner=f"Connected to '{host.host_name}': its services are callables here. "
            "Ctrl-D quits.",
            exitmsg="",
        )


if __name__ == "__main__":
    main()
