"""Batcher: a plain sink that returns a concurrent.futures.Future (work handed to a thread
pool) or another awaitable has its batch decided by that future's outcome, not by its
return: acked once the future has its result, given back when the future fails, and
cancelled at the lease's deadline like an async sink."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from spoolq import Batcher


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        yield executor


async def test_a_future_that_fails_fails_its_flush_and_keeps_the_batch(
        tmp_path: Path, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    received: list[list[int]] = []

    def send(batch: list[int]) -> None:
        time.sleep(0.05)  # still running when the sink has returned
        received.append(list(batch))
        if len(received) == 1:
            raise ConnectionError("the server is away")

    b = Batcher(lambda batch: pool.submit(send, batch), queue=str(tmp_path / "q.sqlite"),
                flush_interval=60)
    await b.start()
    await b.add_many([1, 2, 3])
    assert await b.flush() is False
    assert b.stats["failures"] == 1 and b.stats["flushes"] == 0
    assert await b.queue.peek(5) == [1, 2, 3]
    assert await b.flush() is True
    assert b.stats["flushes"] == 1 and b.stats["items"] == 3
    assert await b.queue.peek(5) == []
    await b.stop()
    assert received == [[1, 2, 3], [1, 2, 3]]


async def test_the_batch_stays_leased_until_the_future_has_its_result(
        tmp_path: Path, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    release = threading.Event()
    received: list[list[int]] = []

    def send(batch: list[int]) -> None:
        assert release.wait(10)
        received.append(list(batch))

    b = Batcher(lambda batch: pool.submit(send, batch), queue=str(tmp_path / "q.sqlite"),
                flush_interval=60)
    await b.start()
    await b.add_many([1, 2])
    flushing = asyncio.create_task(b.flush())
    await asyncio.sleep(0.2)
    assert not flushing.done()
    assert b.stats["flushes"] == 0
    assert b.queue.stats["leased"] == 2
    release.set()
    assert await asyncio.wait_for(flushing, 10) is True
    assert b.stats["flushes"] == 1 and b.queue.stats["leased"] == 0
    await b.stop()
    assert received == [[1, 2]]


async def test_a_future_not_begun_by_the_lease_deadline_is_cancelled_and_never_runs(
        tmp_path: Path, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    busy = threading.Event()
    received: list[list[int]] = []
    pool.submit(busy.wait, 10)  # the pool's one thread is taken

    def send(batch: list[int]) -> None:
        received.append(list(batch))

    b = Batcher(lambda batch: pool.submit(send, batch), queue=str(tmp_path / "q.sqlite"),
                flush_interval=60, lease_ttl=0.3)
    await b.start()
    await b.add_many([1, 2])
    began = time.monotonic()
    assert await b.flush() is False  # at the deadline, not when the pool gets to it
    assert time.monotonic() - began < 5
    assert b.stats["failures"] == 1
    busy.set()
    await asyncio.sleep(0.2)
    assert received == []  # cancelled before its thread took it: never sent
    assert await b.flush() is True
    await b.stop()
    assert received == [[1, 2]]


async def test_a_cancelled_flush_waits_for_a_running_future_which_took_the_batch(
        tmp_path: Path, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    received: list[list[int]] = []

    def send(batch: list[int]) -> None:
        time.sleep(0.5)  # a thread cannot be interrupted
        received.append(list(batch))

    b = Batcher(lambda batch: pool.submit(send, batch), queue=str(tmp_path / "q.sqlite"),
                flush_interval=60)
    await b.start()
    await b.add_many([1, 2])
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(b.flush(), 0.1)
    # The flush went on until the thread had sent the batch, and acked it: it is not sent
    # again while the thread still sends it, nor after.
    assert time.monotonic() - began >= 0.4
    assert received == [[1, 2]]
    assert b.stats["flushes"] == 1 and b.stats["failures"] == 0
    assert await b.queue.peek(5) == []
    await b.stop()
    assert received == [[1, 2]]


async def test_a_future_running_at_the_lease_deadline_is_waited_for_and_fails_its_flush(
        tmp_path: Path, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    received: list[list[int]] = []

    def send(batch: list[int]) -> None:
        time.sleep(0.6)  # past the deadline, in a thread that cannot be interrupted
        received.append(list(batch))

    b = Batcher(lambda batch: pool.submit(send, batch), queue=str(tmp_path / "q.sqlite"),
                flush_interval=60, lease_ttl=0.3)
    await b.start()
    await b.add_many([1, 2])
    began = time.monotonic()
    assert await b.flush() is False  # as an async sink cancelled at the deadline
    # No second send of the batch began while the thread still sent it.
    assert time.monotonic() - began >= 0.5
    assert received == [[1, 2]]
    assert b.stats["failures"] == 1 and b.stats["flushes"] == 0
    assert await b.queue.peek(5) == [1, 2]
    await b.stop()


async def test_a_future_its_pool_cancels_fails_its_flush(
        tmp_path: Path, pool: concurrent.futures.ThreadPoolExecutor) -> None:
    busy = threading.Event()
    received: list[list[int]] = []
    pool.submit(busy.wait, 10)  # the pool's one thread is taken

    def send(batch: list[int]) -> None:
        received.append(list(batch))

    b = Batcher(lambda batch: pool.submit(send, batch), queue=str(tmp_path / "q.sqlite"),
                flush_interval=60)
    await b.start()
    await b.add_many([1, 2])
    flushing = asyncio.create_task(b.flush())
    await asyncio.sleep(0.1)
    pool.shutdown(wait=False, cancel_futures=True)
    assert await asyncio.wait_for(flushing, 5) is False
    busy.set()
    assert b.stats["failures"] == 1 and b.stats["running"]
    assert await b.queue.peek(5) == [1, 2]
    await b.stop()  # its last flush fails alike: the pool takes no more work
    assert received == []


class _Reply:
    """An awaitable that is neither a coroutine nor a future: a client library's reply."""

    def __init__(self, batch: list[int], received: list[list[int]]) -> None:
        self.batch, self.received = batch, received

    def __await__(self) -> Generator[object, None, None]:
        yield from asyncio.sleep(0.01).__await__()
        self.received.append(list(self.batch))
        if len(self.received) == 1:
            raise ConnectionError("refused")


async def test_an_awaitable_a_plain_sink_returns_decides_its_batch(tmp_path: Path) -> None:
    received: list[list[int]] = []
    b = Batcher(lambda batch: _Reply(batch, received), queue=str(tmp_path / "q.sqlite"),
                flush_interval=60)
    await b.start()
    await b.add_many([1, 2])
    assert await b.flush() is False
    assert await b.queue.peek(5) == [1, 2]
    assert await b.flush() is True
    await b.stop()
    assert received == [[1, 2], [1, 2]]


async def test_an_asyncio_future_from_run_in_executor_decides_its_batch(
        tmp_path: Path) -> None:
    received: list[list[int]] = []

    def send(batch: list[int]) -> None:
        time.sleep(0.05)
        received.append(list(batch))
        if len(received) == 1:
            raise ConnectionError("refused")

    loop = asyncio.get_running_loop()
    b = Batcher(lambda batch: loop.run_in_executor(None, send, batch),
                queue=str(tmp_path / "q.sqlite"), flush_interval=60)
    await b.start()
    await b.add_many([1, 2])
    assert await b.flush() is False
    assert await b.queue.peek(5) == [1, 2]
    assert await b.flush() is True
    await b.stop()
    assert received == [[1, 2], [1, 2]]
