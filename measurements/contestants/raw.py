"""Baselines written by hand on the standard library and py-lmdb."""

from __future__ import annotations

import os
import pickle
import sqlite3
import struct
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from measurements.contestants.base import MISSING, PollingContestant, load


class RawSqlite(PollingContestant):
    """One sqlite3 table in WAL mode.

    ``per_op=True``: every put and get is its own transaction (a put_many or
    get_many call is one). ``per_op=False``: one transaction stays open until
    the end of the phase.
    """

    def __init__(self, synchronous: str, per_op: bool) -> None:
        super().__init__()
        self.synchronous = synchronous
        self.per_op = per_op
        self._lock = threading.Lock()
        self._in_txn = False

    def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        self.conn = sqlite3.connect(
            tmpdir / "queue.sqlite", isolation_level=None, check_same_thread=False
        )
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={self.synchronous}")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY, data BLOB NOT NULL)"
        )

    def _begin(self) -> None:
        if not self._in_txn:
            self.conn.execute("BEGIN IMMEDIATE")
            self._in_txn = True

    def store(self, item: bytes) -> None:
        with self._lock:
            if not self.per_op:
                self._begin()
            self.conn.execute("INSERT INTO q (data) VALUES (?)", (item,))

    def store_many(self, items: Sequence[bytes]) -> None:
        with self._lock:
            rows = [(item,) for item in items]
            if self.per_op:
                with self.conn:
                    self.conn.execute("BEGIN IMMEDIATE")
                    self.conn.executemany("INSERT INTO q (data) VALUES (?)", rows)
            else:
                self._begin()
                self.conn.executemany("INSERT INTO q (data) VALUES (?)", rows)

    def try_get(self) -> Any:
        with self._lock:
            if not self.per_op:
                self._begin()
            rows = self.conn.execute(
                "DELETE FROM q WHERE id = (SELECT min(id) FROM q) RETURNING data"
            ).fetchall()
        return rows[0][0] if rows else MISSING

    def try_get_many(self, n: int) -> list[Any]:
        with self._lock:
            if not self.per_op:
                self._begin()
            rows = self.conn.execute(
                "DELETE FROM q WHERE id IN (SELECT id FROM q ORDER BY id LIMIT ?) "
                "RETURNING id, data",
                (n,),
            ).fetchall()
        rows.sort()
        return [data for _, data in rows]

    def flush(self) -> None:
        with self._lock:
            if self._in_txn:
                self.conn.execute("COMMIT")
                self._in_txn = False

    def close(self) -> None:
        self.flush()
        self.conn.close()


class RawLmdb(PollingContestant):
    """A py-lmdb environment whose keys are a big-endian counter."""

    def __init__(self, sync: bool, per_op: bool, metasync: bool | None = None) -> None:
        super().__init__()
        self.lmdb = load("lmdb")
        self.sync = sync
        self.metasync = sync if metasync is None else metasync
        self.per_op = per_op
        self._lock = threading.Lock()
        self._txn: Any = None

    def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        self.env: Any = self.lmdb.open(
            str(tmpdir / "queue.lmdb"),
            map_size=8 << 30,
            sync=self.sync,
            metasync=self.metasync,
            readahead=False,
        )
        with self.env.begin() as txn:
            cursor = txn.cursor()
            self._next = struct.unpack(">Q", cursor.key())[0] + 1 if cursor.last() else 0

    def _write_txn(self) -> Any:
        if self.per_op:
            return self.env.begin(write=True)
        if self._txn is None:
            self._txn = self.env.begin(write=True)
        return self._txn

    def _finish(self, txn: Any) -> None:
        if self.per_op:
            txn.commit()

    def _append(self, txn: Any, item: bytes) -> None:
        txn.put(struct.pack(">Q", self._next), item, append=True)
        self._next += 1

    def store(self, item: bytes) -> None:
        with self._lock:
            txn = self._write_txn()
            self._append(txn, item)
            self._finish(txn)

    def store_many(self, items: Sequence[bytes]) -> None:
        with self._lock:
            txn = self._write_txn()
            for item in items:
                self._append(txn, item)
            self._finish(txn)

    def try_get_many(self, n: int) -> list[Any]:
        with self._lock:
            txn = self._write_txn()
            cursor = txn.cursor()
            out: list[Any] = []
            if cursor.first():
                while len(out) < n:
                    out.append(cursor.value())
                    if not cursor.delete():
                        break
                    if not cursor.key():
                        break
            self._finish(txn)
        return out

    def try_get(self) -> Any:
        got = self.try_get_many(1)
        return got[0] if got else MISSING

    def flush(self) -> None:
        with self._lock:
            if self._txn is not None:
                self._txn.commit()
                self._txn = None

    def close(self) -> None:
        self.flush()
        self.env.close()


class DequeQueue(PollingContestant):
    """``collections.deque``: the in-memory ceiling."""

    def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        self.items: deque[Any] = deque()

    def store(self, item: Any) -> None:
        self.items.append(item)

    def store_many(self, items: Sequence[Any]) -> None:
        self.items.extend(items)

    def try_get(self) -> Any:
        try:
            return self.items.popleft()
        except IndexError:
            return MISSING

    def close(self) -> None:
        self.items.clear()


class PickleOnClose(DequeQueue):
    """A deque pickled to one file on close and loaded again on open."""

    def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        self.path = tmpdir / "queue.pickle"
        loaded: list[Any] = []
        if self.path.exists():
            with self.path.open("rb") as f:
                loaded = pickle.load(f)
        self.items = deque(loaded)

    def close(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            pickle.dump(list(self.items), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, self.path)


class FsyncProbe(PollingContestant):
    """The disk's ceiling: every put and every get is one pwrite plus one fsync.

    Items are kept in memory; the disk only sees a small file rewritten in
    place, which is the least work a queue that fsyncs each operation can do.
    A put_many or get_many writes once and fsyncs once.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        self.items: deque[Any] = deque()
        self.fd = os.open(tmpdir / "probe.bin", os.O_WRONLY | os.O_CREAT, 0o644)

    def _sync(self, data: bytes) -> None:
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)

    def store(self, item: bytes) -> None:
        with self._lock:
            self._sync(item)
            self.items.append(item)

    def store_many(self, items: Sequence[bytes]) -> None:
        with self._lock:
            self._sync(b"".join(items))
            self.items.extend(items)

    def try_get_many(self, n: int) -> list[Any]:
        with self._lock:
            count = min(n, len(self.items))
            if not count:
                return []
            self._sync(struct.pack(">Q", count))
            return [self.items.popleft() for _ in range(count)]

    def try_get(self) -> Any:
        got = self.try_get_many(1)
        return got[0] if got else MISSING

    def close(self) -> None:
        os.close(self.fd)
