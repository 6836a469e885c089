"""The measured scenarios, for sync and async contestants.

Every throughput workload counts one operation per put and one per get, so
``ops`` is ``2 * N``. The measured time runs from the first put to the end
of ``close()``. Items are made before the clock starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from measurements.contestants.base import AsyncContestant, Contestant

BATCH = 100
ASYNC_PRODUCERS = {"5p1c-async": 5, "64p-async": 64}


@dataclass
class Measurement:
    ops: int
    seconds: float
    put_seconds: float | None = None
    get_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _check_fifo(items: Sequence[Any], first: Any, last: Any, count: int) -> None:
    if count != len(items):
        raise AssertionError(f"got {count} items, expected {len(items)}")
    if first != items[0] or last != items[-1]:
        raise AssertionError("items came back changed or out of order")


def _check_count(items: Sequence[Any], count: int) -> None:
    if count != len(items):
        raise AssertionError(f"got {count} items, expected {len(items)}")


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# --- sync -----------------------------------------------------------------


def _sync_burst(c: Contestant, items: Sequence[Any]) -> Measurement:
    n = len(items)
    t0 = time.perf_counter()
    for item in items:
        c.put(item)
    c.flush()
    t1 = time.perf_counter()
    first = last = c.get()
    for _ in range(n - 1):
        last = c.get()
    c.flush()
    c.close()
    t2 = time.perf_counter()
    _check_fifo(items, first, last, n)
    return Measurement(2 * n, t2 - t0, t1 - t0, t2 - t1)


def _sync_batch(c: Contestant, items: Sequence[Any]) -> Measurement:
    n = len(items)
    chunks = _chunks(items, BATCH)
    t0 = time.perf_counter()
    for chunk in chunks:
        c.put_many(chunk)
    c.flush()
    t1 = time.perf_counter()
    count = 0
    first: Any = None
    last: Any = None
    while count < n:
        got = c.get_many(min(BATCH, n - count))
        if count == 0:
            first = got[0]
        count += len(got)
        last = got[-1]
    c.flush()
    c.close()
    t2 = time.perf_counter()
    _check_fifo(items, first, last, count)
    return Measurement(2 * n, t2 - t0, t1 - t0, t2 - t1)


def _sync_1p1c(c: Contestant, items: Sequence[Any]) -> Measurement:
    n = len(items)

    def produce() -> None:
        for item in items:
            c.put(item)
        c.flush()

    def consume() -> tuple[Any, Any]:
        first = last = c.get()
        for _ in range(n - 1):
            last = c.get()
        return first, last

    with ThreadPoolExecutor(max_workers=2) as pool:
        t0 = time.perf_counter()
        producer = pool.submit(produce)
        consumer = pool.submit(consume)
        producer.result()
        first, last = consumer.result()
    c.flush()
    c.close()
    t1 = time.perf_counter()
    _check_fifo(items, first, last, n)
    return Measurement(2 * n, t1 - t0)


def run_sync(workload: str, c: Contestant, items: Sequence[Any]) -> Measurement:
    if workload.startswith("burst"):
        return _sync_burst(c, items)
    if workload.startswith("batch"):
        return _sync_batch(c, items)
    if workload == "1p1c":
        return _sync_1p1c(c, items)
    raise ValueError(f"workload {workload} has no sync form")


# --- async ----------------------------------------------------------------


async def _async_burst(c: AsyncContestant, items: Sequence[Any]) -> Measurement:
    n = len(items)
    t0 = time.perf_counter()
    for item in items:
        await c.put(item)
    await c.flush()
    t1 = time.perf_counter()
    first = last = await c.get()
    for _ in range(n - 1):
        last = await c.get()
    await c.flush()
    await c.close()
    t2 = time.perf_counter()
    _check_fifo(items, first, last, n)
    return Measurement(2 * n, t2 - t0, t1 - t0, t2 - t1)


async def _async_drain(c: AsyncContestant, n: int) -> tuple[Any, Any, int]:
    count = 0
    first: Any = None
    last: Any = None
    while count < n:
        got = await c.get_many(min(BATCH, n - count))
        if count == 0:
            first = got[0]
        count += len(got)
        last = got[-1]
    return first, last, count


async def _async_batch(c: AsyncContestant, items: Sequence[Any]) -> Measurement:
    n = len(items)
    chunks = _chunks(items, BATCH)
    t0 = time.perf_counter()
    for chunk in chunks:
        await c.put_many(chunk)
    await c.flush()
    t1 = time.perf_counter()
    first, last, count = await _async_drain(c, n)
    await c.flush()
    await c.close()
    t2 = time.perf_counter()
    _check_fifo(items, first, last, count)
    return Measurement(2 * n, t2 - t0, t1 - t0, t2 - t1)


async def _consume(c: AsyncContestant, n: int) -> tuple[Any, Any]:
    first = last = await c.get()
    for _ in range(n - 1):
        last = await c.get()
    return first, last


async def _async_1p1c(c: AsyncContestant, items: Sequence[Any]) -> Measurement:
    n = len(items)

    async def produce() -> None:
        for item in items:
            await c.put(item)
        await c.flush()

    t0 = time.perf_counter()
    _, (first, last) = await asyncio.gather(produce(), _consume(c, n))
    await c.flush()
    await c.close()
    t1 = time.perf_counter()
    _check_fifo(items, first, last, n)
    return Measurement(2 * n, t1 - t0)


async def _async_np1c(c: AsyncContestant, items: Sequence[Any], producers: int) -> Measurement:
    n = len(items)
    shares = [items[k::producers] for k in range(producers)]

    async def produce(share: Sequence[Any]) -> None:
        for item in share:
            await c.put(item)

    async def all_producers() -> None:
        await asyncio.gather(*(produce(share) for share in shares))
        await c.flush()

    t0 = time.perf_counter()
    await asyncio.gather(all_producers(), _consume(c, n))
    await c.flush()
    await c.close()
    t1 = time.perf_counter()
    return Measurement(2 * n, t1 - t0, extra={"producers": producers})


async def _async_fan_in(c: AsyncContestant, items: Sequence[Any], producers: int) -> Measurement:
    n = len(items)
    shares = [items[k::producers] for k in range(producers)]

    async def produce(share: Sequence[Any]) -> None:
        for item in share:
            await c.put(item)

    t0 = time.perf_counter()
    await asyncio.gather(*(produce(share) for share in shares))
    await c.flush()
    t1 = time.perf_counter()
    _, _, count = await _async_drain(c, n)
    await c.flush()
    await c.close()
    t2 = time.perf_counter()
    _check_count(items, count)
    return Measurement(2 * n, t2 - t0, t1 - t0, t2 - t1, extra={"producers": producers})


async def run_async(workload: str, c: AsyncContestant, items: Sequence[Any]) -> Measurement:
    if workload.startswith("burst"):
        return await _async_burst(c, items)
    if workload.startswith("batch"):
        return await _async_batch(c, items)
    if workload == "1p1c":
        return await _async_1p1c(c, items)
    if workload == "5p1c-async":
        return await _async_np1c(c, items, ASYNC_PRODUCERS[workload])
    if workload == "64p-async":
        return await _async_fan_in(c, items, ASYNC_PRODUCERS[workload])
    raise ValueError(f"workload {workload} has no async form")
