"""The engine protocol: how spoolq talks to storage.

An engine stores opaque byte records in FIFO order inside named queues. It
knows nothing about Python objects, compression, waiting or threads. Every
method is one atomic transaction; a batch method either applies to the whole
batch or to none of it. Record ids are unique within their queue, only grow
and are never reused, even after a purge. Engines are called from one thread at
a time.

A process may open the same file several times (one queue handle per named
queue, say); every engine so opened must see the others' writes at once. An
engine whose storage cannot be opened twice in one process shares one store
between those handles (see ``spoolq.engines._shared.SharedEngine``).

A record is *ready* (waiting to be delivered, possibly not before some
``visible_at`` time) or *leased* (delivered to an owner until ``visible_at``).
Dead letters are ordinary records in the queue named ``"<name>.dead"``.

An engine may also offer ``peek_leased`` (see :class:`SupportsPeekLeased`): the
leased records of a queue with their owners and expiries, for operators. It is
optional (the remote engine has none): callers check for it with
``isinstance(engine, SupportsPeekLeased)`` and say so when it is missing, as
``spoolq peek --leased`` does.

An engine that can block until a queue may have ready records offers
``wait_ready(queue, timeout, cancel=None) -> bool`` (the remote and PostgreSQL
engines); it may be called from a thread of its own while another thread uses
the engine, ``cancel_waits()`` ends every wait in progress, and a
:class:`WaitCancel` passed as ``cancel`` ends that one wait.

An engine whose calls never block (no I/O, no locks held by other processes)
may set a class attribute ``inline = True``: the async queue then calls it on
the event loop instead of handing each call to its worker thread.

An engine whose calls are brief unless another process holds its lock (SQLite
without an fsync at each commit) may say so with a ``brief`` attribute and
offer ``no_wait()``, a context manager within which a call that would wait for
another connection's lock raises :class:`~spoolq.errors.LockTimeout` at once,
having changed nothing. An async queue created with ``calls_on_loop=True`` then
makes its puts and takes on the event loop while nothing else of it is under
way, and hands a call that would wait to its worker thread.

Such an engine may offer ``append_take(queue, records, raw_sizes, now, n, lease) ->
(ids, taken)``: ``append`` then ``take`` in one transaction, the take seeing the records
just written after the queue's older ones; a failure of either part changes nothing. A
take on the event loop that finds puts waiting for their group commit then writes them
with one commit instead of two.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from ..errors import EngineError
from ._checks import (
    MAX_ATTEMPTS,
    MAX_RAW_SIZE,
    as_bytes,
    as_int,
    as_queue_name,
    as_records,
    as_text,
    checked_attempts,
    checked_raw_size,
    checked_raw_sizes,
)

__all__ = [
    "MAX_ATTEMPTS",
    "MAX_RAW_SIZE",
    "STORED_RECORDS",
    "TAKE_SENT",
    "Counts",
    "Engine",
    "Lease",
    "LeasedRecord",
    "PageEnds",
    "RestoreRefused",
    "StoredRecord",
    "SupportsPeekLeased",
    "SupportsRecordCheck",
    "WaitCancel",
    "as_bytes",
    "as_int",
    "as_queue_name",
    "as_records",
    "as_text",
    "batch_given",
    "check_window",
    "checked_attempts",
    "checked_raw_size",
    "checked_records",
    "dead_queue_name",
    "distinct_ids",
    "due_by",
    "forks",
    "never_given",
    "nothing_visible",
    "refuse_nan",
    "restore_refused",
    "stored_before_failure",
    "take_may_have_removed",
]

FORMAT_VERSION = 1


class PageEnds:
    """Where recent ``peek`` pages ended, so that the page after one goes on from its last
    id instead of skipping ``offset`` records again: reading a whole queue page by page
    (``spoolq dump``, ``verify``, ``migrate``) then stays linear in its length. What is
    remembered holds while the store's ``version`` is the same (nothing written since)."""

    LIMIT = 64

    def __init__(self) -> None:
        self._version: object = None
        self._ends: dict[tuple[object, int], int] = {}

    def resume(self, version: object, where: object, offset: int) -> int | None:
        """The id of the record before ``offset`` of ``where`` (a queue's records of one
        kind), where a page ended, or None: then skip ``offset`` records as usual."""
        if version != self._version:
            self._ends.clear()
            self._version = version
        return self._ends.get((where, offset))

    def ended(self, where: object, offset: int, count: int, last_id: int,
              before_last: int | None = None) -> None:
        """A page of ``count`` records from ``offset`` ended at ``last_id``, the record of
        ``before_last`` before it. The page after it may start at its end, or at its last
        record (a reader that reads one record again to see where it stands)."""
        if not count:
            return
        ends = self._ends
        ends[(where, offset + count)] = last_id
        if before_last is not None:
            ends[(where, offset + count - 1)] = before_last
        while len(ends) > self.LIMIT:  # what holds for this version: the oldest go first
            del ends[next(iter(ends))]


