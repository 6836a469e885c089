"""Batcher: a record set aside while a batch is leased, an async sink that raises
SystemExit."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from spoolq import Batcher, ClosedError, Queue


class Picky:
    """JSON, except that the item ``"bad"`` cannot be read back: its record is set aside
    in the dead letters when it is leased."""

    def dumps(self, obj: object) -> bytes:
        return json.dumps(obj).encode()

    def loads(self, data: bytes) -> object:
        value = json.loads(data)
        if value == "bad":
            raise ValueError("cannot read this one")
        return value


async def test_a_record_set_aside_in_a_batch_does_not_end_the_flush_early(
    tmp_path: Path,
) -> None:
    """A lease that sets aside a record it cannot decode returns fewer items than asked
    for, though more are ready: flush() still sends everything that was waiting."""
    calls: list[list[object]] = []
    async with (
        await Queue.create(str(tmp_path / "q.sqlite"), serializer=Picky()) as q,
        Batcher(calls.append, queue=q, max_batch_size=3, flush_interval=60) as b,
    ):
        await b.add_many([0, "bad", 1, 2, 3, 4, 5])
        assert await b.flush()
        assert calls == [[0, 1], [2, 3, 4], [5]]
        assert q.qsize() == 0 and q.stats["dead"] == 1


async def test_the_stop_of_a_batcher_sends_what_follows_a_record_set_aside(
    tmp_path: Path,
) -> None:
    calls: list[list[object]] = []
    async with await Queue.create(str(tmp_path / "q.sqlite"), serializer=Picky()) as q:
        async with Batcher(calls.append, queue=q, max_batch_size=2, flush_interval=60) as b:
            await b.add_many(["bad", 0, 1, 2, 3])
        assert calls == [[0], [1, 2], [3]]
        assert q.qsize() == 0 and q.stats["leased"] == 0


async def test_an_async_sink_that_raises_systemexit_gives_its_batch_back(
    tmp_path: Path,
) -> None:
    """As for a plain sink: the batch goes back to its place at once, the exit propagates
    from flush(), and it is not a failure. (It used to escape the event loop from the
    sink's task, leaving the batch leased and the stop undone.)"""
    calls: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        calls.append(list(batch))
        if len(calls) == 1:
            raise SystemExit(3)

    async with await Queue.create(str(tmp_path / "q.sqlite")) as q:
        async with Batcher(sink, queue=q, max_batch_size=10, flush_interval=60) as b:
            await b.add_many([0, 1])
            with pytest.raises(SystemExit):
                await b.flush()
            assert q.stats["leased"] == 0 and q.qsize() == 2
            assert b.stats["failures"] == 0 and b.stats["flushes"] == 0
            await b.add_many([2, 3])
            assert await b.flush()
        assert calls == [[0, 1], [0, 1], [2, 3]]
        assert q.qsize() == 0 and q.stats["leased"] == 0


async def test_an_async_sink_that_exits_when_cancelled_at_its_deadline_gives_its_batch_back(
    tmp_path: Path,
) -> None:
    """The SystemExit a hanging sink raises when its lease's deadline cancels it wins over
    the timeout, and the batch is back at its place."""

    calls: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        calls.append(list(batch))
        if len(calls) > 1:
            return
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise SystemExit(3) from None

    async with await Queue.create(str(tmp_path / "q.sqlite")) as q:
        b = Batcher(sink, queue=q, max_batch_size=10, flush_interval=60, lease_ttl=0.5)
        await b.start()
        await b.add_many([0, 1])
        with pytest.raises(SystemExit):
            await b.flush()
        assert q.stats["leased"] == 0 and q.qsize() == 2
        assert b.stats["failures"] == 0
        await b.stop()
        assert calls == [[0, 1], [0, 1]] and q.qsize() == 0


async def test_a_queue_closed_under_a_running_batcher_ends_its_flusher_with_one_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The background flusher used to log the same ClosedError at every interval for as
    long as the Batcher lived, and stats still said it was running."""
    q = await Queue.create(str(tmp_path / "q.sqlite"))
    b = Batcher(lambda batch: None, queue=q, max_batch_size=10, flush_interval=0.05)
    await b.start()
    await b.add(1)
    await q.aclose()
    with caplog.at_level(logging.ERROR, logger="spoolq"):
        await asyncio.sleep(0.5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "closed" in errors[0].getMessage()
    assert not b.stats["running"]
    with pytest.raises(ClosedError):
        await b.stop()
