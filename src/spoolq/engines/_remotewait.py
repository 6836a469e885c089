"""How the remote engine waits for ready records: long-poll ``wait`` requests on
connections of their own, shared by the threads that wait on the same queue.

:class:`LongPolls` is a part of :class:`spoolq.engines.remote.RemoteEngine`, kept in its
own module; it works on the engine's state under the engine's locks.
"""

from __future__ import annotations

import contextlib
import copy
import socket
import threading
import time
from collections.abc import Callable
from functools import partial

from .._inchild import InChild
from ..errors import ClosedError
from ._link import Dialing, Link
from .base import WaitCancel

__all__ = ["WAIT_GRACE", "LongPolls", "SharedWait", "shut"]

_IDLE_WAITERS = 4
"""Waiting connections kept open for the next wait."""
WAIT_GRACE = 0.5
"""Seconds past its own timeout that a wait's reply may take before the server counts as
stalled (plus twice the time a handshake took)."""


_FORK_AWARE: InChild[LongPolls] = InChild(lambda engine: engine._forget_connections())


def shut(link: Link) -> None:
    """End what a connection is doing, from another thread (its call fails at once)."""
    with contextlib.suppress(OSError):
        link.sock.shutdown(socket.SHUT_RDWR)


class SharedWait:
    """A ``wait`` request in progress on one queue, which other threads waiting on that
    queue join instead of sending their own: its outcome is theirs too."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._done = False
        self._ready = False
        self._error: Exception | None = None
        self._again = False  # ended for its own caller only: those who joined wait on
        self.cancelled_all = False

    def cancel_all(self) -> None:
        """:meth:`RemoteEngine.cancel_waits`: every thread of this wait returns False."""
        with self._cond:
            self.cancelled_all = True
            self._cond.notify_all()

    def finish(self, ready: bool, error: Exception | None, again: bool) -> None:
        with self._cond:
            self._done, self._ready, self._error = True, ready, error
            self._again = again and not self.cancelled_all
            self._cond.notify_all()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def join(self, deadline: float, cancel: WaitCancel | None) -> bool | None:
        """Wait for the outcome until ``deadline`` (monotonic) or ``cancel``: True or False
        to return, None to wait on (the wait ended early for its own caller, or at its
        own deadline before ours). A connection failure of the wait is raised."""
        unhook = cancel.on_cancel(self._wake) if cancel is not None else None
        try:
            with self._cond:
                while not (self._done or self.cancelled_all
                           or (cancel is not None and cancel.cancelled)):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
                if self.cancelled_all or (cancel is not None and cancel.cancelled):
                    return False
                if self._error is not None:
                    # the leader's error, as if this thread's own wait had met it
                    raise copy.copy(self._error) from self._error
                if self._ready:
                    return True
                return None if self._again else False
        finally:
            if unhook is not None:
                unhook()


class LongPolls:
    """The engine's :meth:`wait_ready` and :meth:`cancel_waits`."""

    # Set up by RemoteEngine.__init__.
    timeout: float
    connect_timeout: float
    _closed: bool
    _waiters_lock: threading.Lock
    _idle_waiters: list[Link]
    _busy_waiters: set[Link]
    _dialing_waiters: set[Dialing]  # waiting connections being made, for cancel_waits()
    _wait_generation: int
    _shared_waits: dict[str, SharedWait]
    _handshake_seconds: float
    _lock: threading.Lock
    _link: Link | None
    _long_poll: bool
    # Defined by RemoteEngine.
    _connect: Callable[[float | None, Dialing | None], Link]

    def wait_ready(self, queue: str, timeout: float, cancel: WaitCancel | None = None) -> bool:
        """Block up to ``timeout`` seconds until ``queue`` may have ready records.

        True as soon as the server sees ready records (at once if there are
        some, which may include records not visible yet after a delayed nack),
        False when the timeout passes, :meth:`cancel_waits` is called or
        ``cancel`` is cancelled. It uses a connection of its own, so other calls
        go on meanwhile; many threads may wait at once, and those waiting on the
        same queue share one ``wait`` request (one connection, one long-poll on
        the server). Connection failures raise :class:`EngineError`.
        """
        timeout = min(max(timeout, 0.0), 86400.0)
        deadline = time.monotonic() + timeout
        while True:
            with self._waiters_lock:
                if self._closed:
                    raise ClosedError("the remote engine is closed")
                shared = self._shared_waits.get(queue)
                lead = shared is None
                if shared is None:
                    shared = self._shared_waits[queue] = SharedWait()
            if lead:
                return self._lead_wait(queue, shared, timeout, cancel)
            outcome = shared.join(deadline, cancel)
            if outcome is not None:
                return outcome
            # The wait shared ended early for its own caller only (cancelled), or its time
            # was up before ours: wait on, in a wait of our own or one shared anew.
            left = deadline - time.monotonic()
            if left <= WAIT_GRACE or (cancel is not None and cancel.cancelled):
                return False
            timeout = left

    def _lead_wait(self, queue: str, shared: SharedWait, timeout: float,
                   cancel: WaitCancel | None) -> bool:
        """Run the wait that ``shared`` stands for, then give its outcome to those who
        joined it."""
        ready, error, again = False, None, True
        try:
            ready = self._wait_on_link(queue, timeout, cancel)
            # over at its time, or for its own caller only (cancelled): not for the others
            again = not ready or (cancel is not None and cancel.cancelled)
        except Exception as exc:  # a connection failure: theirs too
            error, again = exc, False
            raise
        finally:  # (an exception that is no failure of the wait: the others wait on)
            with self._waiters_lock:
                if self._shared_waits.get(queue) is shared:
                    del self._shared_waits[queue]
            shared.finish(ready, error, again)
        return ready

    def _wait_on_link(self, queue: str, timeout: float, cancel: WaitCancel | None) -> bool:
        """One ``wait`` request on a waiting connection (an idle one, or a new one)."""
        with self._waiters_lock:
            if self._closed:
                raise ClosedError("the remote engine is closed")
            link = self._idle_waiters.pop() if self._idle_waiters else None
            generation = self._wait_generation
        if link is not None and link.stale():
            link.close()
            link = None
        if link is None:
            # no longer than the wait, and time for the handshake the first one took
            link = self._dial(min(self.connect_timeout, timeout + WAIT_GRACE
                                  + 2 * self._handshake_seconds), generation, cancel)
            if link is None:
                return False
        with self._waiters_lock:
            if generation != self._wait_generation or self._closed:
                link.close()
                return False
            self._busy_waiters.add(link)
        unhook = cancel.on_cancel(partial(shut, link)) if cancel is not None else None
        try:
            # The server answers when the wait is over: a reply much later than that
            # means it stalled, and the caller's own timeout is over by then.
            grace = min(self.timeout, WAIT_GRACE + 2 * link.handshake_seconds)
            ready = link.call("wait", {"queue": queue, "timeout": timeout}, timeout + grace)
        except BaseException:
            link.close()
            with self._waiters_lock:
                self._busy_waiters.discard(link)
                if generation != self._wait_generation or (cancel and cancel.cancelled):
                    return False  # cancelled: the connection was shut on purpose
            raise
        finally:
            if unhook is not None:
                unhook()
        with self._waiters_lock:
            self._busy_waiters.discard(link)
            if self._closed or len(self._idle_waiters) >= _IDLE_WAITERS or (
                    cancel and cancel.cancelled):
                link.close()
            else:
                self._idle_waiters.append(link)
        return bool(ready)

    def _dial(self, connect_timeout: float, generation: int,
              cancel: WaitCancel | None) -> Link | None:
        """A new waiting connection, or None when the waits were cancelled (or ``cancel``
        was) while it was being made: a server that stalls in the handshake does not hold
        up a cancel for ``connect_timeout``."""
        dialing = Dialing()
        with self._waiters_lock:
            if generation != self._wait_generation or self._closed:
                return None
            self._dialing_waiters.add(dialing)
        unhook = cancel.on_cancel(dialing.cut) if cancel is not None else None
        try:
            return self._connect(connect_timeout, dialing)
        except Exception:
            if dialing.was_cut:
                return None
            raise
        finally:
            if unhook is not None:
                unhook()
            with self._waiters_lock:
                self._dialing_waiters.discard(dialing)

    def cancel_waits(self) -> None:
        """Make every :meth:`wait_ready` in progress return False now (for a shutdown)."""
        with self._waiters_lock:
            self._wait_generation += 1
            busy = list(self._busy_waiters)
            shared = list(self._shared_waits.values())
            dialing = list(self._dialing_waiters)
        for wait in shared:
            wait.cancel_all()
        for connecting in dialing:
            connecting.cut()
        for link in busy:
            shut(link)

    def _forget_in_forked_children(self) -> None:
        """Have a child process started with fork forget this engine's connections."""
        _FORK_AWARE.add(self)

    def _forget_connections(self) -> None:
        """In a child started with fork: the connections are the parent's, and stay so
        (this process closes only its copies of their sockets, without a goodbye), and so
        are the waits in progress; the next call connects anew. The locks may have been
        held by a thread of the parent."""
        self._lock = threading.Lock()
        self._waiters_lock = threading.Lock()
        self._long_poll = False
        links = [*self._idle_waiters, *self._busy_waiters]
        if self._link is not None:
            links.append(self._link)
            self._link = None
        self._idle_waiters, self._busy_waiters, self._shared_waits = [], set(), {}
        self._dialing_waiters = set()
        self._wait_generation += 1
        for link in links:
            link.close()

    def _close_idle_waiters(self) -> None:
        with self._waiters_lock:
            idle, self._idle_waiters = self._idle_waiters, []
        for waiter in idle:
            waiter.close()
