"""start() on a Batcher whose background flusher ended (a sink raised a BaseException that
is not an Exception) says so, rather than return as if it ran; stop() raises what ended
it, and a start after that runs again."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from spoolq import Batcher, Queue

from .batching import Halt, end_the_flusher


async def test_start_after_the_flusher_ended_raises_until_stopped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, "spoolq")
    sent: list[list[int]] = []
    halt = [True]

    async def sink(batch: list[int]) -> None:
        if halt[0]:
            raise Halt
        sent.append(batch)

    async with await Queue.create(str(tmp_path / "q.sqlite")) as q:
        b = Batcher(sink, queue=q, max_batch_size=1, flush_interval=60)
        await b.start()
        await end_the_flusher(b)  # a full batch: its flush ends the flusher
        with pytest.raises(RuntimeError, match="flusher ended on Halt"):
            await b.start()
        assert not b.stats["running"]
        with pytest.raises(Halt):
            await b.stop()
        halt[0] = False
        await b.start()  # runs again, and sends what waited
        for _ in range(500):
            if sent:
                break
            await asyncio.sleep(0.01)
        assert sent == [[1]]
        await b.stop()
