"""Batcher: what an async sink returns is handled as what a plain one returns. A coroutine
it returns without awaiting it, or a pool's concurrent.futures.Future, decides the batch:
acked once it has its result, given back when it fails. Before, the batch was acked as the
sink returned, while the work it handed on had not run (or failed), and it was lost."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolq import Batcher


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        yield executor


async def test_a_coroutine_an_async_sink_returns_unawaited_decides_its_batch(
        tmp_path: Path) -> None:
    received: list[list[int]] = []

    async def send(batch: list[int]) -> None:
        await asyncio.sleep(0.01)
        received.append(list(batch))
        if len(received) == 1:
            raise ConnectionError("the server is away")

    async def sink(batch: list[int]) -> object:
        return send(batch)  # the await forgotten

    async with Batcher(sink, queue=str(tmp_path / "q.sqlite"), flush_interval=60) as b:
        await b.add_many([1, 2, 3])
        assert await b.flush() is False
        assert b.stats["failures"] == 1 and b.stats["flushes"] == 0
        assert await b.queue.peek(5) == [1, 2, 3]
        assert await b.flush() is True
        assert b.stats["flushes"] == 1 and b.stats["queued"] == 0
    assert received == [[1, 2, 3], [1, 2, 3]]


async def test_a_pool_future_an_async_sink_returns_keeps_the_batch_leased_until_it_ends(
        tmp_path: Path, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    release = threading.Event()
    received: list[list[int]] = []

    def send(batch: list[int]) -> None:
        assert release.wait(10)
        received.append(list(batch))
        if len(received) == 1:
            raise ConnectionError("the server is away")

    async def sink(batch: list[int]) -> object:
        return pool.submit(send, batch)

    async with Batcher(sink, queue=str(tmp_path / "q.sqlite"), flush_interval=60) as b:
        await b.add_many([1, 2])
        flushing = asyncio.create_task(b.flush())
        for _ in range(500):
            if b.queue.stats["leased"] == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not flushing.done() and b.queue.stats["leased"] == 2
        release.set()
        assert await flushing is False  # the thread failed: the batch went back
        assert await b.queue.peek(5) == [1, 2]
        assert await b.flush() is True
        assert b.stats["queued"] == 0
    assert received == [[1, 2], [1, 2]]