class WaitCancel:
    """Ends one ``wait_ready`` call early, from any thread: the wait returns False.

    The engine registers what interrupts its wait with :meth:`on_cancel`; a
    cancel that comes before the wait starts makes it return at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: list[Callable[[], None]] = []
        self.cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()

    def on_cancel(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Call ``hook`` on :meth:`cancel` (at once if that came already); returns a
        function that unregisters it, for when the wait is over."""
        with self._lock:
            if not self.cancelled:
                self._hooks.append(hook)
                return lambda: self._discard(hook)
        hook()
        return lambda: None

    def _discard(self, hook: Callable[[], None]) -> None:
        with self._lock:
            if hook in self._hooks:
                self._hooks.remove(hook)


def checked_records(records: Sequence[StoredRecord]) -> list[StoredRecord]:
    """The records of a ``restore``, each field checked as above (the id an int, the data
    bytes, the reason None or a str): TypeError or ValueError naming the field, before
    anything changes."""
    return [StoredRecord(as_int(r.id, "a record id"), as_bytes(r.data, "a record"),
                         checked_raw_size(r.raw_size), checked_attempts(r.attempts),
                         float(r.enqueued_at),
                         None if r.reason is None else as_text(r.reason, "a reason"))
            for r in records]


_forks = 0


def _count_fork() -> None:
    global _forks  # noqa: PLW0603 - one counter for the whole process
    _forks += 1


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_count_fork)


def forks() -> int:
    """How many forks made this process (a child of a child: 2). A file opened at another
    count was opened by a parent process, whose handles a child must neither use nor
    close: it opens its own."""
    return _forks


STORED_RECORDS = "stored_records"
"""The attribute an engine sets, on the error of an ``append`` that it wrote in several
transactions and that failed after the first, to how many leading records are stored."""


TAKE_SENT = "take_sent"
"""The attribute an engine sets (to True) on the :class:`~spoolq.errors.Unavailable` a
``take`` without a lease raises once its request reached the server: the server may have
removed the records, which then reach no one. A blocked get raises it rather than wait
for the server and take again (see :func:`take_may_have_removed`)."""


