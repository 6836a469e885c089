"""Stress of the waiting and cancellation paths: many tasks or threads putting and taking
on one queue while random calls are cancelled or time out. Whatever a put reported as
stored is received exactly once or still in the queue, a single consumer sees FIFO order,
and shutdown or close never leaves a caller hanging. Each test is seeded: a failure names
its seed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import spoolq
from spoolq.errors import ClosedError, Empty, Full, QueueShutDown

from .conftest import queue_path
from .servers import ThreadedServer

ENGINES = ["memory", "sqlite", "lmdb", "remote"]
DURABILITIES = ["commit", "buffer"]
SEEDS = [int(s) for s in os.environ.get("SPOOLQ_STRESS_SEEDS", "1").split(",")]
"""More seeds for a longer run: SPOOLQ_STRESS_SEEDS=1,2,3,4,5."""


@pytest.fixture(params=ENGINES)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A queue path or URL; "remote" is a server on a thread, serving a SQLite file."""
    if request.param == "remote":
        with ThreadedServer(str(tmp_path / "served.sqlite")) as server:
            yield f"{server.url}/jobs"
    else:
        yield queue_path(tmp_path, str(request.param))


async def _drain(q: spoolq.Queue[Any]) -> list[Any]:
    out: list[Any] = []
    while True:
        try:
            out.append(q.get_nowait())
        except Empty:
            if q._unsettled:  # a give-back still on its way: wait for it
                await asyncio.sleep(0.01)
                continue
            return out


def _norm(x: Any) -> Any:
    """cbor gives tuples back as lists."""
    return tuple(x) if isinstance(x, list) else x


def _check_delivery(done: set[Any], maybe: set[Any], received: list[Any],
                    left: list[Any], seed: int) -> None:
    counts = Counter(_norm(x) for x in received + left)
    dup = {k: v for k, v in counts.items() if v > 1}
    assert not dup, f"seed {seed}: items delivered more than once: {dup}"
    lost = done - set(counts)
    assert not lost, f"seed {seed}: stored items lost: {sorted(lost)[:20]}"
    unknown = set(counts) - done - maybe
    assert not unknown, f"seed {seed}: items never put: {sorted(unknown)[:20]}"


async def _check_after_close(target: str, done: set[Any], received: list[Any],
                             seed: int) -> None:
    """After the queue was closed: what a reopen finds left, with what was received, is
    every put that returned, once each (in memory, what was received came once each)."""
    if target == ":memory:":
        counts = Counter(map(_norm, received))
        assert all(v == 1 for v in counts.values()), f"seed {seed}: duplicates"
        return
    q2 = await spoolq.Queue.create(target)
    left = await _drain(q2)
    await q2.aclose()
    _check_delivery(done, done | {_norm(x) for x in left}, received, left, seed)


# ---- async: many producers and consumers, random cancellation ---------------------------


@pytest.mark.parametrize("durability", DURABILITIES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("maxsize", [0, 7])
async def test_async_random_cancels_lose_and_duplicate_nothing(  # noqa: PLR0915 - tasks are closures
        target: str, durability: str, seed: int, maxsize: int) -> None:
    rng = random.Random(seed)
    q = await spoolq.Queue.create(target, durability=durability,
                                  maxsize=maxsize, flush_items=5, flush_interval=0.02,
                                  poll_interval=0.01)
    done: set[Any] = set()
    maybe: set[Any] = set()
    received: list[Any] = []
    leased: list[Any] = []
    stop = asyncio.Event()

    async def bounded(coro: Any) -> Any:
        r = rng.random()
        if r < 0.3:
            return await asyncio.wait_for(coro, rng.choice([0, 0.0001, 0.001, 0.005]))
        if r < 0.5:
            task = asyncio.ensure_future(coro)
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
            task.cancel()
            return await task
        return await asyncio.wait_for(coro, 2.0)

    async def producer(p: int) -> None:
        for i in range(40):
            if rng.random() < 0.3:
                batch = [(p, i, j) for j in range(rng.randrange(1, 4))]
                maybe.update(batch)
                try:
                    await bounded(q.put_many(batch))
                except (asyncio.CancelledError, asyncio.TimeoutError):
                    continue
                done.update(batch)
            else:
                item = (p, i, 0)
                maybe.add(item)
                try:
                    await bounded(q.put(item))
                except (asyncio.CancelledError, asyncio.TimeoutError):
                    continue
                done.add(item)

    async def consumer() -> None:
        while not stop.is_set():
            r = rng.random()
            try:
                if r < 0.4:
                    received.append(await bounded(q.get()))
                elif r < 0.7:
                    n = rng.randrange(1, 5)
                    received.extend(await bounded(q.get_many(n, timeout=0.02)))
                elif r < 0.85:
                    msg = await bounded(q.lease(ttl=30.0))
                    await q.ack(msg)
                    leased.append(msg.item)
                else:
                    received.append(q.get_nowait())
            except (asyncio.CancelledError, asyncio.TimeoutError, Empty):
                await asyncio.sleep(0)

    consumers = [asyncio.ensure_future(consumer()) for _ in range(4)]
    await asyncio.wait_for(asyncio.gather(*(producer(p) for p in range(5))), 8)
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*consumers), 5)
    await q.flush()
    left = await asyncio.wait_for(_drain(q), 5)
    _check_delivery(done, maybe, received + leased, left, seed)
    assert q.qsize() == 0, f"seed {seed}: qsize {q.qsize()} after draining"
    await q.aclose()
    q2 = await spoolq.Queue.create(target) if target != ":memory:" \
        else None
    if q2 is not None:
        rest = await _drain(q2)
        await q2.aclose()
        assert rest == [], f"seed {seed}: items left in the file after draining: {rest}"


