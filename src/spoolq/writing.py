"""How the core writes: encoding in the caller's thread, group commit of records from
many callers in one engine transaction, the buffer of durability "buffer" and its
flusher thread, and taking back a put whose caller gave up.

:class:`Writing` is a part of :class:`spoolq.core.QueueCore`, kept in its own module;
it works on the core's state under the core's locks, as the rest of the core does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

from ._atonce import NoWait, ToWorker, WouldWait, attempt, new_counts
from ._atonce import outcome_unknown as _outcome_unknown
from ._ticketcounts import errors_of, keep_waiting
from .codec import Codec
from .engines import Counts, Engine
from .engines.base import stored_before_failure
from .errors import ClosedError, LockTimeout, QueueShutDown
from .groupcommit import GroupCommit, Ticket, left_after
from .settings import Settings
from .zdict import train_dictionary

__all__ = ["Writing", "new_counts"]

log = logging.getLogger("spoolq")

_EXIT_WAIT = 5.0
"""Seconds :meth:`Writing._flush_at_exit` waits for a queue's lock."""


class Writing:
    """Encoding, group commit, the write buffer and its flusher of one queue handle."""

    # Set up by QueueCore.__init__.
    engine: Engine
    codec: Codec
    settings: Settings
    check_records: Callable[[str, Sequence[bytes]], None] | None
    name: str
    lock: threading.RLock
    group: GroupCommit
    buffered: bool
    closed: bool
    closing: bool
    shut: bool
    counters: dict[str, int]
    _unfinished: int
    on_settled: Callable[[list[Ticket]], None] | None
    _fsync: bool
    _tally: threading.Lock
    _pending_bytes: tuple[int, int]
    _counts: Counts
    _stale: bool
    _flusher: threading.Thread | None
    _flusher_stop: threading.Event
    # Defined by QueueCore.
    _check_open: Callable[[], None]
    _notify: Callable[[], None]
    refresh: Callable[[], Counts]
    _refresh_locked: Callable[..., Counts]
    write_alone: Callable[[list[bytes], list[int]], bool]
    # Where a zstd dictionary is trained when puts are made on an event loop: the worker
    # thread's post (set by the async queue); None: in the thread of the put.
    train_later: Callable[..., None] | None = None
    _training_sent = False
    apart_due = False
    """A write of several callers' records made at once failed (not for a lock): they are
    pending, for a flush that may wait to write them apart (see :meth:`flush`)."""

    @property
    def counts(self) -> Counts:
        """The counts as this handle last knew them (each change makes a new tuple)."""
        return self._counts

    @property
    def stale(self) -> bool:
        """Whether a write whose outcome is unknown left the counts to be read again."""
        return self._stale

    def _recount(self, counts: Counts) -> None:
        """After a take, whose records these counts may lack (another handle's, those of a
        write whose outcome is unknown): read the counts again. If that read fails, keep
        ``counts`` and read again at the next take: the records taken must reach their
        caller, and a get raising now would lose them."""
        self._counts = counts
        self._stale = True
        try:
            self._refresh_locked()
        except Exception as exc:
            log.debug("spoolq: queue %r: reading the counts after a take failed: %s",
                      self.name, exc)

    def _append(self, records: list[bytes], sizes: list[int],
                no_wait: NoWait | None = None) -> None:
        """Write records in one engine call. When it fails with its outcome unknown (a
        lost connection, :class:`Unavailable`: the server may have stored them, or an
        interruption), the counts are marked stale: the next take reads them again (and
        the async queue's qsize() has its worker read them) rather than wait for the poll."""
        try:
            if no_wait is None:
                self.engine.append(self.name, records, sizes, time.time())
            else:
                attempt(no_wait, self.engine.append, self.name, records, sizes, time.time())
        except WouldWait:
            raise
        except BaseException as exc:
            self._unknown_outcome(exc)
            raise

    def _unknown_outcome(self, exc: BaseException) -> None:
        """Mark the counts stale if ``exc``, raised by a write, leaves its outcome unknown."""
        if _outcome_unknown(exc):
            self._stale = True

    def encode(self, items: Iterable[Any]) -> tuple[list[bytes], list[int]]:
        """Encode items in the caller's thread; raises SerializationError, or the engine's
        error for a record too large for it (see ``SupportsRecordCheck``), writes nothing."""
        records, sizes = self.codec.encode_many(items)
        if self.check_records is not None:
            self.check_records(self.name, records)
        return records, sizes

    def encode_one(self, item: Any) -> tuple[list[bytes], list[int]]:
        """:meth:`encode` of one item, without the set-up a batch needs."""
        record, size = self.codec.encode(item)
        if self.check_records is not None:
            self.check_records(self.name, [record])
        return [record], [size]

    def submit(self, records: list[bytes], sizes: list[int], ticket: Ticket) -> int:
        """Queue records for group commit; return how many records are now pending
        (see :meth:`flush_due`). Never waits for a flush in progress."""
        self._check_open()
        with self._tally:
            if self.closing:  # the last flush may have taken the buffer already
                raise ClosedError(f"queue {self.name!r} is closed")
            if self.shut:
                raise QueueShutDown("the queue is shut down")
            pending = self.group.add(records, sizes, ticket)
            self._count_pending(records, sizes, 1)
            self._unfinished += len(records)
        return pending

    def withdraw(self, ticket: Ticket) -> bool:
        """Take back the records of a submit whose caller gave up, if no flush has taken
        them yet: they will not be stored. False when they are beyond reach."""
        with self._tally:
            taken = self.group.withdraw(ticket)
            if taken is None:
                return False
            records, sizes = taken
            self._count_pending(records, sizes, -1)
            # a task_done may have counted them out already: never below 0
            self._unfinished = max(self._unfinished - len(records), 0)
        return True

    def _count_pending(self, records: list[bytes], sizes: list[int], sign: int) -> None:
        """Add (sign 1) or remove (-1) records in the pending bytes; the caller holds
        ``_tally``."""
        stored, raw = self._pending_bytes
        self._pending_bytes = (stored + sign * sum(map(len, records)), raw + sign * sum(sizes))

    def flush_due(self, pending: int) -> bool:
        """Whether ``pending`` records call for a flush now (not merely within the buffer
        interval)."""
        return not self.buffered or pending >= self.settings.flush_items

    def schedules_flush(self, pending: int, added: int) -> bool:
        """Whether the submit that left ``pending`` records, ``added`` of them its own,
        should schedule a flush (rather than join one already scheduled): the first of a
        batch does; with durability "buffer", every submit once a flush is due."""
        if self.buffered:
            return self.flush_due(pending)
        return pending == added

    def _settle_pending(self, records: list[bytes], sizes: list[int], *, lost: bool) -> None:
        """Records of a flush left the pending ones: written, or ``lost`` to an error."""
        with self._tally:
            self._count_pending(records, sizes, -1)
            if lost:
                self._unfinished = max(self._unfinished - len(records), 0)

    def flush(self, no_wait: NoWait | None = None) -> list[Ticket]:
        """Write every pending record in one engine transaction; settle their tickets.

        If the write fails, waiting callers get the error (after their records are
        written apart, see :meth:`_write_apart`, so that one caller's records the
        engine refuses fail no other caller); with durability
        "buffer" the records stay buffered for the next flush instead, and the
        puts waiting for this one (it was due) wait for that one: their items were
        not lost. Then the one ticket returned carries the error, for the caller.
        With ``no_wait`` (the engine's), a write that would wait for another process's
        lock puts the records back, pending, and raises :class:`WouldWait`; one of
        several callers' records that fails otherwise puts them back too, and raises
        :class:`ToWorker`, rather than write them apart one transaction after another:
        a flush without ``no_wait`` (the async queue's worker) writes them apart, and
        until then a flush with ``no_wait`` raises ToWorker at once.
        """
        with self.lock:
            records, sizes, tickets, counts = self._take_batch(no_wait)
            if not records and not tickets:
                return tickets
            error: BaseException | None = None
            errors: list[BaseException | None] | None = None  # each ticket's, once split
            stored = 0  # records stored by a write that failed after its first transaction
            kept = False
            interrupted: BaseException | None = None
            puts = self.counters["puts"]
            try:
                self._check_open()
                self._append(records, sizes, no_wait)
            except BaseException as exc:
                error = exc
                stored = stored_before_failure(exc, len(records))
                if stored:
                    records, sizes, counts = self._drop_stored(records, sizes, counts, stored)
                self._put_back_for_later(no_wait, records, sizes, tickets, counts, exc)
                kept = self.buffered and not self.closing
                if kept:  # a put all of whose records are stored returns now
                    tickets, counts = keep_waiting(self.group, records, sizes, tickets, counts)
                elif (len(counts) > 1 and not self.buffered and not self.closed
                      and not _outcome_unknown(exc) and not isinstance(exc, LockTimeout)):
                    errors, interrupted = self._write_apart(records, sizes, counts, exc)
                else:
                    self._settle_pending(records, sizes, lost=True)
                if not kept:
                    self.group.written(len(records))
            else:
                self._settle_pending(records, sizes, lost=False)
                self._count_put(records, sizes)
                # Counted by the engine's counts now (twice for this moment, never none:
                # a put checking for room must not see them missing).
                self.group.written(len(records))
        written_apart = 0
        if errors is None:
            errors = errors_of(tickets, error, counts)
        else:
            written_apart = sum(n for n, e in zip(counts, errors, strict=True) if e is None)
        self._settle_tickets(tickets, errors)
        if self.counters["puts"] != puts:  # records stored, whatever failed
            self._after_put()
        if error is not None:
            log.error("spoolq: writing %d records to %r failed%s%s", len(records) + stored,
                      self.name, f"; the first {stored} were stored" if stored else "",
                      "; they stay buffered" if kept else
                      f"; {written_apart} of them were written apart" if written_apart else "",
                      exc_info=error)
            if kept:
                report = Ticket()
                report.error, report.done = error, True
                return [report]
        if interrupted is not None:
            raise interrupted
        return tickets

    def _take_batch(self, no_wait: NoWait | None) -> tuple[list[bytes], list[int],
                                                           list[Ticket], list[int]]:
        """The pending records, for :meth:`flush`; with ``no_wait``, :class:`ToWorker`
        (the records still pending) while some are to be written apart."""
        if no_wait is not None and self.apart_due and self.group.pending():
            raise ToWorker("records to be written apart are pending")
        self.apart_due = False
        return self.group.take_batch()

    def _put_back_for_later(self, no_wait: NoWait | None, records: list[bytes],
                            sizes: list[int], tickets: list[Ticket], counts: list[int],
                            exc: BaseException) -> None:
        """For a flush with ``no_wait`` whose write failed with ``exc``: put the records
        not stored back, pending, and raise :class:`WouldWait` where it would have waited
        for another process's lock, or :class:`ToWorker` where it failed otherwise and
        several callers' records are to be written apart, for a flush that may wait.
        Nothing where neither is so."""
        if isinstance(exc, WouldWait):
            self.group.put_back(records, sizes, tickets=tickets, counts=counts)
            raise exc
        if (no_wait is None or len(counts) < 2 or self.buffered or self.closed
                or _outcome_unknown(exc)):
            return
        self.group.put_back(records, sizes, tickets=tickets, counts=counts)
        self.apart_due = True
        raise ToWorker(str(exc)) from exc

    def _drop_stored(self, records: list[bytes], sizes: list[int], counts: list[int],
                     stored: int) -> tuple[list[bytes], list[int], list[int]]:
        """After a write in several transactions failed: its first ``stored`` records are
        stored, count as written and are never written again. Return the others, with how
        many of them each ticket stands for."""
        self._stored(records[:stored], sizes[:stored])
        self.group.written(stored)
        return records[stored:], sizes[stored:], left_after(counts, stored)

    def _settle_tickets(self, tickets: list[Ticket],
                        errors: list[BaseException | None]) -> None:
        for ticket, ticket_error in zip(tickets, errors, strict=True):
            ticket.error = ticket_error
            ticket.done = True
        if self.on_settled is not None:
            self.on_settled(tickets)

    def _write_apart(self, records: list[bytes], sizes: list[int], counts: list[int],
                     error: BaseException) -> tuple[list[BaseException | None],
                                                BaseException | None]:
        """After the write of several callers' records failed with ``error``, write them
        in halves, and the failing half in halves again, so that records the engine
        refuses (too large for a server, say) fail only the caller that put them; return
        each caller's error. When both halves fail, the failure is not one caller's (a
        full disk, a lost connection): every caller of those halves gets its error,
        after three writes rather than one per caller. A write whose outcome is unknown
        (:class:`Unavailable`: the engine may have stored the records) is never made
        again, lest its records be stored twice: its callers get its error, as a put
        written alone would. The caller holds the lock and settles the pending records'
        bytes here.

        A write that fails after storing its first records (see
        :func:`~spoolq.engines.base.stored_before_failure`) has them stored: they are
        never written again, and a caller (a count of 0 here too) whose records are all
        stored gets no error. An interruption (KeyboardInterrupt, SystemExit) is
        returned second, for the flush to raise once every caller is settled."""
        starts = [0]
        for n in counts:
            starts.append(starts[-1] + n)
        ends = starts[1:]
        firsts = starts[:-1]  # each caller's first record not stored yet
        errors: list[BaseException | None] = [error if n else None for n in counts]

        def write(lo: int, hi: int) -> BaseException | None:
            # What is stored of a range is a prefix of it (written by a write that failed
            # part way): the rest begins at its first caller with records left.
            left = [k for k in range(lo, hi) if firsts[k] < ends[k]]
            if not left:
                return None
            a, b = firsts[left[0]], ends[hi - 1]
            try:
                self._append(records[a:b], sizes[a:b])
            except Exception as exc:
                edge = a + stored_before_failure(exc, b - a)
                if edge > a:
                    self._stored(records[a:edge], sizes[a:edge])
                for k in range(lo, hi):
                    firsts[k] = max(firsts[k], min(edge, ends[k]))
                    errors[k] = exc if firsts[k] < ends[k] else None
                return exc
            self._stored(records[a:b], sizes[a:b])
            for k in range(lo, hi):
                firsts[k], errors[k] = ends[k], None
            return None

        lo, hi = 0, len(counts)
        interrupted: BaseException | None = None
        try:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                first, second = write(lo, mid), write(mid, hi)
                if (first is None) == (second is None):
                    break  # both written, or both failed: the failure is not one caller's
                failed = first if first is not None else second
                if failed is not None and _outcome_unknown(failed):
                    break  # the half that failed may be stored: never written again
                lo, hi = (lo, mid) if first is not None else (mid, hi)
        except BaseException as stop:
            # Interrupted (KeyboardInterrupt, SystemExit): whoever's records are not known
            # to be stored fails with it; none may return as if its put were stored.
            for k in range(len(counts)):
                if firsts[k] < ends[k]:
                    errors[k] = stop
            interrupted = stop
        for k, ticket_error in enumerate(errors):
            if ticket_error is not None:
                self._settle_pending(records[firsts[k]:ends[k]], sizes[firsts[k]:ends[k]],
                                     lost=True)
        return errors, interrupted

    def _stored(self, records: list[bytes], sizes: list[int]) -> None:
        """Pending records a flush took are stored: count them as put."""
        self._settle_pending(records, sizes, lost=False)
        self._count_put(records, sizes)

    def _train(self) -> None:
        """Train the zstd dictionary; a failure is logged and never fails a put."""
        try:
            with self.lock:
                train_dictionary(self.engine, self.name, self.codec)
        except Exception:
            log.exception("spoolq: queue %r: training a zstd dictionary failed", self.name)

    def _count_put(self, records: list[bytes], sizes: list[int]) -> None:
        ready, leased, stored, raw = self._counts
        n = len(records)
        if n == 1:  # one put at a time: no sums to set up
            stored += len(records[0])
            raw += sizes[0]
        else:
            stored += sum(map(len, records))
            raw += sum(sizes)
        self._counts = new_counts(ready + n, leased, stored, raw)
        self.counters["puts"] += n

    def _after_put(self) -> None:
        self._notify()
        if self.codec.training_due:
            if self.train_later is None:
                self._train()
            elif not self._training_sent:
                self._training_sent = True
                self.train_later(self._train_sent)

    def _train_sent(self) -> None:
        try:
            self._train()
        finally:
            self._training_sent = False

    def put_now(self, records: list[bytes], sizes: list[int]) -> None:
        """Write records from the calling thread (group-committed with any pending);
        with durability "buffer", only once ``flush_items`` are pending. Raises
        QueueShutDown once :attr:`shut` is set."""
        if not self.buffered and self.write_alone(records, sizes):
            return
        ticket = Ticket()
        if not self.flush_due(self.submit(records, sizes, ticket)):
            return
        if self._fsync:
            # Slow commits: waiters are woken together (see GroupCommit.wait_settled).
            # With "commit", waking them all costs more than it saves (15% fewer puts/s
            # with 16 threads), so they queue on the core lock instead.
            self.group.wait_settled(ticket, partial(self._flush_for, ticket))
        else:
            self._flush_for(ticket)
        if ticket.error is not None:
            raise ticket.error

    def _put_alone(self, records: list[bytes], sizes: list[int]) -> None:
        """Records :meth:`put_now` wrote at once are stored: count them (none: nothing)."""
        if records:
            with self._tally:
                self._unfinished += len(records)
            self._count_put(records, sizes)

    def _flush_for(self, ticket: Ticket) -> None:
        with self.lock:
            if not ticket.done:
                self.flush()

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the records the parent had pending (the parent's
        buffer of durability "buffer" and the puts its threads were writing; the parent
        writes them, and written by the child too they were stored twice), and give a
        buffer a flusher thread of this process, as threads do not survive a fork."""
        records, sizes = self.group.after_fork()
        self._tally = threading.Lock()
        # Not taken from unfinished: the parent writes them, so they come to the queue.
        self._count_pending(records, sizes, -1)
        if self._flusher is not None and not self.closed:
            self._flusher_stop = threading.Event()
            self._start_flusher()

    def _flush_at_exit(self) -> None:
        """When the interpreter exits, write the buffer of a queue left open: its flusher
        thread stops with it, and only a killed process may lose a buffer."""
        if not self.buffered or self.closed:
            return
        # Not for ever: a thread of the exiting program may hold the lock and be stuck.
        # Pending records are looked at under the lock: a flush under way (the close of a
        # queue collected without one, on its worker thread) has taken them from the
        # buffer but not written them yet, and that thread ends with the interpreter.
        if not self.lock.acquire(timeout=_EXIT_WAIT):
            log.error("spoolq: queue %r: its buffer of %d puts was not written at exit",
                      self.name, self.group.pending())
            return
        try:
            if not self.closed and self.group.pending():
                self.flush()  # logs a failure
        except Exception:
            log.exception("spoolq: queue %r: writing its buffer at exit failed", self.name)
        finally:
            self.lock.release()

    def _start_flusher(self) -> None:
        def run(core_ref: Writing = self) -> None:
            while not core_ref._flusher_stop.wait(core_ref.settings.flush_interval):
                if core_ref.group.pending():
                    core_ref.flush()

        self._flusher = threading.Thread(target=run, name=f"spoolq-flush-{self.name}",
                                         daemon=True)
        self._flusher.start()

