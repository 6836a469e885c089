"""What the core does with records a call took and has not handed out: a ``get_many(n)``
waiting for ``n`` keeps them in a :class:`Holding`, a cancelled waiter gives them back,
and close() gives back what waiting calls still hold.

:class:`Holdings` is a part of :class:`spoolq.core.QueueCore`, kept in its own module; it
works on the core's state under the core's lock, as the rest of the core does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from .engines import Counts, Engine, StoredRecord
from .groupcommit import GroupCommit
from .message import Taken

__all__ = ["UNWRITTEN", "Holding", "Holdings"]

log = logging.getLogger("spoolq")

UNWRITTEN = -1
"""The id of a record handed out from the buffer of durability "buffer" before it was
written (no engine gives negative ids)."""


class Holding:
    """The records one call took and keeps in memory while it waits for more (a
    ``get_many(n)`` that waits for ``n``). :meth:`QueueCore.close` gives them back if the
    call has not handed them out by then: it may close without waiting for the call."""

    __slots__ = ("leased", "reclaimed", "taken")

    def __init__(self, leased: bool) -> None:
        self.leased = leased
        self.taken: list[Taken] = []
        self.reclaimed = False
        """Set by close() once it gave the records back: the call must not hand them out."""


class Holdings:
    """Giving back records taken and not handed out."""

    # Set up by QueueCore.__init__.
    engine: Engine
    name: str
    owner: str
    lock: threading.RLock
    group: GroupCommit
    counters: dict[str, int]
    _holdings: set[Holding]
    _holding_lock: threading.Lock
    _tally: threading.Lock
    # Defined by QueueCore and its other parts.
    _check_open: Callable[[], None]
    _notify: Callable[[], None]
    _refresh_locked: Callable[..., Counts]
    _count_pending: Callable[[list[bytes], list[int], int], None]

    def restore(self, taken: Sequence[Taken], leased: bool,
                holding: Holding | None = None) -> None:
        """Give back records whose taker never received them (a cancelled waiter), or
        that a call which kept them in ``holding`` will not hand out. Nothing to do
        when close() gave them back already."""
        if not taken:
            return
        with self.lock:
            if holding is not None:
                if holding.reclaimed:
                    return
                back = {id(rec) for rec, _item in taken}
                holding.taken = [t for t in holding.taken if id(t[0]) not in back]
                if not holding.taken:
                    self._holdings.discard(holding)
            self._check_open()
            self._give_back_locked([rec for rec, _item in taken], leased)
        self._notify()

    def hand_out(self, holding: Holding) -> bool:
        """The call that kept ``holding`` is about to return its records. False when
        close() gave them back already: the call must raise instead."""
        if not holding.taken:
            return not holding.reclaimed
        # Not the core's lock: on an async queue this runs on the event loop, and the
        # worker may hold that lock while it waits for another process's write lock.
        with self._holding_lock:
            self._holdings.discard(holding)
            return not holding.reclaimed

    def _give_back_locked(self, recs: list[StoredRecord], leased: bool) -> None:
        if leased:
            self.engine.release(self.name, [(r.id, r.attempts) for r in recs], self.owner,
                                not_before=0.0, max_attempts=None, count_attempt=False)
        else:
            self._restore(recs)
        self._refresh_locked()

    def _reclaim_holdings(self) -> None:
        """Give back what calls still waiting for more records hold (close() does not
        wait for them forever); their records would be lost with the engine."""
        with self._holding_lock:  # a call handing its records out sees one or the other
            holdings, self._holdings = self._holdings, set()
            for holding in holdings:
                holding.reclaimed = True
        for holding in holdings:
            try:
                self._give_back_locked([rec for rec, _item in holding.taken], holding.leased)
            except Exception:
                log.exception("spoolq: queue %r: giving back %d records a waiting call "
                              "held failed", self.name, len(holding.taken))

    def _restore(self, recs: list[StoredRecord]) -> None:
        """Give back removed records: written ones to the engine, at their old place;
        ones taken from the buffer back to its front."""
        written = [r for r in recs if r.id != UNWRITTEN]
        if written:
            self.engine.restore(self.name, written)
        unwritten = [r for r in recs if r.id == UNWRITTEN]
        if unwritten:
            records, sizes = [r.data for r in unwritten], [r.raw_size for r in unwritten]
            self.group.put_back(records, sizes, writing=False)
            with self._tally:
                self._count_pending(records, sizes, 1)
            self.counters["puts"] -= len(unwritten)
        self.counters["gets"] -= len(recs)
