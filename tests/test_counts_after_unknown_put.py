"""A put whose outcome is unknown (the server stored it, its reply never came) counts in
qsize() and stats once the handle next reaches the server (the sync queue's next get, the
async queue's worker right away), not only at the next poll of the counts."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import spoolq
from spoolq.engines.remote import RemoteEngine
from spoolq.errors import Unavailable

from .servers import ServerProcess, wait_until

_CALL = {"timeout": 0.5}  # the put's reply is given up soon after the server stalls
_POLL = 30.0  # far beyond every bound below: only the re-read after the put can count it


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(str(tmp_path / "q.sqlite")) as proc:
        yield proc


def _stored(server: ServerProcess, n: int) -> None:
    """Wait until the server holds ``n`` ready records (read by a handle of its own)."""
    engine = RemoteEngine(server.url)
    try:
        wait_until(lambda: engine.counts("jobs").ready == n, within=5.0)
    finally:
        engine.close()


def test_sync_counts_a_put_whose_reply_was_lost_at_the_next_get(server: ServerProcess) -> None:
    q = spoolq.SyncQueue.create(f"{server.url}/jobs", poll_interval=_POLL,
                                engine_options=_CALL)
    try:
        q.put("a")
        with server.stalled(), pytest.raises(Unavailable):
            q.put("b")  # the server has the request, and answers only once continued
        _stored(server, 2)
        started = time.monotonic()
        assert q.qsize() == 1  # qsize() never calls the engine: the last counts read
        assert time.monotonic() - started < 0.5
        # The put raised: join() does not wait for its item, but a get of this handle
        # that takes it counts it, so its task_done is welcome.
        assert q.stats["unfinished"] == 1
        assert q.get(timeout=5) == "a"  # reads the counts again first
        assert q.qsize() == 1 and q.stats["count"] == 1
        assert q.get(timeout=5) == "b"
        assert q.qsize() == 0
        q.task_done()
        q.task_done()
        q.join()
        with pytest.raises(ValueError):
            q.task_done()
    finally:
        q.close()


def test_sync_qsize_keeps_its_counts_when_the_reread_fails(server: ServerProcess) -> None:
    q = spoolq.SyncQueue.create(f"{server.url}/jobs", poll_interval=_POLL,
                                engine_options=_CALL)
    try:
        q.put("a")
        server.stop(signal.SIGKILL)
        with pytest.raises(Unavailable):
            q.put("b")
        started = time.monotonic()
        assert q.qsize() == 1  # the re-read fails: the counts stay as they were
        assert q.stats["count"] == 1
        assert time.monotonic() - started < 5.0
    finally:
        q.close()


def test_async_qsize_counts_a_put_whose_reply_was_lost(server: ServerProcess) -> None:
    async def main() -> None:
        q = await spoolq.Queue.create(f"{server.url}/jobs", poll_interval=_POLL,
                                      engine_options=_CALL)
        try:
            await q.put("a")
            with server.stalled(), pytest.raises(Unavailable):
                await q.put("b")
            await asyncio.to_thread(_stored, server, 2)
            q.qsize()  # re-reads the counts on the queue's worker thread
            deadline = time.monotonic() + 5.0
            while q.qsize() != 2:
                assert time.monotonic() < deadline, "qsize() never counted the stored put"
                await asyncio.sleep(0.01)
            assert q.stats["count"] == 2
            assert q.stats["unfinished"] == 1
            assert await q.get() == "a"
            assert await q.get() == "b"
            q.task_done()
            q.task_done()
            await asyncio.wait_for(q.join(), 5)
        finally:
            await q.aclose()

    asyncio.run(main())
