"""The tether command line: ``tether COMMAND`` or ``python -m tether COMMAND``.

    tether hosts                     the hosts of this user, live or stale
    tether ls [HOST]                 a host's clients (the troubleshooting view)
    tether reset NAME                the client NAME disconnects and reconnects
    tether disconnect NAME           the client NAME disconnects and shuts down
    tether call SERVICE [ARG...]     call a host service, print its result
    tether exec NAME CODE            run Python statements in the client NAME
    tether eval NAME EXPR            evaluate a Python expression there, print it
    tether repl                      an interactive console on the host's services

The host-side operations (ls, reset, disconnect, exec, eval) use services the host
registers for it: ``tether.clients()``, ``tether.reset_client(name)``,
``tether.disconnect_client(name)`` and ``tether.call_client(name, method, args)``;
the REPL also uses ``tether.services()`` and ``tether.globals()`` (or ``globals()``).
tools/tether-demo.c shows them (docs/cli.md).
"""

import argparse
import ast
import errno
import os
import platform
import pprint
import shutil
import signal
import socket
import stat
import sys
import time

import tether

__all__ = ["main", "version_text"]

PROG = "tether"

# Exit statuses (documented in the --help epilog and docs/cli.md).
EXIT_OK = 0
EXIT_FAILED = 1  # the call raised an error, timed out or lost its connection
EXIT_NO_HOST = 2  # no host at the address
EXIT_USAGE = 2  # a command-line usage error (as argparse exits)
EXIT_NO_CLIENT = 3  # no client of that name on the host
EXIT_NO_SERVICE = 4  # the host (or the client) does not offer the service
EXIT_REFUSED = 5  # the host refused the connection, or did not complete the handshake

# The name this command's connection has on the host (tether ls leaves it out).
CLIENT_NAME = "tether-cli"
REPL_CLIENT_NAME = "tether-repl"

EPILOG = """\
The host: -H NAME|ADDRESS (a host name such as "demo", "unix:/path/to/NAME.sock" or
"tcp:127.0.0.1:PORT"); else $TETHER_ADDRESS; else the host named "default" if it runs;
else the only host running in the runtime directory ($TETHER_RUNTIME_DIR, else
$XDG_RUNTIME_DIR/tether, else /tmp/tether-UID). `tether hosts` lists them.

ls, reset, disconnect, exec and eval need the host's tether.* services (tether.clients,
tether.reset_client, tether.disconnect_client, tether.call_client); exec and eval need
a client that registered tether.services.EvalExec. See docs/cli.md.

Exit status:
  0  success
  1  the service (or the client's code) raised an error, which is printed; or the call
     timed out, or the connection was lost
  2  no host at the address (is it running?), or a command-line usage error
  3  no client of that name on the host
  4  no such service on the host (or, for exec and eval, on the client)
  5  the host refused the connection (another user, wrong token, too many clients) or
     did not complete the handshake in time
"""


class CliError(Exception):
    """A failure to report as "tether: MESSAGE" with an exit status."""

    def __init__(self, message, status=EXIT_FAILED, detail=None):
        super().__init__(message)
        self.status = status
        self.detail = detail  # printed after the message with --verbose (a traceback)


def version_text():
    return (
        f"tether {tether.__version__}\n"
        f"core {tether.core_version} (libtether)\n"
        f"protocol {tether.protocol_version}\n"
        f"python {platform.python_version()} ({sys.executable})"
    )


# ---- finding hosts ---------------------------------------------------------------------


def runtime_dir():
    """Where hosts put their sockets and token files, by the library's rule."""
    env = os.environ.get("TETHER_RUNTIME_DIR")
    if env:
        return env
    env = os.environ.get("XDG_RUNTIME_DIR")
    if env:
        return os.path.join(env, "tether")
    return f"/tmp/tether-{os.geteuid()}"


