"""How the SQLite engine puts records back, and settles leases other than by an ack:
restore puts back records a take removed, release puts leased records back (ready, or
delayed until ``not_before``), expire does so for leases that ran out or whose owner
died, and a record out of attempts is buried at the tail of the queue's dead-letter
queue instead.

:class:`LeaseSettling` is a mixin of :class:`~spoolq.engines.sqlite.SQLiteEngine`;
every call runs inside the engine's one write transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import EngineError
from . import _sqlite_sql as sql
from ._checks import (
    MAX_OWNER_BYTES,
    as_float_time,
    as_max_attempts,
    as_text,
    check_expire,
    int_deliveries,
)
from ._sqlite_schema import length_limit
from ._sqlite_sql import CHUNK, MASK, MAX_REASON, ROW_ROOM, SHIFT, json_list
from .base import (
    StoredRecord,
    as_queue_name,
    checked_records,
    dead_queue_name,
    distinct_ids,
    never_given,
    refuse_nan,
    restore_refused,
)

__all__ = ["LeaseSettling", "cut_reason", "holds_nothing", "in_range"]

R = TypeVar("R")


def in_range(deliveries: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Deliveries whose ids can belong to a queue (others could reach another queue's rows),
    of an int id and attempts, a bool as its int (see ``int_deliveries``): SQL would find
    the delivery (1, 1) by (1, "1") or (1.0, 1)."""
    return [(i, a) for i, a in int_deliveries(deliveries) if 0 < i <= MASK]


def holds_nothing(owner: object, conn: sqlite3.Connection) -> bool:
    """Whether ``owner`` can hold no lease in the file, where SQL would compare it all the
    same, or fail to: not a str (5 would find the owner "5"), not UTF-8, or longer than a
    row. An owner longer than a take accepts may hold a lease taken by an earlier spoolq."""
    if type(owner) is str and owner.isascii() and len(owner) <= MAX_OWNER_BYTES:
        return False  # every owner a take accepts that is ASCII: the usual case
    if not isinstance(owner, str):  # a str subclass (a str enum) is bound as its text
        return True
    try:
        return len(owner.encode()) > length_limit(conn)
    except UnicodeEncodeError:
        return True


def cut_reason(reason: str, room: int) -> str:
    """``reason`` when its UTF-8 takes at most ``room`` bytes, else its head, cut at a
    character and ended with "…", in ``room`` bytes."""
    if len(reason) * 4 <= room:  # at most 4 bytes a character: no need to encode
        return reason
    encoded = reason.encode("utf-8", "surrogatepass")
    if len(encoded) <= room:
        return reason
    if room < 3:
        return ""
    return encoded[:room - 3].decode("utf-8", "ignore") + "…"