@pytest.mark.parametrize("durability", DURABILITIES)
@pytest.mark.parametrize("seed", SEEDS)
async def test_async_single_consumer_with_timeouts_sees_fifo(
        target: str, durability: str, seed: int) -> None:
    rng = random.Random(seed)
    q = await spoolq.Queue.create(target, durability=durability,
                                  flush_items=3, flush_interval=0.01, poll_interval=0.01)
    total = 300
    received: list[int] = []

    async def producer() -> None:
        for i in range(total):
            await q.put(i)
            if rng.random() < 0.3:
                await asyncio.sleep(rng.choice([0, 0.0005, 0.002]))

    async def consumer() -> None:
        while len(received) < total:
            r = rng.random()
            try:
                if r < 0.4:
                    received.append(await asyncio.wait_for(
                        q.get(), rng.choice([0, 0.0001, 0.001, 0.01])))
                elif r < 0.6:
                    task = asyncio.ensure_future(q.get())
                    for _ in range(rng.randrange(5)):
                        await asyncio.sleep(0)
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        received.append(await task)
                elif r < 0.8:
                    received.extend(await asyncio.wait_for(
                        q.get_many(rng.randrange(1, 6), timeout=0.005),
                        rng.choice([0.001, 0.01, 1])))
                else:
                    msg = await asyncio.wait_for(q.lease(timeout=0.005),
                                                 rng.choice([0.0005, 0.01, 1]))
                    received.append(msg.item)
                    await q.ack(msg)
            except (asyncio.TimeoutError, Empty):
                pass

    await asyncio.wait_for(asyncio.gather(producer(), consumer()), 9)
    await q.aclose()
    wrong = [i for i, (a, b) in enumerate(zip(received, range(total), strict=False)) if a != b]
    assert received == list(range(total)), f"seed {seed}: first out of order at {wrong[:1]}"


# ---- async: maxsize and blocked putters ---------------------------------------------------


@pytest.mark.parametrize("durability", DURABILITIES)
@pytest.mark.parametrize("seed", SEEDS)
async def test_async_blocked_putters_cancelled_no_lost_wakeup(
        target: str, durability: str, seed: int) -> None:
    rng = random.Random(seed)
    q = await spoolq.Queue.create(target, durability=durability,
                                  maxsize=3, flush_items=2, flush_interval=0.01,
                                  poll_interval=5.0)  # wake-ups only, no poll to hide a miss
    for i in range(3):
        await q.put(("fill", i))
    putters = [asyncio.ensure_future(q.put(("p", i))) for i in range(10)]
    await asyncio.sleep(0.02)
    assert not any(t.done() for t in putters)
    victims = rng.sample(range(10), 5)
    for v in victims:
        putters[v].cancel()
    await asyncio.sleep(0)
    survivors = [putters[i] for i in range(10) if i not in victims]
    got: list[Any] = []
    for _ in range(3 + len(survivors)):
        got.append(await asyncio.wait_for(q.get(), 2.0))
    await asyncio.wait_for(asyncio.gather(*survivors), 2.0)
    assert sorted(_norm(x) for x in got if x[0] == "p") == sorted(
        ("p", i) for i in range(10) if i not in victims)
    assert q.qsize() == 0
    await q.aclose()


