"""How the SQLite engine checks the arguments of an append and of a take, and
``append_take``, which does both in one write transaction: a take that finds puts waiting
for their group commit writes them and takes with one commit instead of two.
:class:`TakeWriting` is a mixin of :class:`~spoolq.engines.sqlite.SQLiteEngine`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ._checks import as_float_time, as_int, checked_owner, checked_size_types
from .base import (
    Lease,
    StoredRecord,
    as_queue_name,
    as_records,
    batch_given,
    due_by,
    nothing_visible,
    refuse_nan,
)

__all__ = ["TakeWriting"]

R = TypeVar("R")
_MAX_INT = (1 << 63) - 1  # SQLite's largest integer; a LIMIT above it would overflow


class TakeWriting:
    """``append_take`` and the checks of ``append`` and ``take``, for :class:`SQLiteEngine`."""

    if TYPE_CHECKING:
        path: str

        def _txn(self, what: str, body: Callable[..., R], *args: Any) -> R: ...

        def check_records(self, queue: str, records: Sequence[bytes]) -> None: ...

        def take(self, queue: str, n: int, now: float,
                 lease: Lease | None) -> list[StoredRecord]: ...

        def _append(self, conn: sqlite3.Connection, queue: str, records: Sequence[bytes],
                    raw_sizes: Sequence[int], now: float) -> int: ...

        def _take(self, conn: sqlite3.Connection, queue: str, n: int, now: float,
                  lease: Lease | None) -> list[tuple[Any, ...]]: ...

        def _taken(self, rows: list[tuple[Any, ...]],
                   lease: Lease | None) -> list[StoredRecord]: ...

    def append_take(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
                    now: float, n: int,
                    lease: Lease | None) -> tuple[list[int], list[StoredRecord]]:
        """``append(queue, records, raw_sizes, now)`` then ``take(queue, n, now, lease)``
        in one transaction: the ids of the records written, and the records taken (the
        queue's older ready records first, then those just written). A failure of either
        part leaves the file as it was."""
        if not batch_given(records, raw_sizes):
            return [], self.take(queue, n, now, lease)
        queue, records, now = self._appending(queue, records, raw_sizes, now)
        taking = self._taking(n, now, lease)
        last, rows = self._txn("append_take", self._append_take, queue, records, raw_sizes,
                               now, taking)
        ids = list(range(last - len(records) + 1, last + 1))
        return ids, [] if taking is None else self._taken(rows, taking[2])

    def _append_take(self, conn: sqlite3.Connection, queue: str, records: Sequence[bytes],
                     raw_sizes: Sequence[int], now: float,
                     taking: tuple[int, float, Lease | None] | None
                     ) -> tuple[int, list[tuple[Any, ...]]]:
        last = self._append(conn, queue, records, raw_sizes, now)
        return last, [] if taking is None else self._take(conn, queue, *taking)

    def _appending(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
                   now: float) -> tuple[str, Sequence[bytes], float]:
        """The arguments of an append of a batch given (see ``batch_given``), checked."""
        if type(raw_sizes[0]) is not int or len(raw_sizes) > 1:
            checked_size_types(raw_sizes)  # SQLite would keep 1.5 as a REAL
        queue = as_queue_name(queue)  # SQLite would keep b"q" as a queue apart from "q"
        records = as_records(records)
        self.check_records(queue, records)
        refuse_nan(self.path, "append", "now", now)  # SQLite would store NULL
        if type(now) is not float:
            now = as_float_time(now)  # SQLite binds no int beyond 64 bits
        return queue, records, now

    def _taking(self, n: int, now: float,
                lease: Lease | None) -> tuple[int, float, Lease | None] | None:
        """The arguments of a take, checked: ``(n, now, lease)``; None when it takes
        nothing."""
        if lease is None and type(n) is int and 0 < n <= _MAX_INT and type(now) is float \
                and now >= 0.0:
            return n, now, None  # a get's: nothing to change (NaN fails now >= 0.0)
        if type(n) is not int:
            n = as_int(n, "n")
        if lease is not None:  # SQLite would keep b"o"; a longer owner could overfill a row
            checked_owner(lease.owner)
            if type(lease.until) is not float:
                lease = Lease(lease.owner, as_float_time(lease.until))
        if nothing_visible(self.path, now, lease) or n <= 0:
            return None  # LIMIT would read a negative n as no limit at all
        # A larger n means every ready record all the same. New rows are visible from 0
        # (the column's default) on; SQLite binds no int beyond 64 bits.
        now = due_by(now if type(now) is float else as_float_time(now))
        return min(n, _MAX_INT), now, lease
