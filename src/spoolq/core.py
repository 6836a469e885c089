"""The core shared by the sync and async queues.

It owns the engine, the codec, group commit, leases and the counts behind
``qsize()`` and ``stats``. It never waits for items: the façades do that, each
with its own primitives. Every method is thread-safe; engine calls are
serialized by one lock.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._atonce import AtOnce, Later, ToWorker
from ._closecut import CloseCut
from ._corehooks import CORES, after_fork_in_child, flush_at_exit
from ._freshcounts import FreshCounts
from ._holdings import UNWRITTEN, Holding, Holdings
from ._reaping import Reaping
from ._writetake import WriteTake
from .codec import Codec
from .decoding import NO_ITEM, Decoding
from .engines import (
    Counts,
    Engine,
    Lease,
    StoredRecord,
    SupportsRecordCheck,
    WaitCancel,
    dead_queue_name,
    open_engine,
)
from .errors import (
    ClosedError,
    ConfigurationError,
    CorruptError,
    SerializationError,
    Unavailable,
)
from .groupcommit import GroupCommit, Ticket
from .message import Message, Taken, messages_for
from .owners import new_owner
from .settings import Settings, stored_codec
from .settle import Settling
from .writing import Writing

__all__ = ["NO_ITEM", "UNWRITTEN", "Holding", "QueueCore"]

log = logging.getLogger("spoolq")
_LOCK_GRACE = 0.5  # seconds past a get's deadline it waits for the lock to read the counts
_UNDECODABLE = (CorruptError, SerializationError, ConfigurationError)
_LONG_POLL = 5.0  # seconds one wait_ready call may block; shutdown cancels it sooner
_DEAD_REFRESH = 1.0  # seconds between re-reads of the dead-letter count while polling
_PAST_LIMIT = "max_attempts reached"
"""The reason of a record leased past max_attempts after another handle gave it back."""


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=after_fork_in_child)
atexit.register(flush_at_exit)


@functools.cache
def _takes_cancel(wait_ready: Callable[..., Any]) -> bool:
    """Whether an engine's wait_ready (the function, not a bound method: the cache would
    keep the engine alive) takes a WaitCancel; engines written before it was added take
    only the queue and the timeout."""
    try:
        return "cancel" in inspect.signature(wait_ready).parameters
    except (TypeError, ValueError):
        return False


class QueueCore(AtOnce, WriteTake, Holdings, Writing, Settling, Decoding, Reaping,
                FreshCounts, CloseCut):
    """Engine + codec + counts of one named queue, used by both façades."""

    def __init__(self, engine: Engine, codec: Codec, settings: Settings) -> None:
        self.engine = engine
        self.codec = codec
        self.settings = settings
        self.check_records = engine.check_records if isinstance(engine, SupportsRecordCheck) \
            else None
        self.buffered = settings.durability == "buffer"
        self.read_only = bool(getattr(engine, "read_only", False))
        """An engine opened read-only: opening, reaping and closing write nothing."""
        self._fsync = settings.durability == "fsync"
        self.name = settings.name
        self.dead_name = dead_queue_name(settings.name)
        self.owner = new_owner()
        self.owners = {self.owner}
        """The owner names this handle has leased under: a new one in a forked child,
        which can still settle what the parent leased before the fork."""
        CORES.add(self)
        self.lock = threading.RLock()
        self.group = GroupCommit()
        self.closed = False
        self.closing = False
        """Set (under ``_tally``) when close() starts its last flush: submits are refused."""
        self.shut = False
        """Set by :meth:`shut_down`: puts raise QueueShutDown."""
        self._counts = Counts(0, 0, 0, 0)
        self._stale = False  # see Writing._append
        self._dead = 0
        self._last_dead_refresh = 0.0
        # unfinished and _pending_bytes change under _tally, never held across an engine
        # call: a put on the event loop must not wait while the worker thread commits.
        self._tally = threading.Lock()
        self._pending_bytes = (0, 0)
        self.counters = {"puts": 0, "gets": 0, "acks": 0, "nacks": 0, "redelivered": 0}
        self._unfinished = 0
        self._task_dones = 0
        self._visible_at: list[float] = []  # see Settling.next_visible
        self._visible_set: set[float] = set()
        self._cleared = False  # see Settling._finished
        self._next_reap = 0.0
        self._next_owner_check = 0.0
        self._last_refresh = 0.0
        self.counts_due_at = 0.0
        """``time.monotonic()`` when the poll interval since the last read of the counts ends."""
        self._flusher: threading.Thread | None = None
        self._flusher_stop = threading.Event()
        self._holdings: set[Holding] = set()  # changed under self.lock
        self._holding_lock = threading.Lock()  # and under this one where close() meets hand_out
        self.listeners: list[Callable[[], None]] = []
        self.on_settled: Callable[[list[Ticket]], None] | None = None
        """Called (on the flushing thread) with each flushed batch of tickets."""

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, engine: str | Engine | None,
             serializer: object, compressor: object, settings: Settings,
             engine_options: dict[str, Any] | None = None) -> QueueCore:
        """Open (or create) the queue; reap leases of dead processes; load the counts.

        An engine opened read-only (its ``read_only`` attribute) is only read: nothing
        is stored and no lease is reaped."""
        eng = open_engine(path, engine, durability=settings.durability, options=engine_options)
        user = next((c.name for c in list(CORES) if c.engine is eng and not c.closed), None)
        if user is not None:  # it closes the engine with itself: refused, not closed here
            raise ConfigurationError(f"this engine instance serves queue {user!r}, which "
                                     "closes it with itself: pass each queue its own")
        try:
            read_only = bool(getattr(eng, "read_only", False))
            codec = stored_codec(eng, settings, serializer, compressor, store=not read_only)
            core = cls(eng, codec, settings)
            with core.lock:
                if not read_only:
                    eng.expire(core.name, time.time(), owners=core._dead_owners(),
                               max_attempts=settings.max_attempts)
                core._refresh_locked()
                core._unfinished = core._counts.ready + core._counts.leased
        except BaseException:
            eng.close()
            raise
        if core.buffered:
            core._start_flusher()
        return core

    # ---- counts -------------------------------------------------------------------------

    def _refresh_locked(self, dead: bool = True) -> Counts:
        counts = self._counts = self.engine.counts(self.name)
        self._last_refresh = time.monotonic()
        self.counts_due_at = self._last_refresh + self.settings.poll_interval
        self._stale = False
        self._cleared = False
        if not counts.ready and not counts.leased:
            self._nothing_left()
        if dead:
            self._dead = self.engine.counts(self.dead_name).ready
            self._last_dead_refresh = self._last_refresh
        return counts

    def refresh(self, deadline: float | None = None) -> Counts:
        """Re-read the counts from the file (picks up other processes' work) and
        return expired leases to the queue. The dead-letter count, which only
        changes when items die, is re-read at most once a second here.

        A blocked get passes its ``deadline`` (``time.monotonic()``): an engine that can
        bound its calls by one (the remote engine, when its server stalls) raises
        :class:`Unavailable` soon after it rather than at its own timeout. If another
        call of this handle holds the lock past the deadline (waiting for that stalled
        server, say), the counts are left as they were."""
        bound = getattr(self.engine, "call_deadline", None)
        if deadline is None or bound is None:
            return self._refresh()
        with bound(deadline):
            return self._refresh(deadline + _LOCK_GRACE)

    def _refresh(self, lock_by: float | None = None) -> Counts:
        if lock_by is None:
            self.lock.acquire()
        elif not self.lock.acquire(timeout=min(max(lock_by - time.monotonic(), 0.0),
                                               threading.TIMEOUT_MAX)):
            return self._counts
        try:
            self._check_open()
            self._stale = False  # read once: if this read fails, the poll reads them later
            self._reap_locked(time.time())
            return self._refresh_locked(
                dead=time.monotonic() - self._last_dead_refresh >= _DEAD_REFRESH)
        finally:
            self.lock.release()

    def refresh_due(self) -> bool:
        """Whether the poll interval has passed since the counts were last read, or a
        write whose outcome is unknown left them to be read again."""
        return self._stale or time.monotonic() >= self.counts_due_at

    @property
    def can_wait_ready(self) -> bool:
        """Whether the engine can block until the queue may have items (long-poll)."""
        return hasattr(self.engine, "wait_ready")

    def wait_ready(self, deadline: float | None,
                   cancel: WaitCancel | None = None) -> bool | None:
        """Block until the engine says items may be ready, ``deadline`` (monotonic) passes,
        a lease may have expired or ``cancel`` is cancelled; no lock is held. None when
        the deadline has passed."""
        limit = self._reap_interval() if self._counts.leased else _LONG_POLL
        timeout = limit if deadline is None else min(deadline - time.monotonic(), limit)
        if timeout <= 0:
            return None
        wait = self.engine.wait_ready  # type: ignore[attr-defined]
        if cancel is None or not _takes_cancel(getattr(wait, "__func__", wait)):
            return bool(wait(self.name, timeout))
        return bool(wait(self.name, timeout, cancel))

    def cancel_waits(self) -> None:
        """End every wait_ready in progress (on shutdown and close)."""
        cancel = getattr(self.engine, "cancel_waits", None)
        if cancel is not None:
            cancel()

    def ready_hint(self) -> int:
        """Ready items as this handle last knew them, including unflushed buffered puts."""
        return self._counts.ready + self.group.unwritten()

    def stats(self) -> dict[str, Any]:
        counts = self._counts
        pend_stored, pend_raw = self._pending_bytes
        raw = counts.raw_bytes + pend_raw
        stored = counts.stored_bytes + pend_stored
        return {
            "count": self.ready_hint(),
            "leased": counts.leased,
            "dead": self._dead,
            "raw_size_bytes": raw,
            "compressed_size_bytes": stored,
            "compression_ratio_pct": None if raw == 0 else round((1 - stored / raw) * 100, 2),
            **self.counters,
            "unfinished": self.unfinished,
            "engine": self.engine.name,
            "serializer": self.codec.serializer_name,
            "compressor": self.codec.compressor_name,
            "durability": self.settings.durability,
        }

    def _check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"queue {self.name!r} is closed")

    def _notify(self) -> None:
        for listener in self.listeners:
            listener()

    # ---- taking -------------------------------------------------------------------------

    def take(self, n: int, ttl: float | None, *, fill: bool = False, buffered: bool = True,
             holding: Holding | None = None, deadline: float | None = None) -> list[Taken]:
        """Remove (ttl None) or lease up to n ready records and decode them; never waits.

        With durability "buffer", unflushed puts may be handed out from memory (see
        :meth:`_buffer_serves`) unless ``buffered`` is false. ``fill`` says the caller
        waits for n records in all, holding what it took: then that happens only when
        the buffer makes up all n, so that records given back later never come after
        records written in the meantime. A ``holding`` says the same, and gets the
        records the caller keeps while it waits before the lock is let go, so that
        close() finds them (see :meth:`hand_out`).

        A record that cannot be decoded (damaged, or written by a codec this
        queue does not have) is moved to the dead letters with the reason, and
        logged, rather than handed out or lost. A blocked get's ``deadline`` bounds the
        engine's connecting again first (:class:`Unavailable`, nothing taken).
        """
        if deadline is not None and (bound := getattr(self.engine, "call_deadline", None)):
            with bound(deadline, replies=False):
                return self.take(n, ttl, fill=fill, buffered=buffered, holding=holding)
        with self.lock:
            recs = self._take_locked(n, ttl, buffered, fill or holding is not None)
            if ttl is not None and self.settings.max_attempts is not None:
                recs = self._within_max_attempts(recs, n, ttl)
            if holding is not None and (kept := self._keep(recs, n, ttl, holding)) is not None:
                return kept
        return self._decode_taken(recs, ttl is not None)

    def take_item(self, timeout: float | None) -> Any:
        """:meth:`take` of one record, removed, for a get: its item alone, or NO_ITEM when
        none was ready (or the one taken went to the dead letters). A blocked get's
        ``timeout`` (seconds) gives the deadline that bounds the engine's connecting."""
        if timeout is not None and getattr(self.engine, "call_deadline", None):
            taken = self.take(1, None, deadline=time.monotonic() + timeout)
            return taken[0][1] if taken else NO_ITEM
        with self.lock:
            recs = self._take_locked(1, None, True, False)
        if len(recs) == 1:
            return self.decode_item(recs[0])
        taken = self._decode_taken(recs, False)  # none: nothing was ready
        return taken[0][1] if taken else NO_ITEM

    def _keep(self, recs: list[StoredRecord], n: int, ttl: float | None,
              holding: Holding | None, later: Later | None = None) -> list[Taken] | None:
        """For a caller that waits for n records in all, holding what it took: decode
        ``recs`` and keep them in ``holding`` (under the lock). None: nothing to keep.
        ``later``: as for :meth:`_decode_taken`."""
        if holding is not None and recs and (holding.taken or len(recs) < n):
            taken = self._decode_taken(recs, ttl is not None, later)
            if taken:  # none when every record went to the dead letters
                holding.taken += taken
                self._holdings.add(holding)
            return taken
        return None

    def _take_locked(self, n: int, ttl: float | None, buffered: bool,
                     fill: bool, reap: bool = True) -> list[StoredRecord]:
        """Without ``reap`` (a take made at once), :class:`ToWorker` where expired leases
        are to be looked for first, having taken nothing."""
        if self.closed:
            self._check_open()
        pending = self.group.pending()
        if pending:
            if ttl is None and self.buffered and buffered and (not fill or pending >= n):
                self._refresh_locked(dead=False)
                if self._buffer_serves():
                    return self._take_from_buffer(n)
            if (recs := self._write_take_or_flush(n, ttl)) is not None:
                return recs  # the pending records written and taken in one transaction
        now = time.time()
        if self._counts.leased:  # only leases can expire: spare the call when none are out
            if not reap and self.reap_due():
                raise ToWorker("expired leases are to be looked for first")
            self._reap_locked(now)
        lease = None if ttl is None else Lease(self.owner, now + ttl)
        recs = self.engine.take(self.name, n, now, lease)
        self._count_taken(recs, lease is None)
        return recs

    def _within_max_attempts(self, recs: list[StoredRecord], n: int,
                             ttl: float) -> list[StoredRecord]:
        """The leased records not past max_attempts. A handle without it (or with a larger
        one) gives back leases that ran out, or whose process died, after the last delivery
        this one allows: such a record goes to the dead letters instead of a delivery too
        many, and the take goes on with the records behind it."""
        limit = self.settings.max_attempts
        assert limit is not None
        kept: list[StoredRecord] = []
        while True:
            over = [(r.id, r.attempts) for r in recs if r.attempts > limit]
            kept += [r for r in recs if r.attempts <= limit]
            if not over:
                return kept
            log.warning("spoolq: queue %r: %d record(s) delivered max_attempts (%d) times "
                        "already moved to %r", self.name, len(over), limit, self.dead_name)
            self.engine.release(self.name, over, self.owner, not_before=0.0,
                                max_attempts=limit, reason=_PAST_LIMIT)
            self._refresh_locked()
            self._finished(len(over))
            if len(kept) >= n:
                return kept
            recs = self._take_locked(n - len(kept), ttl, False, False)

    def _buffer_serves(self) -> bool:
        """Whether the next get may take this handle's oldest unflushed put: the file has
        no ready and no leased record (the caller has just read its counts). Buffered
        records then come next in FIFO order, so they go to the consumer without being
        written at all: a read of the counts instead of two write transactions."""
        ready, leased, _, _ = self._counts
        return not ready and not leased and self.group.pending() > 0

    def _take_from_buffer(self, n: int) -> list[StoredRecord]:
        records, sizes, tickets = self.group.take_front(n)
        self._settle_pending(records, sizes, lost=False)
        self._settle(tickets)  # every record they stood for went to a consumer
        k = len(records)
        self.counters["puts"] += k
        self.counters["gets"] += k
        now = time.time()
        return [StoredRecord(UNWRITTEN, data, size, 0, now) for data, size in
                zip(records, sizes, strict=True)]

    def _settle(self, tickets: list[Ticket]) -> None:
        """Settle, without an error, tickets whose records no flush will write."""
        for ticket in tickets:
            ticket.done = True
        if tickets and self.on_settled is not None:
            self.on_settled(tickets)

    @staticmethod
    def items(taken: Sequence[Taken]) -> list[Any]:
        return [item for _rec, item in taken]

    def messages(self, taken: Sequence[Taken]) -> list[Message[Any]]:
        return messages_for(taken, self.name, self.owner)

    def peek(self, n: int, offset: int = 0, *, dead: bool = False) -> list[Any]:
        with self.lock:
            self._check_open()
            if self.group.pending():
                self.flush()
            recs = self.engine.peek(self.dead_name if dead else self.name, n, offset)
        items = []
        for at, rec in enumerate(recs, offset):
            try:
                items.append(self._decode_one(rec))
            except _UNDECODABLE as exc:
                kind = next(cls for cls in _UNDECODABLE if isinstance(exc, cls))
                raise kind(f"peek: the record at offset {at} (id {rec.id}) cannot be decoded "
                           f"({exc}); peek(offset={at + 1}) looks past it") from exc
        return items

    def _give_back_leases(self) -> None:
        try:
            self.engine.expire(self.name, time.time(), owners=[self.owner],
                               max_attempts=self.settings.max_attempts)
        except Unavailable as exc:
            # They come back without it: when they run out, or (on a server) as soon as
            # the connection that leased them is gone.
            log.warning("spoolq: queue %r: could not give back %d lease(s) on close: %s",
                        self.name, self._counts.leased, exc)
            return
        self._refresh_locked()  # stats after close show the leases given back

    def close(self, until: float | None = None) -> None:
        """Flush buffered puts, release this handle's leases and close the engine. Leases
        that an engine out of reach cannot take back are logged, not raised; buffered
        puts that cannot be written raise the engine's error once the handle is closed.
        With ``until`` (``time.monotonic()``), a call of another thread still running
        then is cut by closing an engine that can cut it (``cuts_running_calls``, the
        remote one: its server gives back the leases of the connection cut)."""
        if self.closed:
            return
        self.cancel_waits()
        if self.held_here():  # a signal handler's, inside a call of this thread
            self.shut_down(wait=False)
            self.close_later()
            return
        self._flusher_stop.set()
        if self._flusher is not None:
            self._flusher.join()
        if not self._lock_until(until if self.can_cut() else None):
            self.cut_running()  # the call holding the lock raises ClosedError
            self.lock.acquire()
        cut = self.cut
        try:
            if self.closed:
                return  # closed by another thread while this one waited for the lock
            with self._tally:
                self.closing = True  # a put submitted from now on would miss the flush
            lost: BaseException | None = None
            try:
                if not cut:  # else the records held stay with the calls holding them
                    self._reclaim_holdings()  # first: records from the buffer go back
                tickets = self.flush()
                if self.buffered:  # their puts returned: no one else hears of the loss
                    lost = next((t.error for t in tickets if t.error is not None), None)
                if self._counts.leased and not self.read_only and not cut:
                    self._give_back_leases()
            finally:
                self.closed = True
                self.engine.close()
        finally:
            self.lock.release()
        if lost is not None:
            raise lost
