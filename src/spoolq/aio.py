"""``Queue``: the asyncio queue, with ``asyncio.Queue`` semantics and durable storage.

This module holds the public calls, their checks and their wait loops, and opening and
closing. How the queue waits and is woken is :class:`spoolq._aiowait.Waiting`; takes on
the worker thread and the give-backs of cancelled ones are
:class:`spoolq._aiogiveback.GivingBack`; leases and their settling are
:class:`spoolq._aiolease.Leasing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable
from functools import partial
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._aioclose import Closing, retrieved
from ._aiogiveback import GivingBack, TakeOnWorker
from ._aiolease import Leasing
from ._aioput import Putting
from ._aiowait import Turn, Waiting
from ._atonce import NoWait, Undecoded
from ._counting import AsyncCounts
from ._outage import Outage
from .core import Holding, QueueCore
from .engines import Engine, WaitCancel
from .errors import ClosedError, ConfigurationError, Empty, Full, QueueShutDown, Unavailable
from .message import Taken
from .settings import Settings, check_codecs, check_count, resolve_target
from .worker import Worker

__all__ = ["Queue"]

T = TypeVar("T")
log = logging.getLogger("spoolq")
R = TypeVar("R")
_SHUTDOWN_WAIT = 0.2
"""How long (s) shutdown() may hold the event loop for a remote queue's write under way."""


