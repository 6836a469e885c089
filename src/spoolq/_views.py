"""What the sync and async queues answer alike, without touching the engine."""

from __future__ import annotations

from time import monotonic as _monotonic
from typing import Any

from .core import QueueCore

__all__ = ["QueueViews"]


class QueueViews:
    """Sizes and stats from the counts a queue handle keeps; none of them blocks."""

    _core: QueueCore

    def qsize(self) -> int:
        """Ready items (approximate when other handles or processes share the queue). Never
        waits: once ``poll_interval`` has passed since the counts were last read (or after
        a put that raised :class:`Unavailable`, whose outcome is unknown), the counts are
        read again, here when the handle's lock is free and the engine reads without
        waiting for another process (SQLite, memory), else on another thread, whose read a
        later call sees (see :meth:`QueueCore.fresh_counts`)."""
        core = self._core
        if _monotonic() >= core.counts_due_at or core._stale:  # refresh_due(), inline
            core.fresh_counts()
        return core.ready_hint()

    def empty(self) -> bool:
        """True when no item is ready (approximate, like qsize)."""
        return self.qsize() == 0

    def full(self) -> bool:
        """True when ``maxsize`` is set and reached (approximate, like qsize)."""
        maxsize = self._core.settings.maxsize
        return maxsize > 0 and self.qsize() >= maxsize

    @property
    def maxsize(self) -> int:
        """The ``maxsize`` the queue was opened with (0: no limit)."""
        return self._core.settings.maxsize

    @property
    def name(self) -> str:
        """The queue's name in its file."""
        return self._core.name

    @property
    def stats(self) -> dict[str, Any]:
        """Counts, sizes and counters; see the README for each key. Never blocks.
        ``count`` is :meth:`qsize`, which reads the counts again first when they are due."""
        count = self.qsize()
        stats = self._core.stats()
        stats["count"] = count
        return stats
