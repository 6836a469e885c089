"""Puts larger than one request to the server, whose later requests fail: the records the
first requests stored are never written again."""

from __future__ import annotations

import asyncio
import os
import resource
import sys
from pathlib import Path

import pytest

import spoolq
from spoolq.engines.base import stored_before_failure
from spoolq.engines.remote import RemoteEngine

from .servers import ServerProcess

pytestmark = pytest.mark.skipif(sys.platform != "linux",
                                reason="limits another process's file size with prlimit(2)")

MAX_FRAME = 65536
ITEMS = [os.urandom(4000) for _ in range(40)]  # about 160 KB: three requests


def _largest_file(folder: Path) -> int:
    return max(p.stat().st_size for p in folder.iterdir())


def _limit_file_size(pid: int, size: int) -> None:
    """Let the server write files up to ``size`` bytes (it then gets EFBIG)."""
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))


@pytest.fixture
def server(tmp_path: Path) -> ServerProcess:
    folder = tmp_path / "data"
    folder.mkdir()
    with ServerProcess(str(folder / "q.sqlite"), "--max-frame", str(MAX_FRAME)) as srv:
        with spoolq.SyncQueue.create(f"{srv.url}/jobs", serializer="raw") as q:
            q.put(b"first")  # the queue and its files exist; the log grows from here
        # Room for about one request of records, not two.
        _limit_file_size(srv.proc.pid, _largest_file(folder) + MAX_FRAME + 20_000)
        yield srv


def test_a_failed_request_after_stored_ones_says_how_many_records_are_stored(
        server: ServerProcess) -> None:
    eng = RemoteEngine(server.url)
    try:
        with pytest.raises(spoolq.EngineError) as raised:
            eng.append("jobs", ITEMS, [len(i) for i in ITEMS], 1.0)
        stored = stored_before_failure(raised.value, len(ITEMS))
        assert 0 < stored < len(ITEMS)
        assert eng.counts("jobs").ready == 1 + stored
    finally:
        eng.close()


def test_buffered_puts_are_not_stored_twice_when_a_later_request_of_their_flush_fails(
        server: ServerProcess) -> None:
    with spoolq.SyncQueue.create(f"{server.url}/jobs", serializer="raw", compressor="none",
                                 durability="buffer", flush_interval=3600) as q:
        for item in ITEMS:
            q.put(item)
        with pytest.raises(spoolq.EngineError):
            q.flush()
        _limit_file_size(server.proc.pid, resource.RLIM_INFINITY)
        q.flush()
        assert q.qsize() == 1 + len(ITEMS)
        assert q.get_many(1 + len(ITEMS), timeout=5) == [b"first", *ITEMS]
        assert q.qsize() == 0


def test_group_committed_puts_are_stored_once_when_a_later_request_of_their_write_fails(
        server: ServerProcess) -> None:
    async def main() -> None:
        async with await spoolq.Queue.create(f"{server.url}/jobs", serializer="raw",
                                             compressor="none") as q:
            results = await asyncio.gather(*(q.put(item) for item in ITEMS),
                                           return_exceptions=True)
            failed = {i for i, r in enumerate(results) if isinstance(r, BaseException)}
            assert failed and all(isinstance(results[i], spoolq.EngineError) for i in failed)
            _limit_file_size(server.proc.pid, resource.RLIM_INFINITY)
            # Every put that returned is stored once; none that raised is stored.
            kept = [b"first", *(item for i, item in enumerate(ITEMS) if i not in failed)]
            assert await q.get_many(len(kept), timeout=5) == kept
            assert q.qsize() == 0

    asyncio.run(main())