def unix_address(name):
    return f"unix:{os.path.join(runtime_dir(), name + '.sock')}"


def display_address(address):
    """The address as "unix:/path" or "tcp:HOST:PORT" (a bare name is resolved)."""
    if address.startswith(("unix:", "tcp:")):
        return address
    return unix_address(address)


def probe_unix(path, timeout=1.0):
    """("live" | "stale" | other state text) of the Unix socket at path. Connects and
    closes at once, before any handshake: the host logs nothing for that."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return "not a socket"
    except FileNotFoundError:
        return "gone"
    except OSError as e:
        return f"unreachable ({e.strerror})"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        return "live"
    except ConnectionRefusedError:
        return "stale"
    except FileNotFoundError:
        return "gone"
    except socket.timeout:
        return "busy (no answer)"
    except OSError as e:
        return f"unreachable ({e.strerror})"
    finally:
        s.close()


def probe_tcp(port, timeout=1.0):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return "live"
    except ConnectionRefusedError:
        return "stale"
    except socket.timeout:
        return "busy (no answer)"
    except OSError as e:
        return f"unreachable ({e.strerror})"


def scan_hosts(with_tcp_names=True):
    """The hosts of the runtime directory: a list of dicts with name, address, kind
    ("unix" or "tcp") and state ("live", "stale", ...), Unix sockets first."""
    rt = runtime_dir()
    try:
        files = sorted(os.listdir(rt))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CliError(f"cannot read the runtime directory {rt}: {e.strerror}", EXIT_NO_HOST)
    hosts = []
    for f in files:
        if f.endswith(".sock") and len(f) > 5:
            path = os.path.join(rt, f)
            state = probe_unix(path)
            hosts.append({"name": f[:-5], "address": f"unix:{path}", "kind": "unix",
                          "state": state})
    for f in files:
        if f.startswith("tcp-") and f.endswith(".token") and f[4:-6].isdigit():
            port = int(f[4:-6])
            address = f"tcp:127.0.0.1:{port}"
            state = probe_tcp(port)
            name = None
            if state == "live" and with_tcp_names:
                # Only the handshake says which host listens there (its token file is
                # ours to read): a connection that the host sees come and go.
                try:
                    conn = tether.connect(
                        name=CLIENT_NAME, address=address, connect_timeout=1.0, reconnect=False
                    )
                    name = conn.host_name
                    conn.close()
                except Exception:
                    name = None
            hosts.append({"name": name, "address": address, "kind": "tcp", "state": state})
    return hosts


def choose_host(explicit):
    """The address to connect to (see EPILOG): explicit, $TETHER_ADDRESS, "default" if it
    runs, or the only host running."""
    if explicit:
        return explicit
    env = os.environ.get("TETHER_ADDRESS")
    if env:
        return env
    default = os.path.join(runtime_dir(), "default.sock")
    if probe_unix(default) == "live":
        return "default"
    live = [
        h["name"]
        for h in scan_hosts(with_tcp_names=False)
        if h["kind"] == "unix" and h["state"] == "live"
    ]
    if len(live) == 1:
        return live[0]
    if not live:
        raise CliError(
            f"no host at {unix_address('default')} (is it running?), and no other host runs "
            f"in {runtime_dir()}: start one, or name it with -H NAME|ADDRESS",
            EXIT_NO_HOST,
        )
    raise CliError(
        f"several hosts are running ({', '.join(live)}): choose one with -H NAME",
        EXIT_NO_HOST,
    )


def connect(args, name=CLIENT_NAME, reconnect=False):
    """A tether.Connection to the host the arguments name; CliError if there is none."""
    address = choose_host(getattr(args, "host", None))
    shown = display_address(address)
    try:
        conn = tether.connect(
            name=name,
            address=address,
            timeout=args.timeout,
            connect_timeout=args.connect_timeout,
            reconnect=reconnect,
        )
    except ConnectionRefusedError as e:
        if getattr(e, "errno", None) == errno.EUSERS:
            raise CliError(
                f"the host at {shown} refused: it has its maximum of clients", EXIT_REFUSED
            )
        raise CliError(f"no host at {shown} (is it running?)", EXIT_NO_HOST)
    except FileNotFoundError:
        raise CliError(f"no host at {shown} (is it running?)", EXIT_NO_HOST)
    except PermissionError as e:
        raise CliError(
            f"the host at {shown} refused the connection: {e.strerror or e}", EXIT_REFUSED
        )
    except TimeoutError:
        raise CliError(f"the host at {shown} did not complete the handshake in time", EXIT_REFUSED)
    except tether.TetherError as e:
        if getattr(e, "code", None) == -errno.EINVAL:
            raise CliError(
                f"bad host address {address!r}: a name, unix:PATH or tcp:HOST:PORT", EXIT_USAGE
            )
        raise CliError(f"cannot connect to {shown}: {e}", EXIT_REFUSED)
    except OSError as e:
        raise CliError(f"cannot connect to {shown}: {e.strerror or e}", EXIT_REFUSED)
    args.address = shown  # for messages: the address as resolved
    return conn


def host_label(conn):
    return f"host '{conn.host_name}'"


# ---- calling ----------------------------------------------------------------------------


def describe_error(e):
    """(text, detail) of an exception a call raised: "TYPE: message" as Python prints it,
    and the remote traceback when there is one."""
    remote_type = getattr(e, "remote_type", None)
    if isinstance(e, tether.RemoteError):
        return str(e), getattr(e, "remote_traceback", None)
    if remote_type:
        message = str(e)
        return (f"{remote_type}: {message}" if message else remote_type), getattr(
            e, "remote_traceback", None
        )
    return f"{type(e).__name__}: {e}", None


def call_service(conn, service, args=(), kwargs=None, what=None):
    """Call a host service; map tether's failures to CliError. Remote exceptions pass
    through for the caller to sort (they are the service's answer)."""
    try:
        return conn.root[service](*args, **(kwargs or {}))
    except tether.NoSuchServiceError as e:
        if "on client" in str(e):
            raise  # tether.call_client's client lacks the method: the caller says so
        if service.startswith("tether."):
            raise CliError(
                f"{host_label(conn)} has no service {service}: {what or 'this command'} needs "
                "the host's tether.* services (docs/cli.md)",
                EXIT_NO_SERVICE,
            )
        raise CliError(f"{host_label(conn)} has no service '{service}'", EXIT_NO_SERVICE)
    except TimeoutError:
        raise CliError(f"{service}: no answer from {host_label(conn)} in time (--timeout)")
    except (ConnectionResetError, tether.NotConnectedError, tether.CancelledError) as e:
        raise CliError(f"{service}: lost the connection to {host_label(conn)} ({e})")


def is_no_client(e):
    """The LookupError a tether.* service replies for an unknown client (not a KeyError
    the client's own code raised)."""
    return type(e) is LookupError and str(e).startswith(("no client named", "client '"))


def parse_value(text):
    """A command-line argument as a Python literal (42, 1.5, "s", [1, 2], None), else the
    text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_call_args(items):
    """Positional and keyword arguments from ARG... (KEY=VALUE is a keyword argument)."""
    args, kwargs = [], {}
    for item in items:
        key, eq, value = item.partition("=")
        if eq and key.isidentifier():
            kwargs[key] = parse_value(value)
        elif kwargs:
            raise CliError(f"positional argument {item!r} after keyword arguments", EXIT_USAGE)
        else:
            args.append(parse_value(item))
    return args, kwargs


def format_result(value):
    width = shutil.get_terminal_size((100, 24)).columns
    return pprint.pformat(value, width=max(width, 40), sort_dicts=False)


# ---- the commands -------------------------------------------------------------------------


def cmd_hosts(args, out):
    hosts = scan_hosts()
    if args.json:
        import json

        print(json.dumps(hosts, indent=2), file=out)
    elif hosts:
        rows = [("HOST", "ADDRESS", "STATE")]
        for h in hosts:
            state = h["state"]
            if state == "stale":
                state = "stale (nothing listens: a host that ended without removing it)"
            rows.append((h["name"] or "?", h["address"], state))
        print_table(rows, out)
    if not any(h["state"] == "live" for h in hosts):
        raise CliError(f"no host running in {runtime_dir()}", EXIT_NO_HOST)
    return EXIT_OK


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def human_duration(seconds):
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def print_table(rows, out):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [str(c).ljust(w) for c, w in zip(r, widths)]
        print("  ".join(cells).rstrip(), file=out)


def cmd_ls(args, out):
    if args.host_arg:
        args.host = args.host_arg
    with connect(args) as conn:
        clients = call_service(conn, "tether.clients", what="tether ls")
        me = os.getpid()
        if not args.all:
            clients = [
                c for c in clients if not (c.get("pid") == me and c.get("name") == conn.name)
            ]
        if args.json:
            import json

            print(json.dumps(clients, indent=2), file=out)
            return EXIT_OK
        count = len(clients)
        print(
            f"{host_label(conn)} at {args.address}: {count} client{'' if count == 1 else 's'}",
            file=out,
        )
        if not clients:
            return EXIT_OK
        now = time.time()
        rows = [
            ("NAME", "PID", "LANGUAGE", "CONNECTED", "IN FLIGHT", "CALLS IN/OUT", "BYTES IN/OUT",
             "SERVICES")
        ]
        for c in clients:
            since = c.get("connected_since") or 0
            connected = "?"
            if since:
                clock = time.strftime("%H:%M:%S", time.localtime(since))
                connected = f"{clock} ({human_duration(now - since)} ago)"
            language = " ".join(x for x in (c.get("language"), c.get("language_version")) if x)
            rows.append(
                (
                    c.get("name", "?"),
                    c.get("pid", "?"),
                    language or "?",
                    connected,
                    c.get("calls_in_flight", 0),
                    f"{c.get('calls_in', 0)} / {c.get('calls_out', 0)}",
                    f"{human_bytes(c.get('bytes_in', 0))} / {human_bytes(c.get('bytes_out', 0))}",
                    # the services it announced; a host of an older library lists none
                    ",".join(c.get("services") or []) or "-",
                )
            )
        print_table(rows, out)
    return EXIT_OK


def control(args, out, service, done):
    with connect(args) as conn:
        try:
            call_service(conn, service, (args.name,), what=f"tether {args.command}")
        except LookupError as e:
            if is_no_client(e):
                raise CliError(
                    f"no client named '{args.name}' on {host_label(conn)} (tether ls lists them)",
                    EXIT_NO_CLIENT,
                )
            raise
        print(f"{done} client '{args.name}' on {host_label(conn)}", file=out)
    return EXIT_OK


def cmd_reset(args, out):
    return control(args, out, "tether.reset_client", "reset")


def cmd_disconnect(args, out):
    return control(args, out, "tether.disconnect_client", "disconnected")


def cmd_call(args, out):
    call_args, kwargs = parse_call_args(args.args)
    with connect(args) as conn:
        if args.notify:
            conn.notify[args.service](*call_args, **kwargs)
            return EXIT_OK
        try:
            result = call_service(conn, args.service, call_args, kwargs)
        except (CliError, KeyboardInterrupt):
            raise
        except Exception as e:
            text, detail = describe_error(e)
            raise CliError(f"{args.service} raised {text}", EXIT_FAILED, detail)
        if result is not None:
            print(format_result(result), file=out)
    return EXIT_OK


def cmd_eval_exec(args, out):
    source = args.code
    if source == "-":
        source = sys.stdin.read()
    method = args.command  # "exec" or "eval": the names tether.services.EvalExec serves
    with connect(args) as conn:
        try:
            result = call_service(
                conn, "tether.call_client", (args.name, method, [source]), what=f"tether {method}"
            )
        except CliError:
            raise
        except tether.NoSuchServiceError:
            raise CliError(
                f"client '{args.name}' has no service '{method}': it must register "
                "tether.services.EvalExec",
                EXIT_NO_SERVICE,
            )
        except LookupError as e:
            if is_no_client(e):
                raise CliError(
                    f"no client named '{args.name}' on {host_label(conn)} (tether ls lists them)",
                    EXIT_NO_CLIENT,
                )
            text, detail = describe_error(e)
            raise CliError(text, EXIT_FAILED, detail)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            text, detail = describe_error(e)
            raise CliError(text, EXIT_FAILED, detail)
        if method == "eval" or result is not None:
            print(format_result(result), file=out)
    return EXIT_OK


# ---- the REPL ------------------------------------------------------------------------------


class ServiceNamespace(dict):
    """The REPL's namespace. For a host that does not list its services, a name found
    nowhere else (not a builtin) is taken for one of the host's services."""

    def __init__(self, conn, lazy):
        super().__init__()
        self._conn = conn
        self._lazy = lazy

    def __missing__(self, key):
        import builtins

        if (
            not self._lazy
            or not key.isidentifier()
            or key.startswith("_")
            or hasattr(builtins, key)
        ):
            raise KeyError(key)
        return self._conn.root[key]


def compact(value, limit):
    """repr(value) of at most limit characters ("..." at the end when cut)."""
    if isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def make_console(conn, args, out):
    import code

    services = None
    try:
        services = list(conn.root["tether.services"]())
    except tether.NoSuchServiceError:
        services = None
    ns = ServiceNamespace(conn, lazy=services is None)
    ns["__name__"] = "__console__"
    ns["__doc__"] = None
    ns["tether"] = tether
    ns["host"] = conn
    ns["root"] = conn.root
    names = []
    for name in services or ():
        if name.isidentifier() and not name.startswith("_") and name not in ns:
            ns[name] = conn.root[name]
            names.append(name)

    # The service that publishes the host's globals: --globals, else tether.globals or
    # globals, whichever the host has (asked, when it does not list its services).
    globals_service = None
    if args.no_globals:
        pass
    elif args.globals:
        globals_service = args.globals
    elif services is not None:
        globals_service = next((s for s in ("tether.globals", "globals") if s in services), None)
    else:
        for candidate in ("tether.globals", "globals"):
            try:
                conn.root[candidate]()
            except tether.NoSuchServiceError:
                continue
            except Exception:
                pass  # it exists, it failed: show_globals will say why
            globals_service = candidate
            break

    class Console(code.InteractiveConsole):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.host_values = {}  # name -> the value of the host's globals put there

        def runcode(self, compiled):
            super().runcode(compiled)
            self.show_globals()

        def showtraceback(self):
            # Without the frames of tether's own package: a remote error shows the
            # line typed, then the error (and the remote traceback, as a note).
            import traceback

            typ, value, tb = sys.exc_info()
            sys.last_type, sys.last_value, sys.last_traceback = typ, value, tb
            package = os.path.dirname(os.path.abspath(__file__)) + os.sep
            frames = [
                f for f in traceback.extract_tb(tb.tb_next if tb else None)
                if not os.path.abspath(f.filename).startswith(package)
            ]
            lines = ["Traceback (most recent call last):\n"] if frames else []
            lines += traceback.format_list(frames) + traceback.format_exception_only(typ, value)
            self.write("".join(lines))

        def show_globals(self):
            nonlocal globals_service
            if not globals_service:
                return
            try:
                values = conn.root[globals_service]()
            except tether.NoSuchServiceError:
                print(f"[globals] the host has no service {globals_service!r}", file=out)
                globals_service = None
                return
            except KeyboardInterrupt:
                return
            except Exception as e:
                print(f"[globals] {type(e).__name__}: {e}", file=out)
                return
            if not isinstance(values, dict):
                print(f"[globals] {compact(values, 200)}", file=out)
                return
            width = max(shutil.get_terminal_size((100, 24)).columns, 60)
            parts = []
            for key, value in values.items():
                # A name of the host's globals is set in the namespace too, unless the
                # console's own code has since bound it to something else.
                if isinstance(key, str) and key.isidentifier():
                    ours = key in self.host_values and ns.get(key) is self.host_values[key]
                    if key not in ns or ours:
                        ns[key] = self.host_values[key] = value
                parts.append(f"{key}={compact(value, width)}")
            print("[globals] " + "  ".join(parts), file=out)

    console = Console(ns, filename="<tether repl>")
    banner = [
        f"tether {tether.__version__} REPL on {host_label(conn)} at {args.address}",
    ]
    if names:
        banner.append("Services (callables here): " + ", ".join(names))
    else:
        banner.append("The host's services are callables here (add(2, 3) calls its add).")
    banner.append(
        "Also: host (the connection), root[\"ns.name\"](...) for other names, tether. "
        + ("After each line the host's globals are printed. " if globals_service else "")
        + "Ctrl-D quits."
    )
    return console, ns, "\n".join(banner)


def setup_readline(ns):
    """Line editing, history in $TETHER_HISTORY (else ~/.tether_history) and completion,
    when the readline module is there."""
    try:
        import readline
        import rlcompleter
    except ImportError:
        return
    path = os.environ.get("TETHER_HISTORY") or os.path.join(
        os.path.expanduser("~"), ".tether_history"
    )
    readline.set_history_length(1000)
    try:
        readline.read_history_file(path)
    except (FileNotFoundError, PermissionError, OSError):
        pass
    readline.set_completer(rlcompleter.Completer(ns).complete)
    readline.parse_and_bind("tab: complete")

    import atexit

    def save():
        try:
            readline.write_history_file(path)
        except OSError:
            pass

    atexit.register(save)


def cmd_repl(args, out):
    conn = connect(args, name=args.name or REPL_CLIENT_NAME, reconnect=True)

    terminated = []

    def on_term(signum, frame):
        # The library sends SIGTERM when the host disconnects this client.
        terminated.append(signum)
        raise SystemExit(EXIT_FAILED)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        console, ns, banner = make_console(conn, args, out)
        setup_readline(ns)
        print(banner, file=out)
        console.show_globals()
        try:
            console.interact(banner="", exitmsg="")
        except SystemExit as e:
            if e.code != EXIT_FAILED or not terminated:
                raise
            # The signal may come a moment before the connection is seen closed.
            deadline = time.monotonic() + 1.0
            while conn.is_connected() and time.monotonic() < deadline:
                time.sleep(0.01)
            if conn.is_connected():
                raise CliError("terminated (SIGTERM)", EXIT_FAILED)
            raise CliError(f"{host_label(conn)} disconnected this console", EXIT_FAILED)
    finally:
        signal.signal(signal.SIGTERM, previous)
        conn.close()
    return EXIT_OK


# ---- main ---------------------------------------------------------------------------------


def common_options(defaults):
    """The options every command takes, given before or after the command. Each parser
    gets actions of its own: argparse shares a parent's actions, and a subcommand's
    defaults (SUPPRESS, so as not to undo an option given before the command) must not be
    the main parser's."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-H", "--host", metavar="NAME|ADDRESS", default=defaults.get("host", argparse.SUPPRESS),
        help="the host: a name (its socket in the runtime directory), unix:PATH or "
        "tcp:127.0.0.1:PORT (default: see below)",
    )
    common.add_argument(
        "--timeout", type=float, metavar="SECONDS",
        default=defaults.get("timeout", argparse.SUPPRESS),
        help="give up on a call after this long without news from the host (default 30)",
    )
    common.add_argument(
        "--connect-timeout", type=float, metavar="SECONDS",
        default=defaults.get("connect_timeout", argparse.SUPPRESS),
        help="bound on connecting and the handshake (default 5)",
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=defaults.get("verbose", argparse.SUPPRESS),
        help="also print the remote traceback of an error",
    )
    return common


def build_parser():
    defaults = {"host": None, "timeout": 30.0, "connect_timeout": 5.0, "verbose": False}
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="tether: see into and script a host application from the command line.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options(defaults)],
    )
    parser.add_argument(
        "--version", action="store_true",
        help="print the versions of the package, the core and the protocol",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, help, description=None):
        return sub.add_parser(
            name, help=help, description=description or help, parents=[common_options({})],
            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add("hosts", "list the hosts of this user, live or stale, with their addresses")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_hosts)

    p = add(
        "ls", "list a host's clients: name, pid, interpreter, connected since, calls in "
        "flight, counters",
    )
    p.add_argument("host_arg", nargs="?", metavar="HOST", help="the host (same as -H)")
    p.add_argument("-a", "--all", action="store_true", help="include this command's own connection")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_ls)

    p = add("reset", "make a client disconnect and reconnect (its state stays)")
    p.add_argument("name", metavar="NAME", help="the client's name, as tether ls shows it")
    p.set_defaults(func=cmd_reset)

    p = add("disconnect", "disconnect a client for good (by default it shuts down)")
    p.add_argument("name", metavar="NAME", help="the client's name, as tether ls shows it")
    p.set_defaults(func=cmd_disconnect)

    p = add(
        "call", "call a host service and print the result",
        "Call a host service and print its result (nothing for None). Each ARG is a "
        "Python literal (42, 1.5, 'text', [1, 2], None), else taken as a string; "
        "KEY=VALUE passes a keyword argument.",
    )
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("args", nargs="*", metavar="ARG", default=[])
    p.add_argument(
        "-n", "--notify", action="store_true", help="send a notification: no reply, no result"
    )
    p.set_defaults(func=cmd_call)

    p = add("exec", "run Python statements in a client that exposes eval/exec (EvalExec)")
    p.add_argument("name", metavar="NAME", help="the client's name")
    p.add_argument("code", metavar="CODE", help="the statements ('-': read them from stdin)")
    p.set_defaults(func=cmd_eval_exec)

    p = add("eval", "evaluate a Python expression in a client that exposes eval/exec; print it")
    p.add_argument("name", metavar="NAME", help="the client's name")
    p.add_argument("code", metavar="EXPR", help="the expression ('-': read it from stdin)")
    p.set_defaults(func=cmd_eval_exec)

    p = add(
        "repl", "an interactive console on the host's services",
        "An interactive console (line editing, history in ~/.tether_history or "
        "$TETHER_HISTORY, tab completion) whose lines run with the host's services in "
        "scope as Python callables; after each line it prints the values the host "
        "publishes as its globals (the service tether.globals, or globals), which are "
        "also names in the namespace.",
    )
    p.add_argument("--name", help=f"the name this console has on the host ({REPL_CLIENT_NAME})")
    p.add_argument(
        "--globals", metavar="SERVICE", help="the service that returns the host's globals"
    )
    p.add_argument("--no-globals", action="store_true", help="do not print the host's globals")
    p.set_defaults(func=cmd_repl)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(version_text())
        return EXIT_OK
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.timeout <= 0 or args.connect_timeout <= 0:
        parser.error("--timeout and --connect-timeout take a positive number of seconds")
    try:
        return args.func(args, sys.stdout)
    except CliError as e:
        sys.stdout.flush()
        print(f"{PROG}: {e}", file=sys.stderr)
        if e.detail and args.verbose:
            print(e.detail.rstrip(), file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
