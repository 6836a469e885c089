"""Batcher: sinks that raise BaseException, retries after a change of size or a dead
letter, and an ack that fails in an explicit flush."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from spoolq import Batcher, Queue, Unavailable
from spoolq.engines import open_engine

from .failing import FailingSettle
from .servers import ServerProcess
from .test_batcher_retry_whole import stopping_sink


def _failing_once(calls: list[list[int]],
                  error: type[BaseException]) -> Callable[[list[int]], None]:
    """A plain sink that records each batch and raises ``error`` at its first call."""

    def sink(batch: list[int]) -> None:
        calls.append(list(batch))
        if len(calls) == 1:
            raise error

    return sink


async def test_a_plain_sink_that_raises_keyboardinterrupt_gives_its_batch_back(
    tmp_path: Path,
) -> None:
    """The interrupt propagates, and the batch goes back to its place at once: later items
    do not overtake it while its lease runs."""
    calls: list[list[int]] = []

    sink = _failing_once(calls, KeyboardInterrupt)
    async with await Queue.create(str(tmp_path / "q.sqlite")) as q:
        async with Batcher(sink, queue=q, max_batch_size=10, flush_interval=60) as b:
            await b.add_many([0, 1])
            with pytest.raises(KeyboardInterrupt):
                await b.flush()
            assert q.stats["leased"] == 0 and q.qsize() == 2
            assert b.stats["failures"] == 0 and b.stats["flushes"] == 0
            await b.add_many([2, 3])
            assert await b.flush()
        assert calls == [[0, 1], [0, 1], [2, 3]]
        assert q.qsize() == 0 and q.stats["leased"] == 0


async def test_a_plain_sink_that_raises_cancellederror_fails_its_flush(tmp_path: Path) -> None:
    """Nothing cancelled flush(): a CancelledError raised by a plain sink is a failure of the
    sink, as it is for an async one, not a cancellation of the caller."""
    calls: list[list[int]] = []

    sink = _failing_once(calls, asyncio.CancelledError)
    async with Batcher(sink, queue=str(tmp_path / "q.sqlite"), max_batch_size=10,
                       flush_interval=60, retry_delay=60, max_retry_delay=60) as b:
        await b.add_many([0, 1])
        assert not await b.flush()
        assert b.stats["failures"] == 1 and b.stats["running"]
        assert await b.flush()
    assert calls == [[0, 1], [0, 1]]


async def test_a_plain_sink_that_raises_cancellederror_does_not_end_the_flusher(
    tmp_path: Path,
) -> None:
    calls: list[list[int]] = []

    sink = _failing_once(calls, asyncio.CancelledError)
    async with Batcher(sink, queue=str(tmp_path / "q.sqlite"), max_batch_size=10,
                       flush_interval=0.05, retry_delay=0.05, max_retry_delay=0.05) as b:
        await b.add_many([0, 1])
        for _ in range(300):
            if len(calls) >= 2 and b.stats["flushes"]:
                break
            await asyncio.sleep(0.01)
        assert calls == [[0, 1], [0, 1]]
        assert b.stats["running"] and b.stats["failures"] == 1 and b.stats["flushes"] == 1


async def test_a_failed_batch_is_retried_within_a_smaller_max_batch_size(path: str) -> None:
    calls: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        calls.append(list(batch))
        if len(calls) == 1:
            raise ConnectionError("sink down")

    async with Batcher(sink, queue=path, max_batch_size=4, flush_interval=60,
                       retry_delay=60, max_retry_delay=60) as b:
        await b.add_many([0, 1, 2, 3])
        assert not await b.flush()
        b.max_batch_size = 2
        assert await b.flush()
    assert calls == [[0, 1, 2, 3], [0, 1], [2, 3]]


async def test_after_a_batch_went_to_the_dead_letters_the_next_batch_is_full(
    tmp_path: Path,
) -> None:
    """The dead letters took the failed batch: no retry of it cuts the next batch to its size."""
    calls: list[list[int]] = []

    async def sink(batch: list[int]) -> None:
        calls.append(list(batch))
        if len(calls) <= 2:
            raise ConnectionError("sink down")

    async with await Queue.create(str(tmp_path / "q.sqlite"), max_attempts=2) as q:
        b = Batcher(sink, queue=q, max_batch_size=4, flush_interval=60, retry_delay=60,
                    max_retry_delay=60)
        async with b:
            await b.add_many([0, 1])
            assert not await b.flush()
            assert not await b.flush()
            assert await q.peek(10, dead=True) == [0, 1]
            await b.add_many([2, 3, 4, 5])
            assert await b.flush()
            assert calls == [[0, 1], [0, 1], [2, 3, 4, 5]]
            assert b.stats["flushes"] == 1


async def _settled(url: str) -> bool:
    """Whether a fresh client sees nothing ready and nothing leased."""
    async with await Queue.create(url) as other:
        return other.qsize() == 0 and other.stats["leased"] == 0


async def test_an_ack_that_failed_in_flush_is_retried_after_the_retry_delay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """flush() returned False for an ack the server could not take: the background flusher,
    waiting out a long flush_interval, retries it after the retry delay, not the interval."""
    path = str(tmp_path / "q.sqlite")
    server = ServerProcess(path)
    port = server.port
    calls: list[list[int]] = []
    sink = stopping_sink(server, calls)
    caplog.set_level(logging.CRITICAL, logger="spoolq")
    try:
        url = f"{server.url}/jobs"
        async with await Queue.create(url) as q, Batcher(
            sink, queue=q, max_batch_size=10, flush_interval=60, retry_delay=0.2,
            max_retry_delay=0.2,
        ) as b:
            await b.add_many([0, 1, 2])
            assert not await b.flush()
            server = ServerProcess(path, port=port)
            for _ in range(50):
                if await _settled(url):
                    break
                await asyncio.sleep(0.2)
            assert await _settled(url)
            assert calls[0] == [0, 1, 2] and calls[1:] in ([], [[0, 1, 2]])
    finally:
        server.stop()


async def test_a_lease_that_fails_keeps_the_failed_batch_apart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The size of the failed batch to send again was forgotten when the lease that was to
    take it failed (its server away): the next lease took the newer items with it, and
    when the batch failed again they went back unsent, one of their deliveries used."""
    path = str(tmp_path / "q.sqlite")
    server = ServerProcess(path)
    port = server.port
    calls: list[list[int]] = []

    def sink(batch: list[int]) -> None:
        calls.append(list(batch))
        raise RuntimeError("the sink is down")

    caplog.set_level(logging.CRITICAL, logger="spoolq")
    try:
        # No retry of the background flusher's within the test: only its flush() calls
        # send, however slowly the server stops and starts.
        async with await Queue.create(f"{server.url}/jobs") as q, Batcher(
            sink, queue=q, max_batch_size=10, flush_interval=60, retry_delay=60,
            max_retry_delay=60,
        ) as b:
            await b.add_many([0, 1])
            assert not await b.flush()
            await b.add_many([2, 3])
            await asyncio.to_thread(server.stop)
            with pytest.raises(Unavailable):
                await b.flush()
            server = ServerProcess(path, port=port)
            await asyncio.sleep(0.05)
            assert not await b.flush()
            assert calls == [[0, 1], [0, 1]]
            msgs = await q.lease_many(10, ttl=30, timeout=5)
            assert [(m.item, m.attempts) for m in msgs] == [(0, 3), (1, 3), (2, 1), (3, 1)]
            await q.nack(*msgs)
    finally:
        server.stop()


