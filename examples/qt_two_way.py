#!/usr/bin/env python3
"""qt_two_way: a Qt (PySide2) window that talks both ways with a host.

    python3 examples/qt_two_way.py [HOST] [--service NAME] [--name NAME]
                                   [--seconds N] [--screenshot FILE]

HOST is a host name ("demo" for tether-demo), an address ("unix:/path",
"tcp:127.0.0.1:PORT"), or else $TETHER_ADDRESS or the host "default".

Script to host: the button calls the host's service NAME (default spawn_actor: against
tether-demo each click spawns an actor "qt-1", "qt-2", ...) with the name as argument,
and the window shows the reply. The call goes out as a future, so the window never waits
for the host; its outcome comes back to the Qt thread through a signal.

Host to script: the window offers these services, which the host calls as it would any
client's (in C: tether_host_get_client(host, "qt_two_way", &conn), then
tether_conn_call(conn, "show", ..., "s", "hello")):

    show(text) -> n         shows text in the window; n: messages shown so far
    state() -> {...}        what the window shows: clicks, replies, messages (and
                            where its button is, in window coordinates)
    quit()                  closes the window (right after replying)

They run on the Qt thread, so they may touch widgets: the connection is made with
serve="manual", and a QSocketNotifier on conn.fileno() calls conn.dispatch() whenever
the host has called one; Qt's event loop is the only loop. tether-demo calls a client's
services on anyone's behalf through its service tether.call_client(name, method, args),
so from a shell:

    build/tether -H demo call tether.call_client qt_two_way show "['hello']"

--seconds N closes the window after N seconds, --screenshot FILE saves a picture of the
window to FILE (PNG) when it closes. Needs python3-pyside2.qtwidgets (Debian); a display,
or Xvfb (the tests run it under Xvfb and click it with xdotool), or
QT_QPA_PLATFORM=offscreen.
"""

import argparse
import signal
import sys

from PySide2.QtCore import QObject, QSocketNotifier, Qt, QTimer, Signal
from PySide2.QtWidgets import (
    QApplication,
    QLabel,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

import tether

# How long one dispatch() may run the host's calls, in seconds, before Qt gets the thread
# back (the notifier fires again while calls remain queued).
DISPATCH_BUDGET = 0.01


class Bridge(QObject):
    """Carries a call's outcome from tether's callback thread to the Qt thread: a signal
    emitted on another thread is delivered through the receiver's event loop."""

    replied = Signal(str, object)  # (service name, tether.Future)


class Window(QWidget):
    def __init__(self, conn, service, screenshot=None):
        super().__init__()
        self.conn = conn
        self.service = service
        self.screenshot = screenshot
        self.clicks = 0
        self.replies = []  # what the host answered the button, as shown
        self.messages = []  # what the host sent with show()
        self.bridge = Bridge()
        self.bridge.replied.connect(self.on_reply)

        self.setWindowTitle(f"tether: {conn.name} -> {conn.host_name}")
        self.button = QPushButton(f"Call the host's {service}()")
        self.button.clicked.connect(self.on_click)
        self.reply_label = QLabel("No call yet.")
        self.reply_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.host_list = QListWidget()
        layout = QVBoxLayout(self)
        layout.addWidget(self.button)
        layout.addWidget(self.reply_label)
        layout.addWidget(QLabel("From the host:"))
        layout.addWidget(self.host_list)
        self.resize(420, 300)

        # The host's calls of our services run here, on the Qt thread, when Qt sees the
        # connection's fd readable.
        self.notifier = QSocketNotifier(conn.fileno(), QSocketNotifier.Read, self)
        self.notifier.activated.connect(self.dispatch)

    # ---- script to host ---------------------------------------------------------------

    def on_click(self):
        self.clicks += 1
        name = f"qt-{self.clicks}"
        self.reply_label.setText(f"{self.service}({name!r}) ...")
        future = self.conn.async_[self.service](name)
        # On tether's callback thread: hand the future over to the Qt thread.
        future.add_done_callback(lambda f: self.bridge.replied.emit(name, f))

    def on_reply(self, name, future):
        try:
            # An actor arrives as a proxy: its repr is one more (quick) call to the host.
            text = f"{self.service}({name!r}) -> {future.result()!r}"
        except Exception as e:
            text = f"{self.service}({name!r}) failed: {type(e).__name__}: {e}"
        self.replies.append(text)
        self.reply_label.setText(text)

    # ---- host to script ---------------------------------------------------------------

    def dispatch(self):
        self.conn.dispatch(DISPATCH_BUDGET)

    def show_text(self, text):
        text = str(text)
        self.messages.append(text)
        self.host_list.addItem(text)
        self.host_list.scrollToBottom()
        return len(self.messages)

    def state(self):
        return {
            "clicks": self.clicks,
            "replies": list(self.replies),
            "messages": list(self.messages),
            "reply_label": self.reply_label.text(),
            "button": [self.button.geometry().center().x(), self.button.geometry().center().y()],
        }

    def quit(self):
        QTimer.singleShot(0, self.close)  # after the reply has gone

    def closeEvent(self, event):
        if self.screenshot:
            ok = self.grab().save(self.screenshot, "PNG")
            print(f"screenshot {'saved to' if ok else 'NOT saved to'} {self.screenshot}",
                  flush=True)
        super().closeEvent(event)


def main(argv=None):
    parser = argparse.ArgumentParser(description="A Qt window talking both ways with a host.")
    parser.add_argument("host", nargs="?", help="host name or address (default: $TETHER_ADDRESS)")
    parser.add_argument("--service", default="spawn_actor",
                        help="the host service the button calls with a name (spawn_actor)")
    parser.add_argument("--name", default="qt_two_way", help="this client's name")
    parser.add_argument("--seconds", type=float, help="close the window after this long")
    parser.add_argument("--screenshot", metavar="FILE", help="save the window there on closing")
    args = parser.parse_args(argv)

    app = QApplication(sys.argv[:1])
    # Our services are registered as the connection is made, so that the host can call
    # them as soon as it sees us. With serve="manual" they run only inside dispatch(),
    # which the window's notifier drives: the window exists by the time one runs.
    window = None
    services = {
        "show": lambda text: window.show_text(text),
        "state": lambda: window.state(),
        "quit": lambda: window.quit(),
    }
    conn = tether.connect(name=args.name, address=args.host, serve="manual", services=services)
    window = Window(conn, args.service, args.screenshot)
    if args.seconds:
        QTimer.singleShot(int(args.seconds * 1000), window.close)
    # Ctrl-C and SIGTERM close the window. Python runs signal handlers only between
    # bytecodes, so a timer wakes the interpreter now and then while Qt's loop runs.
    for signo in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signo, lambda *args: window.close())
    wake = QTimer(interval=250)
    wake.timeout.connect(lambda: None)
    wake.start()
    window.show()
    app.exec_()
    print(f"clicks {window.clicks}, messages from the host {len(window.messages)}", flush=True)
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