# ---- async: shutdown and close racing blocked calls ---------------------------------------


@pytest.mark.parametrize("how", ["shutdown", "immediate", "aclose"])
@pytest.mark.parametrize("seed", SEEDS)
async def test_async_shutdown_races_blocked_calls(
        target: str, how: str, seed: int) -> None:
    rng = random.Random(seed)
    q = await spoolq.Queue.create(target, maxsize=4,
                                  poll_interval=0.01)
    done: set[Any] = set()
    received: list[Any] = []
    errors: list[BaseException] = []

    async def putter(p: int) -> None:
        for i in range(30):
            try:
                if rng.random() < 0.3:
                    await q.put_many([(p, i, 0), (p, i, 1)])
                    done.update({(p, i, 0), (p, i, 1)})
                else:
                    await q.put((p, i))
                    done.add((p, i))
            except (QueueShutDown, ClosedError) as exc:
                errors.append(exc)
                return

    async def getter() -> None:
        while True:
            try:
                r = rng.random()
                if r < 0.5:
                    received.append(await q.get())
                elif r < 0.8:
                    received.extend(await q.get_many(rng.randrange(2, 6), timeout=0.05))
                else:
                    msg = await q.lease(timeout=0.05)
                    await q.ack(msg)  # a lease close() gives back is delivered again
                    received.append(msg.item)
            except Empty:
                continue
            except (QueueShutDown, ClosedError) as exc:
                errors.append(exc)
                return

    tasks = [asyncio.ensure_future(putter(p)) for p in range(4)]
    tasks += [asyncio.ensure_future(getter()) for _ in range(3)]
    await asyncio.sleep(rng.choice([0.0, 0.005, 0.02, 0.05]))
    if how == "aclose":
        await asyncio.wait_for(q.aclose(), 5)
    else:
        q.shutdown(immediate=how == "immediate")
    finished, pending = await asyncio.wait(tasks, timeout=5)
    assert not pending, f"seed {seed}: {len(pending)} calls still blocked after {how}"
    for t in finished:
        t.result()
    if how == "shutdown":
        # the getters drained the queue before raising
        assert q.qsize() == 0
    if how != "aclose":
        await q.aclose()
    await _check_after_close(target, done, received, seed)


# ---- threads ------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", DURABILITIES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("maxsize", [0, 5])
def test_sync_threads_with_timeouts_lose_and_duplicate_nothing(  # noqa: PLR0915 - tasks are closures
        target: str, durability: str, seed: int, maxsize: int) -> None:
    q = spoolq.SyncQueue.create(target, durability=durability,
                                maxsize=maxsize, flush_items=5, flush_interval=0.02,
                                poll_interval=0.01)
    done: set[Any] = set()
    maybe: set[Any] = set()
    received: list[Any] = []
    lock = threading.Lock()
    stop = threading.Event()
    failures: list[BaseException] = []

    def producer(p: int) -> None:
        rng = random.Random(seed * 100 + p)
        try:
            for i in range(40):
                batch = [(p, i, j) for j in range(rng.randrange(1, 4))]
                with lock:
                    maybe.update(batch)
                try:
                    if len(batch) == 1:
                        q.put(batch[0], timeout=rng.choice([0.0, 0.001, 0.01, 1.0]))
                    else:
                        q.put_many(batch, timeout=rng.choice([0.0, 0.001, 0.01, 1.0]))
                except Full:
                    continue
                with lock:
                    done.update(batch)
        except BaseException as exc:
            failures.append(exc)

    def consumer(c: int) -> None:
        rng = random.Random(seed * 1000 + c)
        try:
            while not stop.is_set():
                r = rng.random()
                try:
                    if r < 0.4:
                        got = [q.get(timeout=rng.choice([0.0, 0.001, 0.01]))]
                    elif r < 0.7:
                        got = q.get_many(rng.randrange(1, 5), timeout=0.01)
                    elif r < 0.85:
                        msg = q.lease(timeout=0.01)
                        got = [msg.item]
                        q.ack(msg)
                    else:
                        got = [q.get_nowait()]
                except Empty:
                    continue
                with lock:
                    received.extend(got)
        except BaseException as exc:
            failures.append(exc)

    producers = [threading.Thread(target=producer, args=(p,)) for p in range(5)]
    consumers = [threading.Thread(target=consumer, args=(c,)) for c in range(4)]
    for t in producers + consumers:
        t.start()
    for t in producers:
        t.join(8)
        assert not t.is_alive(), f"seed {seed}: a producer hangs"
    time.sleep(0.05)
    stop.set()
    for t in consumers:
        t.join(5)
        assert not t.is_alive(), f"seed {seed}: a consumer hangs"
    assert not failures, failures
    q.flush()
    left: list[Any] = []
    while True:
        try:
            left.append(q.get_nowait())
        except Empty:
            break
    _check_delivery(done, maybe, received, left, seed)
    assert q.qsize() == 0
    q.close()


