"""What docs/api.md promises about settings, closing, shutdown and delayed nacks holds."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq import Queue, SyncQueue

ROOT = Path(__file__).resolve().parent.parent
API = (ROOT / "docs" / "api.md").read_text()


def _settings_row(setting: str) -> str:
    rows = [line for line in API.splitlines() if line.startswith(f"| `{setting}` |")]
    assert len(rows) == 1, f"docs/api.md has no single row for {setting}"
    return rows[0]


def test_every_builtin_codec_name_is_listed() -> None:
    settings: dict[str, Any] = {"serializer": "yaml", "compressor": "gzip"}
    for setting, bad in settings.items():
        with pytest.raises(spoolq.ConfigurationError, match="choose one of") as info:
            SyncQueue.create(":memory:", **{setting: bad})
        names = re.search(r"choose one of (.*?) or pass", str(info.value))
        assert names is not None
        row = _settings_row(setting)
        for name in names.group(1).split(", "):
            assert f'`"{name}"`' in row, f"docs/api.md does not list the {setting} {name!r}"


@pytest.mark.parametrize(("label", "path"), [("SQLite", "q.sqlite"), ("LMDB", "q.lmdb"),
                                             ("dbm", "q.dbm"), ("pickle", "q.pickle")])
def test_every_engine_option_is_listed(tmp_path: Path, label: str, path: str) -> None:
    with pytest.raises(spoolq.ConfigurationError, match="its options are") as info:
        SyncQueue.create(tmp_path / path, engine_options={"no_such_option": 1})
    options = str(info.value).split("its options are: ")[1].split(", ")
    listed = re.search(rf"[;(] ?{label}: (.*?);", _settings_row("engine_options"))
    assert listed is not None, f"docs/api.md lists no engine options for {label}"
    assert sorted(re.findall(r"`(\w+)`", listed.group(1))) == sorted(options)


def test_delayed_nack_counts_as_ready_but_is_not_taken(tmp_path: Path) -> None:
    with SyncQueue.create(tmp_path / "q.sqlite") as q:
        q.put("job")
        q.nack(q.lease(), delay=0.3)
        assert (q.qsize(), q.stats["count"], q.peek()) == (1, 1, ["job"])
        with pytest.raises(spoolq.Empty):
            q.get_nowait()
        start = time.monotonic()
        assert q.get(timeout=2) == "job"
        assert time.monotonic() - start > 0.15


def test_peek_and_lease_settings_are_keyword_only(tmp_path: Path) -> None:
    with SyncQueue.create(tmp_path / "q.sqlite") as q:
        q.put_many(["a", "b"])
        with pytest.raises(TypeError):
            q.peek(1, 1)  # type: ignore[call-arg]
        assert q.peek(1, offset=1) == ["b"]
        with pytest.raises(TypeError):
            q.lease(True, None, 5.0)  # type: ignore[call-arg]
        assert q.lease(ttl=5.0).item == "a"


def test_closed_sync_queue_answers_sizes_and_join(tmp_path: Path) -> None:
    q = SyncQueue.create(tmp_path / "q.sqlite")
    q.put_many([1, 2])
    q.close()
    assert (q.qsize(), q.empty(), q.full(), q.stats["count"]) == (2, False, False, 2)
    q.join()  # returns at once although both items are unfinished
    for call in (q.peek, q.get_nowait, q.flush, q.purge):
        with pytest.raises(spoolq.ClosedError):
            call()


def test_closed_async_queue_answers_sizes_and_join(tmp_path: Path) -> None:
    async def main() -> None:
        q = await Queue.create(tmp_path / "q.sqlite")
        await q.put(1)
        await q.aclose()
        assert (q.qsize(), q.empty(), q.stats["count"]) == (1, False, 1)
        await asyncio.wait_for(q.join(), 1)
        with pytest.raises(spoolq.ClosedError):
            await q.peek()

    asyncio.run(main())


def test_immediate_shutdown_releases_join(tmp_path: Path) -> None:
    with SyncQueue.create(tmp_path / "q.sqlite") as q:
        q.put("job")
        assert q.get() == "job"
        q.shutdown(immediate=True)
        q.join()  # the get has no task_done()
        assert q.stats["unfinished"] == 1

    async def main() -> None:
        async with await Queue.create(tmp_path / "a.sqlite") as aq:
            await aq.put("job")
            aq.shutdown(immediate=True)
            await asyncio.wait_for(aq.join(), 1)

    asyncio.run(main())


def test_damaged_record_is_refused_by_peek_and_set_aside_by_get(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "q.sqlite"
    with SyncQueue.create(path) as q:
        q.put_many(["first", "damaged", "last"])
    with sqlite3.connect(path) as con:
        rid, data = con.execute("SELECT id, data FROM spoolq_records ORDER BY id").fetchall()[1]
        con.execute("UPDATE spoolq_records SET data = ? WHERE id = ?",
                    (data[:-1] + bytes([data[-1] ^ 0xFF]), rid))
    con.close()
    with SyncQueue.create(path) as q:
        with pytest.raises(spoolq.CorruptError, match="record 2 "):
            q.peek(3)
        assert q.get() == "first"
        with caplog.at_level(logging.ERROR, logger="spoolq"):
            assert q.get() == "last"
        assert "record 2 cannot be decoded" in caplog.text
        assert (q.stats["count"], q.stats["dead"]) == (0, 1)


def test_batcher_queue_is_there_while_it_runs(tmp_path: Path) -> None:
    async def main() -> None:
        batcher: spoolq.Batcher[str] = spoolq.Batcher(
            lambda batch: None, queue=tmp_path / "b.sqlite", flush_interval=30)
        with pytest.raises(RuntimeError, match="not started"):
            batcher.queue  # noqa: B018
        async with batcher:
            await batcher.add("event")
            assert await batcher.queue.peek() == ["event"]
        with pytest.raises(RuntimeError, match="not started"):
            batcher.queue  # noqa: B018

    asyncio.run(main())
