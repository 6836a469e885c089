"""What the sync and async queues answer alike, without touching the engine."""

from __future__ import annotations

from typing import Any

from .core import QueueCore

__all__ = ["QueueViews"]


class QueueViews:
    """Sizes and stats from the counts a queue handle keeps; none of them blocks."""

    _core: QueueCore

    def qsize(self) -> int:
        """Ready items (approximate when other processes share the file). Never calls the
        engine: after a put that raised :class:`Unavailable` (its outcome unknown: the server
        may have stored it), the next get or wait for room reads the counts again."""
        return self._core.ready_hint()

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
        ``count`` is :meth:`qsize`."""
        stats = self._core.stats()
        stats["count"] = self.qsize()
        return stats
