"""The SQLite engine: the embedded default.

One file holds any number of named queues in a single ``spoolq_records``
table, ordered by an AUTOINCREMENT id so ids are never reused. Counts and
sizes per queue live in ``spoolq_queues`` and change in the same transaction
as the records, so they are O(1) and right across processes. The file runs in
WAL mode; every call is one ``BEGIN IMMEDIATE`` transaction and all SQL is
parameterized (lists travel as JSON arrays through ``json_each``).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ..errors import ConfigurationError, CorruptError, EngineError, FormatError, LockTimeout
from .base import FORMAT_VERSION, Counts, Lease, StoredRecord, dead_queue_name

__all__ = ["SQLiteEngine"]

log = logging.getLogger("spoolq")

_APPLICATION = b"spoolq"
_SCHEMA = (
    "CREATE TABLE spoolq_meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    """CREATE TABLE spoolq_records (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        state INTEGER NOT NULL DEFAULT 0,
        visible_at REAL NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        enqueued_at REAL NOT NULL,
        raw_size INTEGER NOT NULL,
        reason TEXT,
        data BLOB NOT NULL)""",
    "CREATE INDEX spoolq_records_fifo ON spoolq_records (queue, state, id)",
    """CREATE TABLE spoolq_queues (
        name TEXT PRIMARY KEY,
        ready INTEGER NOT NULL DEFAULT 0,
        leased INTEGER NOT NULL DEFAULT 0,
        stored_bytes INTEGER NOT NULL DEFAULT 0,
        raw_bytes INTEGER NOT NULL DEFAULT 0)""",
)
_COUNTS = """INSERT INTO spoolq_queues (name, ready, leased, stored_bytes, raw_bytes)
    VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET
    ready = ready + excluded.ready, leased = leased + excluded.leased,
    stored_bytes = stored_bytes + excluded.stored_bytes,
    raw_bytes = raw_bytes + excluded.raw_bytes"""
_INSERT = """INSERT INTO spoolq_records (queue, data, raw_size, enqueued_at)
    VALUES (?, ?, ?, ?)"""
_COLUMNS = "id, data, raw_size, attempts, enqueued_at, reason"
_READY_IDS = """SELECT id FROM spoolq_records WHERE queue = ? AND state = 0 AND visible_at <= ?
    ORDER BY id LIMIT ?"""
_REMOVE = f"DELETE FROM spoolq_records WHERE id IN ({_READY_IDS}) RETURNING {_COLUMNS}"
_LEASE = f"""UPDATE spoolq_records SET state = 1, owner = ?, visible_at = ?, attempts = attempts + 1
    WHERE id IN ({_READY_IDS}) RETURNING {_COLUMNS}"""
_HELD = """SELECT id FROM spoolq_records WHERE queue = ? AND state = 1 AND owner = ?
    AND (id, attempts) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')
                           FROM json_each(?))"""
_MIN_SQLITE = (3, 35, 0)
_SYNCHRONOUS = {
    "FULL": "PRAGMA synchronous = FULL",
    "NORMAL": "PRAGMA synchronous = NORMAL",
    "OFF": "PRAGMA synchronous = OFF",
}


def _ids_json(ids: Sequence[int]) -> str:
    return json.dumps(list(ids))


class SQLiteEngine:
    """Queue storage in one SQLite file (WAL mode), safe to share between processes.

    ``synchronous`` is ``"FULL"`` (every commit is fsynced: survives power
    loss) or ``"NORMAL"`` (survives a killed process; WAL keeps the file
    sound on power loss but the last commits may be lost). ``timeout`` is how
    long a write waits for another process's lock before :class:`LockTimeout`.
    """

    name = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL",
                 timeout: float = 10.0, read_only: bool = False) -> None:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise EngineError(
                f"spoolq needs SQLite 3.35 or newer; this Python has {sqlite3.sqlite_version}")
        if synchronous not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"synchronous must be FULL, NORMAL or OFF, not {synchronous!r}")
        self.path = os.fspath(path)
        self.read_only = read_only
        if read_only and not os.path.exists(self.path):
            raise FormatError(f"{self.path}: no such file")
        with self._guard("open"):
            if read_only:
                uri = "file:" + os.path.abspath(self.path) + "?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, isolation_level=None,
                                             check_same_thread=False, timeout=timeout)
            else:
                self._conn = sqlite3.connect(self.path, isolation_level=None,
                                             check_same_thread=False, timeout=timeout)
        try:
            with self._guard("open"):
                self._setup(synchronous)
        except BaseException:
            self._conn.close()
            raise

    def _setup(self, synchronous: str) -> None:
        conn = self._conn
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables and not self.read_only:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.executemany("INSERT INTO spoolq_meta (key, value) VALUES (?, ?)", [
                    ("application", _APPLICATION),
                    ("format_version", str(FORMAT_VERSION).encode()),
                ])
            conn.execute("COMMIT")
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "spoolq_meta" not in tables or "spoolq_records" not in tables:
            raise FormatError(f"{self.path} is an SQLite database but not a spoolq queue file")
        version = self.get_meta("format_version")
        if self.get_meta("application") != _APPLICATION or version is None:
            raise FormatError(f"{self.path} is an SQLite database but not a spoolq queue file")
        if version != str(FORMAT_VERSION).encode():
            raise FormatError(
                f"{self.path} has format version {version.decode(errors='replace')}; "
                f"this spoolq reads version {FORMAT_VERSION}")
        if not self.read_only:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(_SYNCHRONOUS[synchronous])

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise LockTimeout(f"{self.path}: {what} waited too long for a lock: {text}") \
                    from exc
            if "malformed" in text or "corrupt" in text:
                raise CorruptError(f"{self.path} is damaged: {text}") from exc
            raise EngineError(f"{self.path}: {what} failed: {text}") from exc
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if "not a database" in text:
                raise FormatError(f"{self.path} is not a spoolq queue file ({text})") from exc
            if "malformed" in text or "corrupt" in text:
                raise CorruptError(f"{self.path} is damaged: {text}") from exc
            raise EngineError(f"{self.path}: {what} failed: {text}") from exc

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        with self._guard(what):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def append(self, queue: str, records: Sequence[bytes], raw_sizes: Sequence[int],
               now: float) -> list[int]:
        if len(records) != len(raw_sizes):
            raise ValueError("records and raw_sizes differ in length")
        if not records:
            return []
        with self._write("append") as conn:
            if len(records) == 1:
                conn.execute(_INSERT, (queue, records[0], raw_sizes[0], now))
            else:
                conn.executemany(_INSERT, [(queue, data, raw, now) for data, raw
                                           in zip(records, raw_sizes, strict=True)])
            last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            conn.execute(_COUNTS, (queue, len(records), 0, sum(map(len, records)),
                                   sum(raw_sizes)))
        return list(range(last - len(records) + 1, last + 1))

    def take(self, queue: str, n: int, now: float, lease: Lease | None) -> list[StoredRecord]:
        with self._write("take") as conn:
            if lease is None:
                rows = conn.execute(_REMOVE, (queue, now, n)).fetchall()
            else:
                rows = conn.execute(_LEASE, (lease.owner, lease.until, queue, now, n)).fetchall()
            if not rows:
                return []
            if lease is None:
                conn.execute(_COUNTS, (queue, -len(rows), 0, -sum(len(r[1]) for r in rows),
                                       -sum(r[2] for r in rows)))
            else:
                conn.execute(_COUNTS, (queue, -len(rows), len(rows), 0, 0))
        rows.sort()
        return [StoredRecord(*row) for row in rows]

    def restore(self, queue: str, records: Sequence[StoredRecord]) -> None:
        if not records:
            return
        with self._write("restore") as conn:
            conn.executemany(
                """INSERT INTO spoolq_records (id, queue, data, raw_size, attempts, enqueued_at,
                reason) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                [(r.id, queue, r.data, r.raw_size, r.attempts, r.enqueued_at, r.reason)
                 for r in records])
            conn.execute(_COUNTS, (queue, len(records), 0, sum(len(r.data) for r in records),
                                   sum(r.raw_size for r in records)))

    def ack(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str) -> list[int]:
        if not deliveries:
            return []
        with self._write("ack") as conn:
            rows = conn.execute(
                f"DELETE FROM spoolq_records WHERE id IN ({_HELD}) "
                "RETURNING id, length(data), raw_size",
                (queue, owner, json.dumps(list(deliveries)))).fetchall()
            if rows:
                conn.execute(_COUNTS, (queue, 0, -len(rows), -sum(r[1] for r in rows),
                                       -sum(r[2] for r in rows)))
        return sorted(r[0] for r in rows)

    def _unlease(self, conn: sqlite3.Connection, queue: str, ids: list[int], not_before: float,
                 max_attempts: int | None, attempt_delta: int, reason: str) -> None:
        """Turn leased ``ids`` back to ready (or dead letters); inside a write transaction."""
        if not ids:
            return
        dead: list[tuple[int, int, int]] = []
        if max_attempts is not None and attempt_delta == 0:
            dead = conn.execute(
                """SELECT id, length(data), raw_size FROM spoolq_records
                WHERE id IN (SELECT value FROM json_each(?)) AND attempts >= ?""",
                (_ids_json(ids), max_attempts)).fetchall()
        if dead:
            dead_ids = [r[0] for r in dead]
            dq = dead_queue_name(queue)
            conn.execute(
                """INSERT INTO spoolq_records (queue, data, raw_size, attempts, enqueued_at,
                reason) SELECT ?, data, raw_size, attempts, enqueued_at, ? FROM spoolq_records
                WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id""",
                (dq, reason, _ids_json(dead_ids)))
            conn.execute("DELETE FROM spoolq_records WHERE id IN (SELECT value FROM json_each(?))",
                         (_ids_json(dead_ids),))
            stored, raw = sum(r[1] for r in dead), sum(r[2] for r in dead)
            conn.execute(_COUNTS, (queue, 0, -len(dead), -stored, -raw))
            conn.execute(_COUNTS, (dq, len(dead), 0, stored, raw))
            dead_set = set(dead_ids)
            ids = [i for i in ids if i not in dead_set]
        if ids:
            conn.execute(
                """UPDATE spoolq_records SET state = 0, owner = NULL, visible_at = ?,
                attempts = attempts + ? WHERE id IN (SELECT value FROM json_each(?))""",
                (not_before, attempt_delta, _ids_json(ids)))
            conn.execute(_COUNTS, (queue, len(ids), -len(ids), 0, 0))

    def release(self, queue: str, deliveries: Sequence[tuple[int, int]], owner: str, *,
                not_before: float, max_attempts: int | None, count_attempt: bool = True,
                reason: str = "") -> list[int]:
        if not deliveries:
            return []
        with self._write("release") as conn:
            ids = [r[0] for r in conn.execute(_HELD, (queue, owner,
                                                       json.dumps(list(deliveries))))]
            self._unlease(conn, queue, ids, not_before, max_attempts,
                          0 if count_attempt else -1, reason or "nacked")
        return sorted(ids)

    def expire(self, queue: str, now: float, *, owners: Sequence[str] = (),
               max_attempts: int | None = None) -> int:
        with self._write("expire") as conn:
            rows = conn.execute(
                """SELECT id, visible_at <= ? FROM spoolq_records WHERE queue = ? AND state = 1
                AND (visible_at <= ? OR owner IN (SELECT value FROM json_each(?)))""",
                (now, queue, now, json.dumps(list(owners)))).fetchall()
            expired = [r[0] for r in rows if r[1]]
            orphaned = [r[0] for r in rows if not r[1]]
            self._unlease(conn, queue, expired, 0.0, max_attempts, 0, "lease expired")
            self._unlease(conn, queue, orphaned, 0.0, max_attempts, 0, "owner died")
        return len(rows)

    def peek(self, queue: str, n: int, offset: int = 0) -> list[StoredRecord]:
        with self._guard("peek"):
            rows = self._conn.execute(
                f"""SELECT {_COLUMNS} FROM spoolq_records WHERE queue = ? AND state = 0
                ORDER BY id LIMIT ? OFFSET ?""", (queue, n, offset)).fetchall()
        return [StoredRecord(*row) for row in rows]

    def counts(self, queue: str) -> Counts:
        with self._guard("counts"):
            row = self._conn.execute(
                "SELECT ready, leased, stored_bytes, raw_bytes FROM spoolq_queues WHERE name = ?",
                (queue,)).fetchone()
        return Counts(0, 0, 0, 0) if row is None else Counts(*row)

    def owners(self, queue: str) -> dict[str, int]:
        with self._guard("owners"):
            rows = self._conn.execute(
                """SELECT owner, count(*) FROM spoolq_records WHERE queue = ? AND state = 1
                GROUP BY owner""", (queue,)).fetchall()
        return dict(rows)

    def move(self, src: str, dst: str, ids: Sequence[int] | None = None) -> int:
        with self._write("move") as conn:
            if ids is None:
                chosen = [r[0] for r in conn.execute(
                    "SELECT id FROM spoolq_records WHERE queue = ? AND state = 0 ORDER BY id",
                    (src,))]
            else:
                chosen = [r[0] for r in conn.execute(
                    """SELECT id FROM spoolq_records WHERE queue = ? AND state = 0
                    AND id IN (SELECT value FROM json_each(?)) ORDER BY id""",
                    (src, _ids_json(ids)))]
            if not chosen:
                return 0
            moved = _ids_json(chosen)
            stored, raw = conn.execute(
                """SELECT total(length(data)), total(raw_size) FROM spoolq_records
                WHERE id IN (SELECT value FROM json_each(?))""", (moved,)).fetchone()
            conn.execute(
                """INSERT INTO spoolq_records (queue, data, raw_size, enqueued_at)
                SELECT ?, data, raw_size, enqueued_at FROM spoolq_records
                WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id""", (dst, moved))
            conn.execute("DELETE FROM spoolq_records WHERE id IN (SELECT value FROM json_each(?))",
                         (moved,))
            conn.execute(_COUNTS, (src, -len(chosen), 0, -int(stored), -int(raw)))
            conn.execute(_COUNTS, (dst, len(chosen), 0, int(stored), int(raw)))
        return len(chosen)

    def purge(self, queue: str) -> int:
        with self._write("purge") as conn:
            removed = conn.execute("DELETE FROM spoolq_records WHERE queue = ?", (queue,)).rowcount
            conn.execute("DELETE FROM spoolq_queues WHERE name = ?", (queue,))
        return int(removed)

    def queues(self) -> list[str]:
        with self._guard("queues"):
            return [r[0] for r in self._conn.execute(
                "SELECT name FROM spoolq_queues ORDER BY name")]

    def get_meta(self, key: str) -> bytes | None:
        with self._guard("get_meta"):
            row = self._conn.execute("SELECT value FROM spoolq_meta WHERE key = ?",
                                     (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, key: str, value: bytes) -> None:
        with self._write("set_meta") as conn:
            conn.execute("INSERT OR REPLACE INTO spoolq_meta (key, value) VALUES (?, ?)",
                         (key, value))

    def close(self) -> None:
        """Close the connection; a second call does nothing."""
        conn = getattr(self, "_conn", None)
        if conn is not None:
            self._conn = None  # type: ignore[assignment]
            conn.close()
