"""How a caller's deadline bounds the calls of :class:`spoolq.engines.remote.RemoteEngine`
made on its thread (a blocked ``get`` with a timeout, on a server that stalls)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from ..errors import Unavailable
from ._remotewait import WAIT_GRACE

__all__ = ["CallDeadlines", "Deadlines"]


class Deadlines(threading.local):
    """This thread's bounds: see :meth:`CallDeadlines.call_deadline`."""

    at: float | None = None
    replies = False


class CallDeadlines:
    """The deadline part of the remote engine."""

    _deadlines: Deadlines
    _handshake_seconds: float
    _where: Callable[[], str]  # the engine's "the spoolq server at host:port"

    @contextlib.contextmanager
    def call_deadline(self, deadline: float | None, *, replies: bool = True) -> Iterator[None]:
        """Bound the calls this thread makes in the block by ``deadline`` (a
        ``time.monotonic()`` time; None: no bound), as a blocked ``get`` with a timeout
        needs: each call, connecting again included, may take until then plus the grace
        of :meth:`wait_ready` (half a second and twice a handshake's time), and never more
        than ``timeout``. One that would take longer raises :class:`Unavailable`: one that
        had not started (waiting for another thread's call, or connecting) did nothing;
        one that had closes its connection, as any call that timed out. With ``replies``
        false only connecting again is bounded (a take, whose records a cut reply would
        lose), and the calls after a take are not (they finish what it began).
        Blocks nest; the inner one cannot extend the outer one's bounds."""
        before = self._deadlines.at, self._deadlines.replies
        self._deadlines.at = before[0] if deadline is None else \
            deadline if before[0] is None else min(before[0], deadline)
        self._deadlines.replies = before[1] or (replies and deadline is not None)
        try:
            yield
        finally:
            self._deadlines.at, self._deadlines.replies = before

    def _time_left(self) -> float | None:
        """Seconds a call of this thread may take by its :meth:`call_deadline`, if any."""
        at = self._deadlines.at
        if at is None:
            return None
        left = at - time.monotonic() + WAIT_GRACE + 2 * self._handshake_seconds
        if left <= 0:
            raise Unavailable(f"{self._where()} did not answer in time")
        return left

    def _limit(self, seconds: float) -> float:
        """``seconds``, or what this thread's :meth:`call_deadline` leaves if less."""
        left = self._time_left()
        return seconds if left is None else min(seconds, left)

