"""Batcher: the flush on each interval sends what was waiting when it began, then waits for
the next interval, however long the sink takes while adds trickle in."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import spoolq
from spoolq import Batcher


async def test_a_slow_sink_under_a_trickle_of_adds_is_called_once_an_interval(
        tmp_path: Path) -> None:
    times: list[float] = []
    got: list[int] = []

    async def sink(batch: list[int]) -> None:
        times.append(time.monotonic())
        got.extend(batch)
        await asyncio.sleep(0.1)  # a request to a server, say

    path = str(tmp_path / "q.sqlite")
    async with Batcher(sink, queue=path, max_batch_size=10_000, flush_interval=0.4) as b:
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < 2.0:
            await b.add(i)
            i += 1
            await asyncio.sleep(0.01)
        during = list(times)
    gaps = [y - x for x, y in itertools.pairwise(during)]
    # About one call each 0.4 s (plus the sink's 0.1 s); items added while the sink
    # worked wait for the next interval, not sent in a call of their own at once.
    assert 3 <= len(during) <= 6, gaps
    assert min(gaps) > 0.3, gaps
    assert got == list(range(i))
    async with await spoolq.Queue.create(path, name="batcher") as q:
        assert q.qsize() == 0
