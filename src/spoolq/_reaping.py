"""How the core returns leases that ran out, or whose process died, to the queue, and
counts those of them that went to the dead letters instead.

:class:`Reaping` is a part of :class:`spoolq.core.QueueCore`, kept in its own module; it
works on the core's state under the core's lock, as the rest of the core does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from .engines import Counts, Engine
from .owners import owner_is_dead
from .settings import Settings

__all__ = ["Reaping"]

_OWNER_CHECK = 2.0  # seconds between looks for leases of dead processes on this host
_SCAN_LIMIT = 1000
"""The most leases listed before a reap to count those it may move to the dead letters;
with more out, the count of the dead letters read around it is all there is to go by."""


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
    # Defined by QueueCore and its other parts.
    _refresh_locked: Callable[..., Counts]
    _finished: Callable[[int], None]

    def _dead_owners(self) -> list[str]:
        """Owners of this queue's leases that are processes of this host no longer running."""
        return [o for o in self.engine.owners(self.name) if o != self.owner and owner_is_dead(o)]

    def _reap_interval(self) -> float:
        return min(1.0, self.settings.poll_interval * 10)

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
        # The dead letters other handles and processes add or take meanwhile change the
        # count read around the expire too: what it moved there is bounded by what it
        # released, and by the leases it could move there (when they can be listed).
        most = 0 if max_attempts is None else self._may_die(now, dead_owners, max_attempts)
        dead_before = 0 if most == 0 else self.engine.counts(self.dead_name).ready
        released = self.engine.expire(self.name, now, owners=dead_owners,
                                      max_attempts=max_attempts)
        if released:
            self._refresh_locked()
            died = 0 if most == 0 else max(min(self._dead - dead_before, released,
                                               released if most is None else most), 0)
            # Leases that ran out into the dead letters are not delivered again.
            self.counters["redelivered"] += released - died
            self._finished(died)

    def _may_die(self, now: float, dead_owners: Sequence[str],
                 max_attempts: int) -> int | None:
        """How many leases an expire at ``now`` may move to the dead letters: those that
        ran out or belong to ``dead_owners`` and were delivered ``max_attempts`` times.
        None when the engine cannot list its leases (no ``peek_leased``) or too many are
        out to list at every reap."""
        # Not isinstance(SupportsPeekLeased): a wrapper handing its methods on through
        # __getattr__ has it all the same.
        peek_leased = getattr(self.engine, "peek_leased", None)
        if peek_leased is None:
            return None
        leases = peek_leased(self.name, _SCAN_LIMIT + 1)
        if len(leases) > _SCAN_LIMIT:
            return None
        gone = set(dead_owners)
        return sum(1 for lease in leases if lease.record.attempts >= max_attempts
                   and (lease.until <= now or lease.owner in gone))
