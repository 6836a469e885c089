"""Reading commands on a served queue whose records do not all fit in one reply: a page
shorter than asked for is not the end of the queue."""

from __future__ import annotations

import json
import os
from pathlib import Path

from spoolq import SyncQueue

from .cli_support import run
from .servers import ServerProcess


def _fill(path: Path, n: int, size: int) -> None:
    with SyncQueue.create(str(path), name="jobs", serializer="raw", compressor="none") as q:
        q.put_many([os.urandom(size) for _ in range(n)])


def test_verify_reads_every_record_of_a_served_queue(tmp_path: Path) -> None:
    _fill(tmp_path / "src.sqlite", 60, 400_000)  # about 40 per 16 MiB reply
    with ServerProcess(str(tmp_path / "src.sqlite")) as server:
        result = run("verify", server.url, "-q", "jobs", "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 0, (result.output, report["problems"])
    assert report["records"] == 60


def test_peek_shows_as_many_items_as_asked_of_a_served_queue(tmp_path: Path) -> None:
    _fill(tmp_path / "src.sqlite", 60, 400_000)
    with ServerProcess(str(tmp_path / "src.sqlite")) as server:
        result = run("peek", server.url, "-q", "jobs", "-n", "55", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["records"]
    assert [r["id"] for r in shown] == list(range(1, 56))


def test_dump_writes_every_item_of_a_served_queue(tmp_path: Path) -> None:
    items = [os.urandom(200_000).hex() for _ in range(60)]  # about 40 per reply
    with SyncQueue.create(str(tmp_path / "src.sqlite"), name="jobs", serializer="json",
                          compressor="none") as q:
        q.put_many(items)
    out = tmp_path / "jobs.jsonl"
    with ServerProcess(str(tmp_path / "src.sqlite")) as server:
        result = run("dump", server.url, "-q", "jobs", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in out.read_text().splitlines()] == items
