"""A fork server: an interpreter kept ready by a host for warm spawns.

A host that spawns with ``warm`` keeps one of these per interpreter, environment and
package path (tether_spawn_options.warm; tether.run_script(..., warm=True)). It starts
like a child, imports tether once, and then forks a child for each request instead of
starting a new interpreter, so a warm spawn costs a fork rather than an interpreter's
start-up.

Protocol, over the SOCK_SEQPACKET socket at $TETHER_CHILD_FD (one datagram per
message, JSON):
- to the host, once ready: {"ready": pid}
- from the host: {"cwd": str or null, "name": str} with three descriptors attached
  (SCM_RIGHTS): the child's end of its socket pair, and its stdout and stderr;
- to the host, for each request in order: {"pid": pid} or {"error": text};
- to the host, whenever a child exits: {"exit": pid, "status": code or -signal}.

It stays single-threaded (a fork from a threaded process would copy held locks) and
exits at the end of its control socket: when the host goes, so does it, and each
child exits at the end of its own socket.
"""

import gc
import json
import os
import select
import signal
import socket
import sys
import traceback

import tether  # noqa: F401  (warm: what every child imports, imported once here)

from . import _child, _tether


def _leave_server(control, wakeup):
    """In a new child: nothing of the server's survives but the interpreter and its
    imports."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    control.close()
    for fd in wakeup:
        os.close(fd)


class _Spare:
    """A child forked ahead of the next request, waiting for it on a socket of its own:
    a request then costs handing it over, not a fork and the child's first steps (its
    scheduling, the copies of the pages it touches first)."""

    def __init__(self, control, wakeup):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            ours.close()
            _leave_server(control, wakeup)
            _tether._set_process_name("tether-spare")  # ps tells it from children at work
            data, fds, _, _ = socket.recv_fds(theirs, 65536, 3)
            theirs.close()
            if not data:
                os._exit(0)  # the server ended before a request came
            _run_child(json.loads(data), fds)
        theirs.close()
        self.sock = ours

    def hand(self, data, fds):
        """Give the spare a request; False if it is gone (the caller forks instead)."""
        try:
            socket.send_fds(self.sock, [data], fds)
            return True
        except OSError:
            return False
        finally:
            self.sock.close()


def _fork_child(request, fds, control, wakeup):
    pid = os.fork()
    if pid:
        return pid
    _leave_server(control, wakeup)
    _run_child(request, fds)


def _run_child(request, fds):
    """The child's life from its request on; never returns."""
    conn_fd, out_fd, err_fd = fds
    code = 1
    try:
        _tether._set_process_name(os.path.basename(sys.executable)[:15])
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(out_fd)
        os.close(err_fd)
        if request.get("cwd"):
            os.chdir(request["cwd"])
        os.environ["TETHER_CHILD_FD"] = str(conn_fd)
        os.environ["TETHER_CHILD_NAME"] = request.get("name") or "child"
        os.environ["TETHER_CHILD_PARENT"] = str(os.getppid())
        _child.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _send(control, message):
    control.send(json.dumps(message).encode())


def _reap(control):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _send(control, {"exit": pid, "status": code})


def main():
    control = socket.socket(fileno=int(os.environ.pop("TETHER_CHILD_FD")))
    os.environ.pop("TETHER_CHILD_NAME", None)
    _child._die_with_parent(int(os.environ.pop("TETHER_CHILD_PARENT", "0") or 0))
    # SIGCHLD wakes the select through this pipe; children are reaped in the loop.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    # What is imported now stays shared with every child: keep the collector from
    # touching (and so copying) those pages in each of them.
    gc.collect()
    gc.freeze()
    spare = _Spare(control, (wake_r, wake_w))
    _send(control, {"ready": os.getpid()})
    while True:
        try:
            readable, _, _ = select.select([control, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in readable:
            try:
                os.read(wake_r, 512)
            except BlockingIOError:
                pass
            _reap(control)
        if control not in readable:
            continue
        data, fds, _, _ = socket.recv_fds(control, 65536, 3)
        if not data:
            break  # the host is gone
        try:
            request = json.loads(data)
            if len(fds) != 3:
                raise ValueError(f"expected 3 descriptors, got {len(fds)}")
            if spare is not None and spare.hand(data, fds):
                pid = spare.pid
            else:
                sys.stdout.flush()
                sys.stderr.flush()
                pid = _fork_child(request, fds, control, (wake_r, wake_w))
            _send(control, {"pid": pid})
        except Exception as e:  # a bad request costs that request only
            _send(control, {"error": f"{type(e).__name__}: {e}"})
        finally:
            for fd in fds:
                os.close(fd)
        spare = _Spare(control, (wake_r, wake_w))  # ready for the next request
    os._exit(0)
