"""Batcher: a failed batch is retried and dead-lettered whole; an ack that fails."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from spoolq import Batcher, Queue

from .servers import ServerProcess


class DownSink:
    """Fails its first ``fail_times`` calls; records every batch it is called with."""

    def __init__(self, fail_times: int) -> None:
        self.calls: list[list[int]] = []
        self.fail_times = fail_times

    async def __call__(self, batch: list[int]) -> None:
        self.calls.append(list(batch))
        if len(self.calls) <= self.fail_times:
            raise ConnectionError("sink down")


async def test_a_failed_batch_is_retried_alone_and_dead_lettered_whole(tmp_path: Path) -> None:
    """Items added after a batch failed do not join its retries: they would reach
    max_attempts later than it and split it between the dead letters and the queue."""
    sink = DownSink(fail_times=3)
    async with await Queue.create(str(tmp_path / "q.sqlite"), max_attempts=3) as q:
        async with Batcher(
            sink, queue=q, max_batch_size=4, flush_interval=60, retry_delay=60, max_retry_delay=60
        ) as b:
            await b.add_many([0, 1])
            assert not await b.flush()
            await b.add_many([2, 3])
            assert not await b.flush()
            assert not await b.flush()
            assert await b.flush()
            assert sink.calls == [[0, 1], [0, 1], [0, 1], [2, 3]]
            assert b.stats["failures"] == 3 and b.stats["flushes"] == 1
            assert b.stats["items"] == 2
        assert await q.peek(10, dead=True) == [0, 1]
        assert q.qsize() == 0


async def test_a_batch_left_by_an_earlier_run_is_sent_apart_from_newer_items(
    tmp_path: Path,
) -> None:
    """A new Batcher does not know the size of the batch an earlier one failed: it sends
    the items of each number of attempts as a batch of their own, so that the old batch
    still goes to the dead letters whole, and the newer items after it."""
    async with await Queue.create(str(tmp_path / "q.sqlite"), max_attempts=3) as q:
        first = DownSink(fail_times=2)
        async with Batcher(
            first, queue=q, max_batch_size=4, flush_interval=60, retry_delay=60, max_retry_delay=60
        ) as b:
            await b.add_many([0, 1])
            assert not await b.flush()
        # stop() tried once more: the batch has been delivered twice.
        assert first.calls == [[0, 1], [0, 1]]
        await q.put_many([2, 3])
        second = DownSink(fail_times=1)
        async with Batcher(
            second, queue=q, max_batch_size=4, flush_interval=60, retry_delay=60, max_retry_delay=60
        ) as b:
            assert not await b.flush()
            assert await b.flush()
            assert b.stats["failures"] == 1 and b.stats["items"] == 2
        assert second.calls[0] == [0, 1]
        assert second.calls[1:] == [[2, 3]]
        assert await q.peek(10, dead=True) == [0, 1]
        assert q.qsize() == 0


def stopping_sink(server: ServerProcess,
                  calls: list[list[int]]) -> Callable[[list[int]], Awaitable[None]]:
    """An async sink that records each batch and stops ``server`` in its first call."""

    async def sink(batch: list[int]) -> None:
        calls.append(list(batch))
        if len(calls) == 1:
            await asyncio.to_thread(server.stop)

    return sink


async def test_an_ack_that_fails_after_the_sink_took_the_batch_is_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server goes away between the sink's return and the ack: the flush counts (the
    sink has the batch), is logged, and the ack is tried again once the server is back;
    the Batcher keeps working and loses nothing."""
    path = str(tmp_path / "q.sqlite")
    server = ServerProcess(path)
    port = server.port
    calls: list[list[int]] = []
    sink = stopping_sink(server, calls)
    caplog.set_level(logging.ERROR, logger="spoolq")
    try:
        async with await Queue.create(f"{server.url}/jobs") as q:
            b = Batcher(
                sink,
                queue=q,
                max_batch_size=3,
                flush_interval=60,
                retry_delay=60,
                max_retry_delay=60,
            )
            await b.start()
            await b.add_many([0, 1, 2])
            assert not await b.flush()  # the sink took it; the ack was not written
            assert calls == [[0, 1, 2]]
            stats = b.stats
            assert stats["flushes"] == 1 and stats["items"] == 3
            assert stats["failures"] == 0 and stats["running"]
            assert any(
                "ack" in r.getMessage()
                for r in caplog.records
                if r.name == "spoolq" and r.levelno == logging.ERROR
            )
            server = ServerProcess(path, port=port)
            await b.add_many([3, 4])
            assert await b.flush()
            await b.stop()
            # Sent again only if the restarted server gave the lease back; first, whole.
            assert calls[-1] == [3, 4]
            assert calls[1:-1] in ([], [[0, 1, 2]])
            assert b.stats["flushes"] == len(calls)
            assert b.stats["items"] == sum(len(c) for c in calls)
            assert q.qsize() == 0 and q.stats["leased"] == 0
    finally:
        server.stop()
