"""Writes and takes made at once, in the caller's thread, when nothing else of the handle
is under way and the engine need not wait for another process: the async queue makes them
on its event loop with an engine whose calls are brief (SQLite without an fsync per
commit), where handing each call to its worker thread would cost several times the call.

:class:`AtOnce` is a part of :class:`spoolq.core.QueueCore`, kept in its own module; it
works on the core's state under the core's lock, as the rest of the core does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from ._holdings import Holding
from .decoding import DictionaryElsewhere
from .engines import Counts, Engine, StoredRecord
from .engines.base import stored_before_failure
from .errors import LockTimeout, QueueShutDown, Unavailable
from .groupcommit import GroupCommit, Ticket
from .message import Taken
from .settings import Settings

__all__ = ["LOOP_BATCH", "AtOnce", "NoWait", "ToWorker", "Undecoded", "WouldWait", "attempt",
           "new_counts", "outcome_unknown"]

LOOP_BATCH = 256
"""The most records the async queue writes or takes in one call on its event loop."""

R = TypeVar("R")

NoWait = Callable[[], AbstractContextManager[None]]
"""An engine's ``no_wait``: within it, a call that would wait for another connection's
lock raises :class:`LockTimeout` at once, having changed nothing."""


Later = Callable[..., None]
"""Runs ``fn(*args)`` later, on another thread: a worker thread's ``post``."""


class WouldWait(LockTimeout):
    """An engine call made within the engine's ``no_wait`` would have waited for another
    process's lock; it changed nothing."""


class ToWorker(WouldWait):
    """A call made at once met work that may take long (a reap of expired leases that fell
    due, a batch the engine refused, to be written apart): it did none of that work, and
    the thread that may wait (the async queue's worker) is to make the call instead."""


class Undecoded:
    """Records :meth:`AtOnce.take_alone` took that need a zstd dictionary this handle has
    not loaded yet: reading the file's dictionaries is left to another thread, which
    decodes them with :meth:`AtOnce.decode_undecoded` (or gives them back)."""

    __slots__ = ("holding", "n", "recs", "ttl")

    def __init__(self, recs: list[StoredRecord], n: int, ttl: float | None,
                 holding: Holding | None) -> None:
        self.recs, self.n, self.ttl, self.holding = recs, n, ttl, holding


def new_counts(ready: int, leased: int, stored: int, raw: int) -> Counts:
    """``Counts(...)`` without the generated ``__new__``, which costs twice as much on the
    put and get paths. Each change makes a new tuple, so a reader without the lock (stats)
    always sees one consistent set of counts."""
    return tuple.__new__(Counts, (ready, leased, stored, raw))


def outcome_unknown(exc: BaseException) -> bool:
    """Whether a write that raised ``exc`` may have stored its records all the same: a
    connection lost before the reply came (:class:`Unavailable`), or an interruption."""
    return isinstance(exc, Unavailable) or not isinstance(exc, Exception)


def attempt(no_wait: NoWait, call: Callable[..., R], *args: Any) -> R:
    """``call(*args)`` within ``no_wait()``; :class:`WouldWait` where it would wait."""
    try:
        with no_wait():
            return call(*args)
    except WouldWait:
        raise
    except LockTimeout as exc:
        raise WouldWait(str(exc)) from exc


