"""Closing a queue core when the close cannot simply take the core's lock.

Another thread's engine call may outlast the close's wait (a put waiting for a remote
server that stopped answering): an engine whose ``close()`` may be called during a call of
another thread, which it then cuts (``cuts_running_calls``, the remote engine), is closed
first, and the call raises :class:`~spoolq.errors.ClosedError`, its outcome unknown.

A signal handler's close may interrupt a call of the queue on its own thread, which holds
the lock: the core is then closed on a thread of its own once that call has ended.

:class:`CloseCut` is a part of :class:`spoolq.core.QueueCore`, kept in its own module."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engines import Engine
    from .groupcommit import GroupCommit

__all__ = ["HANDLER_LOCK_WAIT", "CloseCut"]

HANDLER_LOCK_WAIT = 0.5
"""Seconds shutdown() and close() wait for a lock that a signal handler calling them may
find its own thread holding, in the queue's bookkeeping (which never holds it long)."""


class CloseCut:
    """The engine closed ahead of the core's close, cutting the call that held it up."""

    # Set up by QueueCore.__init__.
    engine: Engine
    lock: threading.RLock
    _tally: threading.Lock
    shut: bool
    closed: bool
    buffered: bool
    group: GroupCommit
    # Defined by QueueCore and its other parts.
    close: Callable[..., None]
    flush: Callable[..., object]
    cut = False
    """Whether :meth:`cut_running` closed the engine: the close gives nothing back then
    (the server gives back what the connection cut had leased)."""

    def can_cut(self) -> bool:
        return getattr(self.engine, "cuts_running_calls", False) is True

    def cut_running(self) -> None:
        """Close an engine that can cut the call of another thread it is running."""
        self.cut = True
        self.engine.close()

    def held_here(self) -> bool:
        """Whether this thread holds the core's lock: a signal handler's close() or
        shutdown() that interrupted a call of the queue, which must end before either
        goes on (closing the engine under it failed that call and the close)."""
        return bool(self.lock._is_owned())  # type: ignore[attr-defined]

    def close_later(self) -> None:
        """Close the core on a thread of its own once the call that holds its lock, which
        this thread interrupted, has ended (a process exiting waits for it)."""
        threading.Thread(target=self.close, name="spoolq-close", daemon=False).start()

    def _lock_until(self, until: float | None) -> bool:
        """Take the core's lock, waiting until ``until`` (``time.monotonic()``) at most."""
        if until is None:
            return self.lock.acquire()
        return self.lock.acquire(timeout=max(until - time.monotonic(), 0.0))

    def shut_down(self, *, wait: bool, until: float | None = None) -> None:
        """Refuse puts from now on: they raise QueueShutDown.

        A put looks at the flag under the lock it takes anyway (the core's lock for a
        direct write, ``_tally`` for a group commit), so each one either raises or was
        accepted before this call. With ``wait`` this returns only once the accepted
        ones are written: a direct write holds the core's lock until it is done, and
        group-committed records still pending are flushed here (with durability
        "buffer", whose puts have returned, they stay buffered). ``until``
        (``time.monotonic()``) bounds that wait: a write still running then is left to
        :meth:`close`."""
        # A signal handler's call may find its own thread holding either lock: it then
        # waits for neither (the interrupted call ends after the handler).
        got = self._tally.acquire(timeout=HANDLER_LOCK_WAIT)
        self.shut = True
        if got:
            self._tally.release()
        if wait and not self.held_here() and self._lock_until(until):
            try:
                if not self.closed and not self.buffered and self.group.pending():
                    self.flush()
            finally:
                self.lock.release()
