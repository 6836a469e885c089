"""How a put of the thread-safe queue waits for room in a queue with ``maxsize``: it
reserves the room, writes, and gives the reservation up; blocking puts take room in the
order they came, as blocking takes take items.

:class:`SyncPutting` is a part of :class:`spoolq.sync.SyncQueue`, kept in its own module;
it works on the queue's state under the queue's condition, as the rest of the queue does.
"""

from __future__ import annotations

import time

from ._syncwait import Place, SyncWaiting, _fits, _turns
from .errors import ClosedError, Full, QueueShutDown

__all__ = ["SyncPutting"]


class SyncPutting(SyncWaiting):
    """Puts that wait for room, served in the order they came."""

    # Set up by SyncQueue.__init__.
    _closed: bool
    _puts_started: int

    def _put_with_room(self, records: list[bytes], sizes: list[int], block: bool,
                       timeout: float | None) -> None:
        """Reserve room for the records, write them, then give the reservation up. A
        blocking put waits in line for its room (see :meth:`_put_turn`)."""
        if self._closed:  # after close() the fast path is never taken: this is the check
            raise ClosedError(f"queue {self._core.name!r} is closed")
        call = Place(self._put_line if block else None, len(records))
        try:
            self._enter_call(call)
            self._reserve_room(call, block, timeout)
            self._core.put_now(records, sizes)
            if self._core.buffered:
                self._after_buffered_put()
        finally:
            call.done = True
            self._leave_call(call)  # gives the reservation up

    def _put_turn(self, me: Place, held: int) -> bool:
        """Whether the put ``me`` may reserve its room now, ``held`` items being ready or
        reserved: the puts ahead of it in line take theirs first, as ``queue.Queue``
        serves its waiting puts, so that a thread putting in a loop cannot take every
        slot that frees up from a put that waits (see :func:`_turns` for whom it waits
        for). A put not in line (``put_nowait``) and one past its timeout look at the
        room alone."""
        line, maxsize = me.line, self._core.settings.maxsize
        if line is None or line[0] is me:  # none ahead of it: the common case, at once
            return _fits(me.n, held, maxsize)
        return any(p is me for p, _waits in _turns(line, held, maxsize, me))

    def _reserve_room(self, call: Place, block: bool, timeout: float | None) -> None:
        """Wait for room for the ``call.n`` items of ``call`` and reserve it: the ready
        items this handle knows of plus those other threads of it are writing stay within
        ``maxsize``.

        Before raising :class:`Full` this re-reads the counts from the file once (other
        handles or processes may have taken items since they were read). A put being
        written may be counted twice for a moment (in the counts and in its
        reservation); so it also waits for the puts in progress to end and looks once
        more.
        """
        core = self._core
        maxsize = core.settings.maxsize
        n = call.n
        deadline = self._deadline(block, timeout)
        settle_until: int | None = None  # wait for this many ended puts, then decide
        recounted = False
        out_of_time = not block
        while True:
            if self._shutdown:
                raise QueueShutDown("the queue is shut down")
            with self._cond:
                held = core.ready_hint() + self._reserved
                # Out of turn once the timeout has passed, as put_nowait would take room.
                if _fits(n, held, maxsize) if out_of_time else self._put_turn(call, held):
                    self._reserved += n  # no call before the flag is set
                    self._puts_started += 1
                    call.reserved = True
                    if call.line is not None:
                        call.line.remove(call)
                        call.line = None
                        if self._put_line and self._sleepers:
                            self._notify()  # room for the next in line too, maybe
                    return
                out_of_time = not block or (
                    deadline is not None and time.monotonic() >= deadline)
                if out_of_time and recounted:
                    if self._reserved and settle_until is None:
                        settle_until = self._puts_started
                    if settle_until is None or self._puts_ended >= settle_until:
                        if not block:
                            raise Full(f"the queue holds {core.ready_hint()} of "
                                       f"{maxsize} items")
                        raise Full(f"no room for {n} item(s) within the timeout")
                    # A reservation left behind (see _enter_call) is given up before
                    # the sleep: then it is room, and no put in progress.
                    if not self._leave_left_behind():
                        self._sleep(core.settings.poll_interval)
                    continue
            # The reads of the counts are bounded by the put's deadline, as a get's are.
            if out_of_time:
                core.refresh(deadline)  # not under self._cond: the core's lock is taken first
                recounted = True
                continue
            if not self._wait(deadline, lambda: self._shutdown or self._put_turn(
                    call, core.ready_hint() + self._reserved), place=call):
                continue  # the deadline passed: the check above decides
            if core.refresh_due() and not self._shutdown:  # closed meanwhile: see above
                core.refresh(deadline)
