"""The memory engine's record and queue state (see :mod:`spoolq.engines.memory`)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import partial
from math import inf
from operator import itemgetter

from .base import StoredRecord

__all__ = ["Entry", "QueueState", "data_of", "hold", "id_of", "let_go", "new_record",
           "pop_fresh", "raw_size_of", "record"]


@dataclass(slots=True)
class Entry:
    """A record the queue holds apart from its fresh ones: leased, or put back."""

    data: bytes
    raw_size: int
    attempts: int
    enqueued_at: float
    visible_at: float = 0.0
    owner: str | None = None
    reason: str | None = None


id_of, data_of, raw_size_of = itemgetter(0), itemgetter(1), itemgetter(2)
new_record = partial(tuple.__new__, StoredRecord)
"""``StoredRecord`` from one tuple of its fields, without the generated ``__new__``."""


def record(ident: int, e: Entry) -> StoredRecord:
    """The record ``e`` holds under id ``ident``."""
    return new_record((ident, e.data, e.raw_size, e.attempts, e.enqueued_at, e.reason))


@dataclass(slots=True)
class QueueState:
    """One queue of the memory engine."""

    # Ready records are in one of two places. `fresh` holds, in increasing id order, records
    # never leased nor delayed (new ids only ever grow, so appends go there), as the very
    # StoredRecord a take hands out. `entries` holds every other record by id: leased, or
    # put back at its old place (released, expired, restored, loaded with a delay), whose
    # ids are then in the heap `back`. The next ready record is the smaller of both heads.
    fresh: deque[StoredRecord] = field(default_factory=deque)
    entries: dict[int, Entry] = field(default_factory=dict)
    back: list[int] = field(default_factory=list)
    leased: int = 0
    stored_bytes: int = 0
    raw_bytes: int = 0
    # How many records each owner holds, and a time no lease ends before (the earliest
    # lease end when expire last read them all): owners() and an expire with nothing due
    # read no record.
    holders: dict[str, int] = field(default_factory=dict)
    soonest: float = inf


def hold(q: QueueState, owner: str, n: int, until: float) -> None:
    """Count ``n`` records just leased by ``owner`` until ``until``."""
    q.holders[owner] = q.holders.get(owner, 0) + n
    if until < q.soonest:  # noqa: PLR1730 (min() costs a builtin call on every lease)
        q.soonest = until


def let_go(q: QueueState, owner: str, n: int = 1) -> None:
    """Count ``n`` records ``owner`` held less."""
    left = q.holders[owner] - n
    if left:
        q.holders[owner] = left
    else:
        del q.holders[owner]


def pop_fresh(q: QueueState, n: int) -> list[StoredRecord]:
    """Remove and return up to ``n`` of the oldest fresh records (get_many)."""
    popleft = q.fresh.popleft
    out = [popleft() for _ in range(min(n, len(q.fresh)))]
    q.stored_bytes -= sum(map(len, map(data_of, out)))
    q.raw_bytes -= sum(map(raw_size_of, out))
    return out
