"""Records the server took for a reply that could not carry them, on their way back to
their queue: the surplus of a take whose reply had no room for it, and the records of a
reply that could not be sent.

They go back as if never taken: a get's records are restored at the head, a lease is
undone without counting an attempt. When the engine fails to take them back (a lock
held too long, a lost database connection), :class:`GiveBacks` keeps them and tries
again, with a growing pause, before the next requests it runs and while it is idle, and
once more before the engine closes: until then a get's records would be lost, and a
lease's would stay invisible and come back with an attempt nobody received. A slow
engine costs the requests that follow at most one try per pause.

A give-back the engine reported as failed may have been stored all the same (a
connection lost during its commit). It is then not stored twice: a take that gets one
of its records shows it is back, and it is done; a later try that the engine refuses
because the queue holds records of those ids (:class:`RestoreRefused`) is done too. Any
other refusal is a failure no try mends, logged as an error. A purge of a queue tries
that queue's give-backs first, so that it deletes what goes back, and drops what still
could not go back once it is done (logged): none of them comes back after the purge.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from .engines import Engine, Lease, StoredRecord
from .engines.base import RestoreRefused

__all__ = ["GiveBacks", "give_back"]

log = logging.getLogger("spoolq")

_FIRST_PAUSE = 0.05  # seconds before a failed give-back is tried again; doubles each time
_LONGEST_PAUSE = 2.0


def give_back(engine: Engine, queue_name: str, recs: Sequence[StoredRecord],
              lease: Lease | None) -> None:
    """Undo the take of ``recs`` (taken with ``lease``): they go back in place, their
    attempt not counted. Raises what the engine raises."""
    if lease is None:
        engine.restore(queue_name, recs)
    else:
        engine.release(queue_name, [(r.id, r.attempts) for r in recs], lease.owner,
                       not_before=0.0, max_attempts=None, count_attempt=False)


class GiveBacks:
    """The give-backs of one engine's thread (see the module docstring); every method runs
    on the thread that calls the engine."""

    def __init__(self) -> None:
        self._left: list[tuple[str, list[StoredRecord], Lease | None]] = []
        self._due = 0.0  # time.monotonic() of the next try
        self._pause = _FIRST_PAUSE

    def __len__(self) -> int:
        """How many give-backs wait for another try."""
        return len(self._left)

    def give_back(self, engine: Engine, queue_name: str, recs: Sequence[StoredRecord],
                  lease: Lease | None) -> bool:
        """Give ``recs`` back now, or keep them to try again (never raises): True when they
        went back now."""
        if not recs:
            return True
        recs = list(recs)
        try:
            give_back(engine, queue_name, recs, lease)
        except Exception as exc:
            if self._keep(queue_name, recs, lease, exc):
                log.warning("spoolq: %d records taken from %r could not go back (%s); tried "
                            "again shortly", len(recs), queue_name, exc)
            return False
        return True

    def wait(self) -> float | None:
        """Seconds until the next try; None when nothing waits for one."""
        if not self._left:
            return None
        return max(0.0, self._due - time.monotonic())

    def retry(self, engine: Engine, *, last: bool = False) -> set[str]:
        """Try again the give-backs, if their pause is over (all of them with ``last``,
        before the engine closes); return the queues that got records back."""
        if not self._left or (not last and time.monotonic() < self._due):
            return set()
        left, self._left = self._left, []
        woken = self._try(engine, left)
        if last:
            for queue_name, recs, lease in self._left:
                log.error("spoolq: %d records taken from %r could not go back before the "
                          "engine closed: %s", len(recs), queue_name,
                          "they are lost" if lease is None else "they stay leased until "
                          "their lease runs out, then come back with that attempt counted")
            self._left.clear()
        return woken

    def before_purge(self, engine: Engine, queue_name: str) -> None:
        """Try the give-backs of ``queue_name`` now, their pause over or not, so that a
        purge of it that follows deletes their records."""
        mine = [g for g in self._left if g[0] == queue_name]
        if mine:
            self._left = [g for g in self._left if g[0] != queue_name]
            self._try(engine, mine)

    def purged(self, queue_name: str) -> None:
        """``queue_name`` was purged: its give-backs that still wait are dropped, as the
        purge would have deleted their records had they been back."""
        for queue, recs, _ in self._left:
            if queue == queue_name:
                log.info("spoolq: %d records taken from %r that could not go back yet are "
                         "deleted by a purge of it", len(recs), queue)
        self._left = [g for g in self._left if g[0] != queue_name]
        if not self._left:
            self._pause = _FIRST_PAUSE

    def taken(self, queue_name: str, recs: Sequence[StoredRecord]) -> None:
        """A take of ``queue_name`` got ``recs``: a waiting give-back with records of
        those ids was stored after all (ids are never given out twice), so it is done."""
        if not self._left or not recs:
            return
        ids = {r.id for r in recs}
        keep = []
        for give in self._left:
            queue, back, _ = give
            if queue == queue_name and any(r.id in ids for r in back):
                log.info("spoolq: %d records taken from %r were back already (a take got "
                         "them again)", len(back), queue)
            else:
                keep.append(give)
        self._left = keep
        if not keep:
            self._pause = _FIRST_PAUSE

    def _try(self, engine: Engine,
             gives: list[tuple[str, list[StoredRecord], Lease | None]]) -> set[str]:
        """Try ``gives`` again, keeping those that fail for a later try; the queues that
        got records back."""
        woken: set[str] = set()
        failed = False
        for queue_name, recs, lease in gives:
            try:
                give_back(engine, queue_name, recs, lease)
            except RestoreRefused as exc:
                # The queue holds records of their ids: an earlier try that failed
                # stored them after all.
                log.info("spoolq: %d records taken from %r were back already (%s)",
                         len(recs), queue_name, exc)
                continue
            except Exception as exc:
                failed = self._keep(queue_name, recs, lease, exc) or failed
                continue
            woken.add(queue_name)
            log.info("spoolq: %d records taken from %r went back at a later try", len(recs),
                     queue_name)
        if failed:
            self._due = time.monotonic() + self._pause
            self._pause = min(2 * self._pause, _LONGEST_PAUSE)
        elif not self._left:
            self._pause = _FIRST_PAUSE
        return woken

    def _keep(self, queue_name: str, recs: list[StoredRecord], lease: Lease | None,
              exc: Exception) -> bool:
        """Keep a failed give-back for another try; False for a failure no try mends (the
        engine refused the records themselves), which is logged."""
        if isinstance(exc, (ValueError, TypeError)):
            log.error("spoolq: %d records taken from %r cannot go back: %s: %s", len(recs),
                      queue_name, "they are lost" if lease is None else
                      "they stay leased until their lease runs out", exc)
            return False
        if not self._left:
            self._due = time.monotonic() + self._pause
        self._left.append((queue_name, recs, lease))
        return True
