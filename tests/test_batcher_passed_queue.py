"""Batcher: an open queue passed to it that it cannot use (closed, shut down, or bound to
another event loop) is refused by start(), which starts nothing."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

import spoolq
from spoolq import Batcher


async def test_start_on_a_closed_queue_raises_and_starts_nothing(tmp_path: Path) -> None:
    got: list[list[object]] = []

    async def sink(batch: list[object]) -> None:
        got.append(batch)

    path = str(tmp_path / "q.sqlite")
    q: spoolq.Queue[object] = await spoolq.Queue.create(path)
    await q.put("waiting")
    await q.aclose()
    b = Batcher(sink, queue=q, flush_interval=0.01)
    with pytest.raises(spoolq.ClosedError, match="closed"):
        await b.start()
    assert not b.stats["running"]
    with pytest.raises(RuntimeError, match="not running"):
        await b.add("more")
    await b.stop()  # nothing started: nothing to stop
    assert got == []
    async with await spoolq.Queue.create(path) as again:
        assert await again.peek(5) == ["waiting"]


def test_start_with_a_queue_of_another_event_loop_raises_and_starts_nothing(
        tmp_path: Path) -> None:
    got: list[list[object]] = []

    async def sink(batch: list[object]) -> None:
        got.append(batch)

    path = str(tmp_path / "q.sqlite")

    async def make() -> spoolq.Queue[object]:
        q: spoolq.Queue[object] = await spoolq.Queue.create(path)
        await q.put("waiting")
        return q

    q = asyncio.run(make())

    async def elsewhere() -> None:
        b = Batcher(sink, queue=q, flush_interval=0.01)
        with pytest.raises(RuntimeError, match="event loop"):
            await b.start()
        assert not b.stats["running"]
        with pytest.raises(RuntimeError, match="not running"):
            await b.add("more")
        await b.stop()
        await q.aclose()  # its own loop has ended: another may close it

    asyncio.run(elsewhere())
    assert got == []

    async def check() -> None:
        async with await spoolq.Queue.create(path) as again:
            assert await again.peek(5) == ["waiting"]

    asyncio.run(check())


@pytest.mark.parametrize("immediate", [False, True])
async def test_start_on_a_shut_down_queue_raises_and_starts_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, immediate: bool) -> None:
    got: list[list[object]] = []

    async def sink(batch: list[object]) -> None:
        got.append(batch)

    path = str(tmp_path / "q.sqlite")
    q: spoolq.Queue[object] = await spoolq.Queue.create(path)
    await q.put("waiting")
    q.shutdown(immediate=immediate)
    b = Batcher(sink, queue=q, flush_interval=0.01)
    with pytest.raises(spoolq.QueueShutDown, match="shut down"):
        await b.start()
    assert not b.stats["running"]
    with pytest.raises(RuntimeError, match="not running"):
        await b.add("more")
    await asyncio.sleep(0.05)  # a flusher started anyway would have run several intervals
    await b.stop()  # nothing started: nothing to stop
    assert got == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await q.aclose()
    # The items stay in the file, for a Batcher on the queue opened again.
    async with await spoolq.Queue.create(path) as again:
        assert await again.peek(5) == ["waiting"]
        async with Batcher(sink, queue=again, flush_interval=60):
            pass
    assert got == [["waiting"]]
