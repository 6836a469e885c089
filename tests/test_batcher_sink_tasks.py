"""Batcher: a task an async sink starts that lives on after the sink returned may flush and
stop the Batcher like any other task; only while the sink runs are they refused (flush) or
left to go on (stop)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from spoolq import Batcher


async def test_a_task_the_sink_started_flushes_and_stops_once_the_sink_returned(
        tmp_path: Path) -> None:
    batches: list[list[int]] = []
    sink_returned = asyncio.Event()
    results: list[object] = []
    tasks: list[asyncio.Task[None]] = []

    async def later() -> None:
        # Started by the sink, running on after it returned (a client's own background
        # task, say).
        await sink_returned.wait()
        while b.stats["items"] < 2:
            await asyncio.sleep(0.005)  # the first batch is acked
        await b.add_many([10, 11])
        results.append(await asyncio.wait_for(b.flush(), 5))
        await b.add(12)
        await asyncio.wait_for(b.stop(), 5)
        results.append(b.stats["running"])
        results.append(b.stats["queued"])

    async def sink(batch: list[int]) -> None:
        if not tasks:
            tasks.append(asyncio.create_task(later()))
        batches.append(batch)
        asyncio.get_running_loop().call_soon(sink_returned.set)

    b = Batcher(sink, queue=str(tmp_path / "q.sqlite"), flush_interval=60)
    await b.start()
    await b.add_many([1, 2])
    assert await b.flush()
    await asyncio.wait_for(tasks[0], 10)
    # The flush sent the items added after the sink returned, and the stop had ended (its
    # last flush sent 12, and it closed the queue) when it returned.
    assert results == [True, False, 0]
    assert batches == [[1, 2], [10, 11], [12]]


async def test_a_task_a_plain_sink_returns_is_refused_flush_and_stops_after_it(
        tmp_path: Path) -> None:
    # A plain sink that hands the batch to a task of its own and returns it: the task is
    # inside the sink's flush until it ends, as an async sink is. flush() there waited
    # for that flush, and stop() for the flusher, until the lease deadline cancelled the
    # task and failed its batch, to be sent again.
    batches: list[list[int]] = []
    seen: list[str] = []

    async def send(batch: list[int]) -> None:
        batches.append(batch)
        if len(batches) == 1:
            try:
                await b.flush()
            except RuntimeError as exc:
                seen.append(str(exc))
            await b.stop()
            seen.append("stop returned")

    b = Batcher(lambda batch: asyncio.ensure_future(send(batch)),
                queue=str(tmp_path / "q.sqlite"), flush_interval=60, lease_ttl=30)
    await b.start()
    await b.add_many([1, 2])
    assert await asyncio.wait_for(b.flush(), 10) is True
    assert len(seen) == 2 and "cannot be called inside on_flush" in seen[0]
    assert seen[1] == "stop returned"
    assert b.stats["failures"] == 0 and b.stats["flushes"] == 1
    await asyncio.wait_for(b.stop(), 10)  # the stop the task asked for
    assert not b.stats["running"] and b.stats["queued"] == 0
    assert batches == [[1, 2]]
