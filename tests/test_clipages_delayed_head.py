"""``peek`` of more items than one engine read holds while the head item waits out a
delay (a nack with ``delay``) and a consumer takes the items behind it between two reads:
the head does not change, yet no item that stays ready is left out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq.engines.sqlite import SQLiteEngine

from .cli_support import run


def test_peek_past_a_delayed_head_skips_no_item_a_consumer_leaves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "jobs.sqlite")
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        q.put_many(list(range(3000)))
    consumer: spoolq.SyncQueue[int] = spoolq.SyncQueue.create(path, name="jobs")
    consumer.nack(consumer.lease(ttl=60), delay=600)  # item 0 stays ahead, not visible
    taken: list[int] = []
    real = SQLiteEngine.peek

    def peek(self: SQLiteEngine, queue: str, n: int, offset: int = 0) -> Any:
        page = real(self, queue, n, offset)
        if n > 1 and queue == "jobs" and not taken:
            taken.extend(consumer.get_many(300, block=False))  # right after a page
        return page

    monkeypatch.setattr(SQLiteEngine, "peek", peek)
    try:
        result = run("peek", path, "-q", "jobs", "-n", "2500", "--json")
    finally:
        monkeypatch.undo()
        consumer.close()
    assert result.exit_code == 0, result.output
    items = [r["item"] for r in json.loads(result.stdout)["records"]]
    assert taken == list(range(1, 301))
    assert items == sorted(set(items))
    stayed = [i for i in range(2500) if i not in taken]
    assert set(stayed) <= set(items), sorted(set(stayed) - set(items))[:5]