class LeaseSettling:
    """Release, expire and the dead letters, for :class:`SQLiteEngine`."""

    if TYPE_CHECKING:
        path: str

        def _txn(self, what: str, body: Callable[..., R], *args: Any) -> R: ...

        def _range(self, conn: sqlite3.Connection, queue: str) -> tuple[int, int] | None: ...

        def _allocate(self, conn: sqlite3.Connection, queue: str, n: int, stored: int,
                      raw: int) -> tuple[int, int]: ...

        def _qno(self, conn: sqlite3.Connection, queue: str) -> int: ...

    def restore(self, queue: str, records: Sequence[StoredRecord]) -> None:
        if records:
            # Checked first: SQLite would keep text as a record or a reason, or a time that
            # is not a number, and count a text record in characters instead of bytes.
            records = checked_records(records)
            for rec in records:  # SQLite would store NaN as NULL
                refuse_nan(self.path, "restore", f"the enqueue time of record {rec.id}",
                           rec.enqueued_at)
            self._txn("restore", self._restore, as_queue_name(queue), records)

    def _restore(self, conn: sqlite3.Connection, queue: str,
                 records: Sequence[StoredRecord]) -> None:
        ids = distinct_ids(queue, records)
        row = conn.execute("SELECT last_seq FROM spoolq_queues WHERE name = ?",
                           (queue,)).fetchone()
        never = next((i for i in ids if not 0 < i <= (0 if row is None else row[0])), None)
        if never is not None:
            # Such a row would sit outside the queue's range, or be given out again by a put.
            raise never_given(queue, never)
        lo = self._qno(conn, queue) << SHIFT
        held = conn.execute(sql.HELD_IDS, (lo, json_list(ids), lo, json_list(ids))).fetchone()
        if held is not None:
            raise restore_refused(queue, int(held[0]) & MASK)  # rolled back: nothing changed
        conn.executemany(
            """INSERT INTO spoolq_records (id, attempts, enqueued_at, raw_size, reason, data)
            VALUES (?, ?, ?, ?, ?, ?)""",
            [(lo | r.id, r.attempts, r.enqueued_at, r.raw_size, r.reason, r.data)
             for r in records])
        conn.execute(sql.COUNTS, (len(records), 0, sum(len(r.data) for r in records),
                                  sum(r.raw_size for r in records), queue))

    def _unlease(self, conn: sqlite3.Connection, queue: str, ids: list[int], not_before: float,
                 max_attempts: int | None, attempt_delta: int,
                 reason: str | Sequence[str]) -> None:
        """Move leased rows (full ids) back to ready, or to the dead letters with ``reason``
        (one for all, or one per id)."""
        if not ids:
            return
        if max_attempts is not None and attempt_delta == 0:
            dead = [r[0] for r in conn.execute(
                "SELECT id FROM spoolq_leased WHERE id IN " + sql.IN_JSON + " AND attempts >= ? "
                "ORDER BY id", (json_list(ids), max_attempts))]
            if dead:
                if isinstance(reason, str):
                    reasons: Sequence[str] = [reason] * len(dead)
                else:
                    why = dict(zip(ids, reason, strict=True))
                    reasons = [why[i] for i in dead]
                self._bury(conn, queue, dead, reasons)
                gone = set(dead)
                ids = [i for i in ids if i not in gone]
        if ids:
            conn.execute(
                """INSERT INTO spoolq_records (id, visible_at, attempts, enqueued_at, raw_size,
                reason, data) SELECT id, ?, attempts + ?, enqueued_at, raw_size, reason, data
                FROM spoolq_leased WHERE id IN """ + sql.IN_JSON,
                (not_before, attempt_delta, json_list(ids)))
            conn.execute("DELETE FROM spoolq_leased WHERE id IN " + sql.IN_JSON, (json_list(ids),))
            conn.execute(sql.COUNTS, (len(ids), -len(ids), 0, 0, queue))

    def _bury(self, conn: sqlite3.Connection, queue: str, ids: list[int],
              reasons: Sequence[str]) -> None:
        """Move leased rows (full ids in increasing order, each leased) to the tail of the
        dead-letter queue, in that order, each with its reason, kept to MAX_REASON bytes (or
        fewer, in a row of a record larger than an append takes, which files of earlier
        versions may hold): the dead letter's row must fit SQLite's length limit, with room
        for the owner of a lease of it."""
        rows = conn.execute(sql.LEASED_LENGTHS, (json_list(ids),)).fetchall()
        n = len(rows)
        if n != len(ids):
            raise EngineError(f"{self.path}: {len(ids)} leased records to bury, {n} found")
        stored, raw = sum(r[0] for r in rows), sum(r[1] for r in rows)
        spare = length_limit(conn) - ROW_ROOM + MAX_REASON  # a reason's room beside no record
        reasons = [cut_reason(why, max(0, min(MAX_REASON, spare - r[0])))
                   for why, r in zip(reasons, rows, strict=True)]
        base, last = self._allocate(conn, dead_queue_name(queue), n, stored, raw)
        first = base | (last - n + 1)
        conn.executemany(sql.BURY_ROW, zip(range(first, first + n), reasons, ids, strict=True))
        conn.execute("DELETE FROM spoolq_leased WHERE id IN " + sql.IN_JSON, (json_list(ids),))
        conn.execute(sql.COUNTS, (0, -n, -stored, -raw, queue))

    def release(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str, *,
                not_before: float, max_attempts: int | None, count_attempt: bool = True,
                reason: str = "") -> list[int]:
        if type(reason) is not str:  # SQLite would store it; a list would be a reason per id
            as_text(reason, "a reason")
        as_max_attempts(max_attempts)
        refuse_nan(self.path, "release", "not_before", not_before)  # SQLite would store NULL
        if type(not_before) is not float:
            not_before = as_float_time(not_before)  # SQLite binds no int beyond 64 bits
        deliveries = in_range(deliveries)
        if not deliveries:
            return []
        return self._txn(
            "release", self._release, queue, deliveries, owner, not_before, max_attempts,
            0 if count_attempt else -1, reason or "nacked")

    def _release(self, conn: sqlite3.Connection, queue: str,
                 deliveries: Sequence[tuple[int, int]], owner: str, not_before: float,
                 max_attempts: int | None, delta: int, reason: str) -> list[int]:
        known = self._range(conn, queue)
        if known is None or holds_nothing(owner, conn):
            return []
        ids = [r[0] for r in conn.execute(sql.HELD, (owner, known[0], json_list(deliveries)))]
        self._unlease(conn, queue, ids, not_before, max_attempts, delta, reason)
        return sorted(i & MASK for i in ids)

    def expire(self, queue: str, now: float, *, owners: Sequence[str] = (),
               max_attempts: int | None = None) -> int:
        check_expire(now, owners, max_attempts)
        now = as_float_time(now)  # SQLite binds no int beyond 64 bits: 10**400 is past the end
        owners = [o for o in owners if isinstance(o, str)]  # others hold no lease
        return self._txn("expire", self._expire, queue, now, owners, max_attempts)

    def _expire(self, conn: sqlite3.Connection, queue: str, now: float, owners: Sequence[str],
                max_attempts: int | None) -> int:
        known = self._range(conn, queue)
        if known is None:
            return 0
        lo, hi = known
        gone, after, count = json_list(owners), lo - 1, 0
        while True:  # a chunk of leases at a time, in id order: memory stays bounded
            rows = conn.execute(
                "SELECT id, until <= ? FROM spoolq_leased WHERE id > ? AND id <= ? "
                "AND (until <= ? OR owner IN " + sql.IN_JSON + ") ORDER BY id LIMIT ?",
                (now, after, hi, now, gone, CHUNK)).fetchall()
            self._unlease(conn, queue, [r[0] for r in rows], 0.0, max_attempts, 0,
                          ["lease expired" if r[1] else "owner died" for r in rows])
            count += len(rows)
            if len(rows) < CHUNK:
                return count
            after = rows[-1][0]
