"""Batcher: flushes that must send everything waiting, and a queue shut down by its owner."""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spoolq import Batcher, Queue, QueueShutDown


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


async def test_a_queue_its_owner_shut_down_is_drained_without_errors(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    got: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        got.append(batch)

    async with await Queue.create(str(tmp_path / "q.sqlite")) as q:
        b = Batcher(sink, queue=q, max_batch_size=3, flush_interval=0.05)
        await b.start()
        await b.add_many(range(5))
        q.shutdown()  # no more puts; what is in the queue is still handed out
        with pytest.raises(QueueShutDown):
            await b.add(5)
        assert await b.flush()
        await asyncio.sleep(0.3)  # several intervals of the background flusher
        assert b.stats["running"]
        await b.stop()
    assert [i for batch in got for i in batch] == [0, 1, 2, 3, 4]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_queue_shut_down_at_once_ends_the_flusher_with_one_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    got: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        got.append(batch)

    async with await Queue.create(str(tmp_path / "q.sqlite")) as q:
        b = Batcher(sink, queue=q, max_batch_size=10, flush_interval=0.05)
        await b.start()
        await b.add_many(range(5))
        q.shutdown(immediate=True)  # nothing is handed out any more
        for _ in range(200):
            if not b.stats["running"]:
                break
            await asyncio.sleep(0.01)
        assert not b.stats["running"]
        with pytest.raises(QueueShutDown):
            await b.stop()
        assert got == [] and q.stats["count"] == 5  # kept for the next open
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR
              and "flush" in r.getMessage()]
    assert len(errors) == 1


async def test_a_flush_cancelled_as_the_sink_returns_acks_the_batch_it_took(
        tmp_path: Path) -> None:
    got: list[list[int]] = []
    caller: asyncio.Future[bool] | None = None

    async def sink(batch: list[int]) -> None:
        got.append(batch)
        if len(got) == 1:
            assert caller is not None
            caller.cancel()  # as a timeout of the flush() caller lands just now

    async with Batcher(sink, queue=str(tmp_path / "q.sqlite"), max_batch_size=10,
                       flush_interval=60) as b:
        await b.add_many(range(3))
        caller = asyncio.ensure_future(b.flush())
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert caller.cancelled()
        assert b.stats["flushes"] == 1 and b.stats["items"] == 3
        assert b.stats["queued"] == 0
        assert await b.flush()
    assert got == [[0, 1, 2]]  # not sent a second time
    assert b.stats["flushes"] == 1 and b.stats["failures"] == 0


async def test_a_sink_that_returns_when_its_flush_times_out_has_its_batch_acked(
        tmp_path: Path) -> None:
    got: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        got.append(batch)
        if len(got) == 1:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                return  # finishes its work and returns: it took the batch

    async with Batcher(sink, queue=str(tmp_path / "q.sqlite"), max_batch_size=10,
                       flush_interval=60) as b:
        await b.add_many(range(3))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.flush(), 0.2)
        assert b.stats["flushes"] == 1 and b.stats["queued"] == 0
        await b.add(3)
    assert got == [[0, 1, 2], [3]]


@pytest.mark.skipif(not hasattr(asyncio, "timeout"), reason="asyncio.timeout: Python 3.11+")
async def test_a_flush_under_asyncio_timeout_acked_as_it_ends_raises_timeout_error(
        tmp_path: Path) -> None:
    got: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        got.append(batch)
        if len(got) == 1:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                return

    async with Batcher(sink, queue=str(tmp_path / "q.sqlite"), max_batch_size=10,
                       flush_interval=60) as b:
        await b.add_many(range(3))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await b.flush()
        assert b.stats["flushes"] == 1 and b.stats["queued"] == 0
    assert got == [[0, 1, 2]]


async def test_a_flush_cancelled_while_the_sink_runs_gives_the_batch_back(
        tmp_path: Path) -> None:
    got: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        got.append(batch)
        if len(got) == 1:
            await asyncio.sleep(60)

    async with Batcher(sink, queue=str(tmp_path / "q.sqlite"), max_batch_size=10,
                       flush_interval=60) as b:
        await b.add_many(range(3))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.flush(), 0.2)
        assert b.stats["flushes"] == 0 and b.stats["queued"] == 3
    assert got == [[0, 1, 2], [0, 1, 2]]  # sent again, whole, by stop()


class _OddExit(BaseException):
    """Neither an Exception nor one of the exits asyncio handles."""


def _odd_errors() -> list[Any]:
    errors = [pytest.param(lambda: _OddExit("odd"), id="subclass")]
    group = getattr(builtins, "BaseExceptionGroup", None)  # Python 3.11+
    if group is not None:
        errors.append(pytest.param(lambda: group("odd", [_OddExit("inside")]), id="group"))
    return errors


@pytest.mark.parametrize("make_error", _odd_errors())
async def test_a_sink_raising_an_odd_base_exception_ends_the_flusher_with_a_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        make_error: Callable[[], BaseException]) -> None:
    error = make_error()
    calls = 0

    got: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise error
        got.append(batch)

    b = Batcher(sink, queue=str(tmp_path / "q.sqlite"), max_batch_size=2, flush_interval=60)
    await b.start()
    try:
        await b.add_many(range(3))  # a full batch: the background flusher sends it
        for _ in range(500):
            if not b.stats["running"]:
                break
            await asyncio.sleep(0.01)
        assert not b.stats["running"]
        assert calls == 1 and b.stats["queued"] == 3  # the batch went back
        ended = [r for r in caplog.records if r.name == "spoolq"
                 and r.levelno >= logging.ERROR and r.exc_info
                 and r.exc_info[1] is error]
        assert len(ended) == 1
        assert "background flusher" in ended[0].getMessage()
        await b.add(3)  # waits for a flush() now
        assert await b.flush()
        assert got == [[0, 1], [2, 3]]
        await b.add(4)
    finally:
        with pytest.raises(type(error)):
            await b.stop()  # raises what ended the flusher, without a last flush
    assert b.stats["queued"] == 1  # left for the next start
