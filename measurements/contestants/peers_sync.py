"""Synchronous peers from PyPI, each used through its documented API."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from measurements.contestants.base import MISSING, Contestant, PollingContestant, load

_GET_TIMEOUT_S = 60.0


class PersistSqliteQueue(Contestant):
    """persist-queue's ``SQLiteQueue`` or ``SQLiteAckQueue`` (auto_commit=True)."""

    def __init__(self, ack: bool) -> None:
        self.lib = load("persistqueue")
        self.ack = ack

    def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        cls = self.lib.SQLiteAckQueue if self.ack else self.lib.SQLiteQueue
        self.q: Any = cls(str(tmpdir / "pq"), multithreading=True, auto_commit=True)

    def put(self, item: Any) -> None:
        self.q.put(item)

    def get(self) -> Any:
        if not self.ack:
            return self.q.get(block=True, timeout=_GET_TIMEOUT_S)
        raw = self.q.get(block=True, timeout=_GET_TIMEOUT_S, raw=True)
        self.q.ack(id=raw["pqid"])
        return raw["data"]

    def close(self) -> None:
        self.q.close()


class PersistFileQueue(Contestant):
    """persist-queue's file-based ``Queue`` with ``autosave=True``."""

    def __init__(self) -> None:
        self.lib = load("persistqueue")

    def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        self.q: Any = self.lib.Queue(str(tmpdir / "pq"), autosave=True)

    def put(self, item: Any) -> None:
        self.q.put(item)

    def get(self) -> Any:
        return self.q.get(block=True, timeout=_GET_TIMEOUT_S)

    def close(self) -> None:
        # The queue has no close(); its files are closed when it is collected.
        self.q = None


class LiteQueueContestant(PollingContestant):
    """litequeue: ``pop`` then ``done`` for every item (text items)."""

    def __init__(self) -> None:
        super().__init__()
        self.lib = load("litequeue")
        self._lock = threading.Lock()

    def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        self.q: Any = self.lib.LiteQueue(str(tmpdir / "queue.sqlite"))

    def store(self, item: str) -> None:
        with self._lock:
            self.q.put(item)

    def try_get(self) -> Any:
        with self._lock:
            message = self.q.pop()
            if message is None:
                return MISSING
            self.q.done(message.message_id)
        return message.data

    def close(self) -> None:
        self.q.close()


class QueuelibQueue(PollingContestant):
    """queuelib's ``FifoDiskQueue`` or ``FifoSQLiteQueue`` (bytes items)."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.lib = load("queuelib.queue")
        self.variant = variant
        self._lock = threading.Lock()

    def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        if self.variant == "disk":
            self.q: Any = self.lib.FifoDiskQueue(tmpdir / "queue")
        else:
            self.q = self.lib.FifoSQLiteQueue(tmpdir / "queue.sqlite")

    def store(self, item: bytes) -> None:
        with self._lock:
            self.q.push(item)

    def try_get(self) -> Any:
        with self._lock:
            item = self.q.pop()
        return MISSING if item is None else item

    def close(self) -> None:
        self.q.close()


class DiskcacheDeque(PollingContestant):
    """diskcache's ``Deque``; put_many and get_many run in ``transact()``."""

    def __init__(self) -> None:
        super().__init__()
        self.lib = load("diskcache")

    def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        self.cache: Any = self.lib.Cache(str(tmpdir / "cache"))
        self.d: Any = self.lib.Deque.fromcache(self.cache)

    def store(self, item: Any) -> None:
        self.d.append(item)

    def store_many(self, items: Sequence[Any]) -> None:
        with self.d.transact():
            for item in items:
                self.d.append(item)

    def try_get(self) -> Any:
        try:
            return self.d.popleft()
        except IndexError:
            return MISSING

    def try_get_many(self, n: int) -> list[Any]:
        out: list[Any] = []
        with self.d.transact():
            while len(out) < n:
                try:
                    out.append(self.d.popleft())
                except IndexError:
                    break
        return out

    def close(self) -> None:
        self.cache.close()


class QuezQueue(Contestant):
    """quez's ``CompressedQueue`` with its defaults (pickle + zlib)."""

    def __init__(self) -> None:
        self.lib = load("quez")

    def setup(self, tmpdir: Path, params: Mapping[str, Any]) -> None:
        self.q: Any = self.lib.CompressedQueue()

    def put(self, item: Any) -> None:
        self.q.put(item)

    def get(self) -> Any:
        return self.q.get(block=True, timeout=_GET_TIMEOUT_S)

    def close(self) -> None:
        self.q = None
