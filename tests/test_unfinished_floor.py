"""The unfinished count never goes below zero: join() waits for every item put after."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from spoolq import Queue


async def test_a_put_withdrawn_after_task_done_leaves_later_puts_unfinished(
        tmp_path: Path) -> None:
    # A put counts as unfinished from the moment it is submitted; a task_done() then made
    # the count 0, and cancelling the put (its records withdrawn before the worker wrote
    # them) took it to -1: the next put left it at 0 and join() returned at once.
    async with await Queue.create(tmp_path / "q.sqlite") as q:
        gate = threading.Event()
        q._worker.post(gate.wait, 10)  # the worker is busy: the put waits to be written
        try:
            putting = asyncio.create_task(q.put("x"))
            for _ in range(200):
                if q.stats["unfinished"]:
                    break
                await asyncio.sleep(0.005)
            assert q.stats["unfinished"] == 1
            q.task_done()
            putting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await putting
        finally:
            gate.set()
        assert q.stats["unfinished"] == 0
        await q.put("y")
        assert q.stats["unfinished"] == 1
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(q.join(), 0.3)
        assert await q.get() == "y"
        q.task_done()
        await asyncio.wait_for(q.join(), 5)
