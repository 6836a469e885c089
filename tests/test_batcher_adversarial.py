"""Batcher: flushes that must send everything waiting, and a queue shut down by its owner."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from spoolq import Batcher, Queue, QueueShutDown


async def test_a_flush_sends_the_items_waiting_behind_a_lease_that_ran_out(
        tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    got: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        got.append(batch)

    async with (Batcher(sink, queue=path, max_batch_size=5, flush_interval=60) as b,
                await Queue.create(path, name="batcher") as other):
        await other.put_many(range(8))
        await other.lease_many(5, ttl=0.1)  # a consumer that stops answering
        await asyncio.sleep(0.5)
        assert await b.flush()
        # The batch whose lease ran out comes first, then the items waiting behind it.
        assert got == [[0, 1, 2, 3, 4], [5, 6, 7]]
        assert b.stats["queued"] == 0


async def test_a_queue_its_owner_shut_down_is_drained_without_errors(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    got: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        got.append(batch)

    async with await Queue.create(str(tmp_path / "q.sqlite")) as q:
        b = Batcher(sink, queue=q, max_batch_size=3, flush_interval=0.05)
        await b.start()
        await b.add_many(range(5))
        q.shutdown()  # no more puts; what is in the queue is still handed out
        with pytest.raises(QueueShutDown):
            await b.add(5)
        assert await b.flush()
        await asyncio.sleep(0.3)  # several intervals of the background flusher
        assert b.stats["running"]
        await b.stop()
    assert [i for batch in got for i in batch] == [0, 1, 2, 3, 4]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_queue_shut_down_at_once_ends_the_flusher_with_one_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    got: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        got.append(batch)

    async with await Queue.create(str(tmp_path / "q.sqlite")) as q:
        b = Batcher(sink, queue=q, max_batch_size=10, flush_interval=0.05)
        await b.start()
        await b.add_many(range(5))
        q.shutdown(immediate=True)  # nothing is handed out any more
        for _ in range(200):
            if not b.stats["running"]:
                break
            await asyncio.sleep(0.01)
        assert not b.stats["running"]
        with pytest.raises(QueueShutDown):
            await b.stop()
        assert got == [] and q.stats["count"] == 5  # kept for the next open
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR
              and "flush" in r.getMessage()]
    assert len(errors) == 1