def take_may_have_removed(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a ``take`` without a lease, may have removed records
    (see :data:`TAKE_SENT`)."""
    return getattr(exc, TAKE_SENT, False) is True


def stored_before_failure(exc: BaseException, n: int) -> int:
    """How many of the first of the ``n`` records of an ``append`` that raised ``exc`` are
    stored all the same (see :data:`STORED_RECORDS`): they must not be written again."""
    stored = getattr(exc, STORED_RECORDS, 0)
    return min(stored, n) if isinstance(stored, int) and stored > 0 else 0


def batch_given(records: Sequence[bytes], raw_sizes: Sequence[int]) -> bool:
    """Check an ``append`` batch: ValueError when the lists differ in length or a raw size
    is out of range (see :func:`checked_raw_size`); False when there is nothing to append."""
    if len(records) != len(raw_sizes):
        raise ValueError("records and raw_sizes differ in length")
    checked_raw_sizes(raw_sizes)
    return bool(records)


# No queue holds this many records, so a larger n or offset reads the same window; capped
# there, offset + n still fits the 64-bit integers of SQLite, PostgreSQL and islice().
WINDOW_MAX = 1 << 61


def check_window(n: int, offset: int) -> tuple[int, int]:
    """Check the ``n`` and ``offset`` of a peek: ValueError when either is negative.
    Returns them capped at :data:`WINDOW_MAX`, which reads the same records."""
    if n < 0 or offset < 0:
        raise ValueError("n and offset must be >= 0")
    return min(n, WINDOW_MAX), min(offset, WINDOW_MAX)


def never_given(queue: str, ident: int) -> ValueError:
    """The error of a ``restore`` given a record of an id ``queue`` never gave out: only
    records a take removed go back (the disk engines would file such a record outside the
    queue, or give its id out again to a later put)."""
    return ValueError(f"cannot restore record {ident} into queue {queue!r}: the queue never "
                      "gave out that id; nothing was restored")


class RestoreRefused(ValueError):
    """A ``restore`` refused because the queue holds a record of one of the ids given
    (see :func:`restore_refused`); nothing was restored."""


def restore_refused(queue: str, ident: int) -> RestoreRefused:
    """The error of a ``restore`` given a record whose id ``queue`` holds already."""
    return RestoreRefused(f"cannot restore record {ident} into queue {queue!r}: the queue "
                          "holds a record of that id; nothing was restored")


def distinct_ids(queue: str, records: Sequence[StoredRecord]) -> list[int]:
    """The ids of a ``restore`` batch; ValueError for an id given twice or a field out of range."""
    for r in records:
        if not (0 <= r.raw_size <= MAX_RAW_SIZE and 0 <= r.attempts <= MAX_ATTEMPTS):
            checked_raw_size(r.raw_size)
            checked_attempts(r.attempts)
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        twice = next(i for k, i in enumerate(ids) if i in ids[:k])
        raise ValueError(f"cannot restore record {twice} into queue {queue!r} twice; nothing "
                         "was restored")
    return ids


def dead_queue_name(name: str) -> str:
    """The name of the queue holding ``name``'s dead letters. A str subclass (a str enum) is
    its text: formatting would give the enum's name ("Name.JOBS.dead")."""
    return str.__add__(name, ".dead") if isinstance(name, str) else f"{name}.dead"


class StoredRecord(NamedTuple):
    """One record as an engine returns it."""

    id: int
    data: bytes
    raw_size: int
    attempts: int
    enqueued_at: float
    reason: str | None = None


class Counts(NamedTuple):
    """Counts and sizes of one queue: ``ready`` and ``leased`` records, and the
    stored and raw bytes of both together."""

    ready: int
    leased: int
    stored_bytes: int
    raw_bytes: int


class Lease(NamedTuple):
    """Who takes records and until when they stay invisible to others."""

    owner: str
    until: float


class LeasedRecord(NamedTuple):
    """A leased record with its lease: who holds it and until when (the same clock as
    :attr:`Lease.until`). ``record.attempts`` counts the delivery in progress."""

    record: StoredRecord
    owner: str
    until: float


@runtime_checkable
class Engine(Protocol):
    """Storage of byte records; see the module docstring for the rules."""

    name: str

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        """Append records at the tail; return their new ids, in order."""
        ...

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        """Take up to ``n`` of the oldest ready records visible at ``now``.

        With ``lease=None`` they are removed; otherwise they become leased by
        ``lease.owner`` until ``lease.until`` and their attempts grow by one.
        Records not visible yet are passed over, not waited for: the ones
        behind them are taken.
        """
        ...

    def restore(self, queue: str, records: Sequence[StoredRecord]) -> None:
        """Put back records that ``take(lease=None)`` removed, under their original ids.

        They were taken from the head, so they go back ahead of every record
        still in the queue; restoring anything else is not supported. A record
        whose id the queue holds (ready, delayed or leased) raises
        :class:`RestoreRefused` (a ValueError, see :func:`restore_refused`), an id given
        twice ValueError, and nothing is restored.
        """
        ...

    def ack(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str) -> list[int]:
        """Remove leased records given as ``(id, attempts)`` pairs held by ``owner``.

        A pair whose record is gone, not leased by ``owner`` or delivered again
        since (other attempts) is skipped. Returns the ids removed.
        """
        ...

    def release(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str, *,
                not_before: float, max_attempts: int | None, count_attempt: bool = True,
                reason: str = "") -> list[int]:
        """Make leased records ready again at their FIFO position from ``not_before``.

        With ``count_attempt=False`` the delivery is undone (attempts drop by
        one). Records that reached ``max_attempts`` move to the dead-letter
        queue with ``reason`` (``"nacked"`` when empty). Returns the ids released or moved.
        """
        ...

    def expire(self, queue: str, now: float, *, owners: Sequence[str] = (),
               max_attempts: int | None = None) -> int:
        """Release leases that ran out by ``now`` or belong to one of ``owners``.

        Dead-letter rules are those of :meth:`release`. Returns how many.
        """
        ...

    def peek(self, queue: str, n: int, offset: int = 0) -> list[StoredRecord]:
        """Return up to ``n`` ready records in FIFO order after skipping ``offset``.

        Ready records released with a delay are included even before they are
        visible again, as :meth:`counts` counts them among the ready.
        """
        ...

    def counts(self, queue: str) -> Counts:
        """Counts and sizes of a queue, in O(1)."""
        ...

    def owners(self, queue: str) -> dict[str, int]:
        """Lease owners of a queue with the number of records each holds."""
        ...

    def move(self, src: str, dst: str, ids: Sequence[int] | None = None) -> int:
        """Move ready records (all, or those in ``ids``) to the tail of ``dst`` as new records."""
        ...

    def purge(self, queue: str) -> int:
        """Remove every record of a queue, ready or leased; return how many."""
        ...

    def queues(self) -> list[str]:
        """Names of every queue that records were ever stored in (appended, restored,
        moved there or buried there as dead letters), in no set order.

        A queue stays listed once drained or purged. A name that was only read, taken
        from, acked, released, expired or purged, or given an empty batch, is never listed.
        """
        ...

    def get_meta(self, key: str) -> bytes | None:
        """Read a metadata value stored in the file."""
        ...

    def set_meta(self, key: str, value: bytes) -> None:
        """Store a metadata value in the file."""
        ...

    def close(self) -> None:
        """Release the file. Calling it twice is harmless."""
        ...


@runtime_checkable
class SupportsRecordCheck(Protocol):
    """An engine that refuses records above some size: an optional part of the protocol."""

    def check_records(self, queue: str, records: Sequence[bytes]) -> None:
        """Raise, naming the size, when :meth:`Engine.append` would refuse one of
        ``records`` for its size alone; store nothing. A queue checks what it puts here
        first, so that a put whose record waits in a buffer (durability "buffer") or for a
        group commit is refused at once, instead of failing the writes of other puts."""
        ...


@runtime_checkable
class SupportsPeekLeased(Protocol):
    """An engine that can list leased records: an optional part of the protocol."""

    def peek_leased(self, queue: str, n: int, offset: int = 0) -> list[LeasedRecord]:
        """Return up to ``n`` leased records in id (FIFO) order after skipping ``offset``.

        Each comes with its lease owner and expiry. A lease that ran out but was
        not released yet by :meth:`Engine.expire` is still listed. It reads
        in one transaction, through a cursor or a LIMIT, so the memory it
        needs grows with ``offset + n`` at most, never with the queue. ValueError when ``n`` or
        ``offset`` is negative.
        """
        ...


def refuse_nan(where: str, what: str, name: str, value: float) -> None:
    """EngineError when the time ``value`` is NaN, as the SQLite engine refuses one (its
    columns cannot hold it): no comparison orders NaN, so a record or a lease holding it
    would never come due. Call it before changing anything: the message says nothing
    was changed. Infinite times pass. ``where`` names the store, ``what`` the call and
    ``name`` the time in the message."""
    if math.isnan(value):
        raise EngineError(f"{where}: {what} failed: {name} is NaN, not a time; nothing "
                          "was changed")


def due_by(now: float) -> float:
    """The time a take at ``now`` compares a ready record's ``visible_at`` with.

    A record put, or given back at once (an expired lease, a release with ``not_before``
    0 or less), is stored visible from 0 or earlier and waits for no time: a take at a
    negative time, or at -inf, sees it too. So a take before 0 sees what one at 0 sees;
    NaN stays NaN, at which nothing is visible."""
    return 0.0 if now < 0.0 else now


def nothing_visible(where: str, now: float, lease: Lease | None) -> bool:
    """Whether a take at ``now`` sees no record: none is visible at NaN, which is no time.
    EngineError, nothing changed, for a lease ending at NaN: it would never run out."""
    if math.isnan(now):
        return True
    if lease is not None:
        refuse_nan(where, "take", "the lease's end", lease.until)
    return False
