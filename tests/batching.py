"""Helpers for tests of a Batcher whose background flusher a sink ends."""

from __future__ import annotations

import asyncio

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
