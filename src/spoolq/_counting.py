"""``qsize()`` of the async queue, which has the counts read again on the queue's worker
thread once a poll interval has passed, or after a put whose outcome is unknown (see
:meth:`spoolq.writing.Writing._append`)."""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic as _monotonic

from ._views import QueueViews
from .worker import Worker

__all__ = ["AsyncCounts"]


class AsyncCounts(QueueViews):
    """The sizes of :class:`spoolq.Queue`, which never call the engine on the event loop."""

    # Set up by Queue.__init__.
    _worker: Worker
    _closed: bool
    # Defined by GivingBack.
    _size: Callable[[], int]

    def qsize(self) -> int:
        """Ready items, approximate when other handles or processes share the queue. An
        item a ``get`` is receiving counts until the get returns it, and one a cancelled
        get gives back counts all along, as in ``asyncio.Queue``, where neither leaves the
        queue.

        Once ``poll_interval`` has passed since the counts were last read, or after a put
        whose outcome is unknown (it raised :class:`Unavailable`: the server may have
        stored it), a call sends a read of the counts to the queue's worker thread (an
        engine that never blocks, the memory engine, is read here) and answers at once:
        the calls after that read see it. A get, or a put waiting for room, reads them
        first."""
        core = self._core
        if (_monotonic() >= core.counts_due_at or core._stale) and not self._closed:
            core.fresh_counts(self._worker.post)
        return self._size()
