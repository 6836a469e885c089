"""Helpers for tests of a Batcher whose background flusher a sink ends."""

from __future__ import annotations

import asyncio
from typing import Any

from spoolq import Batcher


class Halt(BaseException):
    """A BaseException of the sink's own: it ends the background flusher."""


async def end_the_flusher(b: Batcher[int]) -> None:
    """Add one item, a full batch of ``b`` (``max_batch_size=1``), whose flush the sink
    ends with :class:`Halt`; return once the flusher has ended."""
    await b.add(1)
    for _ in range(500):
        if not b.stats["running"]:
            break
        await asyncio.sleep(0.01)
    assert not b.stats["running"]


async def flush_fails_and_keeps_the_batch(path: str, sink: Any, ran: list[list[int]]) -> None:
    """A Batcher on ``path`` whose ``sink`` must not count as having sent a batch: its
    flush fails, the sink's body never ran (``ran`` stays empty), the batch stays queued."""
    ran.clear()
    b = Batcher(sink, queue=path, flush_interval=60)
    await b.start()
    try:
        await b.add_many(range(3))
        assert await b.flush() is False
        assert ran == []
        assert b.stats["failures"] == 1 and b.stats["items"] == 0
        assert await b.queue.peek(5) == [0, 1, 2]
    finally:
        await b.stop()