class Queue(AsyncCounts, Putting, Waiting, GivingBack, Closing, Leasing[T], Generic[T]):
    """A durable FIFO queue for asyncio, with the semantics of ``asyncio.Queue``.

    Create it with ``await Queue.create(path, ...)``; close it with
    :meth:`aclose` or ``async with``. Engine calls run on one worker thread per
    queue, not on the event loop (unless ``calls_on_loop`` says otherwise, see
    :meth:`create`), and concurrent ``put`` calls are written in one transaction
    (group commit). Every awaited ``put`` returns once its item
    is durable at the queue's durability level. A ``get`` cancelled at any
    moment never loses an item.
    """

    def __init__(self, core: QueueCore, worker: Worker, calls_on_loop: bool = False) -> None:
        self._core = core
        self._worker = worker
        self._loop = worker.loop
        # A dict, in waiting order, so that a wait ending on its own (a poll, a timeout, a
        # cancel) removes its future at once: an idle consumer polls 20 times a second.
        self._waiters: dict[asyncio.Future[None], None] = {}
        self._line: dict[Turn, None] = {}  # gets and leases under way, in the order they came
        self._putters: dict[object, None] = {}  # puts waiting for room, in the order they came
        self._outage = Outage()
        self._shutdown = False
        self._immediate = False
        self._closed = False
        self._closing: asyncio.Future[None] | None = None  # done once the file is closed
        self._close_task: asyncio.Task[None] | None = None
        self._worker_stopped = False  # the close is on the worker, or done without it
        self._takers = 0
        self._long_polls: set[WaitCancel] = set()  # gets blocked in the engine's wait_ready
        # A new value at every change that may make items takeable (puts, give-backs,
        # nacks, takes), whether or not anyone waits: a get whose take found nothing
        # compares it to learn whether something changed while its take ran. Several
        # threads set it without a lock; each value comes from one count (next() on it is
        # atomic), so whatever value a change leaves differs from any seen before it.
        self._changes = itertools.count(1)
        self._epoch = 0
        self._backs_sent = self._backs_done = 0  # give-backs under way: GivingBack._unsettled
        self._takes_out: set[TakeOnWorker] = set()
        # Records taken on the worker and not handed to a caller yet, or given back and not
        # restored yet: still in the queue for qsize(), or a put would find room that a
        # give-back fills again. Two counters, each written by one thread only (taken_out by
        # the worker, taken_in by the loop), so neither needs a lock.
        self._taken_out = 0
        self._taken_in = 0
        # A take running on the worker: how many ready records it may take, and a count
        # that is odd while it runs (see GivingBack._room_size).
        self._taking = 0
        self._take_seq = 0
        self._inline = bool(getattr(core.engine, "inline", False))
        # calls_on_loop, with an engine whose calls are brief unless another process holds
        # its lock: puts and gets made on the loop when nothing else is under way.
        self._no_wait: NoWait | None = None
        if (calls_on_loop and not self._inline and not core.buffered
                and getattr(core.engine, "brief", False)):
            self._no_wait = getattr(core.engine, "no_wait", None)
            core.train_later = worker.post  # training a dictionary would hold up the loop
        self._listen()

    @classmethod
    async def create(cls, path: str | os.PathLike[str], *, name: str | None = None,
                     engine: str | Engine | None = None, maxsize: int = 0,
                     serializer: object = None, compressor: object = None,
                     durability: str = "commit", flush_items: int = 1000,
                     flush_interval: float = 1.0, max_attempts: int | None = None,
                     poll_interval: float = 0.05, compress_threshold: int = 128,
                     engine_options: dict[str, Any] | None = None,
                     token: str | None = None, calls_on_loop: bool = False) -> Queue[Any]:
        """Open the queue ``name`` in ``path`` (created if missing).

        Takes the same settings as :meth:`spoolq.SyncQueue.create`. Raises
        :class:`ConfigurationError` for bad settings and :class:`FormatError` /
        :class:`CorruptError` for a file that is not a sound spoolq queue.

        ``calls_on_loop=True`` lets an engine whose calls are brief (SQLite with
        durability "commit") take puts and gets on the event loop while nothing else of
        this queue is under way, rather than hand each to the worker thread: about three
        times the rate of a task awaiting one item at a time. Such a call holds the
        loop for tens of microseconds (at most 256 records: larger batches go to the
        worker), and now and then for a WAL checkpoint (two fsyncs); one that would wait
        for another process's lock goes to the worker instead. Other engines and
        durability levels ignore it.
        """
        if type(calls_on_loop) is not bool:
            raise ConfigurationError(f"calls_on_loop must be True or False, "
                                     f"not {calls_on_loop!r}")
        name, engine_options = resolve_target(path, name, engine, token, engine_options)
        settings = Settings(name=name, maxsize=maxsize, durability=durability,
                            flush_items=flush_items, flush_interval=flush_interval,
                            max_attempts=max_attempts, poll_interval=poll_interval,
                            compress_threshold=compress_threshold)
        check_codecs(serializer, compressor)
        worker = Worker(asyncio.get_running_loop(), f"spoolq-{settings.name}")

        def abandon(core: QueueCore | None) -> None:
            if core is not None:
                worker.post(core.close)
            worker.stop()

        opening = worker.submit(
            partial(QueueCore.open, path, engine=engine, serializer=serializer,
                    compressor=compressor, settings=settings,
                    engine_options=engine_options), undo=abandon)
        try:
            core = await opening
        except BaseException:
            if not opening.cancelled():  # else abandon() closes it once the open ends
                if opening.done() and opening.exception() is None:
                    worker.post(opening.result().close)  # opened, then the caller cancelled
                worker.stop()
            raise
        return cls(core, worker, calls_on_loop)

    async def _call(self, fn: Callable[..., R], *args: Any) -> R:
        """Run an engine-touching core call: inline for engines that never block (memory),
        otherwise on the worker thread."""
        if self._inline:
            return fn(*args)
        return await self._worker.submit(fn, *args)

    # ---- checks -------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"queue {self._core.name!r} is closed")

    def _enter(self) -> None:
        """The checks of a coroutine: the queue is open and awaited on its own loop (a
        result of the worker travels back through that loop only; awaited elsewhere, a
        get would take its item and never receive it)."""
        self._check()
        if asyncio.get_running_loop() is not self._loop:
            raise self._elsewhere()

    def _elsewhere(self) -> RuntimeError:
        return RuntimeError(f"queue {self._core.name!r} is bound to the event loop it was "
                            "created in, not this one")

    # ---- putting ------------------------------------------------------------------------

    async def put(self, item: T) -> None:
        """Put ``item``, waiting while the queue is full; returns once it is durable.

        Raises :class:`QueueShutDown` after ``shutdown`` and
        :class:`SerializationError` (queue unchanged) when the serializer
        cannot take the item. A put cancelled before its group commit starts is not
        stored; one cancelled while that transaction runs may be.
        """
        self._enter()
        await self._put(*self._core.encode_one(item), None)

    async def put_many(self, items: Iterable[T], *, timeout: float | None = None) -> None:
        """Put several items in one transaction (all or none), waiting for room.

        Raises :class:`Full` if ``timeout`` seconds pass without room (a queue
        without ``maxsize`` never waits, so then the timeout is not read). An empty batch
        stores nothing, but after ``shutdown`` it raises :class:`QueueShutDown` too.
        """
        self._enter()
        records, sizes = self._core.encode(items)
        if records:
            await self._put(records, sizes, timeout)
        elif self._shutdown:
            raise QueueShutDown("the queue is shut down")

    def put_nowait(self, item: T) -> None:
        """Put ``item`` without waiting for room; raise :class:`Full` if there is none.

        It writes on the calling thread (one short engine transaction), so the
        item is durable at the queue's durability level when it returns. Before
        refusing it re-reads the counts from the file, as ``get_nowait`` does.
        """
        self._check()
        if self._shutdown:
            raise QueueShutDown("the queue is shut down")
        maxsize = self._core.settings.maxsize
        if maxsize > 0 and self._room_size() >= maxsize:
            self._core.refresh()  # other handles or processes may have taken items since
            if self._room_size() >= maxsize:
                raise Full(f"the queue holds {self.qsize()} of {self.maxsize} items")
        self._core.put_now(*self._core.encode_one(item))
        if self._core.buffered:
            self._wake_for_buffered()

    async def flush(self) -> None:
        """Write buffered puts now (``durability="buffer"``) and raise what the write raised.
        Otherwise nothing is pending and it returns at once: the puts of other tasks
        waiting for a group commit are written, and fail, for their own callers."""
        self._enter()
        if not self._core.buffered:
            return
        tickets = await self._call(self._core.flush)
        errors = [t.error for t in tickets if t.error is not None]
        if errors:
            raise errors[0]

    # ---- getting ------------------------------------------------------------------------

    async def _take(self, n: int | None, timeout: float | None, ttl: float | None,
                    wait_for_all: bool = False) -> list[Taken]:
        self._enter()
        deadline = self._deadline(timeout)
        core = self._core
        got: list[Taken] = []
        leased = ttl is not None
        # A call that waits for n items keeps what it took meanwhile: aclose() gives that
        # back if it stops waiting for this call.
        holding = Holding(leased) if wait_for_all and n is not None else None
        turn = self._join_line()
        looked = False  # at the file's counts once more, as the timeout passed
        self._takers += 1
        recounted = False  # after shutdown: at the file's counts, before calling it drained
        try:
            while True:
                if self._shutdown and not recounted and core.ready_hint() == 0:
                    recounted = await self._recount_after_shutdown(deadline)
                if (self._unsettled or self._shutdown) and await self._ends_now(got, deadline):
                    break
                try:
                    if self._look_first(n is None, looked):
                        await self._refresh(deadline)
                    if core.ready_hint() > 0 and self._may_take(turn, deadline):
                        want = max(core.ready_hint(), 1) if n is None else n - len(got)
                        before, epoch = len(got), self._epoch
                        got += await self._take_in_turn(want, ttl, holding, turn, deadline)
                        if len(got) > before:
                            self._served(turn)  # puts waiting for room: a lease or a part batch
                        if got and (not wait_for_all or n is None or len(got) >= n):
                            break
                        empty_since = epoch if before == len(got) else None
                    else:
                        empty_since = None
                    if not await self._wait_for_items(deadline, empty_since, turn):
                        if got:
                            break
                        looked = self._last_look(looked)
                except Unavailable as exc:
                    if await self._outage_ends(exc, deadline, len(got)):
                        break
            if holding is not None and not core.hand_out(holding):
                got = []  # back in the queue already
                raise QueueShutDown("the queue was closed while this call waited")
        except BaseException:
            self._give_back(leased, got, received=True, holding=holding)
            raise
        finally:
            self._takers -= 1
            self._leave_line(turn)
        return got

    async def _ends_now(self, got: list[Taken], deadline: float | None) -> bool:
        """Whether a take that holds ``got`` hands it out now, before taking more; raises
        :class:`Empty` or :class:`QueueShutDown` for one that ends holding nothing."""
        # Records of cancelled takes on their way back: take after them, or newer records
        # would be handed out first (and the counts are short).
        if self._unsettled and not await self._settle_cancelled_takes(deadline):
            if got:
                return True
            raise Empty("the oldest items are on their way back from a cancelled get and "
                        "the timeout passed")
        if self._immediate or (self._shutdown and not got and self._drained()):
            raise QueueShutDown("the queue is shut down")
        # Shut down and nothing more can come: hand out the part batch.
        return bool(self._shutdown and got and self._core.ready_hint() == 0)

    async def get(self) -> T:
        """Remove and return the oldest item, waiting until one is ready.

        Raises :class:`QueueShutDown` once the queue is shut down and drained.
        Use ``asyncio.timeout``/``wait_for`` to bound the wait: a cancelled get
        leaves the item in the queue.
        """
        if asyncio.get_running_loop() is not self._loop:
            raise self._elsewhere()
        core = self._core
        if (self._no_wait is not None and not self._line and not self._closed
                and core.ready_hint() > 0 and not core.group.pending()
                and self._others_ready()):
            # As a put on the loop: other tasks ready to run go first, once, and the puts
            # they make join this take's transaction (one commit, not two).
            await asyncio.sleep(0)
            if self._closed:  # meanwhile: this get was under way, as one that waits
                raise QueueShutDown("the queue is shut down")
        if ((self._inline or self._no_wait is not None) and not self._shutdown
                and not self._closed and not self._line and core.ready_hint() > 0):
            # An engine called on the loop with an item ready: take it as get_nowait does.
            got = core.take(1, None) if self._inline else self._take_on_loop(1, None, None)
            if isinstance(got, Undecoded):  # the dictionary it needs is read on the worker
                got = await self._decode_on_worker(got)
            if got:
                self._wake()
                item: T = got[0][1]
                return item
        item = core.items(await self._take(1, None, None))[0]
        return item

    def get_nowait(self) -> T:
        """Remove and return the oldest item; raise :class:`Empty` if none is ready.

        It reads on the calling thread (one short engine transaction). While items a
        cancelled ``get`` took are on their way back it raises :class:`Empty` too: the
        oldest item is not ready at that moment.
        """
        self._check()
        core = self._core
        if self._shutdown and not self._immediate and self._drained():
            # Read the file before calling it drained, as get does: items other handles
            # put are still to drain (a file that cannot be read now counts as drained).
            with contextlib.suppress(Unavailable):
                core.refresh()
        if self._immediate or (self._shutdown and self._drained()):
            raise QueueShutDown("the queue is shut down")
        if self._unsettled or (self._shutdown and core.ready_hint() == 0):
            raise Empty("the oldest items are on their way to a get or back from one")
        if core.ready_hint() == 0:
            core.refresh()
        recs = core.take(1, None) if core.ready_hint() else []
        if not recs:
            raise Empty("the queue is empty")
        self._wake()
        item: T = core.items(recs)[0]
        return item

    async def get_many(self, n: int | None = None, timeout: float | None = None) -> list[T]:
        """Remove and return up to ``n`` items, oldest first.

        With ``n`` set it waits for ``n`` items; when ``timeout`` passes it
        returns what arrived (at least one) or raises :class:`Empty`. With
        ``n=None`` it waits for at least one item, then returns every item
        ready at that moment.
        """
        if n is not None:
            check_count("n", n, 1)
        return self._core.items(await self._take(n, timeout, None, wait_for_all=True))

    async def peek(self, n: int = 1, *, offset: int = 0, dead: bool = False) -> list[T]:
        """Return up to ``n`` items from the head (after ``offset``) without removing them."""
        check_count("n", n, 0)
        check_count("offset", offset, 0)
        self._enter()
        if self._unsettled and not dead:
            await self._await_give_backs()
        return await self._call(partial(self._core.peek, n, offset, dead=dead))

    # ---- sizes, join, shutdown ----------------------------------------------------------

    def task_done(self) -> None:
        """Mark one task as processed, counted as ``asyncio.Queue`` counts it (before or
        after the ``get`` it stands for); ValueError if none is unfinished."""
        self._core.task_done()
        if not self._core.unfinished:
            self._wake()

    async def join(self) -> None:
        """Wait until every item put (or present at open) has been processed. Items that
        other handles or processes take count as processed once the queue holds nothing,
        ready or leased. While the engine's server is away it waits on, as a blocked get
        does, and reads the counts again every second."""
        if asyncio.get_running_loop() is not self._loop:
            raise self._elsewhere()
        core = self._core
        retry_at = 0.0  # (monotonic) the next read of the counts while the server is away
        while core.unfinished and not self._immediate:
            await self._wait(None, lambda: not core.unfinished)
            if (core.unfinished and core.refresh_due() and not self._closed
                    and time.monotonic() >= retry_at):
                try:
                    await self._refresh()  # other handles or processes may drain it
                except Unavailable as exc:
                    retry_at = self._outage.retry_at(core.name, exc, None) or 0.0

    def shutdown(self, immediate: bool = False) -> None:
        """Refuse further puts; gets drain the queue, then raise :class:`QueueShutDown`.

        With ``immediate=True`` gets raise at once. Persisted items are kept. A put
        either raises :class:`QueueShutDown` or has its item written when this returns
        (counted by ``qsize()`` and drained by gets): puts waiting for their group
        commit are written here, on the event loop, which waits for a commit the worker
        has under way. With durability "buffer" a put's item counts as accepted once it
        is in the buffer, which is written later, as ever. On a remote queue that wait
        is at most a fifth of a second: a put whose write is still under way then (the
        server stopped answering) is written later, or fails, as its own await tells.
        """
        cut = self._core.can_cut()
        self._shut(immediate, time.monotonic() + _SHUTDOWN_WAIT if cut else None)

    def _shut(self, immediate: bool, until: float | None) -> None:
        """:meth:`shutdown`, waiting for the worker's write until ``until`` at most."""
        self._shutdown = True
        self._immediate = self._immediate or immediate
        core = self._core
        # Puts on the loop hand their records to the group commit; one the worker had not
        # written yet would otherwise be written after this returns.
        core.shut_down(wait=not core.buffered and core.group.unwritten() > 0, until=until)
        core.cancel_waits()  # the long-polls in progress
        for cancel in self._long_polls:  # and those handed to a thread, not started yet
            cancel.cancel()
        self._wake_every()

    async def aclose(self) -> None:
        """Flush, release this handle's leases and close the file; idempotent.

        Waiting calls raise :class:`QueueShutDown` and give back what they took; this
        waits up to 10 seconds for them, then closes anyway, after giving back the
        items a ``get_many`` still waiting holds. It may be awaited on another event
        loop than the queue's own, once that one has stopped (say, a second
        ``asyncio.run``); while it still runs, that is a RuntimeError and nothing is
        changed (``asyncio.run_coroutine_threadsafe(q.aclose(), its_loop)`` closes it
        from another thread)."""
        here = asyncio.get_running_loop() is self._loop
        if not here and not self._closed and self._loop.is_running():
            raise RuntimeError(f"spoolq queue {self._core.name!r} belongs to an event loop "
                               "that is still running: await aclose() on that loop "
                               "(asyncio.run_coroutine_threadsafe from another thread)")
        if self._closed:
            if self._closing is not None and here:
                await asyncio.shield(self._closing)  # another call is closing: wait for it
            elif self._close_left():
                await self._close_elsewhere()
            return
        if not here:
            await self._close_elsewhere()
            return
        # The close writes what is pending: the loop never waits for a server that stalls.
        self._shut(True, time.monotonic() if self._core.can_cut() else None)
        self._closed = True
        closing = self._closing = self._loop.create_future()
        # A task of its own, which cancelling this call does not cut short: the gets
        # giving their items back need the worker that the close stops.
        task = self._close_task = self._loop.create_task(self._close_once_given_back(closing))
        task.add_done_callback(retrieved)  # raised to this call, unless it was cancelled
        task.add_done_callback(partial(self._close_unbegun, closing))
        await asyncio.shield(task)

    async def __aenter__(self) -> Queue[T]:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"spoolq queue {self._core.name!r} was not closed", ResourceWarning,
                          stacklevel=1)
            self._worker.post(self._core.close)
            self._worker.stop()

    def __repr__(self) -> str:
        return f"<Queue {self._core.name!r} engine={self._core.engine.name}>"
