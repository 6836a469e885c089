"""The SQLite engine: the embedded default.

One file holds any number of named queues. Each queue gets a number when it is
first used, and a record's row id is ``queue number << 40 | sequence``, so the
records of one queue sit together in id order: FIFO is a range scan of the
table's own b-tree, with no extra index to maintain. The sequence comes from a
counter in the queue's row of ``spoolq_queues``, next to its counts and sizes,
and all of them change in the same transaction as the records (one page for
the bookkeeping of a put), so counts are O(1) and right across processes and
sequences only grow. Ready records live in ``spoolq_records``; a leased record
moves to ``spoolq_leased`` under the same id and moves back, to its original
place, when its lease is released. The file runs in WAL mode; every call is one
``BEGIN IMMEDIATE`` transaction and all SQL is parameterized (lists travel as
JSON arrays through ``json_each``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from itertools import chain, repeat
from operator import itemgetter
from typing import Any, TypeVar

from ..errors import EngineError, FormatError
from . import _sqlite_forks as forking
from . import _sqlite_schema as opening
from . import _sqlite_sql as sql
from ._checks import (
    as_bytes,
    as_int,
    as_meta_key,
    names_nothing_stored,
)
from ._forkguard import enter, leave
from ._sqlite_leases import LeaseSettling, holds_nothing, in_range
from ._sqlite_move import Moving
from ._sqlite_takewrite import TakeWriting
from .base import (
    Counts,
    Lease,
    LeasedRecord,
    PageEnds,
    StoredRecord,
    batch_given,
    check_window,
    forks,
)

__all__ = ["SQLiteEngine"]

log = logging.getLogger("spoolq")
R = TypeVar("R")

_SHIFT, _MASK, _json = sql.SHIFT, sql.MASK, sql.json_list
_ALWAYS_FITS = 32 * 1024  # a record this small needs no look at the limit: far below it
_data, _raw_size = itemgetter(1), itemgetter(2)
_new_record = partial(tuple.__new__, StoredRecord)
"""``StoredRecord`` from one tuple of its fields, without the generated ``__new__``."""


class SQLiteEngine(LeaseSettling, Moving, TakeWriting, forking.Forking):
    """Queue storage in one SQLite file (WAL mode), safe to share between processes.

    ``synchronous`` is ``"FULL"`` (every commit is fsynced: survives power
    loss) or ``"NORMAL"`` (survives a killed process; WAL keeps the file
    sound on power loss but the last commits may be lost). ``timeout`` is how
    long a write waits for another process's lock before :class:`LockTimeout`.
    ``page_size`` applies to a file this call creates (1024 by default: short
    commits for small records; 4096 or more suits records of 64 KiB and up);
    an existing file keeps its own. Record ids are sequences within their queue.
    """

    name = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL",
                 timeout: float = 10.0, read_only: bool = False,
                 page_size: int = opening.PAGE_SIZE) -> None:
        timeout = opening.check_settings(synchronous, timeout, page_size)
        self.path = os.fspath(path)
        self.read_only = read_only
        self._qnos: dict[str, int] = {}
        self._writes = 0  # write transactions of this connection (PRAGMA data_version
        # counts only other connections')
        self._pages = PageEnds()
        if read_only and not os.path.exists(self.path):
            raise FormatError(f"{self.path}: no such file")
        if os.path.isdir(self.path):
            raise FormatError(f"{self.path} is a directory, not a spoolq SQLite queue file")
        self._settings = timeout, synchronous, page_size
        self._forks = forks()
        self._first_connect()

    @property
    def brief(self) -> bool:
        """Whether calls are brief while no other process holds the file's lock: no fsync
        at each commit (see :meth:`no_wait`)."""
        return self._settings[1] != "FULL" and not self.read_only

    def _closed(self) -> None:
        self._connection = opening.Closed(self.path)  # type: ignore[assignment]
        self._cur = self._connection  # type: ignore[assignment]

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        inside = enter()  # no fork while the call runs (see _forkguard)
        try:
            conn = self._conn  # the one the call reads, whatever a fork after it does
            if self._busy.off:  # a call outside no_wait() waits for locks again
                self._busy.restore(conn)
            yield
        except sqlite3.Error as exc:
            opening.check_unchanged(conn, self.path)
            raise opening.translate(exc, self.path, what) from exc
        finally:
            leave(inside)
        opening.check_unchanged(conn, self.path)  # read unlocked

    def _txn(self, what: str, body: Callable[..., R], *args: Any) -> R:
        """Run ``body(conn, *args)`` in one write transaction (BEGIN IMMEDIATE ... COMMIT)."""
        inside = enter()  # no fork from here to the commit (see _forkguard)
        try:
            conn = self._conn
            cur = self._cur
            self._writes += 1
            if self._busy.off:
                self._busy.restore(conn)
            cur.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn, *args)
                cur.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._qnos.clear()  # a queue numbered in the rolled-back transaction is not
                raise
        except sqlite3.Error as exc:
            raise opening.translate(exc, self.path, what) from exc
        finally:
            leave(inside)
        return result

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._guard(what):
            conn = self._conn  # inside the call: a fork comes before or after it
            self._writes += 1
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # ---- queue numbers ------------------------------------------------------------------

    def _find_qno(self, conn: sqlite3.Connection, queue: str) -> int | None:
        """The queue's number, or None if it was never used; cached, as it never changes."""
        qno = self._qnos.get(queue)
        if qno is None:
            if names_nothing_stored(queue):
                return None  # not UTF-8: no queue has such a name, nor can SQLite compare it
            row = conn.execute("SELECT qno FROM spoolq_queues WHERE name = ?", (queue,)).fetchone()
            if row is None:
                return None
            qno = self._qnos[queue] = int(row[0])
        return qno

    def _qno(self, conn: sqlite3.Connection, queue: str) -> int:
        """The queue's number, giving it one on first use (inside a write transaction)."""
        qno = self._find_qno(conn, queue)
        if qno is None:
            top = int(conn.execute(sql.TOP_QNO).fetchone()[0])
            if top >= sql.MAX_QNO:  # a larger number would not fit a record's id
                raise EngineError(f"{self.path}: cannot add queue {queue!r}: the file has "
                                  f"numbered {sql.MAX_QNO:,} queues, the most it can; nothing "
                                  "was changed")
            conn.execute(sql.NEW_QUEUE, (queue, top + 1))
            qno = self._find_qno(conn, queue)
            if qno is None:
                raise EngineError(f"{self.path}: could not register queue {queue!r}")
        return qno

    def _range(self, conn: sqlite3.Connection, queue: str) -> tuple[int, int] | None:
        """The first and last full id of a queue's records, or None for a queue that never
        held any (which a take or a lease settling call leaves unknown to the file)."""
        qno = self._find_qno(conn, queue)
        return None if qno is None else (qno << _SHIFT, (qno << _SHIFT) | _MASK)

    @staticmethod
    def _records(rows: list[tuple[Any, ...]]) -> list[StoredRecord]:
        new = tuple.__new__  # StoredRecord(...) without the generated __new__
        return [new(StoredRecord, (i & _MASK, data, raw, attempts, at, reason))
                for i, data, raw, attempts, at, reason in sorted(rows)]

    # ---- writing ------------------------------------------------------------------------

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        if not batch_given(records, raw_sizes):
            return []
        queue, records, now = self._appending(queue, records, raw_sizes, now)
        last: int = self._txn("append", self._append, queue, records, raw_sizes, now)
        return list(range(last - len(records) + 1, last + 1))

    def check_records(self, queue: str, records: Sequence[bytes]) -> None:
        """ValueError, naming its size, for a record larger than a row of SQLite holds
        (SQLite's length limit, 1,000,000,000 bytes unless it was built with another,
        less room for the row's other columns, a lease's owner and a dead letter's
        reason)."""
        largest = len(records[0]) if len(records) == 1 else max(map(len, records), default=0)
        if largest <= _ALWAYS_FITS:  # every put of small items comes here: spare the rest
            return
        inside = enter()  # a fork comes before the read of the connection or after its use
        try:
            room = opening.length_limit(self._conn) - sql.ROW_ROOM
        finally:
            leave(inside)
        if largest > room:
            raise ValueError(f"cannot append a record of {largest} bytes into queue {queue!r}: "
                             f"an SQLite row holds a record of {room} bytes at most; nothing "
                             "was stored")

    def _allocate(self, conn: sqlite3.Connection, queue: str, n: int, stored: int,
                  raw: int) -> tuple[int, int]:
        """Reserve n sequences (and count n ready records); return (base id, last seq)."""
        qno = self._qno(conn, queue)
        last = int(conn.execute(sql.ALLOCATE, (n, stored, raw, queue)).fetchone()[0])
        if last > _MASK:  # the ids past the last would be the next queue's (rolled back)
            raise self._used_up(queue)
        return qno << _SHIFT, last

    def _used_up(self, queue: str) -> EngineError:
        return EngineError(f"{self.path}: queue {queue!r} has given out all {_MASK:,} ids "
                           "a record of it can have; nothing was changed (move its records "
                           "to a queue of another name)")

    def _append(self, conn: sqlite3.Connection, queue: str, records: Sequence[bytes],
                raw_sizes: Sequence[int], now: float) -> int:
        n = len(records)
        if n == 1:
            qno = self._qno(conn, queue)
            conn.execute(sql.BUMP, (len(records[0]), raw_sizes[0], queue))
            rowid = conn.execute(sql.INSERT_NEXT, (queue, qno << _SHIFT, now, raw_sizes[0],
                                                records[0])).lastrowid
            # Past the last sequence the id is the next queue's, or sequence 0 of its own.
            if rowid is None or rowid >> _SHIFT != qno or not rowid & _MASK:
                raise self._used_up(queue)
            return int(rowid) & _MASK
        base, last = self._allocate(conn, queue, n, sum(map(len, records)), sum(raw_sizes))
        first = base | (last - n + 1)
        pos = 0
        for k in sql.ROWS_PER_INSERT:
            statement = sql.INSERT_ROWS[k]
            while n - pos >= k:
                end = pos + k
                conn.execute(statement, list(chain.from_iterable(zip(
                    range(first + pos, first + end), repeat(now, k), raw_sizes[pos:end],
                    records[pos:end], strict=True))))
                pos = end
        return last

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        taking = self._taking(n, now, lease)
        if taking is None:
            return []
        rows: list[tuple[Any, ...]] = self._txn("take", self._take, queue, *taking)
        return self._taken(rows, taking[2])

    def _taken(self, rows: list[tuple[Any, ...]], lease: Lease | None) -> list[StoredRecord]:
        if lease is None:
            return list(map(_new_record, rows))  # already the records, in id order
        return self._records(rows)

    def _take(self, conn: sqlite3.Connection, queue: str, n: int, now: float,
              lease: Lease | None) -> list[tuple[Any, ...]]:
        ids = self._range(conn, queue)
        if ids is None:
            return []
        lo, hi = ids
        if lease is None:
            cur = self._cur
            rows = cur.execute(sql.READY_ROWS, (lo, hi, now, n)).fetchall()
            if rows:
                removed = cur.execute(sql.REMOVE_RANGE, (lo + rows[0][0], lo + rows[-1][0],
                                                         now)).rowcount
                if removed != len(rows):
                    raise EngineError(f"{self.path}: a take read {len(rows)} records but "
                                      f"would remove {removed}")
                cur.execute(sql.COUNTS, (-len(rows), 0, -sum(map(len, map(_data, rows))),
                                         -sum(map(_raw_size, rows)), queue))
            return rows
        # Copied row to row inside SQLite: no Python tuple per leased record.
        moved = conn.execute(sql.LEASE_COPY, (lease.owner, lease.until, lo, hi, now, n)).rowcount
        if not moved:
            return []
        rows = conn.execute(sql.LEASE_REMOVE, (lo, hi, now, n)).fetchall()
        conn.execute(sql.COUNTS, (-len(rows), len(rows), 0, 0, queue))
        return rows

    def ack(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str) -> list[int]:
        deliveries = in_range(deliveries)
        if not deliveries:
            return []
        return self._txn("ack", self._ack, queue, deliveries, owner)

    def _ack(self, conn: sqlite3.Connection, queue: str, deliveries: Sequence[tuple[int, int]],
             owner: str) -> list[int]:
        ids = self._range(conn, queue)
        if ids is None or holds_nothing(owner, conn):
            return []
        lo = ids[0]
        wanted = dict(deliveries)
        # Fast path: delete by id and owner, then check the attempts; a stale delivery (the
        # same owner acking an earlier attempt) is rare and takes the exact, slower query.
        conn.execute("SAVEPOINT spoolq_ack")
        rows = conn.execute(sql.ACK_ANY, (owner, lo, _json(list(wanted)))).fetchall()
        if len(wanted) != len(deliveries) or any(wanted[r[0] & _MASK] != r[1] for r in rows):
            conn.execute("ROLLBACK TO spoolq_ack")
            rows = conn.execute(
                "DELETE FROM spoolq_leased WHERE id IN (" + sql.HELD + ") "
                "RETURNING id, attempts, length(data), raw_size",
                (owner, lo, _json(deliveries))).fetchall()
        conn.execute("RELEASE spoolq_ack")
        if rows:
            conn.execute(sql.COUNTS, (0, -len(rows), -sum(r[2] for r in rows),
                                   -sum(r[3] for r in rows), queue))
        return sorted(r[0] & _MASK for r in rows)

    # ---- reading ------------------------------------------------------------------------

    def _read(self, what: str, body: Callable[..., R], queue: str, default: R,
              *args: Any) -> R:
        with self._guard(what):
            qno = self._find_qno(self._conn, queue)
            if qno is None:
                return default
            return body(qno << _SHIFT, (qno << _SHIFT) | _MASK, *args)

    def _page(self, table: str, columns: str, lo: int, hi: int, n: int,
              offset: int) -> list[tuple[Any, ...]]:
        """Rows ``offset`` to ``offset + n`` of a queue's range in ``table``, in id order.

        The page after the last one goes on from its last id when nothing changed the
        file since (PRAGMA data_version counts other connections' commits, ``_writes``
        this one's): see :class:`PageEnds`.
        """
        version = (self._conn.execute("PRAGMA data_version").fetchone()[0], self._writes)
        after = self._pages.resume(version, (table, lo), offset)
        if after is not None:
            rows = self._conn.execute(
                f"SELECT {columns} FROM {table} WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                (after, hi, n)).fetchall()
        else:
            rows = self._conn.execute(
                f"SELECT {columns} FROM {table} WHERE id BETWEEN ? AND ? ORDER BY id "
                "LIMIT ? OFFSET ?", (lo, hi, n, offset)).fetchall()
        if rows:
            self._pages.ended((table, lo), offset, len(rows), rows[-1][0],
                              rows[-2][0] if len(rows) > 1 else None)
        return rows

    def peek(self, queue: str, n: int, offset: int = 0) -> list[StoredRecord]:
        n, offset = check_window(as_int(n, "n"), as_int(offset, "offset"))

        def body(lo: int, hi: int) -> list[StoredRecord]:
            return self._records(self._page("spoolq_records", sql.COLUMNS, lo, hi, n, offset))

        return self._read("peek", body, queue, [])

    def peek_leased(self, queue: str, n: int, offset: int = 0) -> list[LeasedRecord]:
        n, offset = check_window(as_int(n, "n"), as_int(offset, "offset"))

        def body(lo: int, hi: int) -> list[LeasedRecord]:
            rows = self._page("spoolq_leased", sql.COLUMNS + ", owner, until", lo, hi, n, offset)
            return [LeasedRecord(StoredRecord(r[0] & _MASK, *r[1:6]), r[6], r[7]) for r in rows]

        return self._read("peek_leased", body, queue, [])

    def counts(self, queue: str) -> Counts:
        if names_nothing_stored(queue):
            return Counts(0, 0, 0, 0)
        with self._guard("counts"):
            row = self._conn.execute(
                "SELECT ready, leased, stored_bytes, raw_bytes FROM spoolq_queues WHERE name = ?",
                (queue,)).fetchone()
        return Counts(0, 0, 0, 0) if row is None else Counts(*row)

    def owners(self, queue: str) -> dict[str, int]:
        def body(lo: int, hi: int) -> dict[str, int]:
            return dict(self._conn.execute(
                "SELECT owner, count(*) FROM spoolq_leased WHERE id BETWEEN ? AND ? "
                "GROUP BY owner", (lo, hi)).fetchall())

        return self._read("owners", body, queue, {})

    def purge(self, queue: str) -> int:
        return self._txn("purge", self._purge, queue)

    def _purge(self, conn: sqlite3.Connection, queue: str) -> int:
        qno = self._find_qno(conn, queue)
        if qno is None:
            return 0  # a queue never used stays unknown to the file
        lo, hi = qno << _SHIFT, (qno << _SHIFT) | _MASK
        removed = conn.execute("DELETE FROM spoolq_records WHERE id BETWEEN ? AND ?",
                               (lo, hi)).rowcount
        removed += conn.execute("DELETE FROM spoolq_leased WHERE id BETWEEN ? AND ?",
                                (lo, hi)).rowcount
        conn.execute("""UPDATE spoolq_queues SET ready = 0, leased = 0, stored_bytes = 0,
            raw_bytes = 0 WHERE name = ?""", (queue,))
        return int(removed)

    def queues(self) -> list[str]:
        with self._guard("queues"):
            # Files of earlier versions registered a queue on a take or an expire too; a
            # queue that got no sequence (nor a restored record) never held one.
            return [r[0] for r in self._conn.execute(
                "SELECT name FROM spoolq_queues WHERE (last_seq > 0 OR ready + leased > 0) "
                "AND typeof(name) = 'text' ORDER BY name")]

    def names_not_text(self) -> list[bytes]:
        """The names :meth:`queues` leaves out: bytes, which a spoolq that did not check
        the type of a name stored. No queue opens by such a name; ``counts``, ``peek`` and
        ``peek_leased`` read it."""
        with self._guard("queues"):
            return [bytes(r[0]) for r in self._conn.execute(
                "SELECT name FROM spoolq_queues WHERE (last_seq > 0 OR ready + leased > 0) "
                "AND typeof(name) = 'blob' ORDER BY name")]

    def get_meta(self, key: str) -> bytes | None:
        if names_nothing_stored(key):
            return None  # not UTF-8: no set_meta stores such a key
        with self._guard("get_meta"):
            row = self._conn.execute("SELECT CAST(value AS BLOB) FROM spoolq_meta WHERE key = ?",
                                     (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, key: str, value: bytes) -> None:
        row = as_meta_key(key), as_bytes(value, "a metadata value")
        with self._write("set_meta") as conn:
            conn.execute("INSERT OR REPLACE INTO spoolq_meta (key, value) VALUES (?, ?)", row)
