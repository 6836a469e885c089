"""Batcher: start() on a Batcher that runs, from inside its sink and from outside."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from spoolq import Batcher, Queue


async def test_start_inside_the_sink_of_a_running_batcher_returns_at_once(
        tmp_path: Path) -> None:
    """An idempotent "make sure it runs" in the sink waited for the flush lock, which the
    flush calling the sink holds: every batch failed at the lease deadline."""
    got: list[list[int]] = []
    b: Batcher[int]

    async def sink(batch: list[int]) -> None:
        await b.start()
        got.append(batch)

    b = Batcher(sink, queue=str(tmp_path / "q.sqlite"), max_batch_size=3, lease_ttl=2.0,
                flush_interval=60)
    await b.start()
    try:
        await b.add_many([1, 2, 3])
        t = time.monotonic()
        assert await asyncio.wait_for(b.flush(), 10)
        assert time.monotonic() - t < 1.0
        assert got == [[1, 2, 3]]
        assert b.stats["failures"] == 0 and b.stats["running"]
    finally:
        await b.stop()


async def test_start_of_a_running_batcher_does_not_wait_for_a_slow_sink(
        tmp_path: Path) -> None:
    release = asyncio.Event()
    began = asyncio.Event()

    async def sink(batch: list[int]) -> None:
        began.set()
        await release.wait()

    async with Batcher(sink, queue=str(tmp_path / "q.sqlite"), max_batch_size=1) as b:
        await b.add(1)
        await asyncio.wait_for(began.wait(), 10)
        t = time.monotonic()
        try:
            await asyncio.wait_for(b.start(), 3)
            assert time.monotonic() - t < 1.0
            assert b.stats["running"]
        finally:
            release.set()


async def test_start_inside_the_sink_after_a_stop_there_raises_instead_of_hanging(
        tmp_path: Path) -> None:
    errors: list[BaseException] = []
    b: Batcher[int]

    async def sink(batch: list[int]) -> None:
        await b.stop()  # goes on once the sink returns
        try:
            await b.start()
        except RuntimeError as exc:
            errors.append(exc)

    b = Batcher(sink, queue=str(tmp_path / "q.sqlite"), max_batch_size=1, lease_ttl=2.0)
    await b.start()
    await b.add(1)
    t = time.monotonic()
    await asyncio.wait_for(b.stop(), 10)
    assert time.monotonic() - t < 1.0
    assert len(errors) == 1 and "on_flush" in str(errors[0])
    assert b.stats["failures"] == 0 and b.stats["items"] == 1


async def test_start_inside_the_sink_of_a_flush_on_a_batcher_not_started_raises(
        tmp_path: Path) -> None:
    """A passed queue can be flushed without start(); a start() from that sink would wait
    for the flush calling it."""
    errors: list[BaseException] = []
    b: Batcher[int]

    async def sink(batch: list[int]) -> None:
        try:
            await b.start()
        except RuntimeError as exc:
            errors.append(exc)

    async with await Queue.create(str(tmp_path / "q.sqlite")) as q:
        await q.put(1)
        b = Batcher(sink, queue=q, lease_ttl=2.0)
        t = time.monotonic()
        assert await asyncio.wait_for(b.flush(), 10)
        assert time.monotonic() - t < 1.0
        assert len(errors) == 1 and "on_flush" in str(errors[0])
        assert not b.stats["running"]