class AtOnce:
    """Writes and takes of one queue handle that never wait for another thread or process."""

    # Set up by QueueCore.__init__.
    engine: Engine
    name: str
    settings: Settings
    lock: threading.RLock
    group: GroupCommit
    shut: bool
    _unfinished: int
    _tally: threading.Lock
    # Defined by QueueCore and its other parts.
    _check_open: Callable[[], None]
    _notify: Callable[[], None]
    _after_put: Callable[[], None]
    _unknown_outcome: Callable[[BaseException], None]
    _count_put: Callable[[list[bytes], list[int]], None]
    _put_alone: Callable[[list[bytes], list[int]], None]
    _take_locked: Callable[[int, float | None, bool, bool, bool], list[StoredRecord]]
    _keep: Callable[..., list[Taken] | None]
    _decode_taken: Callable[..., list[Taken]]
    flush: Callable[..., list[Ticket]]
    _write_take_or_flush: Callable[..., list[StoredRecord] | None]
    reap_due: Callable[[], bool]
    apart_due: bool

    def write_alone(self, records: list[bytes], sizes: list[int],
                    no_wait: NoWait | None = None) -> bool:
        """Write records at once, in their own transaction, when nobody else is writing:
        no other thread holds the lock and no group commit is pending. False, with
        nothing written, when somebody is. With ``no_wait`` (the engine's), also False
        when the engine would wait for another process's lock. Raises QueueShutDown once
        :attr:`shut` is set."""
        if not self.lock.acquire(blocking=False):
            return False
        stored = 0
        try:
            if self.group.pending():
                return False
            self._check_open()
            if self.shut:
                raise QueueShutDown("the queue is shut down")
            try:  # not _append: a call less for every put
                if no_wait is None:
                    self.engine.append(self.name, records, sizes, time.time())
                else:
                    attempt(no_wait, self.engine.append, self.name, records, sizes,
                            time.time())
            except WouldWait:
                return False
            except BaseException as exc:
                self._unknown_outcome(exc)
                # Written in several transactions, the first of which are stored: they
                # are in the queue.
                stored = stored_before_failure(exc, len(records))
                self._put_alone(records[:stored], sizes[:stored])
                raise
            with self._tally:
                self._unfinished += len(records)
            self._count_put(records, sizes)
        finally:
            self.lock.release()
            if stored:
                self._notify()
        self._after_put()
        return True

    def take_alone(self, n: int, ttl: float | None, holding: Holding | None,
                   no_wait: NoWait, later: Later) -> list[Taken] | Undecoded | None:
        """:meth:`~spoolq.core.QueueCore.take` made at once, when nobody else is writing or
        taking: no other thread holds the lock and the engine need not wait for another
        process's lock (``no_wait``, the engine's); records pending for a group commit
        (at most LOOP_BATCH) are written first, as a take does (in the take's
        transaction where the engine can, see :mod:`spoolq._writetake`). None, with nothing taken,
        when somebody is, when expired leases are to be looked for first, and for a lease
        of a queue with ``max_attempts`` (which may write again after the take). None
        too, with the pending records still pending, where their write failed and they
        are to be written apart (see :meth:`~spoolq.writing.Writing.flush`); and with the
        pending records written but nothing taken where expired leases are to be looked
        for by then: the take never reaps. A record that cannot be decoded is set aside
        through ``later`` (say a worker thread's ``post``), as that may wait; records
        that need a zstd dictionary this handle has not loaded are returned undecoded
        (:class:`Undecoded`), for a thread that may wait to read the file's."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            pending = self.group.pending()
            if pending > LOOP_BATCH or (pending and self.apart_due) or self.reap_due() or (
                    ttl is not None and self.settings.max_attempts is not None):
                return None
            try:
                recs = None
                if pending:
                    recs = self._write_take_or_flush(n, ttl, no_wait)
                if recs is None:
                    recs = attempt(no_wait, self._take_locked, n, ttl, True,
                                   holding is not None, False)
            except WouldWait:
                return None
            try:
                kept = self._keep(recs, n, ttl, holding, later)
                return self._decode_taken(recs, ttl is not None, later) if kept is None \
                    else kept
            except DictionaryElsewhere:
                return Undecoded(recs, n, ttl, holding)
        finally:
            self.lock.release()

    def decode_undecoded(self, undecoded: Undecoded) -> list[Taken]:
        """Decode, on a thread that may wait, the records :meth:`take_alone` returned
        undecoded, reading the file's zstd dictionaries first; as the take would have."""
        recs, ttl, holding = undecoded.recs, undecoded.ttl, undecoded.holding
        with self.lock:
            kept = self._keep(recs, undecoded.n, ttl, holding)
        return self._decode_taken(recs, ttl is not None) if kept is None else kept

    def flush_alone(self, no_wait: NoWait) -> bool:
        """:meth:`~spoolq.writing.Writing.flush` made at once: False, with the records
        still pending, when another thread holds the lock or the engine would wait for
        another process's lock (``no_wait``, the engine's)."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            self.flush(no_wait)
        except WouldWait:
            return False  # put back, pending
        finally:
            self.lock.release()
        return True