@pytest.mark.parametrize("how", ["shutdown", "immediate", "close"])
@pytest.mark.parametrize("seed", SEEDS)
def test_sync_shutdown_races_blocked_threads(  # noqa: PLR0915 - tasks are closures
        target: str, how: str, seed: int) -> None:
    rng = random.Random(seed)
    q = spoolq.SyncQueue.create(target, maxsize=4,
                                poll_interval=0.01)
    done: set[Any] = set()
    received: list[Any] = []
    lock = threading.Lock()
    unexpected: list[BaseException] = []

    def putter(p: int) -> None:
        try:
            for i in range(30):
                if (p + i) % 3 == 0:
                    q.put_many([(p, i, 0), (p, i, 1)])
                    with lock:
                        done.update({(p, i, 0), (p, i, 1)})
                else:
                    q.put((p, i))
                    with lock:
                        done.add((p, i))
        except (QueueShutDown, ClosedError):
            pass
        except BaseException as exc:
            unexpected.append(exc)

    def getter(c: int) -> None:
        try:
            while True:
                try:
                    if c % 3 == 0:
                        got = [q.get()]
                    elif c % 3 == 1:
                        got = q.get_many(3, timeout=0.05)
                    else:
                        msg = q.lease(timeout=0.05)
                        q.ack(msg)  # a lease close() gives back is delivered again
                        got = [msg.item]
                except Empty:
                    continue
                with lock:
                    received.extend(got)
        except (QueueShutDown, ClosedError):
            pass
        except BaseException as exc:
            unexpected.append(exc)

    threads = [threading.Thread(target=putter, args=(p,)) for p in range(4)]
    threads += [threading.Thread(target=getter, args=(c,)) for c in range(3)]
    for t in threads:
        t.start()
    time.sleep(rng.choice([0.0, 0.005, 0.02, 0.05]))
    if how == "close":
        q.close()
    else:
        q.shutdown(immediate=how == "immediate")
    for t in threads:
        t.join(5)
        assert not t.is_alive(), f"seed {seed}: a call still blocked after {how}"
    assert not unexpected, f"seed {seed}: {unexpected!r}"
    if how == "shutdown":
        assert q.qsize() == 0
    q.close()
    if target != ":memory:":
        q2 = spoolq.SyncQueue.create(target)
        left = []
        while True:
            try:
                left.append(q2.get_nowait())
            except Empty:
                break
        q2.close()
        _check_delivery(done, {_norm(x) for x in left}, received, left, seed)
    else:
        counts = Counter(map(_norm, received))
        assert all(v == 1 for v in counts.values()), f"seed {seed}: duplicates"