async def test_a_flush_cancelled_while_it_retries_refused_settles_keeps_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A flush retrying acks and nacks the engine had refused took them all off the list
    first: cancelled during the first, it forgot the others, and a forgotten nack left its
    items leased, overtaken by every later item until the lease ran out."""
    path = str(tmp_path / "q.sqlite")
    engine = FailingSettle(open_engine(path))
    calls: list[list[int]] = []
    caplog.set_level(logging.CRITICAL, logger="spoolq")
    async with await Queue.create(path, engine=engine) as q:
        await q.put_many([0, 1])
        await q.nack(*await q.lease_many(2, ttl=30))  # delivered once already
        await q.put_many([2, 3])
        async with Batcher(calls.append, queue=q, max_batch_size=10, flush_interval=60,
                           retry_delay=0.01, max_retry_delay=0.01) as b:
            # One lease takes [0, 1] and [2, 3], sent apart: the ack of the first and the
            # nack of the second (not sent, as the ack failed) are both refused.
            engine.ack_failures = engine.release_failures = 1
            assert not await b.flush()
            assert calls == [[0, 1]]
            engine.gate.clear()
            engine.acking.clear()
            flushing = asyncio.create_task(b.flush())
            assert await asyncio.to_thread(engine.acking.wait, 10)
            flushing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await flushing
            engine.gate.set()
            assert await b.flush()
            assert calls == [[0, 1], [2, 3]]
