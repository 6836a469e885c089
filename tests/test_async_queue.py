"""Queue (asyncio) parity with asyncio.Queue, on every engine."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import spoolq
from spoolq import Queue


@pytest.fixture
async def q(path: str) -> AsyncIterator[Queue[object]]:
    async with await Queue.create(path) as handle:
        yield handle


async def test_fifo_order_and_sizes(q: Queue[object]) -> None:
    assert q.empty() and q.qsize() == 0
    for i in range(10):
        await q.put(i)
    assert q.qsize() == 10 and not q.full()
    assert [await q.get() for _ in range(10)] == list(range(10))
    assert q.empty()


async def test_nowait_calls_are_plain_functions(q: Queue[object]) -> None:
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()
    q.put_nowait("a")
    assert q.qsize() == 1
    assert q.get_nowait() == "a"


async def test_maxsize_blocks_put_until_a_get(path: str) -> None:
    async with await Queue.create(path, maxsize=1) as q:
        await q.put(1)
        assert q.full()
        with pytest.raises(asyncio.QueueFull):
            q.put_nowait(2)
        blocked = asyncio.create_task(q.put(2))
        await asyncio.sleep(0.05)
        assert not blocked.done()
        assert await q.get() == 1
        await asyncio.wait_for(blocked, 5)
        with pytest.raises(spoolq.Full):
            await q.put_many([3, 4], timeout=0.01)
        assert await q.get() == 2
        await q.put_many([3, 4], timeout=1)  # a batch over maxsize goes into an empty queue
        assert await q.get_many(2) == [3, 4]


async def test_negative_timeouts_are_refused_where_a_put_would_wait(path: str) -> None:
    async with await Queue.create(path) as q:
        await q.put_many(["a"], timeout=-1)  # no maxsize: never waits, timeout not read
        assert await q.get() == "a"
    async with await Queue.create(path, name="bounded", maxsize=3) as q:
        with pytest.raises(ValueError):
            await q.put_many(["b"], timeout=-1)
        assert q.qsize() == 0


async def test_blocked_get_wakes_on_put(q: Queue[object]) -> None:
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0.05)
    assert not getter.done()
    await q.put("x")
    assert await asyncio.wait_for(getter, 5) == "x"


async def test_cancelled_get_loses_nothing(q: Queue[object]) -> None:
    for _ in range(20):
        getters = [asyncio.create_task(q.get()) for _ in range(3)]
        await asyncio.sleep(0)
        await q.put_many(["a", "b"])
        await asyncio.sleep(0)
        for task in getters:
            task.cancel()
        results = await asyncio.gather(*getters, return_exceptions=True)
        delivered = [r for r in results if isinstance(r, str)]
        rest = await q.get_many(None, timeout=1) if q.qsize() or not delivered else []
        while len(delivered) + len(rest) < 2:
            rest += await q.get_many(None, timeout=1)
        assert sorted(delivered + rest) == ["a", "b"]
        assert q.empty()


async def test_wait_for_timeout_on_get_keeps_item(q: Queue[object]) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(q.get(), 0.05)
    await q.put(1)
    assert await q.get() == 1


async def test_get_many_semantics(q: Queue[object]) -> None:
    await q.put_many(range(5))
    assert await q.get_many(2) == [0, 1]
    assert await q.get_many() == [2, 3, 4]
    asyncio.get_running_loop().call_later(0.05, q.put_nowait, 9)
    assert await q.get_many(3, timeout=0.5) == [9]
    with pytest.raises(asyncio.QueueEmpty):
        await q.get_many(3, timeout=0.05)


async def test_task_done_and_join(q: Queue[object]) -> None:
    with pytest.raises(ValueError):
        q.task_done()
    await q.put_many([1, 2, 3])
    seen: list[object] = []

    async def worker() -> None:
        for _ in range(3):
            seen.append(await q.get())
            await asyncio.sleep(0.01)
            q.task_done()

    task = asyncio.create_task(worker())
    await asyncio.wait_for(q.join(), 5)
    assert seen == [1, 2, 3]
    await task


async def test_shutdown(q: Queue[object]) -> None:
    await q.put(1)
    q.shutdown()
    with pytest.raises(spoolq.QueueShutDown):
        await q.put(2)
    assert await q.get() == 1
    with pytest.raises(spoolq.QueueShutDown):
        await q.get()


async def test_shutdown_immediate_wakes_getters(q: Queue[object]) -> None:
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0.02)
    q.shutdown(immediate=True)
    with pytest.raises(spoolq.QueueShutDown):
        await asyncio.wait_for(getter, 5)


async def test_concurrent_producers_and_consumers(path: str) -> None:
    async with await Queue.create(path) as q:
        got: list[int] = []

        async def produce(base: int) -> None:
            for i in range(200):
                await q.put(base + i)

        async def consume() -> None:
            while True:
                try:
                    got.append(await asyncio.wait_for(q.get(), 0.5))  # type: ignore[arg-type]
                except asyncio.TimeoutError:
                    return

        await asyncio.gather(*(produce(p * 200) for p in range(5)),
                             *(consume() for _ in range(3)))
        assert sorted(got) == list(range(1000))


async def test_concurrent_puts_are_group_committed(disk_path: str) -> None:
    async with await Queue.create(disk_path) as q:
        await asyncio.gather(*(q.put(i) for i in range(500)))
        assert q.qsize() == 500
        assert await q.get_many(500) == list(range(500))


async def test_peek_and_stats(q: Queue[object]) -> None:
    await q.put_many(["a", "b"])
    assert await q.peek(5) == ["a", "b"]
    s = q.stats
    assert s["count"] == 2 and s["puts"] == 2


async def test_serialization_error_is_typed(q: Queue[object]) -> None:
    with pytest.raises(spoolq.SerializationError):
        await q.put(object())
    assert q.empty()


async def test_closed_queue_refuses_work(path: str) -> None:
    q = await Queue.create(path)
    await q.aclose()
    await q.aclose()
    with pytest.raises(spoolq.ClosedError):
        await q.put(1)


async def test_engine_work_stays_off_the_event_loop(disk_path: str) -> None:
    async with await Queue.create(disk_path) as q:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        start = time.monotonic()
        # Kept small: the spinning ticker holds the GIL, which starves dbm's pure-Python
        # writes on the worker (20,000 records took minutes there).
        await q.put_many([b"x" * 1000] * 500)
        task.cancel()
        assert ticks > 1, f"the loop was blocked for {time.monotonic() - start:.2f}s"


@pytest.mark.parametrize("durability", ["commit", "buffer"])
async def test_gets_cut_short_by_timeouts_keep_fifo(tmp_path: Path, durability: str) -> None:
    # A get whose wait_for timed out while its take ran on the worker gives the records
    # back; the next get must not be handed a newer record before them.
    rnd = random.Random(7)
    n = 600
    got: list[int] = []
    async with await Queue.create(str(tmp_path / "q.sqlite"), durability=durability,
                                  flush_items=5, flush_interval=0.005) as q:
        async def produce() -> None:
            for i in range(n):
                await q.put(i)
                if rnd.random() < 0.3:
                    await asyncio.sleep(rnd.choice([0, 0.001]))

        async def consume() -> None:
            while len(got) < n:
                with contextlib.suppress(asyncio.TimeoutError, spoolq.Empty):
                    got.extend(await asyncio.wait_for(q.get_many(rnd.randrange(1, 6)),
                                                      rnd.choice([0.0005, 0.003])))

        await asyncio.wait_for(asyncio.gather(produce(), consume()), 60)
    assert got == list(range(n))


@pytest.mark.parametrize("durability", ["commit", "buffer"])
async def test_close_after_a_cancelled_get_keeps_its_item(tmp_path: Path,
                                                           durability: str) -> None:
    path = str(tmp_path / "q.sqlite")
    for _ in range(10):
        q = await Queue.create(path, durability=durability)
        await q.put_many(["a", "b"])
        getting = asyncio.create_task(q.get())
        await asyncio.sleep(0)  # its take is on the worker
        getting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await getting
        await q.aclose()
        with spoolq.SyncQueue.create(path) as again:
            left = again.get_many(None, block=False)
        assert left in (["a", "b"], ["b"]) and (left == ["a", "b"]) == getting.cancelled()


@pytest.mark.parametrize("durability", ["commit", "buffer"])
async def test_memory_queue_give_back_comes_before_a_newer_item(durability: str) -> None:
    for _ in range(20):
        async with await Queue.create(":memory:", durability=durability) as q:
            await q.put("a")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(q.get_many(2), 0.01)  # holds a, waits, is cancelled
            await q.put("b")
            assert [await q.get(), await q.get()] == ["a", "b"]


async def test_immediate_shutdown_ends_a_get_waiting_for_a_give_back(disk_path: str) -> None:
    path = disk_path
    async with await Queue.create(path) as q:
        await q.put_many(["a", "b"])
        first = asyncio.create_task(q.get())
        await asyncio.sleep(0)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        second = asyncio.create_task(q.get())
        q.shutdown(immediate=True)
        with pytest.raises(spoolq.QueueShutDown):
            await second
    with spoolq.SyncQueue.create(path) as again:
        assert again.get_many(None, block=False)[-1] == "b"


async def test_get_nowait_after_a_cancelled_get_keeps_fifo(tmp_path: Path) -> None:
    for i in range(20):
        async with await Queue.create(str(tmp_path / f"q{i}.sqlite")) as q:
            await q.put_many([1, 2, 3])
            getting = asyncio.create_task(q.get())
            await asyncio.sleep(0)  # its take is on the worker
            getting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getting
            order = [] if getting.cancelled() else [getting.result()]
            while len(order) < 3:
                try:
                    order.append(q.get_nowait())
                except spoolq.Empty:  # the cancelled get's item is on its way back
                    await asyncio.sleep(0.001)
            assert order == [1, 2, 3]
