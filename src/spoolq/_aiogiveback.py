"""How the asyncio queue takes records on its worker thread for a caller that may be
cancelled meanwhile, and gives back what such a caller will never have: records going
back to the head of the queue, the count of give-backs under way that later takes wait
for, and the counters that keep those records in ``qsize()`` until they are back.

None of it waits for the event loop: a take whose caller was cancelled gives its records
back on the worker, and a give-back counts itself done there. A loop that stops (or
closes) while such a take runs would otherwise never receive the result, and the records
the take removed would be lost.

:class:`GivingBack` is a part of :class:`spoolq.aio.Queue`, kept in its own module; it
works on the queue's state on the queue's event loop (and, where a method says so, on
its worker thread), as the rest of the queue does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ._atonce import LOOP_BATCH, NoWait, Undecoded
from .core import Holding, QueueCore
from .engines import Counts
from .errors import QueueShutDown
from .message import Taken
from .worker import Worker

if TYPE_CHECKING:
    from ._aiowait import Turn

__all__ = ["GivingBack", "TakeOnWorker"]

log = logging.getLogger("spoolq")


class TakeOnWorker:
    """One take sent to the worker for a caller on the loop, which may be cancelled
    before the take's result reaches it. The two threads hand over under ``lock``: a
    take cancelled before it runs takes nothing, one cancelled while it runs gives back
    on the worker what it took, and one that ran gives its records to whichever comes
    first, the caller (as its result) or the caller's cancellation (to give back)."""

    __slots__ = ("cancelled", "finished", "holding", "leased", "lock", "taken")

    def __init__(self, leased: bool, holding: Holding | None) -> None:
        self.lock = threading.Lock()
        self.leased = leased
        self.holding = holding
        self.cancelled = False
        self.finished = False
        self.taken: list[Taken] | None = None
        """What the take removed, until the caller or its cancellation claims it."""

    def finish(self, taken: list[Taken]) -> bool:
        """On the worker, when the take (or its decoding) ended: leave ``taken`` for the
        caller, or return True when the caller was cancelled meanwhile and the worker is
        to give it back."""
        with self.lock:
            self.finished = True
            if not self.cancelled:
                self.taken = taken
            return self.cancelled

    def claim(self, *, cancel: bool) -> tuple[list[Taken] | None, bool]:
        """On the loop: the records the take removed (None if not finished, or claimed
        already) and whether it is still running; with ``cancel``, the take will take
        nothing more and gives back itself what it takes from now on."""
        with self.lock:
            taken, self.taken = self.taken, None
            if cancel:
                self.cancelled = True
            return taken, not self.finished


