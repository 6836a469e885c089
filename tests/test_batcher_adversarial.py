"""Batcher: flushes that must send everything waiting, and a queue shut down by its owner."""

from __future__ import annotations

import asyncio
from pathlib import Path

from spoolq import Batcher, Queue


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
