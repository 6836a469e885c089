"""``peek`` of more items than one engine read holds, while a consumer takes items from
the head: no item that stays in the queue is left out, none is shown twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq.engines.sqlite import SQLiteEngine

from .cli_support import run


def test_peek_of_several_pages_skips_no_item_a_consumer_leaves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "jobs.sqlite")
    with spoolq.SyncQueue.create(path, name="jobs") as q:
        q.put_many(list(range(3000)))
    consumer = spoolq.SyncQueue.create(path, name="jobs")
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
    assert taken == list(range(300))
    assert items == list(range(2500))
