"""How the core returns leases that ran out, or whose process died, to the queue, and
counts those of them that went to the dead letters instead.

:class:`Reaping` is a part of :class:`spoolq.core.QueueCore`, kept in its own module; it
works on the core's state under the core's lock, as the rest of the core does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .engines import Counts, Engine
from .owners import owner_is_dead
from .settings import Settings

__all__ = ["Reaping"]

log = logging.getLogger("spoolq")

_OWNER_CHECK = 2.0  # seconds between looks for leases of dead processes on this host
_SHARE = 20
"""A reap or a look for dead owners that took t seconds, as did the one before it, waits
at least ``_SHARE * t`` before the next: with very many leases (or a slow server) they
take at most about a twentieth of the handle's time, and of the engine's write lock. One
slow answer alone spaces nothing: it may have waited for another process's long write
transaction, or for this process while it was stopped, which the next need not. The wait
is at most :data:`_LONGEST_WAIT`, so looks longer than ``_LONGEST_WAIT / (_SHARE - 1)``
take more than that share."""
_LONGEST_WAIT = 30.0
"""The longest a slow reap puts off the next, so a lease that ran out comes back late by
at most that wait and the time the reaps themselves take."""
_EXACT_UP_TO = 10_000
"""Dead letters a reap reads past to tell its own from those other handles add meanwhile;
beyond that it counts every one added, up to the leases it released."""
_READ_AT_ONCE = 500
"""Dead letters a reap reads per engine call when it counts its own: an expire may have
moved any number of leases there, which must not all be in memory at once."""
_REAPED = ("lease expired", "owner died")
"""The reasons an expire gives the records it moves to the dead letters."""


class Reaping:
    """Leases of one queue handle's queue that ran out or whose process died."""

    # Set up by QueueCore.__init__.
    engine: Engine
    settings: Settings
    name: str
    dead_name: str
    owner: str
    read_only: bool
    counters: dict[str, int]
    _counts: Counts
    _dead: int
    _next_reap: float
    _next_owner_check: float
    # How long the last reap's expire and the last look for dead owners took (see _SHARE).
    _reap_took: float = 0.0
    _owner_check_took: float = 0.0
    # Defined by QueueCore and its other parts.
    _refresh_locked: Callable[..., Counts]
    _finished: Callable[[int], None]

    def _dead_owners(self) -> list[str]:
        """Owners of this queue's leases that are processes of this host no longer running."""
        return [o for o in self.engine.owners(self.name) if o != self.owner and owner_is_dead(o)]

    def _reap_interval(self) -> float:
        return min(1.0, self.settings.poll_interval * 10)

    def reap_due(self) -> bool:
        """Whether the next take reaps first (see :meth:`_reap_locked`)."""
        return bool(self._counts.leased) and time.monotonic() >= self._next_reap \
            and not self.read_only

    def _reap_locked(self, now: float) -> None:
        # Scheduled on the monotonic clock: after the wall clock is set back, reaping
        # must not pause until it catches up again.
        tick = time.monotonic()
        if not self._counts.leased or tick < self._next_reap or self.read_only:
            return
        self._next_reap = tick + self._reap_interval()
        max_attempts = self.settings.max_attempts
        dead_owners: list[str] = []
        if tick >= self._next_owner_check:
            # Leases of a dead process of this host come back now, as at an open.
            self._next_owner_check = tick + _OWNER_CHECK
            dead_owners = self._dead_owners()
            self._next_owner_check, self._owner_check_took = _spaced(
                tick, self._next_owner_check, self._owner_check_took)
        dead_before = 0 if max_attempts is None else self.engine.counts(self.dead_name).ready
        start = time.monotonic()
        released = self.engine.expire(self.name, now, owners=dead_owners,
                                      max_attempts=max_attempts)
        self._next_reap, self._reap_took = _spaced(start, self._next_reap, self._reap_took)
        if released:
            self._refresh_locked()
            died = 0 if max_attempts is None else self._reaped_dead(dead_before, released)
            # Leases that ran out into the dead letters are not delivered again.
            self.counters["redelivered"] += released - died
            self._finished(died)

    def _reaped_dead(self, dead_before: int, released: int) -> int:
        """How many of the ``released`` leases an expire moved to the dead letters, which
        held ``dead_before`` records before it. Other handles and processes add dead
        letters meanwhile too (nacked, set aside at a take): those after ``dead_before``
        are told apart by their reason while the dead letters are few (see
        :data:`_EXACT_UP_TO`); dead letters taken or requeued meanwhile make it count
        fewer, never more, than the expire moved."""
        added = self._dead - dead_before
        if added <= 0:
            return 0
        if dead_before > _EXACT_UP_TO:
            # Reading past that many dead letters would cost the reap, and the gets that
            # wait for the lock, more than an exact count is worth.
            return min(added, released)
        died = read = 0
        try:
            while read < added:  # a server's reply may hold fewer records than asked for
                tail = self.engine.peek(self.dead_name, min(added - read, _READ_AT_ONCE),
                                        dead_before + read)
                if not tail:
                    break
                read += len(tail)
                died += sum(1 for rec in tail if rec.reason in _REAPED)
        except Exception as exc:  # the leases are released: count what cannot be read
            log.warning("spoolq: queue %r: reading the dead letters a reap added failed; "
                        "%d of them are counted as its own: %s", self.name, added - read, exc)
            died += added - read
        return min(died, released)


def _spaced(start: float, due: float, took_before: float) -> tuple[float, float]:
    """When a periodic engine call that began at ``start`` (on the monotonic clock) and
    ends now runs next: at ``due``, or later when it and the one before, which took
    ``took_before`` seconds, both took long (see :data:`_SHARE`); and how long it took."""
    end = time.monotonic()
    took = end - start
    return max(due, end + min((_SHARE - 1) * min(took, took_before), _LONGEST_WAIT)), took
