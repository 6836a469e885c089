"""Signal plumbing of the server: the wakeup fd of :func:`spoolq.server.serve` on an
asyncio loop, and the command line's handlers around it (:class:`LateSignals`)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import signal
import socket
import sys
import threading
from types import FrameType
from typing import Any

__all__ = ["LateSignals", "Wakeup", "loop_name"]

log = logging.getLogger("spoolq")


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``"uvloop"`` or ``"asyncio"``: which implementation ``loop`` is."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


class Wakeup:
    """A signal wakeup fd for :func:`spoolq.server.serve` on an asyncio loop that has
    none (it sets one only for its own ``add_signal_handler``; uvloop always has one). A
    signal that
    another thread caught then wakes the loop at once, and the main thread runs the
    Python-level handler; without it the loop slept on until its next event."""

    def __init__(self, loop: asyncio.AbstractEventLoop, reader: socket.socket,
                 writer: socket.socket) -> None:
        self.loop = loop
        self.reader = reader
        self.writer = writer

    @classmethod
    def install(cls, loop: asyncio.AbstractEventLoop) -> Wakeup | None:
        if loop_name(loop) != "asyncio":
            return None
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        try:
            before = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except ValueError:  # not the main thread
            before = None
        if before != -1:  # the loop (or the program) has one: it stays
            if before is not None:
                signal.set_wakeup_fd(before)
            reader.close()
            writer.close()
            return None
        wakeup = cls(loop, reader, writer)
        loop.add_reader(reader.fileno(), wakeup._drain)
        return wakeup

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.reader.recv(4096):
                pass

    def remove(self) -> None:
        self.loop.remove_reader(self.reader.fileno())
        now = signal.set_wakeup_fd(-1)
        if now != self.writer.fileno():  # replaced meanwhile (add_signal_handler): it stays
            signal.set_wakeup_fd(now)
        self.reader.close()
        self.writer.close()


class LateSignals:
    """SIGTERM and SIGINT handlers of the command line, for when those of
    :func:`spoolq.server.serve` are not installed.

    Before the server listens, a signal does what it did before. While the server
    runs, :func:`spoolq.server.serve` handles both signals and starts a clean shutdown; after it
    has shut down (while the event loop closes), a signal is logged and ignored.
    When :func:`spoolq.server.main` returns, :meth:`restore` puts back the handlers from before,
    so that a program that runs the command line and goes on is not left ignoring
    SIGTERM. When a signal stopped the server the process is on its way out: then,
    once the interpreter exits, a later signal is logged and ignored again (the
    default action would end the process with the signal instead of status 0), unless
    the handlers were changed since.
    """

    def __init__(self) -> None:
        self.serving = False
        self._before: dict[int, Any] = {}

    def install(self) -> None:
        """Install the handlers (only the main thread can; elsewhere nothing happens)."""
        if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            before = signal.getsignal(sig)
            if before is signal.SIG_IGN:
                continue
            self._before[sig] = signal.SIG_DFL if before is None else before
            signal.signal(sig, self._handle)

    def restore(self, exiting: bool = False) -> None:
        """Put back the handlers found by :meth:`install` (where ours are still there);
        with ``exiting``, ignore a signal again once the interpreter exits."""
        before = dict(self._before)
        for sig, handler in before.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, handler)
        self._before.clear()
        if exiting and before:
            atexit.register(_ignore_while_exiting, before)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.serving:
            log.info("spoolq: %s received while exiting; the shutdown goes on",
                     signal.Signals(signum).name)
            return
        signal.signal(signum, self._before[signum])
        signal.raise_signal(signum)


def _ignore_while_exiting(handlers: dict[int, Any]) -> None:
    """At interpreter exit after a signal stopped the server: a SIGTERM or SIGINT is
    logged and ignored, where the handler is still the one :func:`spoolq.server.main` put back."""
    for sig, handler in handlers.items():
        with contextlib.suppress(ValueError):  # not the main thread
            if signal.getsignal(sig) == handler:
                signal.signal(sig, _ignored)


def _ignored(signum: int, frame: FrameType | None) -> None:
    log.info("spoolq: %s received while exiting; ignored", signal.Signals(signum).name)
