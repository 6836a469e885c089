"""Closing a queue core on time while another thread's engine call outlasts the close's
wait (a put waiting for a remote server that stopped answering): an engine whose
``close()`` may be called during a call of another thread, which it then cuts
(``cuts_running_calls``, the remote engine), is closed first, and the call raises
:class:`~spoolq.errors.ClosedError`, its outcome unknown.

:class:`CloseCut` is a part of :class:`spoolq.core.QueueCore`, kept in its own module."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engines import Engine

__all__ = ["CloseCut"]


class CloseCut:
    """The engine closed ahead of the core's close, cutting the call that held it up."""

    # Set up by QueueCore.__init__.
    engine: Engine
    lock: threading.RLock
    cut = False
    """Whether :meth:`cut_running` closed the engine: the close gives nothing back then
    (the server gives back what the connection cut had leased)."""

    def can_cut(self) -> bool:
        return getattr(self.engine, "cuts_running_calls", False) is True

    def cut_running(self) -> None:
        """Close an engine that can cut the call of another thread it is running."""
        self.cut = True
        self.engine.close()

    def _lock_until(self, until: float | None) -> bool:
        """Take the core's lock, waiting until ``until`` (``time.monotonic()``) at most."""
        if until is None:
            return self.lock.acquire()
        return self.lock.acquire(timeout=max(until - time.monotonic(), 0.0))
