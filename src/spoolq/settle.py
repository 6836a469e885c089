"""What the core does with items already handed out or set aside: acks and nacks of
leased items, ``task_done``, dead letters and purges.

:class:`Settling` is a part of :class:`spoolq.core.QueueCore`, kept in its own module;
it works on the core's state under the core's lock, as the rest of the core does.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .engines import Counts, Engine
from .errors import LeaseError
from .groupcommit import GroupCommit, Ticket
from .message import Message
from .settings import Settings, check_seconds

__all__ = ["Settling"]

_VISIBLE_MARGIN = 0.005
"""Seconds past a nack's delay a waiting call looks again for the records it delayed."""
_VISIBLE_STEPS = 1024
"""The times a handle keeps of its delayed records are rounded up to a step of about
1/_VISIBLE_STEPS of their delay (a power of two, at least _VISIBLE_MARGIN): nacks that end
within one step share one time, so a handle parking a backlog keeps a few of them, not one
per nack."""


def _visible_time(delay: float) -> float:
    """When (``time.monotonic()``) records a nack delays by ``delay`` seconds from now
    show again, a little late rather than early, on the grid of its delay's step."""
    step = max(_VISIBLE_MARGIN, 2.0 ** math.ceil(math.log2(delay / _VISIBLE_STEPS)))
    at = time.monotonic() + delay + _VISIBLE_MARGIN
    return math.ceil(at / step) * step


def _not_a_message(arg: object, what: str) -> str:
    """Why ``arg`` cannot be settled by ``what`` ("ack" or "nack"), with the likely fix."""
    error = f"{what}() takes spoolq Messages, not {type(arg).__name__}"
    if isinstance(arg, (list, tuple, set)):
        return f"{error}: pass the messages as separate arguments, {what}(*messages)"
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        error += f" {arg!r}"
        if what == "nack":
            error += f": the delay is a keyword argument, nack(message, delay={arg!r})"
    return error


def _foreign_error(ids: list[int], what: str) -> str:
    return (f"cannot {what} message(s) {ids}: leased from another queue handle "
            "(or another queue); settle them there")


