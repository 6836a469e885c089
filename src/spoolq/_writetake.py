"""A take that finds puts pending for their group commit writes them and takes in one
transaction, with an engine that offers ``append_take`` (SQLite): one commit instead of
two. Takes made on the thread that calls the engine (a SyncQueue's caller, the async
queue's worker thread) and those the async queue makes on its event loop (see
:mod:`spoolq._atonce`) share it, and the counting of what a take took.

:class:`WriteTake` is a part of :class:`spoolq.core.QueueCore`, kept in its own module;
it works on the core's state under the core's lock, as the rest of the core does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ._atonce import NoWait, WouldWait, attempt, new_counts, outcome_unknown
from ._ticketcounts import errors_of
from .engines import Counts, Engine, StoredRecord
from .engines.base import Lease
from .errors import LockTimeout
from .groupcommit import GroupCommit, Ticket

__all__ = ["WriteTake"]

log = logging.getLogger("spoolq")
_tuple_new = tuple.__new__


class WriteTake:
    """The merged write and take of one queue handle, and the counts of a take."""

    # Set up by QueueCore.__init__.
    engine: Engine
    name: str
    group: GroupCommit
    shut: bool
    buffered: bool
    closing: bool
    owner: str
    counters: dict[str, int]
    _counts: Counts
    _stale: bool
    # Defined by QueueCore and its other parts.
    _check_open: Callable[[], None]
    _after_put: Callable[[], None]
    _count_put: Callable[[list[bytes], list[int]], None]
    flush: Callable[..., list[Ticket]]
    refresh_due: Callable[[], bool]
    _refresh_locked: Callable[..., Counts]
    _recount: Callable[[Counts], None]
    _settle_pending: Callable[..., None]
    _settle_tickets: Callable[[list[Ticket], list[BaseException | None]], None]

    def _write_take_or_flush(self, n: int, ttl: float | None,
                             no_wait: NoWait | None = None) -> list[StoredRecord] | None:
        """For a take of ``n`` records (leased for ``ttl`` seconds, or removed) that finds
        records pending for a group commit: write them and take in one transaction (see
        :meth:`_write_take`) and return the records taken; where that cannot be, write
        them as :meth:`~spoolq.writing.Writing.flush` does and return None, for the take
        to be made after. The caller holds the lock. With ``no_wait`` (the engine's),
        :class:`WouldWait`, with the records still pending, where either would wait for
        another process's lock."""
        recs = self._write_take(n, ttl, no_wait)
        if recs is None:
            self.flush(no_wait)
        return recs

    def _write_take(self, n: int, ttl: float | None,
                    no_wait: NoWait | None = None) -> list[StoredRecord] | None:
        """Write the records pending for a group commit and take, in one transaction,
        with an engine that offers ``append_take``; the caller holds the lock. None,
        with the records still pending and nothing taken, where the engine has no
        ``append_take``, with durability "buffer" (whose failed writes stay buffered),
        while the handle closes or is shut down, where the take would reap leases first
        (leases are out), and where the call failed having changed nothing: then the
        records are written as a flush writes them (apart, should one caller's records
        be refused). :class:`WouldWait` (the records pending) where, within ``no_wait``,
        it would wait for another process's lock. A failure whose outcome is unknown
        fails the puts, as it does a flush, and is raised."""
        append_take = getattr(self.engine, "append_take", None)
        if (append_take is None or self.buffered or self.closing or self._counts.leased
                or self.shut):
            return None
        self._check_open()
        records, sizes, tickets, counts = self.group.take_batch()
        now = time.time()
        lease = None if ttl is None else Lease(self.owner, now + ttl)
        args: tuple[Any, ...] = (self.name, records, sizes, now, n, lease)
        try:
            recs: list[StoredRecord] = (append_take(*args) if no_wait is None
                                        else attempt(no_wait, append_take, *args))[1]
        except BaseException as exc:
            if isinstance(exc, LockTimeout) and not isinstance(exc, WouldWait):
                # Another process held the lock all along, which is no caller's fault: a
                # flush would wait as long again, and once more for each half written apart.
                self._settle_pending(records, sizes, lost=True)
                self.group.written(len(records))
                self._settle_tickets(tickets, errors_of(tickets, exc, counts))
                raise
            if not outcome_unknown(exc):  # nothing written, nothing taken
                self.group.put_back(records, sizes, tickets=tickets, counts=counts)
                if isinstance(exc, WouldWait):
                    raise
                return None
            self._stale = True
            self._settle_pending(records, sizes, lost=True)
            self.group.written(len(records))
            self._settle_tickets(tickets, errors_of(tickets, exc, counts))
            log.error("spoolq: writing %d records to %r failed", len(records), self.name,
                      exc_info=exc)
            raise
        self._settle_pending(records, sizes, lost=False)
        self._count_put(records, sizes)
        self.group.written(len(records))
        self._settle_tickets(tickets, [None] * len(tickets))  # stored, whatever follows
        self._count_taken(recs, lease is None)
        self._after_put()
        return recs

    def _count_taken(self, recs: list[StoredRecord], removed: bool) -> None:
        """Count the records a take removed (``removed``) or leased; after a take of
        none, read the counts again when they say records are ready or are due."""
        ready, leased, stored, raw = self._counts
        if not recs:
            if ready or self.refresh_due():
                self._refresh_locked()
            return
        k = len(recs)
        ready = ready - k if ready > k else 0
        if removed:
            for rec in recs:
                stored -= len(rec.data)
                raw -= rec.raw_size
            self.counters["gets"] += k
        else:
            leased += k
        if stored < 0 or raw < 0 or self._stale:  # records these counts lack: another
            # handle's, or of a put whose outcome is unknown
            self._recount(new_counts(ready, leased, max(stored, 0), max(raw, 0)))
        else:  # new_counts() without its call
            self._counts = _tuple_new(Counts, (ready, leased, stored, raw))

