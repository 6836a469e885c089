"""migrate from a served queue whose records do not all fit in one reply: a page shorter
than asked for is not the end of the queue."""

from __future__ import annotations

import os
from pathlib import Path

from spoolq import SyncQueue
from spoolq.cli._copying import _joined_pages
from spoolq.engines.remote import RemoteEngine
from spoolq.protocol import MIN_MAX_REPLY

from .cli_support import run
from .servers import ServerProcess


def _fill(path: Path, n: int, size: int) -> list[bytes]:
    items = [os.urandom(size) for _ in range(n)]
    with SyncQueue.create(str(path), name="jobs", serializer="raw", compressor="none") as q:
        q.put_many(items)
    return items


def test_migrate_from_a_server_copies_records_larger_than_one_reply_holds(
        tmp_path: Path) -> None:
    items = _fill(tmp_path / "src.sqlite", 60, 400_000)  # about 40 per 16 MiB reply
    dst = tmp_path / "dst.sqlite"
    with ServerProcess(str(tmp_path / "src.sqlite")) as server:
        result = run("migrate", server.url, str(dst), "-q", "jobs", "--chunk", "50")
    assert result.exit_code == 0, result.output
    with SyncQueue.create(str(dst), name="jobs", serializer="raw", compressor="none") as q:
        assert q.get_many(100, block=False) == items


def test_pages_of_one_record_per_reply_are_read_to_the_end(tmp_path: Path) -> None:
    reply = 4 * MIN_MAX_REPLY
    _fill(tmp_path / "src.sqlite", 7, reply * 6 // 10)  # one record per reply, not two
    with ServerProcess(str(tmp_path / "src.sqlite")) as server:
        eng = RemoteEngine(f"{server.url}", max_reply=reply)
        try:
            pages = list(_joined_pages(eng, "jobs", 3, 7))
            ids = [r.id for page in pages for r in page]
            assert ids == [r.id for r in (eng.peek("jobs", 1, k)[0] for k in range(7))]
        finally:
            eng.close()