class GivingBack:
    """Takes on the worker whose caller may be cancelled, and the give-backs they need."""

    # Set up by Queue.__init__.
    _core: QueueCore
    _worker: Worker
    _loop: asyncio.AbstractEventLoop
    _inline: bool
    _no_wait: NoWait | None
    _immediate: bool
    # Give-backs under way, counted on the loop as they start and on the worker as they
    # end (each counter written by one thread only, so neither needs a lock).
    _backs_sent: int
    _backs_done: int
    _takes_out: set[TakeOnWorker]  # sent from the loop, not claimed there yet
    _taken_out: int
    _taken_in: int
    # A give-back moving records from _taken_out to the core's ready count: odd while it
    # runs (written by the thread giving back only), and what _size needs to read during
    # one: the counts it began with, _taken_out then, and its number of records.
    _back_seq = 0
    _back: tuple[Counts, int, int] = (Counts(0, 0, 0, 0), 0, 0)
    _taking: int
    _take_seq: int
    _undecoded = 0
    """Records a take on the loop removed that the worker decodes (on the loop only)."""
    # Defined by Queue and its other parts.
    _check: Callable[[], None]
    qsize: Callable[[], int]
    _wake_every: Callable[[], None]
    _wait: Callable[[float | None, Callable[[], bool]], Coroutine[Any, Any, bool]]
    _line: dict[Turn, None]
    _pass_turn: Callable[[], None]

    @property
    def _unsettled(self) -> int:
        """Give-backs under way: later takes wait for them, or they would be handed newer
        records first."""
        return self._backs_sent - self._backs_done

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
        self._backs_sent += 1
        self._worker.post(self._restore_on_worker, recs, leased, holding)

    def _restore_on_worker(self, recs: list[Taken], leased: bool,
                           holding: Holding | None) -> None:
        """Give back ``recs`` (none: only count a give-back done), on the worker thread (or
        on the thread closing the queue, once the worker ended)."""
        core = self._core
        try:
            if not recs:
                return
            # Under the core's lock, only this restore changes the counts (see _size).
            with core.lock:
                self._back = (core.counts, self._taken_out, len(recs))
                self._back_seq += 1
                try:
                    core.restore(recs, leased, holding)
                finally:
                    self._taken_out -= len(recs)  # restored, or lost to the error logged
                    self._back_seq += 1
        except Exception:
            log.exception("spoolq: queue %r: giving back %d taken records failed",
                          core.name, len(recs))
        finally:
            self._backs_done += 1
            with contextlib.suppress(RuntimeError):  # its loop closed: no one to wake
                self._loop.call_soon_threadsafe(self._one_settled)

    def _one_settled(self) -> None:
        """A give-back is done; once none is under way, wake the takes waiting on them."""
        if not self._unsettled:
            self._wake_every()

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
        got = self._take_on_loop(n, ttl, holding)
        if isinstance(got, Undecoded):
            return await self._decode_on_worker(got)
        if got is not None:
            return got
        turn.taking = True  # the next call in line may send its own take meanwhile
        if len(self._line) > 1:
            self._pass_turn()
        try:
            return await self._take_on_worker(n, ttl, holding, deadline)
        finally:
            turn.taking = False

    def _take_on_loop(self, n: int, ttl: float | None,
                      holding: Holding | None) -> list[Taken] | Undecoded | None:
        """With ``calls_on_loop``, take on the loop when nothing else is under way: no
        take on the worker, no give-back, at most LOOP_BATCH records. None: take on the
        worker. Undecoded: records taken, to decode on the worker
        (:meth:`_decode_on_worker`)."""
        no_wait = self._no_wait
        if no_wait is None or n > LOOP_BATCH or self._takes_out or self._unsettled:
            return None
        return self._core.take_alone(n, ttl, holding, no_wait, self._worker.post)

    async def _take_on_worker(self, n: int, ttl: float | None,
                              holding: Holding | None = None,
                              deadline: float | None = None) -> list[Taken]:
        """Take up to n records on the worker thread (see :meth:`QueueCore.take` for
        ``holding`` and ``deadline``); if the caller is cancelled, whatever the call took
        is given back, and later takes wait for that."""
        # No records from the buffer of durability "buffer": a cancelled caller could only
        # give them back behind records written since.
        take = TakeOnWorker(ttl is not None, holding)
        return await self._on_worker(take, self._take_for_caller, take, n, ttl, deadline)

    async def _decode_on_worker(self, undecoded: Undecoded) -> list[Taken]:
        """Decode on the worker the records a take on the loop took that need a zstd
        dictionary the loop would read from the file (:meth:`_decode_for_caller`); if
        the caller is cancelled, they are given back, as a take's on the worker are."""
        take = TakeOnWorker(undecoded.ttl is not None, undecoded.holding)
        # Counted until the worker counts them as taken out (for a moment, both count).
        self._undecoded += len(undecoded.recs)
        try:
            return await self._on_worker(take, self._decode_for_caller, take, undecoded)
        finally:
            self._undecoded -= len(undecoded.recs)

    async def _on_worker(self, take: TakeOnWorker, job: Callable[..., None],
                         *args: Any) -> list[Taken]:
        """Run ``job(*args)``, which leaves its records in ``take``, on the worker, and
        claim them; a cancelled caller's are given back."""
        leased, holding = take.leased, take.holding
        self._takes_out.add(take)
        try:
            await self._worker.submit(job, *args)
        except (asyncio.CancelledError, GeneratorExit):
            # GeneratorExit: a pending task dropped once its loop was closed, whose
            # coroutine is closed when collected; as cancelled, it gives back the records.
            # Counted before the worker can see the cancellation: while the take runs, it
            # gives back what it takes and counts that give-back done.
            self._backs_sent += 1
            recs, running = take.claim(cancel=True)
            if not running:
                self._backs_sent -= 1
                self._give_back(leased, recs, received=False, holding=holding)
            raise
        finally:
            self._takes_out.discard(take)
        recs = take.claim(cancel=False)[0] or []
        self._taken_in += len(recs)
        return recs

    def _take_for_caller(self, take: TakeOnWorker, n: int, ttl: float | None,
                         deadline: float | None) -> None:
        """The take of :meth:`_take_on_worker`, on the worker thread; it leaves its records
        in ``take`` (its result may never reach the loop).

        While it runs, :meth:`_room_size` counts up to ``n`` more ready records: the take
        lowers the ready count before it returns (the records are decoded after), and
        until the records are counted as taken out a put would find room that they
        still take up, and keep taking up if a cancelled caller gives them back."""
        core = self._core
        recs: list[Taken] = []
        with take.lock:
            skip = take.cancelled
        try:
            if not skip:
                with core.lock:  # the ready count cannot change between this look and the take
                    self._taking = min(n, core.ready_hint())
                    self._take_seq += 1  # odd while the take runs
                    try:
                        recs = core.take(n, ttl, buffered=False, holding=take.holding,
                                         deadline=deadline)
                        self._taken_out += len(recs)
                    finally:
                        self._take_seq += 1
        finally:
            if take.finish(recs):  # counted by the caller as a give-back under way
                self._restore_on_worker(recs, take.leased, take.holding)

    def _decode_for_caller(self, take: TakeOnWorker, undecoded: Undecoded) -> None:
        """The decoding of :meth:`_decode_on_worker`, on the worker thread; it leaves the
        items in ``take``. Records whose caller was cancelled before it ran go back as
        they are."""
        core = self._core
        with take.lock:
            skip = take.cancelled
        taken: list[Taken] = [(rec, None) for rec in undecoded.recs] if skip else []
        try:
            if not skip:
                taken = core.decode_undecoded(undecoded)
        finally:
            self._taken_out += len(taken)
            if take.finish(taken):  # counted by the caller as a give-back under way
                self._restore_on_worker(taken, take.leased, None if skip else take.holding)

    def _give_back_untaken(self) -> None:
        """Give back what takes left for callers that never claimed it: their loop stopped
        before they resumed. For a queue closed from another loop, once the worker ended;
        on the thread that closes it."""
        for take in list(self._takes_out):
            recs, _running = take.claim(cancel=True)
            if recs:
                self._backs_sent += 1
                self._restore_on_worker(recs, take.leased, take.holding)
        self._takes_out.clear()

    def _drained(self) -> bool:
        """Nothing left to hand out after a shutdown: no ready record, none a get is
        receiving (it may yet be cancelled and give it back) and none on its way back."""
        return not self._unsettled and self._room_size() == 0

    def _size(self) -> int:
        """:meth:`qsize`: the ready records, and those taken on the worker (or on the loop,
        decoding on the worker) and not handed to a caller yet or given back and not
        restored yet (see ``Queue.__init__``).

        A give-back moves records from ``_taken_out`` to the core's ready count in two
        steps, and a read between them would count them twice: a read during one tells
        by the counts it began with (new ones came with its restore, the only change of
        the counts under the lock it holds) and by ``_taken_out`` which steps are done."""
        core = self._core
        size = 0
        for _ in range(100):
            seq = self._back_seq
            began, out_before, n = self._back
            out = self._taken_out  # before the counts: a restore changes them first
            counts = core.counts
            size = counts.ready + core.group.unwritten() + out - self._taken_in + self._undecoded
            if self._back_seq != seq:
                continue  # a give-back began or ended meanwhile: read again
            if seq % 2 and counts is not began and out == out_before:
                size -= n  # restored and still counted as taken out
            return size
        return size  # give-backs ran back to back meanwhile

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