@pytest.mark.parametrize("durability", DURABILITIES)
@pytest.mark.parametrize("seed", SEEDS)
async def test_async_cancelled_aclose_still_closes_and_loses_nothing(
        target: str, durability: str, seed: int) -> None:
    rng = random.Random(seed)
    q = await spoolq.Queue.create(target, durability=durability, flush_items=3,
                                  flush_interval=0.01, poll_interval=0.01)
    await q.put_many([("first", i) for i in range(20)])
    done: set[Any] = {("first", i) for i in range(20)}
    received: list[Any] = []

    async def getter() -> None:
        with contextlib.suppress(QueueShutDown, ClosedError):
            while True:
                r = rng.random()
                if r < 0.4:
                    received.extend(await q.get_many(50))  # holds what it took meanwhile
                elif r < 0.8:
                    received.append(await q.get())
                else:
                    msg = await q.lease()
                    await q.ack(msg)
                    received.append(msg.item)

    async def putter(p: int) -> None:
        with contextlib.suppress(QueueShutDown, ClosedError):
            for i in range(10_000):
                await q.put((p, i))
                done.add((p, i))
                await asyncio.sleep(rng.choice([0, 0.001]))

    tasks = [asyncio.ensure_future(getter()) for _ in range(3)]
    tasks += [asyncio.ensure_future(putter(p)) for p in range(2)]
    await asyncio.sleep(rng.choice([0.001, 0.01, 0.03]))
    closing = asyncio.ensure_future(q.aclose())
    for _ in range(rng.randrange(1, 6)):
        await asyncio.sleep(0)
    closing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await closing
    _, pending = await asyncio.wait(tasks, timeout=30)  # a loaded machine is slow
    assert not pending, f"seed {seed}: {len(pending)} calls still blocked after aclose"
    await asyncio.wait_for(q.aclose(), 5)
    with pytest.raises(ClosedError):
        await q.put("late")
    await _check_after_close(target, done, received, seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_sync_blocked_putters_timing_out_no_lost_wakeup(target: str, seed: int) -> None:
    rng = random.Random(seed)
    q = spoolq.SyncQueue.create(target, maxsize=3, poll_interval=5.0)  # only wake-ups
    for i in range(3):
        q.put(("fill", i))
    stored: list[Any] = []
    lock = threading.Lock()

    def putter(i: int, timeout: float) -> None:
        try:
            q.put(("p", i), timeout=timeout)
        except Full:
            return
        with lock:
            stored.append(("p", i))

    timeouts = [rng.choice([0.05, 0.1, 30.0]) for _ in range(8)]
    threads = [threading.Thread(target=putter, args=(i, t)) for i, t in enumerate(timeouts)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # the short timeouts pass while the queue is full
    patient = sum(1 for t in timeouts if t == 30.0)
    got: list[Any] = []
    start = time.monotonic()
    ops = [lambda: [q.get()], lambda: q.get_many(1), lambda: [q.get(timeout=5)]]
    for _ in range(3 + patient):
        got.extend(rng.choice(ops)())
    for t in threads:
        t.join(10)
        assert not t.is_alive(), f"seed {seed}: a put hangs"
    assert time.monotonic() - start < 3, f"seed {seed}: putters waited for a poll"
    assert sorted(_norm(x) for x in got if x[0] == "p") == sorted(stored)
    assert len(stored) == patient
    q.close()


async def test_async_item_a_get_is_receiving_keeps_its_room(tmp_path: Path) -> None:
    """While a get's take runs on the worker, its item keeps its room: a put that found
    room in that moment (the take had lowered the ready count and was decoding the
    record), with the get then cancelled and its item given back, left the queue holding
    more than maxsize. A large item, slow to decode, widens that moment."""
    q = await spoolq.Queue.create(str(tmp_path / "q.sqlite"), maxsize=1, compressor="lzma")
    big = b"x" * (8 << 20)
    await q.put(big)
    task = asyncio.ensure_future(q.get())
    put_in = False
    deadline = time.monotonic() + 10
    while not task.done() and time.monotonic() < deadline:
        try:
            q.put_nowait(b"small")
        except Full:
            await asyncio.sleep(0)
            continue
        put_in = True
        task.cancel()
        break
    with contextlib.suppress(asyncio.CancelledError):
        await task
    held = await q.peek(5)  # after the give-back of a cancelled get
    await q.aclose()
    assert not put_in, "a put found room while a get was receiving the only item"
    assert len(held) <= 1


async def test_async_put_waits_for_the_item_a_get_is_receiving(tmp_path: Path) -> None:
    """The same for a put that may wait for room: started while the get's take runs, it
    must wait until the get returned its item."""
    q = await spoolq.Queue.create(str(tmp_path / "q.sqlite"), maxsize=1, compressor="lzma")
    await q.put(b"x" * (8 << 20))
    getter = asyncio.ensure_future(q.get())
    deadline = time.monotonic() + 10
    while q.full() and not getter.done() and time.monotonic() < deadline:
        await asyncio.sleep(0)  # until the take has lowered the ready count
    putter = asyncio.ensure_future(q.put(b"small"))
    for _ in range(3):
        await asyncio.sleep(0)
    getter.cancel()  # its item goes back: the put must still wait for room
    with contextlib.suppress(asyncio.CancelledError):
        await getter
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(putter, 0.5)
    held = await q.peek(5)
    await q.aclose()
    assert len(held) <= 1, f"{len(held)} items in a queue of maxsize 1"
