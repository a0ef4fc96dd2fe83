"""tether.LogHandler: Python logging records sent to the host's log."""

import logging

from . import _tether

__all__ = ["LogHandler"]

# syslog levels of tether_conn_log.
LOG_ERROR = 3
LOG_WARNING = 4
LOG_INFO = 6
LOG_DEBUG = 7


def _tether_level(levelno):
    if levelno >= logging.ERROR:  # CRITICAL too
        return LOG_ERROR
    if levelno >= logging.WARNING:
        return LOG_WARNING
    if levelno >= logging.INFO:
        return LOG_INFO
    return LOG_DEBUG


class LogHandler(logging.Handler):
    """A logging.Handler forwarding records to the host's log over a connection.

    Each record is formatted (the handler's formatter; by default the bare message) and
    sent with its logger name; the host's log callback receives it as
    ``"[CLIENT pid PID] LOGGER: MESSAGE"`` at the matching level (CRITICAL and ERROR:
    error, WARNING: warning, INFO: info, DEBUG and below: debug). Sending only queues, so
    emit never blocks; records emitted while not connected are dropped.

    While the handler is open (until ``close()``) and report_service_errors is true, an
    exception raised by one of the connection's services, besides being replied to the
    caller as an error, is also sent to the host's log at error level, traceback included,
    under the logger name "tether.service".
    """

    def __init__(self, conn, level=logging.NOTSET, *, report_service_errors=True):
        super().__init__(level)
        self.conn = conn
        if report_service_errors:
            conn._log_handlers.add(self)

    def close(self):
        self.conn._log_handlers.discard(self)
        super().close()

    def emit(self, record):
        try:
            msg = self.format(record)
            self.conn._client.log(
                _tether_level(record.levelno),
                record.name.replace("\0", "\\0"),
                msg.replace("\0", "\\0"),  # the C API takes NUL-terminated text
            )
        except _tether.NotConnectedError:
            pass
        except Exception:
            self.handleError(record)
