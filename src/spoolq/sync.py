"""``SyncQueue``: the thread-safe queue with ``queue.Queue`` signatures.

This module holds the public calls, their checks and their wait loops, and opening and
closing. How the queue sleeps and is woken is :class:`spoolq._syncwait.SyncWaiting`, how
a put waits for room :class:`spoolq._syncput.SyncPutting`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._closecut import HANDLER_LOCK_WAIT
from ._outage import Outage
from ._syncput import SyncPutting
from ._syncwait import Place
from ._views import QueueViews
from .core import NO_ITEM, Holding, QueueCore
from .engines import Engine, WaitCancel
from .engines.base import take_may_have_removed
from .errors import ClosedError, Empty, QueueShutDown, Unavailable
from .message import Message, log_failed_nack
from .settings import (
    Settings,
    check_codecs,
    check_count,
    check_ids,
    check_seconds,
    resolve_target,
)

__all__ = ["SyncQueue"]

T = TypeVar("T")
_CLOSE_WAIT = 10.0
"""Seconds close() waits for calls blocked in other threads before it closes anyway."""


class SyncQueue(QueueViews, SyncPutting, Generic[T]):
    """A durable FIFO queue for threads, with the signatures of ``queue.Queue``.

    Create it with :meth:`create`; close it with :meth:`close` or ``with``.
    Every returned ``put`` is durable at the queue's durability level. ``qsize``,
    ``empty`` and ``full`` never block and are approximate when other processes
    share the file.
    """

    def __init__(self, core: QueueCore) -> None:
        self._core = core
        self._mutex = mutex = threading.Lock()
        self._cond = threading.Condition(mutex)
        self._all_done = threading.Condition(mutex)
        self._shutdown = False
        self._immediate = False
        self._closed = False
        # Calls that close() lets finish before it closes the file: takes, and puts that
        # wait for room (they re-read the counts from the file while they wait).
        self._calls: set[Place] = set()
        self._sleepers = 0  # threads about to sleep or asleep (see _wait): 0, none to wake
        self._asleep_in_line = 0  # calls in line asleep on their own condition, not notified
        self._long_polls: set[WaitCancel] = set()  # gets blocked in the engine's wait_ready
        self._line: list[Place] = []  # blocking takes, in arrival order: see _share
        self._put_line: list[Place] = []  # blocking puts waiting for room: see _put_turn
        self._outage = Outage()
        # Room reserved (under self._cond) by puts of a queue with maxsize that are being
        # written, and how many such puts started and ended: the check for room and the
        # write are one step for the threads of this handle.
        self._reserved = 0
        self._puts_started = 0
        self._puts_ended = 0
        core.listeners.append(self._wake)

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, name: str | None = None,
               engine: str | Engine | None = None, maxsize: int = 0,
               serializer: object = None, compressor: object = None,
               durability: str = "commit", flush_items: int = 1000,
               flush_interval: float = 1.0, max_attempts: int | None = None,
               poll_interval: float = 0.05, compress_threshold: int = 128,
               engine_options: dict[str, Any] | None = None,
               token: str | None = None) -> SyncQueue[Any]:
        """Open the queue ``name`` in ``path`` (created if missing).

        ``engine`` is picked from the path unless given (a name or an engine
        instance). ``serializer`` and ``compressor`` default to what the file
        stores, or ``"cbor"`` and ``"zstd"`` for a new queue; a serializer
        other than the stored one raises :class:`ConfigurationError`.
        ``durability`` is ``"fsync"``, ``"commit"`` or ``"buffer"`` (see the
        README). ``max_attempts`` moves an item delivered that many times to
        the dead letters. ``poll_interval`` is how often a waiting call looks
        for items put by other processes.

        Raises :class:`ConfigurationError` for bad settings and
        :class:`FormatError` / :class:`CorruptError` for a file that is not a
        sound spoolq queue.
        """
        name, engine_options = resolve_target(path, name, engine, token, engine_options)
        settings = Settings(name=name, maxsize=maxsize, durability=durability,
                            flush_items=flush_items, flush_interval=flush_interval,
                            max_attempts=max_attempts, poll_interval=poll_interval,
                            compress_threshold=compress_threshold)
        check_codecs(serializer, compressor)
        return cls(QueueCore.open(path, engine=engine, serializer=serializer,
                                  compressor=compressor, settings=settings,
                                  engine_options=engine_options))

    # ---- checks -------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"queue {self._core.name!r} is closed")

    # ---- putting ------------------------------------------------------------------------

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        """Put ``item``; with ``maxsize`` set, wait while the queue is full.

        Raises :class:`Full` when ``block`` is false and the queue is full, or
        when ``timeout`` seconds pass (a queue without ``maxsize`` never waits,
        so then, as with ``queue.Queue``, the timeout is not read); :class:`QueueShutDown` after
        ``shutdown``; :class:`SerializationError` (queue unchanged) when the
        serializer cannot take the item.
        """
        core = self._core
        records, sizes = core.encode_one(item)
        if core.settings.maxsize <= 0:
            # Never full: no reservation, no timeout read. After shutdown() the core
            # refuses the put, under the lock it takes to write.
            core.put_now(records, sizes)
            if core.buffered:
                self._after_buffered_put()
            return
        self._put_with_room(records, sizes, block, timeout)

    def put_nowait(self, item: T) -> None:
        """Put without waiting for room; raises :class:`Full` if there is none."""
        self.put(item, block=False)

    def put_many(self, items: Iterable[T], block: bool = True,
                 timeout: float | None = None) -> None:
        """Put several items in one transaction: all are stored or none are.

        Waits for room as :meth:`put` does. An empty batch stores nothing, but after
        ``shutdown`` it raises :class:`QueueShutDown` too.
        """
        self._check()
        core = self._core
        records, sizes = core.encode(items)
        if not records:
            if self._shutdown:
                raise QueueShutDown("the queue is shut down")
            return
        if core.settings.maxsize <= 0:
            core.put_now(records, sizes)
            if core.buffered:
                self._after_buffered_put()
            return
        self._put_with_room(records, sizes, block, timeout)

    def flush(self) -> None:
        """Write buffered puts now (``durability="buffer"``) and raise what the write raised.
        Otherwise nothing is pending and it returns at once: the puts of other threads
        waiting for a group commit are written, and fail, for their own callers."""
        self._check()
        if not self._core.buffered:
            return
        tickets = self._core.flush()
        errors = [t.error for t in tickets if t.error is not None]
        if errors:
            raise errors[0]

    # ---- getting ------------------------------------------------------------------------

    def _take(self, n: int | None, block: bool, timeout: float | None, ttl: float | None,
              wait_for_all: bool = False) -> list[Any]:
        """Take items, waiting as get() does. ``n=None`` takes all that are ready."""
        self._check()
        deadline = self._deadline(block, timeout)
        core = self._core
        got: list[Any] = []
        # A call that waits for n items keeps what it took meanwhile: close() gives
        # that back if it stops waiting for this call.
        holding = Holding(ttl is not None) if wait_for_all and block and n is not None \
            else None
        place = Place(self._line if block else None, 1)
        me = place if block else None
        try:
            self._enter_call(place)
            got = self._take_loop(n, deadline, me, ttl, wait_for_all, got, holding)
            if holding is not None and not core.hand_out(holding):
                got = []  # back in the queue already
                raise QueueShutDown("the queue was closed while this call waited")
        except BaseException:
            if got:
                core.restore(got, ttl is not None, holding)
            raise
        finally:
            place.done = True
            self._leave_call(place)
        return got

    def _take_loop(self, n: int | None, deadline: float | None, me: Place | None,
                   ttl: float | None, wait_for_all: bool, got: list[Any],
                   holding: Holding | None) -> list[Any]:
        core = self._core
        take = partial(core.take, holding=holding, deadline=deadline)
        looked = False  # at the file's counts once more, as the timeout passed
        recounted = False  # after shutdown: at the file's counts, before calling it drained
        while True:
            if self._shutdown and not recounted and core.ready_hint() == 0:
                recounted = self._recount_after_shutdown(deadline)
            if self._immediate or (self._shutdown and not got and core.ready_hint() == 0):
                raise QueueShutDown("the queue is shut down")
            if self._shutdown and got and core.ready_hint() == 0:
                break  # nothing more can come: hand out the part batch
            try:
                if core.ready_hint() == 0 and (core.refresh_due() or me is None or looked):
                    if core.refresh(deadline).ready and not self._share(me, 1):
                        self._wake()  # items for calls ahead of this one in the line
                elif n is None and core.ready_hint() > 0:
                    core.refresh(deadline)  # "every item ready": other handles' puts too
                took_nothing = False
                # Out of turn once the timeout has passed, as get_nowait would take.
                if want := self._share(None if looked else me,
                                       None if n is None else n - len(got)):
                    before = len(got)
                    got += take(want, ttl)
                    if got and (not wait_for_all or n is None or len(got) >= n):
                        break
                    took_nothing = before == len(got)
                    if not took_nothing and me is not None:
                        self._to_back(me)  # part of a batch: the rest after those waiting
                if me is None:  # get_nowait and the like
                    if got:
                        break
                    raise Empty("the queue is empty")
                if not self._wait_for_items(deadline, took_nothing, me):
                    if got:
                        break
                    if looked:
                        raise Empty("no item arrived within the timeout")
                    looked = True
            except Unavailable as exc:
                # A get_many(n) holding part of its batch waits too, then hands it out:
                # raising would give the items back to a server that is away.
                if me is None or not self._ride_out(exc, deadline):
                    if got:
                        break
                    raise
        return got

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        """Remove and return the oldest item, waiting for one if needed.

        Raises :class:`Empty` when ``block`` is false and nothing is ready, or
        when ``timeout`` seconds pass; :class:`QueueShutDown` once the queue is
        shut down and drained.
        """
        core = self._core
        if block and timeout is not None:
            check_seconds("timeout", timeout)  # refused even with an item ready
        if not self._shutdown and core.ready_hint() > len(self._line):
            # An item is ready, and one for each call waiting first: take it at once.
            try:
                item: T = core.take_item(timeout if block else None)
            except ClosedError:
                # Closed by another thread while this get ran: as for a waiting call.
                raise QueueShutDown("the queue is shut down") from None
            except Unavailable as exc:
                if not block or take_may_have_removed(exc):
                    raise
                item = NO_ITEM  # a get that blocks waits for the server, below
            if item is not NO_ITEM:
                if self._sleepers:
                    self._wake()
                return item
        items: list[T] = core.items(self._take(1, block, timeout, None))
        return items[0]

    def get_nowait(self) -> T:
        """Remove and return the oldest item; raise :class:`Empty` if none is ready."""
        return self.get(block=False)

    def get_many(self, n: int | None = None, block: bool = True,
                 timeout: float | None = None) -> list[T]:
        """Remove and return up to ``n`` items, oldest first.

        With ``n`` set it waits for ``n`` items; when ``timeout`` passes it
        returns what arrived (at least one) or raises :class:`Empty`. With
        ``n=None`` it waits for at least one item, then returns every item
        ready at that moment.
        """
        if n is not None:
            check_count("n", n, 1)
        return self._core.items(self._take(n, block, timeout, None, wait_for_all=True))

    def peek(self, n: int = 1, *, offset: int = 0, dead: bool = False) -> list[T]:
        """Return up to ``n`` items from the head (after ``offset``) without removing them."""
        check_count("n", n, 0)
        check_count("offset", offset, 0)
        return self._core.peek(n, offset, dead=dead)

    # ---- leases -------------------------------------------------------------------------

    def lease(self, block: bool = True, timeout: float | None = None, *,
              ttl: float = 30.0) -> Message[T]:
        """Lease the oldest item for ``ttl`` seconds; settle it with ``ack`` or ``nack``.

        Until then no other consumer sees it; if it is not settled in time it
        is delivered again with ``attempts + 1``. Waits like :meth:`get`.
        """
        return self.lease_many(1, block, timeout, ttl=ttl)[0]

    def lease_many(self, n: int, block: bool = True, timeout: float | None = None, *,
                   ttl: float = 30.0) -> list[Message[T]]:
        """Lease up to ``n`` items: waits for one, then takes what is ready up to ``n``."""
        check_seconds("ttl", ttl, positive=True)
        check_count("n", n, 1)
        return self._core.messages(self._take(n, block, timeout, ttl))

    def ack(self, *messages: Message[T]) -> None:
        """Remove leased items for good; raises :class:`LeaseError` for a lease not held."""
        try:
            self._core.ack(messages)
        finally:
            self._wake_joins()  # also when it raised for some: it settled the others

    def nack(self, *messages: Message[T], delay: float = 0.0) -> None:
        """Return leased items to their place in line, visible again after ``delay`` seconds."""
        check_seconds("delay", delay)
        try:
            self._core.nack(messages, delay)
        finally:
            self._wake_joins()  # an item it moved to the dead letters is finished

    @contextmanager
    def leased(self, block: bool = True, timeout: float | None = None, *,
               ttl: float = 30.0) -> Iterator[T]:
        """Lease an item for the ``with`` block: ack on success, nack (and re-raise) on error.

        The block's exception always propagates: if the nack fails (the lease expired, or
        the queue was closed meanwhile, which released the lease) that is logged."""
        msg = self.lease(block, timeout, ttl=ttl)
        try:
            yield msg.item
        except BaseException:
            try:
                self.nack(msg)
            except Exception as exc:
                log_failed_nack(msg, exc)
            raise
        self.ack(msg)

    def requeue_dead(self, ids: Iterable[int] | None = None) -> int:
        """Move dead letters (all, or those with ``ids``) back to the tail of the queue;
        return how many moved. An id that is not an int raises TypeError, a negative one
        ValueError, and nothing moves."""
        return self._core.requeue_dead(check_ids(ids))

    def purge(self, *, dead: bool = False) -> int:
        """Delete every item, ready and leased (or every dead letter); return how many."""
        removed = self._core.purge(dead=dead)
        self._wake()  # puts waiting for room
        self._wake_joins()
        return removed

    # ---- sizes, join, shutdown ----------------------------------------------------------

    def task_done(self) -> None:
        """Mark one task as processed, counted as ``queue.Queue`` counts it (before or after
        the ``get`` it stands for); ValueError if none is unfinished."""
        self._core.task_done()
        self._wake_joins()

    def shutdown(self, immediate: bool = False) -> None:
        """Refuse further puts; gets drain the queue, then raise :class:`QueueShutDown`.

        With ``immediate=True`` gets raise at once. Persisted items are kept. As with
        ``queue.Queue``, a put in another thread either raises :class:`QueueShutDown`
        or has stored its item when this returns (so this waits for a write in
        progress).
        """
        self._shut(immediate, None)

    def _shut(self, immediate: bool, until: float | None) -> None:
        """:meth:`shutdown`, waiting for a write in progress until ``until`` at most."""
        self._shutdown = True
        self._immediate = self._immediate or immediate
        self._core.shut_down(wait=True, until=until)
        self._core.cancel_waits()
        if not self._lock_in_handler():
            return
        try:
            for cancel in self._long_polls:
                cancel.cancel()
            self._notify(everyone=True)
            self._all_done.notify_all()
        finally:
            self._mutex.release()

    def close(self) -> None:
        """Flush, release this handle's leases and close the file; idempotent.

        Calls waiting in other threads (for items, or for room) raise
        :class:`QueueShutDown`; items they held go back to the queue, and a put that
        found room is written, before the file closes. It waits up to 10 seconds for
        them, then closes anyway, after giving back the items a ``get_many`` still
        waiting holds; a call a remote queue's server has not answered by then (a put
        waiting on a server that stopped) is cut and raises :class:`ClosedError`, its
        outcome unknown. Called from a signal handler, it does not wait for the call of
        its own thread that the signal interrupted: a call waiting (for items, for
        room) raises :class:`QueueShutDown` once the handler returns, and a call inside
        its write or take ends as it would have, the file closing right after it, on a
        thread of its own. Any later call raises :class:`ClosedError`.
        """
        self._closed = True
        deadline = time.monotonic() + _CLOSE_WAIT
        self._shut(True, deadline)
        me = threading.current_thread()
        # Not got: a signal handler interrupted this thread as it held the lock (see
        # _lock_in_handler); the calls of other threads are not waited for then.
        if self._lock_in_handler():
            try:
                # A place done is a call that ended, though a signal handler's exception
                # may have stopped it as it left. A call of this thread is one that a
                # signal handler calling close() interrupted: it goes on only once close()
                # returns.
                while time.monotonic() < deadline and any(
                        not p.done and p.thread is not me for p in self._calls):
                    self._sleep(0.05)
            finally:
                self._mutex.release()
        self._core.close(deadline)

    def _lock_in_handler(self) -> bool:
        """Take the queue's lock for shutdown() or close(), which a signal handler may
        call while its thread holds the lock (in the queue's own bookkeeping, which never
        holds it long): False when it is not got within a while, for then waiting would
        never end. Without the lock, shutdown() wakes no one: waiting calls see the flags
        at their next look, within a poll interval."""
        return self._mutex.acquire(timeout=HANDLER_LOCK_WAIT)

    def __enter__(self) -> SyncQueue[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SyncQueue {self._core.name!r} engine={self._core.engine.name}>"
