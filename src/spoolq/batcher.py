"""``Batcher``: collect items durably and hand them to a sink in batches."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._batchsettle import BatchSettling
from ._sinkcall import call_sink, in_sink, sink_margin, why_ended
from .aio import Queue
from .errors import ClosedError, ConfigurationError, Empty, Full, QueueShutDown
from .settings import check_count, check_queue_name, check_seconds, setting_checks

__all__ = ["Batcher"]

T = TypeVar("T")


class Batcher(BatchSettling[T], Generic[T]):
    """Persist items on ``add`` and pass them to ``on_flush`` in batches.

    A batch is flushed when ``max_batch_size`` items are waiting, every
    ``flush_interval`` seconds, on :meth:`flush` and on :meth:`stop`. Items
    live in a spoolq queue from the moment ``add`` returns, so a crash between
    ``add`` and the flush loses nothing: the next start flushes them. A
    batch is leased while ``on_flush`` runs and acked when it returns; when
    it raises, the batch goes back in its original order, ``failures`` grows,
    and the background flusher waits for the retry delay (``retry_delay``
    doubling up to ``max_retry_delay``) before it sends the same batch again,
    no more, so order is kept and a queue's ``max_attempts`` dead-letters it
    whole; :meth:`flush` and :meth:`stop` try at once. An ack (or nack) the
    engine refuses is tried again the same way before anything else is sent.
    Flushes never overlap.

    ``on_flush`` is a coroutine function or a plain function. A plain one is
    called on the event loop's thread and blocks the loop while it runs; wrap
    slow blocking work in :func:`asyncio.to_thread` inside an async sink, or return
    the :class:`concurrent.futures.Future` of a pool's ``submit``: an awaitable or
    such a future that a plain function returns is awaited as an async sink is, and
    its outcome decides the batch.

    ``queue`` is an open :class:`spoolq.Queue` (left open on stop) or a path
    (opened on start with ``name`` and closed on stop); by default the file
    ``<name>.spoolq.sqlite`` in the working directory. An async ``on_flush``
    still running shortly before its batch's lease ends (``lease_ttl`` seconds
    after it was leased, less 5% and at most 1 s) is cancelled and counts as a
    failure, so a sink that hangs cannot hold the batch (or :meth:`stop`)
    forever; a plain function cannot be interrupted, so its lease may expire: the
    batch may then be delivered again, and the call still counts as a flush.
    """

    def __init__(self, on_flush: Callable[[list[T]], Awaitable[object] | object], *,
                 queue: Queue[T] | str | os.PathLike[str] | None = None,
                 max_batch_size: int = 100, flush_interval: float = 10.0,
                 name: str = "batcher",
                 logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
                 retry_delay: float = 0.5, max_retry_delay: float = 60.0,
                 lease_ttl: float = 300.0) -> None:
        if not callable(on_flush):
            raise ConfigurationError(
                f"on_flush must be callable, not {type(on_flush).__name__} {on_flush!r}")
        if inspect.isgeneratorfunction(on_flush) or inspect.isasyncgenfunction(on_flush):
            # Calling one runs none of its body: every batch would be acked unsent.
            raise ConfigurationError(f"on_flush must be a function or coroutine function, "
                                     f"not the generator function {on_flush!r}")
        if logger is not None and not isinstance(logger, (logging.Logger,
                                                          logging.LoggerAdapter)):
            # Else the first failed flush would raise here instead of giving its batch back.
            raise ConfigurationError(f"logger must be a logging.Logger or LoggerAdapter, not "
                                     f"{type(logger).__name__} {logger!r}")
        if queue is not None and not isinstance(queue, (Queue, str, os.PathLike)):
            raise ConfigurationError(f"queue must be a spoolq.Queue, a path or None, not "
                                     f"{type(queue).__name__} {queue!r}")
        if isinstance(queue, (str, os.PathLike)) and not os.fspath(queue):
            # SQLite would open a temporary database, lost with the process.
            raise ConfigurationError("queue must not be an empty path")
        name = check_queue_name(name)
        with setting_checks():
            max_batch_size = check_count("max_batch_size", max_batch_size, 1)
            flush_interval = check_seconds("flush_interval", flush_interval, positive=True)
            retry_delay = check_seconds("retry_delay", retry_delay, positive=True)
            max_retry_delay = check_seconds("max_retry_delay", max_retry_delay, positive=True)
            lease_ttl = check_seconds("lease_ttl", lease_ttl, positive=True)
        if retry_delay > max_retry_delay:
            raise ConfigurationError(f"retry_delay ({retry_delay!r}) must be <= "
                                     f"max_retry_delay ({max_retry_delay!r})")
        self._on_flush = on_flush
        self._owns_queue = not isinstance(queue, Queue)
        # The path of a queue this Batcher opens and closes itself (unused for an open queue).
        self._path: str | os.PathLike[str] = (
            queue if isinstance(queue, (str, os.PathLike)) else f"{name}.spoolq.sqlite")
        self._queue: Queue[T] | None = queue if isinstance(queue, Queue) else None
        self.max_batch_size = max_batch_size
        self.flush_interval = flush_interval
        self.name = name
        self.log: logging.Logger | logging.LoggerAdapter[Any] = (
            logger if logger is not None else logging.getLogger("spoolq"))
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._lease_ttl = lease_ttl
        # Bound to the event loop of the current run; start() makes new ones on another.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping_task: asyncio.Future[None] | None = None
        self._retry_at = 0.0
        self._retry_size = 0
        self._pending = []
        self._force_next = False
        self._stopping = False
        self._streak = 0
        self._callers = 0  # flush() and stop() calls waiting for the flush lock
        self._starts = 0  # start() calls in progress
        self._flushes = 0
        self._items = 0
        self._failures = 0
        self._last_flush_time: float | None = None
        self._left = 0  # items in an owned queue when it was closed

    @property
    def queue(self) -> Queue[T]:
        """The queue holding the items; RuntimeError while a queue opened from a path
        is closed (before :meth:`start`, after :meth:`stop`)."""
        if self._queue is None:
            raise RuntimeError(f"batcher {self.name!r} is not started")
        return self._queue

    async def start(self) -> None:
        """Open the queue if needed and start the background flusher.

        Items left by an earlier run are flushed right away. A Batcher stopped on one
        event loop may start again on another (a second :func:`asyncio.run`); while it
        runs on one, a start on another raises RuntimeError. On a running Batcher it
        returns at once, without waiting for a flush in progress; inside ``on_flush`` of
        one not running (or stopping), RuntimeError. An open queue passed in
        that is closed raises ClosedError, one shut down (immediate or not)
        QueueShutDown, one bound to another event loop RuntimeError.
        """
        await self._bind_loop()
        if self._stopping_task is not None:
            # Inside on_flush, that stop waits for this sink: it would wait for ever.
            self._not_in_sink("start")
            await asyncio.shield(self._stopping_task)  # let it close the queue first
        if self._task is not None and not self._task.done():
            # Running: return without waiting for the flush lock, which a flush in
            # progress holds while its sink runs (the sink calling this, perhaps).
            return
        self._not_in_sink("start")  # not running: it would wait for the flush lock
        # Under the flush lock, so that two concurrent starts open one queue and one flusher.
        self._starts += 1  # a stop() made meanwhile waits for this start, then stops
        try:
            async with self._lock:
                if self._task is not None and self._task.done():
                    # The flusher ended on its own (a sink's BaseException): starting again
                    # here would silently do nothing. stop() raises why, then start works.
                    raise RuntimeError(
                        f"batcher {self.name!r}: its background flusher ended"
                        f"{why_ended(self._task)}; stop() it (which raises that) before starting "
                        "it again")
                if self._task is not None:
                    return
                if self._queue is None:
                    self._queue = await Queue.create(self._path, name=self.name)
                else:
                    # An open queue passed in that is closed, or bound to another event
                    # loop, raises here (ClosedError, RuntimeError): a flusher started on
                    # it would only fail, and every add with it.
                    self._queue._enter()
                    if self._queue._shutdown:
                        # Every add would raise; after an immediate shutdown every flush
                        # too. Its items stay in the file for a Batcher on a new handle.
                        raise QueueShutDown(
                            f"batcher {self.name!r}: queue {self._queue._core.name!r} is "
                            "shut down; it takes no more items, so start() cannot use it")
                self._stopping = False
                # A start tries at once, as stop() and flush() do, whatever retry delay the
                # last run's failures left; a new failure starts the delay again where it was.
                self._retry_at = 0.0
                self._task = asyncio.create_task(self._run(),
                                                 name=f"spoolq-batcher-{self.name}")
                if self._queue.qsize():
                    self._force_next = True
                    self._wake.set()
        finally:
            self._starts -= 1

    async def _bind_loop(self) -> None:
        """Make the running event loop this Batcher's; the asyncio primitives of a run on
        another loop are bound to that loop and fail on this one."""
        loop = asyncio.get_running_loop()
        old = self._loop
        if old is loop:
            return
        if old is not None and not old.is_closed() and (
                self._task is not None or self._stopping_task is not None):
            raise RuntimeError(f"batcher {self.name!r} is running on another event loop; "
                               "stop it there first")
        self._loop = loop
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        # A run whose loop ended without stop(): its flusher ended with the loop.
        self._task = self._stopping_task = None
        self._pending = []  # leases of a handle bound to the loop that ended
        if self._owns_queue and self._queue is not None:
            queue, self._queue = self._queue, None
            await queue.aclose()  # closes a queue of a loop that has ended, from this one

    async def stop(self) -> None:
        """Stop the flusher, flush what is waiting (one attempt, even while a retry delay
        is running), and close an owned queue.

        Items the sink did not take stay in the queue for the next start. A call made
        while another is stopping waits for that one. Cancelling the caller (say, by a
        timeout) does not interrupt the stop: it goes on, and a later call waits for it.
        """
        # After the loop of its run ended without a stop: close what that run left (its
        # items stay in the file), as a start would; while it runs on another, RuntimeError.
        await self._bind_loop()
        if self._task is None and self._stopping_task is None and self._starts:
            async with self._lock:
                pass  # a start() is opening the queue: stop what it starts
        stopping = self._stopping_task
        if stopping is None:
            task, self._task = self._task, None
            if task is None:
                return
            stopping = self._stopping_task = asyncio.ensure_future(self._stop(task))
            stopping.add_done_callback(self._stopped)
        if in_sink(self):
            # From inside on_flush (or a task it started) while the sink runs, which the
            # stop waits for: the stop goes on once the sink returns.
            return
        await asyncio.shield(stopping)

    def _stopped(self, stopping: asyncio.Future[None]) -> None:
        self._stopping_task = None
        if not stopping.cancelled() and stopping.exception() is not None:
            # Read here so that an error is not reported as never retrieved when every
            # caller was cancelled; callers still waiting get it raised.
            self.log.error("batcher %r: stopping failed", self.name,
                           exc_info=stopping.exception())

    async def _stop(self, task: asyncio.Task[None]) -> None:
        self._stopping = True
        self._wake.set()
        try:
            # A flusher cancelled from outside (a shutdown cancelling every task it finds)
            # has ended: the stop goes on to its flush instead of raising CancelledError.
            await asyncio.wait((task,))
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
            await self._flush(True, now=True)  # also when asked for inside on_flush
        finally:
            if self._pending:
                # Leased by this handle still: closing an owned queue gives them back, or
                # their leases run out.
                self.log.warning("batcher %r: %d items whose ack or nack failed are "
                                 "delivered again once their leases are given back or run "
                                 "out", self.name, sum(len(m) for _, m in self._pending))
                self._pending = []
            if self._owns_queue and self._queue is not None:
                self._left = self._queued(self._queue)
                if self._left:
                    path = os.fspath(self._path)
                    fate = ("are lost with the memory queue" if path == ":memory:"
                            else f"stay in {path!r} for the next start")
                    self.log.warning("batcher %r: %d unsent items %s", self.name, self._left,
                                     fate)
                await self._queue.aclose()
                self._queue = None

    async def __aenter__(self) -> Batcher[T]:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def add(self, item: T) -> None:
        """Store one item durably; a full batch is flushed in the background.

        Raises RuntimeError unless the Batcher is running (between :meth:`start`
        and :meth:`stop`).
        """
        await self.add_many((item,))

    async def add_many(self, items: Iterable[T]) -> None:
        """Store several items in one transaction (all or none); RuntimeError unless
        the Batcher is running. In a queue with a ``maxsize`` that has no room for them,
        it has what is waiting flushed and waits for the room."""
        if self._task is None:
            # With no flusher, stored items would wait unsent, even past stop()'s last flush.
            raise RuntimeError(f"batcher {self.name!r} is not running: call start() first "
                               "or use async with")
        queue = self.queue
        items = list(items)
        if not queue.maxsize:
            await queue.put_many(items)
        else:  # the put may wait for room (the count may be stale), which only a flush makes
            if queue.qsize() + len(items) > queue.maxsize:
                # Flush what is waiting now, not at the next interval (a batch as large
                # as max_batch_size may never fit).
                self._force_next = True
                self._wake.set()
            await self._put_with_flusher(queue, items, self._task)
        if queue.qsize() >= self.max_batch_size:
            self._wake.set()

    async def _put_with_flusher(self, queue: Queue[T], items: list[T],
                                flusher: asyncio.Task[None] | None) -> None:
        """Put items that wait for room while ``flusher`` runs: once it has ended (a sink's
        BaseException, a cancellation from outside, a stop), nothing makes room, and the
        put would wait for ever. RuntimeError then, the items not stored, unless a look at
        the file finds room."""
        if flusher is None or flusher.done():
            with contextlib.suppress(Full):
                return await queue.put_many(items, timeout=0)
        else:
            putting = asyncio.ensure_future(queue.put_many(items))
            try:
                await asyncio.wait((putting, flusher), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not putting.done():
                    putting.cancel()  # (stored all the same if its write had begun)
                    await asyncio.wait((putting,))
            if not putting.cancelled():
                return putting.result()  # stored, or the put's own error
        if self._task is not flusher:
            raise RuntimeError(f"batcher {self.name!r} stopped while an add waited for room "
                               "in its queue; the items were not stored")
        raise RuntimeError(f"batcher {self.name!r}: no room in the queue, and the background "
                           "flusher that would make it has ended (see the log); flush() or "
                           "stop() the Batcher")

    async def flush(self, force: bool = True) -> bool:
        """Flush waiting items now: all of them with ``force``, else only full batches.

        The sink is called even while the retry delay of an earlier failure is
        running. Returns False when ``on_flush`` failed (the batch stays queued in
        order and the background flusher retries it after the retry delay) or when
        the ack of a batch it took failed (the ack is retried likewise; the flush
        counts in ``stats``). Raises ClosedError when the queue was closed.
        """
        self._not_in_sink("flush")
        await self._bind_loop()  # (after its loop ended, the run's queue is closed)
        return await self._flush(force, now=True)

    def _not_in_sink(self, call: str) -> None:
        """Refuse a flush from inside on_flush (or a task it started) while the sink
        runs: it would wait for the flush in progress, which waits for the sink, for ever."""
        if in_sink(self):
            raise RuntimeError(f"batcher {self.name!r}: {call}() cannot be called inside "
                               "on_flush, whose flush it would wait for")

    async def _flush(self, force: bool, *, now: bool) -> bool:
        """Flush as :meth:`flush` does; unless ``now``, return False at once while a
        retry delay is running."""
        if not now:
            async with self._lock:
                return await self._flush_locked(force, now=False)
        self._callers += 1
        try:
            await self._lock.acquire()
        finally:
            self._callers -= 1
        try:
            return await self._flush_locked(force, now=True)
        finally:
            self._lock.release()

    async def _flush_locked(self, force: bool, *, now: bool) -> bool:
        queue = self.queue
        # An explicit flush (and stop's) sends what is waiting when it begins, not what
        # other handles or processes put meanwhile: else one that puts faster than the
        # sink sends would keep it (and stop()) from ever returning. So does the flush of
        # each interval, else items added while the sink works would be sent at once, in
        # small batches back to back, not once an interval. The count is read
        # from the file, which may hold items this handle has not counted. Leased ones
        # count too: a lease that ran out (or a nack refused here) comes back ahead of the
        # ready items, which would be left behind if only they were counted.
        limit: int | None = None
        if now or force:
            queue._enter()  # a closed queue raises ClosedError (its worker would never answer)
            await queue._call(queue._core.refresh)
            limit = self._queued(queue)
        if self._pending:
            # An ack or nack the engine refused earlier comes first: until the batch it
            # settles is settled, the items after it wait, so that none overtakes it.
            if not now and time.monotonic() < self._retry_at:
                return False
            if not await self._settle_pending(queue):
                return False
        sent = 0
        # With force, lease even when this handle counts no items: the lease reads
        # the file again, so items other handles or processes put there are seen.
        while force or queue.qsize() >= self.max_batch_size:
            if not now and time.monotonic() < self._retry_at:
                return False
            if not now and sent and (self._stopping or self._callers):
                break  # stop() or flush() sends the rest, and has to wait for this one
            # Taken before the lease is, and cut short by a margin, so that the sink
            # is cancelled before the lease can run out and let another consumer
            # lease the same batch.
            deadline = time.monotonic() + self._lease_ttl - sink_margin(self._lease_ttl)
            # A failed batch is retried alone: items put after it would reach max_attempts
            # after it and split it between the dead letters and the queue.
            size = min(self._retry_size, self.max_batch_size) or self.max_batch_size
            try:
                msgs = await queue.lease_many(size, ttl=self._lease_ttl, timeout=0)
            except (Empty, QueueShutDown) as exc:
                if isinstance(exc, QueueShutDown) and queue.qsize():
                    raise  # shut down at once by its owner: nothing is handed out any more
                self._retry_size = 0  # (a shut-down queue raises once it is drained)
                break
            self._retry_size = 0  # kept while a lease fails: the next one takes the batch
            if not await self._send_runs(queue, msgs, deadline):
                return False
            sent += len(msgs)
            if len(msgs) < size and not queue.qsize():
                # Nothing more was ready. (A lease that set aside a record it could not
                # decode returns fewer items than asked for while more are ready.)
                break
            if limit is not None and sent >= limit:
                break  # all that was waiting when this flush began
        return True

    async def _send(self, batch: list[T], deadline: float) -> None:
        await call_sink(self._on_flush, batch, deadline, self._lease_ttl, self)

    async def _run(self) -> None:
        while not self._stopping:
            wait = self.flush_interval
            pending_retry = self._retry_at - time.monotonic()
            if pending_retry > 0:
                wait = min(wait, pending_retry)
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
                forced = False
            except asyncio.TimeoutError:
                forced = True
            self._wake.clear()
            if self._stopping:
                return
            forced, self._force_next = forced or self._force_next, False
            try:
                await self._flush(forced, now=False)
            except (ClosedError, QueueShutDown):
                # For good: every later flush would fail alike. stop() raises it.
                self.log.exception("batcher %r: its queue was closed or shut down under "
                                   "it; the background flusher ends", self.name)
                return
            except Exception:
                self.log.exception("batcher %r: flush failed", self.name)
            except (KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit):
                raise
            except BaseException:
                # Say, from on_flush. It ends the flusher, which stop() (perhaps much later)
                # awaits and raises it.
                self.log.exception("batcher %r: the background flusher ends; stop() raises "
                                   "the error", self.name)
                raise

    @staticmethod
    def _queued(queue: Queue[T]) -> int:
        s = queue.stats
        return int(s["count"]) + int(s["leased"])

    @property
    def stats(self) -> dict[str, Any]:
        """``flushes``, ``items`` flushed, ``failures``, ``queued`` (waiting, including a
        batch being flushed; after :meth:`stop`, what was left in the queue),
        ``last_flush_time`` (``time.time()`` or None), ``running``."""
        queued = self._left if self._queue is None else self._queued(self._queue)
        return {
            "flushes": self._flushes,
            "items": self._items,
            "failures": self._failures,
            "queued": queued,
            "last_flush_time": self._last_flush_time,
            "running": self._task is not None and not self._task.done(),
        }

