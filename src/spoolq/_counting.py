"""``qsize()`` of the async queue, which has the counts read again once, on the queue's
worker thread, after a put whose outcome is unknown (see
:meth:`spoolq.writing.Writing._append`)."""

from __future__ import annotations

from collections.abc import Callable

from ._views import QueueViews
from .worker import Worker

__all__ = ["AsyncCounts"]


class AsyncCounts(QueueViews):
    """The sizes of :class:`spoolq.Queue`, which never call the engine on the event loop."""

    # Set up by Queue.__init__ (and the class, for the flag).
    _worker: Worker
    _closed: bool
    _stale_read_sent = False
    # Defined by GivingBack.
    _size: Callable[[], int]

    def qsize(self) -> int:
        """Ready items, approximate when other processes share the file. An item a ``get``
        is receiving counts until the get returns it, and one a cancelled get gives back
        counts all along, as in ``asyncio.Queue``, where neither leaves the queue.

        After a put whose outcome is unknown (it raised :class:`Unavailable`: the server
        may have stored it), the first call sends a read of the counts to the queue's
        worker thread and answers at once: the calls after that read count the item. A
        get, or a put waiting for room, reads them first."""
        if self._core.stale and not self._stale_read_sent and not self._closed:
            self._stale_read_sent = True
            self._worker.post(self._read_stale_counts)
        return self._size()

    def _read_stale_counts(self) -> None:
        """On the worker thread: :meth:`QueueCore.refresh_if_stale`."""
        try:
            self._core.refresh_if_stale()
        finally:
            self._stale_read_sent = False
