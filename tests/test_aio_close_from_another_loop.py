"""aclose() awaited on another event loop while the queue's own loop still runs."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import spoolq


def test_aclose_on_another_loop_while_the_queue_loop_runs_is_refused(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        made = asyncio.run_coroutine_threadsafe(
            spoolq.Queue.create(str(tmp_path / "q.sqlite")), loop)
        q: spoolq.Queue[str] = made.result(10)
        waiting = asyncio.run_coroutine_threadsafe(q.get(), loop)
        with pytest.raises(RuntimeError, match="still running"):
            asyncio.run(q.aclose())
        # Nothing changed: the queue still serves its own loop, and its waiting get.
        asyncio.run_coroutine_threadsafe(q.put("after"), loop).result(10)
        assert waiting.result(10) == "after"
        asyncio.run_coroutine_threadsafe(q.aclose(), loop).result(20)
        with pytest.raises(spoolq.ClosedError):
            q.put_nowait("closed")
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    with spoolq.SyncQueue.create(str(tmp_path / "q.sqlite")) as again:
        assert again.qsize() == 0


def test_aclose_on_another_loop_after_the_queue_loop_stopped_closes_it(
        tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    q: spoolq.Queue[str] = loop.run_until_complete(
        spoolq.Queue.create(str(tmp_path / "q.sqlite")))
    loop.run_until_complete(q.put("kept"))
    asyncio.run(q.aclose())
    loop.close()
    with pytest.raises(spoolq.ClosedError):
        q.put_nowait("closed")
    with spoolq.SyncQueue.create(str(tmp_path / "q.sqlite")) as again:
        assert again.get_nowait() == "kept"
