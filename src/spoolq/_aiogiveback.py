"""How the asyncio queue takes records on its worker thread for a caller that may be
cancelled meanwhile, and gives back what such a caller will never have: records going
back to the head of the queue, the count of give-backs under way that later takes wait
for, and the counters that keep those records in ``qsize()`` until they are back.

:class:`GivingBack` is a part of :class:`spoolq.aio.Queue`, kept in its own module; it
works on the queue's state on the queue's event loop (and, where a method says so, on
its worker thread), as the rest of the queue does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

from .core import Holding, QueueCore
from .errors import QueueShutDown
from .message import Taken
from .worker import Worker

if TYPE_CHECKING:
    from ._aiowait import Turn

__all__ = ["GivingBack"]

log = logging.getLogger("spoolq")


class GivingBack:
    """Takes on the worker whose caller may be cancelled, and the give-backs they need."""

    # Set up by Queue.__init__.
    _core: QueueCore
    _worker: Worker
    _inline: bool
    _immediate: bool
    _unsettled: int
    _taken_out: int
    _taken_in: int
    _taking: int
    _take_seq: int
    # Defined by Queue and its other parts.
    _check: Callable[[], None]
    qsize: Callable[[], int]
    _wake_every: Callable[[], None]
    _wait: Callable[[float | None, Callable[[], bool]], Coroutine[Any, Any, bool]]
    _line: dict[Turn, None]
    _pass_turn: Callable[[], None]

    def _give_back(self, leased: bool, recs: list[Taken] | None, *, received: bool,
                   holding: Holding | None = None) -> None:
        """Return records taken for a caller that will not have them; ``received`` when
        :meth:`_take_on_worker` had handed them over; ``holding`` when the caller kept
        them in one (close() may have given them back already)."""
        if not recs:
            return
        if self._inline:  # before any later take, which also runs on the loop
            self._core.restore(recs, leased, holding)
            return
        if received:
            self._taken_in -= len(recs)
        # Counted until the restore has run: get_nowait takes on the loop, not the worker.
        self._unsettled += 1
        self._worker.submit(self._restore_on_worker, recs, leased, holding).add_done_callback(
            self._restored)

    def _restore_on_worker(self, recs: list[Taken], leased: bool,
                           holding: Holding | None) -> None:
        try:
            self._core.restore(recs, leased, holding)
        finally:
            self._taken_out -= len(recs)  # restored, or lost to the error logged

    def _restored(self, fut: asyncio.Future[None]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.error("spoolq: queue %r: giving back taken records failed", self._core.name,
                      exc_info=fut.exception())
        self._one_settled()

    def _one_settled(self) -> None:
        """One give-back counted in ``_unsettled`` is done; wake the takes waiting on it."""
        self._unsettled -= 1
        if not self._unsettled:
            self._wake_every()

    def _take_undone(self, leased: bool, state: list[bool], holding: Holding | None,
                     recs: list[Taken] | None) -> None:
        """The result of a take whose caller was cancelled arrives: give it back, then let
        the takes that waited for it go (their calls then run after the give-back).
        ``state`` is ``[given back, counted in _unsettled]``, shared with the caller."""
        state[0] = True
        self._give_back(leased, recs, received=False, holding=holding)
        if state[1]:
            self._one_settled()

    async def _settle_cancelled_takes(self, deadline: float | None) -> bool:
        """Wait until the records of cancelled takes are given back (a later take would
        otherwise be handed newer records first); False if ``deadline`` passes first."""
        while self._unsettled:
            if self._immediate:
                raise QueueShutDown("the queue is shut down")
            self._check()
            if not await self._wait(deadline, lambda: not self._unsettled):
                return False
        return True

    async def _await_give_backs(self) -> None:
        """Wait until the records of cancelled takes are back at the head, for a call that
        reads or deletes it (which the worker would otherwise run before they are)."""
        while self._unsettled:
            self._check()
            await self._wait(None, lambda: not self._unsettled)

    async def _take_in_turn(self, n: int, ttl: float | None, holding: Holding | None,
                            turn: Turn, deadline: float | None = None) -> list[Taken]:
        """Take up to n records for the call whose turn in line it is: on the loop for an
        engine called there, else on the worker (:meth:`_take_on_worker`)."""
        if self._inline:
            return self._core.take(n, ttl, holding=holding)
        turn.taking = True  # the next call in line may send its own take meanwhile
        if len(self._line) > 1:
            self._pass_turn()
        try:
            return await self._take_on_worker(n, ttl, holding, deadline)
        finally:
            turn.taking = False

    async def _take_on_worker(self, n: int, ttl: float | None,
                              holding: Holding | None = None,
                              deadline: float | None = None) -> list[Taken]:
        """Take up to n records on the worker thread (see :meth:`QueueCore.take` for
        ``holding`` and ``deadline``); if the caller is cancelled, whatever the call took
        is given back, and later takes wait for that."""
        leased = ttl is not None
        # No records from the buffer of durability "buffer": a cancelled caller could only
        # give them back behind records written since.
        state = [False, False]
        fut: asyncio.Future[list[Taken]] = self._worker.submit(
            self._take_for_caller, n, ttl, holding, deadline,
            undo=partial(self._take_undone, leased, state, holding))
        try:
            recs = await fut
        except asyncio.CancelledError:
            if fut.cancelled():
                if not state[0]:  # _take_undone will give them back
                    state[1] = True
                    self._unsettled += 1
            elif fut.exception() is None:
                self._give_back(leased, fut.result(), received=False, holding=holding)
            raise
        self._taken_in += len(recs)
        return recs

    def _take_for_caller(self, n: int, ttl: float | None, holding: Holding | None,
                         deadline: float | None) -> list[Taken]:
        """The take of :meth:`_take_on_worker`, on the worker thread.

        While it runs, :meth:`_room_size` counts up to ``n`` more ready records: the take
        lowers the ready count before it returns (the records are decoded after), and
        until the records are counted as taken out a put would find room that they
        still take up, and keep taking up if a cancelled caller gives them back."""
        core = self._core
        with core.lock:  # the ready count cannot change between this look and the take
            self._taking = min(n, core.ready_hint())
            self._take_seq += 1  # odd while the take runs
            try:
                recs = core.take(n, ttl, buffered=False, holding=holding, deadline=deadline)
                self._taken_out += len(recs)
            finally:
                self._take_seq += 1
        return recs

    def _room_size(self) -> int:
        """:meth:`qsize` for a put's check for room: also counts the records a take
        running on the worker may have removed from the ready count and not yet counted
        as taken out (qsize() itself is short by them for that moment)."""
        size = taking = 0
        for _ in range(100):
            seq = self._take_seq
            taking = self._taking
            size = self.qsize()
            if self._take_seq == seq:
                return size + taking if seq % 2 else size
        return size + taking  # takes ran back to back meanwhile: the safe side
