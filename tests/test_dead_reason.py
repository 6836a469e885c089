"""A record that a get cannot decode reaches the dead letters with the reason, on every
engine, whether the get removed it (get, get_many) or leased it."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from spoolq import Queue, SyncQueue
from spoolq.engines import open_engine
from spoolq.engines.base import dead_queue_name


def _damage_second(path: Path) -> None:
    with sqlite3.connect(path) as con:
        rid, data = con.execute("SELECT id, data FROM spoolq_records ORDER BY id").fetchall()[1]
        con.execute("UPDATE spoolq_records SET data = ? WHERE id = ?",
                    (data[:-1] + bytes([data[-1] ^ 0xFF]), rid))
    con.close()


def _dead_reasons(path: Path, engine_name: str | None = None) -> list[str | None]:
    engine = open_engine(path, engine_name, read_only=True)
    try:
        return [r.reason for r in engine.peek(dead_queue_name("default"), 10)]
    finally:
        engine.close()


@pytest.mark.parametrize("how", ["get", "get_many", "lease"])
def test_sync_dead_letter_keeps_the_reason(tmp_path: Path, how: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(path) as q:
        q.put_many(["first", "damaged", "last"])
    _damage_second(path)
    with SyncQueue.create(path) as q, caplog.at_level(logging.ERROR, logger="spoolq"):
        if how == "get":
            assert [q.get(), q.get()] == ["first", "last"]
        elif how == "get_many":
            assert q.get_many(3, timeout=0) == ["first", "last"]
        else:
            got = [q.lease(), q.lease()]
            assert [m.item for m in got] == ["first", "last"]
            q.ack(*got)
        assert (q.stats["count"], q.stats["leased"], q.stats["dead"]) == (0, 0, 1)
        assert q.stats["gets"] == (0 if how == "lease" else 2)
    reasons = _dead_reasons(path)
    assert len(reasons) == 1 and reasons[0] is not None
    assert reasons[0].startswith("cannot be decoded: ")
    assert "record 2" in caplog.text


def test_async_get_dead_letter_keeps_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"

    async def fill() -> None:
        async with await Queue.create(path) as q:
            await q.put_many(["first", "damaged", "last"])

    async def drain() -> None:
        async with await Queue.create(path) as q:
            assert await q.get_many(3, timeout=0) == ["first", "last"]
            assert q.stats["dead"] == 1

    asyncio.run(fill())
    _damage_second(path)
    asyncio.run(drain())
    (reason,) = _dead_reasons(path)
    assert reason is not None and reason.startswith("cannot be decoded: ")


@pytest.mark.parametrize("engine", ["sqlite", "lmdb", "dbm", "pickle"])
def test_removed_record_keeps_its_reason_on_every_file_engine(tmp_path: Path,
                                                               engine: str) -> None:
    """The data is damaged on the engine's own terms: no engine-specific file surgery."""
    path = tmp_path / f"q.{engine}"
    with SyncQueue.create(path, engine=engine) as q:
        q.put_many(["a", "b"])
    raw = open_engine(path, engine=engine)
    try:
        (rec,) = raw.take("default", 1, 0.0, None)
        bad = rec.data[:-1] + bytes([rec.data[-1] ^ 1])
        raw.restore("default", [rec._replace(data=bad)])
    finally:
        raw.close()
    with SyncQueue.create(path, engine=engine) as q:
        assert q.get_many(5, timeout=0) == ["b"], engine
        assert q.stats["dead"] == 1, engine
    (reason,) = _dead_reasons(path, engine)
    assert reason is not None and reason.startswith("cannot be decoded: "), engine


class OneWaySerializer:
    """A custom serializer that writes "bad" but cannot read it back."""

    name = "one-way"

    def dumps(self, obj: Any) -> bytes:
        return str(obj).encode()

    def loads(self, data: bytes) -> Any:
        if data == b"bad":
            raise ValueError("cannot read this one")
        return data.decode()


def test_buffered_put_that_cannot_be_read_back_is_set_aside(tmp_path: Path) -> None:
    """With durability "buffer", a get may take a put that was never written: it has no
    place in the file to go back to, and still reaches the dead letters (without the
    reason: an append takes none)."""
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(path, durability="buffer", serializer=OneWaySerializer()) as q:
        q.put("bad")
        q.put("good")
        assert q.get() == "good"
        assert (q.qsize(), q.stats["dead"]) == (0, 1)
    engine = open_engine(path, read_only=True)
    try:
        assert len(engine.peek(dead_queue_name("default"), 5)) == 1
    finally:
        engine.close()
