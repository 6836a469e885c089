"""How the asyncio queue waits: waiter futures, the change marker a get compares, wake-ups
from the worker and flushing threads, the long-poll of engines that can block until
items are ready, and the line that serves waiting gets and leases in the order they came.

:class:`Waiting` is a part of :class:`spoolq.aio.Queue`, kept in its own module; it works
on the queue's state on the queue's event loop, as the rest of the queue does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable
from functools import partial
from typing import Any

from ._outage import Outage
from .core import QueueCore
from .engines import WaitCancel
from .errors import ClosedError, Empty, Full, QueueShutDown, Unavailable
from .groupcommit import Ticket
from .settings import check_seconds
from .worker import Worker, wait_pool

__all__ = ["Turn", "Waiting", "wake_one"]


def _settle(tickets: list[Ticket]) -> None:
    for ticket in tickets:
        fut: asyncio.Future[None] | None = ticket.payload
        if fut is None or fut.done():
            continue
        if ticket.error is not None:
            fut.set_exception(ticket.error)
        else:
            fut.set_result(None)


def _wake_all(waiters: Iterable[asyncio.Future[None]]) -> None:
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)


def wake_one(fut: asyncio.Future[None]) -> None:
    """Resolve ``fut`` unless it is already done (woken, timed out or cancelled)."""
    if not fut.done():
        fut.set_result(None)


class Turn:
    """A taking call's place in the queue's line (see :meth:`Waiting._my_turn`)."""

    __slots__ = ("taking", "waiting")

    def __init__(self) -> None:
        self.taking = False  # a take of its own is under way on the worker
        self.waiting: asyncio.Future[None] | None = None  # its sleep, while it sleeps


class Waiting:
    """Waiter futures, wake-ups, the change marker and the line of takers of one asyncio
    queue handle."""

    # Set up by Queue.__init__.
    _core: QueueCore
    _worker: Worker
    _loop: asyncio.AbstractEventLoop
    _waiters: dict[asyncio.Future[None], None]
    _line: dict[Turn, None]
    _putters: dict[object, None]
    _outage: Outage
    _shutdown: bool
    _immediate: bool
    _long_polls: set[WaitCancel]
    _poll: asyncio.Task[None] | None = None  # the long-poll the waiting gets share
    _poll_users = 0
    _sleeping = 0  # calls in line asleep in _wait (read by other threads' wake-ups)
    _changes: itertools.count[int]
    _epoch: int
    # Defined by Queue and its other parts.
    _call: Callable[..., Coroutine[Any, Any, Any]]
    _room_size: Callable[[], int]

    def _listen(self) -> None:
        """Hear of the core's changes and finished flushes, on whichever thread they
        happen, through this queue's loop; the hooks hold no reference to the queue, so
        an unclosed one can still be collected."""
        ref = weakref.ref(self)
        # Changes made on the loop's own thread (calls made on the loop) need not wake it.
        home = threading.get_ident()

        def wake(ref: weakref.ref[Waiting] = ref) -> None:
            queue = ref()
            if queue is None:
                return
            queue._epoch = next(queue._changes)
            # Only a sleeping call needs the loop woken: one whose take is under way sees
            # the change when it returns.
            if queue._waiters or queue._sleeping:
                with contextlib.suppress(RuntimeError):  # its loop closed: no one to wake
                    if threading.get_ident() == home:
                        queue._loop.call_soon(queue._wake)
                    else:
                        queue._loop.call_soon_threadsafe(queue._wake)

        self._core.listeners.append(wake)

        def settle(tickets: list[Ticket], loop: asyncio.AbstractEventLoop = self._loop) -> None:
            with contextlib.suppress(RuntimeError):  # its loop closed: no caller waits
                if threading.get_ident() == home:
                    _settle(tickets)
                else:
                    loop.call_soon_threadsafe(_settle, tickets)

        self._core.on_settled = settle

    def _wake(self) -> None:
        """Something changed: wake every waiting call but the gets and leases in line
        whose turn has not come (the calls ahead of them pass it on as they take)."""
        self._epoch = next(self._changes)
        if self._line:
            self._pass_turn()  # first, in their order
        if self._waiters:
            waiters, self._waiters = self._waiters, {}
            _wake_all(waiters)

    def _wake_every(self) -> None:
        """Wake every waiting call, those in line too, to look again at what else they
        wait for (a shutdown, the give-backs of cancelled takes)."""
        self._epoch = next(self._changes)
        waiters, self._waiters = self._waiters, {}
        for turn in self._line:  # the gets and leases first, in their order
            if turn.waiting is not None:
                wake_one(turn.waiting)
        _wake_all(waiters)

    async def _wait(self, deadline: float | None, ready: Callable[[], bool],
                    turn: Turn | None = None, wake_at: float | None = None) -> bool:
        """Sleep until something changes or the poll interval passes; False after deadline.
        ``turn``: the sleep of that taker waiting for its turn, which :meth:`_wake` ends in
        the line's order and :meth:`_pass_turn` ends too. ``wake_at`` (monotonic) ends the
        sleep sooner than the poll interval would."""
        timeout = self._core.settings.poll_interval
        if wake_at is not None:
            timeout = min(timeout, max(wake_at - time.monotonic(), 0.0))
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            timeout = min(timeout, remaining)
        # Seen by the wake-ups of other threads before ready() is read: a change between
        # the two wakes this sleep instead of missing it until the poll interval passes.
        fut = self._loop.create_future()
        if turn is None:
            self._waiters[fut] = None
        else:
            turn.waiting = fut
            self._sleeping += 1
        try:
            if ready():
                return True
            handle = self._loop.call_later(timeout, wake_one, fut)
            try:
                await fut
            finally:
                handle.cancel()
        finally:
            self._waiters.pop(fut, None)  # still there unless a wake-up took it
            if turn is not None:
                turn.waiting = None
                self._sleeping -= 1
        return True

    # ---- room for puts -------------------------------------------------------------------

    def _fits(self, n: int) -> bool:
        """Whether ``n`` records fit within ``maxsize`` now (a batch larger than it: whether
        the queue is empty), counting those a take on the worker removes."""
        maxsize = self._core.settings.maxsize
        size = self._room_size()
        return size + n <= maxsize or (n > maxsize and size == 0)

    async def _wait_for_room(self, n: int, timeout: float | None) -> None:
        """Return once ``n`` records fit (see :meth:`_fits`); the caller writes them before
        it awaits anything. Puts that wait are served in the order they started waiting,
        as ``asyncio.Queue`` serves its putters; one whose timeout has passed takes room
        out of turn, as ``put_nowait`` would. :class:`Full` once the timeout passed and a
        look at the file's counts found no room; :class:`QueueShutDown` after shutdown."""
        if self._core.settings.maxsize <= 0 and not self._shutdown:
            return  # never full: no wait, and the timeout is not read
        deadline = self._deadline(timeout)
        if self._shutdown:
            raise QueueShutDown("the queue is shut down")
        if self._fits(n):
            return  # as asyncio.Queue.put: only a put that finds no room waits in line
        place = object()
        self._putters[place] = None
        try:
            await self._wait_in_line_for_room(n, deadline, place)
        finally:
            first = next(iter(self._putters)) is place
            del self._putters[place]
            if first and self._putters and self._waiters:
                waiters, self._waiters = self._waiters, {}
                _wake_all(waiters)  # the next put's turn

    async def _wait_in_line_for_room(self, n: int, deadline: float | None,
                                     place: object) -> None:
        core = self._core

        def my_turn() -> bool:
            return next(iter(self._putters)) is place and self._fits(n)

        recounted = False
        while True:
            if self._shutdown:
                raise QueueShutDown("the queue is shut down")
            if my_turn() or (deadline is not None and time.monotonic() >= deadline
                             and self._fits(n)):
                return
            if not await self._wait(deadline, my_turn):
                if recounted:
                    raise Full(f"no room for {n} item(s) within the timeout")
                recounted = True  # before refusing, look at the file's counts once more
                await self._refresh(deadline)
                continue
            if core.refresh_due() and not self._shutdown:  # aclose() may have stopped the worker
                await self._refresh(deadline)

    # ---- the line -----------------------------------------------------------------------
    # Waiting gets and leases take in the order they started, as asyncio.Queue serves its
    # getters: woken together (or by their own poll, or by a long-poll's end), the first to
    # run would otherwise take the oldest item. A call may take when every call ahead of it
    # has its take under way and the ready records outnumber those calls.

    def _join_line(self) -> Turn:
        turn = Turn()
        self._line[turn] = None
        return turn

    def _leave_line(self, turn: Turn) -> None:
        last = next(reversed(self._line), None) is turn  # (as after _served): no one behind
        if self._line.pop(turn, 0) is None and not last:
            self._pass_turn()

    def _served(self, turn: Turn) -> None:
        """``turn``'s take received records: wake the calls waiting for room or for
        ``join()``, send a call that waits for more to the back of the line, as a new
        call, and pass the turn (the calls behind have nothing else to wake for)."""
        self._epoch = next(self._changes)
        if self._waiters:
            waiters, self._waiters = self._waiters, {}
            _wake_all(waiters)
        line = self._line
        if len(line) > 1:  # (a lone call is at the back already, with no one to wake)
            if line.pop(turn, 0) is None:
                line[turn] = None
            self._pass_turn()

    async def _recount_after_shutdown(self, deadline: float | None) -> bool:
        """Read the file's counts before a get after shutdown calls the queue drained:
        items other handles put before the shutdown are still to drain. True, also when
        the file cannot be read now (closed, or a server away: drained, then)."""
        if not self._immediate:  # (close() stops the worker)
            with contextlib.suppress(ClosedError, Unavailable):
                await self._refresh(deadline)
        return True

    async def _refresh(self, deadline: float | None = None) -> None:
        """Re-read the counts (see :meth:`QueueCore.refresh`). Records they show, put
        by another handle or process, pass the turn as a put of this handle does: the
        calls first in line may sleep until their own poll timers, and the call that
        read the counts may not be first."""
        await self._call(self._core.refresh, deadline)
        if self._line and self._core.ready_hint() > 0:
            self._pass_turn()

    def _my_turn(self, turn: Turn) -> bool:
        ready = self._core.ready_hint()
        for ahead, other in enumerate(self._line):
            if other is turn:
                return ahead < ready
            if not other.taking:
                return False
        return ready > 0  # (every taking call is in the line)

    def _may_take(self, turn: Turn, deadline: float | None) -> bool:
        """Whether ``turn`` takes now: in its turn, or out of it once its time is over, as
        ``get_nowait`` would (rather than raise Empty while records are ready)."""
        return self._my_turn(turn) or (deadline is not None and time.monotonic() >= deadline)

    def _pass_turn(self) -> None:
        """Wake the calls in line whose turn may come with the records ready, in order (one
        whose call ahead has not sent its take yet sleeps again)."""
        left = self._core.ready_hint()
        if left <= 0 and self._shutdown:
            # Drained: the calls still waiting raise QueueShutDown (or hand out a part
            # batch) now, not once their poll interval has passed.
            for other in self._line:
                if other.waiting is not None:
                    wake_one(other.waiting)
            return
        for other in self._line:
            if left <= 0:
                return
            left -= 1
            waiting = other.waiting
            if waiting is not None and not waiting.done() and not other.taking:
                waiting.set_result(None)

    async def _ride_out(self, error: Unavailable, deadline: float | None) -> bool:
        """Wait a while for the engine's server to come back; False once the deadline has
        passed (the waiting call then raises ``error``)."""
        until = self._outage.retry_at(self._core.name, error, deadline)
        if until is None:
            return False
        while not (self._shutdown or self._immediate) and time.monotonic() < until:
            await self._wait(until, lambda: self._shutdown or self._immediate)
        return True

    async def _outage_ends(self, error: Unavailable, deadline: float | None,
                           holding: int) -> bool:
        """Ride out the server's outage for a call holding ``holding`` items: False once
        the server may be back (try again); True when the deadline passed while the call
        holds items, which it then hands out (given back to a server that is away, they
        would be lost); ``error`` is raised when it passed with nothing held."""
        if await self._ride_out(error, deadline):
            return False
        if holding:
            return True
        raise error

    def _look_first(self, every_ready: bool, looked: bool) -> bool:
        """Whether a take reads the file's counts before it takes: when none is ready by
        this handle's counts and a poll is due (or the timeout passed), and always for a
        take of every ready item (``get_many(None)``), which takes those another handle
        or process put too."""
        core = self._core
        if core.ready_hint() == 0:
            return core.refresh_due() or looked
        return every_ready

    @staticmethod
    def _last_look(looked: bool) -> bool:
        """For a take whose timeout passed with nothing: True, read the counts once more
        (records another process put since the last read count); Empty once it has."""
        if looked:
            raise Empty("no item arrived within the timeout")
        return True

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        if timeout is None:
            return None
        return time.monotonic() + check_seconds("timeout", timeout)

    def _wake_for_buffered(self) -> None:
        """Wake waiting gets for a put held in the buffer: the core wakes them when it
        writes, which for a buffered put may be ``flush_interval`` seconds away, and an
        engine's long-poll never hears of it."""
        self._epoch = next(self._changes)
        if self._waiters or self._line:
            self._wake()
        for cancel in self._long_polls:
            cancel.cancel()

    async def _wait_for_items(self, deadline: float | None, empty_since: int | None,
                              turn: Turn) -> bool:
        """Sleep until items may be ready for ``turn``; False once the deadline passed.

        With an engine that can long-poll it waits for that, sharing one long-poll (on a
        thread other than the queue's worker) with the handle's other waiting gets.
        After a take found nothing although the counts promised items (they are delayed
        by a nack, or another get took them), it sleeps until something changes or a poll
        interval passes instead of retrying at once; ``empty_since`` is :attr:`_epoch`
        from before that take, so a change while it ran (a put no wake-up reached, as
        this get was not waiting) ends the sleep. With records ready and calls ahead in
        line, it sleeps until its turn comes.
        """
        core = self._core
        if core.can_wait_ready and core.ready_hint() == 0 and not self._shutdown:
            return await self._share_long_poll(deadline)
        if empty_since is not None:
            return await self._wait(deadline, lambda: self._epoch != empty_since,
                                    wake_at=core.next_visible())
        if await self._wait(deadline, lambda: self._my_turn(turn), turn):
            return True
        return core.ready_hint() > 0  # out of time: one look out of turn (_may_take)

    async def _share_long_poll(self, deadline: float | None) -> bool:
        """Wait for the long-poll this handle's waiting gets share, starting one if none
        runs; False once ``deadline`` passed. The last get to stop waiting ends it: a
        thread per waiting get would hold a thread each, and a pool's worth of them
        would keep the rest from starting their waits."""
        poll = self._poll
        if poll is None or poll.done():
            # Registered now, not in the task's first step: a shutdown() or buffered put
            # before that step cancels this wait too.
            cancel = WaitCancel()
            self._long_polls.add(cancel)
            poll = self._poll = self._loop.create_task(self._long_poll(cancel))
            poll.add_done_callback(partial(_retrieve, self._long_polls, cancel))
        self._poll_users += 1
        try:
            timeout = None if deadline is None else deadline - time.monotonic()
            done, _ = await asyncio.wait((poll,), timeout=timeout)
        finally:
            self._poll_users -= 1
            if self._poll_users == 0 and not poll.done():
                poll.cancel()
                if self._poll is poll:
                    self._poll = None
        if not done:
            return False
        poll.result()  # its error, if it failed
        return True

    async def _long_poll(self, cancel: WaitCancel) -> None:
        """Block on a thread until the engine says items may be ready (the counts are
        read again then) or its wait ends. ``cancel``, in :attr:`_long_polls` until the
        task ends, ends the wait early."""
        core = self._core
        if cancel.cancelled:
            return
        try:
            ready = await self._loop.run_in_executor(wait_pool(), core.wait_ready, None,
                                                     cancel)
        except asyncio.CancelledError:
            cancel.cancel()  # the thread's wait ends now, not at its long-poll's end
            raise
        if ready:
            await self._refresh()


def _retrieve(long_polls: set[WaitCancel], cancel: WaitCancel,
              task: asyncio.Task[None]) -> None:
    """Forget a shared long-poll's cancel (also when the task was cancelled before its
    first step) and mark its error as seen: the gets that would have raised it may all
    have stopped waiting."""
    long_polls.discard(cancel)
    if not task.cancelled():
        task.exception()
