"""How the PostgreSQL engine settles leases other than by an ack: ``release`` puts leased
records back (ready, or delayed until ``not_before``), ``expire`` does so for leases that
ran out or whose owner died, and a record out of attempts becomes a new record of its
queue's dead letters instead.

:class:`LeaseSettling` is a mixin of :class:`~spoolq.engines.postgres.PostgresEngine`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ._checks import as_max_attempts, check_expire
from ._pgparts import checked_reason, held, holds_nothing, names_nothing
from ._pgpool import Conn
from .base import dead_queue_name, refuse_nan

if TYPE_CHECKING:
    from ._pgsql import Statements

__all__ = ["LeaseSettling", "seconds_from"]


def seconds_from(at: float, clock: float) -> float | None:
    """``at`` as seconds after ``clock`` (both on the caller's clock); None for NaN, at
    which nothing runs out (NULL compares as false). An int beyond every float is a time
    past either end all the same."""
    try:
        return None if math.isnan(at) else at - clock
    except OverflowError:
        return math.inf if at > 0 else -math.inf


class LeaseSettling:
    """``release`` and ``expire``, for :class:`PostgresEngine`."""

    if TYPE_CHECKING:
        where: str
        _sql: Statements

        def _conn(self, what: str) -> AbstractContextManager[Conn]: ...

        def _tx(self, what: str) -> AbstractContextManager[Conn]: ...

        def _add_counts(self, conn: Conn,
                        rows: Sequence[tuple[str, int, int, int, int]]) -> None: ...

        def _notify_ready(self, conn: Conn, queue: str) -> None: ...

    def _unlease(self, conn: Conn, queue: str, groups: Sequence[tuple[list[int], str]],
                 visible_in: float | None, max_attempts: int | None, delta: int) -> None:
        """Turn locked leased records back to ready (or dead letters), inside a transaction.

        ``groups`` pairs ids with the reason their dead letters get. ``visible_in``
        is seconds from now on the database clock; None means at once.
        """
        ids = [i for group, _reason in groups for i in group]
        if not ids:
            return
        dead: list[tuple[int, int, int]] = []
        dead_queue = dead_queue_name(queue)
        if max_attempts is not None and delta == 0:
            reasons = [reason for group, reason in groups for _ in group]
            dead = conn.execute(self._sql.bury, {
                "queue": queue, "ids": ids, "reasons": reasons, "max_attempts": max_attempts,
                "dead_queue": dead_queue}).fetchall()
        buried = {r[0] for r in dead}
        back = [i for i in ids if i not in buried]
        if back:
            conn.execute(self._sql.unlease, {"queue": queue, "ids": back, "delta": delta,
                                             "visible_in": visible_in})
        stored, raw = sum(r[1] for r in dead), sum(r[2] for r in dead)
        # One call, so one stripe per queue: a transaction that took a second stripe
        # of a queue could deadlock with another taking the same two the other way.
        self._add_counts(conn, [(queue, len(back), -len(ids), -stored, -raw),
                                (dead_queue, len(dead), 0, stored, raw)])
        if back:
            self._notify_ready(conn, queue)
        if dead:
            self._notify_ready(conn, dead_queue)

    def release(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str, *,
                not_before: float, max_attempts: int | None, count_attempt: bool = True,
                reason: str = "") -> list[int]:
        checked_reason(reason)
        as_max_attempts(max_attempts)
        refuse_nan(self.where, "release", "not_before", not_before)
        ids, attempts = held(deliveries)
        if not ids or names_nothing(queue) or holds_nothing(owner):
            return []
        with self._tx("release") as conn:
            ids = [r[0] for r in conn.execute(self._sql.lock_held, {
                "queue": queue, "owner": owner, "ids": ids, "attempts": attempts})]
            at = None if not_before <= 0 else not_before - time.time()  # None: as a put
            self._unlease(conn, queue, [(ids, reason or "nacked")], at, max_attempts,
                          0 if count_attempt else -1)
        return ids

    def expire(self, queue: str, now: float, *, owners: Sequence[str] = (),
               max_attempts: int | None = None) -> int:
        check_expire(now, owners, max_attempts)
        if names_nothing(queue):
            return 0
        owners = [o for o in owners if not holds_nothing(o)]  # others hold no lease
        params: dict[str, Any] = {"queue": queue, "now_in": seconds_from(now, time.time()),
                                  "owners": owners}
        if not owners:
            # The common case, checked about once a second by every consumer
            # holding leases: nothing ran out. Then one read answers, instead
            # of a transaction of three round trips that locks nothing.
            with self._conn("expire") as conn:
                row = conn.execute(self._sql.any_expired, params).fetchone()
            if row is None or not row[0]:
                return 0
        lock = self._sql.lock_expired_or_owned if owners else self._sql.lock_expired
        with self._tx("expire") as conn:
            rows = conn.execute(lock, params).fetchall()
            expired = [r[0] for r in rows if r[1]]
            orphaned = [r[0] for r in rows if not r[1]]
            self._unlease(conn, queue, [(expired, "lease expired"), (orphaned, "owner died")],
                          None, max_attempts, 0)
        return len(rows)
