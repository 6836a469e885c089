"""Batcher: a stop() on a new event loop, after the loop that started the Batcher ended
without stopping it (a first asyncio.run that returned), closes what that run left and
returns; the items stay in the file for the next start. It raised 'Event loop is
closed'."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from spoolq import Batcher, Queue


def test_a_stop_on_a_new_loop_after_the_starting_loop_ended_returns(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    got: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        got.append(batch)

    b = Batcher(sink, queue=path, flush_interval=60)

    async def forget_to_stop() -> None:
        await b.start()
        await b.add_many([1, 2, 3])

    async def stop_later() -> None:
        await b.stop()
        assert not b.stats["running"]
        with pytest.raises(RuntimeError):
            await b.add(4)  # stopped: nothing runs to flush it
        async with await Queue.create(path, name="batcher") as q:
            assert await q.peek(5) == [1, 2, 3]  # left in the file, none leased

    async def restart() -> None:
        async with b:
            await b.flush()

    asyncio.run(forget_to_stop())
    asyncio.run(stop_later())
    asyncio.run(restart())
    assert got == [[1, 2, 3]] and b.stats["queued"] == 0
