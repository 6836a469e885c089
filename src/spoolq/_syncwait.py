"""How the thread-safe queue waits: the sleepers counted on its condition, the wake-ups
sent to them, the line in which blocking takes are served, ``join()``, the count of calls
that close() lets finish, the cancel handles of gets blocked in an engine's long-poll, and
the waits of blocked calls for a server that is away.

:class:`SyncWaiting` is a part of :class:`spoolq.sync.SyncQueue`, kept in its own module;
it works on the queue's state under the queue's condition, as the rest of the queue does.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from ._outage import Outage
from .core import QueueCore
from .engines import WaitCancel
from .errors import ClosedError, Unavailable
from .settings import check_seconds

__all__ = ["Place", "SyncWaiting"]


def _fits(n: int, held: int, maxsize: int) -> bool:
    """Whether a put of ``n`` items has room while ``held`` are ready or reserved: a
    batch larger than ``maxsize`` has room in an empty queue."""
    return maxsize <= 0 or held + n <= maxsize or (n > maxsize and held == 0)


def _turns(line: list[Place], held: int, maxsize: int,
           upto: Place | None = None) -> Iterator[tuple[Place, int]]:
    """The calls in ``line`` that may go on now, in order, each with what the calls it
    waits for want. The one rule for who goes on, for takes and for puts, when a call
    looks and when a wake-up is sent.

    Each call wants ``p.n``: a put room for its items, a take one item. ``held`` of
    ``maxsize`` (at least 1) are taken: for the line of puts the items ready or reserved
    of ``maxsize``, for the line of takes none of the items ready. A call may go on if
    what it wants fits beside what the calls it waits for want (a batch larger than
    ``maxsize`` fits alone in an empty queue, as in :func:`_fits`). It waits for those
    ahead of it that are not done (a call interrupted as it left leaves a place done:
    see :meth:`SyncWaiting._enter_call`), except those of its own thread: a signal
    handler's call cannot wait for the call it interrupted, which goes on only once the
    handler returns. The walk ends after ``upto``, or where no call further back can
    go on. It runs on every wake-up: written for speed.
    """
    room = maxsize - held
    ahead = most_own = 0  # wanted by the places not done so far; the most by one thread
    own: dict[threading.Thread, int] | None = None  # wanted by each thread's places
    for p in line:
        if p.done:
            continue
        mine = own.get(p.thread, 0) if own else 0
        waits = ahead - mine
        if waits + p.n <= room or (p.n > maxsize and held + waits == 0):  # _fits
            yield p, waits
        if p is upto:
            return
        ahead += p.n
        mine += p.n
        if own is None:
            own = {p.thread: mine}
        else:
            own[p.thread] = mine
        most_own = max(most_own, mine)
        if ahead - most_own >= room:  # a call further back waits for this much at least
            return


class Place:
    """A call that close() lets finish. A blocking take's stands in the line of waiting
    takes (see :meth:`SyncWaiting._share`), a blocking put's in the line of puts waiting
    for room (see :meth:`SyncWaiting._put_turn`) until it has reserved its room."""

    __slots__ = ("asleep", "done", "line", "n", "reserved", "thread", "wake")

    def __init__(self, line: list[Place] | None = None, n: int = 0) -> None:
        self.line = line  # the line it stands in, if any
        self.n = n  # items a put wants room for; 1 for a take (see _turns)
        self.reserved = False  # a put's room is reserved: _leave_locked gives it up
        self.done = False  # set first thing in the call's finally (no call before it)
        self.thread = threading.current_thread()
        # What its call sleeps on (made as it first sleeps, on the queue's lock): wake-ups
        # go to the calls that can go on, not to every sleeper.
        self.wake: threading.Condition | None = None
        self.asleep = False  # on self.wake, not notified yet


class SyncWaiting:
    """Sleepers, wake-ups, calls in progress and long-poll cancels of one queue handle."""

    # Set up by SyncQueue.__init__.
    _core: QueueCore
    _mutex: threading.Lock
    _cond: threading.Condition
    _all_done: threading.Condition
    _shutdown: bool
    _immediate: bool
    _calls: set[Place]
    _sleepers: int
    _asleep_in_line: int
    _long_polls: set[WaitCancel]
    _outage: Outage
    _line: list[Place]
    _put_line: list[Place]
    _reserved: int
    _puts_ended: int

    @staticmethod
    def _deadline(block: bool, timeout: float | None) -> float | None:
        if not block or timeout is None:
            return None
        return time.monotonic() + check_seconds("timeout", timeout)

    def _wake(self) -> None:
        # A sleeper is counted (under self._cond) before it checks its condition: a change
        # made before this read of the count is seen by that check, and one made after
        # it finds the sleeper counted and waits for self._cond, which it holds until it
        # sleeps.
        if self._sleepers:
            with self._cond:
                self._notify()

    def _notify(self, everyone: bool = False) -> None:
        """Wake (under self._cond) the sleepers on self._cond, and of the calls in line
        only those that can go on: the first waiting takes, one for each ready item, and
        the first waiting puts for which there is room. Waking every waiting take for
        each put cost a lot of CPU with many of them. ``everyone``: all calls in line."""
        if self._sleepers > self._asleep_in_line:
            self._cond.notify_all()
        if not self._asleep_in_line and not everyone:
            return
        if everyone:
            for p in self._line + self._put_line:
                self._wake_place(p)
            return
        ready = self._core.ready_hint()
        if ready:
            for p, _waits in _turns(self._line, 0, ready):
                self._wake_place(p)
        if self._put_line:
            for p, _waits in _turns(self._put_line, ready + self._reserved,
                                    self._core.settings.maxsize):
                self._wake_place(p)

    def _wake_place(self, p: Place) -> None:
        if p.asleep:
            p.asleep = False
            self._asleep_in_line -= 1
            p.wake.notify()  # type: ignore[union-attr]

    def join(self) -> None:
        """Block until every item put (or present at open) has been processed, or the
        queue is shut down with ``immediate=True``. Items that other handles or processes
        take count as processed once the queue holds nothing, ready or leased. While the
        engine's server is away it waits on, as a blocked get does, and reads the counts
        again every second."""
        core = self._core
        retry_at = 0.0  # (monotonic) the next read of the counts while the server is away
        while True:
            with self._cond:
                if not core.unfinished or self._immediate:
                    return
                self._all_done.wait(core.settings.poll_interval)
                if not core.unfinished or self._immediate:
                    return
            # Not under self._cond (lock order).
            if core.refresh_due() and not core.closed and time.monotonic() >= retry_at:
                try:
                    core.refresh()
                except ClosedError:
                    if not self._immediate:  # set by close() before it closes the file
                        raise
                except Unavailable as exc:
                    retry_at = self._outage.retry_at(core.name, exc, None) or 0.0

    def _wake_joins(self) -> None:
        """Wake the threads waiting in ``join()``: items may have been finished."""
        with self._cond:
            self._all_done.notify_all()

    def _sleep(self, seconds: float) -> None:
        """Wait on self._cond (held by the caller) for up to ``seconds``."""
        self._sleepers += 1
        try:
            self._cond.wait(seconds)
        finally:
            self._sleepers -= 1

    def _wait(self, deadline: float | None, ready: Callable[[], bool],
              wake_at: float | None = None, place: Place | None = None) -> bool:
        """Sleep until ``ready()`` may have changed; False when the deadline passed.
        ``wake_at`` (``time.monotonic()``) ends the sleep sooner than the poll interval
        would. A call in line (``place``) sleeps on its own condition, which
        :meth:`_notify` wakes only when the call can go on."""
        poll = self._core.settings.poll_interval
        if wake_at is not None:
            poll = min(poll, max(wake_at - time.monotonic(), 0.0))
        with self._cond:
            self._leave_left_behind()  # it may be what ready() waits for
            cond = self._cond
            if place is not None:
                if place.wake is None:
                    place.wake = threading.Condition(self._mutex)
                cond = place.wake
            self._sleepers += 1
            try:
                if ready():
                    return True
                if deadline is None:
                    remaining = poll
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                if place is not None:
                    place.asleep = True
                    self._asleep_in_line += 1
                cond.wait(min(remaining, poll))
                return True
            finally:
                if place is not None and place.asleep:
                    place.asleep = False
                    self._asleep_in_line -= 1
                self._sleepers -= 1

    def _ride_out(self, error: Unavailable, deadline: float | None) -> bool:
        """Wait a while for the engine's server to come back; False once the deadline has
        passed (the blocked call then raises ``error``)."""
        until = self._outage.retry_at(self._core.name, error, deadline)
        if until is None:
            return False
        with self._cond:
            while not (self._shutdown or self._immediate) and time.monotonic() < until:
                self._sleep(until - time.monotonic())
        return True

    def _enter_call(self, place: Place) -> None:
        """Count a call that close() lets finish; a ``place`` with a line also takes its
        place at the end of that line. Call it inside the ``try`` whose ``finally`` sets
        ``place.done``, then calls :meth:`_leave_call`: an exception raised by a signal
        handler at any step in between then leaves nothing behind that matters. close()
        does not wait for a place done, the lines skip it (see :func:`_turns`), and the
        next call that is about to sleep leaves it (:meth:`_leave_left_behind`)."""
        with self._cond:
            self._calls.add(place)
            if place.line is not None:
                place.line.append(place)

    def _leave_left_behind(self) -> bool:
        """Leave (under self._cond) the places of calls that ended without leaving (a
        signal handler's exception as they left): a put's reservation holds room until
        then. Called where a call is about to sleep, whose cost does not matter there,
        rather than as each call enters. Only places done: a thread runs the
        ``finally`` of its call before it ends (and a thread that ran its calls may
        report itself not alive, as the main thread does in an atexit handler).
        Whether it left any."""
        left = [p for p in self._calls if p.done]
        for p in left:
            self._leave_locked(p)
        if left and self._sleepers:
            self._notify()  # the room it held may let a put ahead of this call go on
        return bool(left)

    def _leave_call(self, place: Place) -> None:
        with self._cond:
            self._leave_locked(place)
            if self._sleepers:
                self._notify()

    def _leave_locked(self, place: Place) -> None:
        """Give up (under self._cond) what the call of ``place`` holds: its place in line,
        its reservation of room, its count. Each step can be done again: one that a
        signal handler's exception stopped is finished by a later call."""
        if place.line is not None:
            with contextlib.suppress(ValueError):  # left already
                place.line.remove(place)
            place.line = None
        if place.reserved:
            self._reserved -= place.n  # no call before the flag is cleared
            self._puts_ended += 1
            place.reserved = False
        self._calls.discard(place)

    def _to_back(self, me: Place) -> None:
        """Move the call ``me`` to the back of the line of waiting calls."""
        with self._cond:
            self._line.remove(me)
            self._line.append(me)
            if self._sleepers:
                self._notify()

    def _share(self, me: Place | None, want: int | None) -> int:
        """How many items the call ``me`` may take now if it wants ``want`` (None: all
        that are ready). Blocking takes are served in the order they came, as
        ``queue.Queue`` serves its waiting threads: a call takes only the ready items left
        over by those ahead of it in the line that it waits for (one each: see
        :func:`_turns`). The first in line, and a call that does not wait (``me`` None,
        as ``get_nowait`` takes an item whoever waits), take what they want."""
        ready = self._core.ready_hint()
        if not ready:
            return 0
        line = self._line
        if me is None or (line and line[0] is me):  # none ahead of it
            return ready if want is None else want
        for p, waits in _turns(line, 0, ready, me):
            if p is me:
                if not waits:
                    return ready if want is None else want
                return min(ready - waits, ready if want is None else want)
        return 0

    def _after_buffered_put(self) -> None:
        """Wake waiting gets for a put held in the buffer: the core wakes them only when
        it writes, which may be ``flush_interval`` seconds away, and an engine's
        long-poll never hears of it."""
        self._wake()
        if self._long_polls:
            with self._cond:
                for cancel in self._long_polls:
                    cancel.cancel()

    def _wait_for_items(self, deadline: float | None, took_nothing: bool,
                        me: Place | None = None) -> bool:
        """Sleep until items may be ready for the call ``me``; False once the deadline
        passed.

        With an engine that can long-poll it blocks there. After a take found
        nothing although the counts promised items (they are delayed by a nack),
        it sleeps a poll interval instead of retrying at once, or less: until records
        that a nack of this handle delayed become visible.
        """
        core = self._core
        if core.can_wait_ready and core.ready_hint() == 0 and not self._shutdown:
            cancel = WaitCancel()
            with self._cond:
                # Registered before the look at the counts and the shutdown flag: a
                # buffered put or a shutdown after this look cancels this wait.
                self._long_polls.add(cancel)
                if core.ready_hint() or self._shutdown:
                    self._long_polls.discard(cancel)
                    return True
            try:
                ready = core.wait_ready(deadline, cancel)
            finally:
                with self._cond:
                    self._long_polls.discard(cancel)
            if ready is None:
                return False
            if ready:
                core.refresh(deadline)
            return True
        if took_nothing:  # items are promised but delayed: wait a poll unless closing
            return self._wait(deadline, lambda: self._immediate, core.next_visible())
        return self._wait(deadline, lambda: self._share(me, 1) > 0 or self._immediate or (
            self._shutdown and not core.ready_hint()), place=me)

    def _recount_after_shutdown(self, deadline: float | None) -> bool:
        """Read the file's counts before a get after shutdown calls the queue drained:
        items other handles put before the shutdown are still to drain. True, also when
        the file cannot be read now (closed, or a server away: drained, then). Nothing
        is read after ``shutdown(immediate=True)``, whose gets raise at once."""
        if not self._immediate:
            with contextlib.suppress(ClosedError, Unavailable):
                self._core.refresh(deadline)
        return True
