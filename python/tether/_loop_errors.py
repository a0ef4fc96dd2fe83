"""The errors a connected script's asyncio loops report, sent to the host's log.

asyncio reports what it cannot raise anywhere (an exception in a task nobody awaited, in
a callback) through the loop's exception handler; the default handler logs it at error
level to the logger "asyncio". Two paths lead from there to the host's log:

- ``watch(conn)``, for every connection made by tether.connect or connect_async: a
  filter on the "asyncio" logger sends each error record to the host's log of every open
  watching connection, whatever loop logged it: one that asyncio.run() started after
  connect, one on another thread, one of another implementation that logs there too.
  A filter, not a handler: logging still finds no handler of its own there, so with no
  logging configured the record is still printed to stderr (logging.lastResort).
  When asyncio has not been imported yet, a finder on sys.meta_path waits for its import
  and installs the filter then, so that connecting never imports logging itself.
- ``hook_loop_errors(loop, conn)``, for a connection made, attached or making aio calls
  in a running loop: the loop's exception handler becomes one that sends the error to
  those connections and to the watching ones, then calls the handler that was there (a
  script's own, which need not log at all) or the default one. The logger filter then
  leaves alone what this handler has sent already.
"""

import sys
import threading
import weakref

# syslog "error", as tether_conn_log takes it.
LOG_ERROR = 3
# logging.ERROR, without importing logging.
_LOGGING_ERROR = 40

# Connections made by tether.connect or connect_async that are still alive; guarded by
# _lock (a thread may connect while another reports an error).
_watching = weakref.WeakSet()
# .forwarding: this thread is inside an _ErrorForwarder, which sent the error already.
_local = threading.local()
_lock = threading.Lock()
_filter_installed = False


def _watchers():
    with _lock:
        return list(_watching)


def _send(conns, text):
    for conn in conns:
        try:
            conn.log(LOG_ERROR, text, logger="asyncio")
        except Exception:  # not connected, closed: the local report still happens
            pass


# ---- every loop: the "asyncio" logger ----------------------------------------------------


def watch(conn):
    """Send the errors asyncio logs, in any loop, to conn's host log while conn lives."""
    with _lock:
        _watching.add(conn)
    if "asyncio" in sys.modules:
        _install_filter()
        return
    with _lock:
        if not _filter_installed and not any(isinstance(f, _AsyncioImport)
                                             for f in sys.meta_path):
            sys.meta_path.insert(0, _AsyncioImport())


def _install_filter():
    global _filter_installed
    import logging  # imported by asyncio already

    with _lock:
        if _filter_installed:
            return
        _filter_installed = True
    logging.getLogger("asyncio").addFilter(_forward_record)


def _forward_record(record):
    """The "asyncio" logger's filter: sends an error record to the watching connections;
    lets every record through."""
    if record.levelno < _LOGGING_ERROR or getattr(_local, "forwarding", False):
        return True
    try:
        conns = _watchers()
        if conns:
            _send(conns, _record_text(record))
    except Exception:  # logging would raise it into asyncio's handler
        pass
    return True


def _record_text(record):
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        import traceback

        text += "\n" + "".join(traceback.format_exception(*record.exc_info))
    return text.rstrip().replace("\0", "\\0")


class _AsyncioImport:
    """A finder that finds nothing: on the import of asyncio it installs the logger
    filter (before asyncio makes its logger, which is the same object) and leaves
    sys.meta_path."""

    def find_spec(self, name, path=None, target=None):
        if name == "asyncio":
            try:
                sys.meta_path.remove(self)
            except ValueError:  # another thread's import got here first
                return None
            _install_filter()
        return None


# ---- one loop: its exception handler -------------------------------------------------------


class _ErrorForwarder:
    """A loop's exception handler: sends each error to the host's log of every hooked or
    watching connection, then hands it on to the handler installed before (or the default
    one)."""

    def __init__(self, previous):
        self.previous = previous
        self.conns = weakref.WeakSet()

    def __call__(self, loop, context):
        conns = set(self.conns) | set(_watchers())
        if conns:
            _send(conns, _describe(context))
        outer = getattr(_local, "forwarding", False)
        _local.forwarding = True
        try:
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
        finally:
            _local.forwarding = outer


def _describe(context):
    """The text of a loop error: its message, the task or callback, the traceback."""
    import traceback

    lines = [context.get("message") or "Unhandled exception in event loop"]
    for key in ("task", "future", "handle"):
        if key in context:
            lines.append(f"{key}: {context[key]!r}")
    exc = context.get("exception")
    if exc is not None:
        lines.append("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return "\n".join(lines).rstrip().replace("\0", "\\0")


def hook_loop_errors(loop, conn):
    """Send the errors loop reports to conn's host log too (see _ErrorForwarder)."""
    handler = loop.get_exception_handler()
    if not isinstance(handler, _ErrorForwarder):
        handler = _ErrorForwarder(handler)
        loop.set_exception_handler(handler)
    handler.conns.add(conn)
