"""Group commit: records from many callers written in one engine transaction."""

from __future__ import annotations

import threading
from collections.abc import Callable
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
        self._settled = threading.Condition(threading.Lock())
        self._leading = False
        self._writing = 0  # records taken by a flush that are not written yet

    def add(self, records: list[bytes], sizes: list[int], ticket: Ticket) -> int:
        """Queue records for the next flush; return how many records are now pending."""
        with self._lock:
            self._records += records
            self._sizes += sizes
            self._tickets.append(ticket)
            return len(self._records)

    def pending(self) -> int:
        return len(self._records)

    def unwritten(self) -> int:
        """Records pending or being written by a flush: not in the engine's counts yet."""
        return len(self._records) + self._writing

    def written(self, n: int) -> None:
        """``n`` records a flush took are written (and counted) or lost."""
        with self._lock:
            self._writing -= n

    def put_back(self, records: list[bytes], sizes: list[int], *, writing: bool = True) -> None:
        """Return records to the front of the next batch: ones a flush took (``writing``),
        whose write failed, or ones :meth:`take_front` handed out."""
        with self._lock:
            self._records[:0] = records
            self._sizes[:0] = sizes
            if writing:  # last, as in take_all: counted twice for a moment, never not
                self._writing -= len(records)

    def take_front(self, n: int) -> tuple[list[bytes], list[int], list[Ticket]]:
        """Remove and return the first ``n`` pending records. Their tickets stay for the
        next flush, unless no record is left: then they are removed and returned too."""
        with self._lock:
            records, sizes = self._records[:n], self._sizes[:n]
            del self._records[:n], self._sizes[:n]
            tickets: list[Ticket] = []
            if not self._records:
                tickets, self._tickets = self._tickets, []
            return records, sizes, tickets

    def take_all(self, writing: bool = True) -> tuple[list[bytes], list[int], list[Ticket]]:
        """Remove and return every pending record and ticket; with ``writing`` the records
        count as unwritten until :meth:`written` or :meth:`put_back`."""
        with self._lock:
            taken = self._records, self._sizes, self._tickets
            if writing:  # first: a lock-free unwritten() may count them twice, never not
                self._writing += len(taken[0])
            self._records, self._sizes, self._tickets = [], [], []
            return taken

    def wait_settled(self, ticket: Ticket, flush: Callable[[], None]) -> None:
        """Return once ``ticket`` is settled: call ``flush`` (which writes every pending
        record) when no other thread is flushing for its waiters, else wait for that flush.

        Waiters are woken together when a flush ends, not handed a lock one by one:
        that let lone writers slip in between, so with 16 threads and fsync a transaction
        carried 1.9 records on average (7.9 this way, and 45% more puts per second).
        """
        while not ticket.done:
            with self._settled:
                if ticket.done:
                    return
                if self._leading:
                    self._settled.wait(0.05)  # the timeout only guards against a bug
                    continue
                self._leading = True
            try:
                flush()
            finally:
                with self._settled:
                    self._leading = False
                    self._settled.notify_all()
