"""Group commit: records from many callers written in one engine transaction."""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["GroupCommit", "Ticket"]


class Ticket:
    """A group-commit waiter: set once its records are written (or failed)."""

    __slots__ = ("done", "error", "payload")

    def __init__(self, payload: Any = None) -> None:
        self.done = False
        self.error: BaseException | None = None
        self.payload = payload


class GroupCommit:
    """Collects records from many callers; one ``flush`` writes them in one transaction."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[bytes] = []
        self._sizes: list[int] = []
        self._tickets: list[Ticket] = []

    def add(self, records: list[bytes], sizes: list[int], ticket: Ticket) -> int:
        """Queue records for the next flush; return how many records are now pending."""
        with self._lock:
            self._records += records
            self._sizes += sizes
            self._tickets.append(ticket)
            return len(self._records)

    def pending(self) -> int:
        return len(self._records)

    def put_back(self, records: list[bytes], sizes: list[int]) -> None:
        """Return records whose write failed to the front of the next batch."""
        with self._lock:
            self._records[:0] = records
            self._sizes[:0] = sizes

    def take_all(self) -> tuple[list[bytes], list[int], list[Ticket]]:
        with self._lock:
            taken = self._records, self._sizes, self._tickets
            self._records, self._sizes, self._tickets = [], [], []
            return taken