class Settling:
    """Acks, nacks, ``task_done``, dead letters and purges of one queue handle."""

    # Set up by QueueCore.__init__.
    engine: Engine
    settings: Settings
    name: str
    dead_name: str
    owner: str
    owners: set[str]
    lock: threading.RLock
    group: GroupCommit
    counters: dict[str, int]
    _unfinished: int
    _task_dones: int
    _tally: threading.Lock
    _counts: Counts
    _cleared: bool  # the last read of the counts found nothing left (see _nothing_left)
    _visible_at: list[float]  # (a heap, under _tally) see next_visible()
    _visible_set: set[float]  # the times in _visible_at
    # Defined by QueueCore and its other parts.
    _check_open: Callable[[], None]
    _refresh_locked: Callable[..., Counts]
    _notify: Callable[[], None]
    _settle: Callable[[list[Ticket]], None]
    _settle_pending: Callable[..., None]

    def _deliveries(self, messages: Sequence[Message[Any]], what: str
                    ) -> tuple[list[Message[Any]], list[int]]:
        """The messages this handle leased, and the ids of those another handle (or another
        queue) leased, which it cannot settle. Anything but a Message raises TypeError
        before anything is settled; on a closed handle everything raises ClosedError, as
        on Queue (close gave the leases back)."""
        self._check_open()
        for msg in messages:
            if not isinstance(msg, Message):
                raise TypeError(_not_a_message(msg, what))
        held = [m for m in messages if m.queue == self.name and m._owner in self.owners]
        foreign = [] if len(held) == len(messages) else sorted(
            {m.id for m in messages if m.queue != self.name or m._owner not in self.owners})
        if foreign and not held:  # nothing to settle, nothing to wait for
            raise LeaseError(_foreign_error(foreign, what))
        return held, foreign

    @staticmethod
    def _by_owner(messages: Sequence[Message[Any]]) -> dict[str, list[tuple[int, int]]]:
        """The deliveries of each owner (several only in a forked child that settles
        what its parent leased as well as its own)."""
        groups: dict[str, list[tuple[int, int]]] = {}
        for msg in messages:
            groups.setdefault(msg._owner, []).append((msg.id, msg.attempts))
        return groups

    def ack(self, messages: Sequence[Message[Any]]) -> None:
        """Remove leased items; raise LeaseError naming any lease no longer held."""
        messages, foreign = self._deliveries(messages, "ack")
        deliveries = [(m.id, m.attempts) for m in messages]
        with self.lock:
            self._check_open()
            done: list[int] = []
            for owner, group in self._by_owner(messages).items():
                done += self.engine.ack(self.name, group, owner)
            acked = set(done)
            stored = sum(m._sizes[0] for m in messages if m.id in acked)
            raw = sum(m._sizes[1] for m in messages if m.id in acked)
            c = self._counts
            if len(done) < len(deliveries) or stored > c.stored_bytes or raw > c.raw_bytes:
                # A lease this handle counted was taken back and maybe settled elsewhere, or
                # the counts missed items others put (and this handle leased): read them.
                self._refresh_locked()
                self._finished(len(done))
            else:
                self._counts = Counts(c.ready, max(c.leased - len(done), 0),
                                      c.stored_bytes - stored, c.raw_bytes - raw)
                with self._tally:
                    self._unfinished = max(self._unfinished - len(done), 0)
            self.counters["acks"] += len(done)
        self._raise_missing(deliveries, done, "ack", foreign)

    def nack(self, messages: Sequence[Message[Any]], delay: float, reason: str = "") -> None:
        """Return leased items to their FIFO position, visible again after ``delay`` seconds."""
        check_seconds("delay", delay)
        messages, foreign = self._deliveries(messages, "nack")
        deliveries = [(m.id, m.attempts) for m in messages]
        with self.lock:
            self._check_open()
            # delay 0 means visible at once, whatever the wall clock does meanwhile
            not_before = time.time() + delay if delay else 0.0
            done: list[int] = []
            for owner, group in self._by_owner(messages).items():
                done += self.engine.release(self.name, group, owner, not_before=not_before,
                                            max_attempts=self.settings.max_attempts,
                                            reason=reason or "nacked")
            self._refresh_locked()
            self.counters["nacks"] += len(done)
            released = set(done)
            max_attempts = self.settings.max_attempts
            if max_attempts is not None and done:
                # Deliveries that reached max_attempts went to the dead letters: finished,
                # once each, though the call may name a message twice.
                died = {ident for ident, attempts in deliveries
                        if ident in released and attempts >= max_attempts}
                self._finished(len(died))
                released -= died
            if delay and released:  # records wait in the queue for the delay to end
                self._delayed(delay)
        self._notify()
        self._raise_missing(deliveries, done, "nack", foreign)

    def _delayed(self, delay: float) -> None:
        """Keep when the records a nack of this handle just delayed show again. A little
        late rather than early: the engine's time is the wall clock's, read before this.
        Times past are dropped here too, waited for or not."""
        at = _visible_time(delay)
        self.next_visible()
        with self._tally:
            if at not in self._visible_set:
                self._visible_set.add(at)
                heapq.heappush(self._visible_at, at)

    def next_visible(self) -> float | None:
        """When (``time.monotonic()``) records that a nack of this handle delayed next
        become visible; None if none is delayed now. A call that waits for items and whose
        take found none looks again then, not only at its next poll."""
        with self._tally:
            due, now = self._visible_at, time.monotonic()
            while due and due[0] <= now:
                self._visible_set.discard(heapq.heappop(due))
            return due[0] if due else None

    @staticmethod
    def _raise_missing(deliveries: list[tuple[int, int]], done: list[int], what: str,
                       foreign: list[int]) -> None:
        """Raise LeaseError naming the messages a call could not settle, once it has
        settled the others."""
        missing = sorted({i for i, _ in deliveries} - set(done))
        errors = [f"cannot {what} message(s) {missing}: the lease expired, was settled "
                  "already, or the item was delivered again since"] if missing else []
        if foreign:
            errors.append(_foreign_error(foreign, what))
        if errors:
            raise LeaseError("; ".join(errors))

    def _finished(self, n: int) -> None:
        """``n`` items left for good without a ``task_done`` (to the dead letters, purged,
        acked). The caller has just read the counts: when they found nothing left,
        :meth:`_nothing_left` counted these items out already, with every other item not
        in the file, and they are not counted out twice."""
        if n > 0 and not self._cleared:
            with self._tally:
                self._unfinished = max(self._unfinished - n, 0)

    @property
    def unfinished(self) -> int:
        """What ``join()`` waits for: the items put through this handle or present when it
        opened that are not finished, and at least the items this handle took with ``get``
        and has not marked ``task_done`` (a consumer's items may come from other handles
        and processes)."""
        return max(self._unfinished, self.counters["gets"] - self._task_dones)

    def _nothing_left(self) -> None:
        """The file holds nothing, ready or leased: whoever took the items this handle
        waits for (other handles and processes, whose task_done it never hears of), they
        are gone; those this handle took itself stay unfinished until their task_done."""
        # Under _tally, so that no put is counted between the check and the reset.
        with self._tally:
            if self.group.unwritten():
                return
            gets = self.counters["gets"]
            self._unfinished = max(min(self._unfinished, gets - self._task_dones), 0)
            # task_done calls ahead of this handle's gets stood for items others took.
            self._task_dones = min(self._task_dones, gets)
            self._cleared = True

    def task_done(self) -> None:
        # Counted in both tallies, as queue.Queue counts it, whether or not the get it
        # stands for came first: put, put, task_done, get, get, task_done leaves nothing
        # unfinished. A task_done ahead of gets makes ``gets - task_dones`` negative until
        # they come, which the max in ``unfinished`` covers (see _refresh_locked).
        with self._tally:
            if self.unfinished <= 0:
                raise ValueError("task_done() called too many times")
            self._unfinished = max(self._unfinished - 1, 0)
            self._task_dones += 1

    def requeue_dead(self, ids: Sequence[int] | None = None) -> int:
        with self.lock:
            self._check_open()
            moved = self.engine.move(self.dead_name, self.name, ids)
            self._refresh_locked()
            with self._tally:
                self._unfinished += moved
        if moved:
            self._notify()
        return moved

    def purge(self, *, dead: bool = False) -> int:
        with self.lock:
            self._check_open()
            tickets: list[Ticket] = []
            buffered = 0
            if not dead:
                records, sizes, tickets = self.group.take_all(writing=False)
                self._settle_pending(records, sizes, lost=False)
                buffered = len(records)
                # Their puts returned: counted as when they are written or handed out.
                self.counters["puts"] += buffered
            removed = self.engine.purge(self.dead_name if dead else self.name) + buffered
            self._refresh_locked()
            if not dead:
                with self._tally:  # the delayed records are gone too
                    self._visible_at.clear()
                    self._visible_set.clear()
                # The purged records never reach a consumer; items taken with get and not
                # yet marked task_done stay unfinished.
                self._finished(removed)
        self._settle(tickets)
        return removed
