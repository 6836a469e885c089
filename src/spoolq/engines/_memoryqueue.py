"""The memory engine's record and queue state (see :mod:`spoolq.engines.memory`)."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from math import inf
from operator import itemgetter

from .base import StoredRecord

__all__ = ["Entry", "QueueState", "data_of", "due_now", "hold", "id_of", "let_go",
           "new_record", "pop_fresh", "put_aside", "raw_size_of", "ready_ids", "record"]


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
_second = itemgetter(1)
new_record = partial(tuple.__new__, StoredRecord)
"""``StoredRecord`` from one tuple of its fields, without the generated ``__new__``."""


def record(ident: int, e: Entry) -> StoredRecord:
    """The record ``e`` holds under id ``ident``."""
    return new_record((ident, e.data, e.raw_size, e.attempts, e.enqueued_at, e.reason))


@dataclass(slots=True)
class QueueState:
    """One queue of the memory engine."""

    # Ready records are in one of three places. `fresh` holds, in increasing id order,
    # records never leased nor delayed (new ids only ever grow, so appends go there), as
    # the very StoredRecord a take hands out. `entries` holds every other record by id:
    # leased, or put back at its old place (released, expired, restored), whose ids are
    # then in the heap `back`, or, while not visible yet (released with a delay), in the
    # heap `later` by (visible_at, id): a take moves those due to `back` and reads no other.
    # The next ready record is the smaller of the heads of `fresh` and `back`.
    fresh: deque[StoredRecord] = field(default_factory=deque)
    entries: dict[int, Entry] = field(default_factory=dict)
    back: list[int] = field(default_factory=list)
    later: list[tuple[float, int]] = field(default_factory=list)
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


def put_aside(q: QueueState, ident: int, visible_at: float) -> None:
    """Make ready entry ``ident`` wait in ``later`` until ``visible_at``, or in ``back``
    when it waits for no time (see :func:`~.base.due_by`)."""
    if visible_at > 0.0:
        heapq.heappush(q.later, (visible_at, ident))
    else:
        heapq.heappush(q.back, ident)


def due_now(q: QueueState, due: float) -> None:
    """Move the entries of ``later`` visible at ``due`` to ``back``, reading no other."""
    later, back = q.later, q.back
    while later and later[0][0] <= due:
        heapq.heappush(back, heapq.heappop(later)[1])


def ready_ids(q: QueueState) -> Iterator[int]:
    """The ids of the ready entries (``back`` and ``later``), in no order."""
    return chain(q.back, map(_second, q.later))
