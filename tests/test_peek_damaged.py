"""peek() at a record that cannot be decoded: the error says where it is and how to look
past it, and nothing in the queue changes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import spoolq


def _damage_third(path: str) -> int:
    conn = sqlite3.connect(path)
    try:
        ids = [row[0] for row in conn.execute("SELECT id FROM spoolq_records ORDER BY id")]
        conn.execute("UPDATE spoolq_records SET data = x'00112233' WHERE id = ?", (ids[2],))
        conn.commit()
    finally:
        conn.close()
    return ids[2]


def test_peek_names_the_offset_of_a_damaged_record_and_can_look_past_it(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(range(5))
    _damage_third(path)
    with spoolq.SyncQueue.create(path) as q:
        with pytest.raises(spoolq.CorruptError, match=r"offset 2 .*offset=3") as raised:
            q.peek(5)
        assert "truncated" in str(raised.value)  # what is wrong with it, too
        with pytest.raises(spoolq.CorruptError, match=r"offset 2 "):
            q.peek(2, offset=1)
        assert q.peek(2) == [0, 1]
        assert q.peek(5, offset=3) == [3, 4]
        assert q.qsize() == 5  # peeking moved nothing to the dead letters


def test_async_peek_names_the_offset_of_a_damaged_record(tmp_path: Path) -> None:
    import asyncio

    path = str(tmp_path / "q.sqlite")
    with spoolq.SyncQueue.create(path) as q:
        q.put_many(range(5))
    _damage_third(path)

    async def main() -> None:
        q = await spoolq.Queue.create(path)
        try:
            with pytest.raises(spoolq.CorruptError, match=r"offset 2 .*offset=3"):
                await q.peek(5)
            assert await q.peek(5, offset=3) == [3, 4]
        finally:
            await q.aclose()

    asyncio.run(main())
